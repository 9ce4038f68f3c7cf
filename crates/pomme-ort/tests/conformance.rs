//! Reference conformance: every fixture model, fed its recorded input, must give
//! the recorded onnxruntime output (float32 rtol 1e-3 / atol 1e-4, int64 exact).

mod common;

use pomme_core::{Backend, LoadOptions, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// Reads a `.npy` file into a pomme tensor (float32 and int64 are all the fixtures use).
fn read_npy(path: &Path) -> Tensor {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    assert_eq!(npy.order(), npyz::Order::C, "{}", path.display());
    let descr = npy.dtype().descr();
    match descr.as_str() {
        "'<f4'" => Tensor::from_vec(shape, npy.into_vec::<f32>().unwrap()).unwrap(),
        "'<i8'" => Tensor::from_vec(shape, npy.into_vec::<i64>().unwrap()).unwrap(),
        other => panic!("{}: unexpected dtype {other}", path.display()),
    }
}

/// `name -> tensor` for every `<prefix>.<name>.npy` in `dir`.
fn read_prefixed(dir: &Path, prefix: &str) -> BTreeMap<String, Tensor> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let file = p.file_name()?.to_str()?.to_string();
            let name = file.strip_prefix(prefix)?.strip_suffix(".npy")?.to_string();
            Some((name, read_npy(&p)))
        })
        .collect()
}

/// Compares one output; returns the max relative error (floats) for the report.
fn compare(model: &str, name: &str, got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dtype(), want.dtype(), "{model}/{name} dtype");
    assert_eq!(got.shape(), want.shape(), "{model}/{name} shape");
    if got.dtype() == pomme_core::DType::I64 {
        assert_eq!(
            got.to_vec::<i64>().unwrap(),
            want.to_vec::<i64>().unwrap(),
            "{model}/{name} int64 values"
        );
        return 0.0;
    }
    let (rtol, atol) = (1e-3, 1e-4);
    let g = got.to_f64_vec().unwrap();
    let w = want.to_f64_vec().unwrap();
    let mut max_rel: f64 = 0.0;
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let diff = (a - b).abs();
        assert!(
            diff <= atol + rtol * b.abs(),
            "{model}/{name}[{i}]: got {a}, want {b} (|diff| {diff:e})"
        );
        if b.abs() > 0.0 {
            max_rel = max_rel.max(diff / b.abs());
        }
    }
    max_rel
}

#[test]
fn reference_outputs_match() {
    let Some(backend) = common::backend("reference_outputs_match") else {
        return;
    };
    let Some(models) = common::models_dir("reference_outputs_match") else {
        return;
    };
    let mut names: Vec<String> = std::fs::read_dir(models.join("reference"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no reference models");
    for model in &names {
        let reference = models.join("reference").join(model);
        let loaded = backend
            .load(
                &common::onnx(models.join(format!("{model}.onnx"))),
                &LoadOptions {
                    threads: Some(1),
                    ..LoadOptions::default()
                },
            )
            .unwrap_or_else(|e| panic!("{model}: {e}"));
        let sig = loaded.signature();
        let inputs: Vec<(String, Tensor)> =
            read_prefixed(&reference, "input.").into_iter().collect();
        let arranged = sig
            .arrange_inputs(inputs)
            .unwrap_or_else(|e| panic!("{model}: {e}"));
        let mut session = loaded.session().unwrap();
        let outputs = session
            .run(arranged)
            .unwrap_or_else(|e| panic!("{model}: {e}"));
        let expected = read_prefixed(&reference, "output.");
        assert_eq!(outputs.len(), sig.outputs.len());
        assert_eq!(expected.len(), outputs.len(), "{model}: output count");
        for (spec, got) in sig.outputs.iter().zip(&outputs) {
            let want = &expected[&spec.name];
            let max_rel = compare(model, &spec.name, got, want);
            eprintln!(
                "{model}/{}: {} {:?} max relative error {max_rel:.3e}",
                spec.name,
                got.dtype(),
                got.shape()
            );
        }
    }
}

#[test]
fn fixture_signatures_keep_symbolic_batch() {
    let Some(backend) = common::backend("fixture_signatures_keep_symbolic_batch") else {
        return;
    };
    let Some(models) = common::models_dir("fixture_signatures_keep_symbolic_batch") else {
        return;
    };
    let m = backend
        .load(
            &common::onnx(models.join("minilm_l6.onnx")),
            &LoadOptions::default(),
        )
        .unwrap();
    let sig = m.signature();
    let show = |specs: &[pomme_core::TensorSpec]| {
        specs
            .iter()
            .map(|s| format!("{} {} {}", s.name, s.dtype, s.shape))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        show(&sig.inputs),
        [
            "input_ids INT64 [batch,seq]",
            "attention_mask INT64 [batch,seq]"
        ]
    );
    assert_eq!(
        show(&sig.outputs),
        [
            "last_hidden_state FP32 [batch,seq,384]",
            "sentence_embedding FP32 [batch,384]"
        ]
    );
    assert!(sig.is_batchable());
    assert_eq!(m.backend(), "ort");
    assert_eq!(m.device(), pomme_core::DeviceKind::Cpu);
    assert!(m.memory().weight_bytes > 80_000_000);

    let info = backend
        .inspect(&common::onnx(models.join("digits_mlp.onnx")))
        .unwrap();
    assert_eq!(info.signature.outputs.len(), 2);
    assert_eq!(info.metadata.get("opset").map(String::as_str), Some("17"));
    assert!(
        info.metadata.contains_key("onnxruntime"),
        "{:?}",
        info.metadata
    );
    eprintln!("digits_mlp metadata: {:?}", info.metadata);
}
