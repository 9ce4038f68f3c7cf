//! The tract backend's load options: every `LoadOptions.extra` key it reads,
//! parsed once per load into [`TractOptions`], whose field docs are the
//! reference for each key. A bad value is a one-line
//! [`Error::InvalidInput`] naming the key and what it accepts.

use pomme_core::{Error, ExtraOptions, LoadOptions, Result};
use std::collections::BTreeMap;

/// Every key [`TractOptions`] reads ([`pomme_core::Backend::option_keys`]);
/// `symbol.*` and `warmup.*` stand for every key with that prefix.
pub const KEYS: &[&str] = &["symbol.*", "warmup.*", "split_batch", "plan_cache"];

/// The tract backend's settings for one load, from `LoadOptions.extra`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TractOptions {
    /// `symbol.<name>` = positive integer: the value a model symbol (e.g.
    /// `symbol.seq = 128`) takes in the activation estimate (every symbol
    /// defaults to 1; the estimate is per batch row), and the warm-up value
    /// when no `warmup.<name>` is given.
    pub symbols: BTreeMap<String, i64>,
    /// `warmup.<name>` = positive integer: the symbol's value in the plan
    /// built at load. Default: 1 for a symbol that is axis 0 of an input (the
    /// batch), 8 for any other (a sequence length of 1 is a degenerate case
    /// some graphs fold away).
    pub warmups: BTreeMap<String, i64>,
    /// `split_batch` = `true` / `false` (default): run a batch of n rows as n
    /// runs of the batch-1 plan and join the outputs. tract optimizes some
    /// convolution nets much worse at batch > 1, so there n batch-1 runs are
    /// faster; transformers batch well and should leave it off. Refused at
    /// load unless every input and output shares the symbolic first dimension.
    pub split_batch: bool,
    /// `plan_cache` = positive integer, default 8: how many specialized plans
    /// the model keeps (each holds its own packed copy of the weights; each
    /// session keeps at most as many tract states).
    pub plan_cache: usize,
}

impl TractOptions {
    /// Parses every key of [`KEYS`] from `options.extra`.
    pub fn from_load_options(options: &LoadOptions) -> Result<TractOptions> {
        Self::read(&ExtraOptions::new(&options.extra))
    }

    fn read(x: &ExtraOptions<'_>) -> Result<TractOptions> {
        let split_batch = match x.get("split_batch").map(str::trim) {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => {
                return Err(Error::invalid_input(format!(
                    "option split_batch = '{v}' is not true or false"
                )));
            }
        };
        let plan_cache = match x.get("plan_cache") {
            None => 8,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(Error::invalid_input(format!(
                        "option plan_cache = '{v}' is not a positive integer"
                    )));
                }
            },
        };
        Ok(TractOptions {
            symbols: positive(x, "symbol.*")?,
            warmups: positive(x, "warmup.*")?,
            split_batch,
            plan_cache,
        })
    }
}

/// Every `<prefix><name>` = positive integer, by name.
fn positive(x: &ExtraOptions<'_>, pattern: &'static str) -> Result<BTreeMap<String, i64>> {
    let prefix = pattern.trim_end_matches('*');
    x.prefixed(pattern)
        .into_iter()
        .map(|(name, v)| match v.trim().parse::<i64>() {
            Ok(n) if n > 0 => Ok((name.to_string(), n)),
            _ => Err(Error::invalid_input(format!(
                "option {prefix}{name} = '{v}' is not a positive integer"
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_keys_are_what_the_parser_reads() {
        let empty = Default::default();
        let x = ExtraOptions::new(&empty);
        TractOptions::read(&x).unwrap();
        let mut keys = KEYS.to_vec();
        keys.sort_unstable();
        assert_eq!(x.keys_read(), keys);
    }

    #[test]
    fn wrong_values_are_refused_naming_the_key() {
        for (key, bad) in [
            ("split_batch", "maybe"),
            ("plan_cache", "0"),
            ("symbol.seq", "-1"),
            ("warmup.batch", "x"),
        ] {
            let e = TractOptions::from_load_options(&LoadOptions::with_extra(&[(key, bad)]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("invalid input: option "), "{e}");
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn values_and_defaults() {
        let o = TractOptions::from_load_options(&LoadOptions::with_extra(&[])).unwrap();
        assert_eq!((o.split_batch, o.plan_cache), (false, 8));
        let o = TractOptions::from_load_options(&LoadOptions::with_extra(&[
            ("symbol.seq", "128"),
            ("warmup.seq", " 17"),
            ("split_batch", "true"),
            ("plan_cache", "2"),
        ]))
        .unwrap();
        assert_eq!(o.symbols["seq"], 128);
        assert_eq!(o.warmups["seq"], 17);
        assert!(o.split_batch);
        assert_eq!(o.plan_cache, 2);
    }
}
