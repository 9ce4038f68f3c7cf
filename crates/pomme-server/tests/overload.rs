//! Overload accounting end to end: a real server on ephemeral ports, a slow
//! fake backend behind a tiny queue, and many concurrent HTTP and gRPC
//! clients. Every request sent must come back as exactly one of succeeded,
//! rejected (429 / RESOURCE_EXHAUSTED) or timed out (504 / DEADLINE_EXCEEDED),
//! and the Prometheus counters on the metrics port must agree with the
//! clients' tallies.
//!
//! No assertion depends on timing: which request lands in which category is
//! up to the scheduler, only the sums are checked — plus that each category
//! occurred, which the set-up forces (32 clients against a queue of 4 always
//! overflow it, and a request with a 5 ms deadline cannot survive a 40 ms run).

mod common;

use common::{good_body, http, repo, start};
use pomme_core::Tensor;
use pomme_server::config::ServerArgs;
use pomme_server::kserve;
use pomme_server::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use pomme_server::proto::{InferParameter, infer_parameter::ParameterChoice};
use pomme_test_support::{Behaviour, FakeBackend};
use std::net::SocketAddr;
use std::time::Duration;

const CLIENTS: usize = 32;
const PER_CLIENT: usize = 8;
const RUN: Duration = Duration::from_millis(40);

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    ok: u64,
    rejected: u64,
    timed_out: u64,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.ok += o.ok;
        self.rejected += o.rejected;
        self.timed_out += o.timed_out;
    }
    fn total(&self) -> u64 {
        self.ok + self.rejected + self.timed_out
    }
}

async fn http_client(addr: SocketAddr, short_deadline: bool) -> Tally {
    let timeout = if short_deadline {
        r#","parameters":{"timeout":5000}"#
    } else {
        ""
    };
    let body = format!(
        r#"{{"inputs":[{{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}}]{timeout}}}"#
    );
    let mut t = Tally::default();
    for _ in 0..PER_CLIENT {
        let (status, text) =
            http(addr, "POST", "/v2/models/slow/infer", &[], body.as_bytes()).await;
        match status {
            200 => t.ok += 1,
            429 => t.rejected += 1,
            504 => t.timed_out += 1,
            other => panic!("unexpected HTTP {other}: {text}"),
        }
    }
    t
}

async fn grpc_client(addr: SocketAddr, short_deadline: bool) -> Tally {
    let mut c = GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let x = Tensor::from_vec(vec![1, 4], vec![1f32, 2., 3., 4.]).unwrap();
    let mut req = kserve::grpc::encode_request("slow", None, &[("x".into(), x)], &[]).unwrap();
    if short_deadline {
        req.parameters.insert(
            "timeout".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::Int64Param(5000)),
            },
        );
    }
    let mut t = Tally::default();
    for _ in 0..PER_CLIENT {
        match c.model_infer(req.clone()).await {
            Ok(_) => t.ok += 1,
            Err(s) if s.code() == tonic::Code::ResourceExhausted => t.rejected += 1,
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => t.timed_out += 1,
            Err(s) => panic!("unexpected gRPC status {s:?}"),
        }
    }
    t
}

/// The value of the sample of `family` whose labels include every `labels` pair (0 if absent).
fn sample(metrics: &str, family: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| {
            let v = l.rsplit(' ').next().unwrap();
            v.parse::<f64>()
                .unwrap_or_else(|_| panic!("bad sample {l:?}")) as u64
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_accounting_is_exact_and_metrics_agree() {
    let tmp = repo();
    let fake = FakeBackend::new(4);
    // Every execution is slow; far more scripted than will run.
    fake.then(Behaviour::Slow(RUN), CLIENTS * PER_CLIENT);
    let s = start(tmp.path(), &fake, ServerArgs::default()).await;

    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (h, g) = (s.http_addr, s.grpc_addr);
            // Half HTTP, half gRPC; a quarter of each with a 5 ms deadline.
            let short = i % 4 >= 2;
            if i % 2 == 0 {
                tokio::spawn(http_client(h, short))
            } else {
                tokio::spawn(grpc_client(g, short))
            }
        })
        .collect();
    let mut tally = Tally::default();
    for t in tasks {
        tally.add(t.await.unwrap());
    }

    let sent = (CLIENTS * PER_CLIENT) as u64;
    assert_eq!(tally.total(), sent, "{tally:?}");
    assert!(tally.ok > 0, "{tally:?}");
    assert!(tally.rejected > 0, "{tally:?}");
    assert!(tally.timed_out > 0, "{tally:?}");

    // Every request has been answered: nothing admitted, nothing queued.
    assert_eq!(s.shared().runtime.admission().in_flight(), 0);

    let (status, metrics) = http(s.metrics_addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    let m = [("model", "slow"), ("version", "1")];
    let ok = sample(&metrics, "pomme_request_success_total", &m);
    let rejected = sample(
        &metrics,
        "pomme_request_failure_total",
        &[m[0], m[1], ("reason", "resource_limit")],
    );
    let timed_out = sample(
        &metrics,
        "pomme_request_failure_total",
        &[m[0], m[1], ("reason", "timeout")],
    );
    let failures = sample(&metrics, "pomme_request_failure_total", &[]);
    assert_eq!(
        (ok, rejected, timed_out),
        (tally.ok, tally.rejected, tally.timed_out),
        "metrics disagree with the clients:\n{metrics}"
    );
    assert_eq!(
        failures,
        rejected + timed_out,
        "other failure reasons counted"
    );
    assert_eq!(sample(&metrics, "pomme_pending_requests", &m), 0);
    // The engine ran every success (and possibly requests whose caller had
    // already timed out), never more than were admitted.
    let executions = sample(&metrics, "pomme_execution_count_total", &m);
    assert!(
        executions >= ok && executions <= ok + timed_out,
        "{executions} executions for {tally:?}"
    );
    assert_eq!(
        sample(&metrics, "pomme_inference_count_total", &m),
        executions
    );

    // The server still serves after the storm.
    let (status, _) = http(
        s.http_addr,
        "POST",
        "/v2/models/slow/infer",
        &[],
        good_body().as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(s.stop().await.unwrap());
}
