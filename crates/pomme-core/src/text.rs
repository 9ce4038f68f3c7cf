//! Small text helpers every crate needs for its one-line error messages.

use std::any::Any;

/// Collapses any run of whitespace (newlines included) into one space, so an
/// engine's multi-line message fits pomme's one-line errors.
pub fn one_line(s: impl AsRef<str>) -> String {
    s.as_ref().split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The message of a caught panic's payload (`&str` or `String`), on one line.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    one_line(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_whitespace() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }

    #[test]
    fn reads_both_panic_payloads() {
        let p = std::panic::catch_unwind(|| panic!("x\ny")).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "x y");
        let p = std::panic::catch_unwind(|| std::panic::panic_any(3u8)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "unknown panic");
    }
}
