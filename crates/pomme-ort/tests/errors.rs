//! Availability and error reporting: bad library paths, bad model files, bad
//! options. Every error is one line and of the documented kind.

mod common;

use pomme_core::{
    Availability, Backend, DeviceKind, Error, LoadOptions, ModelArtifact, ModelFormat, Precision,
};
use pomme_ort::OrtBackend;

fn one_line(e: &Error) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "multi-line error: {s:?}");
    s
}

#[test]
fn nonexistent_dylib_is_unavailable_with_reason() {
    let b = OrtBackend::with_dylib("/nonexistent/libonnxruntime.so");
    assert_eq!(b.dylib_path(), None);
    let reason = "onnxruntime library not found: /nonexistent/libonnxruntime.so (from OrtBackend::with_dylib) does not exist";
    assert_eq!(b.availability(), Availability::Unavailable(reason.into()));
    let e = b
        .load(
            &common::onnx("/nonexistent/model.onnx.but.file.checked.first"),
            &LoadOptions::default(),
        )
        .err()
        .unwrap();
    // The model file is checked before the library.
    assert!(matches!(e, Error::InvalidModelFormat(_)), "{e}");
    let dir = common::scratch("nolib");
    let model = dir.join("m.onnx");
    std::fs::write(&model, common::identity_model(1, &[common::D::Fixed(1)])).unwrap();
    let e = b
        .load(&common::onnx(&model), &LoadOptions::default())
        .err()
        .unwrap();
    assert_eq!(e, Error::Unavailable(reason.into()));
    assert!(
        b.devices()
            .iter()
            .all(|d| d.availability == Availability::Unavailable(reason.into()))
    );
    // The same through a load option.
    let Some(good) = common::backend("nonexistent_dylib_is_unavailable_with_reason") else {
        return;
    };
    let mut o = LoadOptions::default();
    o.extra
        .insert("dylib".into(), "/nope/libonnxruntime.so".into());
    let e = good.load(&common::onnx(&model), &o).err().unwrap();
    assert_eq!(
        one_line(&e),
        "unavailable: onnxruntime library not found: /nope/libonnxruntime.so (from LoadOptions.extra[\"dylib\"]) does not exist"
    );
}

#[test]
fn not_a_library_is_unavailable_and_does_not_poison() {
    let dir = common::scratch("notlib");
    let fake = dir.join("libonnxruntime.so");
    std::fs::write(&fake, b"not a shared object").unwrap();
    let Some(good) = common::backend("not_a_library_is_unavailable_and_does_not_poison") else {
        return;
    };
    // `good` loaded the real library first, so the fake one is refused by path.
    let bad = OrtBackend::with_dylib(&fake);
    match bad.availability() {
        Availability::Unavailable(r) => {
            assert!(r.contains(&fake.display().to_string()), "{r}");
            eprintln!("reason: {r}");
        }
        Availability::Available => panic!("a fake library is available"),
    }
    assert!(good.availability().is_available());
}

#[test]
fn bad_model_files_are_one_line_format_errors() {
    let Some(b) = common::backend("bad_model_files_are_one_line_format_errors") else {
        return;
    };
    let dir = common::scratch("badfiles");
    let empty = dir.join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    let corrupt = dir.join("corrupt.onnx");
    std::fs::write(
        &corrupt,
        b"\x08\x07this is not a protobuf model\xff\xff\xff",
    )
    .unwrap();
    let truncated = dir.join("truncated.onnx");
    let full = common::identity_model(1, &[common::D::Sym("batch"), common::D::Fixed(4)]);
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();

    let cases = [
        (dir.join("missing.onnx"), "no such file"),
        (dir.clone(), "is a directory, not an ONNX file"),
        (empty, "file is empty (0 bytes)"),
        (corrupt, "not a valid ONNX model"),
        (truncated, "not a valid ONNX model"),
    ];
    for (path, want) in cases {
        for e in [
            b.load(&common::onnx(&path), &LoadOptions::default())
                .err()
                .unwrap(),
            b.inspect(&common::onnx(&path)).unwrap_err(),
        ] {
            let msg = one_line(&e);
            assert!(matches!(e, Error::InvalidModelFormat(_)), "{msg}");
            assert!(msg.contains(want), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            eprintln!("{msg}");
        }
    }
    let nnef = ModelArtifact {
        path: dir.join("m.nnef.tgz"),
        format: ModelFormat::Nnef,
    };
    let e = b.inspect(&nnef).unwrap_err();
    assert!(one_line(&e).contains("reads ONNX, not nnef"), "{e}");
}

#[test]
fn bad_options_are_reported() {
    let Some(b) = common::backend("bad_options_are_reported") else {
        return;
    };
    let dir = common::scratch("opts");
    let model = dir.join("id.onnx");
    std::fs::write(&model, common::identity_model(1, &[common::D::Fixed(2)])).unwrap();
    let m = common::onnx(&model);

    let o = LoadOptions {
        precision: Precision::Int8,
        ..LoadOptions::default()
    };
    assert!(matches!(
        b.load(&m, &o).err().unwrap(),
        Error::UnsupportedPrecision(_)
    ));

    let mut o = LoadOptions::default();
    o.extra.insert("sessions".into(), "lots".into());
    assert!(matches!(
        b.load(&m, &o).err().unwrap(),
        Error::InvalidInput(_)
    ));

    // The pip wheel is CPU-only: CUDA must be refused, not silently run on the CPU.
    let o = LoadOptions {
        device: DeviceKind::Cuda,
        ..LoadOptions::default()
    };
    let has_cuda = b
        .devices()
        .iter()
        .any(|d| d.kind == DeviceKind::Cuda && d.availability.is_available());
    match b.load(&m, &o) {
        Ok(loaded) => {
            assert!(has_cuda);
            assert_eq!(loaded.device(), DeviceKind::Cuda);
        }
        Err(e) => {
            assert!(matches!(e, Error::Unavailable(_)), "{e}");
            eprintln!("cuda: {}", one_line(&e));
        }
    }

    if cfg!(not(target_vendor = "apple")) {
        for device in [DeviceKind::Ane, DeviceKind::Metal] {
            let o = LoadOptions {
                device,
                ..LoadOptions::default()
            };
            let e = b.load(&m, &o).err().unwrap();
            assert!(matches!(e, Error::Unavailable(_)), "{e}");
        }
        let o = LoadOptions {
            device: DeviceKind::Auto,
            ..LoadOptions::default()
        };
        assert_eq!(b.load(&m, &o).unwrap().device(), DeviceKind::Cpu);
    }
}

#[test]
fn run_errors_are_reported() {
    let Some(b) = common::backend("run_errors_are_reported") else {
        return;
    };
    let dir = common::scratch("runerr");
    let model = dir.join("id.onnx");
    std::fs::write(
        &model,
        common::identity_model(1, &[common::D::Sym("batch"), common::D::Fixed(3)]),
    )
    .unwrap();
    let m = b
        .load(&common::onnx(&model), &LoadOptions::default())
        .unwrap();
    let mut s = m.session().unwrap();
    let e = s.run(vec![]).unwrap_err();
    assert_eq!(
        one_line(&e),
        "invalid input: 0 inputs given, the model takes 1"
    );
    let wrong_type = pomme_core::Tensor::zeros(pomme_core::DType::F64, vec![1, 3]).unwrap();
    assert!(matches!(
        s.run(vec![wrong_type]).unwrap_err(),
        Error::InvalidInput(_)
    ));
    // Shapes are the runtime's job to check; if one slips through, ORT's
    // complaint comes back as a one-line inference failure.
    let wrong_shape = pomme_core::Tensor::zeros(pomme_core::DType::F32, vec![1, 5]).unwrap();
    let e = s.run(vec![wrong_shape]).unwrap_err();
    assert!(matches!(e, Error::InferenceFailed(_)), "{e}");
    eprintln!("{}", one_line(&e));
}
