//! `pomme` with Core AI models, through Apple's real Linux runtime:
//! `devices` reports it, `inspect` lists functions and states, `infer` runs
//! an `.aimodel`, and `pomme check` gates a conversion against its ONNX
//! source (exit 0 when it agrees, 1 when it does not, 2 on errors).

use pomme_test_support::fixtures::{coreai_python, repo_models, workspace_root};
use std::path::PathBuf;
use std::process::{Command, Output};

fn pomme(python: &PathBuf, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pomme"))
        .args(args)
        .env("POMME_COREAI_PYTHON", python)
        .env(
            "POMME_CACHE_DIR",
            std::env::temp_dir().join(format!("pomme-cli-coreai-{}", std::process::id())),
        )
        .current_dir(workspace_root())
        .output()
        .expect("pomme runs")
}

fn fixture(name: &str) -> String {
    repo_models()
        .join("coreai")
        .join(name)
        .display()
        .to_string()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn devices_inspect_and_infer() {
    let Some(py) = coreai_python("devices_inspect_and_infer") else {
        return;
    };
    let out = pomme(&py, &["devices", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let coreai = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == "coreai")
        .unwrap_or_else(|| panic!("no coreai in {v}"));
    assert_eq!(coreai["availability"]["status"], "available", "{coreai}");

    let out = pomme(&py, &["inspect", &fixture("accumulator.aimodel")]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("format:      coreai"), "{t}");
    assert!(t.contains("states acc FP32 [1,4]"), "{t}");
    assert!(t.contains("runtime: coreai-core 1.0.0b3"), "{t}");

    // A stateful model runs as one fresh sequence: y = x + 0.
    let dir = std::env::temp_dir().join(format!("pomme-cli-coreai-x-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let x = dir.join("x.npy");
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    for v in [1.0f32, 2.0, 3.0, 4.0] {
        npy.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(&x, npy).unwrap();
    let out = pomme(
        &py,
        &[
            "infer",
            &fixture("accumulator.aimodel"),
            "--input",
            &format!("x={}", x.display()),
        ],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["outputs"][0]["head"],
        serde_json::json!([1.0, 2.0, 3.0, 4.0]),
        "{t}"
    );

    let out = pomme(&py, &["infer", &fixture("mlp.aimodel")]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backend"], "coreai");
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([1, 8]));
}

#[test]
fn check_gates_a_conversion() {
    let Some(py) = coreai_python("check_gates_a_conversion") else {
        return;
    };
    for (model, source) in [
        ("mlp.aimodel", "mlp.onnx"),
        ("encoder.aimodel", "encoder.onnx"),
        ("fp16.aimodel", "fp16.onnx"),
    ] {
        let out = pomme(
            &py,
            &[
                "check",
                &fixture(model),
                "--against",
                &fixture(source),
                "--json",
            ],
        );
        let t = text(&out);
        assert_eq!(out.status.code(), Some(0), "{model}: {t}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["agrees"], true, "{t}");
        let first = &v["outputs"][0];
        assert!(first["max_abs"].as_f64().unwrap() < 1e-4, "{t}");
        assert!(first["cosine"].as_f64().unwrap() > 0.9999, "{t}");
    }
    // Against ONNX Runtime itself, where this build has it.
    let ort = pomme(&py, &["devices", "--json"]);
    let ort_up =
        String::from_utf8_lossy(&ort.stdout).contains(r#""status":"available"},"backend":"ort""#);
    if ort_up {
        let out = pomme(
            &py,
            &[
                "check",
                &fixture("mlp.aimodel"),
                "--against",
                &fixture("mlp.onnx"),
                "--against-backend",
                "ort",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    } else {
        eprintln!("SKIP check against ort: ONNX Runtime not available");
    }
    // No tolerance at all: the conversion's 1e-7 differences fail the gate.
    let out = pomme(
        &py,
        &[
            "check",
            &fixture("mlp.aimodel"),
            "--against",
            &fixture("mlp.onnx"),
            "--atol",
            "0",
            "--rtol",
            "0",
        ],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("DISAGREES") && t.contains("outputs disagree"),
        "{t}"
    );
    // A reference that does not exist is an error (2), not a disagreement.
    let out = pomme(
        &py,
        &["check", &fixture("mlp.aimodel"), "--against", "nope.onnx"],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("nope.onnx"), "{t}");
}
