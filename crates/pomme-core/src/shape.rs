//! Shapes whose dimensions may be symbolic (`batch`, `seq`) or unknown.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One dimension of a declared shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed extent.
    Fixed(usize),
    /// A named dimension fixed per request (`batch`, `seq`); `"?"` is an anonymous one.
    Symbolic(String),
}

impl Dim {
    /// Whether a concrete extent satisfies this dimension.
    pub fn accepts(&self, n: usize) -> bool {
        match self {
            Dim::Fixed(f) => *f == n,
            Dim::Symbolic(_) => true,
        }
    }

    /// The fixed extent, if any.
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(f) => Some(*f),
            Dim::Symbolic(_) => None,
        }
    }

    /// The value KServe / Triton metadata use: the extent, or -1 when variable.
    pub fn to_i64(&self) -> i64 {
        self.fixed().map(|f| f as i64).unwrap_or(-1)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
        }
    }
}

/// A declared shape: a list of fixed or symbolic dimensions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// A shape of fixed dimensions.
    pub fn fixed(dims: &[usize]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::Fixed(d)).collect())
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The dimensions.
    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    /// Whether the first dimension is symbolic, so requests can be batched along it.
    pub fn has_symbolic_batch(&self) -> bool {
        matches!(self.0.first(), Some(Dim::Symbolic(_)))
    }

    /// Whether a concrete shape satisfies this declared one (rank and fixed extents).
    pub fn accepts(&self, concrete: &[usize]) -> bool {
        self.0.len() == concrete.len() && self.0.iter().zip(concrete).all(|(d, &n)| d.accepts(n))
    }

    /// The KServe metadata form: -1 for variable dimensions.
    pub fn to_i64(&self) -> Vec<i64> {
        self.0.iter().map(Dim::to_i64).collect()
    }

    /// The fixed extents, when every dimension is fixed.
    pub fn as_fixed(&self) -> Option<Vec<usize>> {
        self.0.iter().map(Dim::fixed).collect()
    }

    /// Replaces every symbolic dimension named `name` by `value`.
    pub fn substitute(&self, name: &str, value: usize) -> Shape {
        Shape(
            self.0
                .iter()
                .map(|d| match d {
                    Dim::Symbolic(s) if s == name => Dim::Fixed(value),
                    other => other.clone(),
                })
                .collect(),
        )
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

impl From<Vec<Dim>> for Shape {
    fn from(v: Vec<Dim>) -> Self {
        Shape(v)
    }
}

/// Formats a concrete shape as `[2,3]`, for error messages.
pub fn fmt_dims(dims: &[usize]) -> String {
    let inner: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolic_batch_accepts_any_batch() {
        let s = Shape(vec![Dim::Symbolic("batch".into()), Dim::Fixed(3)]);
        assert!(s.accepts(&[1, 3]));
        assert!(s.accepts(&[64, 3]));
        assert!(!s.accepts(&[1, 4]));
        assert!(!s.accepts(&[1, 3, 1]));
        assert_eq!(s.to_string(), "[batch,3]");
        assert_eq!(s.to_i64(), vec![-1, 3]);
        assert!(s.has_symbolic_batch());
        assert_eq!(s.substitute("batch", 2), Shape::fixed(&[2, 3]));
    }

    #[test]
    fn serde_is_plain() {
        let s = Shape(vec![Dim::Symbolic("batch".into()), Dim::Fixed(3)]);
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, r#"["batch",3]"#);
        let back: Shape = serde_json::from_str(&j).unwrap();
        assert_eq!(back, s);
    }
}
