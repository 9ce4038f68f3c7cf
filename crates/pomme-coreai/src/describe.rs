//! What the runtime says of an asset (its functions' inputs, outputs and
//! states, read from the bytecode by Apple's runtime, and `metadata.json`),
//! and the serving plan pomme makes of it: which function(s) serve, under
//! which signature.

use crate::bridge::dtype_of;
use pomme_core::{DType, Dim, Error, ModelSignature, Result, Shape, TensorSpec};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The worker's answer to `load`.
#[derive(Clone, Debug, Deserialize)]
pub struct Description {
    pub functions: BTreeMap<String, FunctionDesc>,
    /// Function names in the asset's order.
    pub order: Vec<String>,
    /// `metadata.json`, as written.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Which runtime ran it (`coreai-core 1.0.0b3 (in-package runtime, Linux x86_64)`).
    pub runtime: String,
    /// How the program was obtained (`compiled`, `cache hit`, `precompiled`, ...).
    pub how: String,
    pub load_ms: f64,
}

/// One function's signature as the runtime reports it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct FunctionDesc {
    pub inputs: Vec<SpecDesc>,
    pub outputs: Vec<SpecDesc>,
    #[serde(default)]
    pub states: Vec<SpecDesc>,
}

/// One input, output or state: the runtime's dtype name, -1 for an unknown dim.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SpecDesc {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
}

impl SpecDesc {
    fn dtype(&self) -> Result<DType> {
        dtype_of(&self.dtype).ok_or_else(|| {
            Error::InvalidModelFormat(format!(
                "'{}' has dtype {}, which pomme does not serve",
                self.name, self.dtype
            ))
        })
    }

    /// Unknown dims become symbolic: `batch` first, `?` elsewhere.
    fn shape(&self) -> Shape {
        Shape(
            self.shape
                .iter()
                .enumerate()
                .map(|(i, &d)| match (i, usize::try_from(d)) {
                    (_, Ok(n)) => Dim::Fixed(n),
                    (0, Err(_)) => Dim::Symbolic("batch".into()),
                    (_, Err(_)) => Dim::Symbolic("?".into()),
                })
                .collect(),
        )
    }

    fn spec(&self, input: bool) -> Result<TensorSpec> {
        let spec = TensorSpec::new(self.name.clone(), self.dtype()?, self.shape());
        // Core AI narrows int64 inputs to int32; clients of the source model send INT64.
        Ok(if input && spec.dtype == DType::I32 {
            spec.accepting(DType::I64)
        } else {
            spec
        })
    }

    /// The concrete shape of a fresh state (every dim known).
    pub fn fixed_shape(&self) -> Result<Vec<usize>> {
        self.shape
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                Error::InvalidModelFormat(format!(
                    "state '{}' has an unknown dimension; pomme cannot create it",
                    self.name
                ))
            })
    }

    /// One line: `x FP32 [batch,4]`.
    pub fn line(&self) -> String {
        let d = dtype_of(&self.dtype)
            .map(|d| d.kserve_name().to_string())
            .unwrap_or_else(|| self.dtype.clone());
        format!("{} {d} {}", self.name, self.shape())
    }
}

impl FunctionDesc {
    /// `inputs x FP32 [batch,4]; outputs y FP32 [batch,4]; states -`.
    pub fn line(&self) -> String {
        let list = |v: &[SpecDesc]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.iter().map(SpecDesc::line).collect::<Vec<_>>().join(", ")
            }
        };
        format!(
            "inputs {}; outputs {}; states {}",
            list(&self.inputs),
            list(&self.outputs),
            list(&self.states)
        )
    }

    fn signature(&self) -> Result<ModelSignature> {
        Ok(ModelSignature {
            inputs: self
                .inputs
                .iter()
                .map(|s| s.spec(true))
                .collect::<Result<_>>()?,
            outputs: self
                .outputs
                .iter()
                .map(|s| s.spec(false))
                .collect::<Result<_>>()?,
        })
    }

    /// The fixed first dimension every input and output shares, if any.
    fn fixed_batch(&self) -> Option<usize> {
        let first = self.inputs.first()?.shape.first().copied()?;
        let n = usize::try_from(first).ok()?;
        self.inputs
            .iter()
            .chain(&self.outputs)
            .all(|s| s.shape.first() == Some(&first))
            .then_some(n)
    }

    /// Equal except for the first dimension of every input and output.
    fn same_but_batch(&self, other: &FunctionDesc) -> bool {
        let same = |a: &[SpecDesc], b: &[SpecDesc]| {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| {
                    x.name == y.name
                        && x.dtype == y.dtype
                        && x.shape.len() == y.shape.len()
                        && x.shape.get(1..) == y.shape.get(1..)
                })
        };
        self.states.is_empty()
            && other.states.is_empty()
            && same(&self.inputs, &other.inputs)
            && same(&self.outputs, &other.outputs)
    }
}

/// Which function(s) serve a model, and the signature clients see.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The serving functions with their fixed batch sizes, smallest first;
    /// one entry with `None` when a single function takes any batch (or
    /// has no batch).
    pub functions: Vec<(String, Option<usize>)>,
    pub signature: ModelSignature,
    /// The state arrays of a stateful function (empty otherwise).
    pub states: Vec<SpecDesc>,
}

impl Plan {
    /// The plan for the functions `chosen` (empty: pomme's default, see
    /// [`crate::CoreAiOptions::functions`]).
    pub fn new(desc: &Description, chosen: &[String]) -> Result<Plan> {
        let names: Vec<String> = if !chosen.is_empty() {
            for c in chosen {
                if !desc.functions.contains_key(c) {
                    return Err(Error::invalid_input(format!(
                        "function = '{c}': the asset has no such function (it has {})",
                        desc.order.join(", ")
                    )));
                }
            }
            chosen.to_vec()
        } else if desc.order.len() == 1 || family(desc, &desc.order) {
            desc.order.clone()
        } else if desc.functions.contains_key("main") {
            vec!["main".to_string()]
        } else {
            return Err(Error::invalid_input(format!(
                "the asset has several functions ({}); choose one with function = \"...\"",
                desc.order.join(", ")
            )));
        };
        let first = &desc.functions[&names[0]];
        if names.len() == 1 {
            return Ok(Plan {
                functions: vec![(names[0].clone(), None)],
                signature: first.signature()?,
                states: first.states.clone(),
            });
        }
        if !family(desc, &names) {
            return Err(Error::invalid_input(format!(
                "functions {} differ in more than their fixed batch size; serve one of them",
                names.join(", ")
            )));
        }
        let mut functions: Vec<(String, Option<usize>)> = names
            .iter()
            .map(|n| (n.clone(), desc.functions[n].fixed_batch()))
            .collect();
        functions.sort_by_key(|(_, b)| *b);
        let mut signature = first.signature()?;
        for s in signature
            .inputs
            .iter_mut()
            .chain(signature.outputs.iter_mut())
        {
            s.shape.0[0] = Dim::Symbolic("batch".into());
        }
        Ok(Plan {
            functions,
            signature,
            states: Vec::new(),
        })
    }

    /// The largest batch one call can take (`None`: any).
    pub fn max_batch(&self) -> Option<usize> {
        self.functions.last().and_then(|(_, b)| *b)
    }

    /// The function for a batch of `rows` and the batch it runs at (rows are
    /// padded up to it); `rows` must not exceed [`max_batch`](Self::max_batch).
    pub fn pick(&self, rows: usize) -> (&str, Option<usize>) {
        self.functions
            .iter()
            .find(|(_, b)| b.is_none_or(|b| b >= rows))
            .map(|(n, b)| (n.as_str(), *b))
            .unwrap_or_else(|| {
                let (n, b) = self.functions.last().expect("a plan has a function");
                (n.as_str(), *b)
            })
    }
}

/// Whether `names` are stateless functions with fixed, distinct batch sizes
/// that are otherwise identical (the common b1/b8 variants).
fn family(desc: &Description, names: &[String]) -> bool {
    if names.len() < 2 {
        return false;
    }
    let fs: Vec<&FunctionDesc> = names.iter().map(|n| &desc.functions[n]).collect();
    let mut batches: Vec<usize> = Vec::new();
    for f in &fs {
        match f.fixed_batch() {
            Some(b) if !batches.contains(&b) => batches.push(b),
            _ => return false,
        }
    }
    fs.iter().all(|f| f.same_but_batch(fs[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: &str, shape: &[i64]) -> SpecDesc {
        SpecDesc {
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.to_vec(),
        }
    }

    fn desc(fs: &[(&str, FunctionDesc)]) -> Description {
        Description {
            functions: fs.iter().map(|(n, f)| (n.to_string(), f.clone())).collect(),
            order: fs.iter().map(|(n, _)| n.to_string()).collect(),
            metadata: Default::default(),
            runtime: "test".into(),
            how: "test".into(),
            load_ms: 0.0,
        }
    }

    fn fixed(b: i64) -> FunctionDesc {
        FunctionDesc {
            inputs: vec![spec("x", "float32", &[b, 4])],
            outputs: vec![spec("y", "float32", &[b, 4])],
            states: vec![],
        }
    }

    #[test]
    fn one_dynamic_function() {
        let d = desc(&[(
            "main",
            FunctionDesc {
                inputs: vec![spec("ids", "int32", &[-1, -1])],
                outputs: vec![spec("e", "float16", &[-1, 16])],
                states: vec![],
            },
        )]);
        let p = Plan::new(&d, &[]).unwrap();
        assert_eq!(p.functions, vec![("main".to_string(), None)]);
        assert_eq!(p.signature.inputs[0].shape.to_string(), "[batch,?]");
        assert_eq!(p.signature.inputs[0].accepts, Some(DType::I64));
        assert_eq!(p.signature.outputs[0].dtype, DType::F16);
        assert!(p.signature.is_batchable());
        assert_eq!(p.pick(100), ("main", None));
    }

    #[test]
    fn batch_variants_form_a_family() {
        let d = desc(&[("b8", fixed(8)), ("b1", fixed(1))]);
        let p = Plan::new(&d, &[]).unwrap();
        assert_eq!(
            p.functions,
            vec![("b1".to_string(), Some(1)), ("b8".to_string(), Some(8))]
        );
        assert!(p.signature.is_batchable());
        assert_eq!(p.max_batch(), Some(8));
        assert_eq!(p.pick(1), ("b1", Some(1)));
        assert_eq!(p.pick(3), ("b8", Some(8)));
        // Choosing one serves it alone, at its fixed batch.
        let one = Plan::new(&d, &["b8".into()]).unwrap();
        assert_eq!(one.functions, vec![("b8".to_string(), None)]);
        assert!(!one.signature.is_batchable());
        let e = Plan::new(&d, &["b2".into()]).unwrap_err().to_string();
        assert!(e.contains("no such function (it has b8, b1)"), "{e}");
    }

    #[test]
    fn unrelated_functions_need_a_choice() {
        let mut other = fixed(1);
        other.inputs[0].name = "z".into();
        let d = desc(&[("a", fixed(1)), ("b", other)]);
        let e = Plan::new(&d, &[]).unwrap_err().to_string();
        assert!(e.contains("choose one with function"), "{e}");
        let e = Plan::new(&d, &["a".into(), "b".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("differ in more than their fixed batch size"),
            "{e}"
        );
    }

    #[test]
    fn states_need_known_shapes() {
        assert_eq!(
            spec("acc", "float32", &[1, 4]).fixed_shape().unwrap(),
            [1, 4]
        );
        assert!(spec("acc", "float32", &[-1, 4]).fixed_shape().is_err());
        assert_eq!(spec("acc", "float32", &[1, 4]).line(), "acc FP32 [1,4]");
    }
}
