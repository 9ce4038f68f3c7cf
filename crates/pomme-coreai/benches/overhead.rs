//! What pomme adds over Apple's runtime: the same Core AI model (the `mlp`
//! fixture, 32 → 64 → 8, batch 1) called directly with `coreai.runtime` in
//! Python (`await f({"x": NDArray(x)})` in a running loop, outputs read with
//! `.numpy()`, the same compiled program) and through pomme: the coreai
//! session (engine worker process, framed pipes) and `Runtime::infer`
//! (admission, queue, compute worker, reply). Rounds alternate between the
//! sides; each round's p50 is taken over `CALLS` calls and the table gives
//! the median and min–max of the round p50s. Needs a Python with
//! `coreai-core` (`POMME_COREAI_PYTHON` or the workspace `.venv`).
//!
//!     cargo bench -p pomme-coreai --bench overhead
//!
//! `POMME_BENCH_SPIN_US` sets the backend's `spin_us` for both pomme sides.
#![expect(
    clippy::disallowed_methods,
    reason = "the bench's spin window is chosen with POMME_BENCH_SPIN_US"
)]

use pomme_core::{Backend, LoadOptions, ModelArtifact, ModelFormat, Tensor};
use pomme_coreai::{CoreAiBackend, CoreAiSettings};
use pomme_runtime::{InferRequest, ModelSpec, Runtime};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

const CALLS: usize = 2000;
const ROUNDS: usize = 7;

const DIRECT: &str = r#"
import asyncio, os, sys, time, numpy as np
from pathlib import Path
from coreai.runtime import AIModel, NDArray
async def main():
    m = await AIModel.load(Path(sys.argv[1]))
    f = m.load_function("main")
    x = np.full((1, 32), 0.5, np.float32)
    for _ in range(200):
        await f({"x": NDArray(x)})
    ts = []
    for _ in range(int(sys.argv[2])):
        t = time.perf_counter()
        out = await f({"x": NDArray(x)})
        y = out["y"].numpy()
        ts.append(time.perf_counter() - t)
    ts.sort()
    print(ts[len(ts) // 2] * 1e6, flush=True)
asyncio.run(main())
os._exit(0)  # the Swift runtime's teardown at interpreter exit sometimes aborts
"#;

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn summary(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    format!(
        "{:>8.1} µs   ({:.1}–{:.1})",
        s[s.len() / 2],
        s[0],
        s[s.len() - 1]
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists; nothing to list here
    }
    let Some(python) = pomme_test_support::fixtures::coreai_python("coreai overhead bench") else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let settings = CoreAiSettings {
        python: Some(python.clone()),
        fallback_pythons: vec![],
        cache_dir: cache.path().to_path_buf(),
    };
    let artifact = ModelArtifact {
        path: pomme_test_support::fixtures::repo_models().join("coreai/mlp.aimodel"),
        format: ModelFormat::CoreAi,
    };
    let spin = std::env::var("POMME_BENCH_SPIN_US").ok();
    let load = match &spin {
        Some(us) => LoadOptions::with_extra(&[("spin_us", us.as_str())]),
        None => LoadOptions::default(),
    };
    let backend = CoreAiBackend::new(settings.clone());
    let model = backend.load(&artifact, &load).unwrap();
    let compiled = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "aimodelx"))
        .expect("the load compiled the program into the cache");
    let mut session = model.session().unwrap();
    let x = Tensor::from_vec(vec![1, 32], vec![0.5f32; 32]).unwrap();

    let rt = Runtime::builder()
        .backends(vec![
            Arc::new(CoreAiBackend::new(settings)) as Arc<dyn Backend>
        ])
        .build()
        .unwrap();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut spec = ModelSpec::new("mlp", &artifact.path);
    spec.load = load.clone();
    tokio.block_on(rt.load(spec)).unwrap();

    let (mut direct, mut sess, mut served) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let out = Command::new(&python)
            .args(["-c", DIRECT])
            .arg(&compiled)
            .arg(CALLS.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let d: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        direct.push(d);

        for _ in 0..200 {
            session.run(vec![x.clone()]).unwrap();
        }
        let mut ts = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let t = Instant::now();
            std::hint::black_box(session.run(vec![x.clone()]).unwrap());
            ts.push(t.elapsed().as_secs_f64() * 1e6);
        }
        sess.push(p50(ts));

        let mut ts = Vec::with_capacity(CALLS);
        tokio.block_on(async {
            for i in 0..CALLS + 200 {
                let t = Instant::now();
                let r = rt
                    .infer(InferRequest::new("mlp", vec![("x".into(), x.clone())]))
                    .await
                    .unwrap();
                std::hint::black_box(r);
                if i >= 200 {
                    ts.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
        });
        served.push(p50(ts));
        eprintln!(
            "round {round}: direct {:.1} µs, session {:.1} µs, Runtime::infer {:.1} µs",
            direct[round], sess[round], served[round]
        );
    }
    let added = |v: &[f64]| -> Vec<f64> { v.iter().zip(&direct).map(|(a, b)| a - b).collect() };
    println!(
        "Core AI mlp fixture, batch 1, p50 per call: median of {ROUNDS} rounds (min–max), {CALLS} calls each"
    );
    println!("  direct coreai.runtime (Python)  {}", summary(&direct));
    println!("  pomme coreai session            {}", summary(&sess));
    println!("  pomme Runtime::infer            {}", summary(&served));
    println!(
        "  added by the session            {}",
        summary(&added(&sess))
    );
    println!(
        "  added by Runtime::infer         {}",
        summary(&added(&served))
    );
}
