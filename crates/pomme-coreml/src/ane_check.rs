//! Neural Engine compatibility pre-check, from the parsed model alone.
//!
//! Core ML never fails because of the ANE: work it can't place there silently
//! runs on the GPU or CPU (`computeUnits` allows devices, it does not place
//! ops). These rules flag what is known to push work off the ANE, so a person
//! can see it before loading on a Mac; the authoritative answer on a Mac is the
//! compute plan ([`crate::placement`]). Each rule names its source. Apple does
//! not document the ANE's op set; rules marked "third-party" are empirical
//! observations, not Apple statements.

use crate::reader::{CoreMlInfo, FeatureInfo, FeatureKind, ShapeFlexibility};
use serde::{Deserialize, Serialize};
use std::fmt;

/// How much a finding matters for ANE placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; does not by itself move work off the ANE.
    Info,
    /// Known or likely to move some or all work to the GPU / CPU.
    Warning,
}

impl Severity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
        }
    }
}

/// One pre-check result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable rule id (`range-shape`, `large-dimension`, ...).
    pub rule: &'static str,
    /// One line naming what was found.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}] {}",
            self.severity.as_str(),
            self.rule,
            self.message
        )
    }
}

/// Largest dimension assumed to fit the ANE.
pub const ANE_MAX_DIM: u64 = 16_384;

/// Most enumerated shapes coremltools supports per model.
pub const MAX_ENUMERATED_SHAPES: usize = 128;

/// Neural-network layer types (the `NeuralNetworkLayer.layer` oneof names)
/// that keep work off the ANE.
// Source: hollance/neural-engine, docs/unsupported-layers.md (third-party,
// empirical): "RNN layers such as LSTM or GRU", "gather", "broadcastable and
// 'ND' layers", "custom layers". Custom layers: Apple's MLCustomLayer protocol
// offers only `evaluateOnCPU` and an optional Metal `encodeToCommandBuffer`, so
// there is no Neural Engine path (Apple docs, MLCustomLayer).
const NN_OFF_ANE: &[(&str, &str)] = &[
    ("simpleRecurrent", "recurrent layer"),
    ("gru", "recurrent layer"),
    ("uniDirectionalLSTM", "recurrent layer"),
    ("biDirectionalLSTM", "recurrent layer"),
    ("gather", "gather"),
    ("gatherND", "gather"),
    ("gatherAlongAxis", "gather"),
    ("scatter", "scatter"),
    ("scatterND", "scatter"),
    ("scatterAlongAxis", "scatter"),
    ("custom", "custom layer (CPU / GPU only)"),
];

/// ML Program op types that keep work off the ANE.
// Source: the same third-party list (hollance/neural-engine, unsupported-layers.md)
// applied to the MIL names of those layers (recurrent ops, gather / scatter).
const MIL_OFF_ANE: &[(&str, &str)] = &[
    ("lstm", "recurrent op"),
    ("gru", "recurrent op"),
    ("rnn", "recurrent op"),
    ("gather", "gather"),
    ("gather_nd", "gather"),
    ("gather_along_axis", "gather"),
    ("scatter", "scatter"),
    ("scatter_nd", "scatter"),
    ("scatter_along_axis", "scatter"),
];

/// Runs every rule over a parsed model; findings come warnings first, in rule order.
pub fn check(info: &CoreMlInfo) -> Vec<Finding> {
    let mut out = Vec::new();
    model_type(info, &mut out);
    for f in &info.inputs {
        flexible_shapes(f, &mut out);
    }
    large_dimensions(info, &mut out);
    compute_dtypes(info, &mut out);
    io_dtypes(info, &mut out);
    ops(info, &mut out);
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

fn push(out: &mut Vec<Finding>, severity: Severity, rule: &'static str, message: String) {
    out.push(Finding {
        severity,
        rule,
        message,
    });
}

fn model_type(info: &CoreMlInfo, out: &mut Vec<Finding>) {
    // Source: Apple docs, MLModelStructure: a model's structure is a neural
    // network, an ML program or a pipeline; only those have compute-device
    // usage in MLComputePlan. Other model types (trees, GLMs, SVMs, ...) are
    // classic models Core ML runs on the CPU.
    let nn_like = matches!(
        info.model_type.as_str(),
        "neuralNetwork"
            | "neuralNetworkClassifier"
            | "neuralNetworkRegressor"
            | "mlProgram"
            | "pipeline"
            | "pipelineClassifier"
            | "pipelineRegressor"
    );
    if !nn_like {
        push(
            out,
            Severity::Warning,
            "model-type",
            format!(
                "model type '{}' is not a neural network or ML Program; Core ML runs it on the CPU",
                info.model_type
            ),
        );
    }
}

fn flexible_shapes(f: &FeatureInfo, out: &mut Vec<Finding>) {
    match &f.flexibility {
        ShapeFlexibility::Fixed => {}
        // Source: Apple Developer Forums thread 724930 (Apple engineer): with
        // range flexibility the ANE runs only the default shape; other shapes
        // run on the GPU / CPU. coremltools docs ("Flexible Input Shapes"):
        // prefer enumerated shapes for performance.
        ShapeFlexibility::Range(ranges) => {
            let dims: Vec<String> = ranges.iter().map(ToString::to_string).collect();
            let default: Vec<String> = f.shape.iter().map(u64::to_string).collect();
            push(
                out,
                Severity::Warning,
                "range-shape",
                format!(
                    "input '{}' has a range-flexible shape [{}]: only the default shape [{}] can run on the Neural Engine, others go to GPU/CPU; enumerated shapes keep each on the ANE",
                    f.name,
                    dims.join(","),
                    default.join(",")
                ),
            );
        }
        // Source: same forum thread: each enumerated shape can run on the ANE.
        // coremltools docs ("Flexible Input Shapes"): up to 128 enumerated shapes.
        ShapeFlexibility::Enumerated(shapes) => {
            if shapes.len() > MAX_ENUMERATED_SHAPES {
                push(
                    out,
                    Severity::Warning,
                    "enumerated-shapes",
                    format!(
                        "input '{}' enumerates {} shapes, more than the {} coremltools supports",
                        f.name,
                        shapes.len(),
                        MAX_ENUMERATED_SHAPES
                    ),
                );
            } else {
                push(
                    out,
                    Severity::Info,
                    "enumerated-shapes",
                    format!(
                        "input '{}' has {} enumerated shapes; each can be specialized for the Neural Engine",
                        f.name,
                        shapes.len()
                    ),
                );
            }
        }
    }
}

fn large_dimensions(info: &CoreMlInfo, out: &mut Vec<Finding>) {
    // Source: third-party, empirical ("tensors with fewer than 16K elements per
    // dimension", e.g. jvoltci.github.io/mosaic, edge-ai/npu/apple-ane): the
    // ANE's tensor dimensions are limited to 16384; larger ones fall back.
    let too_big = |d: u64| d > ANE_MAX_DIM;
    for (side, list) in [("input", &info.inputs), ("output", &info.outputs)] {
        for f in list {
            let mut dims: Vec<u64> = f.shape.clone();
            match &f.flexibility {
                ShapeFlexibility::Enumerated(s) => dims.extend(s.iter().flatten()),
                ShapeFlexibility::Range(r) => {
                    dims.extend(r.iter().map(|r| r.upper.unwrap_or(u64::MAX)))
                }
                ShapeFlexibility::Fixed => {}
            }
            if let Some(&d) = dims.iter().filter(|&&d| too_big(d)).max() {
                let what = if d == u64::MAX {
                    "an unbounded dimension".to_string()
                } else {
                    format!("a dimension of {d}")
                };
                push(
                    out,
                    Severity::Warning,
                    "large-dimension",
                    format!(
                        "{side} '{}' allows {what}, above the Neural Engine's {ANE_MAX_DIM}",
                        f.name
                    ),
                );
            }
        }
    }
    if let Some((d, at)) = &info.compute.largest_dim
        && too_big(*d)
    {
        push(
            out,
            Severity::Warning,
            "large-dimension",
            format!(
                "op output {at} has a dimension of {d}, above the Neural Engine's {ANE_MAX_DIM}"
            ),
        );
    }
}

fn compute_dtypes(info: &CoreMlInfo, out: &mut Vec<Finding>) {
    let n = |k: &str| info.compute.value_dtypes.get(k).copied().unwrap_or(0);
    // Source: coremltools docs, "Typed Execution" and its workflow example: a
    // float 16 typed ML Program "is eligible to execute on a combination of the
    // Neural Engine, GPU and CPU"; a float 32 typed model "will execute on a
    // combination of the GPU and CPU".
    if n("FLOAT32") > 0 {
        push(
            out,
            Severity::Warning,
            "float32-compute",
            format!(
                "{} ML Program op outputs are float32: float32-typed ops run on GPU/CPU, not the Neural Engine (convert with compute_precision=FLOAT16)",
                n("FLOAT32")
            ),
        );
    }
    // Source: as above (the ANE computes in float16 only; third-party:
    // hollance/neural-engine docs/16-bit.md "The ANE appears to use float16 for
    // everything"): float64 and 64-bit integer compute cannot run there.
    for (dtype, what) in [("FLOAT64", "float64"), ("INT64", "int64")] {
        if n(dtype) > 0 {
            push(
                out,
                Severity::Warning,
                if dtype == "FLOAT64" {
                    "float64-compute"
                } else {
                    "int64-compute"
                },
                format!(
                    "{} ML Program op outputs are {what}; the Neural Engine does not compute in {what}",
                    n(dtype)
                ),
            );
        }
    }
}

fn io_dtypes(info: &CoreMlInfo, out: &mut Vec<Finding>) {
    // Inputs and outputs are converted at the boundary, so these are notes:
    // Core ML copies DOUBLE arrays to and from the compute precision.
    for (side, list) in [("input", &info.inputs), ("output", &info.outputs)] {
        for f in list {
            if f.kind == FeatureKind::MultiArray && f.data_type == "DOUBLE" {
                push(
                    out,
                    Severity::Info,
                    "float64-io",
                    format!(
                        "{side} '{}' is a DOUBLE array: converted at the model boundary (an extra copy each prediction)",
                        f.name
                    ),
                );
            }
        }
    }
}

fn ops(info: &CoreMlInfo, out: &mut Vec<Finding>) {
    let table = if info.model_type == "mlProgram" {
        MIL_OFF_ANE
    } else {
        NN_OFF_ANE
    };
    for (op, count) in &info.op_histogram {
        let hit = table.iter().find(|(name, _)| name == op);
        // "broadcastable and 'ND' layers" (hollance/neural-engine, third-party).
        let broadcastable = info.model_type != "mlProgram"
            && (op.ends_with("Broadcastable") || (op.ends_with("ND") && op != "gatherND"));
        if let Some((_, why)) = hit {
            push(
                out,
                Severity::Warning,
                "unsupported-op",
                format!("{count} × '{op}' ({why}): known to run off the Neural Engine"),
            );
        } else if broadcastable {
            push(
                out,
                Severity::Warning,
                "unsupported-op",
                format!(
                    "{count} × '{op}' (broadcastable / ND layer): reported to run off the Neural Engine"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::{Container, SizeRange};
    use std::collections::BTreeMap;

    fn info(model_type: &str) -> CoreMlInfo {
        CoreMlInfo {
            path: Default::default(),
            container: Container::MlModel,
            spec_version: 7,
            model_type: model_type.into(),
            inputs: vec![],
            outputs: vec![],
            states: vec![],
            signature: Default::default(),
            classifier: None,
            functions: vec![],
            default_function: None,
            metadata: Default::default(),
            op_histogram: BTreeMap::new(),
            weight_bytes: 0,
            parameters: 0,
            activation_bytes_estimate: 0,
            weight_files: vec![],
            compute: Default::default(),
            sub_models: vec![],
            is_updatable: false,
        }
    }

    fn array(name: &str, shape: &[u64], flex: ShapeFlexibility) -> FeatureInfo {
        FeatureInfo {
            name: name.into(),
            description: String::new(),
            kind: FeatureKind::MultiArray,
            optional: false,
            data_type: "FLOAT32".into(),
            shape: shape.to_vec(),
            flexibility: flex,
        }
    }

    fn rules(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|f| f.rule).collect()
    }

    #[test]
    fn clean_fp16_program_has_no_warnings() {
        let mut i = info("mlProgram");
        i.inputs = vec![array("x", &[1, 3, 224, 224], ShapeFlexibility::Fixed)];
        i.compute.value_dtypes.insert("FLOAT16".into(), 12);
        i.op_histogram.insert("conv".into(), 3);
        assert!(check(&i).is_empty(), "{:?}", check(&i));
    }

    #[test]
    fn range_shapes_and_big_dims_are_flagged() {
        let mut i = info("mlProgram");
        i.inputs = vec![array(
            "tokens",
            &[1, 16],
            ShapeFlexibility::Range(vec![
                SizeRange {
                    lower: 1,
                    upper: Some(1),
                },
                SizeRange {
                    lower: 1,
                    upper: None,
                },
            ]),
        )];
        i.outputs = vec![array("logits", &[1, 32_000], ShapeFlexibility::Fixed)];
        let f = check(&i);
        assert_eq!(
            rules(&f),
            ["range-shape", "large-dimension", "large-dimension"]
        );
        assert!(f[0].message.contains("default shape [1,16]"), "{}", f[0]);
        assert!(f[1].message.contains("unbounded"), "{}", f[1]);
        assert!(f[2].message.contains("32000"), "{}", f[2]);
        assert_eq!(
            f[0].to_string().split(' ').take(2).collect::<Vec<_>>(),
            ["warning", "[range-shape]"]
        );
    }

    #[test]
    fn enumerated_shapes_are_fine_up_to_128() {
        let mut i = info("mlProgram");
        let few = ShapeFlexibility::Enumerated(vec![vec![1, 3], vec![2, 3]]);
        i.inputs = vec![array("x", &[1, 3], few)];
        let f = check(&i);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Info);
        let many = ShapeFlexibility::Enumerated((1..=200).map(|b| vec![b, 3]).collect());
        i.inputs = vec![array("x", &[1, 3], many)];
        assert_eq!(check(&i)[0].severity, Severity::Warning);
    }

    #[test]
    fn dtypes_and_ops() {
        let mut i = info("mlProgram");
        i.compute.value_dtypes.insert("FLOAT32".into(), 5);
        i.compute.value_dtypes.insert("INT64".into(), 1);
        i.compute.value_dtypes.insert("FLOAT64".into(), 2);
        i.op_histogram.insert("lstm".into(), 2);
        i.op_histogram.insert("conv".into(), 2);
        let r = check(&i);
        assert_eq!(
            rules(&r),
            [
                "float32-compute",
                "float64-compute",
                "int64-compute",
                "unsupported-op"
            ]
        );
        assert!(r[3].message.contains("2 × 'lstm'"));

        let mut nn = info("neuralNetwork");
        nn.op_histogram.insert("addBroadcastable".into(), 1);
        nn.op_histogram.insert("custom".into(), 1);
        nn.op_histogram.insert("convolution".into(), 1);
        nn.inputs = vec![FeatureInfo {
            data_type: "DOUBLE".into(),
            ..array("x", &[4], ShapeFlexibility::Fixed)
        }];
        let r = check(&nn);
        assert_eq!(
            rules(&r),
            ["unsupported-op", "unsupported-op", "float64-io"]
        );
        assert_eq!(check(&info("treeEnsembleClassifier"))[0].rule, "model-type");
    }
}
