//! A single-pass, hand-written JSON scanner for infer request bodies.
//!
//! Tensor `data` is nearly all of a JSON request's bytes, so it is parsed
//! straight from the body in one pass: a tight loop over separators and
//! brackets that tracks per-level item counts (nested data must follow the
//! declared shape exactly) and parses each number directly into the element
//! type. Numbers are read with 8-digit SWAR accumulation and converted with
//! Clinger's fast path (exact mantissa and power of ten) or Eisel-Lemire
//! (one or two 64×64-bit multiplies by a truncated power of five); the rare
//! numbers neither can round correctly (more than 19 significant digits, or
//! an ambiguous halfway product) go to `str::parse::<f64>`. Every float is
//! thus correctly rounded to f64 first, then converted to the element type.
//!
//! The small parts of a request (`parameters` objects, `outputs`, `shape`)
//! are located here and handed to `serde_json` on their byte slices.

use super::JsonElem;
use super::pow5::{LARGEST_POWER_OF_FIVE, POWER_OF_FIVE_128, SMALLEST_POWER_OF_FIVE};
use crate::Limits;
use pomme_core::{Error, Result};
use serde::de::DeserializeOwned;
use std::borrow::Cow;

/// A cursor over a JSON document's bytes. Positions are absolute, so every
/// error can name its line and column in the body.
pub(super) struct Parser<'a> {
    b: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Parser<'a> {
    pub(super) fn new(b: &'a [u8], pos: usize) -> Self {
        Parser { b, pos }
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    /// Skips JSON whitespace.
    #[inline(always)]
    pub(super) fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// "line L column C" (1-based, columns in bytes) of a byte offset.
    fn position(&self, at: usize) -> String {
        let before = &self.b[..at.min(self.b.len())];
        let line = 1 + before.iter().filter(|&&c| c == b'\n').count();
        let column = 1 + before.iter().rev().take_while(|&&c| c != b'\n').count();
        format!("line {line} column {column}")
    }

    /// A syntax error at `at`: what was wrong or expected there.
    pub(super) fn syntax(&self, at: usize, what: &str) -> Error {
        let what = if at >= self.b.len() {
            format!("EOF while parsing: {what}")
        } else {
            what.to_string()
        };
        Error::invalid_input(format!("malformed JSON: {what} at {}", self.position(at)))
    }

    /// A well-formed value of the wrong kind or content at `at`.
    pub(super) fn invalid(&self, at: usize, what: &str) -> Error {
        Error::invalid_input(format!("{what} at {}", self.position(at)))
    }

    /// What the value starting at the cursor is, for type errors.
    fn found(&self) -> &'static str {
        match self.peek() {
            Some(b'{') => "an object",
            Some(b'[') => "an array",
            Some(b'"') => "a string",
            Some(b't' | b'f') => "a boolean",
            Some(b'n') => "null",
            _ => "a number",
        }
    }

    /// The error for a value that is not `what`: its syntax error when it
    /// is not valid JSON, a type error otherwise.
    fn expected(&self, what: &str) -> Error {
        let mut probe = Parser::new(self.b, self.pos);
        if let Err(e) = probe.skip_value() {
            return e;
        }
        self.invalid(
            self.pos,
            &format!("expected {what}, found {}", self.found()),
        )
    }

    /// After the document: only whitespace may follow.
    pub(super) fn end(&mut self) -> Result<()> {
        self.ws();
        if self.pos < self.b.len() {
            return Err(self.syntax(self.pos, "trailing characters"));
        }
        Ok(())
    }

    /// Consumes `lit` (`true`, `false`, `null`).
    fn literal(&mut self, lit: &[u8]) -> Result<()> {
        if self.b.get(self.pos..self.pos + lit.len()) == Some(lit) {
            self.pos += lit.len();
            Ok(())
        } else {
            Err(self.syntax(self.pos, "expected a value"))
        }
    }

    /// Visits an object's members: `f` gets each key with the cursor on its
    /// value and must consume the value.
    pub(super) fn object(
        &mut self,
        what: &str,
        mut f: impl FnMut(&mut Self, Cow<'a, str>) -> Result<()>,
    ) -> Result<()> {
        self.ws();
        if self.peek() != Some(b'{') {
            return Err(self.expected(what));
        }
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.syntax(self.pos, "expected a string key"));
            }
            let key = self.string()?;
            self.ws();
            if self.peek() != Some(b':') {
                return Err(self.syntax(self.pos, "expected ':'"));
            }
            self.pos += 1;
            self.ws();
            f(self, key)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.syntax(self.pos, "expected ',' or '}'")),
            }
        }
    }

    /// Visits an array's elements: `f` is called with the cursor on each
    /// element and must consume it.
    pub(super) fn array(
        &mut self,
        what: &str,
        mut f: impl FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        self.ws();
        if self.peek() != Some(b'[') {
            return Err(self.expected(what));
        }
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws();
            f(self)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.syntax(self.pos, "expected ',' or ']'")),
            }
        }
    }

    /// A string value (`what` names it in the type error).
    pub(super) fn string_value(&mut self, what: &str) -> Result<String> {
        self.ws();
        if self.peek() != Some(b'"') {
            return Err(self.expected(what));
        }
        Ok(self.string()?.into_owned())
    }

    /// A string or null.
    pub(super) fn opt_string_value(&mut self, what: &str) -> Result<Option<String>> {
        self.ws();
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            return Ok(None);
        }
        self.string_value(what).map(Some)
    }

    /// The string at the cursor (on its opening quote). Strings without
    /// escapes are borrowed; the rare escaped ones are decoded by serde_json.
    pub(super) fn string(&mut self) -> Result<Cow<'a, str>> {
        let open = self.pos;
        self.pos += 1;
        let start = self.pos;
        loop {
            match self.peek() {
                Some(b'"') => {
                    let raw = &self.b[start..self.pos];
                    self.pos += 1;
                    return std::str::from_utf8(raw).map(Cow::Borrowed).map_err(|e| {
                        self.syntax(start + e.valid_up_to(), "invalid UTF-8 in a string")
                    });
                }
                Some(b'\\') => {
                    self.pos = open;
                    self.skip_string()?;
                    let b = self.b;
                    return serde_json::from_slice::<String>(&b[open..self.pos])
                        .map(Cow::Owned)
                        .map_err(|e| self.serde_error(open, e));
                }
                Some(c) if c < 0x20 => {
                    return Err(self.syntax(self.pos, "control character in a string"));
                }
                Some(_) => self.pos += 1,
                None => return Err(self.syntax(self.pos, "expected '\"'")),
            }
        }
    }

    /// Steps over a string (cursor on its opening quote), checking escapes.
    fn skip_string(&mut self) -> Result<()> {
        self.pos += 1;
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 1
                        }
                        Some(b'u') => {
                            let hex = self.b.get(self.pos + 1..self.pos + 5);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return Err(self.syntax(self.pos, "invalid \\u escape"));
                            }
                            self.pos += 5;
                        }
                        _ => return Err(self.syntax(self.pos, "invalid escape")),
                    }
                }
                Some(c) if c < 0x20 => {
                    return Err(self.syntax(self.pos, "control character in a string"));
                }
                Some(_) => self.pos += 1,
                None => return Err(self.syntax(self.pos, "expected '\"'")),
            }
        }
    }

    /// Steps over any value, checking its syntax. Iterative, so no nesting
    /// can overflow the stack; deeper than serde_json's recursion limit
    /// (128) is refused, as it was when serde_json skipped these values.
    pub(super) fn skip_value(&mut self) -> Result<()> {
        const MAX_DEPTH: usize = 128;
        // The closing bracket each open container waits for.
        let mut open: Vec<u8> = Vec::new();
        loop {
            self.ws();
            if open.len() >= MAX_DEPTH && matches!(self.peek(), Some(b'[' | b'{')) {
                return Err(self.invalid(
                    self.pos,
                    &format!("JSON nested deeper than {MAX_DEPTH} levels"),
                ));
            }
            match self.peek() {
                Some(b'[') => {
                    self.pos += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                    } else {
                        open.push(b']');
                        continue;
                    }
                }
                Some(b'{') => {
                    self.pos += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                    } else {
                        open.push(b'}');
                        self.key()?;
                        continue;
                    }
                }
                Some(b'"') => self.skip_string()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => {
                    self.decimal()?;
                }
                _ => return Err(self.syntax(self.pos, "expected a value")),
            }
            // After a value: close containers until one continues.
            loop {
                let Some(&close) = open.last() else {
                    return Ok(());
                };
                self.ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        if close == b'}' {
                            self.ws();
                            self.key()?;
                        }
                        break;
                    }
                    Some(c) if c == close => {
                        self.pos += 1;
                        open.pop();
                    }
                    _ if close == b']' => return Err(self.syntax(self.pos, "expected ',' or ']'")),
                    _ => return Err(self.syntax(self.pos, "expected ',' or '}'")),
                }
            }
        }
    }

    /// An object key and its colon, skipped.
    fn key(&mut self) -> Result<()> {
        if self.peek() != Some(b'"') {
            return Err(self.syntax(self.pos, "expected a string key"));
        }
        self.skip_string()?;
        self.ws();
        if self.peek() != Some(b':') {
            return Err(self.syntax(self.pos, "expected ':'"));
        }
        self.pos += 1;
        Ok(())
    }

    /// The value at the cursor, deserialised by serde_json from its slice
    /// (for the small, irregular parts: parameters, outputs, shapes).
    pub(super) fn serde<T: DeserializeOwned>(&mut self) -> Result<T> {
        self.ws();
        let start = self.pos;
        self.skip_value()?;
        let b = self.b;
        serde_json::from_slice(&b[start..self.pos]).map_err(|e| self.serde_error(start, e))
    }

    /// A serde_json error on the slice at `start`, repositioned in the body.
    fn serde_error(&self, start: usize, e: serde_json::Error) -> Error {
        let msg = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let msg = msg.strip_suffix(&suffix).unwrap_or(&msg);
        let msg = super::truncate(msg, 300);
        // serde_json's line/column within the slice → an absolute offset.
        let slice = &self.b[start..];
        let line_start: usize = slice
            .split(|&c| c == b'\n')
            .take(e.line().saturating_sub(1))
            .map(|l| l.len() + 1)
            .sum();
        let at = start + line_start + e.column().saturating_sub(1);
        match e.classify() {
            serde_json::error::Category::Data => self.invalid(at, &msg),
            _ => self.syntax(at, &msg),
        }
    }

    /// Reads a JSON number's parts (checking its grammar:
    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`).
    #[inline(always)]
    fn decimal(&mut self) -> Result<Decimal> {
        let b = self.b;
        let start = self.pos;
        let mut i = start;
        let neg = b.get(i) == Some(&b'-');
        i += neg as usize;
        let digits = i;
        let mut mantissa = 0u64;
        match b.get(i) {
            Some(b'0') => {
                i += 1;
                if b.get(i).is_some_and(u8::is_ascii_digit) {
                    return Err(self.syntax(i, "invalid number (leading zero)"));
                }
            }
            Some(c @ b'1'..=b'9') => {
                mantissa = (c - b'0') as u64;
                i += 1;
                while let Some(&c) = b.get(i) {
                    let d = c.wrapping_sub(b'0');
                    if d > 9 {
                        break;
                    }
                    mantissa = mantissa.wrapping_mul(10).wrapping_add(d as u64);
                    i += 1;
                }
            }
            _ => return Err(self.syntax(i, "invalid number")),
        }
        let mut n_digits = i - digits;
        let mut exp = 0i64;
        let mut integer = true;
        if b.get(i) == Some(&b'.') {
            integer = false;
            i += 1;
            let frac = i;
            while let Some(v) = read8(b, i) {
                if !is_8digits(v) {
                    break;
                }
                mantissa = mantissa
                    .wrapping_mul(100_000_000)
                    .wrapping_add(parse_8digits(v));
                i += 8;
            }
            while let Some(&c) = b.get(i) {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                mantissa = mantissa.wrapping_mul(10).wrapping_add(d as u64);
                i += 1;
            }
            if i == frac {
                return Err(self.syntax(i, "invalid number (no digit after '.')"));
            }
            n_digits += i - frac;
            exp = -((i - frac) as i64);
        }
        if let Some(b'e' | b'E') = b.get(i) {
            integer = false;
            i += 1;
            let neg_exp = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let first = i;
            let mut e = 0i64;
            while let Some(&c) = b.get(i) {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                // Saturate: anything this large is 0 or infinity anyway.
                if e < 1 << 32 {
                    e = e * 10 + d as i64;
                }
                i += 1;
            }
            if i == first {
                return Err(self.syntax(i, "invalid number (no digit in the exponent)"));
            }
            exp += if neg_exp { -e } else { e };
        }
        // More than 19 significant digits do not fit the u64 mantissa.
        let mut many = false;
        if n_digits > 19 {
            let zeros = b[digits..i]
                .iter()
                .take_while(|&&c| c == b'0' || c == b'.')
                .filter(|&&c| c == b'0')
                .count();
            many = n_digits - zeros > 19;
        }
        self.pos = i;
        Ok(Decimal {
            neg,
            mantissa,
            exp,
            integer,
            many,
            digits,
        })
    }

    /// The number at the cursor as a correctly rounded f64; out of range
    /// (infinite) is an error, as JSON has no infinities.
    #[inline(always)]
    pub(super) fn f64(&mut self) -> Result<f64> {
        let start = self.pos;
        let d = self.decimal()?;
        let v = if d.many {
            self.slow_f64(&d)?
        } else if d.mantissa <= 1 << 53 && (-22..=22).contains(&d.exp) {
            // Clinger: both operands exact, so one rounding.
            let m = d.mantissa as f64;
            if d.exp < 0 {
                m / POW10[(-d.exp) as usize]
            } else {
                m * POW10[d.exp as usize]
            }
        } else {
            match eisel_lemire(d.exp, d.mantissa) {
                Some(bits) => f64::from_bits(bits),
                None => self.slow_f64(&d)?,
            }
        };
        if v.is_infinite() {
            return Err(self.syntax(start, "number out of range"));
        }
        Ok(if d.neg { -v } else { v })
    }

    /// The unsigned value of a number the fast paths cannot round.
    #[cold]
    fn slow_f64(&self, d: &Decimal) -> Result<f64> {
        std::str::from_utf8(&self.b[d.digits..self.pos])
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(|| self.syntax(d.digits, "invalid number"))
    }

    /// The number at the cursor as serde_json classifies it: non-negative
    /// integers that fit are u64, negative ones i64, everything else f64.
    pub(super) fn number(&mut self) -> Result<Number> {
        let start = self.pos;
        let d = self.decimal()?;
        if d.integer {
            let fits = if d.many {
                std::str::from_utf8(&self.b[d.digits..self.pos])
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
            } else {
                Some(d.mantissa)
            };
            if let Some(m) = fits {
                if !d.neg {
                    return Ok(Number::U64(m));
                }
                // serde_json: -0 and below i64::MIN are floats.
                let v = (m as i64).wrapping_neg();
                return Ok(if v >= 0 {
                    Number::F64(-(m as f64))
                } else {
                    Number::I64(v)
                });
            }
        }
        self.pos = start;
        self.f64().map(Number::F64)
    }
}

/// A JSON number as serde_json hands it to a visitor.
pub(super) enum Number {
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A number's decimal parts: value = ±mantissa × 10^exp.
struct Decimal {
    neg: bool,
    mantissa: u64,
    exp: i64,
    /// No fraction and no exponent.
    integer: bool,
    /// More than 19 significant digits: `mantissa` wrapped.
    many: bool,
    /// Where the digits start (after any '-').
    digits: usize,
}

/// The common case of [`Parser::f64`], lean for the hot loop: a number whose
/// digits fit a u64 exactly (a short exponent, 16 bytes readable after the
/// point) that Clinger or Eisel-Lemire rounds. `None` for anything else,
/// malformed numbers included: the caller then takes the careful path,
/// which has the slow fallback and the errors. Returns the value and the
/// offset after the number.
#[inline(always)]
fn fast_f64(b: &[u8], start: usize) -> Option<(f64, usize)> {
    let mut i = start;
    let neg = *b.get(i)? == b'-';
    i += neg as usize;
    // Integer part: usually a single digit.
    let digits = i;
    let first = b.get(i)?.wrapping_sub(b'0');
    if first > 9 {
        return None;
    }
    let mut mantissa = first as u64;
    i += 1;
    while let Some(&c) = b.get(i) {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        mantissa = mantissa.wrapping_mul(10).wrapping_add(d as u64);
        i += 1;
    }
    let int_digits = i - digits;
    // A leading zero takes the careful path (to be refused there); so do
    // integer parts the mantissa might not hold.
    if (first == 0 && int_digits > 1) || int_digits > 18 {
        return None;
    }
    let mut exp = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let c1 = read8(b, i)?;
        let k1 = digit_run(c1);
        if k1 < 8 {
            // A short fraction, exact: Clinger's fast path usually applies.
            if k1 == 0 || int_digits + k1 > 19 {
                return None;
            }
            mantissa = mantissa * POW10_U64[k1] + parse_digits(c1, k1);
            i += k1;
            exp = -(k1 as i64);
        } else {
            // 8 to 16 digits, padded with '0's to 16 places: the same value
            // at a fixed exponent of -16, with no shift by the digit count.
            let c2 = read8(b, i + 8)?;
            let k2 = digit_run(c2);
            let keep = ((1u128 << (8 * k2)) - 1) as u64;
            let c2 = (c2 & keep) | (0x3030_3030_3030_3030 & !keep);
            // The integer part times 10^16 must fit.
            if mantissa > 1843 {
                return None;
            }
            mantissa = mantissa * 10_000_000_000_000_000
                + parse_8digits(c1) * 100_000_000
                + parse_8digits(c2);
            i += 8 + k2;
            exp = -16;
            if k2 == 8 {
                // More than 16 digits: the rest one at a time, while exact.
                while let Some(&c) = b.get(i) {
                    let d = c.wrapping_sub(b'0');
                    if d > 9 {
                        break;
                    }
                    mantissa = mantissa.checked_mul(10)?.checked_add(d as u64)?;
                    exp -= 1;
                    i += 1;
                }
            }
        }
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        let neg_exp = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let first = i;
        let mut e = 0i64;
        while let Some(&c) = b.get(i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 || i - first == 4 {
                break;
            }
            e = e * 10 + d as i64;
            i += 1;
        }
        if i == first || b.get(i).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        exp += if neg_exp { -e } else { e };
    }
    if mantissa <= 1 << 53 && (-22..=22).contains(&exp) {
        // Clinger: both operands exact, so one rounding. The sign goes in
        // first, without a branch (and -0 stays -0).
        let m = f64::from_bits((mantissa as f64).to_bits() | (neg as u64) << 63);
        let v = if exp < 0 {
            m / POW10[(-exp) as usize]
        } else {
            m * POW10[exp as usize]
        };
        return Some((v, i));
    }
    let bits = eisel_lemire(exp, mantissa)?;
    if bits == f64::INFINITY.to_bits() {
        return None;
    }
    Some((f64::from_bits(bits | (neg as u64) << 63), i))
}

/// How many of the eight bytes, from the lowest, are ASCII digits before
/// the first that is not. (Digits never carry or borrow into the next byte,
/// so the lowest flagged byte is exact.)
#[inline(always)]
fn digit_run(v: u64) -> usize {
    let not_digit = (v.wrapping_add(0x4646_4646_4646_4646) | v.wrapping_sub(0x3030_3030_3030_3030))
        & 0x8080_8080_8080_8080;
    (not_digit.trailing_zeros() / 8) as usize
}

/// The value of the lowest `k` (1..=7) digit bytes of `v`: moved to the top
/// and padded with leading '0's.
#[inline(always)]
fn parse_digits(v: u64, k: usize) -> u64 {
    let shift = 8 * (8 - k as u32);
    parse_8digits((v << shift) | (0x3030_3030_3030_3030 >> (64 - shift)))
}

const POW10_U64: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// Powers of ten exactly representable as f64.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

#[inline(always)]
fn read8(b: &[u8], i: usize) -> Option<u64> {
    let s: &[u8; 8] = b.get(i..i.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(*s))
}

/// Whether all eight bytes are ASCII digits.
#[inline(always)]
fn is_8digits(v: u64) -> bool {
    let a = v.wrapping_add(0x4646_4646_4646_4646);
    let b = v.wrapping_sub(0x3030_3030_3030_3030);
    (a | b) & 0x8080_8080_8080_8080 == 0
}

/// Eight ASCII digits (first digit in the lowest byte) to their value.
#[inline(always)]
fn parse_8digits(mut v: u64) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 0x000F_4240_0000_0064;
    const MUL2: u64 = 0x0000_2710_0000_0001;
    v = v.wrapping_sub(0x3030_3030_3030_3030);
    v = v.wrapping_mul(10).wrapping_add(v >> 8);
    let v1 = (v & MASK).wrapping_mul(MUL1);
    let v2 = ((v >> 16) & MASK).wrapping_mul(MUL2);
    (v1.wrapping_add(v2) >> 32) as u32 as u64
}

/// Eisel-Lemire: the bits of `w × 10^q` correctly rounded to f64, or None when the
/// truncated product cannot decide the rounding (then a slower exact
/// algorithm must). A port of fast_float's `compute_float` for f64.
#[inline(always)]
fn eisel_lemire(q: i64, w: u64) -> Option<u64> {
    const MANTISSA_BITS: i32 = 52;
    const MINIMUM_EXPONENT: i32 = -1023;
    const INFINITE_POWER: i32 = 0x7FF;
    if w == 0 || q < SMALLEST_POWER_OF_FIVE {
        return Some(0);
    }
    if q > LARGEST_POWER_OF_FIVE {
        return Some(f64::INFINITY.to_bits());
    }
    let lz = w.leading_zeros();
    let w = w << lz;
    let (hi5, lo5) = POWER_OF_FIVE_128[(q - SMALLEST_POWER_OF_FIVE) as usize];
    // The top 64 bits of w × 5^q, refined by the low word when the bits that
    // decide the rounding are all ones.
    let first = (w as u128) * (hi5 as u128);
    let (mut lo, mut hi) = (first as u64, (first >> 64) as u64);
    let mask = u64::MAX >> (MANTISSA_BITS + 3);
    if hi & mask == mask {
        let second_hi = (((w as u128) * (lo5 as u128)) >> 64) as u64;
        lo = lo.wrapping_add(second_hi);
        if second_hi > lo {
            hi += 1;
        }
    }
    if lo == u64::MAX && !(-27..=55).contains(&q) {
        return None;
    }
    let upperbit = (hi >> 63) as i32;
    let shift = upperbit + 64 - MANTISSA_BITS - 3;
    let mut mantissa = hi >> shift;
    let mut power2 = (((q as i32).wrapping_mul(152_170 + 65536) >> 16) + 63) + upperbit
        - lz as i32
        - MINIMUM_EXPONENT;
    if power2 <= 0 {
        // Subnormal (or zero).
        if -power2 + 1 >= 64 {
            return Some(0);
        }
        mantissa >>= -power2 + 1;
        mantissa += mantissa & 1;
        mantissa >>= 1;
        power2 = (mantissa >= (1u64 << MANTISSA_BITS)) as i32;
        return Some(mantissa | ((power2 as u64) << MANTISSA_BITS));
    }
    // Exactly halfway between two floats: round to even (only possible
    // when 5^q is exact in 64 bits).
    if lo <= 1 && (-4..=23).contains(&q) && mantissa & 3 == 1 && (mantissa << shift) == hi {
        mantissa &= !1;
    }
    mantissa += mantissa & 1;
    mantissa >>= 1;
    if mantissa >= (2u64 << MANTISSA_BITS) {
        mantissa = 1u64 << MANTISSA_BITS;
        power2 += 1;
    }
    mantissa &= !(1u64 << MANTISSA_BITS);
    if power2 >= INFINITE_POWER {
        return Some(f64::INFINITY.to_bits());
    }
    Some(mantissa | ((power2 as u64) << MANTISSA_BITS))
}

/// What the `data` of one input must look like.
pub(super) struct DataSpec<'s> {
    pub input: &'s str,
    /// The declared shape: nested data must follow it exactly.
    pub shape: &'s [usize],
    /// Elements the shape holds.
    pub expected: usize,
    pub limits: &'s Limits,
    /// Most elements worth reserving up front (bounded by the body's size,
    /// so a lying shape cannot make us reserve more than the body fills).
    pub prealloc_cap: usize,
}

/// Reads one input's `data` (cursor on it) into a flat `Vec<T>` in
/// row-major order. Data is either flat (one array of scalars) or nested
/// exactly as the shape says (every array at level k holds shape[k] items,
/// scalars only at the innermost level): ragged rows are refused even when
/// their total matches. Fewer elements than the shape holds is left to the
/// caller (the tensor constructor names it).
pub(super) fn data<T: JsonElem>(p: &mut Parser<'_>, spec: &DataSpec<'_>) -> Result<Vec<T>> {
    let input = spec.input;
    let mut out: Vec<T> = Vec::with_capacity(spec.expected.min(spec.prealloc_cap));
    // Items seen so far in each open array, outermost first.
    let mut counts: Vec<usize> = Vec::new();
    // The depth every scalar sits at (they must agree).
    let mut scalar_depth: Option<usize> = None;
    // An array was closed inside the top-level one.
    let mut nested = false;
    'value: loop {
        p.ws();
        let at = p.pos;
        // An empty array, closed right away below.
        let mut empty = false;
        match p.peek() {
            Some(b'[') => {
                if counts.len() >= spec.limits.max_json_depth {
                    return Err(p.invalid(
                        at,
                        &format!(
                            "input '{input}': data is nested deeper than {} levels",
                            spec.limits.max_json_depth
                        ),
                    ));
                }
                p.pos += 1;
                counts.push(0);
                p.ws();
                if p.peek() != Some(b']') {
                    continue 'value;
                }
                empty = true;
            }
            Some(b'-' | b'0'..=b'9') => {
                let depth = counts.len();
                check_depth(p, at, spec, &mut scalar_depth, depth)?;
                if T::FLOAT {
                    float_run(p, spec, &mut out, counts.last_mut())?;
                } else {
                    let v = match p.number()? {
                        Number::U64(v) => T::from_u64(v),
                        Number::I64(v) => T::from_i64(v),
                        Number::F64(v) => T::from_f64(v),
                    };
                    push(p, at, spec, &mut out, v)?;
                }
            }
            Some(b'"') => {
                let s = p.string()?;
                check_depth(p, at, spec, &mut scalar_depth, counts.len())?;
                let v = T::from_str(&s, spec.limits.max_string_bytes);
                push(p, at, spec, &mut out, v)?;
            }
            Some(b't') => {
                p.literal(b"true")?;
                check_depth(p, at, spec, &mut scalar_depth, counts.len())?;
                push(p, at, spec, &mut out, T::from_bool(true))?;
            }
            Some(b'f') => {
                p.literal(b"false")?;
                check_depth(p, at, spec, &mut scalar_depth, counts.len())?;
                push(p, at, spec, &mut out, T::from_bool(false))?;
            }
            Some(b'n') => {
                p.literal(b"null")?;
                return Err(p.invalid(
                    at,
                    &format!(
                        "input '{input}': data holds null, expected {} values",
                        T::NAME
                    ),
                ));
            }
            Some(b'{') => {
                return Err(p.invalid(
                    at,
                    &format!(
                        "input '{input}': data holds an object, expected {} values",
                        T::NAME
                    ),
                ));
            }
            _ => return Err(p.syntax(at, "expected a value")),
        }
        // A value is complete (or an empty array is to be closed): count it
        // in its array, then close arrays until one continues.
        loop {
            if !empty {
                let Some(n) = counts.last_mut() else {
                    break 'value;
                };
                *n += 1;
                p.ws();
                match p.peek() {
                    Some(b',') => {
                        p.pos += 1;
                        continue 'value;
                    }
                    Some(b']') => {}
                    _ => return Err(p.syntax(p.pos, "expected ',' or ']'")),
                }
            }
            empty = false;
            let at = p.pos;
            p.pos += 1;
            let n = counts.pop().unwrap_or(0);
            let level = counts.len();
            if level >= 1 {
                nested = true;
            }
            if nested {
                match spec.shape.get(level) {
                    None => {
                        return Err(p.invalid(
                            at,
                            &format!(
                                "input '{input}': data is nested deeper than its shape {:?}",
                                spec.shape
                            ),
                        ));
                    }
                    Some(&want) if want != n => {
                        return Err(p.invalid(
                            at,
                            &format!(
                                "input '{input}': nested data has {n} items at level {level}, but its shape {:?} says {want}",
                                spec.shape
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    match scalar_depth {
        Some(d) if nested && d != spec.shape.len() => Err(p.invalid(
            p.pos,
            &format!(
                "input '{input}': data is nested {d} levels deep, but its shape {:?} has {} dimensions",
                spec.shape,
                spec.shape.len()
            ),
        )),
        _ => Ok(out),
    }
}

/// The hot loop: a run of numbers in one array of floats, parsed with local
/// state. Leaves the cursor after the last one and counts all but that one
/// in `count` (the caller counts it with the separator that follows).
/// Not inlined: on its own, the loop keeps its state in registers rather
/// than sharing them with the nesting bookkeeping around it.
#[inline(never)]
fn float_run<T: JsonElem>(
    p: &mut Parser<'_>,
    spec: &DataSpec<'_>,
    out: &mut Vec<T>,
    count: Option<&mut usize>,
) -> Result<()> {
    let b = p.b;
    let mut i = p.pos;
    let mut commas = 0usize;
    loop {
        let (v, end) = match fast_f64(b, i) {
            Some(r) => r,
            None => {
                p.pos = i;
                let v = p.f64()?;
                (v, p.pos)
            }
        };
        push(p, i, spec, out, T::from_f64(v))?;
        i = end;
        // Only inside an array do commas separate more numbers.
        if count.is_none() || b.get(i) != Some(&b',') {
            break;
        }
        // Usually ", " or ",": one space checked first, any whitespace after.
        let mut j = i + 1 + (b.get(i + 1) == Some(&b' ')) as usize;
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(j) {
            j += 1;
        }
        if !matches!(b.get(j), Some(b'-' | b'0'..=b'9')) {
            break;
        }
        commas += 1;
        i = j;
    }
    p.pos = i;
    if let Some(n) = count {
        *n += commas;
    }
    Ok(())
}

/// Every scalar must sit at the same depth.
#[inline(always)]
fn check_depth(
    p: &Parser<'_>,
    at: usize,
    spec: &DataSpec<'_>,
    scalar_depth: &mut Option<usize>,
    depth: usize,
) -> Result<()> {
    match *scalar_depth {
        Some(d) if d != depth => Err(p.invalid(
            at,
            &format!(
                "input '{}': data mixes nesting levels (values at depth {d} and {depth}); give it flat or nested as the shape {:?}",
                spec.input, spec.shape
            ),
        )),
        _ => {
            *scalar_depth = Some(depth);
            Ok(())
        }
    }
}

#[inline(always)]
fn push<T>(
    p: &Parser<'_>,
    at: usize,
    spec: &DataSpec<'_>,
    out: &mut Vec<T>,
    v: std::result::Result<T, String>,
) -> Result<()> {
    let v = v.map_err(|m| p.invalid(at, &format!("input '{}': {m}", spec.input)))?;
    if out.len() >= spec.expected {
        return Err(p.invalid(
            at,
            &format!(
                "input '{}' has more data elements than its shape holds ({})",
                spec.input, spec.expected
            ),
        ));
    }
    out.push(v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f64_of(s: &str) -> Result<f64> {
        let mut p = Parser::new(s.as_bytes(), 0);
        let v = p.f64()?;
        assert_eq!(p.pos, s.len(), "{s}");
        Ok(v)
    }

    #[test]
    fn swar_digits() {
        for s in ["00000000", "12345678", "99999999", "10000000", "00000001"] {
            let v = read8(s.as_bytes(), 0).unwrap();
            assert!(is_8digits(v), "{s}");
            assert_eq!(parse_8digits(v), s.parse::<u64>().unwrap(), "{s}");
        }
        for s in [
            "1234567a", "/2345678", ":2345678", "1234 678", "1234.678", "12345678",
        ] {
            let mut b = *b"12345678";
            b.copy_from_slice(s.as_bytes());
            let v = u64::from_le_bytes(b);
            assert_eq!(is_8digits(v), s.bytes().all(|c| c.is_ascii_digit()), "{s}");
        }
        // Every byte value in every position.
        for pos in 0..8 {
            for c in 0..=255u8 {
                let mut b = *b"12345678";
                b[pos] = c;
                assert_eq!(is_8digits(u64::from_le_bytes(b)), c.is_ascii_digit());
            }
        }
    }

    #[test]
    fn numbers_round_like_std() {
        let cases = [
            "0",
            "-0",
            "1",
            "0.1",
            "0.10000000149011612",
            "-1.2345678901234567",
            "1e-5",
            "1.5e+20",
            "1E22",
            "1e23",
            "9007199254740993",
            "9007199254740992.5",
            "2.2250738585072011e-308",
            "2.2250738585072014e-308",
            "4.9e-324",
            "2e-324",
            "1e-400",
            "1.7976931348623157e308",
            "0.000000000000000000000000000001234",
            "123456789012345678901234567890",
            "0.1234567890123456789012345",
            "7.2057594037927933e16",
            "1448997445238699",
            "9.999999999999999e22",
            "3.0000000000000004",
            "0e999999999999999999999",
            "2.4703282292062327e-324",
            "2.4703282292062328e-324",
            "1.00000000000000011102230246251565404236316680908203125",
            "1.00000000000000011102230246251565404236316680908203124",
            // Halfway between two f64s past 2^53: ties to even, in the
            // Eisel-Lemire path (q = 0, 1, 2).
            "9007199254740995",
            "9007199254740997",
            "90071992547409950",
            "900719925474099700",
            "18014398509481987",
            "1.8014398509481987e16",
        ];
        for s in cases {
            let want: f64 = s.parse().unwrap();
            assert_eq!(f64_of(s).unwrap().to_bits(), want.to_bits(), "{s}");
        }
        assert!(f64_of("1e309").is_err());
        assert!(f64_of("-1e400").is_err());
        for bad in ["-", "01", "1.", ".5", "1e", "1e+", "+1", "-a", "1.e5"] {
            let mut p = Parser::new(bad.as_bytes(), 0);
            let ok = p.f64().is_ok() && p.pos == bad.len();
            assert!(!ok, "{bad}");
        }
    }

    proptest::proptest! {
        /// Arbitrary decimal strings (up to 45 digits, any exponent) parse to
        /// exactly what `str::parse::<f64>` gives, on the fast path and the
        /// careful one alike.
        #[test]
        fn decimals_round_like_std(
            neg in proptest::bool::ANY,
            int in "(0|[1-9][0-9]{0,19})",
            frac in proptest::option::of("[0-9]{1,25}"),
            exp in proptest::option::of((proptest::sample::select(vec!["e", "E", "e+", "e-", "E-"]), -400i32..400)),
            tail in proptest::sample::select(vec!["", ",", "]", " ", ", 1.5, 2.25, 3.125, 4, 5, 6, 7"]),
        ) {
            let mut s = String::new();
            if neg {
                s.push('-');
            }
            s.push_str(&int);
            if let Some(f) = &frac {
                s.push('.');
                s.push_str(f);
            }
            if let Some((e, n)) = exp {
                s.push_str(&format!("{e}{}", n.unsigned_abs()));
            }
            let want: f64 = s.parse().unwrap();
            let text = format!("{s}{tail}");
            let mut p = Parser::new(text.as_bytes(), 0);
            match p.f64() {
                Ok(v) => {
                    proptest::prop_assert_eq!(v.to_bits(), want.to_bits(), "{}", s);
                    proptest::prop_assert_eq!(p.pos, s.len());
                }
                Err(e) => {
                    proptest::prop_assert!(want.is_infinite(), "{}: {}", s, e);
                }
            }
            if let Some((v, end)) = fast_f64(text.as_bytes(), 0) {
                proptest::prop_assert_eq!(v.to_bits(), want.to_bits(), "{}", s);
                proptest::prop_assert_eq!(end, s.len());
            }
        }
    }
}
