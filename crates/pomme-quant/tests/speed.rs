//! The integer-kernel schemes (`--target speed`): each rewrite loads in ONNX
//! Runtime (and in tract where the format is standard ONNX), agrees with the
//! float model within the gate, and has the structure ONNX Runtime fuses.

mod common;

use common::{backends, models, ort_only, quantize_digits, refs, write_npz};
use pomme_quant::onnx::{self, pb};
use pomme_quant::{
    CalibrationMethod, Dataset, QuantizeOptions, QuantizeOutcome, Scheme, ValidateOptions,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Every engine that produced figures stays within `max_drop`; engines named
/// in `may_fail` may refuse the file (contrib ops), the others must run it.
fn check(o: &QuantizeOutcome, max_drop: f64, may_fail: &[&str]) -> usize {
    let v = o.validation.as_ref().expect("validated");
    let mut ran = 0;
    for b in &v.backends {
        if let Some(e) = &b.error {
            assert!(may_fail.contains(&b.backend.as_str()), "{}: {e}", b.backend);
            eprintln!("{} cannot run it (expected): {e}", b.backend);
            continue;
        }
        let drop = b.accuracy_drop.expect("labels y are used");
        assert!(drop <= max_drop, "{}: drop {drop:.2}", b.backend);
        ran += 1;
    }
    ran
}

fn load(p: &Path) -> pb::ModelProto {
    onnx::load_model(p).unwrap().0
}

fn ops(m: &pb::ModelProto) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for n in &m.graph.as_ref().unwrap().node {
        *c.entry(n.op_type.clone()).or_default() += 1;
    }
    c
}

fn ort_present() -> bool {
    backends().iter().any(|b| b.name() == "ort")
}

#[test]
fn dynamic_int8_on_digits() {
    let Some(dir) = models("dynamic_int8_on_digits") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for model in ["digits_mlp", "digits_cnn"] {
        let o = quantize_digits(
            &dir,
            model,
            QuantizeOptions::new(Scheme::Int8Dynamic { per_channel: true }),
            tmp.path(),
        )
        .unwrap();
        assert!(check(&o, 1.0, &[]) >= 1);
        let m = load(&o.output);
        let c = ops(&m);
        assert!(c["MatMulInteger"] >= 2, "{c:?}");
        assert!(c.contains_key("DynamicQuantizeLinear"), "{c:?}");
        assert!(
            !c.contains_key("MatMul") && !c.contains_key("Gemm"),
            "{c:?}"
        );
        if model == "digits_cnn" {
            // Conv stays float, with the reason.
            assert_eq!(c["Conv"], 2);
            assert!(
                o.summary
                    .kept_float
                    .iter()
                    .any(|k| k.op_type == "Conv" && k.reason.contains("ConvInteger"))
            );
        }
    }
}

#[test]
fn static_qdq_has_the_placement_ort_fuses() {
    let Some(dir) = models("static_qdq_has_the_placement_ort_fuses") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = QuantizeOptions::new(Scheme::Int8Static {
        per_channel: true,
        method: CalibrationMethod::MinMax,
    });
    opts.calibration = Some(dir.join("digits_test.npz"));
    let o = quantize_digits(&dir, "digits_cnn", opts, tmp.path()).unwrap();
    assert!(check(&o, 1.0, &[]) >= 1);
    let m = load(&o.output);
    let g = m.graph.as_ref().unwrap();
    let producer: HashMap<&str, &pb::NodeProto> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let consumers = |v: &str| {
        g.node
            .iter()
            .filter(|n| n.input.iter().any(|i| i == v))
            .count()
    };
    let graph_outputs: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    let inits: HashMap<&str, &pb::TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut checked = 0;
    for n in g
        .node
        .iter()
        .filter(|n| n.op_type == "Conv" || n.op_type == "Gemm")
    {
        // DQ on the activation, the weight and the int32 bias.
        for (slot, i) in n.input.iter().enumerate() {
            let p = producer[i.as_str()];
            assert_eq!(p.op_type, "DequantizeLinear", "{} input {slot}", n.name);
            if slot == 2 {
                assert_eq!(inits[p.input[0].as_str()].data_type, 6, "int32 bias");
            }
        }
        // Q on the output (a following Relu is folded into it), except the
        // graph output, which stays float.
        let y = n.output[0].as_str();
        if !graph_outputs.contains(&y) {
            let q: Vec<_> = g
                .node
                .iter()
                .filter(|c| c.input.first().map(String::as_str) == Some(y))
                .collect();
            assert_eq!(q.len(), 1);
            assert_eq!(q[0].op_type, "QuantizeLinear", "{}", n.name);
            assert_eq!(consumers(y), 1);
        }
        checked += 1;
    }
    assert_eq!(checked, 4);
    assert!(
        !ops(&m).contains_key("Relu"),
        "Relus folded into the output Q"
    );
}

#[test]
fn int4_nbits_on_digits_mlp() {
    let Some(dir) = models("int4_nbits_on_digits_mlp") else {
        return;
    };
    if !ort_present() {
        eprintln!("SKIP int4_nbits_on_digits_mlp: ONNX Runtime absent");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = QuantizeOptions::new(Scheme::Int4NBits { block_size: 32 });
    opts.min_elements = 16;
    let o = quantize_digits(&dir, "digits_mlp", opts, tmp.path()).unwrap();
    // Both engines run it (tract 0.23 implements MatMulNBits too).
    assert_eq!(check(&o, 2.0, &[]), 2);
    let c = ops(&load(&o.output));
    assert_eq!(c["MatMulNBits"], 3, "{c:?}");
}

/// MiniLM with its 3 reference sentences as an `.npz` in `tmp`, and ONNX
/// Runtime alone (a speed file is gated on the engine it is made for, as
/// `--target speed` does); `None` after a SKIP line when any is missing.
struct MiniLm {
    float: PathBuf,
    data: PathBuf,
    tmp: tempfile::TempDir,
    ort: Vec<Box<dyn pomme_core::Backend>>,
}

fn minilm(test: &str) -> Option<MiniLm> {
    let dir = models(test)?;
    let float = dir.join("minilm_l6.onnx");
    let refdir = dir.join("reference/minilm_l6");
    if !float.is_file() || !refdir.is_dir() {
        eprintln!("SKIP {test}: minilm_l6 not found");
        return None;
    }
    let ort = ort_only(test)?;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("minilm.npz");
    write_npz(
        &data,
        &[
            ("input_ids", &refdir.join("input.input_ids.npy")),
            ("attention_mask", &refdir.join("input.attention_mask.npy")),
        ],
    );
    Some(MiniLm {
        float,
        data,
        tmp,
        ort,
    })
}

#[test]
fn minilm_dynamic_int8_meets_the_cosine_gate() {
    let Some(MiniLm {
        float,
        data,
        tmp,
        ort: b,
    }) = minilm("minilm_dynamic_int8_meets_the_cosine_gate")
    else {
        return;
    };
    let out = tmp.path().join("minilm.dyn.onnx");
    let mut opts = QuantizeOptions::new(Scheme::Int8Dynamic { per_channel: true });
    opts.validate = Some(data.clone());
    opts.min_cosine = Some(0.99);
    opts.auto_exclude = true;
    let o =
        pomme_quant::quantize_file(&float, &out, &opts, &refs(&b), &pomme_quant::silent).unwrap();
    eprintln!("{}\n{}", o.summary, o.validation.as_ref().unwrap());
    let v = o.validation.as_ref().unwrap();
    let (worst, _) = v.worst_cosine().expect("some engine compared");
    assert!(worst >= 0.99, "{worst}");
    assert!(v.size_ratio < 0.3, "{}", v.size_ratio);
    // The same data through validate(): the file is what was admitted.
    let d = Dataset::from_npz(&data).unwrap();
    let opts = ValidateOptions {
        output: Some("sentence_embedding".into()),
        latency_repeats: 1,
        ..Default::default()
    };
    let r =
        pomme_quant::validate(&float, &out, &d, &opts, &refs(&b), &pomme_quant::silent).unwrap();
    assert!(r.check_cosine(0.99).is_ok(), "{r}");
}

/// SmoothQuant moves MiniLM's outlier activation channels into the weights:
/// with every matmul int8 (no layer kept float) the smoothed file is closer
/// to float than the plain one, and within the 0.99 cosine gate.
#[test]
fn minilm_smoothquant_keeps_every_matmul_int8_within_the_gate() {
    let Some(MiniLm {
        float,
        data,
        tmp,
        ort: b,
    }) = minilm("minilm_smoothquant_keeps_every_matmul_int8_within_the_gate")
    else {
        return;
    };
    let worst = |smooth: Option<f32>| {
        let out = tmp.path().join(format!("minilm.{smooth:?}.onnx"));
        let mut opts = QuantizeOptions::new(Scheme::Int8Dynamic { per_channel: true });
        opts.validate = Some(data.clone());
        opts.smooth = smooth;
        let o = pomme_quant::quantize_file(&float, &out, &opts, &refs(&b), &pomme_quant::silent)
            .unwrap();
        eprintln!("{}\n{}", o.summary, o.validation.as_ref().unwrap());
        assert!(o.summary.auto_excluded.is_empty());
        let smoothed = o.summary.notes.iter().any(|n| n.starts_with("SmoothQuant"));
        assert_eq!(smoothed, smooth.is_some(), "{:?}", o.summary.notes);
        let muls = ops(&load(&out)).get("Mul").copied().unwrap_or(0);
        let (w, _) = o.validation.as_ref().unwrap().worst_cosine().unwrap();
        (w, muls)
    };
    let (plain, plain_muls) = worst(None);
    let (smoothed, smoothed_muls) = worst(Some(pomme_quant::smooth::DEFAULT_ALPHA));
    eprintln!("worst cosine: plain {plain:.5}, smoothed {smoothed:.5}");
    // One Mul per smoothed activation, of the 24 matmul inputs (4 per encoder
    // layer) only those with outlier channels (the FFN's).
    let added = smoothed_muls - plain_muls;
    assert!((1..24).contains(&added), "{added} Muls added");
    assert!(smoothed >= 0.99, "{smoothed}");
    assert!(smoothed > plain, "smoothed {smoothed} vs plain {plain}");
}
