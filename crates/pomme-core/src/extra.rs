//! Reading a backend's `LoadOptions.extra` settings.
//!
//! Each backend parses its keys once per load into a typed options struct.
//! [`ExtraOptions`] records which keys the parser asked for, so the backend's
//! tests can check that [`Backend::option_keys`](crate::Backend::option_keys)
//! lists exactly what the parser reads.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// A load's `extra` map, read one key (or one key prefix) at a time.
pub struct ExtraOptions<'a> {
    extra: &'a BTreeMap<String, String>,
    read: RefCell<BTreeSet<&'static str>>,
}

impl<'a> ExtraOptions<'a> {
    pub fn new(extra: &'a BTreeMap<String, String>) -> ExtraOptions<'a> {
        ExtraOptions {
            extra,
            read: RefCell::new(BTreeSet::new()),
        }
    }

    /// The value of `key`, when set.
    pub fn get(&self, key: &'static str) -> Option<&'a str> {
        self.read.borrow_mut().insert(key);
        self.extra.get(key).map(String::as_str)
    }

    /// Every `(name, value)` whose key is `pattern`'s prefix followed by a
    /// name; `pattern` ends in `*` (`symbol.*`), as in `option_keys`.
    pub fn prefixed(&self, pattern: &'static str) -> Vec<(&'a str, &'a str)> {
        self.read.borrow_mut().insert(pattern);
        let prefix = pattern.strip_suffix('*').unwrap_or(pattern);
        self.extra
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(prefix)
                    .filter(|name| !name.is_empty())
                    .map(|name| (name, v.as_str()))
            })
            .collect()
    }

    /// The keys and patterns asked for so far, sorted.
    pub fn keys_read(&self) -> Vec<&'static str> {
        self.read.borrow().iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_what_was_read() {
        let extra: BTreeMap<String, String> = [("a", "1"), ("symbol.seq", "8"), ("symbol.", "x")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = ExtraOptions::new(&extra);
        assert_eq!(r.get("a"), Some("1"));
        assert_eq!(r.get("b"), None);
        assert_eq!(r.prefixed("symbol.*"), [("seq", "8")]);
        assert_eq!(r.keys_read(), ["a", "b", "symbol.*"]);
    }
}
