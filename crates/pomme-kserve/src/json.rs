//! HTTP/REST infer requests and responses: KServe v2 JSON plus Triton's binary
//! tensor data extension.
//!
//! JSON decoding dominates a JSON inference server's CPU time, so tensor
//! `data` arrays are never built as `serde_json::Value` trees: a
//! [`DeserializeSeed`] flattens (possibly nested) arrays straight into a typed
//! `Vec<T>` sized from the declared shape. When a client sends `data` before
//! `datatype`/`shape` (legal JSON, unusual in practice), the array is kept as a
//! borrowed raw slice and parsed the same way once the type is known.
//!
//! Encoding writes the JSON bytes directly (no `Value` tree either), for
//! responses on the server and for requests in the load generator alike.

use crate::common::{
    SequenceId, binary_len, binary_tensor, checked_shape, named, parse_dtype, priority_from,
    sequence_from, truncate, write_length_prefixed,
};
use crate::{DecodedRequest, Limits, OutputPrefs, RequestedOutput};
use bytes::Bytes;
use pomme_core::{DType, Error, Result, Tensor};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;
use std::time::Duration;

type Params = Map<String, Value>;

/// Decodes an HTTP infer request body.
///
/// `header_len` is the `Inference-Header-Content-Length` header's value when
/// present: the JSON part's length, with binary tensor data after it.
pub fn decode_request(
    body: Bytes,
    header_len: Option<&str>,
    limits: &Limits,
) -> Result<DecodedRequest> {
    if body.len() > limits.max_body_bytes {
        return Err(Error::invalid_input(format!(
            "request body of {} bytes is larger than the limit of {}",
            body.len(),
            limits.max_body_bytes
        )));
    }
    let json_len = match header_len {
        None => body.len(),
        Some(h) => {
            let n: usize = h.trim().parse().map_err(|_| {
                Error::invalid_input(format!(
                    "bad Inference-Header-Content-Length value '{}'",
                    truncate(h, 32)
                ))
            })?;
            if n > body.len() {
                return Err(Error::invalid_input(format!(
                    "Inference-Header-Content-Length {n} is larger than the body ({} bytes)",
                    body.len()
                )));
            }
            n
        }
    };
    let json = &body[..json_len];
    let binary = body.slice(json_len..);
    let ctx = Ctx {
        limits,
        // Each JSON number takes at least two bytes ("0,"), so a lying shape
        // cannot make us reserve more than the body could ever fill.
        prealloc_cap: json_len / 2 + 1,
    };
    let mut de = serde_json::Deserializer::from_slice(json);
    let wire = RequestSeed { ctx }
        .deserialize(&mut de)
        .map_err(json_error)?;
    de.end().map_err(json_error)?;
    assemble(wire, binary, ctx)
}

fn json_error(e: serde_json::Error) -> Error {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => Error::invalid_input(truncate(&e.to_string(), 300)),
        _ => Error::invalid_input(format!("malformed JSON: {}", truncate(&e.to_string(), 300))),
    }
}

#[derive(Clone, Copy)]
struct Ctx<'l> {
    limits: &'l Limits,
    prealloc_cap: usize,
}

struct WireRequest<'de> {
    id: Option<String>,
    parameters: Params,
    inputs: Vec<WireInput<'de>>,
    outputs: Option<Vec<WireOutput>>,
}

struct WireInput<'de> {
    name: Option<String>,
    shape: Option<Vec<i64>>,
    datatype: Option<String>,
    parameters: Params,
    data: Option<WireData<'de>>,
}

enum WireData<'de> {
    Parsed(DataBuf),
    Raw(&'de RawValue),
}

#[derive(Deserialize)]
struct WireOutput {
    name: String,
    #[serde(default)]
    parameters: Params,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum RequestField {
    Id,
    Parameters,
    Inputs,
    Outputs,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum InputField {
    Name,
    Shape,
    Datatype,
    Parameters,
    Data,
    #[serde(other)]
    Other,
}

struct RequestSeed<'l> {
    ctx: Ctx<'l>,
}

impl<'de> DeserializeSeed<'de> for RequestSeed<'_> {
    type Value = WireRequest<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed<'_> {
    type Value = WireRequest<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an inference request object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut req = WireRequest {
            id: None,
            parameters: Params::new(),
            inputs: Vec::new(),
            outputs: None,
        };
        let mut saw_inputs = false;
        while let Some(key) = map.next_key::<RequestField>()? {
            match key {
                RequestField::Id => req.id = map.next_value()?,
                RequestField::Parameters => {
                    req.parameters = map.next_value::<Option<Params>>()?.unwrap_or_default()
                }
                RequestField::Inputs => {
                    req.inputs = map.next_value_seed(InputsSeed { ctx: self.ctx })?;
                    saw_inputs = true;
                }
                RequestField::Outputs => req.outputs = map.next_value()?,
                RequestField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !saw_inputs {
            return Err(de::Error::custom("request has no 'inputs'"));
        }
        Ok(req)
    }
}

struct InputsSeed<'l> {
    ctx: Ctx<'l>,
}

impl<'de> DeserializeSeed<'de> for InputsSeed<'_> {
    type Value = Vec<WireInput<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for InputsSeed<'_> {
    type Value = Vec<WireInput<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of input tensors")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(input) = seq.next_element_seed(InputSeed { ctx: self.ctx })? {
            if out.len() >= self.ctx.limits.max_inputs {
                return Err(de::Error::custom(format!(
                    "more than {} inputs",
                    self.ctx.limits.max_inputs
                )));
            }
            out.push(input);
        }
        Ok(out)
    }
}

struct InputSeed<'l> {
    ctx: Ctx<'l>,
}

impl<'de> DeserializeSeed<'de> for InputSeed<'_> {
    type Value = WireInput<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for InputSeed<'_> {
    type Value = WireInput<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an input tensor object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut input = WireInput {
            name: None,
            shape: None,
            datatype: None,
            parameters: Params::new(),
            data: None,
        };
        while let Some(key) = map.next_key::<InputField>()? {
            match key {
                InputField::Name => input.name = Some(map.next_value()?),
                InputField::Shape => input.shape = Some(map.next_value()?),
                InputField::Datatype => input.datatype = Some(map.next_value()?),
                InputField::Parameters => {
                    input.parameters = map.next_value::<Option<Params>>()?.unwrap_or_default()
                }
                InputField::Data => {
                    if input.data.is_some() {
                        return Err(de::Error::custom("input has 'data' twice"));
                    }
                    let known = match (&input.datatype, &input.shape) {
                        (Some(dt), Some(shape)) => DType::from_kserve(dt).and_then(|dt| {
                            let name = input.name.as_deref().unwrap_or("?");
                            checked_shape(name, shape, self.ctx.limits)
                                .ok()
                                .map(|s| (dt, s))
                        }),
                        _ => None,
                    };
                    input.data = Some(match known {
                        Some((dtype, shape)) => {
                            WireData::Parsed(map.next_value_seed(DataSeed {
                                input: input.name.as_deref().unwrap_or("?"),
                                dtype,
                                expected: shape.iter().product::<usize>(),
                                shape: &shape,
                                ctx: self.ctx,
                            })?)
                        }
                        None => WireData::Raw(map.next_value()?),
                    });
                }
                InputField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(input)
    }
}

/// Typed, flattened tensor data straight out of JSON.
enum DataBuf {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F16(Vec<half::f16>),
    BF16(Vec<half::bf16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<Bytes>),
}

impl DataBuf {
    fn into_tensor(self, shape: Vec<usize>) -> Result<Tensor> {
        match self {
            DataBuf::Bool(v) => Tensor::from_bools(shape, &v),
            DataBuf::U8(v) => Tensor::from_vec(shape, v),
            DataBuf::U16(v) => Tensor::from_vec(shape, v),
            DataBuf::U32(v) => Tensor::from_vec(shape, v),
            DataBuf::U64(v) => Tensor::from_vec(shape, v),
            DataBuf::I8(v) => Tensor::from_vec(shape, v),
            DataBuf::I16(v) => Tensor::from_vec(shape, v),
            DataBuf::I32(v) => Tensor::from_vec(shape, v),
            DataBuf::I64(v) => Tensor::from_vec(shape, v),
            DataBuf::F16(v) => Tensor::from_vec(shape, v),
            DataBuf::BF16(v) => Tensor::from_vec(shape, v),
            DataBuf::F32(v) => Tensor::from_vec(shape, v),
            DataBuf::F64(v) => Tensor::from_vec(shape, v),
            DataBuf::Bytes(v) => Tensor::from_strings(shape, v),
        }
    }
}

/// Parses one input's `data` into a [`DataBuf`] of its declared dtype.
struct DataSeed<'a> {
    input: &'a str,
    dtype: DType,
    /// The declared shape: nested data must follow it exactly.
    shape: &'a [usize],
    expected: usize,
    ctx: Ctx<'a>,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = DataBuf;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<DataBuf, D::Error> {
        macro_rules! flat {
            ($t:ty, $variant:ident) => {{
                let mut out: Vec<$t> = Vec::with_capacity(self.expected.min(self.ctx.prealloc_cap));
                let nesting = Nesting::default();
                Flatten {
                    out: &mut out,
                    depth: 0,
                    input: self.input,
                    expected: self.expected,
                    limits: self.ctx.limits,
                    shape: self.shape,
                    nesting: &nesting,
                }
                .deserialize(d)?;
                nesting.finish::<D::Error>(self.input, self.shape)?;
                DataBuf::$variant(out)
            }};
        }
        Ok(match self.dtype {
            DType::Bool => flat!(bool, Bool),
            DType::U8 => flat!(u8, U8),
            DType::U16 => flat!(u16, U16),
            DType::U32 => flat!(u32, U32),
            DType::U64 => flat!(u64, U64),
            DType::I8 => flat!(i8, I8),
            DType::I16 => flat!(i16, I16),
            DType::I32 => flat!(i32, I32),
            DType::I64 => flat!(i64, I64),
            DType::F16 => flat!(half::f16, F16),
            DType::BF16 => flat!(half::bf16, BF16),
            DType::F32 => flat!(f32, F32),
            DType::F64 => flat!(f64, F64),
            DType::Bytes => flat!(Bytes, Bytes),
        })
    }
}

/// One element type as it may appear in JSON `data`.
trait JsonElem: Sized {
    const NAME: &'static str;
    fn from_f64(v: f64) -> Result<Self, String>;
    fn from_i64(v: i64) -> Result<Self, String>;
    fn from_u64(v: u64) -> Result<Self, String>;
    fn from_bool(v: bool) -> Result<Self, String> {
        Err(format!("{} data holds boolean {v}", Self::NAME))
    }
    fn from_str(v: &str, _max: usize) -> Result<Self, String> {
        Err(format!(
            "{} data holds string \"{}\"",
            Self::NAME,
            truncate(v, 16)
        ))
    }
}

macro_rules! json_int {
    ($($t:ty => $name:literal),* $(,)?) => {$(
        impl JsonElem for $t {
            const NAME: &'static str = $name;
            fn from_i64(v: i64) -> Result<Self, String> {
                <$t>::try_from(v).map_err(|_| format!("value {v} is out of range for {}", $name))
            }
            fn from_u64(v: u64) -> Result<Self, String> {
                <$t>::try_from(v).map_err(|_| format!("value {v} is out of range for {}", $name))
            }
            fn from_f64(v: f64) -> Result<Self, String> {
                // Integral floats (`2.0`) are accepted; anything else is a type error.
                if v.fract() == 0.0 && v >= <$t>::MIN as f64 && v <= <$t>::MAX as f64 {
                    Ok(v as $t)
                } else {
                    Err(format!("{} data holds non-integer {v}", $name))
                }
            }
        }
    )*};
}

json_int!(u8 => "UINT8", u16 => "UINT16", u32 => "UINT32", u64 => "UINT64",
          i8 => "INT8", i16 => "INT16", i32 => "INT32", i64 => "INT64");

macro_rules! json_float {
    ($($t:ty => $name:literal, $conv:expr),* $(,)?) => {$(
        impl JsonElem for $t {
            const NAME: &'static str = $name;
            fn from_f64(v: f64) -> Result<Self, String> { Ok($conv(v)) }
            fn from_i64(v: i64) -> Result<Self, String> { Ok($conv(v as f64)) }
            fn from_u64(v: u64) -> Result<Self, String> { Ok($conv(v as f64)) }
        }
    )*};
}

json_float!(
    f32 => "FP32", |v: f64| v as f32,
    f64 => "FP64", |v: f64| v,
    half::f16 => "FP16", half::f16::from_f64,
    half::bf16 => "BF16", half::bf16::from_f64,
);

impl JsonElem for bool {
    const NAME: &'static str = "BOOL";
    fn from_f64(v: f64) -> Result<Self, String> {
        Err(format!(
            "BOOL data holds number {v}, expected true or false"
        ))
    }
    fn from_i64(v: i64) -> Result<Self, String> {
        Err(format!(
            "BOOL data holds number {v}, expected true or false"
        ))
    }
    fn from_u64(v: u64) -> Result<Self, String> {
        Err(format!(
            "BOOL data holds number {v}, expected true or false"
        ))
    }
    fn from_bool(v: bool) -> Result<Self, String> {
        Ok(v)
    }
}

impl JsonElem for Bytes {
    const NAME: &'static str = "BYTES";
    fn from_f64(v: f64) -> Result<Self, String> {
        Err(format!("BYTES data holds number {v}, expected strings"))
    }
    fn from_i64(v: i64) -> Result<Self, String> {
        Err(format!("BYTES data holds number {v}, expected strings"))
    }
    fn from_u64(v: u64) -> Result<Self, String> {
        Err(format!("BYTES data holds number {v}, expected strings"))
    }
    fn from_bool(v: bool) -> Result<Self, String> {
        Err(format!("BYTES data holds boolean {v}, expected strings"))
    }
    fn from_str(v: &str, max: usize) -> Result<Self, String> {
        if v.len() > max {
            return Err(format!(
                "a {}-byte string is longer than the limit of {max}",
                v.len()
            ));
        }
        Ok(Bytes::copy_from_slice(v.as_bytes()))
    }
}

/// Flattens nested arrays of scalars into `out`, in row-major order. Data
/// is either flat (one array of scalars) or nested exactly as the shape
/// says (every array at level k holds shape[k] items, scalars only at the
/// innermost level): ragged rows are refused even when their total matches.
struct Flatten<'a, T> {
    out: &'a mut Vec<T>,
    depth: usize,
    input: &'a str,
    expected: usize,
    limits: &'a Limits,
    shape: &'a [usize],
    nesting: &'a Nesting,
}

/// What a `data` value's nesting looked like so far.
#[derive(Default)]
struct Nesting {
    /// The depth every scalar sits at (they must agree).
    scalar_depth: std::cell::Cell<Option<usize>>,
    /// An array was seen inside the top-level one.
    nested: std::cell::Cell<bool>,
}

impl Nesting {
    /// After the whole value: nested data must reach exactly the shape's rank.
    fn finish<E: de::Error>(&self, input: &str, shape: &[usize]) -> Result<(), E> {
        match self.scalar_depth.get() {
            Some(d) if self.nested.get() && d != shape.len() => Err(E::custom(format!(
                "input '{input}': data is nested {d} levels deep, but its shape {shape:?} has {} dimensions",
                shape.len()
            ))),
            _ => Ok(()),
        }
    }
}

impl<T: JsonElem> Flatten<'_, T> {
    fn push<E: de::Error>(self, v: Result<T, String>) -> Result<(), E> {
        match self.nesting.scalar_depth.get() {
            Some(d) if d != self.depth => {
                return Err(E::custom(format!(
                    "input '{}': data mixes nesting levels (values at depth {d} and {}); give it flat or nested as the shape {:?}",
                    self.input, self.depth, self.shape
                )));
            }
            _ => self.nesting.scalar_depth.set(Some(self.depth)),
        }
        let v = v.map_err(|m| E::custom(format!("input '{}': {m}", self.input)))?;
        if self.out.len() >= self.expected {
            return Err(E::custom(format!(
                "input '{}' has more data elements than its shape holds ({})",
                self.input, self.expected
            )));
        }
        self.out.push(v);
        Ok(())
    }
}

impl<'de, T: JsonElem> DeserializeSeed<'de> for Flatten<'_, T> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: JsonElem> Visitor<'de> for Flatten<'_, T> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} values, possibly in nested arrays", T::NAME)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= self.limits.max_json_depth {
            return Err(de::Error::custom(format!(
                "input '{}': data is nested deeper than {} levels",
                self.input, self.limits.max_json_depth
            )));
        }
        let mut n = 0usize;
        while seq
            .next_element_seed(Flatten {
                out: &mut *self.out,
                depth: self.depth + 1,
                input: self.input,
                expected: self.expected,
                limits: self.limits,
                shape: self.shape,
                nesting: self.nesting,
            })?
            .is_some()
        {
            n += 1;
        }
        if self.depth >= 1 {
            self.nesting.nested.set(true);
        }
        if self.nesting.nested.get() {
            match self.shape.get(self.depth) {
                None => {
                    return Err(de::Error::custom(format!(
                        "input '{}': data is nested deeper than its shape {:?}",
                        self.input, self.shape
                    )));
                }
                Some(&want) if want != n => {
                    return Err(de::Error::custom(format!(
                        "input '{}': nested data has {n} items at level {}, but its shape {:?} says {want}",
                        self.input, self.depth, self.shape
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(T::from_f64(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(T::from_i64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(T::from_u64(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(T::from_bool(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let max = self.limits.max_string_bytes;
        self.push(T::from_str(v, max))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(format!(
            "input '{}': data holds null, expected {} values",
            self.input,
            T::NAME
        )))
    }
    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        Err(de::Error::custom(format!(
            "input '{}': data holds an object, expected {} values",
            self.input,
            T::NAME
        )))
    }
}

fn param_bool(params: &Params, key: &str, what: &str) -> Result<Option<bool>> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Error::invalid_input(format!(
            "{what}parameters.{key} must be a boolean"
        ))),
    }
}

fn param_u64(params: &Params, key: &str, what: &str) -> Result<Option<u64>> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            Error::invalid_input(format!(
                "{what}parameters.{key} must be a non-negative integer"
            ))
        }),
    }
}

/// `sequence_id`: a non-negative integer or a string.
fn param_sequence_id(params: &Params) -> Result<Option<SequenceId>> {
    match params.get("sequence_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(SequenceId::Text(s.clone()))),
        Some(v) => v
            .as_u64()
            .map(|n| Some(SequenceId::Number(n)))
            .ok_or_else(|| {
                Error::invalid_input(
                    "parameters.sequence_id must be a non-negative integer or a string",
                )
            }),
    }
}

fn assemble(wire: WireRequest<'_>, binary: Bytes, ctx: Ctx<'_>) -> Result<DecodedRequest> {
    let limits = ctx.limits;
    let binary_data_output =
        param_bool(&wire.parameters, "binary_data_output", "")?.unwrap_or(false);
    let priority = priority_from(param_u64(&wire.parameters, "priority", "")?)?;
    let timeout = param_u64(&wire.parameters, "timeout", "")?.map(Duration::from_micros);
    let sequence = sequence_from(
        param_sequence_id(&wire.parameters)?,
        param_bool(&wire.parameters, "sequence_start", "")?,
        param_bool(&wire.parameters, "sequence_end", "")?,
    )?;

    let mut at = 0usize;
    let mut inputs = Vec::with_capacity(wire.inputs.len());
    for inp in wire.inputs {
        let name = inp
            .name
            .ok_or_else(|| Error::invalid_input("an input has no 'name'"))?;
        let dtype_name = inp
            .datatype
            .ok_or_else(|| Error::invalid_input(format!("input '{name}' has no 'datatype'")))?;
        let dtype = parse_dtype(&name, &dtype_name)?;
        let dims = inp
            .shape
            .ok_or_else(|| Error::invalid_input(format!("input '{name}' has no 'shape'")))?;
        let shape = checked_shape(&name, &dims, limits)?;
        let what = format!("input '{name}' ");
        let bin_size = param_u64(&inp.parameters, "binary_data_size", &what)?;
        let tensor = match (bin_size, inp.data) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid_input(format!(
                    "input '{name}' has both 'data' and parameters.binary_data_size"
                )));
            }
            (Some(n), None) => {
                let left = binary.len() - at;
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n > left {
                    return Err(Error::invalid_input(format!(
                        "input '{name}' binary_data_size {n} is larger than the binary data left ({left} bytes)"
                    )));
                }
                let raw = binary.slice(at..at + n);
                at += n;
                binary_tensor(&name, dtype, shape, raw, limits)?
            }
            (None, Some(WireData::Parsed(buf))) => {
                buf.into_tensor(shape).map_err(|e| named(&name, e))?
            }
            (None, Some(WireData::Raw(raw))) => {
                let expected = shape.iter().product();
                let mut de = serde_json::Deserializer::from_str(raw.get());
                let buf = DataSeed {
                    input: &name,
                    dtype,
                    shape: &shape,
                    expected,
                    ctx,
                }
                .deserialize(&mut de)
                .map_err(json_error)?;
                buf.into_tensor(shape).map_err(|e| named(&name, e))?
            }
            (None, None) => {
                return Err(Error::invalid_input(format!(
                    "input '{name}' has neither 'data' nor parameters.binary_data_size"
                )));
            }
        };
        inputs.push((name, tensor));
    }
    if at != binary.len() {
        return Err(Error::invalid_input(format!(
            "{} bytes of binary data follow the JSON but no input claims them",
            binary.len() - at
        )));
    }
    let outputs = wire
        .outputs
        .map(|outs| {
            outs.into_iter()
                .map(|o| {
                    let what = format!("output '{}' ", o.name);
                    let classification = match param_u64(&o.parameters, "classification", &what)? {
                        Some(0) => {
                            return Err(Error::invalid_input(format!(
                                "{what}parameters.classification must be at least 1"
                            )));
                        }
                        k => k.map(|k| k as usize),
                    };
                    Ok(RequestedOutput {
                        binary: param_bool(&o.parameters, "binary_data", &what)?,
                        classification,
                        name: o.name,
                    })
                })
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?;
    Ok(DecodedRequest {
        id: wire.id,
        inputs,
        outputs,
        binary_data_output,
        priority,
        timeout,
        sequence,
    })
}

/// An encoded HTTP infer request or response body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedBody {
    /// JSON, followed by the binary tensors when there are any.
    pub body: Vec<u8>,
    /// Length of the JSON part when binary data follows (the value of the
    /// `Inference-Header-Content-Length` header).
    pub json_len: Option<usize>,
}

/// Encodes an infer response, with outputs in JSON `data` or in the binary section.
pub fn encode_response(
    model: &str,
    version: u64,
    id: Option<&str>,
    outputs: &[(String, Tensor)],
    prefs: &OutputPrefs,
) -> Result<EncodedBody> {
    let binary: Vec<bool> = outputs.iter().map(|(n, _)| prefs.is_binary(n)).collect();
    let mut out = Vec::with_capacity(64 + body_estimate(outputs, &binary));
    out.extend_from_slice(b"{\"model_name\":");
    write_json(&mut out, model)?;
    out.extend_from_slice(b",\"model_version\":\"");
    out.extend_from_slice(version.to_string().as_bytes());
    out.push(b'"');
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        write_json(&mut out, id)?;
    }
    out.extend_from_slice(b",\"outputs\":");
    write_tensors(&mut out, outputs, &binary)?;
    out.push(b'}');
    let any_binary = binary.iter().any(|b| *b);
    finish_body(out, outputs, &binary, any_binary)
}

/// Encodes an infer request (client side: the load generator and tests).
/// With `binary`, every input goes in the binary section and the reply's
/// outputs are asked for in binary too (`binary_data_output`); otherwise the
/// inputs are JSON `data`.
pub fn encode_request(inputs: &[(String, Tensor)], binary: bool) -> Result<EncodedBody> {
    let marks = vec![binary; inputs.len()];
    let mut out = Vec::with_capacity(64 + body_estimate(inputs, &marks));
    out.extend_from_slice(b"{\"inputs\":");
    write_tensors(&mut out, inputs, &marks)?;
    if binary {
        out.extend_from_slice(b",\"parameters\":{\"binary_data_output\":true}");
    }
    out.push(b'}');
    finish_body(out, inputs, &marks, binary)
}

/// A capacity guess for a body holding `tensors`, binary ones as marked.
fn body_estimate(tensors: &[(String, Tensor)], binary: &[bool]) -> usize {
    tensors
        .iter()
        .zip(binary)
        .map(|((_, t), b)| {
            if *b {
                128 + binary_len(t)
            } else {
                128 + t.len() * 12
            }
        })
        .sum()
}

/// Writes a JSON array of tensor objects: each with its data, or (when
/// marked binary) with its `binary_data_size` for the section after the JSON.
fn write_tensors(out: &mut Vec<u8>, tensors: &[(String, Tensor)], binary: &[bool]) -> Result<()> {
    out.push(b'[');
    for (i, ((name, t), &bin)) in tensors.iter().zip(binary).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        write_json(out, name)?;
        out.extend_from_slice(b",\"datatype\":\"");
        out.extend_from_slice(t.dtype().kserve_name().as_bytes());
        out.extend_from_slice(b"\",\"shape\":");
        write_json(out, t.shape())?;
        if bin {
            out.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            out.extend_from_slice(binary_len(t).to_string().as_bytes());
            out.push(b'}');
        } else {
            out.extend_from_slice(b",\"data\":");
            write_data(out, t)?;
        }
        out.push(b'}');
    }
    out.push(b']');
    Ok(())
}

/// Appends the binary section (the marked tensors, in order) after the JSON;
/// without `with_binary` the body is the JSON alone.
fn finish_body(
    mut out: Vec<u8>,
    tensors: &[(String, Tensor)],
    binary: &[bool],
    with_binary: bool,
) -> Result<EncodedBody> {
    if !with_binary {
        return Ok(EncodedBody {
            body: out,
            json_len: None,
        });
    }
    let json_len = out.len();
    for ((_, t), &bin) in tensors.iter().zip(binary) {
        if bin {
            match t.strings() {
                Some(s) => write_length_prefixed(&mut out, s)?,
                None => out.extend_from_slice(t.raw().expect("fixed-size dtype has raw data")),
            }
        }
    }
    Ok(EncodedBody {
        body: out,
        json_len: Some(json_len),
    })
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) -> Result<()> {
    serde_json::to_writer(out, v).map_err(|e| Error::Internal(format!("JSON encoding: {e}")))
}

fn write_data(out: &mut Vec<u8>, t: &Tensor) -> Result<()> {
    match t.dtype() {
        DType::Bool => {
            let raw = t.raw().expect("BOOL has raw data");
            let v: Vec<bool> = raw.iter().map(|&b| b != 0).collect();
            write_json(out, &v)
        }
        DType::U8 => write_json(out, &*t.as_slice::<u8>()?),
        DType::U16 => write_json(out, &*t.as_slice::<u16>()?),
        DType::U32 => write_json(out, &*t.as_slice::<u32>()?),
        DType::U64 => write_json(out, &*t.as_slice::<u64>()?),
        DType::I8 => write_json(out, &*t.as_slice::<i8>()?),
        DType::I16 => write_json(out, &*t.as_slice::<i16>()?),
        DType::I32 => write_json(out, &*t.as_slice::<i32>()?),
        DType::I64 => write_json(out, &*t.as_slice::<i64>()?),
        DType::F16 => {
            let v: Vec<f32> = t
                .as_slice::<half::f16>()?
                .iter()
                .map(|x| x.to_f32())
                .collect();
            write_json(out, &v)
        }
        DType::BF16 => {
            let v: Vec<f32> = t
                .as_slice::<half::bf16>()?
                .iter()
                .map(|x| x.to_f32())
                .collect();
            write_json(out, &v)
        }
        DType::F32 => write_json(out, &*t.as_slice::<f32>()?),
        DType::F64 => write_json(out, &*t.as_slice::<f64>()?),
        DType::Bytes => {
            // JSON strings must be text: non-UTF-8 bytes are replaced; clients
            // that need exact bytes ask for binary_data.
            let v: Vec<std::borrow::Cow<'_, str>> = t
                .strings()
                .expect("BYTES has strings")
                .iter()
                .map(|b| String::from_utf8_lossy(b))
                .collect();
            write_json(out, &v)
        }
    }
}

#[cfg(test)]
mod tests;
