//! Reference conformance on the shared model collection: every `<model>.onnx`
//! with a `reference/<model>/` directory is loaded, fed its reference inputs
//! and compared with onnxruntime's outputs (float32: rtol 1e-3, atol 1e-4;
//! integers exactly). Skipped, visibly, when the collection is absent.

mod common;

use common::*;
use pomme_core::{Backend, Tensor};
use pomme_tract::TractBackend;

#[test]
fn every_shared_model_matches_its_reference() {
    let Some(dir) = shared_models("every_shared_model_matches_its_reference") else {
        return;
    };
    let mut models: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .filter(|p| dir.join("reference").join(p.file_stem().unwrap()).is_dir())
        .collect();
    models.sort();
    assert!(
        !models.is_empty(),
        "no models with references in {}",
        dir.display()
    );
    for path in models {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let started = std::time::Instant::now();
        // Every model must load, MiniLM included: its symbolic `seq` is
        // bound per run by the specialized plans.
        let model = load(&path);
        let diff = check_reference(model.as_ref(), &dir.join("reference").join(&name), &name);
        let info = TractBackend::new().inspect(&onnx(&path)).unwrap();
        eprintln!(
            "{name}: OK in {:.2?} (max rel err {:.3e}); {} parameters, {} weight bytes, activations ~{} bytes/item",
            started.elapsed(),
            diff.max_rel,
            info.parameters,
            info.weight_bytes,
            model.memory().activation_bytes_per_item
        );
        assert_eq!(
            info.signature,
            *model.signature(),
            "{name}: inspect and load agree"
        );
    }
}

#[test]
fn mobilenet_runs_batch_1_and_3_from_one_loaded_model() {
    let Some(dir) = shared_models("mobilenet_runs_batch_1_and_3_from_one_loaded_model") else {
        return;
    };
    let path = dir.join("mobilenet_v2.onnx");
    if !path.is_file() {
        eprintln!("SKIP: {} is absent; set POMME_TEST_MODELS", path.display());
        return;
    }
    let reference = dir.join("reference/mobilenet_v2");
    let model = load(&path);
    let mut session = model.session().unwrap();
    // The reference holds 2 rows; batch 1 is row 0, batch 3 is rows 0, 1, 0.
    let input = read_npy(&reference.join("input.input.npy"));
    let output = read_npy(&reference.join("output.output.npy"));
    let row = |t: &Tensor, i: usize| t.slice_rows(i, i + 1).unwrap();
    let y1 = session.run(vec![row(&input, 0)]).unwrap();
    assert_eq!(y1[0].shape(), &[1, 1000]);
    compare("mobilenet b1", &y1[0], &row(&output, 0));
    let x3 = Tensor::concat_rows(&[&row(&input, 0), &row(&input, 1), &row(&input, 0)]).unwrap();
    let y3 = session.run(vec![x3]).unwrap();
    assert_eq!(y3[0].shape(), &[3, 1000]);
    let want3 =
        Tensor::concat_rows(&[&row(&output, 0), &row(&output, 1), &row(&output, 0)]).unwrap();
    let d = compare("mobilenet b3", &y3[0], &want3);
    eprintln!("mobilenet b3: max rel err {:.3e}", d.max_rel);
}
