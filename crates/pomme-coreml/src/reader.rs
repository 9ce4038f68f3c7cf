//! Pure-Rust reader for Core ML models: `.mlmodel` (one protobuf message) and
//! `.mlpackage` (a directory: `Manifest.json` names the root model file, and ML
//! Program weights live in `Data/com.apple.CoreML/weights/`).
//!
//! It decodes the subset of the public Core ML format specification in
//! `proto/` and reports a [`CoreMlInfo`]: the signature (with flexible shapes),
//! image inputs and outputs, states (stateful models), functions (multifunction
//! packages), classifier outputs and class labels, the model type, metadata,
//! an op / layer histogram, exact weight bytes and the specification version. It runs on every platform and never loads
//! Core ML. Compiled `.mlmodelc` bundles are Core ML's private format and are
//! not read here (the native backend describes them on macOS).

use crate::convert::image::{ImageLayout, spec_in_layout};
use crate::proto::specification as pb;
use crate::proto::specification::mil_spec as mil;
use crate::proto::{LAYER_TYPES, MODEL_TYPES};
use pomme_core::{
    AllowedShapes, DType, Dim, Error, ModelInfo, ModelSignature, Result, Shape, TensorSpec,
};
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

/// Nested pipelines deeper than this are rejected (protects the stack).
const MAX_NESTING: usize = 16;

/// How the model is stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Container {
    /// A single `.mlmodel` protobuf file.
    MlModel,
    /// An `.mlpackage` directory.
    MlPackage,
}

impl Container {
    pub const fn as_str(self) -> &'static str {
        match self {
            Container::MlModel => "mlmodel",
            Container::MlPackage => "mlpackage",
        }
    }
}

/// One dimension's allowed extents in a range-flexible shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeRange {
    pub lower: u64,
    /// `None`: unbounded (the spec's negative upper bound).
    pub upper: Option<u64>,
}

impl std::fmt::Display for SizeRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.upper {
            Some(u) => write!(f, "{}..{}", self.lower, u),
            None => write!(f, "{}..", self.lower),
        }
    }
}

/// Flexibility of a multi-array or image feature's shape.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "shapes", rename_all = "lowercase")]
pub enum ShapeFlexibility {
    /// Only the default shape.
    #[default]
    Fixed,
    /// One of a list of shapes (for images: `[height, width]` pairs).
    Enumerated(Vec<Vec<u64>>),
    /// Each dimension within a range (for images: `[height, width]`).
    Range(Vec<SizeRange>),
}

/// What kind of value a feature holds (the `FeatureType` oneof).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FeatureKind {
    MultiArray,
    Image,
    Int64,
    Double,
    String,
    Dictionary,
    Sequence,
    State,
    /// No type set.
    Invalid,
}

impl FeatureKind {
    /// The spec's oneof field stem (`multiArray`, `image`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            FeatureKind::MultiArray => "multiArray",
            FeatureKind::Image => "image",
            FeatureKind::Int64 => "int64",
            FeatureKind::Double => "double",
            FeatureKind::String => "string",
            FeatureKind::Dictionary => "dictionary",
            FeatureKind::Sequence => "sequence",
            FeatureKind::State => "state",
            FeatureKind::Invalid => "invalid",
        }
    }
}

/// One input or output as the model description declares it.
///
/// The pomme [`TensorSpec`] in [`CoreMlInfo::signature`] is derived from this:
/// multi-arrays keep their data type and default shape, with every dimension
/// that the flexible shapes let vary made symbolic (`"?"`); images become
/// `U8 [height, width, channels]` (`F16` for `GRAYSCALE_FLOAT16`); `int64`,
/// `double` and `string` scalars become `[1]` tensors of I64 / F64 / BYTES;
/// a classifier's probabilities dictionary becomes `F32 [labels]`, in label
/// order, when the labels are known, other dictionaries a `[1]` BYTES tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureInfo {
    pub name: String,
    pub description: String,
    pub kind: FeatureKind,
    pub optional: bool,
    /// The spec's data type name: `FLOAT32`, `FLOAT16`, `DOUBLE`, `INT32`,
    /// `INT8`, `INVALID_ARRAY_DATA_TYPE` for multi-arrays; the color space
    /// (`RGB`, `BGR`, `GRAYSCALE`, ...) for images; empty otherwise.
    pub data_type: String,
    /// Declared default shape (images: `[height, width]`); empty when unset.
    pub shape: Vec<u64>,
    pub flexibility: ShapeFlexibility,
}

/// Model metadata (`ModelDescription.metadata`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreMlMetadata {
    pub short_description: String,
    pub version: String,
    pub author: String,
    pub license: String,
    pub user_defined: BTreeMap<String, String>,
}

/// What the ML Program / neural network computes with, for the ANE pre-check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeSummary {
    /// Data type (MIL names: `FLOAT32`, `INT64`, ...) → number of outputs of
    /// that type of ML Program ops that compute (not `const`, `constexpr_*`, `cast`).
    pub value_dtypes: BTreeMap<String, usize>,
    /// The largest fixed dimension of any op output, and the op output naming it.
    /// (Serialized as a pair.)
    pub largest_dim: Option<(u64, String)>,
    /// ML Program opset names (`CoreML5`, `CoreML7`, ...).
    pub opsets: BTreeSet<String>,
    /// ML Program function names.
    pub functions: Vec<String>,
}

/// A classifier's class labels, in the order of its probabilities.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "labels", rename_all = "lowercase")]
pub enum ClassLabels {
    #[serde(rename = "string")]
    Strings(Vec<String>),
    Int64(Vec<i64>),
}

impl ClassLabels {
    pub fn len(&self) -> usize {
        match self {
            ClassLabels::Strings(v) => v.len(),
            ClassLabels::Int64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Label `i` as text (`None` past the end).
    pub fn label(&self, i: usize) -> Option<String> {
        match self {
            ClassLabels::Strings(v) => v.get(i).cloned(),
            ClassLabels::Int64(v) => v.get(i).map(i64::to_string),
        }
    }

    /// `string` or `int64`: the type of the predicted-label output.
    pub const fn kind(&self) -> &'static str {
        match self {
            ClassLabels::Strings(_) => "string",
            ClassLabels::Int64(_) => "int64",
        }
    }
}

/// What makes a model a classifier: the outputs Core ML fills and the labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassifierInfo {
    /// The output holding the predicted label (`predictedFeatureName`).
    pub predicted_feature: String,
    /// The output holding label → probability (`predictedProbabilitiesName`); may be empty.
    pub probabilities_feature: String,
    /// Labels from the neural-network classifier or the ML Program's `classify`
    /// op (the last classifier of a pipeline); `None` when the model type
    /// keeps them where the reader does not look.
    pub labels: Option<ClassLabels>,
}

/// One function of a multifunction ML Program (`ModelDescription.functions`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionInfo {
    pub name: String,
    pub inputs: Vec<FeatureInfo>,
    pub outputs: Vec<FeatureInfo>,
    pub states: Vec<FeatureInfo>,
    /// Inputs and outputs as pomme tensors.
    pub signature: ModelSignature,
    pub classifier: Option<ClassifierInfo>,
}

/// A model inside a pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubModel {
    /// The pipeline's name for it (may be empty).
    pub name: String,
    pub model_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Its own nested models, for pipelines of pipelines.
    pub sub_models: Vec<SubModel>,
}

/// Everything the reader learns about a Core ML model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoreMlInfo {
    /// The file or package that was read.
    pub path: PathBuf,
    pub container: Container,
    /// `specificationVersion` (4 = iOS 13 / macOS 10.15, 5 = 14/11, 6 = 15/12, 7 = 16/13, 8 = 17/14, 9 = 18/15).
    pub spec_version: i32,
    /// The model-type oneof field name: `neuralNetwork`, `mlProgram`, `pipeline`, ...
    pub model_type: String,
    /// Inputs, outputs and states of the model, or of its default function
    /// for a multifunction package (whose top-level description is empty).
    pub inputs: Vec<FeatureInfo>,
    pub outputs: Vec<FeatureInfo>,
    /// State features (stateful ML Programs, macOS 15+): kept by Core ML
    /// between predictions, never inputs or outputs of a request.
    pub states: Vec<FeatureInfo>,
    /// Inputs and outputs as pomme tensors (see [`FeatureInfo`] for the mapping).
    pub signature: ModelSignature,
    /// Set for classifiers (see [`ClassifierInfo`]).
    pub classifier: Option<ClassifierInfo>,
    /// Every function of a multifunction package, in declared order; empty
    /// for single-function models.
    pub functions: Vec<FunctionInfo>,
    /// The function Core ML runs when none is named; `None` unless `functions` is set.
    pub default_function: Option<String>,
    pub metadata: CoreMlMetadata,
    /// ML Program op type (`conv`, `linear`, `const`...) or neural-network layer
    /// type (`convolution`, `innerProduct`...) → count, over nested blocks,
    /// networks and pipeline models.
    pub op_histogram: BTreeMap<String, usize>,
    /// Exact bytes of stored weights: the sizes of the weight files an ML
    /// Program references, plus the bytes of every neural-network WeightParams.
    pub weight_bytes: u64,
    /// Weight elements: elements of blob-file constants and of WeightParams.
    pub parameters: u64,
    /// Upper bound of batch-1 activation memory (sum of fixed-shape op outputs), ML Programs only.
    pub activation_bytes_estimate: u64,
    /// Weight files the model references (`.mlpackage` ML Programs).
    pub weight_files: Vec<PathBuf>,
    pub compute: ComputeSummary,
    pub sub_models: Vec<SubModel>,
    pub is_updatable: bool,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidModelFormat(msg.into())
}

/// Reads a `.mlmodel` file or an `.mlpackage` directory.
pub fn read(path: &Path) -> Result<CoreMlInfo> {
    let meta = std::fs::metadata(path)
        .map_err(|e| invalid(format!("{}: {}", path.display(), io_reason(&e))))?;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    if ext.as_deref() == Some("mlmodelc") {
        return Err(invalid(format!(
            "{}: compiled .mlmodelc bundles are Core ML's private format; read the .mlmodel or .mlpackage it was compiled from (or use the native backend on macOS)",
            path.display()
        )));
    }
    if meta.is_dir() {
        read_package(path)
    } else {
        let bytes = std::fs::read(path)
            .map_err(|e| invalid(format!("{}: {}", path.display(), io_reason(&e))))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut info =
            parse_model(&bytes, dir, None).map_err(|e| prefix(e, &path.display().to_string()))?;
        info.path = path.to_path_buf();
        Ok(info)
    }
}

/// Parses `.mlmodel` bytes (no weight files: ML Programs that reference blob
/// files are reported with their references unresolved).
pub fn read_mlmodel_bytes(bytes: &[u8]) -> Result<CoreMlInfo> {
    parse_model(bytes, Path::new(""), None)
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        _ => e.to_string(),
    }
}

fn prefix(e: Error, what: &str) -> Error {
    match e {
        Error::InvalidModelFormat(m) => Error::InvalidModelFormat(format!("{what}: {m}")),
        other => other,
    }
}

/// The root model file and weights directory of an `.mlpackage`, from its `Manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageLayout {
    pub root_model: PathBuf,
    /// `Data/com.apple.CoreML/weights` when the manifest lists it.
    pub weights_dir: Option<PathBuf>,
}

/// Reads an `.mlpackage`'s `Manifest.json`.
pub fn package_layout(dir: &Path) -> Result<PackageLayout> {
    let d = dir.display();
    let manifest_path = dir.join("Manifest.json");
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
        invalid(format!(
            "{d}: cannot read Manifest.json ({}); an .mlpackage needs one",
            io_reason(&e)
        ))
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| invalid(format!("{d}: Manifest.json is not valid JSON ({e})")))?;
    let entries = json
        .get("itemInfoEntries")
        .and_then(|v| v.as_object())
        .ok_or_else(|| invalid(format!("{d}: Manifest.json has no itemInfoEntries object")))?;
    let root_id = json
        .get("rootModelIdentifier")
        .and_then(|v| v.as_str())
        .ok_or_else(|| invalid(format!("{d}: Manifest.json has no rootModelIdentifier")))?;
    let entry_path = |id: &str| -> Option<&str> { entries.get(id)?.get("path")?.as_str() };
    let root_rel = entry_path(root_id).ok_or_else(|| {
        invalid(format!(
            "{d}: Manifest.json's rootModelIdentifier {root_id} names no item with a path"
        ))
    })?;
    let data = dir.join("Data");
    let root_model = data.join(safe_relative(root_rel).ok_or_else(|| {
        invalid(format!(
            "{d}: Manifest.json's root model path '{root_rel}' leaves the package"
        ))
    })?);
    let weights_dir = entries
        .values()
        .filter_map(|e| e.get("path")?.as_str())
        .filter(|p| p.trim_end_matches('/').ends_with("weights"))
        .find_map(safe_relative)
        .map(|p| data.join(p));
    Ok(PackageLayout {
        root_model,
        weights_dir,
    })
}

fn safe_relative(p: &str) -> Option<PathBuf> {
    let path = Path::new(p);
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        .then(|| path.to_path_buf())
}

fn read_package(dir: &Path) -> Result<CoreMlInfo> {
    let layout = package_layout(dir)?;
    let d = dir.display();
    let bytes = std::fs::read(&layout.root_model).map_err(|e| {
        invalid(format!(
            "{d}: root model file {} listed in Manifest.json: {}",
            layout
                .root_model
                .strip_prefix(dir)
                .unwrap_or(&layout.root_model)
                .display(),
            io_reason(&e)
        ))
    })?;
    let model_dir = layout
        .root_model
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.to_path_buf());
    let mut info =
        parse_model(&bytes, &model_dir, Some(dir)).map_err(|e| prefix(e, &d.to_string()))?;
    info.path = dir.to_path_buf();
    info.container = Container::MlPackage;
    Ok(info)
}

/// The field name of the last field of `buf` (a serialized message) whose
/// number is in `table`: the set member of a oneof. Also checks the wire format.
fn oneof_name(buf: &[u8], table: &'static [(u32, &'static str)]) -> Result<Option<&'static str>> {
    let mut at = 0usize;
    let mut found = None;
    while at < buf.len() {
        let key = read_varint(buf, &mut at)?;
        let field = (key >> 3) as u32;
        match key & 7 {
            0 => {
                read_varint(buf, &mut at)?;
            }
            1 => at = skip(buf, at, 8)?,
            2 => {
                let len = read_varint(buf, &mut at)?;
                let len = usize::try_from(len).map_err(|_| truncated())?;
                at = skip(buf, at, len)?;
            }
            5 => at = skip(buf, at, 4)?,
            _ => return Err(invalid("protobuf uses an unknown or group wire type")),
        }
        if field == 0 {
            return Err(invalid("protobuf has a field numbered 0"));
        }
        if let Some((_, name)) = table.iter().find(|(n, _)| *n == field) {
            found = Some(*name);
        }
    }
    Ok(found)
}

fn truncated() -> Error {
    invalid("truncated protobuf (a field runs past the end of the data)")
}

fn skip(buf: &[u8], at: usize, n: usize) -> Result<usize> {
    at.checked_add(n)
        .filter(|&end| end <= buf.len())
        .ok_or_else(truncated)
}

fn read_varint(buf: &[u8], at: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let b = *buf.get(*at).ok_or_else(truncated)?;
        *at += 1;
        if shift == 63 && b > 1 {
            return Err(invalid("protobuf varint overflows 64 bits"));
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(invalid("protobuf varint overflows 64 bits"))
}

fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M> {
    M::decode(bytes).map_err(|e| {
        let reason = e.to_string();
        if reason.contains("buffer underflow") || reason.contains("EOF") {
            invalid(format!("truncated protobuf in {what} ({reason})"))
        } else {
            invalid(format!("malformed protobuf in {what} ({reason})"))
        }
    })
}

/// Accumulates histogram, weights and compute facts over a model tree.
#[derive(Default)]
struct Acc {
    ops: BTreeMap<String, usize>,
    weight_bytes: u64,
    parameters: u64,
    activation_bytes: u64,
    blob_files: BTreeSet<String>,
    compute: ComputeSummary,
    /// Labels of a neural-network classifier (the last one of a pipeline).
    labels: Option<ClassLabels>,
    /// Labels of the `classify` op of each ML Program function.
    function_labels: BTreeMap<String, ClassLabels>,
}

fn parse_model(bytes: &[u8], model_dir: &Path, package: Option<&Path>) -> Result<CoreMlInfo> {
    if bytes.is_empty() {
        return Err(invalid("empty model file"));
    }
    let mut acc = Acc::default();
    let (mut model, model_type, sub_models) = parse_model_tree(bytes, 0, &mut acc)?;
    let desc = model
        .description
        .take()
        .ok_or_else(|| invalid("model has no description (truncated or not a Core ML model?)"))?;
    let features = |list: &[pb::FeatureDescription]| -> Result<Vec<FeatureInfo>> {
        list.iter().map(feature_info).collect()
    };
    let classifier = |predicted: &str, probabilities: &str, function: &str| {
        (!predicted.is_empty() || !probabilities.is_empty()).then(|| ClassifierInfo {
            predicted_feature: predicted.to_string(),
            probabilities_feature: probabilities.to_string(),
            labels: acc
                .function_labels
                .get(function)
                .or_else(|| acc.function_labels.values().next())
                .or(acc.labels.as_ref())
                .cloned(),
        })
    };
    let functions = desc
        .functions
        .iter()
        .map(|f| {
            let (inputs, outputs) = (features(&f.input)?, features(&f.output)?);
            let classifier = classifier(
                &f.predicted_feature_name,
                &f.predicted_probabilities_name,
                &f.name,
            );
            let signature = signature_of(
                &inputs,
                &outputs,
                &mil_function_outputs(&model, &f.name),
                classifier.as_ref(),
            );
            Ok(FunctionInfo {
                name: f.name.clone(),
                states: features(&f.state)?,
                inputs,
                outputs,
                signature,
                classifier,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let default_function = (!functions.is_empty()).then(|| {
        if desc.default_function_name.is_empty() {
            functions[0].name.clone()
        } else {
            desc.default_function_name.clone()
        }
    });
    let default = default_function
        .as_ref()
        .and_then(|name| functions.iter().find(|f| &f.name == name));
    let (inputs, outputs, states, signature, classifier) = match default {
        Some(f) if desc.input.is_empty() && desc.output.is_empty() => (
            f.inputs.clone(),
            f.outputs.clone(),
            f.states.clone(),
            f.signature.clone(),
            f.classifier.clone(),
        ),
        _ => {
            let (inputs, outputs) = (features(&desc.input)?, features(&desc.output)?);
            let classifier = classifier(
                &desc.predicted_feature_name,
                &desc.predicted_probabilities_name,
                "main",
            );
            let signature = signature_of(
                &inputs,
                &outputs,
                &mil_function_outputs(&model, "main"),
                classifier.as_ref(),
            );
            (
                inputs,
                outputs,
                features(&desc.state)?,
                signature,
                classifier,
            )
        }
    };
    let metadata = desc
        .metadata
        .map(|m| CoreMlMetadata {
            short_description: m.short_description,
            version: m.version_string,
            author: m.author,
            license: m.license,
            user_defined: m.user_defined.into_iter().collect(),
        })
        .unwrap_or_default();

    let mut weight_files = Vec::new();
    for name in &acc.blob_files {
        let rel = name.strip_prefix("@model_path/").unwrap_or(name);
        let Some(rel_path) = safe_relative(rel) else {
            return Err(invalid(format!(
                "weight file reference '{name}' leaves the package"
            )));
        };
        if package.is_none() && model_dir.as_os_str().is_empty() {
            continue; // bytes only: nothing to resolve against
        }
        let file = model_dir.join(rel_path);
        let size = std::fs::metadata(&file)
            .map_err(|e| {
                invalid(format!(
                    "weight file {} referenced by the model: {}",
                    package
                        .and_then(|p| file.strip_prefix(p).ok())
                        .unwrap_or(&file)
                        .display(),
                    io_reason(&e)
                ))
            })?
            .len();
        acc.weight_bytes = acc.weight_bytes.saturating_add(size);
        weight_files.push(file);
    }

    Ok(CoreMlInfo {
        path: PathBuf::new(),
        container: Container::MlModel,
        spec_version: model.specification_version,
        model_type: model_type.to_string(),
        inputs,
        outputs,
        states,
        signature,
        classifier,
        functions,
        default_function,
        metadata,
        op_histogram: acc.ops,
        weight_bytes: acc.weight_bytes,
        parameters: acc.parameters,
        activation_bytes_estimate: acc.activation_bytes,
        weight_files,
        compute: acc.compute,
        sub_models,
        is_updatable: model.is_updatable,
    })
}

type Tree = (pb::Model, &'static str, Vec<SubModel>);

fn parse_model_tree(bytes: &[u8], depth: usize, acc: &mut Acc) -> Result<Tree> {
    if depth > MAX_NESTING {
        return Err(invalid(format!(
            "pipelines nested more than {MAX_NESTING} deep"
        )));
    }
    let what = if depth == 0 {
        "Model"
    } else {
        "pipeline sub-model"
    };
    let model_type = oneof_name(bytes, MODEL_TYPES)?;
    let model: pb::Model = decode(bytes, what)?;
    let Some(model_type) = model_type else {
        return Err(invalid(format!(
            "{what} sets no model type (truncated, or not a Core ML model)"
        )));
    };
    use pb::model::Type;
    let mut subs = Vec::new();
    match &model.r#type {
        Some(Type::NeuralNetwork(nn)) => walk_layers(&nn.layers, depth, acc)?,
        Some(Type::NeuralNetworkClassifier(nn)) => {
            walk_layers(&nn.layers, depth, acc)?;
            use pb::neural_network_classifier::ClassLabels as L;
            acc.labels = match &nn.class_labels {
                Some(L::StringClassLabels(v)) => Some(ClassLabels::Strings(v.vector.clone())),
                Some(L::Int64ClassLabels(v)) => Some(ClassLabels::Int64(v.vector.clone())),
                None => acc.labels.take(),
            };
        }
        Some(Type::NeuralNetworkRegressor(nn)) => walk_layers(&nn.layers, depth, acc)?,
        Some(Type::MlProgram(p)) => walk_program(p, acc),
        Some(Type::Pipeline(p)) => subs = walk_pipeline(p, depth, acc)?,
        Some(Type::PipelineClassifier(pc)) => {
            if let Some(p) = &pc.pipeline {
                subs = walk_pipeline(p, depth, acc)?;
            }
        }
        Some(Type::PipelineRegressor(pr)) => {
            if let Some(p) = &pr.pipeline {
                subs = walk_pipeline(p, depth, acc)?;
            }
        }
        _ => {}
    }
    Ok((model, model_type, subs))
}

fn walk_pipeline(p: &pb::Pipeline, depth: usize, acc: &mut Acc) -> Result<Vec<SubModel>> {
    p.models
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let (m, ty, subs) = parse_model_tree(bytes, depth + 1, acc)?;
            let names = |fs: &[pb::FeatureDescription]| fs.iter().map(|f| f.name.clone()).collect();
            let (inputs, outputs) = m
                .description
                .as_ref()
                .map(|d| (names(&d.input), names(&d.output)))
                .unwrap_or_default();
            Ok(SubModel {
                name: p.names.get(i).cloned().unwrap_or_default(),
                model_type: ty.to_string(),
                inputs,
                outputs,
                sub_models: subs,
            })
        })
        .collect()
}

fn walk_layers(layers: &[Vec<u8>], depth: usize, acc: &mut Acc) -> Result<()> {
    if depth > MAX_NESTING {
        return Err(invalid(format!(
            "neural network branches nested more than {MAX_NESTING} deep"
        )));
    }
    for bytes in layers {
        let kind = oneof_name(bytes, LAYER_TYPES)?.unwrap_or("unknown");
        let layer: pb::NeuralNetworkLayer = decode(bytes, "neural network layer")?;
        *acc.ops.entry(kind.to_string()).or_default() += 1;
        use pb::neural_network_layer::Layer;
        let mut w = |p: &Option<pb::WeightParams>| add_weights(acc, p.as_ref());
        match &layer.layer {
            Some(Layer::Convolution(c)) => {
                w(&c.weights);
                w(&c.bias);
            }
            Some(Layer::Activation(a)) => {
                use pb::activation_params::NonlinearityType as N;
                match &a.nonlinearity_type {
                    Some(N::PReLu(p)) => w(&p.alpha),
                    Some(N::ParametricSoftplus(p)) => {
                        w(&p.alpha);
                        w(&p.beta);
                    }
                    None => {}
                }
            }
            Some(Layer::InnerProduct(p)) => {
                w(&p.weights);
                w(&p.bias);
            }
            Some(Layer::Embedding(p)) => {
                w(&p.weights);
                w(&p.bias);
            }
            Some(Layer::Batchnorm(p)) => {
                w(&p.gamma);
                w(&p.beta);
                w(&p.mean);
                w(&p.variance);
            }
            Some(Layer::Scale(p)) => {
                w(&p.scale);
                w(&p.bias);
            }
            Some(Layer::Bias(p)) => w(&p.bias),
            Some(Layer::LoadConstant(p)) => w(&p.data),
            Some(Layer::SimpleRecurrent(p)) => {
                w(&p.weight_matrix);
                w(&p.recursion_matrix);
                w(&p.bias_vector);
            }
            Some(Layer::Gru(p)) => {
                for m in [
                    &p.update_gate_weight_matrix,
                    &p.reset_gate_weight_matrix,
                    &p.output_gate_weight_matrix,
                    &p.update_gate_recursion_matrix,
                    &p.reset_gate_recursion_matrix,
                    &p.output_gate_recursion_matrix,
                    &p.update_gate_bias_vector,
                    &p.reset_gate_bias_vector,
                    &p.output_gate_bias_vector,
                ] {
                    w(m);
                }
            }
            Some(Layer::UniDirectionalLstm(p)) => {
                if let Some(lw) = &p.weight_params {
                    add_lstm(acc, lw);
                }
            }
            Some(Layer::BiDirectionalLstm(p)) => {
                for lw in &p.weight_params {
                    add_lstm(acc, lw);
                }
            }
            Some(Layer::Custom(p)) => {
                for x in &p.weights {
                    add_weights(acc, Some(x));
                }
            }
            Some(Layer::EmbeddingNd(p)) => {
                w(&p.weights);
                w(&p.bias);
            }
            Some(Layer::BatchedMatmul(p)) => {
                w(&p.weights);
                w(&p.bias);
            }
            Some(Layer::LoadConstantNd(p)) => w(&p.data),
            Some(Layer::LayerNormalization(p)) => {
                w(&p.gamma);
                w(&p.beta);
            }
            Some(Layer::Convolution3d(p)) => {
                w(&p.weights);
                w(&p.bias);
            }
            Some(Layer::Branch(b)) => {
                for nn in [&b.if_branch, &b.else_branch].into_iter().flatten() {
                    walk_layers(&nn.layers, depth + 1, acc)?;
                }
            }
            Some(Layer::Loop(l)) => {
                for nn in [&l.condition_network, &l.body_network]
                    .into_iter()
                    .flatten()
                {
                    walk_layers(&nn.layers, depth + 1, acc)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn add_lstm(acc: &mut Acc, p: &pb::LstmWeightParams) {
    for m in [
        &p.input_gate_weight_matrix,
        &p.forget_gate_weight_matrix,
        &p.block_input_weight_matrix,
        &p.output_gate_weight_matrix,
        &p.input_gate_recursion_matrix,
        &p.forget_gate_recursion_matrix,
        &p.block_input_recursion_matrix,
        &p.output_gate_recursion_matrix,
        &p.input_gate_bias_vector,
        &p.forget_gate_bias_vector,
        &p.block_input_bias_vector,
        &p.output_gate_bias_vector,
        &p.input_gate_peephole_vector,
        &p.forget_gate_peephole_vector,
        &p.output_gate_peephole_vector,
    ] {
        add_weights(acc, m.as_ref());
    }
}

/// Bytes and elements of one WeightParams: float32 values, float16 bytes, raw
/// bytes (quantized to `numberOfBits`, 8 when unset) and int8 bytes.
fn add_weights(acc: &mut Acc, w: Option<&pb::WeightParams>) {
    let Some(w) = w else { return };
    let f32_bytes = (w.float_value.len() as u64).saturating_mul(4);
    let bytes = f32_bytes
        .saturating_add(w.float16_value.len() as u64)
        .saturating_add(w.raw_value.len() as u64)
        .saturating_add(w.int8_raw_value.len() as u64);
    let bits = w
        .quantization
        .as_ref()
        .map(|q| q.number_of_bits)
        .filter(|&b| b > 0)
        .unwrap_or(8);
    let raw_elems = if w.quantization.is_some() {
        (w.raw_value.len() as u64).saturating_mul(8) / bits
    } else {
        // Unquantized raw values are float32.
        w.raw_value.len() as u64 / 4
    };
    let elems = (w.float_value.len() as u64)
        .saturating_add(w.float16_value.len() as u64 / 2)
        .saturating_add(raw_elems)
        .saturating_add(w.int8_raw_value.len() as u64);
    acc.weight_bytes = acc.weight_bytes.saturating_add(bytes);
    acc.parameters = acc.parameters.saturating_add(elems);
}

/// Blocks of a function: the one for its opset, else all specializations.
fn function_blocks(f: &mil::Function) -> Vec<&mil::Block> {
    match f.block_specializations.get(&f.opset) {
        Some(b) => vec![b],
        None => f.block_specializations.values().collect(),
    }
}

fn walk_program(p: &mil::Program, acc: &mut Acc) {
    let mut names: Vec<&String> = p.functions.keys().collect();
    names.sort();
    for name in names {
        let f = &p.functions[name];
        acc.compute.functions.push(name.clone());
        acc.compute.opsets.insert(f.opset.clone());
        for b in function_blocks(f) {
            walk_block(b, acc, 0);
            if let Some(labels) = block_class_labels(b) {
                acc.function_labels.insert(name.clone(), labels);
            }
        }
    }
}

fn walk_block(b: &mil::Block, acc: &mut Acc, depth: usize) {
    if depth > MAX_NESTING * 4 {
        return;
    }
    for op in &b.operations {
        *acc.ops.entry(op.r#type.clone()).or_default() += 1;
        let is_const = op.r#type == "const" || op.r#type.starts_with("constexpr_");
        // Blob-file values sit in `const` attributes and in constexpr inputs.
        let values =
            op.attributes
                .values()
                .chain(op.inputs.values().flat_map(|a| &a.arguments).filter_map(
                    |b| match &b.binding {
                        Some(mil::argument::binding::Binding::Value(v)) => Some(v),
                        _ => None,
                    },
                ));
        for v in values {
            if let Some(mil::value::Value::BlobFileValue(blob)) = &v.value {
                acc.blob_files.insert(blob.file_name.clone());
                if let Some(t) = v.r#type.as_ref().and_then(tensor_type) {
                    acc.parameters = acc.parameters.saturating_add(elements(t).unwrap_or(0));
                }
            }
        }
        for out in &op.outputs {
            let Some(t) = out.r#type.as_ref().and_then(tensor_type) else {
                continue;
            };
            if !is_const && op.r#type != "cast" {
                *acc.compute
                    .value_dtypes
                    .entry(mil_dtype_name(t.data_type).to_string())
                    .or_default() += 1;
            }
            for d in &t.dimensions {
                if let Some(mil::dimension::Dimension::Constant(c)) = &d.dimension
                    && acc
                        .compute
                        .largest_dim
                        .as_ref()
                        .is_none_or(|(m, _)| c.size > *m)
                {
                    acc.compute.largest_dim =
                        Some((c.size, format!("{} ({})", out.name, op.r#type)));
                }
            }
            if !is_const
                && let (Some(n), Some(size)) =
                    (elements(t), mil_dtype(t.data_type).and_then(DType::size_of))
            {
                acc.activation_bytes = acc
                    .activation_bytes
                    .saturating_add(n.saturating_mul(size as u64));
            }
        }
        for inner in &op.blocks {
            walk_block(inner, acc, depth + 1);
        }
    }
}

/// The `classes` of a block's `classify` op: a literal list of one-element
/// tensors (what coremltools writes), a literal rank-1 tensor, or the name of
/// a `const` op holding either.
fn block_class_labels(b: &mil::Block) -> Option<ClassLabels> {
    use mil::argument::binding::Binding;
    let op = b.operations.iter().find(|op| op.r#type == "classify")?;
    let value = match op
        .inputs
        .get("classes")?
        .arguments
        .first()?
        .binding
        .as_ref()?
    {
        Binding::Value(v) => v,
        Binding::Name(name) => b
            .operations
            .iter()
            .find(|c| c.r#type == "const" && c.outputs.iter().any(|o| &o.name == name))?
            .attributes
            .get("val")?,
    };
    literal_labels(value)
}

fn literal_labels(v: &mil::Value) -> Option<ClassLabels> {
    use mil::tensor_value::Value as T;
    use mil::value::immediate_value::Value as I;
    let Some(mil::value::Value::ImmediateValue(imm)) = &v.value else {
        return None;
    };
    match imm.value.as_ref()? {
        I::Tensor(t) => match t.value.as_ref()? {
            T::Strings(s) => Some(ClassLabels::Strings(s.values.clone())),
            T::LongInts(l) => Some(ClassLabels::Int64(l.values.clone())),
            T::Ints(i) => Some(ClassLabels::Int64(
                i.values.iter().map(|&x| i64::from(x)).collect(),
            )),
        },
        I::List(list) => {
            let parts: Vec<ClassLabels> = list
                .values
                .iter()
                .map(literal_labels)
                .collect::<Option<_>>()?;
            let mut strings = Vec::new();
            let mut ints = Vec::new();
            for p in parts {
                match p {
                    ClassLabels::Strings(v) => strings.extend(v),
                    ClassLabels::Int64(v) => ints.extend(v),
                }
            }
            match (strings.is_empty(), ints.is_empty()) {
                (_, true) => Some(ClassLabels::Strings(strings)),
                (true, false) => Some(ClassLabels::Int64(ints)),
                (false, false) => None,
            }
        }
    }
}

fn tensor_type(v: &mil::ValueType) -> Option<&mil::TensorType> {
    match &v.r#type {
        Some(mil::value_type::Type::TensorType(t)) => Some(t),
        Some(mil::value_type::Type::StateType(s)) => {
            s.wrapped_type.as_deref().and_then(tensor_type)
        }
        _ => None,
    }
}

/// Element count of a tensor type with every dimension fixed.
fn elements(t: &mil::TensorType) -> Option<u64> {
    t.dimensions
        .iter()
        .try_fold(1u64, |acc, d| match &d.dimension {
            Some(mil::dimension::Dimension::Constant(c)) => acc.checked_mul(c.size),
            _ => None,
        })
}

/// MIL data type name as the spec spells it.
pub fn mil_dtype_name(code: i32) -> &'static str {
    mil::DataType::try_from(code)
        .map(|d| d.as_str_name())
        .unwrap_or("UNKNOWN")
}

fn mil_dtype(code: i32) -> Option<DType> {
    use mil::DataType as M;
    Some(match M::try_from(code).ok()? {
        M::Bool => DType::Bool,
        M::String => DType::Bytes,
        M::Float16 => DType::F16,
        M::Float32 => DType::F32,
        M::Float64 => DType::F64,
        M::Bfloat16 => DType::BF16,
        M::Int8 => DType::I8,
        M::Int16 => DType::I16,
        M::Int32 => DType::I32,
        M::Int64 => DType::I64,
        M::Uint8 => DType::U8,
        M::Uint16 => DType::U16,
        M::Uint32 => DType::U32,
        M::Uint64 => DType::U64,
        _ => return None,
    })
}

/// A function's block outputs (`main`, else the first) with their MIL tensor types, in order.
fn mil_function_outputs(model: &pb::Model, function: &str) -> Vec<(String, mil::TensorType)> {
    let Some(pb::model::Type::MlProgram(p)) = &model.r#type else {
        return Vec::new();
    };
    let Some(f) = p
        .functions
        .get(function)
        .or_else(|| p.functions.values().next())
    else {
        return Vec::new();
    };
    let Some(block) = function_blocks(f).into_iter().next() else {
        return Vec::new();
    };
    block
        .outputs
        .iter()
        .filter_map(|name| {
            block
                .operations
                .iter()
                .flat_map(|op| &op.outputs)
                .find(|o| &o.name == name)
                .and_then(|o| o.r#type.as_ref().and_then(tensor_type))
                .map(|t| (name.clone(), t.clone()))
        })
        .collect()
}

fn feature_info(f: &pb::FeatureDescription) -> Result<FeatureInfo> {
    use pb::feature_type::Type as T;
    let ty = f.r#type.as_ref();
    let mut info = FeatureInfo {
        name: f.name.clone(),
        description: f.short_description.clone(),
        kind: FeatureKind::Invalid,
        optional: ty.is_some_and(|t| t.is_optional),
        data_type: String::new(),
        shape: Vec::new(),
        flexibility: ShapeFlexibility::Fixed,
    };
    let to_u64 = |v: &[i64], what: &str| -> Result<Vec<u64>> {
        v.iter()
            .map(|&d| {
                u64::try_from(d).map_err(|_| {
                    invalid(format!(
                        "feature '{}' has a negative {what} extent {d}",
                        f.name
                    ))
                })
            })
            .collect()
    };
    let range = |r: &pb::SizeRange| SizeRange {
        lower: r.lower_bound,
        upper: u64::try_from(r.upper_bound).ok(),
    };
    match ty.and_then(|t| t.r#type.as_ref()) {
        None => {}
        Some(T::MultiArrayType(a)) => {
            info.kind = FeatureKind::MultiArray;
            array_info(a, &mut info, &to_u64, &range)?;
        }
        Some(T::StateType(s)) => {
            info.kind = FeatureKind::State;
            if let Some(pb::state_feature_type::Type::ArrayType(a)) = &s.r#type {
                array_info(a, &mut info, &to_u64, &range)?;
            }
        }
        Some(T::ImageType(img)) => {
            info.kind = FeatureKind::Image;
            info.data_type = pb::image_feature_type::ColorSpace::try_from(img.color_space)
                .map(|c| c.as_str_name().to_string())
                .unwrap_or_else(|_| format!("COLOR_SPACE_{}", img.color_space));
            info.shape = to_u64(&[img.height, img.width], "image")?;
            use pb::image_feature_type::SizeFlexibility as S;
            info.flexibility = match &img.size_flexibility {
                None => ShapeFlexibility::Fixed,
                Some(S::EnumeratedSizes(e)) => ShapeFlexibility::Enumerated(
                    e.sizes.iter().map(|s| vec![s.height, s.width]).collect(),
                ),
                Some(S::ImageSizeRange(r)) => {
                    let full = SizeRange {
                        lower: 0,
                        upper: None,
                    };
                    ShapeFlexibility::Range(vec![
                        r.height_range.as_ref().map(range).unwrap_or(full),
                        r.width_range.as_ref().map(range).unwrap_or(full),
                    ])
                }
            };
        }
        Some(T::Int64Type(_)) => info.kind = FeatureKind::Int64,
        Some(T::DoubleType(_)) => info.kind = FeatureKind::Double,
        Some(T::StringType(_)) => info.kind = FeatureKind::String,
        Some(T::DictionaryType(_)) => info.kind = FeatureKind::Dictionary,
        Some(T::SequenceType(_)) => info.kind = FeatureKind::Sequence,
    }
    Ok(info)
}

type ExtentsFn<'a> = dyn Fn(&[i64], &str) -> Result<Vec<u64>> + 'a;

fn array_info(
    a: &pb::ArrayFeatureType,
    info: &mut FeatureInfo,
    to_u64: &ExtentsFn<'_>,
    range: &dyn Fn(&pb::SizeRange) -> SizeRange,
) -> Result<()> {
    info.data_type = pb::array_feature_type::ArrayDataType::try_from(a.data_type)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| format!("ARRAY_DATA_TYPE_{}", a.data_type));
    info.shape = to_u64(&a.shape, "shape")?;
    use pb::array_feature_type::ShapeFlexibility as S;
    info.flexibility = match &a.shape_flexibility {
        None => ShapeFlexibility::Fixed,
        Some(S::EnumeratedShapes(e)) => ShapeFlexibility::Enumerated(
            e.shapes
                .iter()
                .map(|s| to_u64(&s.shape, "enumerated shape"))
                .collect::<Result<_>>()?,
        ),
        Some(S::ShapeRange(r)) => {
            ShapeFlexibility::Range(r.size_ranges.iter().map(range).collect())
        }
    };
    Ok(())
}

fn array_dtype(spec_name: &str) -> DType {
    match spec_name {
        "FLOAT16" => DType::F16,
        "DOUBLE" => DType::F64,
        "INT32" => DType::I32,
        "INT8" => DType::I8,
        // FLOAT32, and outputs left unset (Core ML then returns float32 or double).
        _ => DType::F32,
    }
}

const ANY: &str = "?";

/// Inputs and outputs in pomme terms; `mil_outputs` are the ML Program
/// function's outputs (for outputs whose description leaves the shape unset).
fn signature_of(
    inputs: &[FeatureInfo],
    outputs: &[FeatureInfo],
    mil_outputs: &[(String, mil::TensorType)],
    classifier: Option<&ClassifierInfo>,
) -> ModelSignature {
    ModelSignature {
        inputs: inputs
            .iter()
            .map(|f| {
                let spec = tensor_spec(f, None);
                match allowed_shapes(f) {
                    Some(a) => spec.allowing(a),
                    None => spec,
                }
            })
            .collect(),
        outputs: outputs
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if let Some(c) = classifier
                    && f.kind == FeatureKind::Dictionary
                    && c.probabilities_feature == f.name
                    && let Some(labels) = &c.labels
                {
                    let names = (0..labels.len()).filter_map(|i| labels.label(i)).collect();
                    return TensorSpec::new(
                        f.name.clone(),
                        DType::F32,
                        Shape::fixed(&[labels.len()]),
                    )
                    .with_labels(names);
                }
                let from_mil = mil_outputs
                    .iter()
                    .find(|(n, _)| *n == f.name)
                    .or_else(|| mil_outputs.get(i))
                    .map(|(_, t)| t);
                tensor_spec(f, from_mil)
            })
            .collect(),
    }
}

/// The pomme tensor spec of a feature; `mil_type` is the ML Program's type for an
/// output whose description leaves the shape unset.
fn tensor_spec(f: &FeatureInfo, mil_type: Option<&mil::TensorType>) -> TensorSpec {
    let fixed = |v: &[u64]| Shape(v.iter().map(|&d| Dim::Fixed(d as usize)).collect());
    let (dtype, shape) = match f.kind {
        FeatureKind::MultiArray | FeatureKind::State => {
            let dtype = array_dtype(&f.data_type);
            let shape = match &f.flexibility {
                ShapeFlexibility::Fixed if f.shape.is_empty() => match mil_type {
                    Some(t) => Shape(
                        t.dimensions
                            .iter()
                            .map(|d| match &d.dimension {
                                Some(mil::dimension::Dimension::Constant(c)) => {
                                    Dim::Fixed(c.size as usize)
                                }
                                _ => Dim::Symbolic(ANY.into()),
                            })
                            .collect(),
                    ),
                    None => Shape::default(),
                },
                ShapeFlexibility::Fixed => fixed(&f.shape),
                ShapeFlexibility::Enumerated(shapes) => flexible_enumerated(&f.shape, shapes),
                ShapeFlexibility::Range(ranges) => Shape(
                    ranges
                        .iter()
                        .map(|r| match r.upper {
                            Some(u) if u == r.lower => Dim::Fixed(u as usize),
                            _ => Dim::Symbolic(ANY.into()),
                        })
                        .collect(),
                ),
            };
            let dtype = match (f.data_type.as_str(), mil_type) {
                ("INVALID_ARRAY_DATA_TYPE", Some(t)) => mil_dtype(t.data_type).unwrap_or(dtype),
                _ => dtype,
            };
            (dtype, shape)
        }
        FeatureKind::Image => {
            let dtype = if f.data_type == "GRAYSCALE_FLOAT16" {
                DType::F16
            } else {
                DType::U8
            };
            let channels = if f.data_type.starts_with("GRAYSCALE") {
                1
            } else {
                3
            };
            let mut hw = match &f.flexibility {
                ShapeFlexibility::Fixed => fixed(&f.shape).0,
                ShapeFlexibility::Enumerated(s) => flexible_enumerated(&f.shape, s).0,
                ShapeFlexibility::Range(r) => r
                    .iter()
                    .map(|r| match r.upper {
                        Some(u) if u == r.lower => Dim::Fixed(u as usize),
                        _ => Dim::Symbolic(ANY.into()),
                    })
                    .collect(),
            };
            hw.push(Dim::Fixed(channels));
            (dtype, Shape(hw))
        }
        FeatureKind::Int64 => (DType::I64, Shape::fixed(&[1])),
        FeatureKind::Double => (DType::F64, Shape::fixed(&[1])),
        FeatureKind::Sequence => (DType::Bytes, Shape(vec![Dim::Symbolic(ANY.into())])),
        FeatureKind::String | FeatureKind::Dictionary | FeatureKind::Invalid => {
            (DType::Bytes, Shape::fixed(&[1]))
        }
    };
    TensorSpec::new(f.name.clone(), dtype, shape)
}

/// The concrete shapes a flexible multi-array or image input takes, checked
/// at the edge (a shape outside them is a 400 naming them, not a Core ML
/// error at prediction). Images are `[height, width, channels]`.
pub fn allowed_shapes(f: &FeatureInfo) -> Option<AllowedShapes> {
    let us = |v: &[u64]| v.iter().map(|&d| d as usize).collect::<Vec<_>>();
    let channels = match f.kind {
        FeatureKind::MultiArray => None,
        FeatureKind::Image if f.data_type.starts_with("GRAYSCALE") => Some(1),
        FeatureKind::Image => Some(3),
        _ => return None,
    };
    match &f.flexibility {
        ShapeFlexibility::Fixed => None,
        ShapeFlexibility::Enumerated(shapes) => Some(AllowedShapes::OneOf(
            shapes
                .iter()
                .map(|s| {
                    let mut v = us(s);
                    v.extend(channels);
                    v
                })
                .collect(),
        )),
        ShapeFlexibility::Range(r) => {
            let mut v: Vec<(usize, Option<usize>)> = r
                .iter()
                .map(|r| (r.lower as usize, r.upper.map(|u| u as usize)))
                .collect();
            v.extend(channels.map(|c| (c, Some(c))));
            Some(AllowedShapes::Ranges(v))
        }
    }
}

/// Dimensions equal in the default and every enumerated shape stay fixed; the others are symbolic.
fn flexible_enumerated(default: &[u64], shapes: &[Vec<u64>]) -> Shape {
    let rank = shapes.first().map_or(default.len(), Vec::len);
    let reference: Vec<u64> = if default.len() == rank {
        default.to_vec()
    } else {
        shapes.first().cloned().unwrap_or_default()
    };
    Shape(
        (0..rank)
            .map(|i| {
                let d = reference[i];
                if shapes.iter().all(|s| s.get(i) == Some(&d)) {
                    Dim::Fixed(d as usize)
                } else {
                    Dim::Symbolic(ANY.into())
                }
            })
            .collect(),
    )
}

fn fmt_flex(f: &ShapeFlexibility) -> Option<(&'static str, String)> {
    let dims = |v: &[u64]| {
        let s: Vec<String> = v.iter().map(u64::to_string).collect();
        format!("[{}]", s.join(","))
    };
    match f {
        ShapeFlexibility::Fixed => None,
        ShapeFlexibility::Enumerated(shapes) => Some((
            "enumerated_shapes",
            shapes.iter().map(|s| dims(s)).collect::<Vec<_>>().join(" "),
        )),
        ShapeFlexibility::Range(r) => Some((
            "shape_range",
            format!(
                "[{}]",
                r.iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        )),
    }
}

impl CoreMlInfo {
    /// Whether any input has a flexible (enumerated or range) shape.
    pub fn has_flexible_inputs(&self) -> bool {
        self.inputs
            .iter()
            .any(|f| f.flexibility != ShapeFlexibility::Fixed)
    }

    /// The signature with image inputs in `layout` (the `image_layout`
    /// option; see [`crate::convert::image::spec_in_layout`]). Image outputs
    /// stay `[H, W, C]`.
    pub fn signature_in_layout(&self, layout: ImageLayout) -> ModelSignature {
        let mut sig = self.signature.clone();
        for spec in &mut sig.inputs {
            if self
                .inputs
                .iter()
                .any(|f| f.name == spec.name && f.kind == FeatureKind::Image)
            {
                *spec = spec_in_layout(spec, layout);
            }
        }
        sig
    }

    /// This model as Core ML loads it with `function` named: that function's
    /// inputs, outputs, states, signature and classifier. A single-function
    /// model accepts its own function name (`main` for ML Programs).
    pub fn select_function(&self, function: &str) -> Result<CoreMlInfo> {
        if self.functions.is_empty() {
            let own = self
                .compute
                .functions
                .first()
                .map_or("main", String::as_str);
            if function == own {
                return Ok(self.clone());
            }
            return Err(Error::invalid_input(format!(
                "{} has one function ({own}), not '{function}'",
                self.path.display()
            )));
        }
        let f = self
            .functions
            .iter()
            .find(|f| f.name == function)
            .ok_or_else(|| {
                let names: Vec<&str> = self.functions.iter().map(|f| f.name.as_str()).collect();
                Error::invalid_input(format!(
                    "{} has no function '{function}' (it has {})",
                    self.path.display(),
                    names.join(", ")
                ))
            })?;
        let mut out = self.clone();
        out.inputs = f.inputs.clone();
        out.outputs = f.outputs.clone();
        out.states = f.states.clone();
        out.signature = f.signature.clone();
        out.classifier = f.classifier.clone();
        Ok(out)
    }

    /// An ML Program that computes in float16 (converted with
    /// `compute_precision = FLOAT16`, coremltools' default).
    pub fn is_fp16_program(&self) -> bool {
        self.model_type == "mlProgram" && self.compute.value_dtypes.contains_key("FLOAT16")
    }

    /// A neural network (plain, classifier or regressor), possibly in a pipeline.
    pub fn has_neural_network(&self) -> bool {
        fn nn(t: &str) -> bool {
            t.starts_with("neuralNetwork")
        }
        fn any(s: &[SubModel]) -> bool {
            s.iter().any(|m| nn(&m.model_type) || any(&m.sub_models))
        }
        nn(&self.model_type) || any(&self.sub_models)
    }

    /// Whether the model keeps state between predictions (needs sequences).
    pub fn is_stateful(&self) -> bool {
        !self.states.is_empty()
    }

    /// pomme's [`ModelInfo`]. Metadata keys: `format` (`coreml`), `container`,
    /// `model_type`, `specification_version`, `description`, `version`, `author`,
    /// `license`, `user.<key>` for user-defined entries, `input.<name>.enumerated_shapes`
    /// / `input.<name>.shape_range` (and `output.`) for flexible shapes,
    /// `input.<name>.color_space` / `.image_width` / `.image_height` for
    /// images, `states` and `state.<name>` (`FLOAT16 [1,4]`), `functions`
    /// and `default_function` (multifunction packages),
    /// `classifier.predicted_feature`, `classifier.probabilities_feature`,
    /// `classifier.label_type` and `classifier.labels` (a JSON array),
    /// `mil.opsets`, `mil.functions`, `pipeline.models`.
    pub fn to_model_info(&self) -> ModelInfo {
        let mut md = BTreeMap::new();
        md.insert("format".into(), "coreml".into());
        md.insert("container".into(), self.container.as_str().into());
        md.insert("model_type".into(), self.model_type.clone());
        md.insert(
            "specification_version".into(),
            self.spec_version.to_string(),
        );
        let m = &self.metadata;
        for (k, v) in [
            ("description", &m.short_description),
            ("version", &m.version),
            ("author", &m.author),
            ("license", &m.license),
        ] {
            if !v.is_empty() {
                md.insert(k.into(), v.clone());
            }
        }
        for (k, v) in &m.user_defined {
            md.insert(format!("user.{k}"), v.clone());
        }
        for (side, list) in [("input", &self.inputs), ("output", &self.outputs)] {
            for f in list {
                if let Some((key, value)) = fmt_flex(&f.flexibility) {
                    md.insert(format!("{side}.{}.{key}", f.name), value);
                }
                if f.kind == FeatureKind::Image {
                    md.insert(
                        format!("{side}.{}.color_space", f.name),
                        f.data_type.clone(),
                    );
                    if let [h, w] = f.shape[..] {
                        md.insert(format!("{side}.{}.image_height", f.name), h.to_string());
                        md.insert(format!("{side}.{}.image_width", f.name), w.to_string());
                    }
                }
            }
        }
        if !self.states.is_empty() {
            let names: Vec<&str> = self.states.iter().map(|f| f.name.as_str()).collect();
            md.insert("states".into(), names.join(","));
            for f in &self.states {
                let dims: Vec<String> = f.shape.iter().map(u64::to_string).collect();
                md.insert(
                    format!("state.{}", f.name),
                    format!("{} [{}]", f.data_type, dims.join(",")),
                );
            }
        }
        if let Some(default) = &self.default_function {
            let names: Vec<&str> = self.functions.iter().map(|f| f.name.as_str()).collect();
            md.insert("functions".into(), names.join(","));
            md.insert("default_function".into(), default.clone());
        }
        if let Some(c) = &self.classifier {
            md.insert(
                "classifier.predicted_feature".into(),
                c.predicted_feature.clone(),
            );
            md.insert(
                "classifier.probabilities_feature".into(),
                c.probabilities_feature.clone(),
            );
            if let Some(labels) = &c.labels {
                md.insert("classifier.label_type".into(), labels.kind().into());
                let json = match labels {
                    ClassLabels::Strings(v) => serde_json::to_string(v),
                    ClassLabels::Int64(v) => serde_json::to_string(v),
                };
                md.insert("classifier.labels".into(), json.unwrap_or_default());
            }
        }
        if !self.compute.opsets.is_empty() {
            let v: Vec<&str> = self.compute.opsets.iter().map(String::as_str).collect();
            md.insert("mil.opsets".into(), v.join(","));
            md.insert("mil.functions".into(), self.compute.functions.join(","));
        }
        if !self.sub_models.is_empty() {
            let v: Vec<String> = self
                .sub_models
                .iter()
                .map(|s| {
                    if s.name.is_empty() {
                        s.model_type.clone()
                    } else {
                        format!("{}:{}", s.name, s.model_type)
                    }
                })
                .collect();
            md.insert("pipeline.models".into(), v.join(","));
        }
        ModelInfo {
            signature: self.signature.clone(),
            parameters: self.parameters,
            weight_bytes: self.weight_bytes,
            activation_bytes_estimate: self.activation_bytes_estimate,
            op_histogram: self.op_histogram.clone(),
            metadata: md,
        }
    }
}

impl From<&CoreMlInfo> for ModelInfo {
    fn from(i: &CoreMlInfo) -> ModelInfo {
        i.to_model_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_and_wire_errors_are_one_line() {
        // field 1, length-delimited, claims 5 bytes but has 1
        let e = oneof_name(&[0x0a, 0x05, 0x01], MODEL_TYPES).unwrap_err();
        assert!(e.to_string().contains("truncated protobuf"), "{e}");
        assert!(!e.to_string().contains('\n'));
        let e = oneof_name(&[0x08, 0xff], MODEL_TYPES).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = oneof_name(&[0x0b], MODEL_TYPES).unwrap_err();
        assert!(e.to_string().contains("wire type"), "{e}");
    }

    #[test]
    fn empty_and_garbage_bytes() {
        assert!(matches!(
            read_mlmodel_bytes(&[]),
            Err(Error::InvalidModelFormat(_))
        ));
        let e = read_mlmodel_bytes(b"definitely not a protobuf").unwrap_err();
        assert!(matches!(e, Error::InvalidModelFormat(_)), "{e}");
    }

    #[test]
    fn tables_come_from_the_spec() {
        assert!(MODEL_TYPES.contains(&(502, "mlProgram")));
        assert!(MODEL_TYPES.contains(&(500, "neuralNetwork")));
        assert!(LAYER_TYPES.contains(&(140, "innerProduct")));
        assert_eq!(LAYER_TYPES.len(), 158);
    }

    #[test]
    fn enumerated_dims_that_vary_are_symbolic() {
        let s = flexible_enumerated(&[1, 3], &[vec![1, 3], vec![2, 3], vec![4, 3]]);
        assert_eq!(s.to_string(), "[?,3]");
    }
}
