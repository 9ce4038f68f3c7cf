//! Loading, describing and running a Core ML model.
//!
//! `MLModel` is neither `Send` nor `Sync`, and MLMultiArray / MLFeatureValue are
//! not `Send`: each loaded model lives on one dedicated thread that builds every
//! Objective-C object itself from plain Rust data received over a channel, with
//! an autorelease pool per job. Predictions on one model are serialized there.
//!
//! Features: multi-arrays, `Int64` / `Double` / `String` scalars (one-element
//! tensors, `convert::scalar`), classifier probabilities (the dictionary
//! mapped to `FP32 [labels]` in label order, `convert::classifier`).
//! Stateful models (macOS 15+) keep one `MLState` per sequence in a
//! `convert::state::StateTable` on the thread; a request without sequence
//! runs on a fresh state. `function` picks a multifunction package's function
//! (macOS 15+). Image inputs are `U8 [H, W, C]` tensors (`[1, C, H, W]` under
//! `image_layout = "nchw"`) written into a `CVPixelBuffer` of the model's format, image outputs come
//! back as `U8 [H, W, C]` (`native::pixels` around `convert::image`).
//!
//! Loading and every job run inside Objective-C exception catching: an
//! exception fails that request with `Error::Internal` and the thread loads a
//! fresh `MLModel` from the compiled bundle before the next job (the old
//! instance may be left half-way through a prediction); if that reload
//! fails, the thread stops and later requests get `Internal` errors. The
//! server and the other models go on. (Type-checked, not run.)

use super::{
    MIN_MACOS, check_units, compile, compute_units, file_url, macos_at_least, ns_error,
    require_macos,
};
use crate::convert::classifier::{LabelKey, ordered_probabilities};
use crate::convert::image::{self, ImageLayout, ImageSize, PixelFormat};
use crate::convert::scalar;
use crate::convert::state::StateTable;
use crate::options::CoreMlOptions;
use crate::predict::{PredictCall, output_backing, predict_call};
use crate::reader::{self, ClassifierInfo};
use block2::{RcBlock, StackBlock};
use bytes::Bytes;
use objc2::AllocAnyThread;
use objc2::rc::{Retained, autoreleasepool};
use objc2::runtime::{AnyObject, ProtocolObject};
use objc2_core_ml::{
    MLArrayBatchProvider, MLBatchProvider, MLComputeUnits, MLDictionaryFeatureProvider,
    MLFeatureDescription, MLFeatureProvider, MLFeatureType, MLFeatureValue, MLModel,
    MLModelConfiguration, MLMultiArray, MLMultiArrayDataType, MLMultiArrayShapeConstraintType,
    MLOptimizationHints, MLPredictionOptions, MLReshapeFrequencyHint, MLState,
};
use objc2_foundation::{NSArray, NSDictionary, NSError, NSNumber, NSString};
use parking_lot::Mutex;
use pomme_core::tensor::AlignedBuf;
use pomme_core::{
    AllowedShapes, DType, DeviceKind, Dim, Error, LoadOptions, LoadedModel, MemoryEstimate,
    ModelArtifact, ModelSignature, PlacementShare, Precision, Result, SequenceControl, Session,
    Shape, Tensor, TensorSpec,
};
use std::cell::RefCell;
use std::ffi::c_void;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

/// A job for the model's thread: inputs in signature order, outputs back in signature order.
struct Job {
    inputs: Vec<Tensor>,
    /// Set for a request of a sequence (stateful models).
    seq: Option<SequenceControl>,
    reply: mpsc::Sender<Result<Vec<Tensor>>>,
}

/// A loaded Core ML model: a handle to its owner thread.
pub(crate) struct CoreMlLoaded {
    /// One job queue per model instance (`instances`); sessions take them in turn.
    jobs: Vec<Mutex<mpsc::Sender<Job>>>,
    next: std::sync::atomic::AtomicUsize,
    signature: ModelSignature,
    memory: MemoryEstimate,
    device: DeviceKind,
    precision: Precision,
    compute_precision: Precision,
    placement: Vec<PlacementShare>,
    stateful: bool,
}

struct CoreMlSession {
    jobs: mpsc::Sender<Job>,
}

impl CoreMlSession {
    fn send(&self, inputs: Vec<Tensor>, seq: Option<SequenceControl>) -> Result<Vec<Tensor>> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Job {
                inputs,
                seq,
                reply: tx,
            })
            .map_err(|_| Error::Internal("the Core ML model thread has stopped".into()))?;
        rx.recv()
            .map_err(|_| Error::Internal("the Core ML model thread dropped a job".into()))?
    }
}

impl Session for CoreMlSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        self.send(inputs, None)
    }

    fn run_sequence(&mut self, inputs: Vec<Tensor>, seq: &SequenceControl) -> Result<Vec<Tensor>> {
        self.send(inputs, Some(seq.clone()))
    }
}

impl LoadedModel for CoreMlLoaded {
    fn backend(&self) -> &'static str {
        "coreml"
    }
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }
    fn memory(&self) -> MemoryEstimate {
        self.memory
    }
    fn device(&self) -> DeviceKind {
        self.device
    }
    fn precision(&self) -> Precision {
        self.precision
    }
    fn compute_precision(&self) -> Precision {
        self.compute_precision
    }
    fn session(&self) -> Result<Box<dyn Session>> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.jobs.len();
        let jobs = self.jobs[i].lock().clone();
        Ok(Box::new(CoreMlSession { jobs }))
    }
    fn placement(&self) -> Vec<PlacementShare> {
        self.placement.clone()
    }
    fn is_stateful(&self) -> bool {
        self.stateful
    }
}

/// A model configuration for the given compute units.
pub(crate) fn configuration(
    units: MLComputeUnits,
    low_precision: bool,
    flexible: bool,
    function: Option<&str>,
) -> Retained<MLModelConfiguration> {
    // SAFETY: plain property setters on a fresh configuration object; every
    // selector used exists on macOS 12.3+ except the hints (gated below).
    unsafe {
        let cfg = MLModelConfiguration::new();
        cfg.setComputeUnits(units);
        cfg.setAllowLowPrecisionAccumulationOnGPU(low_precision);
        if macos_at_least(14, 4) {
            let hints = MLOptimizationHints::new();
            hints.setReshapeFrequency(if flexible {
                MLReshapeFrequencyHint::Frequent
            } else {
                MLReshapeFrequencyHint::Infrequent
            });
            cfg.setOptimizationHints(&hints);
        }
        // `functionName` is macOS 15+; `load` checks the version when one is named.
        if let Some(f) = function {
            cfg.setFunctionName(Some(&NSString::from_str(f)));
        }
        cfg
    }
}

/// Compiles (cached in `opts.cache_dir`, else `cache_dir`), loads and starts
/// the owner thread of a model.
pub(crate) fn load(
    artifact: &ModelArtifact,
    options: &LoadOptions,
    opts: &CoreMlOptions,
    cache_dir: &Path,
) -> Result<Arc<dyn LoadedModel>> {
    require_macos(MIN_MACOS.0, MIN_MACOS.1, "the Core ML backend")?;
    let (units, units_name) = compute_units(opts, options.device)?;
    check_units(units)?;
    if options.precision != Precision::F32 && options.precision != Precision::F16 {
        return Err(Error::UnsupportedPrecision(format!(
            "Core ML runs models at the precision they were converted with (f32 or f16), not {}",
            options.precision
        )));
    }
    let path = &artifact.path;
    // The pure reader gives the declared order, flexible shapes and weights
    // (compiled bundles fall back to Core ML's description, sorted by name).
    let info = match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("mlmodelc") => None,
        _ => Some(reader::read(path)?),
    };
    // A named function: the reader's view of that function.
    let info = match (&opts.function, info) {
        (Some(f), Some(i)) => Some(i.select_function(f)?),
        (_, i) => i,
    };
    if opts.function.is_some() {
        require_macos(15, 0, "function (multifunction packages)")?;
    }
    if info.as_ref().is_some_and(reader::CoreMlInfo::is_stateful) {
        require_macos(15, 0, "stateful models (MLState)")?;
    }
    let reader_sig = info.as_ref().map(|i| i.signature.clone());
    let classifier = info.as_ref().and_then(|i| i.classifier.clone());
    let function = opts.function.clone();
    let limits = opts.states;
    let cache_dir = opts.cache_dir.as_deref().unwrap_or(cache_dir);
    let compiled = compile::compiled(path, cache_dir, opts.cache_max_bytes())?;
    let placement = placement_at_load(path, &compiled, units, units_name, opts.min_ane_share)?;
    let flexible = info
        .as_ref()
        .is_some_and(reader::CoreMlInfo::has_flexible_inputs);
    let virtual_batch = opts.virtual_batch;
    let low_precision = options.precision == Precision::F16 || opts.allow_low_precision_gpu;

    let order = info.as_ref().map(|i| {
        (
            i.inputs.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
            i.outputs.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        )
    });
    let setup = Setup {
        compiled: compiled.clone(),
        units,
        low_precision,
        flexible,
        function,
        order,
        reader_sig,
        classifier,
        limits,
        virtual_batch,
        image_layout: opts.image_layout,
    };
    let stem = path
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    // The first instance says whether the model is stateful: a sequence's
    // state lives on one instance, so stateful models get only that one.
    let (first, native_sig, stateful) = spawn_instance(setup.clone(), format!("coreml-{stem}"))?;
    let mut senders = vec![Mutex::new(first)];
    if !stateful {
        for i in 1..opts.instances {
            let (tx, _, _) = spawn_instance(setup.clone(), format!("coreml-{stem}-{i}"))?;
            senders.push(Mutex::new(tx));
        }
    }

    // Sequences run one request at a time: no batch is offered.
    let signature = if virtual_batch && !stateful {
        batch_view(&native_sig).unwrap_or(native_sig)
    } else {
        native_sig
    };
    let device = match units {
        u if u == MLComputeUnits::CPUAndNeuralEngine => DeviceKind::Ane,
        u if u == MLComputeUnits::CPUAndGPU => DeviceKind::Metal,
        u if u == MLComputeUnits::CPUOnly => DeviceKind::Cpu,
        _ => DeviceKind::Auto,
    };
    let compute_precision = super::units_kind(units).compute_precision(
        options.precision == Precision::F16
            || info
                .as_ref()
                .is_some_and(reader::CoreMlInfo::is_fp16_program),
        info.as_ref()
            .is_none_or(reader::CoreMlInfo::has_neural_network),
        low_precision,
    );
    let memory = MemoryEstimate {
        // A compiled bundle has no reader info: its weight files are counted.
        weight_bytes: info.as_ref().map_or_else(
            || crate::cache::bundle_weight_bytes(&compiled),
            |i| i.weight_bytes,
        ),
        activation_bytes_per_item: info.as_ref().map_or(0, |i| i.activation_bytes_estimate),
    };
    Ok(Arc::new(CoreMlLoaded {
        jobs: senders,
        next: std::sync::atomic::AtomicUsize::new(0),
        signature,
        memory,
        device,
        precision: options.precision,
        compute_precision,
        placement,
        stateful,
    }))
}

/// What each instance's owner thread needs to load and run the model.
#[derive(Clone)]
struct Setup {
    compiled: std::path::PathBuf,
    units: MLComputeUnits,
    low_precision: bool,
    flexible: bool,
    function: Option<String>,
    order: Option<(Vec<String>, Vec<String>)>,
    reader_sig: Option<ModelSignature>,
    classifier: Option<ClassifierInfo>,
    limits: crate::convert::state::StateLimits,
    virtual_batch: bool,
    image_layout: ImageLayout,
}

/// Starts one model instance on its own thread; returns its job queue, its
/// signature and whether it is stateful once it has loaded.
fn spawn_instance(setup: Setup, name: String) -> Result<(mpsc::Sender<Job>, ModelSignature, bool)> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(ModelSignature, bool)>>();
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let Setup {
                compiled: compiled_c,
                units,
                low_precision,
                flexible,
                function,
                order,
                reader_sig,
                classifier,
                limits,
                virtual_batch,
                image_layout,
            } = setup;
            // The model is created on, used on and released on this thread only.
            let open = || {
                super::catching("loading the model", || {
                    autoreleasepool(|_| -> Result<(Retained<MLModel>, Described)> {
                        let cfg = configuration(units, low_precision, flexible, function.as_deref());
                        // SAFETY: valid URL and configuration; returns a retained model or an NSError.
                        let model = unsafe {
                            MLModel::modelWithContentsOfURL_configuration_error(
                                &file_url(&compiled_c),
                                &cfg,
                            )
                        }
                        .map_err(|e| Error::CompilationFailed(ns_error(&e)))?;
                        let mut d = describe(&model, order.as_ref(), reader_sig.as_ref())?;
                        d.set_image_layout(image_layout);
                        Ok((model, d))
                    })
                })
            };
            let (mut model, d) = match open() {
                Ok(v) => v,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok((d.sig.clone(), d.stateful)));
            // MLState is tied to its model instance and never leaves this thread.
            let mut states: StateTable<Retained<MLState>> = StateTable::new(limits);
            for Job { inputs, seq, reply } in job_rx {
                let ran = super::catch_objc(|| {
                    autoreleasepool(|_| {
                        let ctx = Ctx {
                            model: &model,
                            d: &d,
                            classifier: classifier.as_ref(),
                        };
                        // SAFETY (newState): macOS 15+, checked at load for stateful models.
                        match (&seq, d.stateful) {
                            (Some(seq), true) => states.step(
                                seq,
                                Instant::now(),
                                || Ok(unsafe { model.newState() }),
                                |state| run_stateful(&ctx, inputs, state),
                            ),
                            (None, true) => run_stateful(&ctx, inputs, &*unsafe { model.newState() }),
                            _ => run_job(&ctx, inputs, virtual_batch),
                        }
                    })
                });
                let res = match ran {
                    Ok(res) => res,
                    Err(exception) => {
                        tracing::error!(%exception, "Core ML raised an Objective-C exception during a prediction; loading a fresh model instance");
                        let reloaded = open();
                        let _ = reply.send(Err(Error::Internal(format!(
                            "Core ML raised an Objective-C exception during the prediction: {exception}"
                        ))));
                        // States belong to the old instance: their sequences must start again.
                        states = StateTable::new(limits);
                        match reloaded {
                            Ok((m, _)) => {
                                model = m;
                                continue;
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "the Core ML model could not be loaded again; its thread stops");
                                return;
                            }
                        }
                    }
                };
                let _ = reply.send(res);
            }
        })
        .map_err(|e| Error::Internal(format!("cannot start the Core ML model thread: {e}")))?;
    let (sig, stateful) = ready_rx
        .recv()
        .map_err(|_| Error::Internal("the Core ML model thread stopped while loading".into()))??;
    Ok((job_tx, sig, stateful))
}

/// Core ML's compute plan at load (macOS 14.4+): logged, kept for the
/// runtime's metrics, and checked against the model's `min_ane_share`. A
/// minimum that cannot be checked (older macOS, plan failure) refuses the load
/// rather than serving a model whose placement is unknown.
fn placement_at_load(
    path: &Path,
    compiled: &Path,
    units: MLComputeUnits,
    units_name: &str,
    min: Option<f64>,
) -> Result<Vec<PlacementShare>> {
    let report = if macos_at_least(14, 4) {
        match super::plan_for_compiled(compiled, units, units_name) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(model = %path.display(), error = %e, "no Core ML compute plan");
                None
            }
        }
    } else {
        None
    };
    match (&report, min) {
        (Some(r), min) => {
            let s = r.shares();
            tracing::info!(
                model = %path.display(),
                compute_units = units_name,
                ane_ops = s[0].ops,
                gpu_ops = s[1].ops,
                cpu_ops = s[2].ops,
                ane_share = r.ane_share(),
                "Core ML placement"
            );
            if let Some(min) = min {
                r.require_ane_share(min)?;
            }
        }
        (None, Some(min)) => {
            return Err(Error::Unavailable(format!(
                "min_ane_share = {min} needs Core ML's compute plan (macOS 14.4 or later), which is not available here"
            )));
        }
        (None, None) => {}
    }
    Ok(report.map(|r| r.placement_shares()).unwrap_or_default())
}

/// When every input and output has a fixed leading 1, the model is offered with a
/// symbolic `batch` dimension instead: a batch of N rows runs as N predictions
/// through one `MLArrayBatchProvider`.
fn batch_view(sig: &ModelSignature) -> Option<ModelSignature> {
    let all_one = sig
        .inputs
        .iter()
        .chain(&sig.outputs)
        .all(|s| s.shape.dims().first() == Some(&Dim::Fixed(1)));
    if !all_one || sig.inputs.is_empty() {
        return None;
    }
    let relabel = |s: &TensorSpec| {
        let mut dims = s.shape.0.clone();
        dims[0] = Dim::Symbolic("batch".into());
        TensorSpec::new(s.name.clone(), s.dtype, Shape(dims))
    };
    Some(ModelSignature {
        inputs: sig.inputs.iter().map(relabel).collect(),
        outputs: sig.outputs.iter().map(relabel).collect(),
    })
}

fn ml_dtype(d: MLMultiArrayDataType) -> Option<DType> {
    Some(match d {
        x if x == MLMultiArrayDataType::Float32 => DType::F32,
        x if x == MLMultiArrayDataType::Float16 => DType::F16,
        x if x == MLMultiArrayDataType::Float64 => DType::F64,
        x if x == MLMultiArrayDataType::Int32 => DType::I32,
        x if x == MLMultiArrayDataType::Int8 => DType::I8,
        _ => return None,
    })
}

fn to_ml_dtype(d: DType) -> Option<MLMultiArrayDataType> {
    Some(match d {
        DType::F32 => MLMultiArrayDataType::Float32,
        DType::F16 => MLMultiArrayDataType::Float16,
        DType::F64 => MLMultiArrayDataType::Float64,
        DType::I32 => MLMultiArrayDataType::Int32,
        _ => return None,
    })
}

fn usizes(a: &NSArray<NSNumber>) -> Vec<usize> {
    a.iter().map(|n| n.as_isize().max(0) as usize).collect()
}

fn numbers(v: &[usize]) -> Retained<NSArray<NSNumber>> {
    let nums: Vec<Retained<NSNumber>> =
        v.iter().map(|&x| NSNumber::new_isize(x as isize)).collect();
    NSArray::from_retained_slice(&nums)
}

/// The pixel format and default size of an image feature. Color formats
/// other than the ones pomme builds (32ARGB...) get 32BGRA: Core ML converts.
fn image_format(d: &MLFeatureDescription) -> Option<(PixelFormat, ImageSize)> {
    // SAFETY: read-only getters on a description owned by the loaded model.
    unsafe {
        let c = d.imageConstraint()?;
        let format = PixelFormat::from_four_cc(c.pixelFormatType()).unwrap_or(PixelFormat::Bgra32);
        let size = ImageSize {
            width: c.pixelsWide().max(0) as usize,
            height: c.pixelsHigh().max(0) as usize,
        };
        Some((format, size))
    }
}

/// A pomme spec from a Core ML feature description, flexible shapes included.
fn feature_spec(d: &MLFeatureDescription) -> Result<TensorSpec> {
    // SAFETY: read-only getters on a description owned by the loaded model.
    unsafe {
        let name = d.name().to_string();
        let kind = d.r#type();
        if kind == MLFeatureType::Int64 {
            return Ok(TensorSpec::new(name, DType::I64, Shape::fixed(&[1])));
        }
        if kind == MLFeatureType::Double {
            return Ok(TensorSpec::new(name, DType::F64, Shape::fixed(&[1])));
        }
        if kind == MLFeatureType::String {
            return Ok(TensorSpec::new(name, DType::Bytes, Shape::fixed(&[1])));
        }
        // A classifier's probabilities: `describe` takes the reader's
        // `FP32 [labels]` when it knows the labels.
        if kind == MLFeatureType::Dictionary {
            return Ok(TensorSpec::new(name, DType::Bytes, Shape::fixed(&[1])));
        }
        // Images: the default size; `describe` takes the reader's spec (with
        // its flexible sizes) when it has one.
        if let Some((format, size)) = image_format(d) {
            let dtype = match format {
                PixelFormat::OneComponent16Half => DType::F16,
                _ => DType::U8,
            };
            return Ok(TensorSpec::new(
                name,
                dtype,
                Shape::fixed(&[size.height, size.width, format.channels()]),
            ));
        }
        let c = d.multiArrayConstraint().ok_or_else(|| {
            Error::Unavailable(format!(
                "feature '{name}' is an image, sequence or state the native Core ML backend does not run yet (it runs multi-arrays, int64 / double / string scalars and classifier outputs)"
            ))
        })?;
        let dtype = ml_dtype(c.dataType()).unwrap_or(DType::F32);
        let default = usizes(&c.shape());
        let sc = c.shapeConstraint();
        let t = sc.r#type();
        let mut allowed = None;
        let dims: Vec<Dim> = if t == MLMultiArrayShapeConstraintType::Enumerated {
            let shapes: Vec<Vec<usize>> =
                sc.enumeratedShapes().iter().map(|s| usizes(&s)).collect();
            let dims = (0..default.len())
                .map(|i| {
                    if shapes.iter().all(|s| s.get(i) == Some(&default[i])) {
                        Dim::Fixed(default[i])
                    } else {
                        Dim::Symbolic("?".into())
                    }
                })
                .collect();
            allowed = Some(AllowedShapes::OneOf(shapes));
            dims
        } else if t == MLMultiArrayShapeConstraintType::Range {
            let ranges: Vec<(usize, Option<usize>)> = sc
                .sizeRangeForDimension()
                .iter()
                .map(|v| match v.get_range() {
                    // An unbounded dimension has a length near NSNotFound.
                    Some(r) => (
                        r.location,
                        r.location
                            .checked_add(r.length)
                            .filter(|&u| u < isize::MAX as usize / 2),
                    ),
                    None => (0, None),
                })
                .collect();
            let dims = ranges
                .iter()
                .map(|&(lo, hi)| match hi {
                    Some(h) if h == lo => Dim::Fixed(lo),
                    _ => Dim::Symbolic("?".into()),
                })
                .collect();
            allowed = Some(AllowedShapes::Ranges(ranges));
            dims
        } else {
            default.iter().map(|&d| Dim::Fixed(d)).collect()
        };
        let spec = TensorSpec::new(name, dtype, Shape(dims));
        Ok(match allowed {
            Some(a) => spec.allowing(a),
            None => spec,
        })
    }
}

/// A feature's spec, Core ML type and, for images, pixel format and size.
type Feature = (TensorSpec, MLFeatureType, Option<(PixelFormat, ImageSize)>);

/// What the owner thread knows of the loaded model: its signature and each
/// feature's Core ML type, in signature order.
struct Described {
    sig: ModelSignature,
    inputs: Vec<MLFeatureType>,
    outputs: Vec<MLFeatureType>,
    /// Each input's pixel format and default size when it is an image.
    images: Vec<Option<(PixelFormat, ImageSize)>>,
    /// The model declares states (macOS 15+ reports them).
    stateful: bool,
    /// How clients lay out image inputs (`image_layout`).
    image_layout: ImageLayout,
    /// Per output, a pre-allocated array Core ML writes single predictions
    /// into (`outputBackings`), reused job after job: outputs are copied out
    /// before the next job runs on this thread.
    /// Emptied for good when a prediction with them fails and one without
    /// succeeds (Core ML refuses a backing its description does not allow).
    backings: RefCell<Vec<Option<Retained<MLMultiArray>>>>,
}

impl Described {
    /// Image inputs in `layout`, in the signature and for pixel conversion.
    fn set_image_layout(&mut self, layout: ImageLayout) {
        self.image_layout = layout;
        for (spec, image) in self.sig.inputs.iter_mut().zip(&self.images) {
            if image.is_some() {
                *spec = image::spec_in_layout(spec, layout);
            }
        }
    }
}

/// The model's signature from Core ML's description, in `order` when the
/// reader gave one (NSDictionary has no order), else sorted by name. Outputs
/// Core ML types as dictionaries take the reader's spec (`reader_sig`).
fn describe(
    model: &MLModel,
    order: Option<&(Vec<String>, Vec<String>)>,
    reader_sig: Option<&ModelSignature>,
) -> Result<Described> {
    // SAFETY: read-only getters on the loaded model's description;
    // `stateDescriptionsByName` is called on macOS 15+ only.
    unsafe {
        let desc = model.modelDescription();
        let collect = |dict: Retained<NSDictionary<NSString, MLFeatureDescription>>,
                       names: Option<&Vec<String>>,
                       reader: Option<&[TensorSpec]>|
         -> Result<Vec<Feature>> {
            let (_, vals) = dict.to_vecs();
            let mut specs: Vec<Feature> = vals
                .iter()
                .map(|f| {
                    let kind = f.r#type();
                    let mut spec = feature_spec(f)?;
                    if (kind == MLFeatureType::Dictionary || kind == MLFeatureType::Image)
                        && let Some(r) = reader.and_then(|r| r.iter().find(|r| r.name == spec.name))
                    {
                        spec = r.clone();
                    }
                    Ok((spec, kind, image_format(f)))
                })
                .collect::<Result<_>>()?;
            match names {
                Some(names) => specs.sort_by_key(|(s, _, _)| {
                    names
                        .iter()
                        .position(|n| *n == s.name)
                        .unwrap_or(usize::MAX)
                }),
                None => specs.sort_by(|a, b| a.0.name.cmp(&b.0.name)),
            }
            Ok(specs)
        };
        let mut ins = Vec::new();
        let mut in_kinds = Vec::new();
        let mut images = Vec::new();
        for (spec, kind, image) in collect(
            desc.inputDescriptionsByName(),
            order.map(|o| &o.0),
            reader_sig.map(|s| &s.inputs[..]),
        )? {
            ins.push(spec);
            in_kinds.push(kind);
            images.push(image);
        }
        let (outs, out_kinds): (Vec<_>, Vec<_>) = collect(
            desc.outputDescriptionsByName(),
            order.map(|o| &o.1),
            reader_sig.map(|s| &s.outputs[..]),
        )?
        .into_iter()
        .map(|(s, k, _)| (s, k))
        .unzip();
        let stateful = super::macos_at_least(15, 0) && desc.stateDescriptionsByName().count() > 0;
        let backings = outs
            .iter()
            .zip(&out_kinds)
            .map(|(spec, &kind)| backing(spec, kind))
            .collect();
        Ok(Described {
            sig: ModelSignature {
                inputs: ins,
                outputs: outs,
            },
            inputs: in_kinds,
            outputs: out_kinds,
            backings: RefCell::new(backings),
            images,
            stateful,
            image_layout: ImageLayout::Hwc,
        })
    }
}

/// Wraps a tensor's buffer as an MLMultiArray without copying. The
/// deallocator block owns a clone of the `Bytes`, so the memory outlives every
/// Core ML reference to it. Unaligned buffers are copied once.
fn multiarray(t: &Tensor) -> Result<Retained<MLMultiArray>> {
    let ml = to_ml_dtype(t.dtype()).ok_or_else(|| {
        Error::invalid_input(format!(
            "Core ML inputs are FP32, FP16, FP64 or INT32, not {}",
            t.dtype()
        ))
    })?;
    let raw = t
        .raw()
        .ok_or_else(|| Error::invalid_input("BYTES tensors are not Core ML multi-arrays"))?;
    let size = t.dtype().size_of().unwrap_or(1);
    let bytes: Bytes = if (raw.as_ptr() as usize).is_multiple_of(size) && !raw.is_empty() {
        raw.clone()
    } else {
        let mut buf = AlignedBuf::zeroed(raw.len().max(size));
        buf.as_mut_bytes()[..raw.len()].copy_from_slice(raw);
        buf.freeze()
    };
    let ptr = NonNull::new(bytes.as_ptr() as *mut c_void)
        .ok_or_else(|| Error::Internal("null tensor buffer".into()))?;
    let shape = t.shape().to_vec();
    let mut strides = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let owner = Mutex::new(Some(bytes));
    let dealloc = RcBlock::new(move |_p: NonNull<c_void>| {
        drop(owner.lock().take());
    });
    // SAFETY: `ptr` points to `len * size` readable bytes kept alive by the
    // deallocator's `Bytes` until Core ML releases the array; shape and
    // strides (in elements, C order) describe exactly that buffer. Core ML
    // only reads input arrays, so the `*mut` cast is never written through.
    unsafe {
        MLMultiArray::initWithDataPointer_shape_dataType_strides_deallocator_error(
            MLMultiArray::alloc(),
            ptr,
            &numbers(&shape),
            ml,
            &numbers(&strides),
            Some(&dealloc),
        )
    }
    .map_err(|e| Error::invalid_input(format!("Core ML rejected an input array: {}", ns_error(&e))))
}

/// Copies a (possibly strided) MLMultiArray into a dense row-major tensor:
/// one copy when dense, a row at a time when only rows are padded
/// (`convert::array`).
fn read_array(a: &MLMultiArray) -> Result<Tensor> {
    // SAFETY: getters on a live array; `getBytesWithHandler` (12.3+, the
    // backend's minimum) calls the block synchronously with a pointer valid
    // for the call, covering every element addressed by shape and strides.
    unsafe {
        let shape = usizes(&a.shape());
        let strides = usizes(&a.strides());
        let dtype = ml_dtype(a.dataType()).ok_or_else(|| {
            Error::InferenceFailed("Core ML returned an array of an unknown data type".into())
        })?;
        let size = dtype.size_of().unwrap_or(1);
        let n: usize = shape.iter().product();
        let out = RefCell::new(AlignedBuf::zeroed(n * size));
        let copied = RefCell::new(Ok(()));
        let block = StackBlock::new(|bytes: NonNull<c_void>, len: isize| {
            let src = std::slice::from_raw_parts(bytes.as_ptr().cast::<u8>(), len.max(0) as usize);
            *copied.borrow_mut() = crate::convert::array::gather_into(
                src,
                &shape,
                &strides,
                size,
                out.borrow_mut().as_mut_bytes(),
            );
        });
        a.getBytesWithHandler(&block);
        copied.into_inner()?;
        Tensor::from_raw(dtype, shape, out.into_inner().freeze())
    }
}

/// What a prediction needs on the owner thread.
struct Ctx<'a> {
    model: &'a MLModel,
    d: &'a Described,
    classifier: Option<&'a ClassifierInfo>,
}

/// One input tensor as the feature value its Core ML type wants.
fn feature_value(
    spec: &TensorSpec,
    kind: MLFeatureType,
    image: Option<(PixelFormat, ImageSize)>,
    layout: ImageLayout,
    t: &Tensor,
) -> Result<Retained<MLFeatureValue>> {
    if let Some((format, size)) = image {
        return super::pixels::image_value(&spec.name, t, format, Some(size), Some(layout));
    }
    // SAFETY: constructors of immutable feature values from plain values or a
    // live multi-array.
    unsafe {
        Ok(match kind {
            k if k == MLFeatureType::Int64 => {
                MLFeatureValue::featureValueWithInt64(scalar::int64(&spec.name, t)?)
            }
            k if k == MLFeatureType::Double => {
                MLFeatureValue::featureValueWithDouble(scalar::double(&spec.name, t)?)
            }
            k if k == MLFeatureType::String => MLFeatureValue::featureValueWithString(
                &NSString::from_str(&scalar::string(&spec.name, t)?),
            ),
            _ => MLFeatureValue::featureValueWithMultiArray(&*multiarray(t)?),
        })
    }
}

fn provider(ctx: &Ctx<'_>, inputs: &[Tensor]) -> Result<Retained<MLDictionaryFeatureProvider>> {
    let sig = &ctx.d.sig;
    let keys: Vec<Retained<NSString>> = sig
        .inputs
        .iter()
        .map(|s| NSString::from_str(&s.name))
        .collect();
    let vals: Vec<Retained<MLFeatureValue>> = sig
        .inputs
        .iter()
        .zip(&ctx.d.inputs)
        .zip(&ctx.d.images)
        .zip(inputs)
        .map(|(((spec, &kind), &image), t)| feature_value(spec, kind, image, ctx.d.image_layout, t))
        .collect::<Result<_>>()?;
    let key_refs: Vec<&NSString> = keys.iter().map(|k| &**k).collect();
    let val_refs: Vec<&AnyObject> = vals.iter().map(|v| v.as_ref()).collect();
    let dict: Retained<NSDictionary<NSString, AnyObject>> =
        NSDictionary::from_slices(&key_refs, &val_refs);
    // SAFETY: every value is an MLFeatureValue, as the initializer requires.
    unsafe {
        MLDictionaryFeatureProvider::initWithDictionary_error(
            MLDictionaryFeatureProvider::alloc(),
            &dict,
        )
    }
    .map_err(|e| Error::invalid_input(format!("Core ML rejected the inputs: {}", ns_error(&e))))
}

/// A classifier's probability dictionary in label order.
fn probabilities(ctx: &Ctx<'_>, name: &str, fv: &MLFeatureValue) -> Result<Tensor> {
    let labels = ctx
        .classifier
        .and_then(|c| c.labels.as_ref())
        .ok_or_else(|| {
            Error::Unavailable(format!(
                "output '{name}' is a dictionary whose class labels the reader did not find (load the .mlmodel / .mlpackage, not a compiled bundle)"
            ))
        })?;
    // SAFETY: getters on a live dictionary feature value; its keys are
    // NSString or NSNumber (string or int64 labels), its values NSNumber.
    let entries = unsafe {
        let (keys, vals) = fv.dictionaryValue().to_vecs();
        keys.iter()
            .zip(&vals)
            .map(|(k, v)| {
                let key = if let Some(s) = k.downcast_ref::<NSString>() {
                    LabelKey::String(s.to_string())
                } else if let Some(n) = k.downcast_ref::<NSNumber>() {
                    LabelKey::Int64(n.as_i64())
                } else {
                    return Err(Error::InferenceFailed(format!(
                        "output '{name}' has a key that is neither a string nor a number"
                    )));
                };
                Ok((key, v.as_f64()))
            })
            .collect::<Result<Vec<_>>>()?
    };
    let probs = ordered_probabilities(labels, &entries)?;
    Tensor::from_vec(vec![probs.len()], probs)
}

fn outputs(ctx: &Ctx<'_>, out: &ProtocolObject<dyn MLFeatureProvider>) -> Result<Vec<Tensor>> {
    ctx.d
        .sig
        .outputs
        .iter()
        .zip(&ctx.d.outputs)
        .map(|(s, &kind)| {
            // SAFETY: getters on a live feature provider returned by Core ML,
            // each matching the feature's declared type.
            unsafe {
                let fv = out
                    .featureValueForName(&NSString::from_str(&s.name))
                    .ok_or_else(|| {
                        Error::InferenceFailed(format!("Core ML returned no output '{}'", s.name))
                    })?;
                match kind {
                    k if k == MLFeatureType::Int64 => scalar::from_int64(fv.int64Value()),
                    k if k == MLFeatureType::Double => scalar::from_double(fv.doubleValue()),
                    k if k == MLFeatureType::String => {
                        scalar::from_string(&fv.stringValue().to_string())
                    }
                    k if k == MLFeatureType::Dictionary => probabilities(ctx, &s.name, &fv),
                    k if k == MLFeatureType::Image => super::pixels::read_image(&s.name, &fv),
                    _ => {
                        let arr = fv.multiArrayValue().ok_or_else(|| {
                            Error::InferenceFailed(format!(
                                "output '{}' is not a multi-array",
                                s.name
                            ))
                        })?;
                        read_array(&arr)
                    }
                }
            }
        })
        .collect()
}

/// An output's reusable backing, when [`output_backing`] says one fits
/// (allocation failure: none, Core ML allocates as before).
fn backing(spec: &TensorSpec, kind: MLFeatureType) -> Option<Retained<MLMultiArray>> {
    let (dtype, shape) =
        output_backing(spec, kind == MLFeatureType::MultiArray, PredictCall::Sync)?;
    let ml = to_ml_dtype(dtype)?;
    // SAFETY: a fresh array of a supported type and positive dimensions.
    unsafe {
        MLMultiArray::initWithShape_dataType_error(MLMultiArray::alloc(), &numbers(&shape), ml)
    }
    .ok()
}

/// Prediction options for one job: the outputs' backings, unless batched.
fn prediction_options(ctx: &Ctx<'_>, call: PredictCall) -> Retained<MLPredictionOptions> {
    // SAFETY: a fresh options object; the dictionary maps output names to
    // MLMultiArrays of their declared types and shapes, as outputBackings wants.
    unsafe {
        let options = MLPredictionOptions::new();
        let backings = ctx.d.backings.borrow();
        if call != PredictCall::Batch && backings.iter().any(Option::is_some) {
            let (names, arrays): (Vec<Retained<NSString>>, Vec<&AnyObject>) = ctx
                .d
                .sig
                .outputs
                .iter()
                .zip(backings.iter())
                .filter_map(|(s, b)| {
                    let array: &AnyObject = b.as_deref()?.as_ref();
                    Some((NSString::from_str(&s.name), array))
                })
                .unzip();
            let keys: Vec<&NSString> = names.iter().map(|k| &**k).collect();
            options.setOutputBackings(&NSDictionary::from_slices(&keys, &arrays));
        }
        options
    }
}

/// Raw pointers out of Core ML's completion handler, which runs on a queue
/// of its own; the owner thread takes ownership of the retained provider.
struct Completion(std::result::Result<*mut ProtocolObject<dyn MLFeatureProvider>, String>);
// SAFETY: the provider pointer is +1 retained by the handler and used only by
// the receiving thread, after the handler has returned.
unsafe impl Send for Completion {}

/// `predictionFromFeatures:options:completionHandler:` (macOS 14+), awaited
/// on the owner thread. A handler never called (its block dropped) is an error.
fn predict_async(
    model: &MLModel,
    p: &MLDictionaryFeatureProvider,
    options: &MLPredictionOptions,
) -> Result<Retained<ProtocolObject<dyn MLFeatureProvider>>> {
    let (tx, rx) = mpsc::sync_channel::<Completion>(1);
    let handler = RcBlock::new(
        move |out: *mut ProtocolObject<dyn MLFeatureProvider>, err: *mut NSError| {
            // SAFETY: Core ML passes a live output or a live error; the
            // output is retained before the handler returns.
            let c = unsafe {
                match (Retained::retain(out), err.as_ref()) {
                    (Some(o), _) => Ok(Retained::into_raw(o)),
                    (None, Some(e)) => Err(ns_error(e)),
                    (None, None) => Err("Core ML returned neither output nor error".into()),
                }
            };
            let _ = tx.send(Completion(c));
        },
    );
    // SAFETY: a valid provider and options; the handler block is copied by Core ML.
    unsafe {
        model.predictionFromFeatures_options_completionHandler(
            ProtocolObject::from_ref(p),
            options,
            &handler,
        )
    };
    drop(handler);
    let done = rx.recv().map_err(|_| {
        Error::InferenceFailed("Core ML dropped the prediction without completing it".into())
    })?;
    match done.0 {
        // SAFETY: +1 retained in the handler, taken over exactly once here.
        Ok(ptr) => unsafe { Retained::from_raw(ptr) }
            .ok_or_else(|| Error::Internal("null prediction output".into())),
        Err(e) => Err(Error::InferenceFailed(e)),
    }
}

/// One prediction of a stateful model on `state` (macOS 15+).
fn run_stateful(ctx: &Ctx<'_>, inputs: Vec<Tensor>, state: &MLState) -> Result<Vec<Tensor>> {
    let p = provider(ctx, &inputs)?;
    // SAFETY: a valid provider for this model's inputs and a state this model made.
    let out = unsafe {
        ctx.model
            .predictionFromFeatures_usingState_error(ProtocolObject::from_ref(&*p), state)
    }
    .map_err(|e| Error::InferenceFailed(ns_error(&e)))?;
    outputs(ctx, &out)
}

/// One job on the owner thread: one prediction, or a batch provider when the
/// signature's batch was added by [`batch_view`] and the job has more than one row.
fn run_job(ctx: &Ctx<'_>, inputs: Vec<Tensor>, virtual_batch: bool) -> Result<Vec<Tensor>> {
    let (model, sig) = (ctx.model, &ctx.d.sig);
    let rows = inputs
        .first()
        .and_then(|t| t.shape().first().copied())
        .unwrap_or(1);
    let call = predict_call(
        rows,
        virtual_batch && batch_view(sig).is_some(),
        false,
        macos_at_least(14, 0),
    );
    if call != PredictCall::Batch {
        let p = provider(ctx, &inputs)?;
        let predict = || {
            let options = prediction_options(ctx, call);
            match call {
                PredictCall::Async => predict_async(model, &p, &options),
                // SAFETY: a valid provider for this model's inputs; backings of
                // the outputs' declared types and fixed shapes.
                _ => unsafe {
                    model.predictionFromFeatures_options_error(
                        ProtocolObject::from_ref(&*p),
                        &options,
                    )
                }
                .map_err(|e| Error::InferenceFailed(ns_error(&e))),
            }
        };
        let out = match predict() {
            Err(e) if ctx.d.backings.borrow().iter().any(Option::is_some) => {
                // Perhaps a backing Core ML does not allow: once more without;
                // if that works, this instance stops offering them.
                let saved = std::mem::take(&mut *ctx.d.backings.borrow_mut());
                match predict() {
                    Ok(out) => {
                        tracing::warn!(error = %e, "Core ML refused pre-allocated output arrays; predicting without them");
                        out
                    }
                    Err(_) => {
                        *ctx.d.backings.borrow_mut() = saved;
                        return Err(e);
                    }
                }
            }
            r => r?,
        };
        return outputs(ctx, &out);
    }
    let per_row: Vec<Vec<Tensor>> = (0..rows)
        .map(|r| {
            inputs
                .iter()
                .map(|t| t.slice_rows(r, r + 1))
                .collect::<Result<_>>()
        })
        .collect::<Result<_>>()?;
    let providers: Vec<Retained<ProtocolObject<dyn MLFeatureProvider>>> = per_row
        .iter()
        .map(|row| provider(ctx, row).map(ProtocolObject::from_retained))
        .collect::<Result<_>>()?;
    let arr = NSArray::from_retained_slice(&providers);
    // SAFETY: an array of feature providers, as the initializer requires.
    let batch = unsafe {
        MLArrayBatchProvider::initWithFeatureProviderArray(MLArrayBatchProvider::alloc(), &arr)
    };
    // SAFETY: a valid batch provider for this model's inputs.
    let outs = unsafe { model.predictionsFromBatch_error(ProtocolObject::from_ref(&*batch)) }
        .map_err(|e| Error::InferenceFailed(ns_error(&e)))?;
    // SAFETY: index within `count()` of the returned batch.
    let per_row_out: Vec<Vec<Tensor>> = (0..unsafe { outs.count() })
        .map(|i| {
            let features = unsafe { outs.featuresAtIndex(i) };
            outputs(ctx, &features)
        })
        .collect::<Result<_>>()?;
    (0..sig.outputs.len())
        .map(|o| {
            let parts: Vec<&Tensor> = per_row_out.iter().map(|r| &r[o]).collect();
            Tensor::concat_rows(&parts)
        })
        .collect()
}
