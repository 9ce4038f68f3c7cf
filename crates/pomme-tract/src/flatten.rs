//! A replacement for tract-hir's ONNX `Flatten`, which refuses inputs with more
//! than one symbolic dimension ("square of symbols"). BERT-style exports
//! flatten an `attention_mask` of shape `[batch, seq]`, so without this such
//! models only load with a fixed batch or sequence length. `batch*seq` is an
//! ordinary tract dimension expression; this op computes it and reshapes.

use tract_onnx::tract_core::ops::change_axes::to_axis_ops_with_tf_rules;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::array::Flatten;

/// ONNX `Flatten(axis)`: `[d0..dn]` → `[d0*..*d(axis-1), d(axis)*..*dn]`.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct SymbolicFlatten {
    axis: i64,
}

impl SymbolicFlatten {
    fn compute_shape(&self, shape: &[TDim]) -> TractResult<[TDim; 2]> {
        let rank = shape.len() as i64;
        let axis = if self.axis >= 0 {
            self.axis
        } else {
            self.axis + rank
        };
        ensure!(
            (0..=rank).contains(&axis),
            "Flatten axis {} out of range for rank {rank}",
            self.axis
        );
        let axis = axis as usize;
        Ok([
            shape[..axis].iter().cloned().product::<TDim>().simplify(),
            shape[axis..].iter().cloned().product::<TDim>().simplify(),
        ])
    }
}

impl Expansion for SymbolicFlatten {
    fn name(&self) -> StaticName {
        "Flatten".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.given(&inputs[0].shape, move |s, shape| {
            let [a, b] = self.compute_shape(&shape)?;
            s.equals(&outputs[0].shape, ShapeFactoid::from(vec![a, b]))
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let input_shape = model.outlet_fact(inputs[0])?.shape.to_tvec();
        let output_shape = self.compute_shape(&input_shape)?;
        let mut wire = tvec!(inputs[0]);
        for (ix, op) in to_axis_ops_with_tf_rules(&input_shape, &output_shape)?
            .into_iter()
            .enumerate()
        {
            wire = model.wire_node(format!("{prefix}.{ix}"), op, &wire)?;
        }
        Ok(wire)
    }
}

/// Swaps every tract-hir `Flatten` in `model` for [`SymbolicFlatten`].
pub(crate) fn patch(model: &mut InferenceModel) {
    for node in model.nodes_mut() {
        let axis = node
            .op_as::<Box<dyn Expansion>>()
            .and_then(|e| e.as_any().downcast_ref::<Flatten>())
            .map(|f| f.axis);
        if let Some(axis) = axis {
            node.op = expand(SymbolicFlatten { axis });
        }
    }
}
