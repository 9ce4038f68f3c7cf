//! What both protocols do, once: readiness, metadata, model configuration,
//! statistics, repository control and the conversion of a decoded request
//! into a runtime call. The HTTP and gRPC handlers only translate wire types
//! to and from what this module returns.

use crate::Platform;
use crate::config::{ControlMode, ServerConfig};
use crate::kserve::{
    DecodedRequest, IndexEntry, Limits, ModelMetadata, ServerMetadata, TensorMetadata,
};
use crate::repository::{self, RepoModel};
use crate::routing::RoutingMode;
use crate::triton::{ModelConfigReport, StatsReport};
use parking_lot::Mutex;
use pomme_core::{Error, Result};
use pomme_runtime::{InferRequest, InferResponse, ModelState, ModelStats, Runtime};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// Protocol extensions pomme implements (reported by server metadata).
pub const EXTENSIONS: [&str; 6] = [
    "binary_tensor_data",
    "model_repository",
    "statistics",
    "model_configuration",
    "schedule_policy",
    "classification",
];

/// State shared by the HTTP and gRPC services.
pub struct Shared {
    pub runtime: Runtime,
    pub limits: Limits,
    auth_token: Option<String>,
    control_mode: ControlMode,
    repo: Option<PathBuf>,
    /// Routing of models whose configuration does not mention it.
    default_routing: RoutingMode,
    /// Backend and device names for Triton configurations.
    platform: Platform,
    /// Set once the models configured at start have been loaded (or failed).
    startup_done: AtomicBool,
    /// Not ready any more: shutting down.
    stopping: AtomicBool,
    /// What the repository declared for each model loaded from it.
    declared: Mutex<BTreeMap<String, RepoModel>>,
    /// Models unloaded for being idle (`unload_after_idle`), as declared.
    idle_unloaded: Mutex<BTreeMap<String, RepoModel>>,
    /// One reload-on-request at a time: concurrent requests for an
    /// idle-unloaded model wait for the same load.
    reloading: tokio::sync::Mutex<()>,
    /// Tracing is configured: requests' W3C trace context is honoured.
    pub trace_context: bool,
}

impl Shared {
    pub fn new(config: &ServerConfig, runtime: Runtime, platform: Platform) -> Shared {
        Shared {
            runtime,
            limits: config.limits.clone(),
            auth_token: config.auth_token.clone(),
            control_mode: config.repository.control_mode,
            repo: config.repository.model_repository.clone(),
            default_routing: config.repository.default_routing,
            platform,
            startup_done: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            declared: Mutex::new(BTreeMap::new()),
            idle_unloaded: Mutex::new(BTreeMap::new()),
            reloading: tokio::sync::Mutex::new(()),
            trace_context: config.tracing.is_some(),
        }
    }

    /// Marks the start-up loads as finished: readiness may turn true.
    pub fn set_started(&self) {
        self.startup_done.store(true, Ordering::SeqCst);
    }

    /// Readiness turns false for good; the runtime refuses new requests.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.runtime.begin_shutdown();
    }

    pub fn is_live(&self) -> bool {
        true
    }

    pub fn is_ready(&self) -> bool {
        self.startup_done.load(Ordering::SeqCst)
            && !self.stopping.load(Ordering::SeqCst)
            && self.runtime.is_ready()
    }

    /// Whether a model (version) is loaded and serving.
    pub fn model_ready(&self, name: &str, version: Option<u64>) -> bool {
        self.runtime.models().iter().any(|m| {
            m.name == name && version.is_none_or(|v| v == m.version) && m.state == ModelState::Ready
        })
    }

    /// Checks a bearer token against the configured one (no token configured: open).
    pub fn authorized(&self, authorization: Option<&str>) -> bool {
        match &self.auth_token {
            None => true,
            Some(want) => authorization
                .and_then(|h| h.strip_prefix("Bearer "))
                .is_some_and(|got| constant_time_eq(got.trim().as_bytes(), want.as_bytes())),
        }
    }

    /// KServe server metadata.
    pub fn server_metadata(&self) -> ServerMetadata {
        ServerMetadata {
            name: "pomme".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Runs an inference. A model unloaded for being idle is loaded again
    /// first when its configuration says `reload_on_request`, and otherwise
    /// refused with the reason.
    pub async fn infer(
        &self,
        model: String,
        version: Option<u64>,
        d: DecodedRequest,
    ) -> Result<InferResponse> {
        let idle = self.idle_unloaded.lock().get(&model).cloned();
        if let Some(m) = idle {
            self.wake(&model, m).await?;
        }
        let outputs = d.output_names();
        let classify = d.classifications();
        let labels: Vec<Option<Vec<String>>> = if classify.is_empty() {
            Vec::new()
        } else {
            let view = self.runtime.model(&model, version)?;
            classify
                .iter()
                .map(|(name, _)| view.signature.output(name).and_then(|s| s.labels.clone()))
                .collect()
        };
        let mut resp = self
            .runtime
            .infer(InferRequest {
                model,
                version,
                id: d.id,
                inputs: d.inputs,
                outputs,
                priority: d.priority,
                timeout: d.timeout,
                sequence: d.sequence,
            })
            .await?;
        // Triton's classification extension: top-k strings in place of scores.
        for ((name, k), labels) in classify.iter().zip(&labels) {
            if let Some((_, t)) = resp.outputs.iter_mut().find(|(n, _)| n == name) {
                *t = pomme_kserve::classification::classify(name, t, *k, labels.as_deref())?;
            }
        }
        Ok(resp)
    }

    /// Runs a request built by the server itself (the OpenAI/TEI text
    /// routes), waking an idle-unloaded model as [`Shared::infer`] does.
    pub async fn infer_request(&self, req: InferRequest) -> Result<InferResponse> {
        let idle = self.idle_unloaded.lock().get(&req.model).cloned();
        if let Some(m) = idle {
            self.wake(&req.model, m).await?;
        }
        self.runtime.infer(req).await
    }

    /// A text model's tokenizer and settings (`[text]`), by name.
    pub fn text_model(&self, name: &str) -> Option<std::sync::Arc<pomme_text::TextAdapter>> {
        let declared = self.declared.lock().get(name).and_then(|m| m.text.clone());
        declared.or_else(|| {
            self.idle_unloaded
                .lock()
                .get(name)
                .and_then(|m| m.text.clone())
        })
    }

    /// The names of the text models the repository declares, sorted.
    pub fn text_models(&self) -> Vec<String> {
        let texts = |m: &BTreeMap<String, RepoModel>| -> Vec<String> {
            m.iter()
                .filter(|(_, m)| m.text.is_some())
                .map(|(n, _)| n.clone())
                .collect()
        };
        // One lock at a time.
        let mut v = texts(&self.declared.lock());
        v.extend(texts(&self.idle_unloaded.lock()));
        v.sort();
        v.dedup();
        v
    }

    /// Loads an idle-unloaded model again for a request, or says why not.
    async fn wake(&self, name: &str, model: RepoModel) -> Result<()> {
        let policy = model
            .idle
            .expect("only models with an idle policy are idle-unloaded");
        if !policy.reload_on_request {
            return Err(Error::Unavailable(format!(
                "model '{name}' was unloaded after {} without requests (unload_after_idle); load it again, or set reload_on_request = true",
                crate::duration::format_duration(policy.after)
            )));
        }
        let _one = self.reloading.lock().await;
        // Another request may have loaded it while this one waited.
        let Some(model) = self.idle_unloaded.lock().remove(name) else {
            return Ok(());
        };
        tracing::info!(model = %name, "reloading on request after idle unload");
        if let Err(e) = self.load_declared(model.clone(), false).await {
            self.idle_unloaded.lock().insert(name.to_string(), model);
            return Err(e);
        }
        Ok(())
    }

    /// Unloads the models whose `unload_after_idle` has passed without a
    /// request; returns their names. Run periodically by the server.
    pub async fn unload_idle(&self) -> Vec<String> {
        let due: Vec<(String, std::time::Duration)> = {
            let declared = self.declared.lock();
            self.runtime
                .idle_models()
                .into_iter()
                .filter_map(|(name, idle)| {
                    let after = declared.get(&name)?.idle?.after;
                    (idle >= after).then_some((name, after))
                })
                .collect()
        };
        let mut unloaded = Vec::new();
        for (name, after) in due {
            let Some(model) = self.declared.lock().get(&name).cloned() else {
                continue;
            };
            // Queued requests still run: unload waits for them.
            match self.runtime.unload(&name).await {
                Ok(()) => {
                    tracing::info!(model = %name, idle = %crate::duration::format_duration(after),
                        "unloaded after idle (unload_after_idle)");
                    self.declared.lock().remove(&name);
                    self.idle_unloaded.lock().insert(name.clone(), model);
                    unloaded.push(name);
                }
                Err(e) => tracing::warn!(model = %name, error = %e, "idle unload failed"),
            }
        }
        unloaded
    }

    /// The shortest `unload_after_idle` of the loaded models, to pace the
    /// idle check; `None` when no model has one.
    pub fn shortest_idle(&self) -> Option<std::time::Duration> {
        self.declared
            .lock()
            .values()
            .filter_map(|m| m.idle.map(|i| i.after))
            .min()
    }

    /// Forgets idle-unloaded models that `keep` rejects (gone from the
    /// repository).
    pub fn forget_idle_unloaded_except(&self, keep: impl Fn(&str) -> bool) {
        self.idle_unloaded.lock().retain(|n, _| keep(n));
    }

    /// Whether `name` is idle-unloaded with this very configuration (so a
    /// repository poll leaves it unloaded).
    pub fn is_idle_unloaded(&self, name: &str, model: &RepoModel) -> bool {
        self.idle_unloaded
            .lock()
            .get(name)
            .is_some_and(|m| m.fingerprint == model.fingerprint)
    }

    /// KServe model metadata.
    pub fn metadata(&self, name: &str, version: Option<u64>) -> Result<ModelMetadata> {
        let view = self.runtime.model(name, version)?;
        let mut versions: Vec<u64> = self
            .runtime
            .models()
            .into_iter()
            .filter(|m| m.name == name && m.state == ModelState::Ready)
            .map(|m| m.version)
            .collect();
        versions.sort_unstable();
        versions.dedup();
        let meta = |s: &pomme_core::TensorSpec| TensorMetadata {
            name: s.name.clone(),
            datatype: s.dtype.kserve_name().to_string(),
            shape: s.shape.to_i64(),
        };
        Ok(ModelMetadata {
            name: view.name.clone(),
            versions: versions.iter().map(u64::to_string).collect(),
            platform: self.declared_platform(name, &view.backend),
            inputs: view.signature.inputs.iter().map(meta).collect(),
            outputs: view.signature.outputs.iter().map(meta).collect(),
        })
    }

    /// The Triton platform the repository declared for a model, else its backend.
    fn declared_platform(&self, name: &str, backend: &str) -> String {
        self.declared
            .lock()
            .get(name)
            .and_then(|m| m.platform.clone())
            .unwrap_or_else(|| backend.to_string())
    }

    /// Triton's model configuration, built from what is loaded and what the
    /// repository declared, with a routed model's routing report.
    pub fn model_config(&self, name: &str, version: Option<u64>) -> Result<ModelConfigReport> {
        let view = self.runtime.model(name, version)?;
        let routing = self.routing_report(name, Some(view.version))?;
        let declared = self.declared.lock();
        Ok(ModelConfigReport::new(&view, declared.get(name), routing))
    }

    /// A routed model version's decision and live candidate figures
    /// (`routing::report`); `None` when it is not routed.
    pub fn routing_report(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Option<serde_json::Value>> {
        Ok(self
            .runtime
            .routing_status(name, version)?
            .map(|(decision, live)| crate::routing::report(&decision, &live)))
    }

    /// Each loaded candidate's breaker and counters now, for the statistics
    /// of a routed model version; `None` when it is not routed (or gone).
    pub fn routing_live(&self, name: &str, version: u64) -> Option<serde_json::Value> {
        let (_, live) = self.runtime.routing_status(name, Some(version)).ok()??;
        Some(crate::routing::live_report(&live))
    }

    /// Statistics of one model (version) or all; an unknown model is `ModelNotFound`.
    pub fn stats(&self, name: Option<&str>, version: Option<u64>) -> Result<Vec<ModelStats>> {
        let stats: Vec<ModelStats> = self
            .runtime
            .stats(name)
            .into_iter()
            .filter(|s| version.is_none_or(|v| v == s.version))
            .collect();
        if let Some(n) = name
            && stats.is_empty()
        {
            return Err(Error::ModelNotFound(format!(
                "'{n}'{}",
                version.map(|v| format!(" version {v}")).unwrap_or_default()
            )));
        }
        Ok(stats)
    }

    /// Triton's statistics of one model (version) or all, with each routed
    /// version's live candidate rows; an unknown model is `ModelNotFound`.
    pub fn stats_report(&self, name: Option<&str>, version: Option<u64>) -> Result<StatsReport> {
        let stats = self.stats(name, version)?;
        Ok(StatsReport::new(&stats, |s| {
            self.routing_live(&s.name, s.version)
        }))
    }

    /// Every model in the repository and the runtime, with its state.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let mut rows: BTreeMap<(String, String), IndexEntry> = BTreeMap::new();
        if let Some(repo) = &self.repo
            && let Ok(found) = repository::scan(repo, &self.platform)
        {
            for (name, read) in found {
                // Not loaded: unless its directory or config cannot be read
                // (then UNAVAILABLE with why, as Triton lists a bad config).
                let (state, reason) = match read {
                    Ok(_) => (String::new(), String::new()),
                    Err(e) => ("UNAVAILABLE".to_string(), e.to_string()),
                };
                rows.insert(
                    (name.clone(), String::new()),
                    IndexEntry {
                        name,
                        version: String::new(),
                        state,
                        reason,
                    },
                );
            }
        }
        for m in self.runtime.models() {
            rows.remove(&(m.name.clone(), String::new()));
            let (state, reason) = match m.state {
                ModelState::Loading => ("LOADING", String::new()),
                ModelState::Ready => ("READY", String::new()),
                ModelState::Unavailable(r) => ("UNAVAILABLE", r),
            };
            rows.insert(
                (m.name.clone(), m.version.to_string()),
                IndexEntry {
                    name: m.name,
                    version: m.version.to_string(),
                    state: state.to_string(),
                    reason,
                },
            );
        }
        for (name, m) in self.idle_unloaded.lock().iter() {
            let after = m.idle.map(|i| i.after).unwrap_or_default();
            rows.remove(&(name.clone(), String::new()));
            rows.insert(
                (name.clone(), String::new()),
                IndexEntry {
                    name: name.clone(),
                    version: String::new(),
                    state: "UNAVAILABLE".into(),
                    reason: format!(
                        "unloaded after {} without requests (unload_after_idle){}",
                        crate::duration::format_duration(after),
                        if m.idle.is_some_and(|i| i.reload_on_request) {
                            "; the next request loads it"
                        } else {
                            ""
                        }
                    ),
                },
            );
        }
        rows.into_values()
            .filter(|r| !ready_only || r.state == "READY")
            .collect()
    }

    /// Loads (or reloads) a model from the repository at a client's request.
    pub async fn load_from_api(&self, name: &str) -> Result<()> {
        if self.control_mode != ControlMode::Explicit {
            return Err(Error::Unavailable(
                "explicit model load and unload need model_control_mode = explicit".into(),
            ));
        }
        self.load_from_repo(name).await
    }

    /// Unloads a model at a client's request.
    pub async fn unload_from_api(&self, name: &str) -> Result<()> {
        if self.control_mode != ControlMode::Explicit {
            return Err(Error::Unavailable(
                "explicit model load and unload need model_control_mode = explicit".into(),
            ));
        }
        self.unload(name).await
    }

    /// Loads a model directory; a model already serving is reloaded, and keeps
    /// serving its old instance if the new one fails.
    pub async fn load_from_repo(&self, name: &str) -> Result<()> {
        let repo = self
            .repo
            .clone()
            .ok_or_else(|| Error::Unavailable("no model repository is configured".into()))?;
        repository::validate_name(name)?;
        let (n, platform) = (name.to_string(), self.platform.clone());
        let model =
            tokio::task::spawn_blocking(move || repository::load_model(&repo, &n, &platform))
                .await
                .map_err(|e| Error::Internal(format!("repository task: {e}")))??;
        let model = model.with_default_routing(self.default_routing);
        self.idle_unloaded.lock().remove(name);
        let loaded = self.runtime.models().iter().any(|m| m.name == name);
        // Every version the model's version policy selects.
        repository::load_versions(&self.runtime, &model, loaded).await?;
        self.declared.lock().insert(name.to_string(), model);
        Ok(())
    }

    /// Unloads every version of a model.
    pub async fn unload(&self, name: &str) -> Result<()> {
        if self.idle_unloaded.lock().remove(name).is_some() {
            return Ok(());
        }
        self.runtime.unload(name).await?;
        self.declared.lock().remove(name);
        Ok(())
    }

    /// Fingerprints of the models loaded from the repository (poll mode).
    pub fn declared_fingerprints(&self) -> BTreeMap<String, RepoModel> {
        self.declared.lock().clone()
    }

    /// Loads a model description already read from the repository.
    pub async fn load_declared(&self, model: RepoModel, reload: bool) -> Result<()> {
        let name = model.spec.name.clone();
        let model = model.with_default_routing(self.default_routing);
        repository::load_versions(&self.runtime, &model, reload).await?;
        self.declared.lock().insert(name, model);
        Ok(())
    }

    pub fn repository(&self) -> Option<&PathBuf> {
        self.repo.as_ref()
    }

    pub fn control_mode(&self) -> ControlMode {
        self.control_mode
    }

    /// The backend and device names Triton configurations resolve against.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }
}

/// Compares secrets without an early exit that would leak their common prefix length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
