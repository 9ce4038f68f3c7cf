//! The coreai backend's load options: every `LoadOptions.extra` key it reads,
//! parsed once per load into [`CoreAiOptions`], whose field docs are the
//! reference for each key.

use pomme_core::{Error, ExtraOptions, LoadOptions, Result};
use std::path::PathBuf;

/// Every key [`CoreAiOptions`] reads ([`pomme_core::Backend::option_keys`]).
pub const KEYS: &[&str] = &[
    "function",
    "python",
    "cache_dir",
    "max_sequences",
    "bridge",
    "spin_us",
];

/// `spin_us` when unset.
pub const DEFAULT_SPIN_US: u64 = 500;

/// How pomme reaches Apple's runtime (`bridge`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Bridge {
    /// The Swift shim when this build has it and CoreAI.framework is there
    /// (macOS 27+) and no `python` is named for the model; else Python.
    #[default]
    Auto,
    /// A Python engine process ([`crate::bridge`]).
    Python,
    /// pomme's Swift shim, in-process ([`crate::shim`]); the load fails when
    /// this build or machine has none.
    Shim,
}

/// The coreai backend's settings for one load, from `LoadOptions.extra`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreAiOptions {
    /// `function`: the asset's function to serve, or several separated by
    /// commas that differ only in their fixed batch size (`b1,b8`): a batch
    /// runs on the smallest that holds it. Default: the only function; for
    /// an asset whose functions all differ only in batch size, all of them;
    /// otherwise `main` when there is one.
    pub functions: Vec<String>,
    /// `python`: the interpreter of an environment holding `coreai-core`
    /// for this model (default: the backend's).
    pub python: Option<PathBuf>,
    /// `cache_dir`: where compiled programs are kept (default: the
    /// backend's, `<cache root>/coreai`).
    pub cache_dir: Option<PathBuf>,
    /// `max_sequences`: how many live sequences a stateful function keeps
    /// state for (default 1024); a new sequence beyond that is refused.
    pub max_sequences: usize,
    /// `bridge`: `auto` (default), `python` or `shim`; see [`Bridge`].
    pub bridge: Bridge,
    /// `spin_us`: microseconds pomme and a Python engine each poll for the
    /// other's next frame before sleeping (default 500; 0: never). A window
    /// longer than a tiny model's call saves both process wake-ups of a
    /// call, at the cost of up to that much CPU per frame (measured in
    /// BENCHMARKS.md: 0, 100, 300, 1000 µs).
    pub spin: std::time::Duration,
}

impl CoreAiOptions {
    /// Parses the keys of `options.extra`.
    pub fn parse(options: &LoadOptions) -> Result<CoreAiOptions> {
        Self::from_extra(&ExtraOptions::new(&options.extra))
    }

    fn from_extra(x: &ExtraOptions<'_>) -> Result<CoreAiOptions> {
        let functions = x
            .get("function")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let max_sequences = match x.get("max_sequences") {
            None => 1024,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    Error::invalid_input(format!(
                        "max_sequences = '{v}': expected a positive integer"
                    ))
                })?,
        };
        let spin = match x.get("spin_us") {
            None => std::time::Duration::from_micros(DEFAULT_SPIN_US),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= 1_000_000)
                .map(std::time::Duration::from_micros)
                .ok_or_else(|| {
                    Error::invalid_input(format!(
                        "spin_us = '{v}': expected microseconds from 0 to 1000000"
                    ))
                })?,
        };
        let bridge = match x.get("bridge").map(str::trim) {
            None | Some("auto") => Bridge::Auto,
            Some("python") => Bridge::Python,
            Some("shim") => Bridge::Shim,
            Some(v) => {
                return Err(Error::invalid_input(format!(
                    "bridge = '{v}': expected auto, python or shim"
                )));
            }
        };
        Ok(CoreAiOptions {
            functions,
            python: x.get("python").map(PathBuf::from),
            cache_dir: x.get("cache_dir").map(PathBuf::from),
            max_sequences,
            bridge,
            spin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_ones_read() {
        let opts = LoadOptions::default();
        let x = ExtraOptions::new(&opts.extra);
        let parsed = CoreAiOptions::from_extra(&x).unwrap();
        assert_eq!(parsed.max_sequences, 1024);
        assert!(parsed.functions.is_empty());
        let mut read = x.keys_read();
        read.sort();
        let mut keys = KEYS.to_vec();
        keys.sort();
        assert_eq!(read, keys);
    }

    #[test]
    fn parses_and_refuses() {
        let o = CoreAiOptions::parse(&LoadOptions::with_extra(&[("function", "b1, b8")])).unwrap();
        assert_eq!(o.functions, ["b1", "b8"]);
        let e = CoreAiOptions::parse(&LoadOptions::with_extra(&[("max_sequences", "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_sequences = '0'"), "{e}");
        assert_eq!(
            CoreAiOptions::parse(&LoadOptions::default())
                .unwrap()
                .bridge,
            Bridge::Auto
        );
        let o = CoreAiOptions::parse(&LoadOptions::with_extra(&[("bridge", "shim")])).unwrap();
        assert_eq!(o.bridge, Bridge::Shim);
        let e = CoreAiOptions::parse(&LoadOptions::with_extra(&[("bridge", "swift")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bridge = 'swift': expected auto, python or shim"),
            "{e}"
        );
    }
}
