//! The ANE pre-check on the coremltools fixtures.

use pomme_coreml::ane_check::{self, Severity};
use pomme_coreml::reader;
use std::path::Path;

fn check(name: &str) -> Vec<ane_check::Finding> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/coreml");
    ane_check::check(&reader::read(&dir.join(name)).unwrap())
}

#[test]
fn fp16_program_with_fixed_shapes_is_clean() {
    assert!(
        check("mlp_program.mlpackage").is_empty(),
        "{:?}",
        check("mlp_program.mlpackage")
    );
}

#[test]
fn range_shapes_warn_and_enumerated_shapes_inform() {
    let f = check("range.mlpackage");
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].rule, "range-shape");
    assert_eq!(f[0].severity, Severity::Warning);
    assert!(f[0].message.contains("default shape [1,3,16]"), "{}", f[0]);

    let f = check("enumerated.mlpackage");
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].rule, f[0].severity),
        ("enumerated-shapes", Severity::Info)
    );
}

#[test]
fn neural_network_double_io_is_a_note() {
    let f = check("nn_dense.mlmodel");
    assert!(f.iter().all(|f| f.severity == Severity::Info), "{f:?}");
    assert!(f.iter().any(|f| f.rule == "float64-io"));
}
