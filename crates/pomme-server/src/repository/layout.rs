//! The repository's directory layout: which model directories exist, which
//! version directories a model has, and which file in a version is the model.
//! [`load_model`] reads one model directory end to end (layout, then the
//! configuration in either format, then the version policy).

use super::{Declared, RepoError, RepoModel, RoutingMode};
use crate::Platform;
use std::path::{Path, PathBuf};

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

/// Wraps an I/O error with the path it happened on.
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
pub fn scan(repo: &Path, platform: &Platform) -> Result<Vec<Scanned>, RepoError> {
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
            let m = load_model(repo, &n, platform);
            (n, m)
        })
        .collect())
}

/// Reads one model's directory; `platform` resolves a `config.pbtxt`'s
/// Triton platform and `KIND_GPU`.
pub fn load_model(repo: &Path, name: &str, platform: &Platform) -> Result<RepoModel, RepoError> {
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
        super::toml::from_toml(&text).map_err(|m| invalid(format!("config.toml: {m}")))?
    } else if pbtxt_path.exists() {
        let text = std::fs::read_to_string(&pbtxt_path).map_err(io(&pbtxt_path))?;
        let decl = super::triton::from_pbtxt(&text, name, platform)
            .map_err(|m| invalid(format!("config.pbtxt: {m}")))?;
        for field in &decl.ignored {
            tracing::warn!(model = %name, %field, "config.pbtxt: '{field}' is not implemented by pomme and is ignored");
        }
        decl
    } else {
        Declared::default()
    };
    decl.spec.name = name.to_string();
    decl.spec.memory_budget_mb = decl.memory_budget_mb;
    decl.spec.declared_inputs = decl.inputs.clone();
    decl.spec.declared_outputs = decl.outputs.clone();
    // Warm-up files live in the model's `warmup/` directory, as in Triton.
    for sample in &mut decl.spec.warmup {
        for (_, input) in &mut sample.inputs {
            if let pomme_runtime::WarmupData::File(p) = &mut input.data
                && p.is_relative()
            {
                *p = dir.join("warmup").join(&*p);
            }
        }
    }
    let quantization = super::load::quantization(
        &dir,
        decl.spec.load.precision,
        decl.quantization.take(),
        &platform.cache_root,
    )
    .map_err(|m| invalid(format!("config.toml: {m}")))?;
    if let Some(steps) = decl.pipeline.take() {
        return Ok(pipeline_model(name, decl, steps, &toml_path, &pbtxt_path));
    }
    let text = match decl.text.take() {
        Some(cfg) => {
            let a = pomme_text::TextAdapter::from_dir(&dir, cfg)
                .map_err(|e| invalid(format!("config.toml [text]: {}", e.message())))?;
            let a = std::sync::Arc::new(a);
            decl.spec.adapter = Some(a.clone());
            Some(a)
        }
        None => None,
    };
    let found: Vec<u64> = versions.iter().map(|(v, _)| *v).collect();
    let selected = decl.version_policy.select(&found).map_err(invalid)?;
    let mut specs = Vec::with_capacity(selected.len());
    for (version, vdir) in versions.iter().filter(|(v, _)| selected.contains(v)) {
        let artifact = find_artifact(vdir).ok_or_else(|| {
            invalid(format!(
                "version {version} holds no model file (model.onnx, model.nnef, model.nnef.tgz, model.mlmodel, model.mlpackage, model.mlmodelc or model.aimodel)"
            ))
        })?;
        let artifact = artifact.canonicalize().map_err(io(&artifact))?;
        if !artifact.starts_with(&root) {
            return Err(invalid(format!(
                "version {version}: model file resolves outside the repository"
            )));
        }
        let mut spec = decl.spec.clone();
        if !decl.device_set
            && let Ok(a) = pomme_runtime::detect_artifact(&artifact)
        {
            spec.load.device = (platform.default_device)(a.format);
        }
        // After the device: bare candidates (`coreml`) run on it.
        spec.routing = decl.routing.resolve(RoutingMode::Off, spec.load.device);
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
        idle: decl.idle,
        pipeline: None,
        text,
    })
}

/// A pipeline's entry: its declared inputs and outputs as its signature,
/// version 1, no model file (Triton's ensemble directory holds an empty `1/`).
fn pipeline_model(
    name: &str,
    decl: Declared,
    steps: Vec<pomme_runtime::PipelineStep>,
    toml_path: &Path,
    pbtxt_path: &Path,
) -> RepoModel {
    use pomme_core::{Dim, Shape, TensorSpec};
    let spec_of = |t: &super::TensorDecl| {
        let dims = t
            .dims
            .iter()
            .enumerate()
            .map(|(i, &d)| match usize::try_from(d) {
                Ok(d) => Dim::Fixed(d),
                Err(_) if i == 0 => Dim::Symbolic("batch".into()),
                Err(_) => Dim::Symbolic(format!("d{i}")),
            })
            .collect();
        TensorSpec::new(t.name.clone(), t.dtype, Shape(dims))
    };
    let signature = pomme_core::ModelSignature {
        inputs: decl.inputs.iter().map(spec_of).collect(),
        outputs: decl.outputs.iter().map(spec_of).collect(),
    };
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fingerprint = [toml_path, pbtxt_path]
        .into_iter()
        .map(|p| (p.to_path_buf(), mtime(p)))
        .collect();
    RepoModel {
        spec: decl.spec,
        specs: Vec::new(),
        version_policy: decl.version_policy,
        versions: vec![1],
        platform: decl.platform,
        inputs: decl.inputs,
        outputs: decl.outputs,
        memory_budget_mb: None,
        quantization: None,
        fingerprint,
        routing: decl.routing,
        idle: None,
        pipeline: Some(pomme_runtime::PipelineSpec {
            name: name.to_string(),
            signature,
            steps,
        }),
        text: None,
    }
}

/// The model file of a version directory: `model.*` first, else the single
/// file or bundle with a known extension.
fn find_artifact(vdir: &Path) -> Option<PathBuf> {
    const PREFERRED: [&str; 9] = [
        "model.onnx",
        "model.nnef",
        "model.nnef.tgz",
        "model.nnef.tar",
        "model.mlpackage",
        "model.mlmodelc",
        "model.mlmodel",
        "model.aimodel",
        "model.aimodelx",
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
            ".aimodel",
            ".aimodelx",
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

#[cfg(test)]
mod tests {
    use super::super::testing::{load_model, model};
    use super::*;

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
}
