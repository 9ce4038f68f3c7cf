//! The reader against `models/coreml/` (made by `scripts/make_coreml_fixtures.py`)
//! and what coremltools reported for each fixture (`models/coreml/expected.json`).

use pomme_core::{DType, Error};
use pomme_coreml::reader::{self, Container, FeatureInfo, ShapeFlexibility, SizeRange};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/coreml")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(models_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

const FIXTURES: [&str; 5] = [
    "nn_dense.mlmodel",
    "pipeline.mlmodel",
    "mlp_program.mlpackage",
    "enumerated.mlpackage",
    "range.mlpackage",
];

fn check_feature(fixture: &str, got: &FeatureInfo, want: &Value) {
    let ctx = format!("{fixture}: feature {}", got.name);
    assert_eq!(got.name, want["name"].as_str().unwrap(), "{ctx}");
    assert_eq!(got.kind.as_str(), want["kind"].as_str().unwrap(), "{ctx}");
    assert_eq!(
        got.description,
        want["description"].as_str().unwrap(),
        "{ctx}"
    );
    assert_eq!(got.optional, want["optional"].as_bool().unwrap(), "{ctx}");
    assert_eq!(got.data_type, want["data_type"].as_str().unwrap(), "{ctx}");
    let shape: Vec<u64> = serde_json::from_value(want["shape"].clone()).unwrap();
    assert_eq!(got.shape, shape, "{ctx}");
    let flex = &want["flexibility"];
    match flex["kind"].as_str().unwrap() {
        "fixed" => assert_eq!(got.flexibility, ShapeFlexibility::Fixed, "{ctx}"),
        "enumerated" => {
            let shapes: Vec<Vec<u64>> = serde_json::from_value(flex["shapes"].clone()).unwrap();
            assert_eq!(
                got.flexibility,
                ShapeFlexibility::Enumerated(shapes),
                "{ctx}"
            );
        }
        "range" => {
            let ranges: Vec<SizeRange> = serde_json::from_value(flex["shapes"].clone()).unwrap();
            assert_eq!(got.flexibility, ShapeFlexibility::Range(ranges), "{ctx}");
        }
        other => panic!("{ctx}: unknown flexibility {other}"),
    }
}

#[test]
fn every_fixture_matches_coremltools() {
    let exp = expected();
    for fixture in FIXTURES {
        let want = &exp[fixture];
        assert!(want.is_object(), "{fixture} missing from expected.json");
        let info =
            reader::read(&models_dir().join(fixture)).unwrap_or_else(|e| panic!("{fixture}: {e}"));
        assert_eq!(
            info.spec_version as i64,
            want["specification_version"].as_i64().unwrap(),
            "{fixture}"
        );
        assert_eq!(
            info.model_type,
            want["model_type"].as_str().unwrap(),
            "{fixture}"
        );
        let ins = want["inputs"].as_array().unwrap();
        let outs = want["outputs"].as_array().unwrap();
        assert_eq!(info.inputs.len(), ins.len(), "{fixture}");
        assert_eq!(info.outputs.len(), outs.len(), "{fixture}");
        for (g, w) in info.inputs.iter().zip(ins) {
            check_feature(fixture, g, w);
        }
        for (g, w) in info.outputs.iter().zip(outs) {
            check_feature(fixture, g, w);
        }
        let md = &want["metadata"];
        assert_eq!(info.metadata.author, md["author"].as_str().unwrap());
        assert_eq!(info.metadata.license, md["license"].as_str().unwrap());
        assert_eq!(info.metadata.version, md["version"].as_str().unwrap());
        assert_eq!(
            info.metadata.short_description,
            md["short_description"].as_str().unwrap()
        );
        let user: std::collections::BTreeMap<String, String> =
            serde_json::from_value(md["user_defined"].clone()).unwrap();
        assert_eq!(info.metadata.user_defined, user, "{fixture}");
        let hist: std::collections::BTreeMap<String, usize> =
            serde_json::from_value(want["op_histogram"].clone()).unwrap();
        assert_eq!(info.op_histogram, hist, "{fixture}");
        assert_eq!(
            info.weight_bytes,
            want["weight_bytes"].as_u64().unwrap(),
            "{fixture}: weight bytes"
        );
        let subs: Vec<String> = serde_json::from_value(want["sub_models"].clone()).unwrap();
        let got_subs: Vec<String> = info
            .sub_models
            .iter()
            .map(|s| s.model_type.clone())
            .collect();
        assert_eq!(got_subs, subs, "{fixture}");
        let container = if fixture.ends_with(".mlpackage") {
            Container::MlPackage
        } else {
            Container::MlModel
        };
        assert_eq!(info.container, container);

        // The pomme view agrees with the detailed one.
        let mi = info.to_model_info();
        assert_eq!(mi.metadata["format"], "coreml");
        assert_eq!(mi.metadata["model_type"], info.model_type);
        assert_eq!(mi.metadata["author"], info.metadata.author);
        assert_eq!(
            mi.metadata["user.fixture"],
            info.metadata.user_defined["fixture"]
        );
        assert_eq!(mi.weight_bytes, info.weight_bytes);
        assert_eq!(mi.signature.inputs.len(), ins.len());
    }
}

#[test]
fn signatures_in_pomme_terms() {
    let dir = models_dir();
    let sig = |f: &str| reader::read(&dir.join(f)).unwrap().signature;

    let s = sig("nn_dense.mlmodel");
    assert_eq!(s.inputs[0].dtype, DType::F64);
    assert_eq!(s.inputs[0].shape.to_string(), "[4]");
    assert_eq!(s.outputs[0].shape.to_string(), "[3]");

    let s = sig("mlp_program.mlpackage");
    assert_eq!(s.inputs[0].dtype, DType::F32);
    assert_eq!(s.inputs[0].shape.to_string(), "[1,8]");
    assert_eq!(s.outputs[0].shape.to_string(), "[1,4]");

    // Enumerated batch 1/2/4: the batch dimension varies, the rest is fixed.
    let s = sig("enumerated.mlpackage");
    assert_eq!(s.inputs[0].shape.to_string(), "[?,3,8,8]");
    assert!(s.inputs[0].shape.has_symbolic_batch());
    // The description leaves the output shape unset: the ML Program gives its rank.
    assert_eq!(s.outputs[0].shape.rank(), 4);

    let s = sig("range.mlpackage");
    assert_eq!(s.inputs[0].shape.to_string(), "[?,3,?]");
    assert_eq!(s.outputs[0].shape.rank(), 3);
}

#[test]
fn model_info_carries_flexible_shapes_and_weights() {
    let dir = models_dir();
    let mi = reader::read(&dir.join("enumerated.mlpackage"))
        .unwrap()
        .to_model_info();
    assert_eq!(
        mi.metadata["input.x.enumerated_shapes"],
        "[1,3,8,8] [2,3,8,8] [4,3,8,8]"
    );
    assert_eq!(mi.metadata["mil.opsets"], "CoreML6");
    let mi = reader::read(&dir.join("range.mlpackage"))
        .unwrap()
        .to_model_info();
    assert_eq!(mi.metadata["input.x.shape_range"], "[1..8,3..3,4..64]");

    // NN weights: innerProduct 3x4 float32 + 3 bias.
    let info = reader::read(&dir.join("nn_dense.mlmodel")).unwrap();
    assert_eq!(info.parameters, 15);
    assert_eq!(info.weight_bytes, 60);
    // ML Program: weight.bin is referenced and counted exactly.
    let info = reader::read(&dir.join("mlp_program.mlpackage")).unwrap();
    assert_eq!(info.weight_files.len(), 1);
    assert!(info.weight_files[0].ends_with("weights/weight.bin"));
    // Blob constants: linear 16x8 + 16 and 4x16 (coremltools keeps the 4-element
    // bias inline, and inline values are not counted).
    assert_eq!(info.parameters, 16 * 8 + 16 + 4 * 16);
}

/// Copies a fixture package into a temp dir so a test can break it.
fn copy_package(name: &str) -> (tempfile::TempDir, PathBuf) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), &target).unwrap();
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(name);
    copy(&models_dir().join(name), &dst);
    (tmp, dst)
}

fn invalid_message(r: pomme_core::Result<reader::CoreMlInfo>) -> String {
    match r {
        Err(Error::InvalidModelFormat(m)) => {
            assert!(!m.contains('\n'), "one line: {m}");
            m
        }
        Err(other) => panic!("expected InvalidModelFormat, got {other}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn malformed_packages_name_the_problem() {
    let (_t, pkg) = copy_package("mlp_program.mlpackage");
    std::fs::remove_file(pkg.join("Manifest.json")).unwrap();
    let m = invalid_message(reader::read(&pkg));
    assert!(m.contains("Manifest.json"), "{m}");

    let (_t, pkg) = copy_package("mlp_program.mlpackage");
    std::fs::write(pkg.join("Manifest.json"), "{ not json").unwrap();
    let m = invalid_message(reader::read(&pkg));
    assert!(m.contains("not valid JSON"), "{m}");

    let (_t, pkg) = copy_package("mlp_program.mlpackage");
    std::fs::write(pkg.join("Manifest.json"), r#"{"itemInfoEntries": {}}"#).unwrap();
    let m = invalid_message(reader::read(&pkg));
    assert!(m.contains("rootModelIdentifier"), "{m}");

    let (_t, pkg) = copy_package("mlp_program.mlpackage");
    std::fs::remove_file(pkg.join("Data/com.apple.CoreML/model.mlmodel")).unwrap();
    let m = invalid_message(reader::read(&pkg));
    assert!(m.contains("root model file"), "{m}");
    assert!(m.contains("model.mlmodel"), "{m}");

    let (_t, pkg) = copy_package("mlp_program.mlpackage");
    std::fs::remove_file(pkg.join("Data/com.apple.CoreML/weights/weight.bin")).unwrap();
    let m = invalid_message(reader::read(&pkg));
    assert!(m.contains("weight file"), "{m}");

    let (_t, pkg) = copy_package("mlp_program.mlpackage");
    let manifest = std::fs::read_to_string(pkg.join("Manifest.json")).unwrap();
    std::fs::write(
        pkg.join("Manifest.json"),
        manifest.replace("com.apple.CoreML/model.mlmodel", "../../etc/passwd"),
    )
    .unwrap();
    let m = invalid_message(reader::read(&pkg));
    assert!(m.contains("leaves the package"), "{m}");

    let m = invalid_message(reader::read(Path::new("/nonexistent/model.mlmodel")));
    assert!(m.contains("no such file"), "{m}");
}

#[test]
fn truncated_protobufs_are_rejected_without_panicking() {
    for fixture in ["nn_dense.mlmodel", "pipeline.mlmodel"] {
        let bytes = std::fs::read(models_dir().join(fixture)).unwrap();
        for cut in 1..bytes.len() {
            let m = invalid_message(reader::read_mlmodel_bytes(&bytes[..cut]));
            assert!(
                m.contains("truncated")
                    || m.contains("no model type")
                    || m.contains("no description")
                    || m.contains("malformed"),
                "{fixture} cut at {cut}: {m}"
            );
        }
    }
    let (_t, pkg) = copy_package("mlp_program.mlpackage");
    let model = pkg.join("Data/com.apple.CoreML/model.mlmodel");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let m = invalid_message(reader::read(&pkg));
    assert!(m.contains("truncated"), "{m}");
    assert!(m.contains("mlp_program.mlpackage"), "{m}");
}

#[test]
fn compiled_bundles_are_pointed_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("m.mlmodelc");
    std::fs::create_dir(&c).unwrap();
    let m = invalid_message(reader::read(&c));
    assert!(m.contains(".mlmodelc"), "{m}");
}
