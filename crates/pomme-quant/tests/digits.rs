//! Targets on the digits models, validated on tract and (when present) ONNX
//! Runtime: INT8 drop <= 0.5 points and size <= 0.3x; INT4 drop <= 2 points
//! and size <= 0.2x; static INT8 with each calibration method.

mod common;

use common::{models, quantize_digits};
use pomme_quant::{CalibrationMethod, QuantizeOptions, QuantizeOutcome, Scheme};

fn check(o: &QuantizeOutcome, max_drop: f64, max_ratio: f64) {
    let v = o.validation.as_ref().expect("validated");
    assert!(
        v.size_ratio <= max_ratio,
        "size ratio {:.3} > {max_ratio}",
        v.size_ratio
    );
    assert_eq!(v.quant_bytes, std::fs::metadata(&o.output).unwrap().len());
    assert_eq!(v.samples, 450);
    let mut ran = 0;
    for b in &v.backends {
        assert!(b.error.is_none(), "{}: {:?}", b.backend, b.error);
        let drop = b.accuracy_drop.expect("labels y are used");
        assert!(
            drop <= max_drop,
            "{}: drop {drop:.2} > {max_drop}",
            b.backend
        );
        ran += 1;
    }
    assert!(ran >= 1);
}

#[test]
fn int8_weight_only_meets_targets() {
    let Some(dir) = models("int8_weight_only_meets_targets") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for model in ["digits_mlp", "digits_cnn"] {
        for per_channel in [true, false] {
            let o = quantize_digits(
                &dir,
                model,
                QuantizeOptions::new(Scheme::Int8 { per_channel }),
                tmp.path(),
            )
            .unwrap();
            check(&o, 0.5, 0.3);
        }
    }
}

#[test]
fn int4_meets_targets() {
    let Some(dir) = models("int4_meets_targets") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for model in ["digits_mlp", "digits_cnn"] {
        for block_size in [32, 64, 128] {
            let o = quantize_digits(
                &dir,
                model,
                QuantizeOptions::new(Scheme::Int4 { block_size }),
                tmp.path(),
            )
            .unwrap();
            check(&o, 2.0, 0.2);
        }
    }
}

#[test]
fn int8_static_with_each_calibration_method() {
    let Some(dir) = models("int8_static_with_each_calibration_method") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for model in ["digits_mlp", "digits_cnn"] {
        for method in [
            CalibrationMethod::MinMax,
            CalibrationMethod::Percentile(99.99),
            CalibrationMethod::Entropy,
        ] {
            let mut opts = QuantizeOptions::new(Scheme::Int8Static {
                per_channel: true,
                method,
            });
            // Only the test split ships with the models, so it also serves as
            // calibration data (activation ranges only; labels are not used).
            opts.calibration = Some(dir.join("digits_test.npz"));
            let o = quantize_digits(&dir, model, opts, tmp.path()).unwrap();
            assert!(!o.summary.activations.is_empty());
            // Q/DQ on outputs and explicit weight zero points (ONNX Runtime's
            // QGemm fusion needs them) cost ~1 kB on a 70 kB model.
            check(&o, 1.0, 0.32);
        }
    }
}

#[test]
fn auto_exclusion_meets_a_tight_budget() {
    let Some(dir) = models("auto_exclusion_meets_a_tight_budget") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = QuantizeOptions::new(Scheme::Int4 { block_size: 256 });
    opts.min_elements = 16;
    opts.max_accuracy_drop = Some(0.0);
    opts.auto_exclude = true;
    match quantize_digits(&dir, "digits_cnn", opts, tmp.path()) {
        Ok(o) => {
            eprintln!(
                "auto-excluded {:?}; sensitivity {:?}",
                o.summary.auto_excluded, o.summary.sensitivity
            );
            for b in &o.validation.as_ref().unwrap().backends {
                assert!(b.accuracy_drop.unwrap() <= 0.0 + 1e-9, "{b:?}");
            }
        }
        // Every layer alone may already cost accuracy: then the search says so.
        Err(e) => assert!(e.to_string().contains("no layer can be quantized"), "{e}"),
    }
}
