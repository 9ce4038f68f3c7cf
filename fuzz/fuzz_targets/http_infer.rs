//! An HTTP infer body → `pomme_kserve::json::decode_request`, with and without
//! Triton's binary tensor data extension (`Inference-Header-Content-Length`
//! splitting the JSON header from the binary tensors).
//!
//! Input layout: byte 0 selects the header: `0` none, otherwise bytes 1..3
//! (u16 LE) are the declared JSON length, sent as text; the rest is the body.
//! Decoded requests are re-encoded as a reply, exercising the encoder too.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pomme_kserve::{Limits, json};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let header = (data[0] != 0).then(|| u16::from_le_bytes([data[1], data[2]]).to_string());
    let body = Bytes::copy_from_slice(&data[3..]);
    // Small limits, so the fuzzer reaches every limit check quickly.
    let limits = Limits {
        max_body_bytes: 1 << 16,
        max_elements: 1 << 14,
        max_json_depth: 16,
        max_string_bytes: 1 << 12,
        max_inputs: 16,
    };
    if let Ok(req) = json::decode_request(body, header.as_deref(), &limits) {
        let outputs: Vec<_> = req.inputs.clone();
        let _ = json::encode_response("m", 1, req.id.as_deref(), &outputs, &req.output_prefs());
    }
});
