//! The one place the `pomme` binary reads its environment for the libraries
//! below it, which read none: [`Settings::from_env`] runs once in `main` and
//! every command gets the result.
#![expect(
    clippy::disallowed_methods,
    reason = "the one module of the binary that reads the environment for the libraries"
)]

use pomme_backends::BackendSettings;
use std::ffi::OsString;
use std::path::PathBuf;

/// What the environment configures.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Cache root and ONNX Runtime discovery for every backend.
    pub backends: BackendSettings,
    /// `POMME_LOG_FORMAT=json`: logs as JSON lines.
    pub log_json: bool,
}

impl Settings {
    /// Reads the environment. Call it after `fp32_exact_gpu_math`, which may
    /// set `NVIDIA_TF32_OVERRIDE`.
    pub fn from_env() -> Settings {
        Settings::from_vars(|name| std::env::var_os(name))
    }

    /// [`Settings::from_env`] over any source of variables (tests).
    fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Settings {
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        let home = set("HOME").map(PathBuf::from);
        let mut ort_fallback_venvs = vec![PathBuf::from(".venv")];
        ort_fallback_venvs.extend(home.as_ref().map(|h| h.join(".venv")));
        Settings {
            backends: BackendSettings {
                cache_root: cache_root(&set, home.as_deref()),
                ort_dylib: set("ORT_DYLIB_PATH").map(PathBuf::from),
                ort_venv: set("POMME_ORT_VENV").map(PathBuf::from),
                ort_fallback_venvs,
                process_tf32_off: var("NVIDIA_TF32_OVERRIDE").is_some_and(|v| v == "0"),
                coreai_python: set("POMME_COREAI_PYTHON").map(PathBuf::from),
                ..BackendSettings::default()
            },
            log_json: var("POMME_LOG_FORMAT").is_some_and(|f| f == "json"),
        }
    }
}

/// pomme's one cache root: `$POMME_CACHE_DIR`, else `$XDG_CACHE_HOME/pomme`
/// (when absolute), else `$HOME/.cache/pomme`, else `pomme-cache` in the
/// temp dir (empty variables count as unset). Quantized models, fp16 conversions and compiled Core ML models
/// live under it (`BackendSettings`).
fn cache_root(var: &impl Fn(&str) -> Option<OsString>, home: Option<&std::path::Path>) -> PathBuf {
    var("POMME_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|p| p.join("pomme"))
        })
        .or_else(|| home.map(|h| h.join(".cache/pomme")))
        .unwrap_or_else(|| std::env::temp_dir().join("pomme-cache"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Settings {
        Settings::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[test]
    fn cache_root_precedence() {
        let root = |vars: &[(&str, &str)]| settings(vars).backends.cache_root;
        assert_eq!(
            root(&[
                ("POMME_CACHE_DIR", "/p"),
                ("XDG_CACHE_HOME", "/x"),
                ("HOME", "/h")
            ]),
            PathBuf::from("/p")
        );
        assert_eq!(
            root(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]),
            PathBuf::from("/x/pomme")
        );
        assert_eq!(
            root(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/h")]),
            PathBuf::from("/h/.cache/pomme")
        );
        assert_eq!(root(&[]), std::env::temp_dir().join("pomme-cache"));
    }

    #[test]
    fn ort_discovery_and_tf32() {
        let s = settings(&[
            ("ORT_DYLIB_PATH", "/lib/libonnxruntime.so"),
            ("POMME_ORT_VENV", ""),
            ("HOME", "/h"),
            ("NVIDIA_TF32_OVERRIDE", "0"),
        ]);
        assert_eq!(
            s.backends.ort_dylib,
            Some(PathBuf::from("/lib/libonnxruntime.so"))
        );
        assert_eq!(s.backends.ort_venv, None);
        assert_eq!(
            s.backends.ort_fallback_venvs,
            [PathBuf::from(".venv"), PathBuf::from("/h/.venv")]
        );
        assert!(s.backends.process_tf32_off);
        assert!(
            !settings(&[("NVIDIA_TF32_OVERRIDE", "1")])
                .backends
                .process_tf32_off
        );
    }
}
