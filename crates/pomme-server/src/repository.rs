//! The model repository on disk: `<repo>/<model>/<version>/model.<ext>` with an
//! optional `<repo>/<model>/config.toml` (pomme's) or `config.pbtxt` (Triton's).
//!
//! Scanning turns each model directory into a [`RepoModel`]: one runtime
//! [`ModelSpec`] per version its version policy selects (Triton's default:
//! the newest one) plus the declared configuration that the ModelConfig
//! endpoints report. Declared inputs/outputs and the per-model memory budget
//! travel in the spec, and the runtime checks them against the model at load. Model names come from clients on the
//! load endpoint, so they are checked before touching the file system, and
//! paths are canonicalized so a symlink cannot lead outside the repository.

use crate::pbtxt;
use crate::routing::{ModelRouting, RoutingMode};
use pomme_core::{DType, DeviceKind, LoadOptions, Precision};
use pomme_runtime::{BatchingConfig, ModelSpec, Runtime};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A repository problem, naming the model and file.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("invalid model name '{0}': {1}")]
    InvalidName(String, &'static str),
    #[error("model '{0}' is not in the repository")]
    NotFound(String),
    #[error("model '{model}': {message}")]
    Invalid { model: String, message: String },
    #[error("repository {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<RepoError> for pomme_core::Error {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::InvalidName(..) => pomme_core::Error::invalid_input(e.to_string()),
            RepoError::NotFound(_) => pomme_core::Error::ModelNotFound(e.to_string()),
            RepoError::Invalid { .. } => pomme_core::Error::InvalidModelFormat(e.to_string()),
            RepoError::Io { .. } => pomme_core::Error::Internal(e.to_string()),
        }
    }
}

/// A declared input or output (from `config.toml` / `config.pbtxt`); full
/// dims including the batch dimension, -1 for variable.
pub type TensorDecl = pomme_runtime::DeclaredTensor;

/// Which version directories are served (Triton's `version_policy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The newest N versions (Triton's default is 1).
    Latest(u64),
    /// Every version directory.
    All,
    /// Exactly these versions; each must exist.
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions to serve out of those found (ascending).
    pub fn select(&self, found: &[u64]) -> Result<Vec<u64>, String> {
        match self {
            VersionPolicy::Latest(0) => Err("version_policy latest must be at least 1".into()),
            VersionPolicy::Latest(n) => {
                let skip = found.len().saturating_sub(*n as usize);
                Ok(found[skip..].to_vec())
            }
            VersionPolicy::All => Ok(found.to_vec()),
            VersionPolicy::Specific(want) => {
                if want.is_empty() {
                    return Err("version_policy specific lists no version".into());
                }
                let mut out = Vec::new();
                for v in want {
                    if !found.contains(v) {
                        return Err(format!(
                            "version_policy asks for version {v}, which has no directory (found: {})",
                            found
                                .iter()
                                .map(u64::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    out.push(*v);
                }
                out.sort_unstable();
                out.dedup();
                Ok(out)
            }
        }
    }
}

/// One model found in the repository.
#[derive(Clone, Debug)]
pub struct RepoModel {
    /// The newest selected version's spec (what single-version callers load).
    pub spec: ModelSpec,
    /// One spec per version the policy selects, ascending; load them with [`load_versions`].
    pub specs: Vec<ModelSpec>,
    /// Every version directory found, ascending.
    pub versions: Vec<u64>,
    pub version_policy: VersionPolicy,
    /// Triton `platform` / `backend` as declared, if any.
    pub platform: Option<String>,
    pub inputs: Vec<TensorDecl>,
    pub outputs: Vec<TensorDecl>,
    /// Per-model memory budget, when declared.
    pub memory_budget_mb: Option<u64>,
    /// Set when the config asks for `precision = "int8"` or `"int4"`: the
    /// float file is quantized, validated and admitted at load.
    pub quantization: Option<pomme_quant::ServeQuantization>,
    /// Modification time of the files that define it, to notice changes when polling.
    pub fingerprint: Vec<(PathBuf, Option<std::time::SystemTime>)>,
    /// Measured routing as the configuration declares it (`Unset`: the
    /// server's default applies, see [`RepoModel::with_default_routing`]).
    pub routing: ModelRouting,
}

impl RepoModel {
    /// Applies the server's default routing to a model whose configuration
    /// does not mention routing.
    pub fn with_default_routing(mut self, mode: RoutingMode) -> RepoModel {
        let routing = self.routing.resolve(mode);
        for s in self.specs.iter_mut().chain([&mut self.spec]) {
            s.routing = routing.clone();
        }
        self
    }
}

/// Checks a model name from a client or a directory listing.
pub fn validate_name(name: &str) -> Result<(), RepoError> {
    let bad = |why| Err(RepoError::InvalidName(name.chars().take(64).collect(), why));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 255 {
        return bad("longer than 255 bytes");
    }
    if name == "." || name == ".." || name.contains("..") {
        return bad("contains '..'");
    }
    if name.starts_with('.') {
        return bad("starts with '.'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return bad("only ASCII letters, digits, '_', '-' and '.' are allowed");
    }
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One model directory's name and what reading it gave.
pub type Scanned = (String, Result<RepoModel, RepoError>);

/// Every model in the repository. A model whose directory is broken is
/// returned as an error in its slot, so one bad model does not hide the rest.
pub fn scan(repo: &Path) -> Result<Vec<Scanned>, RepoError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(repo).map_err(io(repo))? {
        let entry = entry.map_err(io(repo))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names
        .into_iter()
        .map(|n| {
            let m = load_model(repo, &n);
            (n, m)
        })
        .collect())
}

/// Reads one model's directory.
pub fn load_model(repo: &Path, name: &str) -> Result<RepoModel, RepoError> {
    validate_name(name)?;
    let root = repo.canonicalize().map_err(io(repo))?;
    let dir = repo.join(name);
    if !dir.exists() {
        return Err(RepoError::NotFound(name.to_string()));
    }
    let dir = dir.canonicalize().map_err(io(&dir))?;
    if !dir.starts_with(&root) || !dir.is_dir() {
        return Err(RepoError::InvalidName(
            name.to_string(),
            "resolves outside the repository",
        ));
    }
    let invalid = |message: String| RepoError::Invalid {
        model: name.to_string(),
        message,
    };

    let mut versions: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let entry = entry.map_err(io(&dir))?;
        let path = entry.path();
        if let Some(v) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u64>().ok())
            && path.is_dir()
        {
            versions.push((v, path));
        }
    }
    versions.sort();
    if versions.is_empty() {
        return Err(invalid(
            "no version directory (expected <model>/1/model.onnx)".into(),
        ));
    }

    let toml_path = dir.join("config.toml");
    let pbtxt_path = dir.join("config.pbtxt");
    let mut decl = if toml_path.exists() {
        let text = std::fs::read_to_string(&toml_path).map_err(io(&toml_path))?;
        from_toml(&text).map_err(|m| invalid(format!("config.toml: {m}")))?
    } else if pbtxt_path.exists() {
        let text = std::fs::read_to_string(&pbtxt_path).map_err(io(&pbtxt_path))?;
        from_pbtxt(&text, name).map_err(|m| invalid(format!("config.pbtxt: {m}")))?
    } else {
        Declared::default()
    };
    decl.spec.name = name.to_string();
    decl.spec.memory_budget_mb = decl.memory_budget_mb;
    decl.spec.declared_inputs = decl.inputs.clone();
    decl.spec.declared_outputs = decl.outputs.clone();
    decl.spec.routing = decl.routing.resolve(RoutingMode::Off);
    let quantization = quantization(&dir, decl.spec.load.precision, decl.quantization.take())
        .map_err(|m| invalid(format!("config.toml: {m}")))?;
    let found: Vec<u64> = versions.iter().map(|(v, _)| *v).collect();
    let selected = decl.version_policy.select(&found).map_err(invalid)?;
    let mut specs = Vec::with_capacity(selected.len());
    for (version, vdir) in versions.iter().filter(|(v, _)| selected.contains(v)) {
        let artifact = find_artifact(vdir).ok_or_else(|| {
            invalid(format!(
                "version {version} holds no model file (model.onnx, model.nnef, model.nnef.tgz, model.mlmodel, model.mlpackage or model.mlmodelc)"
            ))
        })?;
        let artifact = artifact.canonicalize().map_err(io(&artifact))?;
        if !artifact.starts_with(&root) {
            return Err(invalid(format!(
                "version {version}: model file resolves outside the repository"
            )));
        }
        let mut spec = decl.spec.clone();
        spec.version = *version;
        spec.path = artifact;
        specs.push(spec);
    }
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fingerprint = specs
        .iter()
        .map(|s| s.path.clone())
        .chain([toml_path, pbtxt_path])
        .map(|p| {
            let t = mtime(&p);
            (p, t)
        })
        .collect();
    Ok(RepoModel {
        spec: specs
            .last()
            .cloned()
            .expect("a policy selects at least one version"),
        specs,
        version_policy: decl.version_policy,
        versions: found,
        platform: decl.platform,
        inputs: decl.inputs,
        outputs: decl.outputs,
        memory_budget_mb: decl.memory_budget_mb,
        quantization,
        fingerprint,
        routing: decl.routing,
    })
}

/// The default cache of quantized models.
fn default_quant_cache() -> PathBuf {
    pomme_quant::cache::cache_base().join("quantized")
}

/// The served-quantization settings of a model, when its precision asks for it.
fn quantization(
    dir: &Path,
    precision: Precision,
    q: Option<TomlQuant>,
) -> Result<Option<pomme_quant::ServeQuantization>, String> {
    if !matches!(precision, Precision::Int8 | Precision::Int4) {
        return match q {
            Some(_) => Err(format!(
                "[quantization] is only used with precision = \"int8\" or \"int4\" (precision is {precision})"
            )),
            None => Ok(None),
        };
    }
    let q = q.unwrap_or_default();
    let rel = |p: Option<PathBuf>| p.map(|p| if p.is_absolute() { p } else { dir.join(p) });
    let mut s = pomme_quant::ServeQuantization::new(
        precision,
        rel(q.cache_dir).unwrap_or_else(default_quant_cache),
    );
    let default_scheme = match precision {
        Precision::Int4 => "int4",
        _ => "int8",
    };
    let scheme_name = q.scheme.as_deref().unwrap_or(default_scheme);
    s.scheme = Some(
        pomme_quant::Scheme::from_cli(
            scheme_name,
            true,
            q.block_size.unwrap_or(32),
            pomme_quant::CalibrationMethod::default(),
        )
        .map_err(|e| format!("[quantization] {}", e.message()))?,
    );
    s.calibration = rel(q.calibration);
    s.validation = rel(q.validation);
    for p in [&s.calibration, &s.validation].into_iter().flatten() {
        if !p.is_file() {
            return Err(format!(
                "[quantization] data file {} does not exist",
                p.display()
            ));
        }
    }
    s.labels = q.labels;
    if let Some(m) = q.max_accuracy_drop {
        if m.is_nan() || m < 0.0 {
            return Err(format!(
                "[quantization] max_accuracy_drop must be ≥ 0, got {m}"
            ));
        }
        s.max_accuracy_drop = m;
    }
    if let Some(n) = q.warmup_samples {
        s.warmup_samples = n.max(1);
    }
    Ok(Some(s))
}

/// The model file of a version directory: `model.*` first, else the single
/// file or bundle with a known extension.
fn find_artifact(vdir: &Path) -> Option<PathBuf> {
    const PREFERRED: [&str; 7] = [
        "model.onnx",
        "model.nnef",
        "model.nnef.tgz",
        "model.nnef.tar",
        "model.mlpackage",
        "model.mlmodelc",
        "model.mlmodel",
    ];
    if let Some(p) = PREFERRED.iter().map(|f| vdir.join(f)).find(|p| p.exists()) {
        return Some(p);
    }
    let known = |n: &str| {
        [
            ".onnx",
            ".nnef",
            ".nnef.tgz",
            ".nnef.tar",
            ".mlpackage",
            ".mlmodelc",
            ".mlmodel",
        ]
        .iter()
        .any(|e| n.ends_with(e))
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(vdir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(known))
        .map(|e| e.path())
        .collect();
    found.sort();
    (found.len() == 1).then(|| found.remove(0))
}

#[derive(Clone, Debug)]
struct Declared {
    spec: ModelSpec,
    platform: Option<String>,
    inputs: Vec<TensorDecl>,
    outputs: Vec<TensorDecl>,
    memory_budget_mb: Option<u64>,
    version_policy: VersionPolicy,
    quantization: Option<TomlQuant>,
    routing: ModelRouting,
}

impl Default for Declared {
    fn default() -> Self {
        Declared {
            spec: ModelSpec::new("", ""),
            platform: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
            memory_budget_mb: None,
            version_policy: VersionPolicy::default(),
            quantization: None,
            routing: ModelRouting::Unset,
        }
    }
}

/// pomme's `config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlConfig {
    #[serde(default)]
    backends: Vec<String>,
    #[serde(default)]
    max_batch_size: usize,
    dynamic_batching: Option<TomlBatching>,
    workers: Option<usize>,
    memory_budget_mb: Option<u64>,
    /// `"all"`, `"latest"`, `{ latest = N }`, `{ all = true }` or `{ specific = [1, 3] }`.
    version_policy: Option<TomlPolicy>,
    device: Option<String>,
    threads: Option<usize>,
    precision: Option<String>,
    #[serde(default)]
    input: Vec<TomlTensor>,
    #[serde(default)]
    output: Vec<TomlTensor>,
    /// Backend-specific settings (`compute_units`, `cache_dir`...).
    #[serde(default)]
    extra: BTreeMap<String, String>,
    /// How `precision = "int8" | "int4"` is quantized and validated at load.
    quantization: Option<TomlQuant>,
    /// Measured routing: `"auto"`, `"off"`, a candidate list or a table (`routing.rs`).
    routing: Option<toml::Value>,
}

/// `[quantization]`: paths are relative to the model directory.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlQuant {
    /// `int8`, `int8-static`, `int4` (default: from `precision`).
    scheme: Option<String>,
    /// INT4 block size (32, 64, 128).
    block_size: Option<usize>,
    /// `.npz` calibration data (needed by `int8-static`).
    calibration: Option<PathBuf>,
    /// `.npz` validation data (default: the calibration data, else synthetic warm-up rows).
    validation: Option<PathBuf>,
    /// Label array in the validation data.
    labels: Option<String>,
    /// Refuse to serve beyond this drop (points; default 1.0).
    max_accuracy_drop: Option<f64>,
    warmup_samples: Option<usize>,
    /// Where quantized files are cached (default: `POMME_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/pomme`, else `~/.cache/pomme`, + `/quantized`).
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TomlPolicy {
    Name(String),
    Table(TomlPolicyTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlPolicyTable {
    latest: Option<u64>,
    all: Option<bool>,
    specific: Option<Vec<u64>>,
}

impl TomlPolicy {
    fn resolve(self) -> Result<VersionPolicy, String> {
        match self {
            TomlPolicy::Name(n) if n == "all" => Ok(VersionPolicy::All),
            TomlPolicy::Name(n) if n == "latest" => Ok(VersionPolicy::Latest(1)),
            TomlPolicy::Name(n) => Err(format!(
                "version_policy '{n}' is not one of \"all\", \"latest\", {{ latest = N }}, {{ specific = [..] }}"
            )),
            TomlPolicy::Table(t) => match (t.latest, t.all, t.specific) {
                (Some(n), None, None) => Ok(VersionPolicy::Latest(n)),
                (None, Some(true), None) => Ok(VersionPolicy::All),
                (None, None, Some(v)) => Ok(VersionPolicy::Specific(v)),
                _ => Err(
                    "version_policy must set exactly one of latest = N, all = true, specific = [..]"
                        .into(),
                ),
            },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlBatching {
    max_queue_delay_us: Option<u64>,
    #[serde(default)]
    preferred_batch_sizes: Vec<usize>,
    max_queue_size: Option<usize>,
    default_queue_timeout_us: Option<u64>,
    priority_levels: Option<u32>,
    default_priority: Option<u32>,
    /// Pad each batch to a preferred size and warm those sizes at load.
    #[serde(default)]
    pad_to_preferred: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlTensor {
    name: String,
    #[serde(alias = "datatype")]
    dtype: String,
    dims: Vec<i64>,
}

fn from_toml(text: &str) -> Result<Declared, String> {
    let c: TomlConfig = toml::from_str(text).map_err(|e| one_line(&e.to_string()))?;
    let mut d = Declared::default();
    d.spec.backends = c.backends;
    d.spec.max_batch_size = c.max_batch_size;
    d.spec.workers = c.workers.unwrap_or(1).max(1);
    d.memory_budget_mb = c.memory_budget_mb;
    if let Some(p) = c.version_policy {
        d.version_policy = p.resolve()?;
    }
    if let Some(b) = c.dynamic_batching {
        let def = BatchingConfig::default();
        d.spec.batching = Some(BatchingConfig {
            max_queue_delay: b
                .max_queue_delay_us
                .map(Duration::from_micros)
                .unwrap_or(def.max_queue_delay),
            preferred_batch_sizes: b.preferred_batch_sizes,
            max_queue_size: b.max_queue_size.unwrap_or(def.max_queue_size),
            default_queue_timeout: b
                .default_queue_timeout_us
                .filter(|&t| t > 0)
                .map(Duration::from_micros),
            priority_levels: b.priority_levels.unwrap_or(def.priority_levels),
            default_priority: b.default_priority.unwrap_or(def.default_priority),
            pad_to_preferred: b.pad_to_preferred,
        });
    }
    d.quantization = c.quantization;
    d.spec.load = LoadOptions {
        device: match c.device {
            Some(s) => s.parse::<DeviceKind>().map_err(|e| e.to_string())?,
            None => DeviceKind::Cpu,
        },
        threads: c.threads,
        precision: match c.precision {
            Some(s) => s.parse::<Precision>().map_err(|e| e.to_string())?,
            None => Precision::F32,
        },
        extra: c.extra,
    };
    let decl = |t: TomlTensor| -> Result<TensorDecl, String> {
        let dtype = DType::from_kserve(&t.dtype)
            .or_else(|| DType::from_triton_config(&t.dtype))
            .ok_or_else(|| format!("tensor '{}' has unknown dtype '{}'", t.name, t.dtype))?;
        Ok(TensorDecl {
            name: t.name,
            dtype,
            dims: t.dims,
        })
    };
    d.inputs = c.input.into_iter().map(decl).collect::<Result<_, _>>()?;
    d.outputs = c.output.into_iter().map(decl).collect::<Result<_, _>>()?;
    if let Some(r) = c.routing {
        d.routing = ModelRouting::from_toml(r, d.spec.load.device)?;
    }
    check_batching(&d.spec)?;
    Ok(d)
}

fn check_batching(spec: &ModelSpec) -> Result<(), String> {
    if let Some(b) = &spec.batching {
        if spec.max_batch_size == 0 {
            return Err("dynamic_batching needs max_batch_size > 0".into());
        }
        if let Some(&p) = b
            .preferred_batch_sizes
            .iter()
            .find(|&&p| p == 0 || p > spec.max_batch_size)
        {
            return Err(format!(
                "preferred batch size {p} is not within 1..={}",
                spec.max_batch_size
            ));
        }
        if b.priority_levels > 0 && b.default_priority > b.priority_levels {
            return Err(format!(
                "default priority {} is above priority_levels {}",
                b.default_priority, b.priority_levels
            ));
        }
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Triton's `config.pbtxt`.
fn from_pbtxt(text: &str, dir_name: &str) -> Result<Declared, String> {
    let m = pbtxt::parse(text).map_err(|e| e.to_string())?;
    let mut d = Declared::default();
    if let Some(n) = m.get("name").and_then(pbtxt::Value::as_str)
        && n != dir_name
    {
        return Err(format!(
            "name '{n}' does not match the directory '{dir_name}'"
        ));
    }
    let platform = m
        .get("backend")
        .or_else(|| m.get("platform"))
        .and_then(pbtxt::Value::as_str)
        .map(str::to_string);
    d.spec.backends = match platform.as_deref() {
        None | Some("") => Vec::new(),
        Some("onnxruntime_onnx" | "onnxruntime" | "onnx") => vec!["ort".into(), "tract".into()],
        Some("tract") => vec!["tract".into()],
        Some("ort") => vec!["ort".into()],
        Some("coreml") => vec!["coreml".into()],
        Some(other) => return Err(format!("platform '{other}' is not supported")),
    };
    d.platform = platform;
    let int = |m: &pbtxt::Message, f: &str| -> Result<Option<i64>, String> {
        match m.get(f) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("'{f}' must be an integer")),
        }
    };
    let max_batch = int(&m, "max_batch_size")?.unwrap_or(0);
    d.spec.max_batch_size = usize::try_from(max_batch)
        .map_err(|_| format!("max_batch_size {max_batch} is negative"))?;
    let tensors = |field: &str| -> Result<Vec<TensorDecl>, String> {
        m.all(field)
            .map(|v| {
                let t = v
                    .as_message()
                    .ok_or_else(|| format!("'{field}' must be a message"))?;
                let name = t
                    .get("name")
                    .and_then(pbtxt::Value::as_str)
                    .ok_or_else(|| format!("an {field} has no name"))?
                    .to_string();
                let dt = t
                    .get("data_type")
                    .and_then(pbtxt::Value::as_ident)
                    .ok_or_else(|| format!("{field} '{name}' has no data_type"))?;
                let dtype = DType::from_triton_config(dt)
                    .ok_or_else(|| format!("{field} '{name}' has unknown data_type {dt}"))?;
                let mut dims = t
                    .all("dims")
                    .map(|v| {
                        v.as_i64()
                            .ok_or_else(|| format!("{field} '{name}' has a non-integer dim"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                // With max_batch_size > 0, Triton's dims leave out the batch dimension.
                if max_batch > 0 {
                    dims.insert(0, -1);
                }
                Ok(TensorDecl { name, dtype, dims })
            })
            .collect()
    };
    d.inputs = tensors("input")?;
    d.outputs = tensors("output")?;
    if let Some(db) = m.get("dynamic_batching") {
        let db = db
            .as_message()
            .ok_or("'dynamic_batching' must be a message")?;
        let def = BatchingConfig::default();
        let u = |m: &pbtxt::Message, f: &str| -> Result<Option<u64>, String> {
            match m.get(f) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| format!("'{f}' must be a non-negative integer")),
            }
        };
        let policy = db
            .get("default_queue_policy")
            .and_then(pbtxt::Value::as_message);
        let empty = pbtxt::Message::default();
        let policy = policy.unwrap_or(&empty);
        d.spec.batching = Some(BatchingConfig {
            max_queue_delay: u(db, "max_queue_delay_microseconds")?
                .map(Duration::from_micros)
                .unwrap_or(def.max_queue_delay),
            preferred_batch_sizes: db
                .all("preferred_batch_size")
                .map(|v| {
                    v.as_u64().map(|p| p as usize).ok_or_else(|| {
                        "preferred_batch_size must be a positive integer".to_string()
                    })
                })
                .collect::<Result<_, _>>()?,
            // Triton: 0 means unbounded; keep the runtime's bound instead.
            max_queue_size: u(policy, "max_queue_size")?
                .filter(|&q| q > 0)
                .map(|q| q as usize)
                .unwrap_or(def.max_queue_size),
            default_queue_timeout: u(policy, "default_timeout_microseconds")?
                .filter(|&t| t > 0)
                .map(Duration::from_micros),
            priority_levels: u(db, "priority_levels")?
                .map(|p| p as u32)
                .unwrap_or(def.priority_levels),
            default_priority: u(db, "default_priority_level")?
                .filter(|&p| p > 0)
                .map(|p| p as u32)
                .unwrap_or(def.default_priority),
            // No Triton equivalent; config.toml only.
            pad_to_preferred: false,
        });
    }
    let mut workers = 0usize;
    for g in m.all("instance_group") {
        let g = g.as_message().ok_or("'instance_group' must be a message")?;
        workers += int(g, "count")?.unwrap_or(1).max(0) as usize;
        match g.get("kind").and_then(pbtxt::Value::as_ident) {
            Some("KIND_GPU") => {
                d.spec.load.device = if cfg!(target_vendor = "apple") {
                    DeviceKind::Metal
                } else {
                    DeviceKind::Cuda
                }
            }
            Some("KIND_CPU") => d.spec.load.device = DeviceKind::Cpu,
            _ => {}
        }
    }
    d.spec.workers = workers.max(1);
    if let Some(p) = m.get("version_policy") {
        d.version_policy = pbtxt_policy(p)?;
    }
    // Not in Triton's schema: pomme's per-model budget and routing, also
    // accepted in a pbtxt as `parameters { key: "memory_budget_mb" value {
    // string_value: "64" } }` and `parameters { key: "routing" value {
    // string_value: "auto" } }`.
    for p in m.all("parameters") {
        let p = p.as_message().ok_or("'parameters' must be a message")?;
        let key = p.get("key").and_then(pbtxt::Value::as_str);
        if !matches!(key, Some("memory_budget_mb" | "routing")) {
            continue;
        }
        let key = key.expect("matched");
        let v = p
            .get("value")
            .and_then(pbtxt::Value::as_message)
            .and_then(|v| v.get("string_value"))
            .and_then(pbtxt::Value::as_str)
            .ok_or_else(|| format!("parameter {key} needs value {{ string_value: \"...\" }}"))?;
        if key == "routing" {
            d.routing = ModelRouting::from_parameter(v, d.spec.load.device)?;
        } else {
            d.memory_budget_mb = Some(
                v.trim()
                    .parse()
                    .map_err(|_| format!("parameter memory_budget_mb '{v}' is not a number"))?,
            );
        }
    }
    check_batching(&d.spec)?;
    Ok(d)
}

/// Triton's `version_policy: { latest { num_versions: N } }`, `{ all {} }`
/// or `{ specific { versions: [..] } }`.
fn pbtxt_policy(v: &pbtxt::Value) -> Result<VersionPolicy, String> {
    let p = v.as_message().ok_or("'version_policy' must be a message")?;
    let [(kind, body)] = p.fields.as_slice() else {
        return Err("version_policy must hold exactly one of latest, all, specific".into());
    };
    let body = body
        .as_message()
        .ok_or_else(|| format!("version_policy {kind} must be a message"))?;
    match kind.as_str() {
        "latest" => Ok(VersionPolicy::Latest(
            body.get("num_versions")
                .map(|n| {
                    n.as_u64()
                        .ok_or("version_policy latest num_versions must be a non-negative integer")
                })
                .transpose()?
                .unwrap_or(1),
        )),
        "all" => Ok(VersionPolicy::All),
        "specific" => Ok(VersionPolicy::Specific(
            body.all("versions")
                .map(|n| {
                    n.as_u64()
                        .ok_or("version_policy specific versions must be non-negative integers")
                })
                .collect::<Result<_, _>>()?,
        )),
        other => Err(format!(
            "version_policy '{other}' is not one of latest, all, specific"
        )),
    }
}

/// Loads every version a repository model selects. Versions already serving
/// are reloaded when `reload` is true (the old instance keeps serving if the
/// new one fails) and left alone otherwise. Versions serving that the policy
/// no longer selects are unloaded afterwards, and only once every selected
/// version loaded: a rollout to a new version never leaves the model without
/// one, and a failed new version leaves the old one serving. Every version is
/// tried; the first error is returned.
pub async fn load_versions(
    runtime: &Runtime,
    model: &RepoModel,
    reload: bool,
) -> pomme_core::Result<()> {
    let name = &model.spec.name;
    let serving: Vec<u64> = runtime
        .models()
        .into_iter()
        .filter(|m| &m.name == name && m.state == pomme_runtime::ModelState::Ready)
        .map(|m| m.version)
        .collect();
    let mut first_err = None;
    for spec in &model.specs {
        if serving.contains(&spec.version) && !reload {
            continue;
        }
        let spec = match &model.quantization {
            Some(q) => match quantized_spec(runtime, spec, q).await {
                Ok(s) => s,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            },
            None => spec.clone(),
        };
        let outcome = if serving.contains(&spec.version) {
            runtime.reload(spec).await
        } else {
            runtime.load(spec).await
        };
        if let Err(e) = outcome {
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    for v in serving {
        if !model.specs.iter().any(|s| s.version == v) {
            tracing::info!(model = %name, version = v, "version no longer selected; unloading it");
            runtime.unload_version(name, v).await?;
        }
    }
    Ok(())
}

/// Quantizes (or takes from the cache), validates and admits one version;
/// the returned spec loads the quantized file as stored. Over the accuracy
/// budget the version is refused with the measured figures.
async fn quantized_spec(
    runtime: &Runtime,
    spec: &ModelSpec,
    q: &pomme_quant::ServeQuantization,
) -> pomme_core::Result<ModelSpec> {
    let backends = runtime.backends().to_vec();
    let (path, q2) = (spec.path.clone(), q.clone());
    let served = tokio::task::spawn_blocking(move || {
        let refs: Vec<&dyn pomme_core::Backend> = backends.iter().map(|b| b.as_ref()).collect();
        pomme_quant::prepare_served(&path, &q2, &refs)
    })
    .await
    .map_err(|e| pomme_core::Error::Internal(format!("quantization task: {e}")))?
    .map_err(|e| {
        e.with_message(format!(
            "model '{}' version {}: {}",
            spec.name,
            spec.version,
            e.message()
        ))
    })?;
    tracing::info!(
        model = %spec.name,
        version = spec.version,
        precision = %q.precision,
        cached = served.cached,
        file = %served.path.display(),
        figures = %served.summary(),
        "serving a quantized model"
    );
    let mut s = spec.clone();
    s.path = served.path;
    // The quantization is in the file now; engines run it as stored.
    s.load.precision = Precision::F32;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model(repo: &Path, name: &str, version: u64, config: Option<(&str, &str)>) {
        let vdir = repo.join(name).join(version.to_string());
        std::fs::create_dir_all(&vdir).unwrap();
        std::fs::write(vdir.join("model.onnx"), b"onnx").unwrap();
        if let Some((file, text)) = config {
            std::fs::write(repo.join(name).join(file), text).unwrap();
        }
    }

    #[test]
    fn names_are_validated() {
        for bad in [
            "", "..", "a/b", "../x", "/abs", ".hidden", "a..b", "sp ace", "a\\b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        for good in ["resnet50", "bert-base_v2", "m.v1"] {
            validate_name(good).unwrap();
        }
    }

    #[test]
    fn scans_newest_version_and_toml() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path();
        model(repo, "plain", 1, None);
        model(repo, "plain", 3, None);
        model(
            repo,
            "batched",
            1,
            Some((
                "config.toml",
                r#"
backends = ["tract"]
max_batch_size = 8
workers = 2
device = "cpu"
threads = 2
precision = "f16"
[dynamic_batching]
max_queue_delay_us = 200
preferred_batch_sizes = [4, 8]
max_queue_size = 64
default_queue_timeout_us = 5000
priority_levels = 2
default_priority = 2
[[input]]
name = "x"
dtype = "FP32"
dims = [-1, 3]
"#,
            )),
        );
        std::fs::create_dir_all(repo.join("empty")).unwrap();
        let found = scan(repo).unwrap();
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["batched", "empty", "plain"]);
        let plain = found[2].1.as_ref().unwrap();
        assert_eq!(plain.spec.version, 3);
        assert_eq!(plain.versions, vec![1, 3]);
        assert!(plain.spec.path.ends_with("plain/3/model.onnx"));
        let b = found[0].1.as_ref().unwrap();
        assert_eq!(b.spec.backends, vec!["tract"]);
        assert_eq!(b.spec.workers, 2);
        assert_eq!(b.spec.load.precision, Precision::F16);
        let bc = b.spec.batching.as_ref().unwrap();
        assert_eq!(bc.max_queue_delay, Duration::from_micros(200));
        assert_eq!(bc.preferred_batch_sizes, vec![4, 8]);
        assert_eq!(bc.default_queue_timeout, Some(Duration::from_millis(5)));
        assert_eq!(b.inputs[0].dims, vec![-1, 3]);
        let e = found[1].1.as_ref().unwrap_err().to_string();
        assert!(e.contains("no version directory"), "{e}");
    }

    #[test]
    fn reads_triton_pbtxt() {
        let tmp = tempfile::tempdir().unwrap();
        model(
            tmp.path(),
            "resnet",
            1,
            Some((
                "config.pbtxt",
                r#"name: "resnet"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "input" data_type: TYPE_FP32 dims: [3, 224, 224] } ]
output [ { name: "probs" data_type: TYPE_FP32 dims: [1000] } ]
dynamic_batching { preferred_batch_size: [8, 16] max_queue_delay_microseconds: 100
  default_queue_policy { max_queue_size: 32 } priority_levels: 3 default_priority_level: 2 }
instance_group [ { count: 2 kind: KIND_CPU } ]
optimization { graph { level: 1 } }"#,
            )),
        );
        let m = load_model(tmp.path(), "resnet").unwrap();
        assert_eq!(m.spec.backends, vec!["ort", "tract"]);
        assert_eq!(m.spec.max_batch_size, 16);
        assert_eq!(m.spec.workers, 2);
        assert_eq!(m.inputs[0].dims, vec![-1, 3, 224, 224]);
        assert_eq!(m.outputs[0].dtype, DType::F32);
        let b = m.spec.batching.unwrap();
        assert_eq!(b.max_queue_size, 32);
        assert_eq!(b.priority_levels, 3);
        assert_eq!(b.default_priority, 2);
        assert_eq!(m.platform.as_deref(), Some("onnxruntime_onnx"));
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let tmp = tempfile::tempdir().unwrap();
        model(
            tmp.path(),
            "a",
            1,
            Some(("config.toml", "max_batch_size = 0\n[dynamic_batching]\n")),
        );
        model(
            tmp.path(),
            "b",
            1,
            Some(("config.pbtxt", "platform: \"tensorflow_savedmodel\"")),
        );
        model(tmp.path(), "c", 1, Some(("config.toml", "bogus = 1")));
        model(tmp.path(), "d", 1, Some(("config.pbtxt", "name: \"zzz\"")));
        let e = |n| load_model(tmp.path(), n).unwrap_err().to_string();
        assert!(
            e("a").contains("dynamic_batching needs max_batch_size > 0"),
            "{}",
            e("a")
        );
        assert!(e("b").contains("platform 'tensorflow_savedmodel' is not supported"));
        assert!(e("c").contains("config.toml"), "{}", e("c"));
        assert!(!e("c").contains('\n'));
        assert!(e("d").contains("does not match the directory"));
        assert!(matches!(
            load_model(tmp.path(), "nope"),
            Err(RepoError::NotFound(_))
        ));
        assert!(matches!(
            load_model(tmp.path(), "../a"),
            Err(RepoError::InvalidName(..))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_cannot_escape() {
        let outside = tempfile::tempdir().unwrap();
        model(outside.path(), "evil", 1, None);
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("evil"), tmp.path().join("evil")).unwrap();
        let e = load_model(tmp.path(), "evil").unwrap_err().to_string();
        assert!(e.contains("outside the repository"), "{e}");
    }

    #[test]
    fn version_policies_select_versions() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path();
        let cases: [(&str, &str, &str, Vec<u64>); 8] = [
            ("dflt", "config.toml", "", vec![5]),
            (
                "all",
                "config.toml",
                "version_policy = \"all\"\n",
                vec![1, 2, 5],
            ),
            (
                "lat2",
                "config.toml",
                "[version_policy]\nlatest = 2\n",
                vec![2, 5],
            ),
            (
                "spec",
                "config.toml",
                "version_policy = { specific = [5, 1] }\n",
                vec![1, 5],
            ),
            (
                "tall",
                "config.pbtxt",
                "version_policy: { all: {} }",
                vec![1, 2, 5],
            ),
            (
                "tlat",
                "config.pbtxt",
                "version_policy { latest { num_versions: 2 } }",
                vec![2, 5],
            ),
            (
                "tspec",
                "config.pbtxt",
                "version_policy: { specific: { versions: [2] } }",
                vec![2],
            ),
            ("tdflt", "config.pbtxt", "max_batch_size: 0", vec![5]),
        ];
        for (name, file, text, want) in &cases {
            for v in [1, 2, 5] {
                model(repo, name, v, Some((file, text)));
            }
            let m = load_model(repo, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            let got: Vec<u64> = m.specs.iter().map(|s| s.version).collect();
            assert_eq!(&got, want, "{name}");
            assert_eq!(m.spec.version, *want.last().unwrap());
            assert_eq!(m.versions, vec![1, 2, 5]);
            for s in &m.specs {
                assert!(s.path.ends_with(format!("{name}/{}/model.onnx", s.version)));
                assert_eq!(s.name, *name);
            }
        }
    }

    #[test]
    fn bad_version_policies_name_the_problem() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path();
        let cases = [
            (
                "a",
                "config.toml",
                "version_policy = { specific = [3] }",
                "version 3, which has no directory",
            ),
            (
                "b",
                "config.toml",
                "version_policy = { latest = 0 }",
                "latest must be at least 1",
            ),
            (
                "c",
                "config.toml",
                "version_policy = { latest = 1, all = true }",
                "exactly one",
            ),
            (
                "d",
                "config.toml",
                "version_policy = \"newest\"",
                "'newest' is not one of",
            ),
            (
                "e",
                "config.pbtxt",
                "version_policy { sometimes {} }",
                "'sometimes' is not one of",
            ),
            (
                "f",
                "config.pbtxt",
                "version_policy { specific { versions: [9] } }",
                "version 9",
            ),
            (
                "g",
                "config.toml",
                "version_policy = { specific = [] }",
                "lists no version",
            ),
        ];
        for (name, file, text, needle) in cases {
            model(repo, name, 1, Some((file, text)));
            let e = load_model(repo, name).unwrap_err().to_string();
            assert!(e.contains(needle), "{name}: {e}");
            assert!(!e.contains('\n'), "{name}: {e}");
        }
        // A selected version without a model file is an error naming it.
        model(
            repo,
            "h",
            1,
            Some(("config.toml", "version_policy = \"all\"")),
        );
        std::fs::create_dir_all(repo.join("h/2")).unwrap();
        let e = load_model(repo, "h").unwrap_err().to_string();
        assert!(e.contains("version 2 holds no model file"), "{e}");
    }

    #[test]
    fn budget_and_declared_tensors_reach_the_spec() {
        let tmp = tempfile::tempdir().unwrap();
        model(
            tmp.path(),
            "t",
            1,
            Some((
                "config.toml",
                "memory_budget_mb = 64\n[[input]]\nname = \"x\"\ndtype = \"FP32\"\ndims = [-1, 4]\n[[output]]\nname = \"y\"\ndtype = \"TYPE_FP32\"\ndims = [-1, 4]\n",
            )),
        );
        let m = load_model(tmp.path(), "t").unwrap();
        assert_eq!(m.spec.memory_budget_mb, Some(64));
        assert_eq!(m.spec.declared_inputs[0].dims, vec![-1, 4]);
        assert_eq!(m.spec.declared_outputs[0].name, "y");
        model(
            tmp.path(),
            "p",
            1,
            Some((
                "config.pbtxt",
                "max_batch_size: 8\ninput [ { name: \"x\" data_type: TYPE_FP32 dims: [ 4 ] } ]\nparameters { key: \"memory_budget_mb\" value { string_value: \"16\" } }",
            )),
        );
        let m = load_model(tmp.path(), "p").unwrap();
        assert_eq!(m.spec.memory_budget_mb, Some(16));
        assert_eq!(m.spec.declared_inputs[0].dims, vec![-1, 4]);
    }

    #[test]
    fn routing_reaches_the_spec() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path();
        model(
            repo,
            "routed",
            1,
            Some((
                "config.toml",
                "device = \"cuda\"\n[routing]\ncandidates = [\"tract\", \"ort/cpu\"]\ntolerance = { abs = 1e-2 }\n",
            )),
        );
        model(repo, "plain", 1, None);
        model(repo, "off", 1, Some(("config.toml", "routing = \"off\"")));
        model(
            repo,
            "triton",
            1,
            Some((
                "config.pbtxt",
                "parameters { key: \"routing\" value { string_value: \"ort/cpu,tract/cpu\" } }",
            )),
        );
        let m = load_model(repo, "routed").unwrap();
        let r = m.spec.routing.as_ref().unwrap();
        // A bare backend runs on the model's device.
        assert_eq!(r.candidates[0].to_string(), "tract/cuda");
        assert_eq!(r.tolerance.abs, 1e-2);
        assert!(m.specs.iter().all(|s| s.routing.is_some()));
        // The server default reaches only models that say nothing.
        let auto = |n| {
            load_model(repo, n)
                .unwrap()
                .with_default_routing(RoutingMode::Auto)
        };
        assert!(auto("plain").spec.routing.is_some());
        assert!(auto("off").spec.routing.is_none());
        assert!(load_model(repo, "plain").unwrap().spec.routing.is_none());
        assert_eq!(auto("routed").spec.routing.unwrap().candidates.len(), 2);
        let t = load_model(repo, "triton").unwrap();
        assert_eq!(t.spec.routing.unwrap().candidates[0].to_string(), "ort/cpu");

        model(
            repo,
            "bad",
            1,
            Some(("config.toml", "routing = [\"tract/gpu0\"]")),
        );
        let e = load_model(repo, "bad").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "model 'bad': config.toml: routing candidate 'tract/gpu0': unknown device 'gpu0'"
            ),
            "{e}"
        );
        model(
            repo,
            "badp",
            1,
            Some((
                "config.pbtxt",
                "parameters { key: \"routing\" value { string_value: \"ort//cpu\" } }",
            )),
        );
        let e = load_model(repo, "badp").unwrap_err().to_string();
        assert!(
            e.contains("config.pbtxt: routing candidate 'ort//cpu'"),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn pbtxt_configs_never_panic(s in "\\PC{0,120}") {
            let _ = from_pbtxt(&s, "m");
        }
    }
}
