//! Loading, describing and running a Core ML model.
//!
//! `MLModel` is neither `Send` nor `Sync`, and MLMultiArray / MLFeatureValue are
//! not `Send`: each loaded model lives on one dedicated thread that builds every
//! Objective-C object itself from plain Rust data received over a channel, with
//! an autorelease pool per job. Predictions on one model are serialized there.

use super::{
    MIN_MACOS, check_units, compile, compute_units, file_url, macos_at_least, ns_error,
    require_macos,
};
use crate::options::CoreMlOptions;
use crate::reader;
use block2::{RcBlock, StackBlock};
use bytes::Bytes;
use objc2::AllocAnyThread;
use objc2::rc::{Retained, autoreleasepool};
use objc2::runtime::{AnyObject, ProtocolObject};
use objc2_core_ml::{
    MLArrayBatchProvider, MLBatchProvider, MLComputeUnits, MLDictionaryFeatureProvider,
    MLFeatureDescription, MLFeatureProvider, MLFeatureType, MLFeatureValue, MLModel,
    MLModelConfiguration, MLMultiArray, MLMultiArrayDataType, MLMultiArrayShapeConstraintType,
    MLOptimizationHints, MLReshapeFrequencyHint,
};
use objc2_foundation::{NSArray, NSDictionary, NSNumber, NSString};
use parking_lot::Mutex;
use pomme_core::tensor::AlignedBuf;
use pomme_core::{
    DType, DeviceKind, Dim, Error, LoadOptions, LoadedModel, MemoryEstimate, ModelArtifact,
    ModelSignature, PlacementShare, Precision, Result, Session, Shape, Tensor, TensorSpec,
};
use std::cell::RefCell;
use std::ffi::c_void;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::mpsc;

/// A job for the model's thread: inputs in signature order, outputs back in signature order.
struct Job {
    inputs: Vec<Tensor>,
    reply: mpsc::Sender<Result<Vec<Tensor>>>,
}

/// A loaded Core ML model: a handle to its owner thread.
pub(crate) struct CoreMlLoaded {
    jobs: Mutex<mpsc::Sender<Job>>,
    signature: ModelSignature,
    memory: MemoryEstimate,
    device: DeviceKind,
    precision: Precision,
    placement: Vec<PlacementShare>,
}

struct CoreMlSession {
    jobs: mpsc::Sender<Job>,
}

impl Session for CoreMlSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Job { inputs, reply: tx })
            .map_err(|_| Error::Internal("the Core ML model thread has stopped".into()))?;
        rx.recv()
            .map_err(|_| Error::Internal("the Core ML model thread dropped a job".into()))?
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
    fn session(&self) -> Result<Box<dyn Session>> {
        let jobs = self.jobs.lock().clone();
        Ok(Box::new(CoreMlSession { jobs }))
    }
    fn placement(&self) -> Vec<PlacementShare> {
        self.placement.clone()
    }
}

/// A model configuration for the given compute units.
pub(crate) fn configuration(
    units: MLComputeUnits,
    low_precision: bool,
    flexible: bool,
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
    let cache_dir = opts.cache_dir.as_deref().unwrap_or(cache_dir);
    let compiled = compile::compiled(path, units_name, cache_dir)?;
    let placement = placement_at_load(path, &compiled, units, units_name, opts.min_ane_share)?;
    let flexible = info
        .as_ref()
        .is_some_and(reader::CoreMlInfo::has_flexible_inputs);
    let virtual_batch = opts.virtual_batch;
    let low_precision = options.precision == Precision::F16 || opts.allow_low_precision_gpu;

    let (ready_tx, ready_rx) = mpsc::channel::<Result<ModelSignature>>();
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let compiled_c = compiled.clone();
    let order = info.as_ref().map(|i| {
        (
            i.inputs.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
            i.outputs.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        )
    });
    std::thread::Builder::new()
        .name(format!(
            "coreml-{}",
            path.file_stem()
                .map_or("model".into(), |s| s.to_string_lossy())
        ))
        .spawn(move || {
            // The model is created on, used on and released on this thread only.
            let loaded = autoreleasepool(|_| -> Result<(Retained<MLModel>, ModelSignature)> {
                let cfg = configuration(units, low_precision, flexible);
                // SAFETY: valid URL and configuration; returns a retained model or an NSError.
                let model = unsafe {
                    MLModel::modelWithContentsOfURL_configuration_error(
                        &file_url(&compiled_c),
                        &cfg,
                    )
                }
                .map_err(|e| Error::CompilationFailed(ns_error(&e)))?;
                let sig = describe(&model, order.as_ref())?;
                Ok((model, sig))
            });
            let (model, sig) = match loaded {
                Ok(v) => v,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(sig.clone()));
            for job in job_rx {
                let res = autoreleasepool(|_| run_job(&model, &sig, job.inputs, virtual_batch));
                let _ = job.reply.send(res);
            }
        })
        .map_err(|e| Error::Internal(format!("cannot start the Core ML model thread: {e}")))?;
    let native_sig = ready_rx
        .recv()
        .map_err(|_| Error::Internal("the Core ML model thread stopped while loading".into()))??;

    let signature = if virtual_batch {
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
    let memory = MemoryEstimate {
        weight_bytes: info.as_ref().map_or(0, |i| i.weight_bytes),
        activation_bytes_per_item: info.as_ref().map_or(0, |i| i.activation_bytes_estimate),
    };
    Ok(Arc::new(CoreMlLoaded {
        jobs: Mutex::new(job_tx),
        signature,
        memory,
        device,
        precision: options.precision,
        placement,
    }))
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
        let c = d.multiArrayConstraint().ok_or_else(|| {
            Error::Unavailable(format!(
                "feature '{name}' is not a multi-array; the Core ML backend runs multi-array models only"
            ))
        })?;
        let dtype = ml_dtype(c.dataType()).unwrap_or(DType::F32);
        let default = usizes(&c.shape());
        let sc = c.shapeConstraint();
        let t = sc.r#type();
        let dims: Vec<Dim> = if t == MLMultiArrayShapeConstraintType::Enumerated {
            let shapes: Vec<Vec<usize>> =
                sc.enumeratedShapes().iter().map(|s| usizes(&s)).collect();
            (0..default.len())
                .map(|i| {
                    if shapes.iter().all(|s| s.get(i) == Some(&default[i])) {
                        Dim::Fixed(default[i])
                    } else {
                        Dim::Symbolic("?".into())
                    }
                })
                .collect()
        } else if t == MLMultiArrayShapeConstraintType::Range {
            sc.sizeRangeForDimension()
                .iter()
                .map(|v| match v.get_range() {
                    Some(r) if r.length == 0 => Dim::Fixed(r.location),
                    _ => Dim::Symbolic("?".into()),
                })
                .collect()
        } else {
            default.iter().map(|&d| Dim::Fixed(d)).collect()
        };
        Ok(TensorSpec::new(name, dtype, Shape(dims)))
    }
}

/// The model's signature from Core ML's description, in `order` when the
/// reader gave one (NSDictionary has no order), else sorted by name.
fn describe(model: &MLModel, order: Option<&(Vec<String>, Vec<String>)>) -> Result<ModelSignature> {
    // SAFETY: read-only getters on the loaded model's description.
    unsafe {
        let desc = model.modelDescription();
        let collect = |dict: Retained<NSDictionary<NSString, MLFeatureDescription>>,
                       names: Option<&Vec<String>>|
         -> Result<Vec<TensorSpec>> {
            let (_, vals) = dict.to_vecs();
            let mut specs: Vec<TensorSpec> = vals
                .iter()
                .map(|f| feature_spec(f))
                .collect::<Result<_>>()?;
            match names {
                Some(names) => specs.sort_by_key(|s| {
                    names
                        .iter()
                        .position(|n| *n == s.name)
                        .unwrap_or(usize::MAX)
                }),
                None => specs.sort_by(|a, b| a.name.cmp(&b.name)),
            }
            Ok(specs)
        };
        Ok(ModelSignature {
            inputs: collect(desc.inputDescriptionsByName(), order.map(|o| &o.0))?,
            outputs: collect(desc.outputDescriptionsByName(), order.map(|o| &o.1))?,
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

/// Copies a (possibly strided) MLMultiArray into a dense row-major tensor.
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
        let bad = std::cell::Cell::new(false);
        let block = StackBlock::new(|bytes: NonNull<c_void>, len: isize| {
            let src = std::slice::from_raw_parts(bytes.as_ptr().cast::<u8>(), len.max(0) as usize);
            let mut out = out.borrow_mut();
            let dst = out.as_mut_bytes();
            let mut idx = vec![0usize; shape.len()];
            for i in 0..n {
                let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>() * size;
                match src.get(off..off + size) {
                    Some(s) => dst[i * size..(i + 1) * size].copy_from_slice(s),
                    None => {
                        bad.set(true);
                        return;
                    }
                }
                for d in (0..idx.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
        });
        a.getBytesWithHandler(&block);
        if bad.get() {
            return Err(Error::InferenceFailed(
                "Core ML output strides address past its buffer".into(),
            ));
        }
        Tensor::from_raw(dtype, shape, out.into_inner().freeze())
    }
}

fn provider(
    sig: &ModelSignature,
    inputs: &[Tensor],
) -> Result<Retained<MLDictionaryFeatureProvider>> {
    let arrays: Vec<Retained<MLMultiArray>> =
        inputs.iter().map(multiarray).collect::<Result<_>>()?;
    let keys: Vec<Retained<NSString>> = sig
        .inputs
        .iter()
        .map(|s| NSString::from_str(&s.name))
        .collect();
    // SAFETY: wraps a live multi-array.
    let vals: Vec<Retained<MLFeatureValue>> = arrays
        .iter()
        .map(|a| unsafe { MLFeatureValue::featureValueWithMultiArray(a) })
        .collect();
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

fn outputs(
    sig: &ModelSignature,
    out: &ProtocolObject<dyn MLFeatureProvider>,
) -> Result<Vec<Tensor>> {
    sig.outputs
        .iter()
        .map(|s| {
            // SAFETY: getters on a live feature provider returned by Core ML.
            unsafe {
                let fv = out
                    .featureValueForName(&NSString::from_str(&s.name))
                    .ok_or_else(|| {
                        Error::InferenceFailed(format!("Core ML returned no output '{}'", s.name))
                    })?;
                let arr = fv.multiArrayValue().ok_or_else(|| {
                    Error::InferenceFailed(format!("output '{}' is not a multi-array", s.name))
                })?;
                read_array(&arr)
            }
        })
        .collect()
}

/// One job on the owner thread: one prediction, or a batch provider when the
/// signature's batch was added by [`batch_view`] and the job has more than one row.
fn run_job(
    model: &MLModel,
    sig: &ModelSignature,
    inputs: Vec<Tensor>,
    virtual_batch: bool,
) -> Result<Vec<Tensor>> {
    let rows = inputs
        .first()
        .and_then(|t| t.shape().first().copied())
        .unwrap_or(1);
    let batched = virtual_batch && rows > 1 && batch_view(sig).is_some();
    if !batched {
        let p = provider(sig, &inputs)?;
        // SAFETY: a valid provider for this model's inputs.
        let out = unsafe { model.predictionFromFeatures_error(ProtocolObject::from_ref(&*p)) }
            .map_err(|e| Error::InferenceFailed(ns_error(&e)))?;
        return outputs(sig, &out);
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
        .map(|row| provider(sig, row).map(ProtocolObject::from_retained))
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
            outputs(sig, &features)
        })
        .collect::<Result<_>>()?;
    (0..sig.outputs.len())
        .map(|o| {
            let parts: Vec<&Tensor> = per_row_out.iter().map(|r| &r[o]).collect();
            Tensor::concat_rows(&parts)
        })
        .collect()
}
