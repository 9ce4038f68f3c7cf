//! gRPC `ModelInferRequest` / `ModelInferResponse` ↔ pomme tensors.
//!
//! Inputs come either as typed `contents` or as `raw_input_contents` (all
//! inputs or none, as Triton requires; BYTES raw data is a 4-byte
//! little-endian length before each element). Outputs always go back as
//! `raw_output_contents`, as Triton does, which shares the output buffers
//! instead of copying them into typed repeated fields.
//!
//! The client side (tests, the load generator) builds requests with raw or
//! typed contents, frames them for clients that bypass tonic, and reads
//! responses back into tensors.

use crate::common::{
    SequenceId, binary_tensor, checked_shape, named, parse_dtype, parse_version, priority_from,
    raw_contents, sequence_from,
};
use crate::proto::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
    infer_parameter::ParameterChoice, model_infer_request, model_infer_response,
};
use crate::{DecodedRequest, Limits, RequestedOutput};
use bytes::Bytes;
use pomme_core::{DType, Error, Result, Tensor};
use std::collections::HashMap;
use std::time::Duration;

/// The HTTP/2 path of the `ModelInfer` call, for clients that bypass tonic.
pub const MODEL_INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// A decoded gRPC infer request: model name, version (`None` = latest) and the request.
pub type DecodedGrpc = (String, Option<u64>, DecodedRequest);

/// Decodes a gRPC infer request.
pub fn decode_request(req: ModelInferRequest, limits: &Limits) -> Result<DecodedGrpc> {
    let version = parse_version(&req.model_version)?;
    if req.inputs.len() > limits.max_inputs {
        return Err(Error::invalid_input(format!(
            "{} inputs, more than the limit of {}",
            req.inputs.len(),
            limits.max_inputs
        )));
    }
    let use_raw = !req.raw_input_contents.is_empty();
    if use_raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(Error::invalid_input(format!(
            "raw_input_contents has {} entries for {} inputs",
            req.raw_input_contents.len(),
            req.inputs.len()
        )));
    }
    let mut raws = req.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for inp in req.inputs {
        let name = inp.name;
        let dtype = parse_dtype(&name, &inp.datatype)?;
        let shape = checked_shape(&name, &inp.shape, limits)?;
        let tensor = if use_raw {
            if inp
                .contents
                .is_some_and(|c| c != InferTensorContents::default())
            {
                return Err(Error::invalid_input(format!(
                    "input '{name}' has both contents and raw_input_contents"
                )));
            }
            let raw = raws.next().expect("lengths checked above");
            binary_tensor(&name, dtype, shape, raw, limits)?
        } else {
            let contents = inp.contents.ok_or_else(|| {
                Error::invalid_input(format!(
                    "input '{name}' has no contents and the request no raw_input_contents"
                ))
            })?;
            typed_tensor(&name, dtype, shape, contents, limits)?
        };
        inputs.push((name, tensor));
    }
    let priority = priority_from(param_u64(&req.parameters, "priority")?)?;
    let timeout = param_u64(&req.parameters, "timeout")?.map(Duration::from_micros);
    let sequence = sequence_from(
        param_sequence_id(&req.parameters)?,
        param_bool(&req.parameters, "sequence_start")?,
        param_bool(&req.parameters, "sequence_end")?,
    )?;
    let outputs = if req.outputs.is_empty() {
        None
    } else {
        Some(
            req.outputs
                .into_iter()
                .map(|o| {
                    let classification = match param_u64(&o.parameters, "classification")? {
                        Some(0) => {
                            return Err(Error::invalid_input(format!(
                                "output '{}': parameter 'classification' must be at least 1",
                                o.name
                            )));
                        }
                        k => k.map(|k| k as usize),
                    };
                    Ok(RequestedOutput {
                        name: o.name,
                        binary: None,
                        classification,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        )
    };
    let decoded = DecodedRequest {
        id: (!req.id.is_empty()).then_some(req.id),
        inputs,
        outputs,
        binary_data_output: false,
        priority,
        timeout,
        sequence,
    };
    Ok((req.model_name, version, decoded))
}

fn param_u64(params: &HashMap<String, InferParameter>, key: &str) -> Result<Option<u64>> {
    match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::Uint64Param(v)) => Ok(Some(*v)),
        Some(ParameterChoice::Int64Param(v)) if *v >= 0 => Ok(Some(*v as u64)),
        Some(_) => Err(Error::invalid_input(format!(
            "parameter '{key}' must be a non-negative integer"
        ))),
    }
}

fn param_bool(params: &HashMap<String, InferParameter>, key: &str) -> Result<Option<bool>> {
    match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::BoolParam(b)) => Ok(Some(*b)),
        Some(_) => Err(Error::invalid_input(format!(
            "parameter '{key}' must be a boolean (bool_param)"
        ))),
    }
}

/// `sequence_id`: `uint64_param`, a non-negative `int64_param` or `string_param`.
fn param_sequence_id(params: &HashMap<String, InferParameter>) -> Result<Option<SequenceId>> {
    match params
        .get("sequence_id")
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => Ok(None),
        Some(ParameterChoice::Uint64Param(v)) => Ok(Some(SequenceId::Number(*v))),
        Some(ParameterChoice::Int64Param(v)) if *v >= 0 => Ok(Some(SequenceId::Number(*v as u64))),
        Some(ParameterChoice::StringParam(s)) => Ok(Some(SequenceId::Text(s.clone()))),
        Some(_) => Err(Error::invalid_input(
            "parameter 'sequence_id' must be a non-negative integer or a string",
        )),
    }
}

fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S>>(
    name: &str,
    dtype: DType,
    v: Vec<S>,
) -> Result<Vec<T>> {
    v.into_iter()
        .map(|x| {
            T::try_from(x).map_err(|_| {
                Error::invalid_input(format!(
                    "input '{name}': value {x} is out of range for {dtype}"
                ))
            })
        })
        .collect()
}

fn typed_tensor(
    name: &str,
    dtype: DType,
    shape: Vec<usize>,
    c: InferTensorContents,
    limits: &Limits,
) -> Result<Tensor> {
    let t = match dtype {
        DType::Bool => Tensor::from_bools(shape, &c.bool_contents),
        DType::I8 => Tensor::from_vec::<i8>(shape, narrow(name, dtype, c.int_contents)?),
        DType::I16 => Tensor::from_vec::<i16>(shape, narrow(name, dtype, c.int_contents)?),
        DType::I32 => Tensor::from_vec(shape, c.int_contents),
        DType::I64 => Tensor::from_vec(shape, c.int64_contents),
        DType::U8 => Tensor::from_vec::<u8>(shape, narrow(name, dtype, c.uint_contents)?),
        DType::U16 => Tensor::from_vec::<u16>(shape, narrow(name, dtype, c.uint_contents)?),
        DType::U32 => Tensor::from_vec(shape, c.uint_contents),
        DType::U64 => Tensor::from_vec(shape, c.uint64_contents),
        DType::F32 => Tensor::from_vec(shape, c.fp32_contents),
        DType::F64 => Tensor::from_vec(shape, c.fp64_contents),
        DType::F16 | DType::BF16 => {
            return Err(Error::invalid_input(format!(
                "{dtype} input '{name}' must be sent in raw_input_contents"
            )));
        }
        DType::Bytes => {
            if let Some(s) = c
                .bytes_contents
                .iter()
                .find(|s| s.len() > limits.max_string_bytes)
            {
                return Err(Error::invalid_input(format!(
                    "input '{name}' has a {}-byte string, more than the limit of {}",
                    s.len(),
                    limits.max_string_bytes
                )));
            }
            Tensor::from_strings(shape, c.bytes_contents)
        }
    };
    t.map_err(|e| named(name, e))
}

/// A tensor's KServe datatype name and its shape as the messages carry it.
fn describe(t: &Tensor) -> (String, Vec<i64>) {
    (
        t.dtype().kserve_name().to_string(),
        t.shape().iter().map(|&d| d as i64).collect(),
    )
}

/// Encodes an infer response with every output in `raw_output_contents`.
pub fn encode_response(
    model: &str,
    version: u64,
    id: Option<&str>,
    outputs: &[(String, Tensor)],
) -> Result<ModelInferResponse> {
    let mut tensors = Vec::with_capacity(outputs.len());
    let mut raw = Vec::with_capacity(outputs.len());
    for (name, t) in outputs {
        let (datatype, shape) = describe(t);
        tensors.push(model_infer_response::InferOutputTensor {
            name: name.clone(),
            datatype,
            shape,
            parameters: HashMap::new(),
            contents: None,
        });
        raw.push(raw_contents(t)?);
    }
    Ok(ModelInferResponse {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id: id.unwrap_or_default().to_string(),
        parameters: HashMap::new(),
        outputs: tensors,
        raw_output_contents: raw,
    })
}

/// How a request built by [`encode_request_with`] carries its input data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contents {
    /// `raw_input_contents`: each tensor's binary form, its buffer shared.
    Raw,
    /// The typed `contents` fields. 16-bit floats have none, so a request
    /// with an FP16 or BF16 input is an error; send those raw.
    Typed,
}

/// Builds a request with raw inputs (client side: tests and the load generator).
pub fn encode_request(
    model: &str,
    version: Option<u64>,
    inputs: &[(String, Tensor)],
    outputs: &[&str],
) -> Result<ModelInferRequest> {
    encode_request_with(model, version, inputs, outputs, Contents::Raw)
}

/// Builds a request with the inputs in raw or typed contents (client side).
pub fn encode_request_with(
    model: &str,
    version: Option<u64>,
    inputs: &[(String, Tensor)],
    outputs: &[&str],
    contents: Contents,
) -> Result<ModelInferRequest> {
    let mut tensors = Vec::with_capacity(inputs.len());
    let mut raw = Vec::new();
    for (name, t) in inputs {
        let (datatype, shape) = describe(t);
        let typed = match contents {
            Contents::Raw => {
                raw.push(raw_contents(t)?);
                None
            }
            Contents::Typed => Some(typed_contents(name, t)?),
        };
        tensors.push(model_infer_request::InferInputTensor {
            name: name.clone(),
            datatype,
            shape,
            parameters: HashMap::new(),
            contents: typed,
        });
    }
    Ok(ModelInferRequest {
        model_name: model.to_string(),
        model_version: version.map(|v| v.to_string()).unwrap_or_default(),
        id: String::new(),
        parameters: HashMap::new(),
        inputs: tensors,
        outputs: outputs
            .iter()
            .map(|n| model_infer_request::InferRequestedOutputTensor {
                name: n.to_string(),
                parameters: HashMap::new(),
            })
            .collect(),
        raw_input_contents: raw,
    })
}

/// A tensor in the typed `contents` fields: the inverse of `typed_tensor`
/// (8- and 16-bit integers widen to the 32-bit fields).
fn typed_contents(name: &str, t: &Tensor) -> Result<InferTensorContents> {
    let mut c = InferTensorContents::default();
    match t.dtype() {
        DType::Bool => {
            c.bool_contents = t
                .raw()
                .expect("BOOL has raw data")
                .iter()
                .map(|&b| b != 0)
                .collect()
        }
        DType::I8 => c.int_contents = widen::<i8, i32>(t)?,
        DType::I16 => c.int_contents = widen::<i16, i32>(t)?,
        DType::I32 => c.int_contents = t.to_vec()?,
        DType::I64 => c.int64_contents = t.to_vec()?,
        DType::U8 => c.uint_contents = widen::<u8, u32>(t)?,
        DType::U16 => c.uint_contents = widen::<u16, u32>(t)?,
        DType::U32 => c.uint_contents = t.to_vec()?,
        DType::U64 => c.uint64_contents = t.to_vec()?,
        DType::F32 => c.fp32_contents = t.to_vec()?,
        DType::F64 => c.fp64_contents = t.to_vec()?,
        dtype @ (DType::F16 | DType::BF16) => {
            return Err(Error::invalid_input(format!(
                "{dtype} input '{name}' must be sent in raw_input_contents"
            )));
        }
        DType::Bytes => c.bytes_contents = t.strings().expect("BYTES has strings").to_vec(),
    }
    Ok(c)
}

/// A narrow integer tensor's elements in a wider field.
fn widen<S: pomme_core::Element, T: From<S>>(t: &Tensor) -> Result<Vec<T>> {
    Ok(t.as_slice::<S>()?.iter().map(|&x| T::from(x)).collect())
}

/// A message in gRPC's length-prefixed framing: an uncompressed flag byte and
/// the 4-byte big-endian length before the encoded message, as an HTTP/2
/// DATA frame carries it (for clients that skip tonic's codec).
pub fn frame(msg: &impl prost::Message) -> Result<Bytes> {
    let len = msg.encoded_len();
    let prefix =
        u32::try_from(len).map_err(|_| Error::invalid_input("the message is larger than 4 GiB"))?;
    let mut out = Vec::with_capacity(5 + len);
    out.push(0);
    out.extend_from_slice(&prefix.to_be_bytes());
    msg.encode(&mut out)
        .map_err(|e| Error::Internal(format!("protobuf encoding: {e}")))?;
    Ok(Bytes::from(out))
}

/// Reads the outputs of a response (client side), from raw or typed contents.
pub fn decode_response(resp: ModelInferResponse, limits: &Limits) -> Result<Vec<(String, Tensor)>> {
    let use_raw = !resp.raw_output_contents.is_empty();
    let mut raws = resp.raw_output_contents.into_iter();
    resp.outputs
        .into_iter()
        .map(|o| {
            let dtype = parse_dtype(&o.name, &o.datatype)?;
            let shape = checked_shape(&o.name, &o.shape, limits)?;
            let t = if use_raw {
                let raw = raws.next().ok_or_else(|| {
                    Error::invalid_input("fewer raw_output_contents than outputs")
                })?;
                binary_tensor(&o.name, dtype, shape, raw, limits)?
            } else {
                typed_tensor(
                    &o.name,
                    dtype,
                    shape,
                    o.contents.unwrap_or_default(),
                    limits,
                )?
            };
            Ok((o.name, t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn input(
        name: &str,
        dt: &str,
        shape: &[i64],
        contents: InferTensorContents,
    ) -> model_infer_request::InferInputTensor {
        model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: dt.into(),
            shape: shape.to_vec(),
            parameters: HashMap::new(),
            contents: Some(contents),
        }
    }

    #[test]
    fn typed_contents() {
        let req = ModelInferRequest {
            model_name: "m".into(),
            model_version: "2".into(),
            id: "abc".into(),
            parameters: HashMap::from([
                (
                    "priority".to_string(),
                    InferParameter {
                        parameter_choice: Some(ParameterChoice::Int64Param(1)),
                    },
                ),
                (
                    "timeout".to_string(),
                    InferParameter {
                        parameter_choice: Some(ParameterChoice::Uint64Param(2000)),
                    },
                ),
            ]),
            inputs: vec![
                input(
                    "f",
                    "FP32",
                    &[2],
                    InferTensorContents {
                        fp32_contents: vec![1.0, 2.0],
                        ..Default::default()
                    },
                ),
                input(
                    "u",
                    "UINT8",
                    &[1],
                    InferTensorContents {
                        uint_contents: vec![255],
                        ..Default::default()
                    },
                ),
                input(
                    "s",
                    "BYTES",
                    &[1],
                    InferTensorContents {
                        bytes_contents: vec![Bytes::from_static(b"x")],
                        ..Default::default()
                    },
                ),
                input(
                    "b",
                    "BOOL",
                    &[1],
                    InferTensorContents {
                        bool_contents: vec![true],
                        ..Default::default()
                    },
                ),
            ],
            outputs: vec![model_infer_request::InferRequestedOutputTensor {
                name: "y".into(),
                parameters: HashMap::new(),
            }],
            raw_input_contents: vec![],
        };
        let (model, version, d) = decode_request(req, &Limits::default()).unwrap();
        assert_eq!((model.as_str(), version), ("m", Some(2)));
        assert_eq!(d.id.as_deref(), Some("abc"));
        assert_eq!(d.priority, Some(1));
        assert_eq!(d.timeout, Some(Duration::from_millis(2)));
        assert_eq!(d.output_names(), Some(vec!["y".to_string()]));
        assert_eq!(d.inputs[0].1.to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
        assert_eq!(d.inputs[1].1.to_vec::<u8>().unwrap(), vec![255]);
        assert_eq!(d.inputs[2].1.strings().unwrap()[0].as_ref(), b"x");
        assert_eq!(d.inputs[3].1.raw().unwrap().as_ref(), &[1]);
    }

    #[test]
    fn errors_are_named() {
        let l = Limits::default();
        let mk = |inputs, raw| ModelInferRequest {
            model_name: "m".into(),
            inputs,
            raw_input_contents: raw,
            ..Default::default()
        };
        let e = |r| decode_request(r, &l).unwrap_err().to_string();
        let m = e(mk(
            vec![input(
                "u",
                "UINT8",
                &[1],
                InferTensorContents {
                    uint_contents: vec![256],
                    ..Default::default()
                },
            )],
            vec![],
        ));
        assert!(m.contains("value 256 is out of range for UINT8"), "{m}");
        let m = e(mk(
            vec![input(
                "f",
                "FP32",
                &[3],
                InferTensorContents {
                    fp32_contents: vec![1.0],
                    ..Default::default()
                },
            )],
            vec![],
        ));
        assert!(
            m.contains("input 'f': 1 elements given for shape [3]"),
            "{m}"
        );
        let m = e(mk(
            vec![input("f", "FP16", &[1], InferTensorContents::default())],
            vec![],
        ));
        assert!(m.contains("raw_input_contents"), "{m}");
        let m = e(mk(
            vec![input("f", "FP32", &[1], InferTensorContents::default())],
            vec![Bytes::new(), Bytes::new()],
        ));
        assert!(m.contains("2 entries for 1 inputs"), "{m}");
        let m = e(mk(
            vec![input("f", "FP32", &[2], InferTensorContents::default())],
            vec![Bytes::from_static(&[0; 4])],
        ));
        assert!(
            m.contains("FP32 data has 4 bytes but shape [2] needs 8"),
            "{m}"
        );
        let m = e(ModelInferRequest {
            model_version: "x".into(),
            ..Default::default()
        });
        assert!(m.contains("model version 'x'"), "{m}");
    }

    /// A request with no inputs and these request-level parameters.
    fn with_params(params: Vec<(&str, ParameterChoice)>) -> ModelInferRequest {
        ModelInferRequest {
            model_name: "m".into(),
            parameters: params
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        InferParameter {
                            parameter_choice: Some(v),
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn sequence_parameters() {
        use ParameterChoice::{BoolParam, Int64Param, StringParam, Uint64Param};
        let seq = |id: &str, start, end| {
            Some(pomme_core::SequenceControl {
                id: id.into(),
                start,
                end,
            })
        };
        let cases = vec![
            (
                vec![
                    ("sequence_id", Uint64Param(42)),
                    ("sequence_start", BoolParam(true)),
                ],
                seq("42", true, false),
            ),
            (
                vec![
                    ("sequence_id", Int64Param(7)),
                    ("sequence_end", BoolParam(true)),
                ],
                seq("7", false, true),
            ),
            (
                vec![
                    ("sequence_id", StringParam("abc".into())),
                    ("sequence_start", BoolParam(false)),
                ],
                seq("abc", false, false),
            ),
            (vec![("sequence_id", Uint64Param(0))], None),
            (vec![("sequence_id", Int64Param(0))], None),
            (vec![("sequence_id", StringParam(String::new()))], None),
            (vec![("sequence_end", BoolParam(false))], None),
            (vec![], None),
        ];
        for (params, want) in cases {
            let what = format!("{params:?}");
            let (_, _, d) = decode_request(with_params(params), &Limits::default())
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(d.sequence, want, "{what}");
        }
    }

    #[test]
    fn bad_sequence_parameters_are_named() {
        use ParameterChoice::{BoolParam, DoubleParam, Int64Param, StringParam, Uint64Param};
        let id = "parameter 'sequence_id' must be a non-negative integer or a string";
        let cases = vec![
            (vec![("sequence_id", Int64Param(-1))], id),
            (vec![("sequence_id", DoubleParam(1.0))], id),
            (vec![("sequence_id", BoolParam(true))], id),
            (
                vec![
                    ("sequence_id", Uint64Param(1)),
                    ("sequence_start", Int64Param(1)),
                ],
                "parameter 'sequence_start' must be a boolean",
            ),
            (
                vec![
                    ("sequence_id", Uint64Param(1)),
                    ("sequence_end", StringParam("true".into())),
                ],
                "parameter 'sequence_end' must be a boolean",
            ),
            (
                vec![("sequence_start", BoolParam(true))],
                "parameters.sequence_start is set but the request has no sequence_id",
            ),
        ];
        for (params, want) in cases {
            let what = format!("{params:?}");
            let e = decode_request(with_params(params), &Limits::default()).unwrap_err();
            assert!(matches!(e, Error::InvalidInput(_)), "{what}: {e:?}");
            let m = e.to_string();
            assert!(m.contains(want) && !m.contains('\n'), "{what}: {m}");
        }
    }

    #[test]
    fn typed_requests_round_trip_through_a_frame() {
        let inputs = vec![
            (
                "a".to_string(),
                Tensor::from_vec(vec![2], vec![-3i8, 4]).unwrap(),
            ),
            (
                "b".to_string(),
                Tensor::from_vec(vec![1], vec![65535u16]).unwrap(),
            ),
            (
                "c".to_string(),
                Tensor::from_bools(vec![2], &[true, false]).unwrap(),
            ),
            (
                "d".to_string(),
                Tensor::from_vec(vec![1], vec![0.25f64]).unwrap(),
            ),
            (
                "e".to_string(),
                Tensor::from_strings(vec![1], vec![Bytes::from_static(b"z")]).unwrap(),
            ),
        ];
        let req = encode_request_with("m", Some(3), &inputs, &["y"], Contents::Typed).unwrap();
        assert!(req.raw_input_contents.is_empty());
        let framed = frame(&req).unwrap();
        assert_eq!(framed[0], 0, "uncompressed");
        let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
        assert_eq!(len, framed.len() - 5);
        let back: ModelInferRequest = prost::Message::decode(&framed[5..]).unwrap();
        let (model, version, d) = decode_request(back, &Limits::default()).unwrap();
        assert_eq!((model.as_str(), version), ("m", Some(3)));
        assert_eq!(d.inputs, inputs);
        let half = vec![(
            "h".to_string(),
            Tensor::from_vec(vec![1], vec![half::f16::ONE]).unwrap(),
        )];
        let e = encode_request_with("m", None, &half, &[], Contents::Typed).unwrap_err();
        assert!(e.to_string().contains("raw_input_contents"), "{e}");
    }

    proptest! {
        #[test]
        fn raw_round_trip(data in proptest::collection::vec(any::<f64>(), 0..16),
                          strings in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 0..5)) {
            let inputs = vec![
                ("a".to_string(), Tensor::from_vec(vec![data.len()], data.clone()).unwrap()),
                ("b".to_string(), Tensor::from_strings(vec![strings.len()], strings.into_iter().map(Bytes::from).collect()).unwrap()),
            ];
            let req = encode_request("m", Some(1), &inputs, &["a"]).unwrap();
            let bytes = prost::Message::encode_to_vec(&req);
            let req: ModelInferRequest = prost::Message::decode(bytes.as_slice()).unwrap();
            let (_, _, d) = decode_request(req, &Limits::default()).unwrap();
            prop_assert_eq!(&d.inputs, &inputs);
            let resp = encode_response("m", 1, None, &d.inputs).unwrap();
            prop_assert_eq!(decode_response(resp, &Limits::default()).unwrap(), inputs);
        }
    }
}
