//! Plans specialized to concrete symbol values, built on first use and cached.
//!
//! Why: tract picks its fast kernels (depthwise convolution, direct matrix
//! products without `Im2col` / `MoveAxis` shuffles, fused element-wise
//! chains) only when shapes are concrete: a plan optimized with `batch` left
//! symbolic runs several times slower, and some models (MiniLM: `seq` in a `Mul` during
//! decluttering) cannot be simplified symbolically at all. So the loaded
//! model keeps the analysed model with its symbols (the signature stays
//! `[batch,3,224,224]`), and each run uses a plan built for the values the
//! symbols take in that run's inputs.
//!
//! A key is the value of every symbol that appears as a whole input
//! dimension (`batch`, `seq`, …), read from the inputs' shapes. Building a
//! plan (bind symbols → tract's runtime prepares it, which declutters and
//! optimizes) takes from tens of milliseconds to a second, so plans live in
//! a small least-recently-used cache shared by every session of the model;
//! two sessions asking for the same new key build it once (the second waits
//! on the entry's lock), different keys build in parallel. Each session
//! keeps its own tract state per plan it has used (bounded the same way).

use crate::convert::error_line;
use crate::device::no_panic;
use parking_lot::Mutex;
use pomme_core::{DeviceKind, Error, Result, Tensor};
use std::collections::HashMap;
use std::sync::Arc;
use tract_core::prelude::*;
use tract_core::runtime::{RunOptions, Runnable, Runtime};

/// The values of [`Specializer::symbols`], in that order.
pub(crate) type Key = Vec<i64>;

/// One cache entry: filled by the first session that needs it.
type Slot = Arc<Mutex<Option<Arc<dyn Runnable>>>>;

/// Binds symbols to input sizes and hands out the plan for each binding.
pub(crate) struct Specializer {
    /// The analysed model, symbols still free.
    model: TypedModel,
    runtime: &'static dyn Runtime,
    run_options: RunOptions,
    device: DeviceKind,
    /// Symbols that appear as a whole dimension of some input.
    symbols: Vec<Symbol>,
    /// (input index, axis, index into `symbols`) for every such dimension.
    bindings: Vec<(usize, usize, usize)>,
    /// Input names, for error messages.
    input_names: Vec<String>,
    capacity: usize,
    /// Most recently used first.
    cache: Mutex<Vec<(Key, Slot)>>,
}

impl std::fmt::Debug for Specializer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Specializer")
            .field("runtime", &self.runtime.name())
            .field("symbols", &self.symbols)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Specializer {
    pub(crate) fn new(
        model: TypedModel,
        runtime: &'static dyn Runtime,
        run_options: RunOptions,
        device: DeviceKind,
        input_names: Vec<String>,
        capacity: usize,
    ) -> Result<Specializer> {
        let mut symbols: Vec<Symbol> = Vec::new();
        let mut bindings = Vec::new();
        for (ix, &outlet) in model.inputs.iter().enumerate() {
            let fact = model
                .outlet_fact(outlet)
                .map_err(|e| Error::Internal(error_line(&e)))?;
            for (axis, dim) in fact.shape.dims().iter().enumerate() {
                if let TDim::Sym(sym) = dim {
                    let at = match symbols.iter().position(|s| s == sym) {
                        Some(at) => at,
                        None => {
                            symbols.push(sym.clone());
                            symbols.len() - 1
                        }
                    };
                    bindings.push((ix, axis, at));
                }
            }
        }
        Ok(Specializer {
            model,
            runtime,
            run_options,
            device,
            symbols,
            bindings,
            input_names,
            capacity: capacity.max(1),
            cache: Mutex::new(Vec::new()),
        })
    }

    /// The symbols a key gives values to, in key order.
    pub(crate) fn symbols(&self) -> &[Symbol] {
        &self.symbols
    }

    /// Whether `symbol` is a batch-like dimension: axis 0 of some input.
    pub(crate) fn is_leading(&self, at: usize) -> bool {
        self.bindings
            .iter()
            .any(|&(_, axis, s)| s == at && axis == 0)
    }

    /// The key for a run's inputs: every symbol's value, read from the input
    /// shapes. An input whose rank or sizes disagree is an input error.
    pub(crate) fn key_for(&self, inputs: &[Tensor]) -> Result<Key> {
        let mut key: Vec<Option<(i64, usize)>> = vec![None; self.symbols.len()];
        for &(ix, axis, at) in &self.bindings {
            let name = &self.input_names[ix];
            let shape = inputs[ix].shape();
            let Some(&size) = shape.get(axis) else {
                return Err(Error::invalid_input(format!(
                    "input '{name}' has rank {}, the model needs at least {}",
                    shape.len(),
                    axis + 1
                )));
            };
            let size = size as i64;
            match key[at] {
                None => key[at] = Some((size, ix)),
                Some((seen, first)) if seen != size => {
                    return Err(Error::invalid_input(format!(
                        "dimension '{}' is {seen} in input '{}' but {size} in input '{name}'",
                        self.symbols[at], self.input_names[first]
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(key.into_iter().map(|v| v.map_or(0, |(v, _)| v)).collect())
    }

    /// The plan for `key`: from the cache, or built now and cached.
    pub(crate) fn plan(&self, key: &Key) -> Result<Arc<dyn Runnable>> {
        let slot = {
            let mut cache = self.cache.lock();
            match cache.iter().position(|(k, _)| k == key) {
                Some(p) => {
                    let entry = cache.remove(p);
                    let slot = Arc::clone(&entry.1);
                    cache.insert(0, entry);
                    slot
                }
                None => {
                    let slot: Slot = Arc::new(Mutex::new(None));
                    cache.insert(0, (key.clone(), Arc::clone(&slot)));
                    cache.truncate(self.capacity);
                    slot
                }
            }
        };
        // Only this entry is locked while it is built: other keys go on.
        let mut plan = slot.lock();
        if let Some(p) = plan.as_ref() {
            return Ok(Arc::clone(p));
        }
        let built = self.build(key)?;
        *plan = Some(Arc::clone(&built));
        Ok(built)
    }

    /// The most plans (and per-session states) kept.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many plans the cache holds (built or being built).
    pub(crate) fn cached(&self) -> usize {
        self.cache.lock().len()
    }

    fn describe(&self, key: &Key) -> String {
        self.symbols
            .iter()
            .zip(key)
            .map(|(s, v)| format!("{s}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn build(&self, key: &Key) -> Result<Arc<dyn Runnable>> {
        let at = if key.is_empty() {
            String::new()
        } else {
            format!(" for {}", self.describe(key))
        };
        let subs: HashMap<Symbol, TDim> = self
            .symbols
            .iter()
            .cloned()
            .zip(key.iter().map(|&v| TDim::Val(v)))
            .collect();
        let what = format!("tract's {} runtime", self.runtime.name());
        let prepared = no_panic(&what, || -> TractResult<Box<dyn Runnable>> {
            let model = if subs.is_empty() {
                self.model.clone()
            } else {
                self.model.set_symbols(&subs)?
            };
            self.runtime.prepare_with_options(model, &self.run_options)
        });
        match prepared {
            Ok(Ok(r)) => Ok(Arc::from(r)),
            Ok(Err(e)) => Err(Error::CompilationFailed(format!(
                "{what} could not prepare the model{at}: {}",
                error_line(&e)
            ))),
            // A GPU runtime panics when its device context cannot be created.
            Err(panic) if self.device != DeviceKind::Cpu => Err(Error::Unavailable(panic)),
            Err(panic) => Err(Error::CompilationFailed(format!("{panic}{at}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::math;

    /// `y = a + b` with `a`, `b`: f32 `[B, S]`.
    fn add_model() -> TypedModel {
        let mut model = TypedModel::default();
        let b = TDim::Sym(model.symbols.sym("B"));
        let s = TDim::Sym(model.symbols.sym("S"));
        let fact = f32::fact(&[b, s]);
        let a = model.add_source("a", fact.clone()).unwrap();
        let c = model.add_source("c", fact).unwrap();
        let y = model.wire_node("y", math::add(), &[a, c]).unwrap()[0];
        model.select_output_outlets(&[y]).unwrap();
        model
    }

    fn specializer(capacity: usize) -> Specializer {
        let cpu = tract_core::runtime::runtime_for_name("cpu")
            .unwrap()
            .unwrap();
        Specializer::new(
            add_model(),
            cpu,
            RunOptions::default(),
            DeviceKind::Cpu,
            vec!["a".into(), "c".into()],
            capacity,
        )
        .unwrap()
    }

    fn zeros(shape: &[usize]) -> Tensor {
        Tensor::zeros(pomme_core::DType::F32, shape.to_vec()).unwrap()
    }

    #[test]
    fn key_is_every_symbol_read_from_the_inputs() {
        let s = specializer(4);
        assert_eq!(
            s.symbols()
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            ["B", "S"]
        );
        assert!(s.is_leading(0) && !s.is_leading(1));
        assert_eq!(
            s.key_for(&[zeros(&[3, 5]), zeros(&[3, 5])]).unwrap(),
            vec![3, 5]
        );
    }

    #[test]
    fn disagreeing_inputs_are_an_input_error() {
        let s = specializer(4);
        let e = s.key_for(&[zeros(&[3, 5]), zeros(&[2, 5])]).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        assert!(e.to_string().contains("'B' is 3 in input 'a' but 2"), "{e}");
        let e = s.key_for(&[zeros(&[3]), zeros(&[3, 5])]).unwrap_err();
        assert!(e.to_string().contains("rank 1"), "{e}");
    }

    #[test]
    fn plans_are_concrete_cached_and_evicted_least_recent_first() {
        let s = specializer(2);
        let p35 = s.plan(&vec![3, 5]).unwrap();
        let again = s.plan(&vec![3, 5]).unwrap();
        assert!(Arc::ptr_eq(&p35, &again), "a cached key is not rebuilt");
        // The plan's input fact is concrete: symbols were bound before optimizing.
        let fact = p35.input_fact(0).unwrap();
        assert_eq!(fact.shape.as_concrete(), Some(&[3usize, 5][..]));
        s.plan(&vec![1, 5]).unwrap();
        s.plan(&vec![3, 5]).unwrap(); // [3,5] becomes most recent
        s.plan(&vec![2, 2]).unwrap(); // evicts [1,5]
        assert_eq!(s.cached(), 2);
        assert!(Arc::ptr_eq(&p35, &s.plan(&vec![3, 5]).unwrap()));
        let cache = s.cache.lock();
        let keys: Vec<&Key> = cache.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [&vec![3, 5], &vec![2, 2]]);
    }

    #[test]
    fn one_new_key_is_built_once_under_contention() {
        let s = specializer(4);
        let plans: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| s.plan(&vec![7, 3]).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(plans.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));
        assert_eq!(s.cached(), 1);
    }
}
