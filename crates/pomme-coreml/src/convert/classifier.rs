//! Classifier outputs in pomme terms, and Triton's classification extension.
//!
//! Core ML gives a classifier's probabilities as a dictionary (label →
//! probability) and its prediction as a string or int64 feature. pomme serves
//! the probabilities as an `FP32 [labels]` tensor in the order of the model's
//! class labels (the reader's [`ClassLabels`]) and the label as a one-element
//! BYTES or INT64 tensor. [`top_k`] answers an output's
//! `parameters.classification = k` the way Triton does: `k` strings
//! `"<score>:<index>:<label>"`, highest score first.

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

/// Triton's classification result for one row of scores: the `k` highest
/// (ties: the lower index first) as `"<score>:<index>:<label>"`, or
/// `"<score>:<index>"` without labels. `k` larger than the row gives the row.
pub fn top_k(scores: &[f32], labels: Option<&ClassLabels>, k: usize) -> Vec<String> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| match labels.and_then(|l| l.label(i)) {
            Some(label) => format!("{}:{i}:{label}", scores[i]),
            None => format!("{}:{i}", scores[i]),
        })
        .collect()
}

/// `parameters.classification` as a count: a positive integer.
pub fn class_count(value: &serde_json::Value) -> Result<usize> {
    value
        .as_u64()
        .filter(|&k| k > 0)
        .and_then(|k| usize::try_from(k).ok())
        .ok_or_else(|| {
            Error::invalid_input(format!(
                "classification must be a positive integer (the number of classes to return), got {value}"
            ))
        })
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

    #[test]
    fn top_k_is_tritons_format() {
        let scores = [0.1f32, 0.7, 0.2];
        assert_eq!(
            top_k(&scores, Some(&animals()), 2),
            ["0.7:1:dog", "0.2:2:bird"]
        );
        assert_eq!(top_k(&scores, None, 1), ["0.7:1"]);
        assert_eq!(top_k(&scores, Some(&animals()), 10).len(), 3);
        // Ties keep the lower index first.
        assert_eq!(top_k(&[0.5, 0.5], None, 2), ["0.5:0", "0.5:1"]);
        let ints = ClassLabels::Int64(vec![10, 20, 30]);
        assert_eq!(top_k(&scores, Some(&ints), 1), ["0.7:1:20"]);
    }

    #[test]
    fn class_count_wants_a_positive_integer() {
        assert_eq!(class_count(&serde_json::json!(3)).unwrap(), 3);
        for bad in [
            serde_json::json!(0),
            serde_json::json!(-1),
            serde_json::json!("3"),
        ] {
            let e = class_count(&bad).unwrap_err();
            assert!(e.to_string().contains("positive integer"), "{e}");
        }
    }
}
