//! Triton's classification extension: an output requested with
//! `parameters.classification = k` (`class_count` in Triton's clients) comes
//! back as the `k` highest scores of each row, as BYTES strings
//! `"<score>:<index>:<label>"` (`"<score>:<index>"` when the output has no
//! labels), highest first; the last dimension (the classes) becomes `k`.

use bytes::Bytes;
use pomme_core::{DType, Error, Result, Tensor};

/// The top-`k` strings of one row of scores; ties keep the lower index first.
pub fn top_k(scores: &[f64], labels: Option<&[String]>, k: usize) -> Vec<String> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| match labels.and_then(|l| l.get(i)) {
            Some(label) => format!("{}:{i}:{label}", scores[i] as f32),
            None => format!("{}:{i}", scores[i] as f32),
        })
        .collect()
}

/// `output` (scores over its last dimension) as Triton's classification of
/// `k` classes per row.
pub fn classify(
    name: &str,
    output: &Tensor,
    k: usize,
    labels: Option<&[String]>,
) -> Result<Tensor> {
    if output.dtype() == DType::Bytes || output.dtype() == DType::Bool {
        return Err(Error::invalid_input(format!(
            "output '{name}' is {}, not scores: it cannot be classified",
            output.dtype()
        )));
    }
    let shape = output.shape();
    let classes = shape.last().copied().unwrap_or(1).max(1);
    let values = output.to_f64_vec()?;
    let take = k.min(classes);
    let mut strings = Vec::with_capacity(values.len() / classes * take);
    for row in values.chunks(classes) {
        strings.extend(top_k(row, labels, take).into_iter().map(Bytes::from));
    }
    let mut out_shape = shape.to_vec();
    match out_shape.last_mut() {
        Some(last) => *last = take,
        None => out_shape.push(take),
    }
    Tensor::from_strings(out_shape, strings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn animals() -> Vec<String> {
        ["cat", "dog", "bird"].map(String::from).to_vec()
    }

    #[test]
    fn top_k_is_tritons_format() {
        let scores = [0.1, 0.7, 0.2];
        assert_eq!(
            top_k(&scores, Some(&animals()), 2),
            ["0.7:1:dog", "0.2:2:bird"]
        );
        assert_eq!(top_k(&scores, None, 1), ["0.7:1"]);
        assert_eq!(top_k(&[0.5, 0.5], None, 2), ["0.5:0", "0.5:1"]);
    }

    #[test]
    fn rows_are_classified_over_the_last_dimension() {
        let t = Tensor::from_vec(vec![2, 3], vec![0.1f32, 0.7, 0.2, 0.9, 0.05, 0.05]).unwrap();
        let c = classify("probs", &t, 1, Some(&animals())).unwrap();
        assert_eq!(c.shape(), &[2, 1]);
        let s: Vec<&[u8]> = c.strings().unwrap().iter().map(|b| &b[..]).collect();
        assert_eq!(s, [&b"0.7:1:dog"[..], &b"0.9:0:cat"[..]]);
        // k past the classes gives them all.
        assert_eq!(classify("probs", &t, 10, None).unwrap().shape(), &[2, 3]);
        let words = Tensor::from_strings(vec![1], vec![Bytes::from_static(b"x")]).unwrap();
        let e = classify("label", &words, 1, None).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    }
}
