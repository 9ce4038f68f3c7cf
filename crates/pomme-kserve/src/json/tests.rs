//! The HTTP JSON codec against hand-written bodies: flattening, types,
//! limits, the binary extension, and encoding round trips.

use super::*;
use pomme_core::SequenceControl;
use proptest::prelude::*;

fn decode(body: &str) -> Result<DecodedRequest> {
    decode_request(Bytes::from(body.to_string()), None, &Limits::default())
}

fn err(body: &str) -> String {
    let e = decode(body).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    let m = e.to_string();
    assert!(!m.contains('\n'), "multi-line message: {m}");
    m
}

#[test]
fn flat_and_nested_fp32() {
    let flat =
        decode(r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2.5,3,4]}]}"#)
            .unwrap();
    let nested = decode(
        r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[3,4]]}]}"#,
    )
    .unwrap();
    assert_eq!(flat, nested);
    let (name, t) = &flat.inputs[0];
    assert_eq!(name, "x");
    assert_eq!(t.shape(), &[2, 2]);
    assert_eq!(t.to_vec::<f32>().unwrap(), vec![1., 2.5, 3., 4.]);
    assert_eq!(flat.outputs, None);
    assert!(!flat.binary_data_output);
}

/// Nested data must follow the shape exactly; ragged rows whose total
/// happens to match the element count are refused (both parse paths: shape
/// before data, and data before shape).
#[test]
fn ragged_nesting_is_refused() {
    let body = |shape: &str, data: &str, data_first: bool| {
        if data_first {
            format!(
                r#"{{"inputs":[{{"name":"x","data":{data},"shape":{shape},"datatype":"FP32"}}]}}"#
            )
        } else {
            format!(
                r#"{{"inputs":[{{"name":"x","shape":{shape},"datatype":"FP32","data":{data}}}]}}"#
            )
        }
    };
    for data_first in [false, true] {
        let e = err(&body("[2,2]", "[[1,2,3],[4]]", data_first));
        assert!(
            e.contains(
                "input 'x': nested data has 3 items at level 1, but its shape [2, 2] says 2"
            ),
            "{e}"
        );
        let e = err(&body("[2,2]", "[[1,2],3,4]", data_first));
        assert!(e.contains("mixes nesting levels"), "{e}");
        let e = err(&body("[4]", "[[1,2],[3,4]]", data_first));
        assert!(e.contains("nested deeper than its shape [4]"), "{e}");
        let e = err(&body("[1,2,2]", "[[1,2],[3,4]]", data_first));
        assert!(
            e.contains("has 2 items at level 0, but its shape [1, 2, 2] says 1"),
            "{e}"
        );
        let e = err(&body("[2,1,2]", "[[1,2],[3,4]]", data_first));
        assert!(e.contains("at level 1"), "{e}");
        // Exact nesting and flat data both pass.
        decode(&body("[1,2,2]", "[[[1,2],[3,4]]]", data_first)).unwrap();
        decode(&body("[2,2]", "[1,2,3,4]", data_first)).unwrap();
        decode(&body("[0,2]", "[]", data_first)).unwrap();
    }
}

#[test]
fn data_before_datatype_is_parsed_later() {
    let r = decode(
        r#"{"inputs":[{"data":[[1,2],[3,4]],"name":"x","datatype":"INT64","shape":[2,2]}]}"#,
    )
    .unwrap();
    assert_eq!(r.inputs[0].1.to_vec::<i64>().unwrap(), vec![1, 2, 3, 4]);
}

#[test]
fn every_datatype_decodes() {
    let cases = [
        ("BOOL", "[true,false]"),
        ("UINT8", "[0,255]"),
        ("UINT16", "[0,65535]"),
        ("UINT32", "[0,4294967295]"),
        ("UINT64", "[0,18446744073709551615]"),
        ("INT8", "[-128,127]"),
        ("INT16", "[-32768,32767]"),
        ("INT32", "[-2147483648,2147483647]"),
        ("INT64", "[-9223372036854775808,9223372036854775807]"),
        ("FP16", "[0.5,-2]"),
        ("BF16", "[0.5,-2]"),
        ("FP32", "[0.5,-2]"),
        ("FP64", "[0.5,-2]"),
        ("BYTES", r#"["héllo",""]"#),
    ];
    for (dt, data) in cases {
        let body =
            format!(r#"{{"inputs":[{{"name":"x","shape":[2],"datatype":"{dt}","data":{data}}}]}}"#);
        let r = decode(&body).unwrap_or_else(|e| panic!("{dt}: {e}"));
        let t = &r.inputs[0].1;
        assert_eq!(t.dtype().kserve_name(), dt);
        assert_eq!(t.shape(), &[2]);
    }
    let r = decode(r#"{"inputs":[{"name":"s","shape":[1],"datatype":"BYTES","data":["héllo"]}]}"#)
        .unwrap();
    assert_eq!(
        r.inputs[0].1.strings().unwrap()[0].as_ref(),
        "héllo".as_bytes()
    );
    let r = decode(
        r#"{"inputs":[{"name":"b","shape":[3],"datatype":"BOOL","data":[true,false,true]}]}"#,
    )
    .unwrap();
    assert_eq!(r.inputs[0].1.raw().unwrap().as_ref(), &[1, 0, 1]);
    let r =
        decode(r#"{"inputs":[{"name":"h","shape":[1],"datatype":"FP16","data":[1.5]}]}"#).unwrap();
    assert_eq!(r.inputs[0].1.to_f64_vec().unwrap(), vec![1.5]);
}

#[test]
fn parameters_outputs_and_id() {
    let r = decode(
        r#"{"id":"req-7","parameters":{"binary_data_output":true,"priority":2,"timeout":1500,"other":[1]},
            "inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],
            "outputs":[{"name":"a"},{"name":"b","parameters":{"binary_data":false}}]}"#,
    )
    .unwrap();
    assert_eq!(r.id.as_deref(), Some("req-7"));
    assert_eq!(r.priority, Some(2));
    assert_eq!(r.timeout, Some(Duration::from_micros(1500)));
    assert_eq!(
        r.output_names(),
        Some(vec!["a".to_string(), "b".to_string()])
    );
    let prefs = r.output_prefs();
    assert!(prefs.is_binary("a"));
    assert!(!prefs.is_binary("b"));
}

fn with_params(params: &str) -> String {
    format!(
        r#"{{"parameters":{params},"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":[1]}}]}}"#
    )
}

fn seq(id: &str, start: bool, end: bool) -> Option<SequenceControl> {
    Some(SequenceControl {
        id: id.into(),
        start,
        end,
    })
}

#[test]
fn sequence_parameters() {
    let cases = [
        (
            r#"{"sequence_id":42,"sequence_start":true}"#,
            seq("42", true, false),
        ),
        (
            r#"{"sequence_id":"abc","sequence_end":true}"#,
            seq("abc", false, true),
        ),
        (
            r#"{"sequence_id":18446744073709551615,"sequence_start":false,"sequence_end":false}"#,
            seq("18446744073709551615", false, false),
        ),
        // 0, "" and null mean no sequence; so does a false flag without an id.
        (r#"{"sequence_id":0}"#, None),
        (r#"{"sequence_id":""}"#, None),
        (r#"{"sequence_id":null,"sequence_start":false}"#, None),
        (r#"{}"#, None),
    ];
    for (params, want) in cases {
        let r = decode(&with_params(params)).unwrap_or_else(|e| panic!("{params}: {e}"));
        assert_eq!(r.sequence, want, "{params}");
    }
}

#[test]
fn bad_sequence_parameters_are_named() {
    let id = "parameters.sequence_id must be a non-negative integer or a string";
    let cases = [
        (r#"{"sequence_id":-1}"#, id),
        (r#"{"sequence_id":1.5}"#, id),
        (r#"{"sequence_id":2.0}"#, id),
        (r#"{"sequence_id":true}"#, id),
        (r#"{"sequence_id":{"a":1}}"#, id),
        (r#"{"sequence_id":[1]}"#, id),
        (
            r#"{"sequence_id":1,"sequence_start":"yes"}"#,
            "parameters.sequence_start must be a boolean",
        ),
        (
            r#"{"sequence_id":1,"sequence_end":1}"#,
            "parameters.sequence_end must be a boolean",
        ),
        (
            r#"{"sequence_start":true}"#,
            "parameters.sequence_start is set but the request has no sequence_id",
        ),
        (
            r#"{"sequence_id":0,"sequence_end":true}"#,
            "parameters.sequence_end is set but the request has no sequence_id",
        ),
    ];
    for (params, want) in cases {
        let m = err(&with_params(params));
        assert!(m.contains(want), "{params}: {m}");
    }
}

#[test]
fn binary_extension_inputs() {
    let json = r#"{"inputs":[
        {"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},
        {"name":"j","shape":[1],"datatype":"INT32","data":[7]},
        {"name":"s","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":11}}]}"#;
    let mut body = json.as_bytes().to_vec();
    body.extend_from_slice(&1.5f32.to_le_bytes());
    body.extend_from_slice(&(-2f32).to_le_bytes());
    body.extend_from_slice(&3u32.to_le_bytes());
    body.extend_from_slice(b"abc");
    body.extend_from_slice(&0u32.to_le_bytes());
    let len = json.len().to_string();
    let r = decode_request(Bytes::from(body), Some(&len), &Limits::default()).unwrap();
    assert_eq!(r.inputs[0].1.to_vec::<f32>().unwrap(), vec![1.5, -2.0]);
    assert_eq!(r.inputs[1].1.to_vec::<i32>().unwrap(), vec![7]);
    let s = r.inputs[2].1.strings().unwrap();
    assert_eq!(s, &[Bytes::from_static(b"abc"), Bytes::new()]);
}

#[test]
fn binary_extension_errors() {
    let l = Limits::default();
    let json = r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
    let mut body = json.as_bytes().to_vec();
    body.extend_from_slice(&[0u8; 4]);
    let len = json.len().to_string();
    let e = decode_request(Bytes::from(body.clone()), Some(&len), &l).unwrap_err();
    assert!(
        e.to_string()
            .contains("binary_data_size 8 is larger than the binary data left (4 bytes)"),
        "{e}"
    );
    let e = decode_request(Bytes::from(body.clone()), Some("abc"), &l).unwrap_err();
    assert!(
        e.to_string()
            .contains("bad Inference-Header-Content-Length value 'abc'"),
        "{e}"
    );
    let e = decode_request(Bytes::from(body.clone()), Some("100000"), &l).unwrap_err();
    assert!(e.to_string().contains("larger than the body"), "{e}");
    // Binary data nobody claims.
    let json2 = r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#;
    let mut body2 = json2.as_bytes().to_vec();
    body2.extend_from_slice(&[0u8; 4]);
    let e = decode_request(Bytes::from(body2), Some(&json2.len().to_string()), &l).unwrap_err();
    assert!(e.to_string().contains("no input claims them"), "{e}");
    // Both data and binary_data_size.
    let m = err(
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4},"data":[1]}]}"#,
    );
    assert!(
        m.contains("both 'data' and parameters.binary_data_size"),
        "{m}"
    );
    let m = err(
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":"4"}}]}"#,
    );
    assert!(
        m.contains("input 'x' parameters.binary_data_size must be a non-negative integer"),
        "{m}"
    );
}

#[test]
fn malformed_inputs_are_named() {
    let cases = [
        (r#"{"inputs":[{"#, "malformed JSON"),
        (r#"not json"#, "malformed JSON"),
        (r#"{"inputs":[]} trailing"#, "malformed JSON"),
        (r#"{}"#, "request has no 'inputs'"),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}"#,
            "unknown datatype 'FLOAT'",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5]}]}"#,
            "input 'x': 5 elements given for shape [2,3] (6 expected)",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}]}"#,
            "more data elements than its shape holds",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[-2],"datatype":"FP32","data":[1]}]}"#,
            "negative dimension -2",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[4294967296,4294967296],"datatype":"FP32","data":[1]}]}"#,
            "overflows",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[300]}]}"#,
            "value 300 is out of range for UINT8",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}]}"#,
            "non-integer 1.5",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"BOOL","data":[1]}]}"#,
            "expected true or false",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#,
            "FP32 data holds string",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[null]}]}"#,
            "holds null",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[{}]}]}"#,
            "holds an object",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
            "neither 'data' nor",
        ),
        (
            r#"{"inputs":[{"shape":[1],"datatype":"FP32","data":[1]}]}"#,
            "an input has no 'name'",
        ),
        (
            r#"{"inputs":[{"name":"x","datatype":"FP32","data":[1]}]}"#,
            "input 'x' has no 'shape'",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"data":[1]}]}"#,
            "input 'x' has no 'datatype'",
        ),
        (
            r#"{"parameters":{"binary_data_output":1},"inputs":[]}"#,
            "parameters.binary_data_output must be a boolean",
        ),
        (
            r#"{"parameters":{"priority":-1},"inputs":[]}"#,
            "parameters.priority must be a non-negative integer",
        ),
        (
            r#"{"inputs":[],"outputs":[{"name":"y","parameters":{"classification":0}}]}"#,
            "output 'y' parameters.classification must be at least 1",
        ),
        (
            r#"{"inputs":[],"outputs":[{"name":"y","parameters":{"classification":"3"}}]}"#,
            "output 'y' parameters.classification must be a non-negative integer",
        ),
    ];
    for (body, want) in cases {
        let m = err(body);
        assert!(m.contains(want), "{body}: got '{m}', wanted '{want}'");
    }
}

#[test]
fn limits_are_enforced() {
    let deep = format!(
        r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":{}1{}}}]}}"#,
        "[".repeat(70),
        "]".repeat(70)
    );
    assert!(err(&deep).contains("nested deeper than 64 levels"));
    let limits = Limits {
        max_string_bytes: 3,
        max_elements: 10,
        max_body_bytes: 200,
        max_inputs: 1,
        ..Limits::default()
    };
    let d = |b: &str| {
        decode_request(Bytes::from(b.to_string()), None, &limits)
            .unwrap_err()
            .to_string()
    };
    assert!(
        d(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["abcd"]}]}"#)
            .contains("longer than the limit of 3")
    );
    assert!(
        d(r#"{"inputs":[{"name":"x","shape":[11],"datatype":"FP32","data":[1]}]}"#)
            .contains("more than the limit of 10")
    );
    assert!(d(&" ".repeat(201)).contains("larger than the limit of 200"));
    assert!(d(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]},{"name":"y","shape":[1],"datatype":"FP32","data":[1]}]}"#).contains("more than 1 inputs"));
}

#[test]
fn json_response() {
    let outputs = vec![
        (
            "y".to_string(),
            Tensor::from_vec(vec![2], vec![1.5f32, -2.0]).unwrap(),
        ),
        (
            "s".to_string(),
            Tensor::from_strings(vec![1], vec![Bytes::from_static(b"hi")]).unwrap(),
        ),
        (
            "b".to_string(),
            Tensor::from_bools(vec![2], &[true, false]).unwrap(),
        ),
    ];
    let r = encode_response("m", 3, Some("id1"), &outputs, &OutputPrefs::default()).unwrap();
    assert_eq!(r.json_len, None);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"model_name":"m","model_version":"3","id":"id1","outputs":[
            {"name":"y","datatype":"FP32","shape":[2],"data":[1.5,-2.0]},
            {"name":"s","datatype":"BYTES","shape":[1],"data":["hi"]},
            {"name":"b","datatype":"BOOL","shape":[2],"data":[true,false]}]})
    );
}

#[test]
fn binary_response() {
    let outputs = vec![
        (
            "y".to_string(),
            Tensor::from_vec(vec![2], vec![1.5f32, -2.0]).unwrap(),
        ),
        (
            "s".to_string(),
            Tensor::from_strings(vec![1], vec![Bytes::from_static(b"hi")]).unwrap(),
        ),
        (
            "j".to_string(),
            Tensor::from_vec(vec![1], vec![5i64]).unwrap(),
        ),
    ];
    let prefs = OutputPrefs {
        binary_default: true,
        per_output: vec![("j".into(), false)],
    };
    let r = encode_response("m", 1, None, &outputs, &prefs).unwrap();
    let n = r.json_len.unwrap();
    let v: Value = serde_json::from_slice(&r.body[..n]).unwrap();
    assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 8);
    assert_eq!(v["outputs"][1]["parameters"]["binary_data_size"], 6);
    assert_eq!(v["outputs"][2]["data"], serde_json::json!([5]));
    let bin = &r.body[n..];
    assert_eq!(&bin[..4], &1.5f32.to_le_bytes());
    assert_eq!(&bin[8..], &[2, 0, 0, 0, b'h', b'i']);
}

/// A request body with `data` written the way a client would write it.
fn request_json(shape: &[usize], data: &[f32], nested: bool) -> String {
    let data_json = if nested && shape.len() == 2 && shape[1] > 0 {
        let rows: Vec<String> = data
            .chunks(shape[1])
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        format!("[{}]", rows.join(","))
    } else {
        serde_json::to_string(data).unwrap()
    };
    format!(
        r#"{{"inputs":[{{"name":"x","shape":{},"datatype":"FP32","data":{data_json}}}]}}"#,
        serde_json::to_string(shape).unwrap()
    )
}

proptest! {
    #[test]
    fn fp32_round_trips((rows, cols, data) in (1usize..6, 1usize..6).prop_flat_map(|(r, c)| {
        (Just(r), Just(c), proptest::collection::vec(-1e6f32..1e6, r * c))
    }), nested in any::<bool>()) {
        let body = request_json(&[rows, cols], &data, nested);
        let r = decode(&body).unwrap();
        prop_assert_eq!(r.inputs[0].1.to_vec::<f32>().unwrap(), data.clone());
        // And back out through the response encoder.
        let resp = encode_response("m", 1, None, &r.inputs, &OutputPrefs::default()).unwrap();
        let v: Value = serde_json::from_slice(&resp.body).unwrap();
        let back: Vec<f32> = serde_json::from_value(v["outputs"][0]["data"].clone()).unwrap();
        prop_assert_eq!(back, data);
    }

    #[test]
    fn binary_response_decodes_as_binary_request(data in proptest::collection::vec(any::<i32>(), 0..20),
                                                 strings in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 0..6)) {
        let outputs = vec![
            ("a".to_string(), Tensor::from_vec(vec![data.len()], data.clone()).unwrap()),
            ("b".to_string(), Tensor::from_strings(vec![strings.len()], strings.iter().map(|s| Bytes::from(s.clone())).collect()).unwrap()),
        ];
        let prefs = OutputPrefs { binary_default: true, per_output: vec![] };
        let r = encode_response("m", 1, None, &outputs, &prefs).unwrap();
        let n = r.json_len.unwrap();
        // The response JSON has the same shape as a request's inputs.
        let v: Value = serde_json::from_slice(&r.body[..n]).unwrap();
        let req = serde_json::json!({"inputs": v["outputs"]}).to_string();
        let mut body = req.clone().into_bytes();
        body.extend_from_slice(&r.body[n..]);
        let back = decode_request(Bytes::from(body), Some(&req.len().to_string()), &Limits::default()).unwrap();
        prop_assert_eq!(back.inputs, outputs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300), header in proptest::option::of(0usize..400)) {
        let h = header.map(|h| h.to_string());
        if let Err(e) = decode_request(Bytes::from(body), h.as_deref(), &Limits::default()) {
            prop_assert!(matches!(e, Error::InvalidInput(_)));
            prop_assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn mutated_requests_never_panic(cut in 0usize..120, byte in any::<u8>()) {
        let mut body = request_json(&[2, 2], &[1.0, 2.0, 3.0, 4.0], true).into_bytes();
        let at = cut % body.len();
        body[at] = byte;
        if let Err(e) = decode_request(Bytes::from(body), None, &Limits::default()) {
            prop_assert!(matches!(e, Error::InvalidInput(_)));
        }
    }
}

#[test]
fn requests_encode_for_the_decoder() {
    let inputs = vec![
        (
            "x".to_string(),
            Tensor::from_vec(vec![1, 2], vec![1.5f32, -2.0]).unwrap(),
        ),
        (
            "s".to_string(),
            Tensor::from_strings(vec![1], vec![Bytes::from_static(b"ab")]).unwrap(),
        ),
    ];
    let plain = encode_request(&inputs, false).unwrap();
    assert_eq!(plain.json_len, None);
    let d = decode_request(Bytes::from(plain.body), None, &Limits::default()).unwrap();
    assert_eq!(d.inputs, inputs);
    assert!(!d.binary_data_output);
    let bin = encode_request(&inputs, true).unwrap();
    let n = bin.json_len.unwrap().to_string();
    let d = decode_request(Bytes::from(bin.body), Some(&n), &Limits::default()).unwrap();
    assert_eq!(d.inputs, inputs);
    assert!(d.binary_data_output);
}

/// Triton's classification extension: `parameters.classification` per output.
#[test]
fn classification_is_read_per_output() {
    let d = decode(
        r#"{"inputs":[],"outputs":[{"name":"probs","parameters":{"classification":2}},{"name":"label"}]}"#,
    )
    .unwrap();
    assert_eq!(d.classifications(), vec![("probs".to_string(), 2)]);
    assert_eq!(d.output_names().unwrap(), ["probs", "label"]);
}

/// Python's `repr(float)` (what `json.dumps` writes): shortest round-trip
/// digits, fixed notation for exponents in [-4, 16) with `.0` when integral,
/// otherwise `1.5e-05` / `1e+16`.
fn py_repr(v: f64) -> String {
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    if (-4..16).contains(&exp) {
        let s = format!("{v}");
        if s.contains('.') { s } else { s + ".0" }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// A float written as clients write them: Rust's `{}` and `{:e}`, Python's
/// repr, or with a capital, explicitly signed exponent.
fn write_float(v: f64, form: u8) -> String {
    match form % 4 {
        0 => format!("{v}"),
        1 => format!("{v:e}"),
        2 => py_repr(v),
        _ => format!("{v:E}").replace("E", "E+").replace("E+-", "E-"),
    }
}

const WS: [&str; 6] = ["", " ", "\n", "\t", "  ", "\r\n "];

/// Finite f64s of every kind: any bit pattern, f32 values widened, and
/// the ranges tensors hold.
fn float_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<u64>().prop_map(f64::from_bits),
        any::<u32>().prop_map(|b| f32::from_bits(b) as f64),
        (-2f32..2f32).prop_map(|v| v as f64),
        -1e6f64..1e6,
        (-1000i64..1000).prop_map(|v| v as f64),
        Just(-0.0),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        Just(5e-324),
    ]
    .prop_filter("finite", |v| v.is_finite())
}

/// A request with one input whose `data` holds `texts`, nested as
/// `rows`×`cols` or flat, with `ws[i]` around the i-th element, and `data`
/// before or after `shape`/`datatype`.
fn float_body(
    dtype: &str,
    rows: usize,
    cols: usize,
    texts: &[String],
    ws: &[usize],
    nested: bool,
    data_first: bool,
) -> String {
    let mut data = String::from("[");
    for (i, t) in texts.iter().enumerate() {
        let w = WS[ws[i] % WS.len()];
        if nested && i % cols == 0 {
            if i > 0 {
                data.push_str("],");
            }
            data.push_str(w);
            data.push('[');
        } else if i > 0 {
            data.push(',');
        }
        data.push_str(w);
        data.push_str(t);
        data.push_str(w);
    }
    if nested {
        data.push(']');
    }
    data.push(']');
    let shape = if nested {
        format!("[{rows}, {cols}]")
    } else {
        format!("[{}]", rows * cols)
    };
    if data_first {
        format!(
            r#"{{"inputs":[{{"name":"x","data":{data},"shape":{shape},"datatype":"{dtype}"}}]}}"#
        )
    } else {
        format!(
            r#"{{ "inputs" : [ {{ "name" : "x", "shape" : {shape}, "datatype" : "{dtype}", "data" : {data} }} ] }}"#
        )
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every float, however written and spaced, decodes to exactly the
    /// correctly rounded f64 (`str::parse`) converted to the element type.
    /// For FP32 that is also bit for bit what serde_json gives; in f64 its
    /// default parser (no `float_roundtrip`) is 1 ULP off for about one in
    /// ten 17-digit numbers, never enough to change the f32.
    #[test]
    fn floats_decode_bit_for_bit(
        (rows, cols, vals) in (1usize..5, 1usize..5).prop_flat_map(|(r, c)| {
            (Just(r), Just(c), proptest::collection::vec((float_value(), any::<u8>(), any::<usize>()), r * c))
        }),
        dtype in 0u8..4,
        nested in any::<bool>(),
        data_first in any::<bool>(),
    ) {
        let texts: Vec<String> = vals.iter().map(|(v, f, _)| write_float(*v, *f)).collect();
        let ws: Vec<usize> = vals.iter().map(|(_, _, w)| *w).collect();
        let dt = ["FP32", "FP64", "FP16", "BF16"][dtype as usize];
        let body = float_body(dt, rows, cols, &texts, &ws, nested, data_first);
        let r = decode(&body).map_err(|e| TestCaseError::fail(format!("{e}: {body}")))?;
        let t = &r.inputs[0].1;
        let exact: Vec<f64> = texts.iter().map(|s| s.parse::<f64>().unwrap()).collect();
        match dt {
            "FP32" => {
                let got: Vec<u32> = t.to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect();
                let want: Vec<u32> = exact.iter().map(|v| (*v as f32).to_bits()).collect();
                prop_assert_eq!(&got, &want, "{}", body);
                // serde_json's default parser refuses some numbers near
                // f64::MAX written out in full (its product overflows);
                // those are infinite as f32 either way.
                for (i, s) in texts.iter().enumerate() {
                    if let Ok(v) = serde_json::from_str::<f64>(s) {
                        prop_assert_eq!(got[i], (v as f32).to_bits(), "{}", s);
                    }
                }
            }
            "FP64" => {
                let got: Vec<u64> = t.to_vec::<f64>().unwrap().iter().map(|v| v.to_bits()).collect();
                let want: Vec<u64> = exact.iter().map(|v| v.to_bits()).collect();
                prop_assert_eq!(&got, &want, "{}", body);
            }
            "FP16" => {
                let got: Vec<u16> = t.to_vec::<half::f16>().unwrap().iter().map(|v| v.to_bits()).collect();
                let want: Vec<u16> = exact.iter().map(|v| half::f16::from_f64(*v).to_bits()).collect();
                prop_assert_eq!(&got, &want, "{}", body);
            }
            _ => {
                let got: Vec<u16> = t.to_vec::<half::bf16>().unwrap().iter().map(|v| v.to_bits()).collect();
                let want: Vec<u16> = exact.iter().map(|v| half::bf16::from_f64(*v).to_bits()).collect();
                prop_assert_eq!(&got, &want, "{}", body);
            }
        }
    }

    /// Random byte edits (replace, insert, delete) of valid bodies never
    /// panic: they decode or fail with a one-line invalid-input error.
    #[test]
    fn edited_bodies_never_panic(
        vals in proptest::collection::vec((float_value(), any::<u8>()), 4),
        nested in any::<bool>(),
        data_first in any::<bool>(),
        dtype in 0usize..6,
        edits in proptest::collection::vec((any::<usize>(), 0u8..3, prop_oneof![
            Just(b'['), Just(b']'), Just(b'{'), Just(b'}'), Just(b','), Just(b':'), Just(b'"'),
            Just(b'-'), Just(b'.'), Just(b'e'), Just(b'0'), Just(b'9'), Just(b' '), Just(b'\\'),
            any::<u8>(),
        ]), 1..5),
    ) {
        let texts: Vec<String> = vals.iter().map(|(v, f)| write_float(*v, *f)).collect();
        let dt = ["FP32", "FP64", "INT32", "UINT8", "BOOL", "BYTES"][dtype];
        let mut body = float_body(dt, 2, 2, &texts, &[1, 0, 2, 0], nested, data_first).into_bytes();
        for (at, op, byte) in edits {
            let at = at % (body.len() + 1);
            match op {
                0 if at < body.len() => body[at] = byte,
                1 => body.insert(at, byte),
                _ if at < body.len() => {
                    body.remove(at);
                }
                _ => {}
            }
        }
        if let Err(e) = decode_request(Bytes::from(body), None, &Limits::default()) {
            prop_assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
            prop_assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}

/// Numbers at the edges: out of range, -0, integers past 2^53 and u64,
/// leading zeros, exponents, and where the integer types draw the line.
#[test]
fn number_edge_cases() {
    let one = |dt: &str, data: &str| {
        decode(&format!(
            r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"{dt}","data":[{data}]}}]}}"#
        ))
    };
    let f64_of = |data: &str| {
        one("FP64", data).unwrap().inputs[0]
            .1
            .to_vec::<f64>()
            .unwrap()[0]
    };
    assert_eq!(f64_of("-0").to_bits(), (-0f64).to_bits());
    assert_eq!(f64_of("-0.0e5").to_bits(), (-0f64).to_bits());
    assert_eq!(f64_of("9007199254740993"), 9007199254740992.0);
    assert_eq!(f64_of("18446744073709551617"), 18446744073709551616.0);
    assert_eq!(f64_of("1E+2"), 100.0);
    assert_eq!(f64_of("1e-400"), 0.0);
    assert_eq!(f64_of("4.9406564584124654e-324"), f64::from_bits(1));
    assert_eq!(
        f64_of("0.1000000000000000055511151231257827021181583404541015625"),
        0.1
    );
    for (dt, data, want) in [
        ("FP64", "1e400", "number out of range"),
        ("FP32", "-1e309", "number out of range"),
        (
            "FP32",
            "01",
            "malformed JSON: invalid number (leading zero) at line 1 column",
        ),
        ("FP32", "1.", "no digit after '.'"),
        ("FP32", ".5", "malformed JSON: expected a value"),
        ("FP32", "1e", "no digit in the exponent"),
        ("FP32", "+1", "malformed JSON: expected a value"),
        ("FP32", "NaN", "malformed JSON: expected a value"),
        ("INT8", "128", "value 128 is out of range for INT8"),
        ("INT8", "-129", "value -129 is out of range for INT8"),
        ("UINT8", "-1", "value -1 is out of range for UINT8"),
        ("INT32", "2.5", "INT32 data holds non-integer 2.5"),
        (
            "INT64",
            "1e19",
            "INT64 data holds non-integer 10000000000000000000",
        ),
        (
            "BOOL",
            "0",
            "BOOL data holds number 0, expected true or false",
        ),
        (
            "BYTES",
            "1.5",
            "BYTES data holds number 1.5, expected strings",
        ),
        ("FP32", "true", "FP32 data holds boolean true"),
    ] {
        let e = one(dt, data).unwrap_err().to_string();
        assert!(e.contains(want), "{dt} {data}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
    let int = |dt: &str, data: &str| one(dt, data).unwrap().inputs[0].1.to_f64_vec().unwrap()[0];
    assert_eq!(int("INT64", "-0"), 0.0);
    assert_eq!(int("INT32", "2.0"), 2.0);
    assert_eq!(int("UINT16", "1e2"), 100.0);
    assert_eq!(
        one("INT64", "-9223372036854775808").unwrap().inputs[0]
            .1
            .to_vec::<i64>()
            .unwrap(),
        [i64::MIN]
    );
    assert_eq!(
        one("UINT64", "18446744073709551615").unwrap().inputs[0]
            .1
            .to_vec::<u64>()
            .unwrap(),
        [u64::MAX]
    );
    // A scalar where the shape holds one element is taken, as before.
    let r =
        decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":2.5}]}"#).unwrap();
    assert_eq!(r.inputs[0].1.to_vec::<f32>().unwrap(), [2.5]);
}

/// Syntax errors name what was expected and where; escapes work in keys,
/// names and BYTES data; unknown fields of any shape are skipped.
#[test]
fn syntax_errors_and_escapes() {
    let m = err(
        "{\"inputs\":[{\"name\":\"x\",\"shape\":[2],\n\"datatype\":\"FP32\",\"data\":[1,,2]}]}",
    );
    assert!(
        m.contains("malformed JSON: expected a value at line 2 column 29"),
        "{m}"
    );
    let m = err(r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1 2]}]}"#);
    assert!(m.contains("expected ',' or ']' at line 1 column 64"), "{m}");
    let m = err(r#"{"inputs":[{"name":"x" "shape":[2]}]}"#);
    assert!(m.contains("expected ',' or '}'"), "{m}");
    let m = err(r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2]"#);
    assert!(m.contains("EOF while parsing"), "{m}");
    let m = err(r#"{"inputs":{}}"#);
    assert!(
        m.contains("expected 'inputs' to be an array of input tensors, found an object"),
        "{m}"
    );
    let m = err(r#"{"inputs":[{"name":7}]}"#);
    assert!(
        m.contains("expected an input's 'name' to be a string, found a number"),
        "{m}"
    );
    let m = err(r#"{"inputs":[{"name":"x","shape":[1.5],"datatype":"FP32","data":[1]}]}"#);
    assert!(m.contains("expected i64 at line 1 column"), "{m}");
    let m =
        err(r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2],"data":[3]}]}"#);
    assert!(m.contains("input has 'data' twice"), "{m}");
    let m = err("{\"inputs\":[{\"name\":\"a\u{1}\"}]}");
    assert!(m.contains("control character in a string"), "{m}");

    let r = decode(
        r#"{"extra":{"a":[1,{"b":null}],"c":"\"}"},"id":"r\u0031","inp\u0075ts":[{"name":"s\\x","shape":[3],"datatype":"BYTES","x":[[]],"data":["a\"b","\u00e9\n",""]}]}"#,
    )
    .unwrap();
    assert_eq!(r.id.as_deref(), Some("r1"));
    assert_eq!(r.inputs[0].0, "s\\x");
    let s = r.inputs[0].1.strings().unwrap();
    assert_eq!(s[0].as_ref(), b"a\"b");
    assert_eq!(s[1].as_ref(), "é\n".as_bytes());
    assert_eq!(s[2].as_ref(), b"");
    // Ignored values may nest, but not without end.
    let deep = |n: usize| {
        format!(
            r#"{{"x":{}1{},"inputs":[]}}"#,
            "[{\"a\":".repeat(n),
            "}]".repeat(n)
        )
    };
    decode(&deep(60)).unwrap();
    let m = err(&deep(100_000));
    assert!(m.contains("JSON nested deeper than 128 levels"), "{m}");
    // Whitespace anywhere between tokens.
    let r = decode(" \n{ \"inputs\" :\t[ { \"name\" : \"x\" , \"shape\" : [ 2 , 1 ] , \"datatype\" : \"FP32\" , \"data\" : [ [ 1.5 ] ,\n [ -2 ] ] } ] }\r\n")
        .unwrap();
    assert_eq!(r.inputs[0].1.to_vec::<f32>().unwrap(), [1.5, -2.0]);
}
