//! Plans specialized per input shape: one loaded model serves several batch
//! sizes and sequence lengths, each batched output row equal to the same row
//! run alone at batch 1. `add_one` always runs; MiniLM needs the shared
//! model collection (skipped, visibly, without it).

mod common;

use common::*;
use pomme_core::{Dim, Error, LoadOptions, Shape, Tensor};
use pomme_tract::TractBackend;

fn options(pairs: &[(&str, &str)]) -> LoadOptions {
    let mut o = LoadOptions::default();
    for (k, v) in pairs {
        o.extra.insert(k.to_string(), v.to_string());
    }
    o
}

#[test]
fn many_batch_sizes_through_a_two_plan_cache() {
    let model = TractBackend::new()
        .load_tract(
            &onnx(repo_models().join("add_one.onnx")),
            &options(&[("plan_cache", "2")]),
        )
        .unwrap();
    // The warm-up plan (batch 1) is built at load.
    assert_eq!(model.cached_plans(), 1);
    let mut session = model.tract_session().unwrap();
    for batch in [1usize, 4, 2, 4, 9, 1, 3] {
        let data: Vec<f32> = (0..batch * 4).map(|i| i as f32).collect();
        let x = Tensor::from_vec(vec![batch, 4], data.clone()).unwrap();
        let y = pomme_core::Session::run(&mut session, vec![x]).unwrap();
        let want: Vec<f32> = data.iter().map(|v| v + 1.0).collect();
        assert_eq!(y[0].to_vec::<f32>().unwrap(), want, "batch {batch}");
        assert!(model.cached_plans() <= 2);
    }
}

#[test]
fn bad_cache_and_warmup_options_are_refused() {
    for (k, v) in [("plan_cache", "0"), ("warmup.batch", "x")] {
        let e = TractBackend::new()
            .load_tract(
                &onnx(repo_models().join("add_one.onnx")),
                &options(&[(k, v)]),
            )
            .unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        assert!(e.to_string().contains(k), "{e}");
    }
}

/// Columns `0..seq` of an int64 `[rows, n]` tensor.
fn first_columns(t: &Tensor, seq: usize) -> Tensor {
    let (rows, n) = (t.shape()[0], t.shape()[1]);
    let v = t.to_vec::<i64>().unwrap();
    let out: Vec<i64> = (0..rows)
        .flat_map(|r| v[r * n..r * n + seq].to_vec())
        .collect();
    Tensor::from_vec(vec![rows, seq], out).unwrap()
}

#[test]
fn minilm_batches_and_sequence_lengths_match_single_rows() {
    let Some(dir) = shared_models("minilm_batches_and_sequence_lengths_match_single_rows") else {
        return;
    };
    let path = dir.join("minilm_l6.onnx");
    let reference = dir.join("reference/minilm_l6");
    if !path.is_file() || !reference.is_dir() {
        eprintln!("SKIP: {} or its reference is absent", path.display());
        return;
    }
    let model = TractBackend::new()
        .load_tract(&onnx(&path), &options(&[("warmup.seq", "17")]))
        .unwrap();
    let sig = pomme_core::LoadedModel::signature(model.as_ref());
    let batch_seq = Shape(vec![
        Dim::Symbolic("batch".into()),
        Dim::Symbolic("seq".into()),
    ]);
    assert_eq!(sig.inputs[0].shape, batch_seq, "signature stays symbolic");
    let ids = read_npy(&reference.join("input.input_ids.npy"));
    let mask = read_npy(&reference.join("input.attention_mask.npy"));
    let mut session = model.tract_session().unwrap();
    let mut run = |ids: Tensor, mask: Tensor| {
        pomme_core::Session::run(&mut session, vec![ids, mask]).unwrap()
    };
    // The reference batch is 3 rows of 17 tokens; also try 9 and 4 tokens.
    for seq in [17usize, 9, 4] {
        let (ids, mask) = (first_columns(&ids, seq), first_columns(&mask, seq));
        let batched = run(ids.clone(), mask.clone());
        assert_eq!(batched[0].shape(), &[3, seq, 384]);
        assert_eq!(batched[1].shape(), &[3, 384]);
        if seq == 17 {
            for (ix, name) in ["last_hidden_state", "sentence_embedding"]
                .iter()
                .enumerate()
            {
                let want = read_npy(&reference.join(format!("output.{name}.npy")));
                compare(
                    &format!("seq 17 {name} vs onnxruntime"),
                    &batched[ix],
                    &want,
                );
            }
        }
        let mut worst = 0f64;
        for row in 0..3 {
            let one = |t: &Tensor| t.slice_rows(row, row + 1).unwrap();
            let single = run(one(&ids), one(&mask));
            for (ix, out) in single.iter().enumerate() {
                let d = compare(
                    &format!("seq {seq} row {row} output {ix}"),
                    out,
                    &one(&batched[ix]),
                );
                worst = worst.max(d.max_abs);
            }
        }
        eprintln!("minilm seq {seq}: batch 3 vs batch 1 rows, max abs diff {worst:.3e}");
    }
    // Warm-up (1,17), then (3,s) and (1,s) for s in 17, 9, 4: six keys, one reused.
    assert_eq!(model.cached_plans(), 6);
    // Inputs that disagree on `batch` are refused with one clear line.
    let e = pomme_core::Session::run(
        &mut model.tract_session().unwrap(),
        vec![
            first_columns(&ids, 4),
            first_columns(&mask, 4).slice_rows(0, 2).unwrap(),
        ],
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
}

#[test]
fn split_batch_runs_rows_through_the_batch_1_plan() {
    let model = TractBackend::new()
        .load_tract(
            &onnx(repo_models().join("add_one.onnx")),
            &options(&[("split_batch", "true")]),
        )
        .unwrap();
    let mut session = model.tract_session().unwrap();
    let data: Vec<f32> = (0..5 * 4).map(|i| i as f32).collect();
    let x = Tensor::from_vec(vec![5, 4], data.clone()).unwrap();
    let y = pomme_core::Session::run(&mut session, vec![x]).unwrap();
    assert_eq!(y[0].shape(), &[5, 4]);
    let want: Vec<f32> = data.iter().map(|v| v + 1.0).collect();
    assert_eq!(y[0].to_vec::<f32>().unwrap(), want);
    // Only the batch-1 plan was ever needed.
    assert_eq!(model.cached_plans(), 1);
    let e = TractBackend::new()
        .load_tract(
            &onnx(repo_models().join("add_one.onnx")),
            &options(&[("split_batch", "maybe")]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("split_batch"), "{e}");
}

#[test]
fn mobilenet_split_batch_matches_the_reference() {
    let Some(dir) = shared_models("mobilenet_split_batch_matches_the_reference") else {
        return;
    };
    let path = dir.join("mobilenet_v2.onnx");
    let reference = dir.join("reference/mobilenet_v2");
    if !path.is_file() || !reference.is_dir() {
        eprintln!("SKIP: {} or its reference is absent", path.display());
        return;
    }
    let model = TractBackend::new()
        .load_tract(&onnx(&path), &options(&[("split_batch", "true")]))
        .unwrap();
    let x = read_npy(&reference.join("input.input.npy"));
    let want = read_npy(&reference.join("output.output.npy"));
    let y = pomme_core::Session::run(&mut model.tract_session().unwrap(), vec![x]).unwrap();
    let d = compare("mobilenet split b2", &y[0], &want);
    eprintln!("mobilenet split_batch b2: max abs err {:.3e}", d.max_abs);
    assert_eq!(model.cached_plans(), 1);
}
