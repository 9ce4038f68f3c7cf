//! The model registry: which model versions exist, their state, and the running
//! instance behind each.
//!
//! A reload keeps the old instance serving until the new one is ready; a failed
//! reload leaves it serving and records the error.

use crate::admission::MemoryReservation;
use crate::routing::{RouteHandle, RoutingDecision};
use crate::scheduler::ModelQueue;
use crate::spec::{BatchingConfig, ModelSpec};
use crate::stats::ModelCounters;
use crate::worker::WorkerContext;
use parking_lot::{Mutex, RwLock};
use pomme_core::{DeviceKind, Error, ModelSignature, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::thread::JoinHandle;

/// A model version's lifecycle state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "UPPERCASE")]
pub enum ModelState {
    Loading,
    Ready,
    Unavailable(String),
}

/// One row of [`crate::Runtime::models`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelStatus {
    pub name: String,
    pub version: u64,
    pub state: ModelState,
    pub backend: Option<String>,
}

/// What a caller may know about a serving model version.
#[derive(Clone, Debug, Serialize)]
pub struct ModelView {
    pub name: String,
    pub version: u64,
    pub backend: String,
    pub device: DeviceKind,
    pub signature: ModelSignature,
    pub max_batch_size: usize,
    pub batching: Option<BatchingConfig>,
    pub workers: usize,
    /// The model keeps state per sequence (`LoadedModel::is_stateful`):
    /// requests must carry sequence parameters.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stateful: bool,
    /// Bytes reserved against the memory budget.
    pub memory_bytes: u64,
    pub load_ms: u64,
    /// Time the warm-up (padded sizes and configured samples, on every
    /// worker) took within `load_ms`; `None` when nothing was warmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_ms: Option<u64>,
    /// Answers are kept in the runtime's response cache.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub response_cache: bool,
    /// How the serving backend was chosen, with every candidate's figures
    /// (measured routing only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingDecision>,
    /// Where the backend planned the work per device (Core ML's compute
    /// plan); empty for backends without one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<pomme_core::PlacementShare>,
}

/// A running model version.
pub(crate) struct Instance {
    pub view: ModelView,
    pub ctx: Arc<WorkerContext>,
    pub queue: Arc<ModelQueue>,
    pub counters: Arc<ModelCounters>,
    pub threads: Mutex<Vec<JoinHandle<()>>>,
    /// Released once the workers have stopped.
    pub reservation: Mutex<Option<MemoryReservation>>,
    pub default_priority: u32,
    pub default_queue_timeout: Option<std::time::Duration>,
    /// Its routing (candidates, breakers, retries); empty unless routed.
    pub routing: RouteHandle,
    /// When it was last used (loaded, or a request looked it up), in ns
    /// since the runtime started: the order of LRU eviction.
    pub last_used_ns: AtomicU64,
}

impl Instance {
    /// Stops accepting; workers drain the queue and exit on their own.
    pub fn retire(&self) {
        self.queue.close();
    }

    /// Waits for the workers to finish the queue, then gives the memory back.
    pub fn join(&self) {
        let threads: Vec<JoinHandle<()>> = self.threads.lock().drain(..).collect();
        for h in threads {
            let _ = h.join();
        }
        self.reservation.lock().take();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.queue.close();
    }
}

pub(crate) struct Entry {
    pub state: ModelState,
    pub instance: Option<Arc<Instance>>,
    pub spec: Option<ModelSpec>,
}

/// name → version → entry.
#[derive(Default)]
pub(crate) struct Registry {
    models: RwLock<BTreeMap<String, BTreeMap<u64, Entry>>>,
}

impl Registry {
    /// Marks a version as loading; fails if it already serves and `reload` is false.
    pub fn begin_load(&self, spec: &ModelSpec, reload: bool) -> Result<()> {
        let mut m = self.models.write();
        let versions = m.entry(spec.name.clone()).or_default();
        match versions.get_mut(&spec.version) {
            Some(e) if e.state == ModelState::Loading => Err(Error::ResourceLimit(format!(
                "model '{}' version {} is already loading",
                spec.name, spec.version
            ))),
            Some(e) if e.instance.is_some() && !reload => Err(Error::ModelAlreadyLoaded(format!(
                "model '{}' version {} is already loaded",
                spec.name, spec.version
            ))),
            Some(e) => {
                e.state = ModelState::Loading;
                e.spec = Some(spec.clone());
                Ok(())
            }
            None => {
                versions.insert(
                    spec.version,
                    Entry {
                        state: ModelState::Loading,
                        instance: None,
                        spec: Some(spec.clone()),
                    },
                );
                Ok(())
            }
        }
    }

    /// Installs a loaded instance; returns the one it replaces.
    pub fn finish_load(
        &self,
        name: &str,
        version: u64,
        outcome: Result<Arc<Instance>>,
    ) -> Option<Arc<Instance>> {
        let mut m = self.models.write();
        let e = m
            .entry(name.to_string())
            .or_default()
            .entry(version)
            .or_insert(Entry {
                state: ModelState::Loading,
                instance: None,
                spec: None,
            });
        match outcome {
            Ok(inst) => {
                e.state = ModelState::Ready;
                e.instance.replace(inst)
            }
            Err(err) => {
                e.state = if e.instance.is_some() {
                    ModelState::Ready
                } else {
                    ModelState::Unavailable(err.to_string())
                };
                None
            }
        }
    }

    /// Removes every version of `name`; returns their instances.
    pub fn remove(&self, name: &str) -> Result<Vec<Arc<Instance>>> {
        let versions = self
            .models
            .write()
            .remove(name)
            .ok_or_else(|| Error::ModelNotFound(format!("'{name}' is not in the registry")))?;
        Ok(versions.into_values().filter_map(|e| e.instance).collect())
    }

    /// Removes one version of `name` (the model goes when its last version
    /// does); returns its instance, if it had one.
    pub fn remove_version(&self, name: &str, version: u64) -> Result<Option<Arc<Instance>>> {
        let mut m = self.models.write();
        let versions = m
            .get_mut(name)
            .ok_or_else(|| Error::ModelNotFound(format!("'{name}' is not in the registry")))?;
        let entry = versions.remove(&version).ok_or_else(|| {
            Error::ModelNotFound(format!("model '{name}' has no version {version}"))
        })?;
        if versions.is_empty() {
            m.remove(name);
        }
        Ok(entry.instance)
    }

    /// The serving instance of `name` at `version`, or its newest serving version.
    pub fn get(&self, name: &str, version: Option<u64>) -> Result<Arc<Instance>> {
        let m = self.models.read();
        let Some(versions) = m.get(name) else {
            return Err(Error::ModelNotFound(format!("unknown model '{name}'")));
        };
        match version {
            Some(v) => match versions.get(&v) {
                Some(Entry {
                    instance: Some(i), ..
                }) => Ok(i.clone()),
                Some(Entry {
                    state: ModelState::Unavailable(r),
                    ..
                }) => Err(Error::Unavailable(format!(
                    "model '{name}' version {v} is not ready: {r}"
                ))),
                Some(_) => Err(Error::Unavailable(format!(
                    "model '{name}' version {v} is still loading"
                ))),
                None => Err(Error::ModelNotFound(format!(
                    "model '{name}' has no version {v}"
                ))),
            },
            None => versions
                .values()
                .rev()
                .find_map(|e| e.instance.clone())
                .ok_or_else(|| Error::Unavailable(format!("model '{name}' has no ready version"))),
        }
    }

    pub fn statuses(&self) -> Vec<ModelStatus> {
        self.models
            .read()
            .iter()
            .flat_map(|(name, versions)| {
                versions.iter().map(move |(v, e)| ModelStatus {
                    name: name.clone(),
                    version: *v,
                    state: e.state.clone(),
                    backend: e.instance.as_ref().map(|i| i.view.backend.clone()),
                })
            })
            .collect()
    }

    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.models
            .read()
            .values()
            .flat_map(|v| v.values().filter_map(|e| e.instance.clone()))
            .collect()
    }
}
