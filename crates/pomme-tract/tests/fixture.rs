//! Tests on the tiny in-repo fixture `models/add_one.onnx` (y = x + 1, x: [batch,4]);
//! they always run, with no shared model directory needed.

mod common;

use common::*;
use pomme_core::{
    Backend, DType, DeviceKind, Dim, Error, LoadOptions, ModelArtifact, ModelFormat, Precision,
    Shape, Tensor,
};
use pomme_tract::TractBackend;
use pomme_tract::tract_onnx::prelude::{Framework, InferenceModelExt};
use std::sync::Arc;

fn add_one() -> std::path::PathBuf {
    repo_models().join("add_one.onnx")
}

fn batch4() -> Shape {
    Shape(vec![Dim::Symbolic("batch".into()), Dim::Fixed(4)])
}

#[test]
fn reference_output_matches() {
    let model = load(add_one());
    let diff = check_reference(
        model.as_ref(),
        &repo_models().join("reference/add_one"),
        "add_one",
    );
    assert!(diff.max_abs < 1e-6, "{diff:?}");
}

#[test]
fn signature_keeps_batch_symbolic() {
    let model = load(add_one());
    let sig = model.signature();
    assert_eq!(sig.inputs.len(), 1);
    assert_eq!(sig.inputs[0].name, "x");
    assert_eq!(sig.inputs[0].dtype, DType::F32);
    assert_eq!(sig.inputs[0].shape, batch4());
    assert_eq!(sig.outputs[0].name, "y");
    assert_eq!(sig.outputs[0].shape, batch4());
    assert!(sig.is_batchable());
    assert_eq!(model.backend(), "tract");
    assert_eq!(model.device(), DeviceKind::Cpu);
    assert_eq!(model.precision(), Precision::F32);
    let mem = model.memory();
    assert_eq!(mem.weight_bytes, 4);
    // x and y, one row of 4 floats each.
    assert_eq!(mem.activation_bytes_per_item, 32);
}

#[test]
fn any_batch_size_from_one_plan_and_many_threads() {
    let model = load(add_one());
    std::thread::scope(|s| {
        for t in 0..3 {
            let model = Arc::clone(&model);
            s.spawn(move || {
                let mut session = model.session().unwrap();
                for batch in [1usize, 5, 2, 64] {
                    let data: Vec<f32> = (0..batch * 4).map(|i| (i + t) as f32).collect();
                    let x = Tensor::from_vec(vec![batch, 4], data.clone()).unwrap();
                    let y = session.run(vec![x]).unwrap();
                    assert_eq!(y[0].shape(), &[batch, 4]);
                    let want: Vec<f32> = data.iter().map(|v| v + 1.0).collect();
                    assert_eq!(y[0].to_vec::<f32>().unwrap(), want);
                }
            });
        }
    });
}

#[test]
fn threads_option_is_honoured() {
    for threads in [Some(1), Some(2), None] {
        let options = LoadOptions {
            threads,
            ..Default::default()
        };
        let model = TractBackend::new()
            .load(&onnx(add_one()), &options)
            .unwrap();
        let x = Tensor::from_vec(vec![1, 4], vec![0f32, 1., 2., 3.]).unwrap();
        let y = model.session().unwrap().run(vec![x]).unwrap();
        assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![1., 2., 3., 4.]);
    }
}

#[test]
fn wrong_input_count_is_an_error_not_a_panic() {
    let model = load(add_one());
    let e = model.session().unwrap().run(vec![]).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
}

#[test]
fn inspect_reports_weights_ops_and_metadata() {
    let info = TractBackend::new().inspect(&onnx(add_one())).unwrap();
    assert_eq!(info.signature.inputs[0].shape, batch4());
    assert_eq!(info.parameters, 1);
    assert_eq!(info.weight_bytes, 4);
    assert_eq!(info.activation_bytes_estimate, 32);
    assert_eq!(info.op_histogram.get("Add"), Some(&1));
    assert_eq!(info.op_histogram.len(), 1);
    assert_eq!(
        info.metadata.get("producer").map(String::as_str),
        Some("make_models.py")
    );
    assert_eq!(info.metadata.get("opset").map(String::as_str), Some("17"));
    assert_eq!(
        info.metadata.get("ir_version").map(String::as_str),
        Some("8")
    );
}

#[test]
fn f16_precision_runs() {
    let options = LoadOptions {
        precision: Precision::F16,
        ..Default::default()
    };
    let model = TractBackend::new()
        .load(&onnx(add_one()), &options)
        .unwrap();
    assert_eq!(model.precision(), Precision::F16);
    let spec = &model.signature().inputs[0];
    let x = match spec.dtype {
        DType::F16 => Tensor::from_vec(
            vec![1, 4],
            [0f32, 1., 2., 3.].map(half::f16::from_f32).to_vec(),
        ),
        _ => Tensor::from_vec(vec![1, 4], vec![0f32, 1., 2., 3.]),
    }
    .unwrap();
    let y = model.session().unwrap().run(vec![x]).unwrap();
    assert_eq!(y[0].to_f64_vec().unwrap(), vec![1., 2., 3., 4.]);
    let int8 = LoadOptions {
        precision: Precision::Int8,
        ..Default::default()
    };
    let Err(e) = TractBackend::new().load(&onnx(add_one()), &int8) else {
        panic!("int8 accepted");
    };
    assert!(matches!(e, Error::UnsupportedPrecision(_)), "{e}");
}

#[test]
fn devices_and_unavailable_gpus() {
    let backend = TractBackend::new();
    let devices = backend.devices();
    assert_eq!(devices[0].kind, DeviceKind::Cpu);
    assert!(devices[0].availability.is_available());
    for d in &devices {
        eprintln!("{:?} {}: {:?}", d.kind, d.name, d.availability);
    }
    // Metal never exists off Apple targets; CUDA needs the feature and a driver.
    for kind in [DeviceKind::Metal, DeviceKind::Cuda, DeviceKind::Ane] {
        let listed = devices.iter().find(|d| d.kind == kind);
        if listed.is_some_and(|d| d.availability.is_available()) {
            continue;
        }
        let options = LoadOptions {
            device: kind,
            ..Default::default()
        };
        match backend.load(&onnx(add_one()), &options) {
            Err(Error::Unavailable(msg)) => {
                assert!(!msg.contains('\n'));
                eprintln!("{kind}: {msg}");
            }
            Err(e) => panic!("{kind}: expected Unavailable, got {e}"),
            Ok(_) => panic!("{kind}: loaded on an unavailable device"),
        }
    }
}

#[test]
fn nnef_round_trip_as_archive_and_directory() {
    // Export the ONNX fixture to NNEF with tract itself, then load that back.
    let typed = pomme_tract::tract_onnx::onnx()
        .model_for_path(add_one())
        .and_then(|m| m.into_typed())
        .and_then(|m| m.into_decluttered())
        .unwrap();
    let tmp = std::env::temp_dir().join(format!("pomme-tract-nnef-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    // tract writes a plain tar; the loader also takes gzipped ones (.nnef.tgz).
    let tar = tmp.join("add_one.nnef.tar");
    let nnef = pomme_tract::tract_nnef::nnef();
    nnef.write_to_tar(&typed, std::fs::File::create(&tar).unwrap())
        .unwrap();
    let dir = tmp.join("add_one_nnef");
    nnef.write_to_dir(&typed, &dir).unwrap();
    let backend = TractBackend::new();
    for path in [tar, dir] {
        let artifact = TractBackend::artifact_for_path(&path).unwrap();
        assert_eq!(artifact.format, ModelFormat::Nnef);
        let model = backend.load(&artifact, &Default::default()).unwrap();
        let sig = model.signature();
        assert_eq!(sig.inputs[0].dtype, DType::F32);
        assert_eq!(sig.inputs[0].shape, batch4(), "{}", path.display());
        let x = Tensor::from_vec(vec![2, 4], vec![0f32; 8]).unwrap();
        let y = model.session().unwrap().run(vec![x]).unwrap();
        assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![1f32; 8]);
        let info = backend.inspect(&artifact).unwrap();
        assert_eq!(info.parameters, 1);
        assert_eq!(info.weight_bytes, 4);
        assert_eq!(
            info.metadata.get("format").map(String::as_str),
            Some("nnef")
        );
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn artifact_for_path_detects_formats() {
    assert_eq!(
        TractBackend::artifact_for_path(add_one()).unwrap(),
        ModelArtifact {
            path: add_one(),
            format: ModelFormat::Onnx
        }
    );
    let e = TractBackend::artifact_for_path(repo_models().join("reference/add_one/input.x.npy"))
        .unwrap_err();
    assert!(matches!(e, Error::InvalidModelFormat(_)));
    assert!(e.to_string().contains("unknown model format"), "{e}");
}
