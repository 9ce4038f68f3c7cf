//! Failures are one line and write nothing; the cache quantizes once.

mod common;

use common::{backends, models, refs};
use pomme_quant::{CalibrationMethod, QuantError, QuantizeOptions, Scheme};
use std::path::Path;

fn run(model: &Path, out: &Path, opts: &QuantizeOptions) -> pomme_quant::Result<()> {
    let b = backends();
    pomme_quant::quantize_file(model, out, opts, &refs(&b), &pomme_quant::silent).map(|_| ())
}

fn one_line_and_nothing_written(r: pomme_quant::Result<()>, out: &Path, expect: &str) {
    let e = r.expect_err("should fail").to_string();
    eprintln!("error: {e}");
    assert!(!e.contains('\n'), "{e}");
    assert!(e.contains(expect), "{e:?} should contain {expect:?}");
    assert!(!out.exists(), "{} was written", out.display());
}

fn static_opts(calibration: &Path) -> QuantizeOptions {
    let mut o = QuantizeOptions::new(Scheme::Int8Static {
        per_channel: true,
        method: CalibrationMethod::MinMax,
    });
    o.calibration = Some(calibration.to_path_buf());
    o
}

#[test]
fn errors_are_one_line_and_write_nothing() {
    let Some(dir) = models("errors_are_one_line_and_write_nothing") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.onnx");
    let mlp = dir.join("digits_mlp.onnx");

    // Corrupted calibration file.
    let bad = tmp.path().join("bad.npz");
    std::fs::write(&bad, b"PK\x03\x04 this is not a zip").unwrap();
    one_line_and_nothing_written(
        run(&mlp, &out, &static_opts(&bad)),
        &out,
        "not a readable .npz",
    );

    // Calibration data that does not match the model input (digits_mlp takes
    // [batch,64]; minilm's reference ids are int64 [3,17]).
    let ids = dir.join("reference/minilm_l6/input.input_ids.npy");
    let npz = tmp.path().join("ids.npz");
    write_npz_from_npy(&ids, "input", &npz);
    one_line_and_nothing_written(
        run(&mlp, &out, &static_opts(&npz)),
        &out,
        "is INT64 but model input 'input' is FP32",
    );

    // Right dtype, wrong shape: float rows of 17 values for a [batch,64] input.
    let wrong = tmp.path().join("wrong_shape.npz");
    {
        use npyz::WriterBuilder;
        let mut w = npyz::npz::NpzWriter::create(&wrong).unwrap();
        let mut a = w
            .array::<f32>("input", Default::default())
            .unwrap()
            .default_dtype()
            .shape(&[3, 17])
            .begin_nd()
            .unwrap();
        a.extend(vec![0.5f32; 51]).unwrap();
        a.finish().unwrap();
    }
    one_line_and_nothing_written(
        run(&mlp, &out, &static_opts(&wrong)),
        &out,
        "has shape [3, 17] but model input 'input' expects [batch,64]",
    );

    // Unknown scheme.
    let e = Scheme::from_cli("int3", false, 32, CalibrationMethod::MinMax).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid input: unknown quantization scheme 'int3' (expected int8, int8-static, int8-dynamic, int4 or int4-nbits)"
    );

    // A model with no quantizable weights.
    one_line_and_nothing_written(
        run(
            &dir.join("add_one.onnx"),
            &out,
            &QuantizeOptions::new(Scheme::Int8 { per_channel: true }),
        ),
        &out,
        "no quantizable weights",
    );

    // Static without calibration data.
    let mut o = static_opts(&bad);
    o.calibration = None;
    one_line_and_nothing_written(run(&mlp, &out, &o), &out, "needs calibration data");

    // A budget that cannot be met (negative on purpose): figures in the message,
    // the report attached, nothing written.
    let mut o = QuantizeOptions::new(Scheme::Int4 { block_size: 32 });
    o.validate = Some(dir.join("digits_test.npz"));
    o.max_accuracy_drop = Some(-1.0);
    let b = backends();
    let r = pomme_quant::quantize_file(&mlp, &out, &o, &refs(&b), &pomme_quant::silent);
    match r {
        Err(QuantError::AccuracyBudgetExceeded { message, report }) => {
            eprintln!("{message}\n{report}");
            assert!(message.contains("exceeds the budget of -1.00"), "{message}");
            assert!(message.contains("float 97.11%"), "{message}");
            assert!(!out.exists());
        }
        other => panic!("expected a budget error, got {other:?}"),
    }

    // Unreadable model.
    let junk = tmp.path().join("junk.onnx");
    std::fs::write(&junk, [0xffu8; 64]).unwrap();
    one_line_and_nothing_written(
        run(
            &junk,
            &out,
            &QuantizeOptions::new(Scheme::Int4 { block_size: 32 }),
        ),
        &out,
        "invalid model",
    );
}

/// Wraps one .npy file into an .npz under the given array name (an npz is a
/// zip of .npy files; npyz writes the zip).
fn write_npz_from_npy(npy: &Path, name: &str, npz: &Path) {
    let t = pomme_quant::Dataset::read_npy_file(npy).unwrap();
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    let v: Vec<i64> = t.to_vec().unwrap();
    let mut w = npyz::npz::NpzWriter::create(npz).unwrap();
    use npyz::WriterBuilder;
    let mut a = w
        .array::<i64>(name, Default::default())
        .unwrap()
        .default_dtype()
        .shape(&shape)
        .begin_nd()
        .unwrap();
    a.extend(v).unwrap();
    a.finish().unwrap();
}

#[test]
fn cache_quantizes_once() {
    let Some(dir) = models("cache_quantizes_once") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let opts = QuantizeOptions::new(Scheme::for_precision(pomme_core::Precision::Int8).unwrap());
    let model = dir.join("digits_cnn.onnx");
    let p1 =
        pomme_quant::quantize_cached(&model, &opts, tmp.path(), &[], &pomme_quant::silent).unwrap();
    let m1 = std::fs::metadata(&p1).unwrap().modified().unwrap();
    let p2 =
        pomme_quant::quantize_cached(&model, &opts, tmp.path(), &[], &pomme_quant::silent).unwrap();
    assert_eq!(p1, p2);
    assert_eq!(m1, std::fs::metadata(&p2).unwrap().modified().unwrap());
    let int4 = QuantizeOptions::new(Scheme::for_precision(pomme_core::Precision::Int4).unwrap());
    let p3 =
        pomme_quant::quantize_cached(&model, &int4, tmp.path(), &[], &pomme_quant::silent).unwrap();
    assert_ne!(p1, p3);
    eprintln!("cached: {} and {}", p1.display(), p3.display());
    // Only the two results, no temporary files left behind.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
}
