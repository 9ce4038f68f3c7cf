//! Classifier outputs in pomme terms.
//!
//! Core ML gives a classifier's probabilities as a dictionary (label →
//! probability) and its prediction as a string or int64 feature. pomme serves
//! the probabilities as an `FP32 [labels]` tensor in the order of the model's
//! class labels (the reader's [`ClassLabels`], also the output spec's
//! `labels`) and the label as a one-element BYTES or INT64 tensor. Triton's
//! `parameters.classification` top-k over such an output is the server's
//! (`pomme_kserve::classification`), for every backend.

use crate::reader::ClassLabels;
use pomme_core::{Error, Result};
use std::collections::HashMap;

/// A dictionary key as Core ML returns it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LabelKey {
    String(String),
    Int64(i64),
}

/// Probabilities in the order of `labels`, from Core ML's dictionary. A label
/// the dictionary leaves out scores 0; a key that is no label is an error
/// (the model and its labels disagree).
pub fn ordered_probabilities(labels: &ClassLabels, dict: &[(LabelKey, f64)]) -> Result<Vec<f32>> {
    let index: HashMap<LabelKey, usize> = match labels {
        ClassLabels::Strings(v) => v
            .iter()
            .enumerate()
            .map(|(i, l)| (LabelKey::String(l.clone()), i))
            .collect(),
        ClassLabels::Int64(v) => v
            .iter()
            .enumerate()
            .map(|(i, &l)| (LabelKey::Int64(l), i))
            .collect(),
    };
    let mut out = vec![0f32; labels.len()];
    for (key, p) in dict {
        let i = index.get(key).ok_or_else(|| {
            Error::InferenceFailed(format!(
                "Core ML returned a probability for {key:?}, which is not one of the model's {} class labels",
                labels.len()
            ))
        })?;
        out[*i] = *p as f32;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn animals() -> ClassLabels {
        ClassLabels::Strings(vec!["cat".into(), "dog".into(), "bird".into()])
    }

    #[test]
    fn probabilities_follow_label_order_not_dictionary_order() {
        let dict = [
            (LabelKey::String("bird".into()), 0.5),
            (LabelKey::String("cat".into()), 0.2),
        ];
        assert_eq!(
            ordered_probabilities(&animals(), &dict).unwrap(),
            [0.2, 0.0, 0.5]
        );
        let ints = ClassLabels::Int64(vec![10, 20, 30]);
        let dict = [(LabelKey::Int64(30), 1.0), (LabelKey::Int64(10), 0.0)];
        assert_eq!(
            ordered_probabilities(&ints, &dict).unwrap(),
            [0.0, 0.0, 1.0]
        );
        let e = ordered_probabilities(&ints, &[(LabelKey::Int64(40), 1.0)]).unwrap_err();
        assert!(matches!(e, Error::InferenceFailed(_)), "{e}");
        let e = ordered_probabilities(&animals(), &[(LabelKey::Int64(1), 1.0)]).unwrap_err();
        assert!(e.to_string().contains("3 class labels"), "{e}");
    }
}
