//! HTTP/REST infer requests and responses: KServe v2 JSON plus Triton's binary
//! tensor data extension.
//!
//! JSON decoding dominates a JSON inference server's CPU time, so requests
//! are read by a hand-written single-pass scanner ([`scan`]) rather than
//! through `serde_json` trees or visitors: tensor `data` arrays (flat or
//! nested) are parsed straight from the body into a typed `Vec<T>` sized from
//! the declared shape, and only the small, irregular parts (`parameters`,
//! `outputs`, `shape`) go to `serde_json`, on their byte slices. When a client
//! sends `data` before `datatype`/`shape` (legal JSON, unusual in practice),
//! its extent is checked and skipped, and it is parsed the same way once the
//! type is known.
//!
//! Encoding writes the JSON bytes directly (no `Value` tree either), for
//! responses on the server and for requests in the load generator alike.

mod pow5;
mod scan;

use crate::common::{
    SequenceId, binary_len, binary_tensor, checked_shape, named, parse_dtype, priority_from,
    sequence_from, truncate, write_length_prefixed,
};
use crate::{DecodedRequest, Limits, OutputPrefs, RequestedOutput};
use bytes::Bytes;
use pomme_core::{DType, Error, Result, Tensor};
use scan::{DataSpec, Parser};
use serde::Deserialize;
use serde_json::{Map, Value};
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
    let mut p = Parser::new(json, 0);
    let wire = parse_request(&mut p, ctx)?;
    p.end()?;
    assemble(wire, json, binary, ctx)
}

#[derive(Clone, Copy)]
struct Ctx<'l> {
    limits: &'l Limits,
    prealloc_cap: usize,
}

struct WireRequest {
    id: Option<String>,
    parameters: Params,
    inputs: Vec<WireInput>,
    outputs: Option<Vec<WireOutput>>,
}

struct WireInput {
    name: Option<String>,
    shape: Option<Vec<i64>>,
    datatype: Option<String>,
    parameters: Params,
    data: Option<WireData>,
}

enum WireData {
    Parsed(DataBuf),
    /// `data` came before its type and shape were known: where it starts
    /// in the JSON (its syntax is already checked).
    Later(usize),
}

#[derive(Deserialize)]
struct WireOutput {
    name: String,
    #[serde(default)]
    parameters: Params,
}

fn parse_request(p: &mut Parser<'_>, ctx: Ctx<'_>) -> Result<WireRequest> {
    let mut req = WireRequest {
        id: None,
        parameters: Params::new(),
        inputs: Vec::new(),
        outputs: None,
    };
    let mut saw_inputs = false;
    p.object("an inference request object", |p, key| {
        match &*key {
            "id" => req.id = p.opt_string_value("'id' to be a string")?,
            "parameters" => req.parameters = p.serde::<Option<Params>>()?.unwrap_or_default(),
            "inputs" => {
                req.inputs = parse_inputs(p, ctx)?;
                saw_inputs = true;
            }
            "outputs" => req.outputs = p.serde()?,
            _ => p.skip_value()?,
        }
        Ok(())
    })?;
    if !saw_inputs {
        return Err(Error::invalid_input("request has no 'inputs'"));
    }
    Ok(req)
}

fn parse_inputs(p: &mut Parser<'_>, ctx: Ctx<'_>) -> Result<Vec<WireInput>> {
    let mut out = Vec::new();
    p.array("'inputs' to be an array of input tensors", |p| {
        let input = parse_input(p, ctx)?;
        if out.len() >= ctx.limits.max_inputs {
            return Err(Error::invalid_input(format!(
                "more than {} inputs",
                ctx.limits.max_inputs
            )));
        }
        out.push(input);
        Ok(())
    })?;
    Ok(out)
}

fn parse_input(p: &mut Parser<'_>, ctx: Ctx<'_>) -> Result<WireInput> {
    let mut input = WireInput {
        name: None,
        shape: None,
        datatype: None,
        parameters: Params::new(),
        data: None,
    };
    p.object("an input tensor object", |p, key| {
        match &*key {
            "name" => input.name = Some(p.string_value("an input's 'name' to be a string")?),
            "shape" => input.shape = Some(p.serde()?),
            "datatype" => {
                input.datatype = Some(p.string_value("an input's 'datatype' to be a string")?)
            }
            "parameters" => input.parameters = p.serde::<Option<Params>>()?.unwrap_or_default(),
            "data" => {
                if input.data.is_some() {
                    return Err(Error::invalid_input("input has 'data' twice"));
                }
                let name = input.name.as_deref().unwrap_or("?");
                let known = match (&input.datatype, &input.shape) {
                    (Some(dt), Some(shape)) => DType::from_kserve(dt).and_then(|dt| {
                        checked_shape(name, shape, ctx.limits).ok().map(|s| (dt, s))
                    }),
                    _ => None,
                };
                input.data = Some(match known {
                    Some((dtype, shape)) => {
                        WireData::Parsed(data_buf(p, name, dtype, &shape, ctx)?)
                    }
                    None => {
                        let start = p.pos;
                        p.skip_value()?;
                        WireData::Later(start)
                    }
                });
            }
            _ => p.skip_value()?,
        }
        Ok(())
    })?;
    Ok(input)
}

/// Parses one input's `data` (cursor on it) into a [`DataBuf`] of `dtype`.
fn data_buf(
    p: &mut Parser<'_>,
    input: &str,
    dtype: DType,
    shape: &[usize],
    ctx: Ctx<'_>,
) -> Result<DataBuf> {
    let spec = DataSpec {
        input,
        shape,
        expected: shape.iter().product(),
        limits: ctx.limits,
        prealloc_cap: ctx.prealloc_cap,
    };
    Ok(match dtype {
        DType::Bool => DataBuf::Bool(scan::data(p, &spec)?),
        DType::U8 => DataBuf::U8(scan::data(p, &spec)?),
        DType::U16 => DataBuf::U16(scan::data(p, &spec)?),
        DType::U32 => DataBuf::U32(scan::data(p, &spec)?),
        DType::U64 => DataBuf::U64(scan::data(p, &spec)?),
        DType::I8 => DataBuf::I8(scan::data(p, &spec)?),
        DType::I16 => DataBuf::I16(scan::data(p, &spec)?),
        DType::I32 => DataBuf::I32(scan::data(p, &spec)?),
        DType::I64 => DataBuf::I64(scan::data(p, &spec)?),
        DType::F16 => DataBuf::F16(scan::data(p, &spec)?),
        DType::BF16 => DataBuf::BF16(scan::data(p, &spec)?),
        DType::F32 => DataBuf::F32(scan::data(p, &spec)?),
        DType::F64 => DataBuf::F64(scan::data(p, &spec)?),
        DType::Bytes => DataBuf::Bytes(scan::data(p, &spec)?),
    })
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

/// One element type as it may appear in JSON `data`.
trait JsonElem: Sized {
    const NAME: &'static str;
    /// A float type: every number is parsed as f64, then converted (as
    /// serde_json's integers would be: `u64 as f64` rounds the same way).
    const FLOAT: bool = false;
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
            const FLOAT: bool = true;
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

fn assemble(wire: WireRequest, json: &[u8], binary: Bytes, ctx: Ctx<'_>) -> Result<DecodedRequest> {
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
            (None, Some(WireData::Later(start))) => {
                let mut p = Parser::new(json, start);
                let buf = data_buf(&mut p, &name, dtype, &shape, ctx)?;
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
