//! Loading a repository model into the runtime: every version its policy
//! selects, with reloads and retirements ordered so a model is never left
//! without a serving version; and the served quantization (`precision =
//! "int8" | "int4"`), whose settings are resolved when the model is read and
//! which runs (or is taken from its cache) before the runtime load.

use super::RepoModel;
use super::toml::{TomlQuant, TomlSmooth};
use pomme_core::Precision;
use pomme_runtime::{ModelSpec, Runtime};
use std::path::{Path, PathBuf};

/// The served-quantization settings of a model, when its precision asks for it.
pub(super) fn quantization(
    dir: &Path,
    precision: Precision,
    q: Option<TomlQuant>,
    cache_root: &Path,
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
        rel(q.cache_dir).unwrap_or_else(|| cache_root.join("quantized")),
    );
    let default_scheme = match precision {
        Precision::Int4 => "int4",
        _ => "int8",
    };
    s.target = match q.target.as_deref() {
        Some(t) => t
            .parse()
            .map_err(|e: pomme_core::Error| format!("[quantization] {}", e.message()))?,
        None => pomme_quant::Target::Size,
    };
    if s.target == pomme_quant::Target::Speed {
        if let Some(name) = &q.scheme {
            return Err(format!(
                "[quantization] target = \"speed\" picks the scheme: remove scheme = \"{name}\" (or the target)"
            ));
        }
        // Resolved at load, from the model and the engine that runs it.
        s.scheme = None;
    } else {
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
    }
    if let Some(c) = q.min_cosine {
        if !(-1.0..=1.0).contains(&c) {
            return Err(format!(
                "[quantization] min_cosine must be in [-1, 1], got {c}"
            ));
        }
        s.min_cosine = Some(c);
    }
    s.smooth = match q.smooth {
        None => pomme_quant::Smooth::Default,
        Some(TomlSmooth::On(false)) => pomme_quant::Smooth::Off,
        Some(TomlSmooth::On(true)) => {
            pomme_quant::Smooth::Alpha(pomme_quant::smooth::DEFAULT_ALPHA)
        }
        Some(TomlSmooth::Alpha(a)) if a > 0.0 && a <= 1.0 => pomme_quant::Smooth::Alpha(a),
        Some(TomlSmooth::Alpha(a)) => {
            return Err(format!(
                "[quantization] smooth must be a strength in (0, 1], true or false, got {a}"
            ));
        }
    };
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
    if let Some(p) = &model.pipeline {
        runtime.load_pipeline(p.clone())?;
        return Ok(());
    }
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
    // Gate on the engines that may serve the model (its `backends`, when it
    // names them): a file made for ONNX Runtime's integer kernels is not
    // refused for what another engine would have answered.
    let backends: Vec<_> = runtime
        .backends()
        .iter()
        .filter(|b| spec.backends.is_empty() || spec.backends.iter().any(|n| n == b.name()))
        .cloned()
        .collect();
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
