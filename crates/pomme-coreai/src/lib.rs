//! pomme's Core AI backend: Apple's `.aimodel` assets (macOS 27's successor
//! to Core ML) served through the runtime Apple ships.
//!
//! On Linux that is the in-package runtime of Apple's `coreai-core` Python
//! package (CPU, a portable interpreter); on macOS 27+ the same package
//! drives `CoreAI.framework`, where `device = ane | gpu | cpu | auto` picks
//! the specialization (the worker maps it to `SpecializationOptions`). The
//! runtime runs in engine worker processes ([`bridge`]), one per compute
//! worker: a crash inside Apple's code fails the requests in flight and the
//! engine is started again, the server carries on.
//!
//! The backend is found at run time: [`CoreAiSettings::python`] (the
//! `pomme` binary's `POMME_COREAI_PYTHON` / `coreai_python`) names an
//! interpreter whose environment holds `coreai-core`; without it `./.venv`
//! and `python3` are tried. A build or machine without one reports the
//! backend unavailable and why ([`Backend::availability`]).
//!
//! Programs compiled for the Linux runtime are cached under
//! [`CoreAiSettings::cache_dir`], keyed by the asset's content hash
//! (`main.hash`, the SHA-256 of `main.mlirb`), the `coreai-core` version
//! and the platform ([`cache_key`]).
//!
//! On macOS there is a second transport, [`shim`]: a small Swift library
//! (`swift/PommeCoreAI.swift`) with a C ABI over the Core AI Swift API,
//! compiled by the build script when building for macOS with `swiftc`
//! (`cfg(pomme_coreai_shim)`) and called in-process with the engine
//! worker's contract. A load uses it when it is compiled in and
//! CoreAI.framework is there (macOS 27+), unless the model's `bridge`
//! option says `python` (or names a `python`). The Swift file is written
//! from Apple's documentation and has never been compiled or run here: its
//! Rust side is type-checked for `aarch64-apple-darwin` and tested on Linux
//! against a stand-in of the ABI, and `scripts/macos-smoke.sh` builds and
//! runs it on a Mac (`swift/README.md`). `unsafe` is denied crate-wide and
//! allowed only in [`shim`] and the bridge's two pipe calls (fcntl, poll).
#![deny(unsafe_code)]

pub mod bridge;
pub mod describe;
mod model;
pub mod options;
#[allow(unsafe_code)]
pub mod shim;

pub use describe::{Description, FunctionDesc, Plan, SpecDesc};
pub use model::{CoreAiModel, describe_asset};
pub use options::{Bridge, CoreAiOptions};

use pomme_core::{
    Availability, Backend, DeviceInfo, DeviceKind, Error, LoadOptions, LoadedModel, ModelArtifact,
    ModelFormat, ModelInfo, Result,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

/// Where the backend finds its runtime and keeps its cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreAiSettings {
    /// The Python interpreter of an environment holding `coreai-core`;
    /// binding when set.
    pub python: Option<PathBuf>,
    /// Interpreters tried in order when `python` is not set.
    pub fallback_pythons: Vec<PathBuf>,
    /// Compiled programs (`<cache root>/coreai`).
    pub cache_dir: PathBuf,
}

impl Default for CoreAiSettings {
    fn default() -> Self {
        CoreAiSettings {
            python: None,
            fallback_pythons: vec![PathBuf::from(".venv/bin/python"), PathBuf::from("python3")],
            cache_dir: std::env::temp_dir().join("pomme-cache").join("coreai"),
        }
    }
}

/// What a probe of an interpreter found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runtime {
    pub python: PathBuf,
    /// `coreai-core 1.0.0b3 (in-package runtime, Linux x86_64)`.
    pub description: String,
    /// Whether the package drives `CoreAI.framework` (macOS 27+).
    pub os_framework: bool,
    /// Compute unit kinds the framework offers (`cpu`, `gpu`, `ane`); `cpu`
    /// only on the in-package runtime.
    pub kinds: Vec<String>,
    /// Served in-process by pomme's Swift shim ([`shim`]) rather than a
    /// Python engine process (`python` is then empty).
    pub shim: bool,
}

const PROBE: &str = r#"
import json, platform, importlib.metadata as md
import coreai.runtime as r
os_fw = bool(getattr(r, "_use_os_coreai", False))
kinds = ["cpu"]
if os_fw:
    from coreai.runtime import ComputeUnitKind as K
    names = {str(K.cpu()): "cpu", str(K.gpu()): "gpu", str(K.neural_engine()): "ane"}
    kinds = [names.get(str(k), str(k)) for k in K.available_kinds()]
where = "CoreAI.framework" if os_fw else "in-package runtime"
print(json.dumps({"description": f"coreai-core {md.version('coreai-core')} ({where}, {platform.system()} {platform.machine()})", "os_framework": os_fw, "kinds": kinds}))
"#;

/// Asks `python` whether it can import Apple's runtime.
pub fn probe(python: &Path) -> std::result::Result<Runtime, String> {
    let out = Command::new(python)
        .arg("-c")
        .arg(PROBE)
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!("{}: {}", python.display(), last.trim()));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{}: unreadable probe output: {e}", python.display()))?;
    Ok(Runtime {
        python: python.to_path_buf(),
        description: v["description"].as_str().unwrap_or("?").to_string(),
        os_framework: v["os_framework"].as_bool().unwrap_or(false),
        kinds: probed_kinds(&v),
        shim: false,
    })
}

/// The compute unit kinds a probe's JSON lists (`"kinds": ["cpu", ...]`),
/// from the Python engine's probe or the shim's.
pub(crate) fn probed_kinds(v: &serde_json::Value) -> Vec<String> {
    v["kinds"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The compiled-program cache entry's name for an asset: its stem and a
/// prefix of its content hash (`main.hash`, else the SHA-256 of
/// `main.mlirb`). The worker appends the runtime's version and platform, so
/// another `coreai-core` never reads a program it did not compile.
pub fn cache_key(asset: &Path) -> Result<String> {
    let hash = match std::fs::read(asset.join("main.hash")) {
        Ok(h) if !h.is_empty() => h,
        _ => {
            let program = std::fs::read(asset.join("main.mlirb")).map_err(|e| {
                Error::InvalidModelFormat(format!(
                    "{}: no readable main.mlirb ({e}); a Core AI asset holds main.mlirb, main.hash and metadata.json",
                    asset.display()
                ))
            })?;
            Sha256::digest(&program).to_vec()
        }
    };
    let hex: String = Sha256::digest(&hash)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let stem = asset
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    Ok(format!("{stem}-{hex}"))
}

/// The Core AI backend.
pub struct CoreAiBackend {
    settings: CoreAiSettings,
    runtime: OnceLock<std::result::Result<Runtime, String>>,
    shim: OnceLock<std::result::Result<Runtime, String>>,
}

impl CoreAiBackend {
    pub fn new(settings: CoreAiSettings) -> CoreAiBackend {
        CoreAiBackend {
            settings,
            runtime: OnceLock::new(),
            shim: OnceLock::new(),
        }
    }

    /// The Python runtime found (probed once per process), or why none was.
    pub fn runtime(&self) -> std::result::Result<&Runtime, String> {
        self.runtime
            .get_or_init(|| find_runtime(&self.settings))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The Swift shim's runtime (probed once per process), or why there is
    /// none: not compiled in, or no CoreAI.framework.
    pub fn shim_runtime(&self) -> std::result::Result<&Runtime, String> {
        self.shim
            .get_or_init(shim::find_runtime)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// What serves a load with default options: the shim when it can, else
    /// the Python runtime.
    fn default_runtime(&self) -> std::result::Result<&Runtime, String> {
        self.shim_runtime().or_else(|_| self.runtime())
    }

    fn runtime_for(&self, options: &CoreAiOptions) -> Result<Runtime> {
        if let Some(rt) = shim::choose(
            options.bridge,
            options.python.is_some(),
            self.shim_runtime(),
        )? {
            return Ok(rt.clone());
        }
        match &options.python {
            Some(p) => probe(p).map_err(|e| {
                Error::Unavailable(format!(
                    "python = '{}': no Core AI runtime ({e})",
                    p.display()
                ))
            }),
            None => self.runtime().cloned().map_err(Error::Unavailable),
        }
    }
}

fn find_runtime(settings: &CoreAiSettings) -> std::result::Result<Runtime, String> {
    if let Some(p) = &settings.python {
        return probe(p)
            .map_err(|e| format!("POMME_COREAI_PYTHON / coreai_python cannot run Core AI: {e}"));
    }
    let mut tried = Vec::new();
    for p in &settings.fallback_pythons {
        match probe(p) {
            Ok(r) => return Ok(r),
            Err(e) => tried.push(e),
        }
    }
    Err(format!(
        "no Python with Apple's coreai-core found; `pip install coreai-core` in an environment and set POMME_COREAI_PYTHON to its interpreter (tried {})",
        tried.join("; ")
    ))
}

impl Backend for CoreAiBackend {
    fn name(&self) -> &'static str {
        "coreai"
    }

    fn formats(&self) -> &[ModelFormat] {
        &[ModelFormat::CoreAi]
    }

    fn availability(&self) -> Availability {
        match self.default_runtime() {
            Ok(_) => Availability::Available,
            Err(e) => Availability::Unavailable(e),
        }
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        let rt = self.default_runtime();
        let kind = |kind: DeviceKind, name: &str, short: &str| {
            DeviceInfo {
            kind,
            name: name.to_string(),
            availability: match &rt {
                Err(e) => Availability::Unavailable(e.clone()),
                Ok(r) if r.kinds.iter().any(|k| k == short) => Availability::Available,
                Ok(r) if r.os_framework => {
                    Availability::Unavailable(format!("CoreAI.framework offers no {name} here"))
                }
                Ok(_) => Availability::Unavailable(
                    "the in-package runtime runs on the CPU only; the Neural Engine and GPU need CoreAI.framework (macOS 27+)".into(),
                ),
            },
        }
        };
        let mut v = vec![
            kind(DeviceKind::Cpu, "CPU", "cpu"),
            kind(DeviceKind::Ane, "Neural Engine", "ane"),
            kind(DeviceKind::Metal, "GPU", "gpu"),
        ];
        v.push(DeviceInfo {
            kind: DeviceKind::Auto,
            name: "Core AI's choice".into(),
            availability: v[0].availability.clone(),
        });
        v
    }

    fn inspect(&self, artifact: &ModelArtifact) -> Result<ModelInfo> {
        // Inspection takes no load options: what a default load would use.
        let rt = self.default_runtime().map_err(Error::Unavailable)?;
        describe_asset(rt, &artifact.path, &self.settings.cache_dir)
    }

    fn load(
        &self,
        artifact: &ModelArtifact,
        options: &LoadOptions,
    ) -> Result<Arc<dyn LoadedModel>> {
        let opts = CoreAiOptions::parse(options)?;
        let rt = self.runtime_for(&opts)?;
        if rt.os_framework {
            let want = match options.device {
                DeviceKind::Ane => Some("ane"),
                DeviceKind::Metal => Some("gpu"),
                _ => None,
            };
            if let Some(w) = want.filter(|w| !rt.kinds.iter().any(|k| k == w)) {
                return Err(Error::Unavailable(format!(
                    "device {}: CoreAI.framework offers no '{w}' compute unit here",
                    options.device
                )));
            }
        } else if !matches!(options.device, DeviceKind::Cpu | DeviceKind::Auto) {
            return Err(Error::Unavailable(format!(
                "device {}: the in-package Core AI runtime ({}) runs on the CPU only; the Neural Engine and GPU need CoreAI.framework (macOS 27+)",
                options.device, rt.description
            )));
        }
        let cache = opts
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.settings.cache_dir.clone());
        Ok(Arc::new(CoreAiModel::load(
            rt,
            &artifact.path,
            &cache,
            options.device,
            &opts,
        )?))
    }

    fn option_keys(&self) -> &'static [&'static str] {
        options::KEYS
    }
}
