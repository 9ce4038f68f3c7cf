//! A small, schema-less reader for protobuf text format, enough for Triton's
//! `config.pbtxt`.
//!
//! It builds a generic tree (field name → values) instead of decoding into a
//! fixed schema, so fields pomme does not use (`optimization`, `parameters`,
//! `model_warmup`...) are kept and ignored rather than rejected. It never
//! panics: nesting depth and input size are bounded and every problem is an
//! error naming the line and column.

use std::fmt;

/// Deepest message nesting accepted.
const MAX_DEPTH: usize = 64;

/// A parse error with its position (1-based).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct PbtxtError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// One field value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A number, as written (`8`, `-1`, `0x10`, `1.5e3`).
    Number(String),
    /// A quoted string (adjacent strings concatenated), unescaped.
    Str(Vec<u8>),
    /// A bare identifier: an enum value, `true` or `false`.
    Ident(String),
    /// A nested message.
    Message(Message),
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n) => parse_int(n),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i64().and_then(|v| u64::try_from(v).ok())
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => n.trim_end_matches(['f', 'F']).parse().ok(),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Ident(s) if s == "true" || s == "True" || s == "t" => Some(true),
            Value::Ident(s) if s == "false" || s == "False" || s == "f" => Some(false),
            Value::Number(n) if n == "1" => Some(true),
            Value::Number(n) if n == "0" => Some(false),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => std::str::from_utf8(s).ok(),
            _ => None,
        }
    }
    pub fn as_ident(&self) -> Option<&str> {
        match self {
            Value::Ident(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_message(&self) -> Option<&Message> {
        match self {
            Value::Message(m) => Some(m),
            _ => None,
        }
    }
}

fn parse_int(n: &str) -> Option<i64> {
    let (neg, digits) = match n.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, n),
    };
    let v = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        i64::from_str_radix(hex, 16).ok()?
    } else {
        digits.parse::<i64>().ok()?
    };
    Some(if neg { -v } else { v })
}

/// A message: its fields in the order written; repeated fields appear once per value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    pub fields: Vec<(String, Value)>,
}

impl Message {
    /// The last value of field `name` (proto semantics for a singular field).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
    /// Every value of a repeated field.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

/// Parses a text-format message.
pub fn parse(text: &str) -> Result<Message, PbtxtError> {
    let mut p = Parser {
        src: text.as_bytes(),
        pos: 0,
    };
    let msg = p.message(None, 0)?;
    Ok(msg)
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, message: impl fmt::Display) -> PbtxtError {
        let upto = &self.src[..self.pos.min(self.src.len())];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = upto.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        PbtxtError {
            line,
            column,
            message: message.to_string(),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(&b) = self.src.get(self.pos) {
            if b.is_ascii_whitespace() {
                self.pos += 1;
            } else if b == b'#' {
                while self.src.get(self.pos).is_some_and(|&c| c != b'\n') {
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.src.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Option<String> {
        self.skip_ws();
        let start = self.pos;
        while self.src.get(self.pos).is_some_and(|&b| {
            b.is_ascii_alphanumeric() || b == b'_' || (b == b'.' && self.pos > start)
        }) {
            self.pos += 1;
        }
        if self.pos == start || self.src[start].is_ascii_digit() {
            self.pos = start;
            return None;
        }
        Some(String::from_utf8_lossy(&self.src[start..self.pos]).into_owned())
    }

    /// Fields until `close` (or the end of input at the top level).
    fn message(&mut self, close: Option<u8>, depth: usize) -> Result<Message, PbtxtError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("messages nested deeper than {MAX_DEPTH}")));
        }
        let mut msg = Message::default();
        loop {
            match (self.peek(), close) {
                (None, None) => return Ok(msg),
                (None, Some(c)) => return Err(self.error(format!("missing '{}'", c as char))),
                (Some(c), Some(want)) if c == want => {
                    self.pos += 1;
                    return Ok(msg);
                }
                _ => {}
            }
            let Some(name) = self.ident() else {
                return Err(self.error("expected a field name"));
            };
            let colon = self.eat(b':');
            match self.peek() {
                Some(open @ (b'{' | b'<')) => {
                    self.pos += 1;
                    let close = if open == b'{' { b'}' } else { b'>' };
                    let m = self.message(Some(close), depth + 1)?;
                    msg.fields.push((name, Value::Message(m)));
                }
                // Triton writes `input [ { ... } ]` without a colon; accept both forms.
                Some(b'[') => {
                    self.pos += 1;
                    if !self.eat(b']') {
                        loop {
                            let v = self.list_item(depth)?;
                            msg.fields.push((name.clone(), v));
                            if self.eat(b']') {
                                break;
                            }
                            if !self.eat(b',') {
                                return Err(self.error("expected ',' or ']' in a list"));
                            }
                        }
                    }
                }
                _ if colon => {
                    let v = self.scalar()?;
                    msg.fields.push((name, v));
                }
                _ => return Err(self.error(format!("expected ':' or '{{' after '{name}'"))),
            }
            // Optional field separators.
            if !self.eat(b',') {
                self.eat(b';');
            }
        }
    }

    fn list_item(&mut self, depth: usize) -> Result<Value, PbtxtError> {
        match self.peek() {
            Some(open @ (b'{' | b'<')) => {
                self.pos += 1;
                let close = if open == b'{' { b'}' } else { b'>' };
                Ok(Value::Message(self.message(Some(close), depth + 1)?))
            }
            _ => self.scalar(),
        }
    }

    fn scalar(&mut self) -> Result<Value, PbtxtError> {
        match self.peek() {
            Some(b'"' | b'\'') => {
                let mut out = Vec::new();
                while let Some(q @ (b'"' | b'\'')) = self.peek() {
                    self.pos += 1;
                    self.string_body(q, &mut out)?;
                }
                Ok(Value::Str(out))
            }
            Some(b) if b == b'-' || b == b'.' || b.is_ascii_digit() => {
                let start = self.pos;
                self.pos += 1;
                while self.src.get(self.pos).is_some_and(|&c| {
                    c.is_ascii_alphanumeric()
                        || c == b'.'
                        || ((c == b'+' || c == b'-')
                            && matches!(self.src[self.pos - 1], b'e' | b'E'))
                }) {
                    self.pos += 1;
                }
                let text = String::from_utf8_lossy(&self.src[start..self.pos]).into_owned();
                // `-inf` and `-nan` are identifiers with a sign.
                if text.starts_with('-') && text[1..].starts_with(|c: char| c.is_ascii_alphabetic())
                {
                    return Ok(Value::Ident(text));
                }
                if text == "-" {
                    return Err(self.error("expected a number after '-'"));
                }
                Ok(Value::Number(text))
            }
            Some(_) => match self.ident() {
                Some(id) => Ok(Value::Ident(id)),
                None => Err(self.error("expected a value")),
            },
            None => Err(self.error("expected a value, found the end of input")),
        }
    }

    fn string_body(&mut self, quote: u8, out: &mut Vec<u8>) -> Result<(), PbtxtError> {
        loop {
            let Some(&b) = self.src.get(self.pos) else {
                return Err(self.error("unterminated string"));
            };
            self.pos += 1;
            match b {
                b'\n' => return Err(self.error("newline inside a string")),
                b'\\' => {
                    let Some(&e) = self.src.get(self.pos) else {
                        return Err(self.error("unterminated string"));
                    };
                    self.pos += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'a' => out.push(7),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'v' => out.push(11),
                        b'\\' | b'\'' | b'"' | b'?' => out.push(e),
                        b'x' | b'X' => {
                            let mut v: u32 = 0;
                            let mut n = 0;
                            while n < 2 && self.src.get(self.pos).is_some_and(u8::is_ascii_hexdigit)
                            {
                                v = v * 16 + (self.src[self.pos] as char).to_digit(16).unwrap_or(0);
                                self.pos += 1;
                                n += 1;
                            }
                            if n == 0 {
                                return Err(self.error("\\x without hex digits"));
                            }
                            out.push(v as u8);
                        }
                        b'0'..=b'7' => {
                            let mut v: u32 = (e - b'0') as u32;
                            let mut n = 1;
                            while n < 3
                                && self
                                    .src
                                    .get(self.pos)
                                    .is_some_and(|c| (b'0'..=b'7').contains(c))
                            {
                                v = v * 8 + (self.src[self.pos] - b'0') as u32;
                                self.pos += 1;
                                n += 1;
                            }
                            out.push((v & 0xff) as u8);
                        }
                        other => {
                            return Err(self.error(format!("unknown escape '\\{}'", other as char)));
                        }
                    }
                }
                q if q == quote => return Ok(()),
                other => out.push(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TRITON: &str = r#"
name: "resnet"   # a comment
platform: "onnxruntime_onnx"
max_batch_size : 8
input [
  {
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
  }
]
output {
  name: "probs", data_type: TYPE_FP32, dims: [ 1000 ]
  label_filename: 'labels.txt'
}
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  default_queue_policy { max_queue_size: 16 default_timeout_microseconds: 0x10 }
}
instance_group [ { count: 2, kind: KIND_CPU } ]
parameters { key: "x" value: < string_value: "a\tb\x41\101" > }
optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" } ] } }
"#;

    #[test]
    fn parses_a_triton_config() {
        let m = parse(TRITON).unwrap();
        assert_eq!(m.get("name").unwrap().as_str(), Some("resnet"));
        assert_eq!(m.get("max_batch_size").unwrap().as_i64(), Some(8));
        let input = m.get("input").unwrap().as_message().unwrap();
        assert_eq!(
            input.get("data_type").unwrap().as_ident(),
            Some("TYPE_FP32")
        );
        let dims: Vec<i64> = input.all("dims").filter_map(Value::as_i64).collect();
        assert_eq!(dims, vec![3, 224, 224]);
        let output = m.get("output").unwrap().as_message().unwrap();
        assert_eq!(
            output.get("label_filename").unwrap().as_str(),
            Some("labels.txt")
        );
        let db = m.get("dynamic_batching").unwrap().as_message().unwrap();
        let pref: Vec<i64> = db
            .all("preferred_batch_size")
            .filter_map(Value::as_i64)
            .collect();
        assert_eq!(pref, vec![4, 8]);
        let q = db
            .get("default_queue_policy")
            .unwrap()
            .as_message()
            .unwrap();
        assert_eq!(
            q.get("default_timeout_microseconds").unwrap().as_u64(),
            Some(16)
        );
        let ig = m.get("instance_group").unwrap().as_message().unwrap();
        assert_eq!(ig.get("count").unwrap().as_i64(), Some(2));
        let p = m.get("parameters").unwrap().as_message().unwrap();
        let v = p.get("value").unwrap().as_message().unwrap();
        assert_eq!(v.get("string_value").unwrap().as_str(), Some("a\tbAA"));
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("name: \"x\"\nmax_batch_size 8").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("expected ':' or '{'"), "{e}");
        assert!(
            parse("input { name: \"a\"")
                .unwrap_err()
                .message
                .contains("missing '}'")
        );
        assert!(
            parse("name: \"abc")
                .unwrap_err()
                .message
                .contains("unterminated")
        );
        assert!(parse("dims: [1, 2").is_err());
        let deep = "a {".repeat(100) + &"}".repeat(100);
        assert!(parse(&deep).unwrap_err().message.contains("nested deeper"));
    }

    #[test]
    fn numbers() {
        let m = parse("a: -1 b: 1.5e-3 c: -inf d: 0x1F e: 2.5f").unwrap();
        assert_eq!(m.get("a").unwrap().as_i64(), Some(-1));
        assert_eq!(m.get("b").unwrap().as_f64(), Some(1.5e-3));
        assert_eq!(m.get("c").unwrap().as_ident(), Some("-inf"));
        assert_eq!(m.get("d").unwrap().as_i64(), Some(31));
        assert_eq!(m.get("e").unwrap().as_f64(), Some(2.5));
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_near_valid(cut in 0usize..700, byte in any::<u8>()) {
            let mut b = TRITON.as_bytes().to_vec();
            let at = cut % b.len();
            b[at] = byte;
            let _ = parse(&String::from_utf8_lossy(&b));
        }

        #[test]
        fn written_messages_round_trip(fields in proptest::collection::vec(("[a-z_]{1,8}", -1000i64..1000, "[ -~]{0,10}"), 0..8)) {
            let mut text = String::new();
            for (name, n, s) in &fields {
                let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
                text.push_str(&format!("{name}: {n}\n{name}_s: \"{escaped}\"\n{name}_m {{ v: [{n}, {n}] }}\n"));
            }
            let m = parse(&text).unwrap();
            prop_assert_eq!(m.fields.len(), fields.len() * 3);
            for (i, (_, n, s)) in fields.iter().enumerate() {
                prop_assert_eq!(m.fields[3 * i].1.as_i64(), Some(*n));
                prop_assert_eq!(m.fields[3 * i + 1].1.as_str(), Some(s.as_str()));
                let inner = m.fields[3 * i + 2].1.as_message().unwrap();
                prop_assert_eq!(inner.all("v").count(), 2);
            }
        }
    }
}
