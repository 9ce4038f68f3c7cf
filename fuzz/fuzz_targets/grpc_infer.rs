//! gRPC `ModelInferRequest` bytes → prost decode → `pomme_kserve::grpc::decode_request`
//! (typed contents, raw contents, BYTES length prefixes, parameters, limits).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pomme_kserve::proto::ModelInferRequest;
use pomme_kserve::{Limits, grpc};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = ModelInferRequest::decode(data) else {
        return;
    };
    let limits = Limits {
        max_body_bytes: 1 << 16,
        max_elements: 1 << 14,
        max_json_depth: 16,
        max_string_bytes: 1 << 12,
        max_inputs: 16,
    };
    if let Ok((_, _, req)) = grpc::decode_request(req, &limits) {
        let _ = grpc::encode_response("m", 1, req.id.as_deref(), &req.inputs);
    }
});
