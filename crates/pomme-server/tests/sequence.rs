//! Triton's sequence parameters over both protocols, on a real server: a
//! stateless model answers requests that carry them (it ignores the
//! sequence, as Triton does without a sequence batcher), and a malformed one
//! is a 400 / INVALID_ARGUMENT whose one-line message names the parameter.

#[allow(dead_code)]
mod common;

use common::{http, repo, start};
use pomme_core::Tensor;
use pomme_server::config::ServerArgs;
use pomme_server::kserve;
use pomme_server::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use pomme_server::proto::{InferParameter, infer_parameter::ParameterChoice};
use pomme_test_support::FakeBackend;

fn body(params: &str) -> String {
    format!(
        r#"{{"inputs":[{{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}}],"parameters":{params}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_parameters_over_http_and_grpc() {
    let tmp = repo();
    let fake = FakeBackend::new(4);
    let s = start(tmp.path(), &fake, ServerArgs::default()).await;

    for params in [
        r#"{"sequence_id":42,"sequence_start":true}"#,
        r#"{"sequence_id":"user-7","sequence_end":true}"#,
        r#"{"sequence_id":0}"#,
    ] {
        let (status, text) = http(
            s.http_addr,
            "POST",
            "/v2/models/slow/infer",
            &[],
            body(params).as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{params}: {text}");
        assert!(text.contains(r#""data":[2.0,4.0,6.0,8.0]"#), "{text}");
    }
    for (params, named) in [
        (
            r#"{"sequence_id":1,"sequence_start":"yes"}"#,
            "parameters.sequence_start must be a boolean",
        ),
        (
            r#"{"sequence_id":-3}"#,
            "parameters.sequence_id must be a non-negative integer or a string",
        ),
        (
            r#"{"sequence_end":true}"#,
            "parameters.sequence_end is set but the request has no sequence_id",
        ),
    ] {
        let (status, text) = http(
            s.http_addr,
            "POST",
            "/v2/models/slow/infer",
            &[],
            body(params).as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{params}: {text}");
        assert!(text.contains(named) && !text.contains('\n'), "{text}");
    }

    let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc_addr))
        .await
        .unwrap();
    let x = Tensor::from_vec(vec![1, 4], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
    let request = |params: Vec<(&str, ParameterChoice)>| {
        let mut r =
            kserve::grpc::encode_request("slow", None, &[("x".into(), x.clone())], &[]).unwrap();
        for (k, v) in params {
            r.parameters.insert(
                k.into(),
                InferParameter {
                    parameter_choice: Some(v),
                },
            );
        }
        r
    };
    let ok = c
        .model_infer(request(vec![
            ("sequence_id", ParameterChoice::StringParam("s".into())),
            ("sequence_start", ParameterChoice::BoolParam(true)),
        ]))
        .await
        .unwrap()
        .into_inner();
    let outs = kserve::grpc::decode_response(ok, &Default::default()).unwrap();
    assert_eq!(outs[0].1.to_vec::<f32>().unwrap(), vec![2.0, 4.0, 6.0, 8.0]);
    let bad = c
        .model_infer(request(vec![(
            "sequence_id",
            ParameterChoice::DoubleParam(1.5),
        )]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("'sequence_id'"), "{}", bad.message());
    s.stop().await.unwrap();
}
