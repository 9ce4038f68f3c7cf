//! Generated Core ML format types (a subset of the public spec, see `proto/`).
#![allow(clippy::all, clippy::pedantic, missing_docs, dead_code)]

/// `CoreML.Specification`.
pub mod specification {
    include!(concat!(env!("OUT_DIR"), "/core_ml.specification.rs"));

    /// `CoreML.Specification.MILSpec`: ML Program.
    pub mod mil_spec {
        include!(concat!(
            env!("OUT_DIR"),
            "/core_ml.specification.mil_spec.rs"
        ));
    }
}

include!(concat!(env!("OUT_DIR"), "/oneof_tables.rs"));
