//! Finding the onnxruntime shared library, and loading it once per process.
//!
//! `ort` with `load-dynamic` keeps the loaded library and the ONNX Runtime
//! environment in process globals: the first successful load wins and cannot be
//! replaced. So this module keeps one [`OrtRuntime`] in a `OnceLock`, checks that
//! a requested path exists *before* handing it to `ort` (a missing file then never
//! touches the globals, and tests pointing at a bogus path cannot poison the
//! process for others), and remembers failed loads per path so a broken library
//! is not `dlopen`ed again on every availability probe.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The reason given when no library was found by any rule.
pub(crate) const NOT_FOUND: &str =
    "onnxruntime library not found: set ORT_DYLIB_PATH or pip install onnxruntime into ./.venv";

/// Where a library path came from; named in error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// `OrtBackend::with_dylib`.
    Explicit,
    /// `LoadOptions.extra["dylib"]`.
    LoadOption,
    /// [`DylibSearch::dylib`], which the `pomme` binary fills from
    /// `ORT_DYLIB_PATH` (and names so in messages).
    EnvPath,
    /// A Python virtual environment ([`DylibSearch::venv`] or a fallback).
    Venv,
}

impl Source {
    fn describe(self) -> &'static str {
        match self {
            Source::Explicit => "OrtBackend::with_dylib",
            Source::LoadOption => "LoadOptions.extra[\"dylib\"]",
            Source::EnvPath => "ORT_DYLIB_PATH",
            Source::Venv => "a Python venv",
        }
    }
}

/// The outcome of looking for the library: a path to try, or why there is none.
#[derive(Clone, Debug)]
pub(crate) enum Located {
    Found(PathBuf, Source),
    Missing(String),
}

impl Located {
    /// A path given directly (constructor, load option, env var): used as is,
    /// never replaced by a search, because the caller asked for that file.
    pub(crate) fn given(path: PathBuf, source: Source) -> Located {
        if path.is_file() {
            Located::Found(path, source)
        } else {
            Located::Missing(format!(
                "onnxruntime library not found: {} (from {}) does not exist",
                path.display(),
                source.describe()
            ))
        }
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        match self {
            Located::Found(p, _) => Some(p),
            Located::Missing(_) => None,
        }
    }
}

/// Where [`crate::OrtBackend::discover`] looks for the onnxruntime library.
/// The caller fills it (the `pomme` binary from `ORT_DYLIB_PATH`,
/// `POMME_ORT_VENV` and `$HOME`); this crate reads no environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DylibSearch {
    /// This library file (`ORT_DYLIB_PATH`). Binding when set: a missing
    /// file is reported, not skipped.
    pub dylib: Option<PathBuf>,
    /// The library inside this Python virtual environment
    /// (`POMME_ORT_VENV`). Binding when set, as `dylib`.
    pub venv: Option<PathBuf>,
    /// Virtual environments tried in order when neither is set; the first
    /// with a library wins. Default: `./.venv`.
    pub fallback_venvs: Vec<PathBuf>,
}

impl Default for DylibSearch {
    fn default() -> Self {
        DylibSearch {
            dylib: None,
            venv: None,
            fallback_venvs: vec![PathBuf::from(".venv")],
        }
    }
}

/// Runs the discovery rules: `dylib`, then `venv`, then the fallback venvs.
/// A set-but-wrong setting is reported rather than skipped, so a typo does
/// not silently pick up another library.
pub(crate) fn discover(search: &DylibSearch) -> Located {
    if let Some(p) = search.dylib.as_ref().filter(|p| !p.as_os_str().is_empty()) {
        return Located::given(p.clone(), Source::EnvPath);
    }
    if let Some(venv) = search.venv.as_ref().filter(|p| !p.as_os_str().is_empty()) {
        return match find_in_venv(venv) {
            Some(p) => Located::Found(p, Source::Venv),
            None => Located::Missing(format!("{} (POMME_ORT_VENV)", venv_missing(venv))),
        };
    }
    search
        .fallback_venvs
        .iter()
        .find_map(|v| find_in_venv(v))
        .map(|p| Located::Found(p, Source::Venv))
        .unwrap_or_else(|| Located::Missing(NOT_FOUND.to_string()))
}

/// The reason given when a named venv has no library.
pub(crate) fn venv_missing(venv: &Path) -> String {
    format!(
        "onnxruntime library not found: {} has no {}",
        venv.display(),
        VENV_PATTERN
    )
}

#[cfg(target_vendor = "apple")]
const VENV_PATTERN: &str = "lib/python3*/site-packages/onnxruntime/capi/libonnxruntime*.dylib";
#[cfg(windows)]
const VENV_PATTERN: &str = "Lib/site-packages/onnxruntime/capi/onnxruntime.dll";
#[cfg(not(any(target_vendor = "apple", windows)))]
const VENV_PATTERN: &str = "lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*";

/// Whether a file in `onnxruntime/capi` is the runtime itself. The folder also
/// holds `libonnxruntime_providers_shared.*`, which must not match.
fn is_runtime_lib(name: &str) -> bool {
    if cfg!(target_vendor = "apple") {
        name.starts_with("libonnxruntime.") && name.ends_with(".dylib")
    } else if cfg!(windows) {
        name == "onnxruntime.dll"
    } else {
        name.starts_with("libonnxruntime.so")
    }
}

/// Looks for the library of a pip-installed `onnxruntime` under a venv.
pub(crate) fn find_in_venv(venv: &Path) -> Option<PathBuf> {
    let site_packages: Vec<PathBuf> = if cfg!(windows) {
        vec![venv.join("Lib").join("site-packages")]
    } else {
        let mut dirs: Vec<PathBuf> = fs::read_dir(venv.join("lib"))
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path().join("site-packages"))
            .collect();
        dirs.sort();
        dirs
    };
    site_packages.iter().find_map(|sp| {
        let capi = sp.join("onnxruntime").join("capi");
        let mut libs: Vec<PathBuf> = fs::read_dir(&capi)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| is_runtime_lib(&e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        libs.sort();
        libs.into_iter().next()
    })
}

/// The process's loaded onnxruntime: its environment and where it came from.
pub(crate) struct OrtRuntime {
    pub(crate) env: ort::environment::Environment,
    pub(crate) dylib: PathBuf,
    /// The library's build line (`ORT Build Info: git-branch=rel-1.31.1, ...`).
    pub(crate) build_info: String,
}

static RUNTIME: OnceLock<OrtRuntime> = OnceLock::new();
/// Serialises load attempts and remembers failed ones, keyed by canonical path.
static FAILURES: Mutex<BTreeMap<PathBuf, String>> = Mutex::new(BTreeMap::new());

fn canonical(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn same_library(rt: &'static OrtRuntime, path: &Path) -> Result<&'static OrtRuntime, String> {
    if canonical(path) == canonical(&rt.dylib) {
        Ok(rt)
    } else {
        Err(format!(
            "onnxruntime is already loaded from {} in this process; {} cannot be loaded as well",
            rt.dylib.display(),
            path.display()
        ))
    }
}

/// Returns the process's onnxruntime, loading it from `located` on first use.
pub(crate) fn runtime(located: &Located) -> Result<&'static OrtRuntime, String> {
    let (path, _source) = match located {
        Located::Found(p, s) => (p.as_path(), *s),
        Located::Missing(reason) => return Err(reason.clone()),
    };
    if let Some(rt) = RUNTIME.get() {
        return same_library(rt, path);
    }
    let mut failures = FAILURES.lock();
    if let Some(rt) = RUNTIME.get() {
        return same_library(rt, path);
    }
    let key = canonical(path);
    if let Some(reason) = failures.get(&key) {
        return Err(reason.clone());
    }
    let built = ort::init_from(path)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            b.with_name("pomme")
                .with_telemetry(false)
                .build()
                .map_err(|e| e.to_string())
        });
    match built {
        Ok(env) => {
            let build_info = pomme_core::one_line(ort::info());
            tracing::info!(dylib = %path.display(), %build_info, "onnxruntime loaded");
            let rt = OrtRuntime {
                env,
                dylib: path.to_path_buf(),
                build_info,
            };
            if RUNTIME.set(rt).is_err() {
                unreachable!("RUNTIME is only set under the FAILURES lock");
            }
            Ok(RUNTIME.get().expect("just set"))
        }
        Err(e) => {
            let reason = format!(
                "onnxruntime library at {} could not be loaded: {}",
                path.display(),
                pomme_core::one_line(&e)
            );
            failures.insert(key, reason.clone());
            Err(reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_shared_is_not_the_runtime() {
        assert!(!is_runtime_lib("libonnxruntime_providers_shared.so"));
        assert!(!is_runtime_lib("libonnxruntime_providers_shared.dylib"));
        if cfg!(all(unix, not(target_vendor = "apple"))) {
            assert!(is_runtime_lib("libonnxruntime.so.1.31.1"));
            assert!(is_runtime_lib("libonnxruntime.so"));
        }
    }

    #[test]
    fn missing_given_path_names_its_source() {
        let l = Located::given("/nonexistent/libonnxruntime.so".into(), Source::EnvPath);
        let Located::Missing(reason) = l else {
            panic!("found a nonexistent file")
        };
        assert_eq!(
            reason,
            "onnxruntime library not found: /nonexistent/libonnxruntime.so (from ORT_DYLIB_PATH) does not exist"
        );
    }

    #[test]
    fn empty_venv_has_no_library() {
        assert_eq!(find_in_venv(Path::new("/nonexistent-venv")), None);
    }
}
