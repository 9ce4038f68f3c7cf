//! Which Core ML prediction call a job takes and which outputs get
//! pre-allocated backings, decided in plain Rust so it is tested everywhere
//! (the calls themselves are in `native::model`, macOS only).

use pomme_core::{DType, Dim, TensorSpec};

/// The `MLModel` call for one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictCall {
    /// `predictionsFromBatch:options:error:` over an `MLArrayBatchProvider`:
    /// the job has several rows of a batch pomme added (`virtual_batch`).
    Batch,
    /// `predictionFromFeatures:options:completionHandler:` (macOS 14+).
    Async,
    /// `predictionFromFeatures:options:error:` (older macOS), or
    /// `predictionFromFeatures:usingState:options:error:` for a sequence.
    Sync,
}

/// The call for a job of `rows` rows. `batch_added`: the served signature's
/// batch dimension is pomme's (rows become separate predictions); a model
/// whose own batch is flexible takes the rows in one prediction. Stateful
/// jobs run synchronously on their sequence's state. `async_available`: the
/// OS has the completion-handler API (macOS 14+).
pub fn predict_call(
    rows: usize,
    batch_added: bool,
    stateful: bool,
    async_available: bool,
) -> PredictCall {
    if batch_added && rows > 1 && !stateful {
        PredictCall::Batch
    } else if !stateful && async_available {
        PredictCall::Async
    } else {
        PredictCall::Sync
    }
}

/// The data type and shape of a pre-allocated `MLMultiArray` for an output
/// (`MLPredictionOptions.outputBackings`, macOS 11+), when one fits: a
/// multi-array output of fixed shape in a type Core ML writes (FP32, FP16,
/// FP64, INT32). Flexible shapes are left to Core ML (a backing of the wrong
/// shape fails the prediction); batches too (one backing per prediction).
pub fn output_backing(
    spec: &TensorSpec,
    multiarray: bool,
    call: PredictCall,
) -> Option<(DType, Vec<usize>)> {
    if !multiarray || call == PredictCall::Batch || spec.labels.is_some() {
        return None;
    }
    if !matches!(
        spec.dtype,
        DType::F32 | DType::F16 | DType::F64 | DType::I32
    ) {
        return None;
    }
    let dims: Vec<usize> = spec
        .shape
        .dims()
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => Some(*n),
            _ => None,
        })
        .collect::<Option<_>>()?;
    (!dims.is_empty() && dims.iter().all(|&d| d > 0)).then_some((spec.dtype, dims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pomme_core::Shape;

    #[test]
    fn calls_by_rows_state_and_os() {
        use PredictCall::*;
        assert_eq!(predict_call(4, true, false, true), Batch);
        assert_eq!(predict_call(4, true, false, false), Batch);
        assert_eq!(predict_call(1, true, false, true), Async);
        // The model's own flexible batch: one prediction.
        assert_eq!(predict_call(4, false, false, true), Async);
        assert_eq!(predict_call(1, false, false, false), Sync);
        assert_eq!(predict_call(1, false, true, true), Sync);
        assert_eq!(predict_call(3, true, true, true), Sync);
    }

    #[test]
    fn backings_only_for_fixed_multiarrays_of_one_prediction() {
        let fixed = TensorSpec::new("y", DType::F32, Shape::fixed(&[1, 10]));
        assert_eq!(
            output_backing(&fixed, true, PredictCall::Async),
            Some((DType::F32, vec![1, 10]))
        );
        assert!(output_backing(&fixed, true, PredictCall::Sync).is_some());
        assert_eq!(output_backing(&fixed, true, PredictCall::Batch), None);
        assert_eq!(output_backing(&fixed, false, PredictCall::Sync), None);
        let flexible = TensorSpec::new(
            "y",
            DType::F32,
            Shape(vec![Dim::Symbolic("?".into()), Dim::Fixed(10)]),
        );
        assert_eq!(output_backing(&flexible, true, PredictCall::Sync), None);
        let int8 = TensorSpec::new("y", DType::I8, Shape::fixed(&[4]));
        assert_eq!(output_backing(&int8, true, PredictCall::Sync), None);
        let probs = fixed.clone().with_labels(vec!["a".into()]);
        assert_eq!(output_backing(&probs, true, PredictCall::Sync), None);
        let empty = TensorSpec::new("y", DType::F32, Shape::fixed(&[0, 3]));
        assert_eq!(output_backing(&empty, true, PredictCall::Sync), None);
    }
}
