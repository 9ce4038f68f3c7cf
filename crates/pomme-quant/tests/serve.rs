//! Served transparently: `prepare_served` quantizes into a cache, validates,
//! admits within budget, refuses over it with the figures, and a second call
//! reuses the cache (file and report) without quantizing again.

mod common;

use common::{backends, models, ort_only, refs, write_npz_i64};
use pomme_core::Precision;
use pomme_quant::{ServeQuantization, prepare_served};

#[test]
fn int8_is_admitted_and_cached_with_its_report() {
    let Some(dir) = models("int8_is_admitted_and_cached_with_its_report") else {
        return;
    };
    let b = backends();
    let cache = tempfile::tempdir().unwrap();
    let mut q = ServeQuantization::new(Precision::Int8, cache.path());
    q.validation = Some(dir.join("digits_test.npz"));
    q.max_accuracy_drop = 0.5;
    let model = dir.join("digits_mlp.onnx");
    let first = prepare_served(&model, &q, &refs(&b)).unwrap();
    assert!(!first.cached);
    assert!(first.path.is_file());
    assert!(first.report.size_ratio <= 0.3, "{}", first.summary());
    assert!(
        first.summary().contains("accuracy drop"),
        "{}",
        first.summary()
    );
    let mtime = std::fs::metadata(&first.path).unwrap().modified().unwrap();

    let second = prepare_served(&model, &q, &refs(&b)).unwrap();
    assert!(second.cached);
    assert_eq!(second.path, first.path);
    // The report is read back (JSON floats may differ in the last bit).
    assert_eq!(second.report.quant_bytes, first.report.quant_bytes);
    assert_eq!(second.summary(), first.summary());
    assert_eq!(
        std::fs::metadata(&second.path).unwrap().modified().unwrap(),
        mtime
    );

    // Another budget is another key: no stale reuse.
    q.max_accuracy_drop = 0.4;
    let third = prepare_served(&model, &q, &refs(&b)).unwrap();
    assert_ne!(third.path, first.path);
}

#[test]
fn over_budget_is_refused_with_figures_and_nothing_cached() {
    let Some(dir) = models("over_budget_is_refused_with_figures_and_nothing_cached") else {
        return;
    };
    let b = backends();
    let cache = tempfile::tempdir().unwrap();
    // INT4 in blocks of 128 on the CNN without labels: the budget of 0 points
    // of top-1 disagreement cannot hold once any row changes class; with labels
    // a negative drop would pass, so use the no-label figure on synthetic data.
    let mut q = ServeQuantization::new(Precision::Int4, cache.path());
    q.scheme = Some(pomme_quant::Scheme::Int4 { block_size: 128 });
    q.max_accuracy_drop = 0.0;
    q.warmup_samples = 256;
    let e = prepare_served(&dir.join("digits_cnn.onnx"), &q, &refs(&b));
    match e {
        Ok(s) => {
            // Quantization that changes no decision is admitted; then the
            // figure must really be 0.
            assert!(
                s.summary().contains("disagreement 0.00%"),
                "{}",
                s.summary()
            );
        }
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains("precision int4 refused"), "{m}");
            assert!(m.contains("disagreement"), "{m}");
            assert!(!m.contains('\n'));
            let left: Vec<_> = std::fs::read_dir(cache.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "onnx"))
                .collect();
            assert!(left.is_empty(), "a refused model was cached: {left:?}");
        }
    }
}

#[test]
fn synthetic_warmup_admits_minilm_int8() {
    let Some(dir) = models("synthetic_warmup_admits_minilm_int8") else {
        return;
    };
    if !dir.join("minilm_l6.onnx").is_file() {
        eprintln!("SKIP synthetic_warmup_admits_minilm_int8: minilm_l6.onnx absent");
        return;
    }
    // ONNX Runtime only: tract runs MiniLM through per-shape plans and is
    // validated by the float/quantized comparison in tests/minilm.rs.
    let Some(b) = ort_only("synthetic_warmup_admits_minilm_int8") else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let mut q = ServeQuantization::new(Precision::Int8, cache.path());
    q.warmup_samples = 8;
    q.max_accuracy_drop = 50.0;
    let s = prepare_served(&dir.join("minilm_l6.onnx"), &q, &refs(&b)).unwrap();
    assert!(s.data.contains("synthetic"), "{}", s.data);
    assert!(s.report.size_ratio < 0.35, "{}", s.summary());
}

/// An embedding model served with `target = "speed"` and `min_cosine` is
/// gated by cosine alone: the argmax of an embedding is no class, and
/// applying the top-1 budget to it had kept most MiniLM layers float.
#[test]
fn served_embedding_model_is_gated_by_cosine_not_top1() {
    let name = "served_embedding_model_is_gated_by_cosine_not_top1";
    let Some(dir) = models(name) else {
        return;
    };
    if !dir.join("minilm_l6.onnx").is_file() || !dir.join("reference/minilm_l6").is_dir() {
        eprintln!("SKIP {name}: minilm_l6.onnx or its reference absent");
        return;
    }
    let Some(b) = ort_only(name) else {
        return;
    };
    // Real sentences (synthetic token ids make a poor cosine gate): the 3
    // reference ones and each with one word left out, 40-odd rows, enough
    // for the argmax of some embedding to move under int8.
    let refdir = dir.join("reference/minilm_l6");
    let ids = pomme_quant::Dataset::read_npy_file(&refdir.join("input.input_ids.npy")).unwrap();
    let mask =
        pomme_quant::Dataset::read_npy_file(&refdir.join("input.attention_mask.npy")).unwrap();
    let width = ids.shape()[1];
    let (ids, mask): (Vec<i64>, Vec<i64>) = (ids.to_vec().unwrap(), mask.to_vec().unwrap());
    let mut rows: Vec<Vec<i64>> = Vec::new();
    for r in 0..ids.len() / width {
        let len = mask[r * width..(r + 1) * width].iter().sum::<i64>() as usize;
        let row = &ids[r * width..r * width + len];
        rows.push(row.to_vec());
        // Leave out one token between [CLS] and [SEP].
        for k in 1..len - 1 {
            rows.push([&row[..k], &row[k + 1..]].concat());
        }
    }
    let (mut all_ids, mut all_mask) = (Vec::new(), Vec::new());
    for row in &rows {
        all_ids.extend(
            row.iter()
                .copied()
                .chain(std::iter::repeat_n(0, width - row.len())),
        );
        all_mask.extend((0..width).map(|i| i64::from(i < row.len())));
    }
    let shape = vec![rows.len() as u64, width as u64];
    let cache = tempfile::tempdir().unwrap();
    let data = cache.path().join("sentences.npz");
    write_npz_i64(
        &data,
        &[
            ("input_ids", shape.clone(), all_ids),
            ("attention_mask", shape, all_mask),
        ],
    );
    let mut q = ServeQuantization::new(Precision::Int8, cache.path().join("cache"));
    q.target = pomme_quant::Target::Speed;
    q.min_cosine = Some(0.99);
    q.validation = Some(data);
    let s = prepare_served(&dir.join("minilm_l6.onnx"), &q, &refs(&b)).unwrap();
    let summary = s.summary();
    assert!(s.by_cosine, "{summary}");
    assert!(summary.contains("gated by cosine"), "{summary}");
    assert!(!summary.contains("disagreement"), "{summary}");
    // int8-dynamic on (nearly) every layer: a quarter of the float size.
    assert!(s.report.size_ratio < 0.3, "{summary}");
    assert!(
        s.path.to_string_lossy().contains("int8-dynamic"),
        "{}",
        s.path.display()
    );
}
