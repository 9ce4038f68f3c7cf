//! The model repository on disk: `<repo>/<model>/<version>/model.<ext>` with an
//! optional `<repo>/<model>/config.toml` (pomme's) or `config.pbtxt` (Triton's).
//!
//! Reading a model directory turns it into a [`RepoModel`]: one runtime
//! [`ModelSpec`] per version its version policy selects (Triton's default:
//! the newest one) plus the declared configuration that the ModelConfig
//! endpoints report. Declared inputs/outputs and the per-model memory budget
//! travel in the spec, and the runtime checks them against the model at load.
//!
//! One job per file: `layout` walks the directories (names, versions, model
//! files; names come from clients on the load endpoint, so they are checked
//! before touching the file system, and paths are canonicalized so a symlink
//! cannot lead outside the repository); `toml` and `triton` translate the two
//! configuration formats into one `Declared` description; `load` loads the
//! selected versions into the runtime, quantizing first when the
//! configuration asks for a served precision.

mod layout;
mod load;
mod toml;
mod triton;

pub use layout::{Scanned, load_model, scan, validate_name};
pub use load::load_versions;

use crate::routing::{ModelRouting, RoutingMode};
use pomme_runtime::ModelSpec;
use std::path::PathBuf;

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
    /// Unload after this long without a request (`unload_after_idle`).
    pub idle: Option<IdlePolicy>,
    /// A pipeline (Triton's ensemble): served by its steps, no model file.
    pub pipeline: Option<pomme_runtime::PipelineSpec>,
    /// A text model (`[text]`): its tokenizer and settings, for the
    /// OpenAI/TEI routes; the same adapter is on every spec.
    pub text: Option<std::sync::Arc<pomme_text::TextAdapter>>,
}

/// `unload_after_idle = "10m"` and `reload_on_request = true`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdlePolicy {
    /// Unloaded once no request came for this long.
    pub after: std::time::Duration,
    /// The next request loads it again (and waits for the load) instead of
    /// being refused.
    pub reload_on_request: bool,
}

impl RepoModel {
    /// Applies the server's default routing to a model whose configuration
    /// does not mention routing.
    pub fn with_default_routing(mut self, mode: RoutingMode) -> RepoModel {
        for s in self.specs.iter_mut().chain([&mut self.spec]) {
            s.routing = self.routing.resolve(mode, s.load.device);
        }
        self
    }
}

/// What a model's configuration file declares, in either format.
#[derive(Clone, Debug)]
struct Declared {
    spec: ModelSpec,
    /// The configuration named the device (`device`, an instance group's
    /// `kind`); otherwise the platform's default for the model's format applies.
    device_set: bool,
    platform: Option<String>,
    inputs: Vec<TensorDecl>,
    outputs: Vec<TensorDecl>,
    memory_budget_mb: Option<u64>,
    version_policy: VersionPolicy,
    /// `[quantization]` (config.toml only), resolved by `load` against the model directory.
    quantization: Option<self::toml::TomlQuant>,
    routing: ModelRouting,
    idle: Option<IdlePolicy>,
    /// Triton's `ensemble_scheduling` steps / `[[pipeline.step]]`.
    pipeline: Option<Vec<pomme_runtime::PipelineStep>>,
    /// `config.pbtxt` fields pomme does not implement (`model_warmup`,
    /// `dynamic_batching.preserve_ordering`, ...): one warning line each at load.
    ignored: Vec<String>,
    /// `[text]` (config.toml only), resolved by `layout` against the model directory.
    text: Option<pomme_text::TextConfig>,
}

impl Default for Declared {
    fn default() -> Self {
        Declared {
            spec: ModelSpec::new("", ""),
            device_set: false,
            platform: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
            memory_budget_mb: None,
            version_policy: VersionPolicy::default(),
            quantization: None,
            routing: ModelRouting::Unset,
            idle: None,
            pipeline: None,
            ignored: Vec::new(),
            text: None,
        }
    }
}

/// Checks the batching settings against each other, for both formats.
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

/// Helpers for the tests of this module and its children: a model directory
/// writer and the loader with the test platform.
#[cfg(test)]
mod testing {
    use super::{RepoError, RepoModel, Scanned};
    use std::path::Path;

    pub use crate::test_platform::platform;

    /// Writes `<repo>/<name>/<version>/model.onnx` and, if given, a config file.
    pub fn model(repo: &Path, name: &str, version: u64, config: Option<(&str, &str)>) {
        let vdir = repo.join(name).join(version.to_string());
        std::fs::create_dir_all(&vdir).unwrap();
        std::fs::write(vdir.join("model.onnx"), b"onnx").unwrap();
        if let Some((file, text)) = config {
            std::fs::write(repo.join(name).join(file), text).unwrap();
        }
    }

    pub fn load_model(repo: &Path, name: &str) -> Result<RepoModel, RepoError> {
        super::load_model(repo, name, &platform())
    }

    pub fn scan(repo: &Path) -> Result<Vec<Scanned>, RepoError> {
        super::scan(repo, &platform())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{load_model, model};
    use super::*;

    /// A model naming no device gets the platform's default for its format;
    /// `device` in config.toml or an instance group's kind wins.
    #[test]
    fn unset_device_comes_from_the_platform_by_format() {
        use pomme_core::{DeviceKind, ModelFormat};
        let platform = testing::platform().with_default_device(|f| match f {
            ModelFormat::CoreMl => DeviceKind::Auto,
            _ => DeviceKind::Cpu,
        });
        let tmp = tempfile::tempdir().unwrap();
        let coreml = |name: &str, config: Option<(&str, &str)>| {
            let vdir = tmp.path().join(name).join("1");
            std::fs::create_dir_all(&vdir).unwrap();
            std::fs::write(vdir.join("model.mlmodel"), b"coreml").unwrap();
            if let Some((file, text)) = config {
                std::fs::write(tmp.path().join(name).join(file), text).unwrap();
            }
        };
        coreml("plain", None);
        coreml("pinned", Some(("config.toml", "device = \"cpu\"\n")));
        coreml(
            "triton",
            Some((
                "config.pbtxt",
                "platform: \"coreml\"\ninstance_group { kind: KIND_CPU }\n",
            )),
        );
        model(tmp.path(), "onnx", 1, None);
        let device = |name: &str| {
            super::load_model(tmp.path(), name, &platform)
                .unwrap()
                .spec
                .load
                .device
        };
        assert_eq!(device("plain"), DeviceKind::Auto);
        assert_eq!(device("pinned"), DeviceKind::Cpu);
        assert_eq!(device("triton"), DeviceKind::Cpu);
        assert_eq!(device("onnx"), DeviceKind::Cpu);

        // A bare routing candidate runs on the version's device: the Core ML
        // default when the configuration names none, else the named one.
        coreml(
            "routed",
            Some(("config.toml", "routing = [\"coreml\", \"coreml/cpu\"]\n")),
        );
        coreml(
            "routed_cpu",
            Some(("config.toml", "device = \"cpu\"\nrouting = [\"coreml\"]\n")),
        );
        coreml(
            "routed_pbtxt",
            Some((
                "config.pbtxt",
                "platform: \"coreml\"\nparameters { key: \"routing\" value { string_value: \"coreml\" } }\n",
            )),
        );
        let candidates = |name: &str, mode| {
            let m = super::load_model(tmp.path(), name, &platform)
                .unwrap()
                .with_default_routing(mode);
            let names = |s: &ModelSpec| -> Vec<String> {
                s.routing
                    .as_ref()
                    .unwrap()
                    .candidates
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            };
            assert!(m.specs.iter().all(|s| names(s) == names(&m.spec)));
            names(&m.spec)
        };
        assert_eq!(
            candidates("routed", RoutingMode::Off),
            ["coreml/auto", "coreml/cpu"]
        );
        assert_eq!(
            candidates("routed", RoutingMode::Auto),
            ["coreml/auto", "coreml/cpu"]
        );
        assert_eq!(candidates("routed_cpu", RoutingMode::Off), ["coreml/cpu"]);
        coreml(
            "routed_twice",
            Some((
                "config.toml",
                "device = \"cpu\"\nrouting = [\"coreml\", \"coreml/cpu\"]\n",
            )),
        );
        assert_eq!(candidates("routed_twice", RoutingMode::Off), ["coreml/cpu"]);
        assert_eq!(
            candidates("routed_pbtxt", RoutingMode::Off),
            ["coreml/auto"]
        );

        // The test platform keeps the CPU default.
        assert_eq!(
            load_model(tmp.path(), "plain").unwrap().spec.load.device,
            DeviceKind::Cpu
        );
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
}
