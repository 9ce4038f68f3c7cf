//! The `pomme` binary end to end: reference outputs through both backends, and
//! one clear line (exit code ≠ 0, no panic) for every kind of bad input.

use pomme_test_support::fixtures::{models_dir, read_npy, repo_models};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pomme(args: &[&str]) -> Output {
    // From the workspace root, where the ONNX Runtime venv (./.venv) is found.
    Command::new(env!("CARGO_BIN_EXE_pomme"))
        .args(args)
        .current_dir(pomme_test_support::fixtures::workspace_root())
        .output()
        .expect("pomme runs")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pomme-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Asserts a failure that prints exactly one `error:` line naming `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains(needle),
        "expected '{needle}' in: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
}

fn ort_available() -> bool {
    let out = pomme(&["devices", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["backend"] == "ort" && b["availability"]["status"] == "available")
}

/// Runs `pomme infer` on a reference fixture and compares every output.
fn check_reference(models: &Path, model: &str, backend: &str) {
    let refdir = models.join("reference").join(model);
    let mut args: Vec<String> = vec![
        "infer".into(),
        models.join(format!("{model}.onnx")).display().to_string(),
    ];
    let mut expected = Vec::new();
    for entry in std::fs::read_dir(&refdir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if let Some(input) = name
            .strip_prefix("input.")
            .and_then(|n| n.strip_suffix(".npy"))
        {
            args.push("--input".into());
            args.push(format!("{input}={}", p.display()));
        } else if let Some(output) = name
            .strip_prefix("output.")
            .and_then(|n| n.strip_suffix(".npy"))
        {
            expected.push((output.to_string(), p));
        }
    }
    let out_dir = tmpdir(&format!("{model}-{backend}"));
    args.extend([
        "--backend".into(),
        backend.into(),
        "-o".into(),
        out_dir.display().to_string(),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_pomme"))
        .args(&args)
        .current_dir(pomme_test_support::fixtures::workspace_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{model}/{backend}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, want_path) in expected {
        let want = read_npy(&want_path);
        let got = read_npy(&out_dir.join(format!("{name}.npy")));
        let worst = pomme_test_support::fixtures::assert_close(
            &format!("{model}/{backend}/{name}"),
            &got,
            &want,
            1e-3,
            1e-4,
        );
        // Norm-relative error, the figure the issue asks ≤ 1e-4 for.
        let (g, w) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
        let num: f64 = g
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        let den: f64 = w.iter().map(|b| b * b).sum::<f64>().sqrt().max(1e-30);
        let rel = num / den;
        eprintln!(
            "{model:<14} {backend:<6} {name:<20} norm-relative error {rel:.2e}, max elementwise relative {worst:.2e}"
        );
        assert!(
            rel <= 1e-4,
            "{model}/{backend}/{name}: relative error {rel:.2e} > 1e-4"
        );
    }
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn shipped_model_matches_reference_with_tract() {
    check_reference(&repo_models(), "add_one", "tract");
}

#[test]
fn every_shared_fixture_matches_reference() {
    let Some(models) = models_dir("every_shared_fixture_matches_reference") else {
        return;
    };
    let mut backends = vec!["tract"];
    if ort_available() {
        backends.push("ort");
    } else {
        eprintln!("SKIP ort half: onnxruntime library not found (see crates/pomme-ort docs)");
    }
    for model in [
        "add_one",
        "identity_f32",
        "matmul_relu",
        "digits_mlp",
        "digits_cnn",
        "mobilenet_v2",
        "resnet18",
        "minilm_l6",
    ] {
        // Every pair must match, minilm_l6 on tract included: tract cannot
        // simplify BERT with `seq` symbolic, so pomme-tract runs a plan
        // specialized to the request's batch and seq.
        for b in &backends {
            check_reference(&models, model, b);
        }
    }
}

#[test]
fn inspect_mobilenet() {
    let Some(models) = models_dir("inspect_mobilenet") else {
        return;
    };
    let out = pomme(&[
        "inspect",
        "--json",
        models.join("mobilenet_v2.onnx").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["signature"]["inputs"][0]["name"], "input");
    assert_eq!(
        v["signature"]["inputs"][0]["shape"],
        serde_json::json!(["batch", 3, 224, 224])
    );
    assert_eq!(
        v["signature"]["outputs"][0]["shape"],
        serde_json::json!(["batch", 1000])
    );
    assert_eq!(v["parameters"], 3_487_816);
    assert!(v["memory_estimate_batch1"].as_u64().unwrap() > 13_000_000);
    assert_eq!(v["op_histogram"]["Conv"], 52);
}

#[test]
fn bad_model_files_give_one_line() {
    let dir = tmpdir("bad");
    let bad = repo_models().join("bad");
    let missing = dir.join("missing.onnx");
    let cases: Vec<(PathBuf, &str)> = vec![
        (missing, "no such file"),
        (dir.clone(), "is a directory"),
        (bad.join("empty.onnx"), "empty (0 bytes)"),
        (bad.join("truncated.onnx"), "truncated"),
        (bad.join("random.onnx"), "invalid model"),
        (bad.join("unsupported_op.onnx"), "PommeFrobnicate"),
    ];
    let txt = dir.join("model.txt");
    std::fs::write(&txt, "hello").unwrap();
    for (path, needle) in cases.into_iter().chain([(txt, "unknown model format")]) {
        for cmd in ["inspect", "infer"] {
            let out = pomme(&[cmd, path.to_str().unwrap()]);
            assert_one_line_error(&out, needle);
        }
    }
    // tract needs every input's rank; ONNX Runtime does not. Inspect reads
    // with tract and says so; infer, with no --backend, runs it on the next
    // backend that loads it.
    let no_shape = bad.join("no_input_shape.onnx");
    assert_one_line_error(&pomme(&["inspect", no_shape.to_str().unwrap()]), "shape");
    if ort_available() {
        let out = pomme(&["infer", no_shape.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["backend"], "ort", "{v}");
        let out = pomme(&["infer", no_shape.to_str().unwrap(), "--backend", "tract"]);
        assert_one_line_error(&out, "declares no shape");
    }
}

#[test]
fn bad_inputs_give_one_line() {
    let dir = tmpdir("inputs");
    let model = repo_models().join("add_one.onnx");
    let model = model.to_str().unwrap();
    let good = repo_models().join("reference/add_one/input.x.npy");
    let good = good.to_str().unwrap();
    let write = |name: &str, body: &str| {
        let py = dir.join(name);
        // A tiny .npy writer: header + data.
        std::fs::write(&py, body).unwrap();
        py
    };
    let _ = write;
    let npy = |name: &str, descr: &str, shape: &str, data: Vec<u8>| {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    let f64s = npy("f64.npy", "<f8", "(1, 4)", vec![0u8; 32]);
    let wide = npy("wide.npy", "<f4", "(1, 5)", vec![0u8; 20]);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![format!("y={good}")], "unknown input 'y'"),
        (vec![format!("x={f64s}")], "datatype FP64, expected FP32"),
        (vec![format!("x={wide}")], "shape [1,5], expected [batch,4]"),
        (
            vec![format!("x={good}"), format!("x={good}")],
            "given twice",
        ),
        (
            vec![format!("x={}", dir.join("nope.npy").display())],
            "cannot read",
        ),
        (vec![format!("x={model}")], "not a valid .npy"),
        (vec!["x".to_string()], "not NAME=FILE.npy"),
    ];
    for (inputs, needle) in cases {
        let mut args = vec!["infer", model];
        for i in &inputs {
            args.push("--input");
            args.push(i);
        }
        assert_one_line_error(&pomme(&args), needle);
    }
    let out = pomme(&["infer", model, "--backend", "tpu"]);
    assert_one_line_error(&out, "not compiled in");
    let out = pomme(&["bench", model, "--duration", "ten"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bench_prints_a_row_per_backend() {
    let model = repo_models().join("add_one.onnx");
    let out = pomme(&[
        "bench",
        model.to_str().unwrap(),
        "--backend",
        "tract",
        "--batch",
        "1,4",
        "--duration",
        "200ms",
        "--warmup",
        "50ms",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(rows[0]["requests"].as_u64().unwrap() > 0);
    assert!(rows[1]["p99_ms"].as_f64().unwrap() >= rows[1]["p50_ms"].as_f64().unwrap());
}

/// An engine that panics on a malformed file (tract-onnx 0.23.9 on an input
/// naming no value; found by the `onnx_tract` fuzz target) gives one line, no
/// panic message, no backtrace.
#[test]
fn engine_panic_on_a_bad_file_is_one_line() {
    let bad = pomme_test_support::fixtures::workspace_root()
        .join("fuzz/seeds/onnx_tract/regression_missing_input_name.onnx");
    for cmd in ["inspect", "infer"] {
        let out = pomme(&[cmd, bad.to_str().unwrap()]);
        assert_one_line_error(&out, "internal error in the engine");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("RUST_BACKTRACE"), "{cmd}: {err}");
        assert!(!err.contains("thread '"), "{cmd}: {err}");
    }
}

/// `pomme inspect --plan` runs the runtime's routing trials on the shipped
/// model and names the candidate it would serve on. ONNX Runtime takes part
/// when its library is in ./.venv; otherwise its row says why not.
#[test]
fn inspect_plan_names_the_chosen_candidate() {
    let model = repo_models().join("add_one.onnx");
    let model = model.to_str().unwrap();
    let args = [
        "inspect",
        "--plan",
        model,
        "--candidates",
        "tract/cpu,ort/cpu",
        "--runs",
        "3",
    ];
    let out = pomme(&[&args[..], &["--json"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["candidates"].as_array().unwrap();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["candidate"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tract/cpu", "ort/cpu"]);
    assert_eq!(v["reference"], "tract/cpu");
    let chosen = v["chosen"].as_str().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["candidate"] == chosen && r["chosen"] == true)
    );
    assert!(rows[0]["median_ms"].as_f64().unwrap() > 0.0);
    if ort_available() {
        // add_one is exact on both engines.
        assert_eq!(rows[1]["agrees"], true, "{v}");
        assert_eq!(rows[1]["max_abs_diff"], 0.0);
        assert_eq!(v["order"].as_array().unwrap().len(), 2);
    } else {
        eprintln!("SKIP ort half: onnxruntime library not found (see crates/pomme-ort docs)");
        assert_eq!(chosen, "tract/cpu");
        assert!(!rows[1]["note"].as_str().unwrap().is_empty(), "{v}");
    }
    // The table names the chosen candidate too (timings are re-measured, so
    // it may differ from the JSON run's when the two are close).
    let out = pomme(&args);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let chosen = text
        .lines()
        .find_map(|l| l.strip_prefix("chosen:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no chosen line: {text}"));
    assert!(names.contains(&chosen), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(chosen) && l.trim_end().ends_with("yes")),
        "{text}"
    );
    // A bad candidate is a usage error naming it.
    let out = pomme(&["inspect", "--plan", model, "--candidates", "tract/gpu0"]);
    assert_eq!(out.status.code(), Some(2));
    assert_one_line_error(
        &out,
        "routing candidate 'tract/gpu0': unknown device 'gpu0'",
    );
}

/// `--precision f16` runs the ort backend on the float16 conversion (into
/// `POMME_CACHE_DIR`), answering in f32; an unknown precision is a usage error.
#[test]
fn infer_with_f16_precision() {
    let model = repo_models().join("add_one.onnx");
    let model = model.to_str().unwrap();
    let input = repo_models().join("reference/add_one/input.x.npy");
    let input = format!("x={}", input.to_str().unwrap());
    let bad = pomme(&["infer", model, "--precision", "f8", "--input", &input]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    if !ort_available() {
        eprintln!("SKIP infer_with_f16_precision: onnxruntime not available");
        return;
    }
    let cache = tmpdir("f16cache");
    let out = Command::new(env!("CARGO_BIN_EXE_pomme"))
        .args(["infer", model, "--backend", "ort", "--precision", "f16"])
        .args(["--input", &input])
        .env("POMME_CACHE_DIR", &cache)
        .current_dir(pomme_test_support::fixtures::workspace_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outputs"][0]["datatype"], "FP32", "{v}");
    assert_eq!(
        std::fs::read_dir(cache.join("fp16")).unwrap().count(),
        1,
        "one converted file"
    );
}

#[test]
fn embed_prints_the_reference_embeddings_and_writes_npy() {
    let reference: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_models().join("text/tiny_reference.json")).unwrap(),
    )
    .unwrap();
    let cases = reference["texts"].as_array().unwrap();
    let dir = tmpdir("embed");
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::copy(
        repo_models().join("text/tiny_embed.onnx"),
        dir.join("1/model.onnx"),
    )
    .unwrap();
    std::fs::copy(
        repo_models().join("text/minilm/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(dir.join("config.toml"), "[text]\nseq_buckets = [16, 32]\n").unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let d = dir.to_str().unwrap();
    let out = pomme(&[&["embed", d][..], &texts].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dim"], 16);
    for (got, case) in v["embeddings"].as_array().unwrap().iter().zip(cases) {
        let want = case["tiny_embed"]["embedding"].as_array().unwrap();
        for (a, b) in got.as_array().unwrap().iter().zip(want) {
            assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-5);
        }
    }
    let lines = dir.join("texts.txt");
    std::fs::write(&lines, texts.join("\n\n")).unwrap();
    let npy = dir.join("e.npy");
    let out = pomme(&[
        "embed",
        d,
        "--file",
        lines.to_str().unwrap(),
        "-o",
        npy.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_npy(&npy).shape(), &[3, 16]);
    assert_one_line_error(&pomme(&["embed", d]), "no texts");
    let cls = repo_models().join("text/tiny_classifier.onnx");
    let vocab = repo_models().join("text/minilm/vocab.txt");
    assert_one_line_error(
        &pomme(&[
            "embed",
            cls.to_str().unwrap(),
            "--tokenizer",
            vocab.to_str().unwrap(),
            "x",
        ]),
        "needs token states",
    );
}
