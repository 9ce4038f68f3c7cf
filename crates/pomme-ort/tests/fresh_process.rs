//! In a process where nothing has loaded onnxruntime yet: a file that is not a
//! library fails with a reason, and does not stop the real library loading after.
//! (`common::backend` only skips when no library is found at all: a found library
//! that fails to load makes it return `None` too, so the test checks the path.)

mod common;

use pomme_core::{Availability, Backend};
use pomme_ort::OrtBackend;

#[test]
fn failed_load_does_not_poison_the_process() {
    let dir = common::scratch("fresh");
    let fake = dir.join("libonnxruntime.so");
    std::fs::write(&fake, b"not a shared object").unwrap();
    let bad = OrtBackend::with_dylib(&fake);
    assert_eq!(bad.dylib_path(), Some(fake.as_path()));
    let Availability::Unavailable(reason) = bad.availability() else {
        panic!("a fake library is available");
    };
    eprintln!("{reason}");
    assert!(
        reason.starts_with(&format!(
            "onnxruntime library at {} could not be loaded: ",
            fake.display()
        )),
        "{reason}"
    );
    assert!(!reason.contains('\n'));
    // Remembered, not retried.
    assert_eq!(bad.availability(), Availability::Unavailable(reason));
    // The real library, when there is one, still loads.
    let Some(real) = common::backend("failed_load_does_not_poison_the_process") else {
        return;
    };
    assert!(real.availability().is_available());
    assert!(real.dylib_path().is_some());
}
