//! What a model promises: named, typed, shaped inputs and outputs.

use crate::shape::fmt_dims;
use crate::{DType, Error, Result, Shape, Tensor};
use serde::{Deserialize, Serialize};

/// One declared input or output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Shape,
    /// A wider type also accepted for this input and narrowed to `dtype` with
    /// a range check ([`ModelSignature::arrange_inputs`]): Core AI takes
    /// int64 token ids as int32, while clients written for the ONNX model
    /// send INT64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepts: Option<DType>,
    /// Shapes the input takes beyond what its symbolic dimensions say (a
    /// model that runs only some sizes: Core ML's enumerated shapes and size
    /// ranges), checked at the edge like the shape itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<AllowedShapes>,
    /// Class labels of an output of scores, in the order of its last
    /// dimension (a classifier's probabilities): Triton's classification
    /// extension names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

/// The concrete shapes a flexible input may take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllowedShapes {
    /// Exactly one of these shapes.
    OneOf(Vec<Vec<usize>>),
    /// Each dimension within `[min, max]` (`None`: no maximum).
    Ranges(Vec<(usize, Option<usize>)>),
}

impl AllowedShapes {
    pub fn allows(&self, dims: &[usize]) -> bool {
        match self {
            AllowedShapes::OneOf(shapes) => shapes.iter().any(|s| s == dims),
            AllowedShapes::Ranges(r) => {
                r.len() == dims.len()
                    && r.iter()
                        .zip(dims)
                        .all(|(&(lo, hi), &d)| d >= lo && hi.is_none_or(|h| d <= h))
            }
        }
    }
}

impl std::fmt::Display for AllowedShapes {
    /// `[1,3,8,8] or [2,3,8,8]`; `[1..8,3,4..64]` (`4..`: no maximum).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllowedShapes::OneOf(shapes) => {
                let s: Vec<String> = shapes.iter().map(|s| fmt_dims(s)).collect();
                f.write_str(&s.join(" or "))
            }
            AllowedShapes::Ranges(r) => {
                let s: Vec<String> = r
                    .iter()
                    .map(|&(lo, hi)| match hi {
                        Some(h) if h == lo => lo.to_string(),
                        Some(h) => format!("{lo}..{h}"),
                        None => format!("{lo}.."),
                    })
                    .collect();
                write!(f, "[{}]", s.join(","))
            }
        }
    }
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: DType, shape: Shape) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape,
            accepts: None,
            allowed: None,
            labels: None,
        }
    }

    /// This spec, with class labels for its last dimension.
    pub fn with_labels(mut self, labels: Vec<String>) -> TensorSpec {
        self.labels = Some(labels);
        self
    }

    /// This spec, taking only `allowed` shapes.
    pub fn allowing(mut self, allowed: AllowedShapes) -> TensorSpec {
        self.allowed = Some(allowed);
        self
    }

    /// This spec, also accepting `wider` tensors (narrowed with a range check).
    pub fn accepting(mut self, wider: DType) -> TensorSpec {
        self.accepts = Some(wider);
        self
    }

    /// Checks one tensor against this spec, naming the problem on failure.
    pub fn check(&self, t: &Tensor) -> Result<()> {
        if t.dtype() != self.dtype && Some(t.dtype()) != self.accepts {
            let expected = match self.accepts {
                Some(w) => format!("{} or {w}", self.dtype),
                None => self.dtype.to_string(),
            };
            return Err(Error::invalid_input(format!(
                "input '{}' has datatype {}, expected {expected}",
                self.name,
                t.dtype(),
            )));
        }
        if !self.shape.accepts(t.shape()) {
            return Err(Error::invalid_input(format!(
                "input '{}' has shape {}, expected {}",
                self.name,
                fmt_dims(t.shape()),
                self.shape
            )));
        }
        if let Some(a) = &self.allowed
            && !a.allows(t.shape())
        {
            return Err(Error::invalid_input(format!(
                "input '{}' has shape {}; the model takes {a}",
                self.name,
                fmt_dims(t.shape()),
            )));
        }
        Ok(())
    }
}

/// A model's inputs and outputs, in the model's order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSignature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl ModelSignature {
    /// Whether every input and output has a symbolic first dimension, so that
    /// requests can be concatenated along it.
    pub fn is_batchable(&self) -> bool {
        !self.inputs.is_empty()
            && self
                .inputs
                .iter()
                .chain(&self.outputs)
                .all(|s| s.shape.has_symbolic_batch())
    }

    /// The output spec named `name`.
    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|s| s.name == name)
    }

    /// Orders named inputs as the model declares them and checks each one:
    /// unknown, missing and duplicate names, dtype and shape. When the model is
    /// batchable, every input must also agree on the batch size.
    pub fn arrange_inputs(&self, named: Vec<(String, Tensor)>) -> Result<Vec<Tensor>> {
        let mut slots: Vec<Option<Tensor>> = vec![None; self.inputs.len()];
        for (name, tensor) in named {
            let Some(i) = self.inputs.iter().position(|s| s.name == name) else {
                let known: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
                return Err(Error::invalid_input(format!(
                    "unknown input '{name}' (the model takes {})",
                    known.join(", ")
                )));
            };
            if slots[i].is_some() {
                return Err(Error::invalid_input(format!("input '{name}' given twice")));
            }
            let spec = &self.inputs[i];
            spec.check(&tensor)?;
            slots[i] = Some(if tensor.dtype() == spec.dtype {
                tensor
            } else {
                narrow(&spec.name, &tensor, spec.dtype)?
            });
        }
        let missing: Vec<&str> = self
            .inputs
            .iter()
            .zip(&slots)
            .filter(|(_, t)| t.is_none())
            .map(|(s, _)| s.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(Error::invalid_input(format!(
                "missing input(s): {}",
                missing.join(", ")
            )));
        }
        let tensors: Vec<Tensor> = slots
            .into_iter()
            .map(|t| t.expect("checked above"))
            .collect();
        if self.is_batchable() {
            let b = tensors[0].shape()[0];
            if let Some((s, t)) = self
                .inputs
                .iter()
                .zip(&tensors)
                .find(|(_, t)| t.shape()[0] != b)
            {
                return Err(Error::invalid_input(format!(
                    "input '{}' has batch size {}, but '{}' has {}",
                    s.name,
                    t.shape()[0],
                    self.inputs[0].name,
                    b
                )));
            }
        }
        Ok(tensors)
    }
}

/// `t` converted to the narrower `to`, refusing any value `to` cannot hold.
/// Supported: INT64 → INT32 (the only narrowing a backend declares today).
fn narrow(name: &str, t: &Tensor, to: DType) -> Result<Tensor> {
    match (t.dtype(), to) {
        (DType::I64, DType::I32) => {
            let wide = t.as_slice::<i64>()?;
            let mut out = Vec::with_capacity(wide.len());
            for (i, &v) in wide.iter().enumerate() {
                let Ok(n) = i32::try_from(v) else {
                    return Err(Error::invalid_input(format!(
                        "input '{name}' element {i} is {v}, outside INT32's range (the model takes INT32)"
                    )));
                };
                out.push(n);
            }
            Tensor::from_vec(t.shape().to_vec(), out)
        }
        (from, to) => Err(Error::Internal(format!(
            "input '{name}': no narrowing from {from} to {to}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dim;

    #[test]
    fn allowed_shapes_are_checked_and_named() {
        let sym = || Dim::Symbolic("?".into());
        let spec = TensorSpec::new("x", DType::F32, Shape(vec![sym(), Dim::Fixed(2)]))
            .allowing(AllowedShapes::OneOf(vec![vec![1, 2], vec![4, 2]]));
        let t = |r: usize| Tensor::zeros(DType::F32, vec![r, 2]).unwrap();
        spec.check(&t(4)).unwrap();
        let e = spec.check(&t(3)).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        assert!(
            e.to_string()
                .contains("input 'x' has shape [3,2]; the model takes [1,2] or [4,2]"),
            "{e}"
        );
        let spec =
            TensorSpec::new("y", DType::F32, Shape(vec![sym(), Dim::Fixed(3), sym()])).allowing(
                AllowedShapes::Ranges(vec![(1, Some(8)), (3, Some(3)), (4, None)]),
            );
        let t = |a: usize, b: usize| Tensor::zeros(DType::F32, vec![a, 3, b]).unwrap();
        spec.check(&t(8, 1000)).unwrap();
        let e = spec.check(&t(9, 4)).unwrap_err().to_string();
        assert!(e.contains("the model takes [1..8,3,4..]"), "{e}");
        assert!(spec.check(&t(1, 3)).is_err());
        // Serialized only when set.
        let plain = serde_json::to_string(&TensorSpec::new("z", DType::F32, Shape::fixed(&[1])));
        assert!(!plain.unwrap().contains("allowed"));
    }

    fn sig() -> ModelSignature {
        let batch = |n| Shape(vec![Dim::Symbolic("batch".into()), Dim::Fixed(n)]);
        ModelSignature {
            inputs: vec![
                TensorSpec::new("a", DType::F32, batch(2)),
                TensorSpec::new("b", DType::I64, batch(1)),
            ],
            outputs: vec![TensorSpec::new("y", DType::F32, batch(2))],
        }
    }

    #[test]
    fn arranges_in_model_order() {
        let a = Tensor::zeros(DType::F32, vec![3, 2]).unwrap();
        let b = Tensor::zeros(DType::I64, vec![3, 1]).unwrap();
        let out = sig()
            .arrange_inputs(vec![("b".into(), b.clone()), ("a".into(), a.clone())])
            .unwrap();
        assert_eq!(out, vec![a, b]);
    }

    #[test]
    fn names_each_problem() {
        let s = sig();
        let a = Tensor::zeros(DType::F32, vec![3, 2]).unwrap();
        let e = s.arrange_inputs(vec![("a".into(), a.clone())]).unwrap_err();
        assert_eq!(e.to_string(), "invalid input: missing input(s): b");
        let e = s
            .arrange_inputs(vec![("zz".into(), a.clone())])
            .unwrap_err();
        assert!(e.to_string().contains("unknown input 'zz'"), "{e}");
        let wrong = Tensor::zeros(DType::F64, vec![3, 2]).unwrap();
        let e = s.arrange_inputs(vec![("a".into(), wrong)]).unwrap_err();
        assert!(
            e.to_string().contains("datatype FP64, expected FP32"),
            "{e}"
        );
        let wrong = Tensor::zeros(DType::F32, vec![3, 5]).unwrap();
        let e = s.arrange_inputs(vec![("a".into(), wrong)]).unwrap_err();
        assert!(
            e.to_string().contains("shape [3,5], expected [batch,2]"),
            "{e}"
        );
        let b = Tensor::zeros(DType::I64, vec![4, 1]).unwrap();
        let e = s
            .arrange_inputs(vec![("a".into(), a), ("b".into(), b)])
            .unwrap_err();
        assert!(e.to_string().contains("batch size"), "{e}");
    }

    #[test]
    fn narrows_int64_to_int32_with_a_range_check() {
        let s = ModelSignature {
            inputs: vec![
                TensorSpec::new("ids", DType::I32, Shape::fixed(&[1, 3])).accepting(DType::I64),
            ],
            outputs: vec![],
        };
        let ok = Tensor::from_vec(vec![1, 3], vec![1i64, -2, i32::MAX as i64]).unwrap();
        let out = s.arrange_inputs(vec![("ids".into(), ok)]).unwrap();
        assert_eq!(out[0].to_vec::<i32>().unwrap(), vec![1, -2, i32::MAX]);
        let same = Tensor::from_vec(vec![1, 3], vec![4i32, 5, 6]).unwrap();
        assert_eq!(
            s.arrange_inputs(vec![("ids".into(), same.clone())])
                .unwrap()[0],
            same
        );
        let big = Tensor::from_vec(vec![1, 3], vec![1i64, 1 << 40, 0]).unwrap();
        let e = s.arrange_inputs(vec![("ids".into(), big)]).unwrap_err();
        assert!(
            e.to_string()
                .contains("'ids' element 1 is 1099511627776, outside INT32's range"),
            "{e}"
        );
        let f = Tensor::zeros(DType::F32, vec![1, 3]).unwrap();
        let e = s.arrange_inputs(vec![("ids".into(), f)]).unwrap_err();
        assert!(e.to_string().contains("expected INT32 or INT64"), "{e}");
    }
}
