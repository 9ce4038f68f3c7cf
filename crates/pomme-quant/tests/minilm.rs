//! MiniLM-L6 INT8 (weight-only, per-channel): sentence_embedding cosine
//! similarity to float >= 0.99 on the 3 reference sentences, on every engine.

mod common;

use common::{backends, models, refs};
use pomme_quant::{Dataset, QuantizeOptions, Scheme, ValidateOptions};

#[test]
fn minilm_int8_keeps_sentence_embeddings() {
    let Some(dir) = models("minilm_int8_keeps_sentence_embeddings") else {
        return;
    };
    let float = dir.join("minilm_l6.onnx");
    let refdir = dir.join("reference/minilm_l6");
    if !float.is_file() || !refdir.is_dir() {
        eprintln!("SKIP minilm_int8_keeps_sentence_embeddings: minilm_l6 not found");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("minilm_l6.int8.onnx");
    let b = backends();
    let outcome = pomme_quant::quantize_file(
        &float,
        &out,
        &QuantizeOptions::new(Scheme::Int8 { per_channel: true }),
        &refs(&b),
        &pomme_quant::silent,
    )
    .unwrap();
    eprintln!("{}", outcome.summary);
    let data = Dataset::from_arrays(vec![
        (
            "input_ids".into(),
            Dataset::read_npy_file(&refdir.join("input.input_ids.npy")).unwrap(),
        ),
        (
            "attention_mask".into(),
            Dataset::read_npy_file(&refdir.join("input.attention_mask.npy")).unwrap(),
        ),
    ]);
    let opts = ValidateOptions {
        output: Some("sentence_embedding".into()),
        latency_repeats: 3,
        ..Default::default()
    };
    let report =
        pomme_quant::validate(&float, &out, &data, &opts, &refs(&b), &pomme_quant::silent).unwrap();
    eprintln!("{report}");
    assert!(report.size_ratio < 0.3, "size ratio {}", report.size_ratio);
    let mut checked = 0;
    for be in &report.backends {
        // An engine that cannot run the *float* model says nothing about the
        // quantizer: report it and go on (the quantized model must run
        // wherever the float one does).
        if let Some(e) = &be.error
            && be.outputs.is_empty()
            && e.contains("float model")
        {
            eprintln!("SKIP {}: cannot run float minilm_l6: {e}", be.backend);
            continue;
        }
        assert!(be.error.is_none(), "{}: {:?}", be.backend, be.error);
        checked += 1;
        let m = be
            .outputs
            .iter()
            .find(|o| o.name == "sentence_embedding")
            .expect("sentence_embedding compared");
        assert!(
            m.cosine_min >= 0.99,
            "{}: cosine min {}",
            be.backend,
            m.cosine_min
        );
    }
    assert!(checked >= 1, "no engine ran minilm_l6");
}
