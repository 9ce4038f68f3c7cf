//! Every pomme dtype through ONNX Runtime and back (identity models written by
//! the tests), symbolic dimensions, and both session modes across threads.

mod common;

use bytes::Bytes;
use common::D;
use pomme_core::{Backend, DType, Dim, LoadOptions, Shape, Tensor};

/// ONNX `TensorProto.DataType` numbers.
fn onnx_type(d: DType) -> u64 {
    match d {
        DType::F32 => 1,
        DType::U8 => 2,
        DType::I8 => 3,
        DType::U16 => 4,
        DType::I16 => 5,
        DType::I32 => 6,
        DType::I64 => 7,
        DType::Bytes => 8,
        DType::Bool => 9,
        DType::F16 => 10,
        DType::F64 => 11,
        DType::U32 => 12,
        DType::U64 => 13,
        DType::BF16 => 16,
    }
}

/// A 2x3 tensor of `dtype` with distinct values.
fn sample(dtype: DType) -> Tensor {
    let shape = vec![2, 3];
    let n: usize = 6;
    match dtype {
        DType::Bool => Tensor::from_bools(shape, &[true, false, true, true, false, false]),
        DType::Bytes => Tensor::from_strings(
            shape,
            ["a", "", "héllo", "ONNX", "pomme", "x y"]
                .iter()
                .map(|s| Bytes::from(s.to_string()))
                .collect(),
        ),
        DType::U8 => Tensor::from_vec(shape, (0..n).map(|i| i as u8 + 250).collect()),
        DType::U16 => Tensor::from_vec(shape, (0..n).map(|i| i as u16 * 1000).collect()),
        DType::U32 => Tensor::from_vec(shape, (0..n).map(|i| u32::MAX - i as u32).collect()),
        DType::U64 => Tensor::from_vec(shape, (0..n).map(|i| u64::MAX - i as u64).collect()),
        DType::I8 => Tensor::from_vec(shape, (0..n).map(|i| i as i8 - 3).collect()),
        DType::I16 => Tensor::from_vec(shape, (0..n).map(|i| i as i16 * -300).collect()),
        DType::I32 => Tensor::from_vec(shape, (0..n).map(|i| i as i32 - 100_000).collect()),
        DType::I64 => Tensor::from_vec(shape, (0..n).map(|i| i64::MIN + i as i64 * 3).collect()),
        DType::F16 => Tensor::from_vec(
            shape,
            (0..n)
                .map(|i| half::f16::from_f32(i as f32 * 0.5 - 1.0))
                .collect(),
        ),
        DType::BF16 => Tensor::from_vec(
            shape,
            (0..n)
                .map(|i| half::bf16::from_f32(i as f32 * 0.25))
                .collect(),
        ),
        DType::F32 => Tensor::from_vec(shape, (0..n).map(|i| i as f32 / 3.0).collect()),
        DType::F64 => Tensor::from_vec(shape, (0..n).map(|i| i as f64 / 7.0).collect()),
    }
    .unwrap()
}

#[test]
fn every_dtype_round_trips() {
    let Some(b) = common::backend("every_dtype_round_trips") else {
        return;
    };
    let dir = common::scratch("dtypes");
    for dtype in DType::ALL {
        let path = dir.join(format!("identity_{dtype}.onnx"));
        std::fs::write(
            &path,
            common::identity_model(onnx_type(dtype), &[D::Sym("batch"), D::Fixed(3)]),
        )
        .unwrap();
        let m = b
            .load(&common::onnx(&path), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{dtype}: {e}"));
        let sig = m.signature();
        assert_eq!(sig.inputs[0].dtype, dtype);
        assert_eq!(sig.outputs[0].dtype, dtype);
        assert_eq!(sig.inputs[0].shape.to_string(), "[batch,3]");
        let x = sample(dtype);
        let y = m
            .session()
            .unwrap()
            .run(vec![x.clone()])
            .unwrap_or_else(|e| panic!("{dtype}: {e}"));
        assert_eq!(y, vec![x], "{dtype}");
    }
}

#[test]
fn unaligned_and_empty_inputs() {
    let Some(b) = common::backend("unaligned_and_empty_inputs") else {
        return;
    };
    let dir = common::scratch("unaligned");
    let path = dir.join("id.onnx");
    std::fs::write(
        &path,
        common::identity_model(1, &[D::Sym("batch"), D::Fixed(2)]),
    )
    .unwrap();
    let m = b
        .load(&common::onnx(&path), &LoadOptions::default())
        .unwrap();
    let mut s = m.session().unwrap();
    // Bytes at an odd offset: the input is copied instead of borrowed.
    let mut raw = vec![0u8; 17];
    for (i, v) in [1.5f32, -2.0, 3.25, 4.0].iter().enumerate() {
        raw[1 + 4 * i..5 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    let unaligned = Bytes::from(raw).slice(1..);
    let x = Tensor::from_raw(DType::F32, vec![2, 2], unaligned).unwrap();
    let y = s.run(vec![x]).unwrap();
    assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![1.5, -2.0, 3.25, 4.0]);
    // A batch of zero rows.
    let x = Tensor::zeros(DType::F32, vec![0, 2]).unwrap();
    let y = s.run(vec![x]).unwrap();
    assert_eq!(y[0].shape(), &[0, 2]);
}

#[test]
fn anonymous_dims_become_question_marks() {
    let Some(b) = common::backend("anonymous_dims_become_question_marks") else {
        return;
    };
    let dir = common::scratch("anon");
    let path = dir.join("anon.onnx");
    std::fs::write(
        &path,
        common::identity_model(7, &[D::Anon, D::Sym("seq"), D::Fixed(2)]),
    )
    .unwrap();
    let info = b.inspect(&common::onnx(&path)).unwrap();
    assert_eq!(
        info.signature.inputs[0].shape,
        Shape(vec![
            Dim::Symbolic("?".into()),
            Dim::Symbolic("seq".into()),
            Dim::Fixed(2)
        ])
    );
    assert_eq!(
        info.metadata.get("producer").map(String::as_str),
        Some("pomme-tests")
    );
    assert_eq!(
        info.metadata.get("graph_name").map(String::as_str),
        Some("identity_graph")
    );
}

#[test]
fn invalid_strings_are_rejected() {
    let Some(b) = common::backend("invalid_strings_are_rejected") else {
        return;
    };
    let dir = common::scratch("strings");
    let path = dir.join("s.onnx");
    std::fs::write(&path, common::identity_model(8, &[D::Sym("batch")])).unwrap();
    let m = b
        .load(&common::onnx(&path), &LoadOptions::default())
        .unwrap();
    let mut s = m.session().unwrap();
    for bad in [&b"\xff\xfe"[..], &b"a\0b"[..]] {
        let x = Tensor::from_strings(vec![1], vec![Bytes::copy_from_slice(bad)]).unwrap();
        let e = s.run(vec![x]).unwrap_err();
        assert!(matches!(e, pomme_core::Error::InvalidInput(_)), "{e}");
        eprintln!("{e}");
    }
}

fn run_in_threads(mode: &str) {
    let Some(b) = common::backend(mode) else {
        return;
    };
    let Some(models) = common::models_dir(mode) else {
        return;
    };
    let mut o = LoadOptions {
        threads: Some(1),
        ..LoadOptions::default()
    };
    o.extra.insert("sessions".into(), mode.into());
    let m = b
        .load(&common::onnx(models.join("add_one.onnx")), &o)
        .unwrap();
    std::thread::scope(|scope| {
        for t in 0..3 {
            let m = &m;
            scope.spawn(move || {
                let mut s = m.session().unwrap();
                for i in 0..50 {
                    let v = (t * 100 + i) as f32;
                    let x = Tensor::from_vec(vec![1, 4], vec![v; 4]).unwrap();
                    let y = s.run(vec![x]).unwrap();
                    assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![v + 1.0; 4]);
                }
            });
        }
    });
}

#[test]
fn per_worker_sessions_run_concurrently() {
    run_in_threads("per_worker");
}

#[test]
fn shared_session_runs_concurrently() {
    run_in_threads("shared");
}

/// The ORT backend and the shared model directory, or `None` (the skip was
/// printed) when either is missing.
fn backend_and_models(test: &str) -> Option<(pomme_ort::OrtBackend, std::path::PathBuf)> {
    let b = common::backend(test)?;
    let models = common::models_dir(test)?;
    Some((b, models))
}

/// One intra-op thread and these `extra` options.
fn one_thread(extra: &[(&str, String)]) -> LoadOptions {
    let mut o = LoadOptions {
        threads: Some(1),
        ..LoadOptions::default()
    };
    for (k, v) in extra {
        o.extra.insert(k.to_string(), v.clone());
    }
    o
}

/// `extra["profile"]` makes ORT write its per-node trace when the session ends;
/// an empty prefix is refused at load.
#[test]
fn profile_is_written_when_the_session_ends() {
    let Some((b, models)) = backend_and_models("profile_is_written_when_the_session_ends") else {
        return;
    };
    let dir = common::scratch("ort_profile");
    let prefix = dir.join("prof").to_string_lossy().into_owned();
    let mut o = one_thread(&[("profile", prefix)]);
    let m = b
        .load(&common::onnx(models.join("add_one.onnx")), &o)
        .unwrap();
    let mut s = m.session().unwrap();
    let x = Tensor::from_vec(vec![1, 4], vec![1.0f32; 4]).unwrap();
    s.run(vec![x]).unwrap();
    drop(s);
    let traces: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("prof"))
        .collect();
    assert_eq!(traces.len(), 1, "one profile per session: {traces:?}");
    let text = std::fs::read_to_string(traces[0].path()).unwrap();
    assert!(text.contains("model_run"), "{text}");

    o.extra.insert("profile".into(), " ".into());
    let e = b
        .load(&common::onnx(models.join("add_one.onnx")), &o)
        .err()
        .unwrap();
    assert!(e.to_string().contains("profile ''"), "{e}");
}

/// `shape_sessions = 3`: a worker keeps a session per input shape (each
/// writes its own profile, which is how the test counts them), answers stay
/// right as shapes alternate, and a fourth shape reuses a session.
#[test]
fn a_session_per_input_shape() {
    let Some((b, models)) = backend_and_models("a_session_per_input_shape") else {
        return;
    };
    let count = |shape_sessions: &str| {
        let dir = common::scratch(&format!("ort_shapes_{shape_sessions}"));
        let o = one_thread(&[
            ("profile", dir.join("prof").to_string_lossy().into_owned()),
            ("shape_sessions", shape_sessions.to_string()),
        ]);
        let m = b
            .load(&common::onnx(models.join("add_one.onnx")), &o)
            .unwrap();
        let mut s = m.session().unwrap();
        for rows in [1usize, 2, 1, 3, 2, 4, 1] {
            let x = Tensor::from_vec(vec![rows, 4], vec![rows as f32; rows * 4]).unwrap();
            let y = s.run(vec![x]).unwrap();
            assert_eq!(y[0].shape(), &[rows, 4]);
            assert_eq!(
                y[0].to_vec::<f32>().unwrap(),
                vec![rows as f32 + 1.0; rows * 4]
            );
        }
        drop(s);
        drop(m);
        std::fs::read_dir(&dir).unwrap().count()
    };
    assert_eq!(count("3"), 3, "four shapes, three sessions");
    assert_eq!(count("1"), 1);
}

/// `precision = f16` converts the file once into the cache directory (f16
/// weights, f32 inputs and outputs), reports F16, and answers within f16
/// rounding of the f32 model; a second load reuses the converted file.
#[test]
fn f16_precision_converts_once_and_keeps_f32_io() {
    let Some((b, models)) = backend_and_models("f16_precision_converts_once_and_keeps_f32_io")
    else {
        return;
    };
    let cache = common::scratch("fp16_cache");
    let o = LoadOptions {
        precision: pomme_core::Precision::F16,
        ..one_thread(&[("fp16_cache_dir", cache.to_string_lossy().into_owned())])
    };
    let m = b
        .load(&common::onnx(models.join("add_one.onnx")), &o)
        .unwrap();
    assert_eq!(m.precision(), pomme_core::Precision::F16);
    assert_eq!(m.signature().inputs[0].dtype, DType::F32, "inputs stay f32");
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let modified = std::fs::metadata(files[0].as_ref().unwrap().path())
        .unwrap()
        .modified()
        .unwrap();
    let mut s = m.session().unwrap();
    let x = Tensor::from_vec(vec![1, 4], vec![1.5f32, 2.25, -3.0, 100.0]).unwrap();
    let y = s.run(vec![x]).unwrap();
    assert_eq!(y[0].dtype(), DType::F32);
    for (got, want) in y[0]
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .zip([2.5f32, 3.25, -2.0, 101.0])
    {
        assert!((got - want).abs() <= want.abs() * 1e-3, "{got} vs {want}");
    }
    drop(s);
    let again = b
        .load(&common::onnx(models.join("add_one.onnx")), &o)
        .unwrap();
    assert_eq!(again.precision(), pomme_core::Precision::F16);
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(files.len(), 1, "one converted file");
    let modified_again = std::fs::metadata(files[0].as_ref().unwrap().path())
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(modified, modified_again, "reused, not rewritten");
}
