//! Loaded models and per-worker sessions over ONNX Runtime.
//!
//! `ort`'s `Session::run` takes `&mut self` (since 2.0.0-rc.10: some EP
//! allocators and statistics trackers are not thread-safe, and concurrent runs
//! crashed), so a loaded model either builds one ORT session per worker or
//! shares one behind a mutex; the crate docs describe the trade-off.

use crate::convert;
use crate::dylib::OrtRuntime;
use crate::options::SessionMode;
use crate::shapes::{ShapeKey, ShapeSessions};
use ort::ep::ExecutionProviderDispatch;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::{ErrorCode, session::Session as OrtSession};
use parking_lot::Mutex;
use pomme_core::{
    DeviceKind, Error, LoadedModel, MemoryEstimate, ModelSignature, Precision, Result, Session,
    Tensor, one_line,
};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Checks the model file before ONNX Runtime sees it, so the common mistakes get
/// a short, precise message instead of ORT's multi-line one. Returns the size.
pub(crate) fn check_model_file(path: &Path) -> Result<u64> {
    let meta = fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::InvalidModelFormat(format!("{}: no such file", path.display()))
        } else {
            Error::InvalidModelFormat(format!("{}: cannot read: {e}", path.display()))
        }
    })?;
    if meta.is_dir() {
        return Err(Error::InvalidModelFormat(format!(
            "{}: is a directory, not an ONNX file",
            path.display()
        )));
    }
    if meta.len() == 0 {
        return Err(Error::InvalidModelFormat(format!(
            "{}: file is empty (0 bytes)",
            path.display()
        )));
    }
    Ok(meta.len())
}

/// Maps an error from session creation: ORT's verdicts on the file are format
/// errors, anything else (an operator it cannot run, a failing EP) a compilation
/// failure.
fn load_error(path: &Path, e: &ort::Error) -> Error {
    let msg = one_line(e.message());
    match e.code() {
        ErrorCode::InvalidProtobuf
        | ErrorCode::InvalidGraph
        | ErrorCode::NoModel
        | ErrorCode::NoSuchFile
        | ErrorCode::InvalidArgument => {
            Error::InvalidModelFormat(format!("{}: not a valid ONNX model: {msg}", path.display()))
        }
        ErrorCode::ExecutionProviderFailure => Error::Unavailable(format!(
            "{}: execution provider failed: {msg}",
            path.display()
        )),
        _ => Error::CompilationFailed(format!("{}: {msg}", path.display())),
    }
}

/// How to build a session: everything needed to build another one later.
#[derive(Clone)]
pub(crate) struct SessionConfig {
    pub(crate) eps: Vec<ExecutionProviderDispatch>,
    pub(crate) intra_threads: Option<usize>,
    pub(crate) optimization: GraphOptimizationLevel,
    /// Whether ORT's idle pool threads spin ([`crate::OrtOptions::spin`]).
    pub(crate) spinning: bool,
    /// A path prefix for ONNX Runtime's per-node profile, one file per
    /// session ([`crate::OrtOptions::profile`]).
    pub(crate) profile: Option<PathBuf>,
    /// Sessions a worker keeps, one per distinct input shape
    /// ([`crate::OrtOptions::shape_sessions`]; see [`crate::shapes`]).
    pub(crate) shape_sessions: usize,
}

fn builder_error(e: ort::Error<SessionBuilder>) -> Error {
    Error::CompilationFailed(format!(
        "configuring the ONNX Runtime session: {}",
        one_line(e.message())
    ))
}

/// Builds one ORT session for the model at `path`.
pub(crate) fn build_session(
    rt: &OrtRuntime,
    path: &Path,
    cfg: &SessionConfig,
) -> Result<OrtSession> {
    let builder = OrtSession::builder(&rt.env).map_err(|e| {
        Error::Internal(format!(
            "creating an ONNX Runtime session builder: {}",
            one_line(e.message())
        ))
    })?;
    let builder = builder
        .with_execution_providers(&cfg.eps)
        .map_err(|e| {
            Error::Unavailable(format!(
                "execution provider could not be registered: {}",
                one_line(e.message())
            ))
        })?
        .with_optimization_level(cfg.optimization)
        .map_err(builder_error)?
        // Inter-op threads only serve ORT's parallel executor, which pomme does
        // not enable; 1 keeps ORT from creating an idle pool.
        .with_inter_threads(1)
        .map_err(builder_error)?
        // The config entries `session.intra_op.allow_spinning` /
        // `session.inter_op.allow_spinning`: "0" unless `spin = true`.
        .with_intra_op_spinning(cfg.spinning)
        .map_err(builder_error)?
        .with_inter_op_spinning(cfg.spinning)
        .map_err(builder_error)?;
    // Without a setting ORT sizes the intra-op pool to the physical cores.
    let builder = match cfg.intra_threads {
        Some(n) => builder.with_intra_threads(n).map_err(builder_error)?,
        None => builder,
    };
    let mut builder = match &cfg.profile {
        Some(prefix) => {
            // ORT names the file by the millisecond; sessions built in the
            // same one (a worker's shape sessions) would share it.
            static SESSIONS: std::sync::atomic::AtomicUsize =
                std::sync::atomic::AtomicUsize::new(0);
            let n = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut file = prefix.clone().into_os_string();
            file.push(format!("_s{n}"));
            builder.with_profiling(file).map_err(builder_error)?
        }
        None => builder,
    };
    builder
        .commit_from_file(path)
        .map_err(|e| load_error(path, &e))
}

/// Bytes of one batch row of the model's inputs and outputs: a lower bound for
/// activation memory (ORT does not report its arena plans).
fn io_bytes_per_item(sig: &ModelSignature) -> u64 {
    sig.inputs
        .iter()
        .chain(&sig.outputs)
        .map(|s| {
            let elems: u64 = s
                .shape
                .dims()
                .iter()
                // The batch dimension is the "per item" unit; other unknowns count as 1.
                .map(|d| d.fixed().unwrap_or(1) as u64)
                .product();
            elems * s.dtype.size_of().unwrap_or(0) as u64
        })
        .sum()
}

/// A model loaded into ONNX Runtime.
pub(crate) struct OrtModel {
    rt: &'static OrtRuntime,
    path: PathBuf,
    cfg: SessionConfig,
    signature: Arc<ModelSignature>,
    memory: MemoryEstimate,
    device: DeviceKind,
    /// `F32` (the file as stored) or `F16` (the file was converted).
    precision: Precision,
    /// `per_worker`: the load-time session, until the first worker takes it.
    spare: Mutex<Option<OrtSession>>,
    /// `shared`: the one session every worker uses in turn.
    shared: Option<Arc<Mutex<OrtSession>>>,
}

impl OrtModel {
    pub(crate) fn load(
        rt: &'static OrtRuntime,
        path: &Path,
        file_bytes: u64,
        cfg: SessionConfig,
        device: DeviceKind,
        mode: SessionMode,
    ) -> Result<OrtModel> {
        let session = build_session(rt, path, &cfg)?;
        let signature = Arc::new(signature_of(&session)?);
        let memory = MemoryEstimate {
            // The ONNX file's size: its initializers dominate it. Weights in
            // external data files are not counted.
            weight_bytes: file_bytes,
            activation_bytes_per_item: io_bytes_per_item(&signature),
        };
        let (spare, shared) = match mode {
            SessionMode::PerWorker => (Some(session), None),
            SessionMode::Shared => (None, Some(Arc::new(Mutex::new(session)))),
        };
        Ok(OrtModel {
            rt,
            path: path.to_path_buf(),
            cfg,
            signature,
            memory,
            device,
            spare: Mutex::new(spare),
            shared,
            precision: Precision::F32,
        })
    }

    /// Records the precision the file was prepared at (for the model view).
    pub(crate) fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }
}

/// The signature of a built session, in the model's order.
pub(crate) fn signature_of(session: &OrtSession) -> Result<ModelSignature> {
    Ok(ModelSignature {
        inputs: session
            .inputs()
            .iter()
            .map(|o| convert::spec_from_outlet(o, "input"))
            .collect::<Result<_>>()?,
        outputs: session
            .outputs()
            .iter()
            .map(|o| convert::spec_from_outlet(o, "output"))
            .collect::<Result<_>>()?,
    })
}

impl LoadedModel for OrtModel {
    fn backend(&self) -> &'static str {
        "ort"
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
        // Core ML (the EP behind ane / metal) runs on the Neural Engine and the
        // GPU in float16.
        match self.device {
            DeviceKind::Ane | DeviceKind::Metal | DeviceKind::Auto => Precision::F16,
            _ => self.precision,
        }
    }

    fn prefers_few_shapes(&self) -> bool {
        // The CUDA EP prepares grouped convolutions per shape, so such a graph
        // runs with a session per shape (see `shapes`); other graphs and the
        // CPU EP take any shape at little cost.
        self.device == DeviceKind::Cuda && self.cfg.shape_sessions > 1
    }

    fn session(&self) -> Result<Box<dyn Session>> {
        let handle = match &self.shared {
            Some(shared) => Handle::Shared(Arc::clone(shared)),
            None => {
                // Built now (not at the first run) so a worker that cannot get
                // a session fails at start, as before.
                let first = match self.spare.lock().take() {
                    Some(s) => s,
                    None => build_session(self.rt, &self.path, &self.cfg)?,
                };
                Handle::Owned(ShapeSessions::new(self.cfg.shape_sessions, Some(first)))
            }
        };
        Ok(Box::new(OrtWorkerSession {
            handle,
            signature: Arc::clone(&self.signature),
            profiling: self.cfg.profile.is_some(),
            rt: self.rt,
            path: self.path.clone(),
            cfg: self.cfg.clone(),
        }))
    }
}

enum Handle {
    /// This worker's own sessions, one per input shape (one in all unless
    /// `shape_sessions` > 1).
    Owned(ShapeSessions<OrtSession>),
    Shared(Arc<Mutex<OrtSession>>),
}

/// One worker's view of a loaded model.
struct OrtWorkerSession {
    handle: Handle,
    signature: Arc<ModelSignature>,
    /// Whether the session records ORT's profile (written on drop).
    profiling: bool,
    /// What builds another session for a new input shape.
    rt: &'static OrtRuntime,
    path: PathBuf,
    cfg: SessionConfig,
}

impl Drop for OrtWorkerSession {
    fn drop(&mut self) {
        // A shared session is written by whoever drops it last (ORT itself,
        // when the session is released).
        if let (true, Handle::Owned(sessions)) = (self.profiling, &mut self.handle) {
            for s in sessions.all_mut() {
                match s.end_profiling() {
                    Ok(file) => tracing::info!(file = %file, "ONNX Runtime profile written"),
                    Err(e) => {
                        tracing::warn!(error = %one_line(e.message()), "ending the ONNX Runtime profile failed")
                    }
                }
            }
        }
    }
}

impl Session for OrtWorkerSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let sig = &*self.signature;
        if inputs.len() != sig.inputs.len() {
            return Err(Error::invalid_input(format!(
                "{} inputs given, the model takes {}",
                inputs.len(),
                sig.inputs.len()
            )));
        }
        let values = sig
            .inputs
            .iter()
            .zip(&inputs)
            .map(|(spec, t)| convert::to_ort(spec, t))
            .collect::<Result<Vec<_>>>()?;
        let mut guard;
        let session: &mut OrtSession = match &mut self.handle {
            Handle::Owned(sessions) => {
                let key: ShapeKey = inputs.iter().map(|t| t.shape().to_vec()).collect();
                let (rt, path, cfg) = (self.rt, &self.path, &self.cfg);
                let (s, fresh) = sessions.get(&key, || build_session(rt, path, cfg))?;
                if fresh && cfg.shape_sessions > 1 {
                    tracing::debug!(shapes = ?key, "ort session taken for a new input shape");
                }
                s
            }
            Handle::Shared(m) => {
                guard = m.lock();
                &mut guard
            }
        };
        let outputs = session
            .run(&values[..])
            .map_err(|e| Error::InferenceFailed(one_line(e.message())))?;
        sig.outputs
            .iter()
            .enumerate()
            .map(|(i, spec)| convert::from_ort(&spec.name, &outputs[i]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pomme_core::{DType, Dim, Shape, TensorSpec};

    #[test]
    fn io_bytes_count_one_row() {
        let sig = ModelSignature {
            inputs: vec![TensorSpec::new(
                "x",
                DType::F32,
                Shape(vec![Dim::Symbolic("batch".into()), Dim::Fixed(4)]),
            )],
            outputs: vec![TensorSpec::new(
                "y",
                DType::I64,
                Shape(vec![Dim::Symbolic("batch".into())]),
            )],
        };
        assert_eq!(io_bytes_per_item(&sig), 16 + 8);
    }
}
