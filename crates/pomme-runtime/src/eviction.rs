//! Memory pressure: what to do when loading a model would exceed the
//! runtime's memory budget.
//!
//! [`MemoryPolicy::Refuse`] fails the load (`MemoryBudgetExceeded`);
//! [`MemoryPolicy::EvictLru`] unloads idle models, least recently used first,
//! until the new one fits. [`choose_victims`] is the pure choice: it never
//! picks a model with requests queued or running, and it evicts nothing at all
//! when even evicting every idle model would not make room (an eviction that
//! does not let the load succeed only loses a warm model).
//!
//! The budget itself is enforced by the admission controller's reservation
//! (a compare-and-swap): eviction only makes room, so the budget is never
//! exceeded even when loads race.

use crate::metrics::{Metrics, ModelLabels};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;

/// What a load does when the memory budget is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryPolicy {
    /// Fail the load with `MemoryBudgetExceeded` (the default).
    #[default]
    Refuse,
    /// Unload least recently used idle models until the new one fits.
    EvictLru,
}

impl std::str::FromStr for MemoryPolicy {
    type Err = pomme_core::Error;
    fn from_str(s: &str) -> pomme_core::Result<Self> {
        match s {
            "refuse" => Ok(MemoryPolicy::Refuse),
            "evict" | "evict_lru" | "lru" => Ok(MemoryPolicy::EvictLru),
            other => Err(pomme_core::Error::invalid_input(format!(
                "unknown memory policy '{other}' (expected refuse or evict)"
            ))),
        }
    }
}

/// `pomme_model_evictions_total{model,version}`.
#[derive(Clone, Debug, Default)]
pub struct EvictionMetrics {
    evictions: Family<ModelLabels, Counter>,
}

impl EvictionMetrics {
    /// Creates the family and adds it to the runtime's registry.
    pub fn register(metrics: &Metrics) -> EvictionMetrics {
        let m = EvictionMetrics::default();
        metrics.with_registry(|r| {
            r.register(
                "model_evictions",
                "Model versions unloaded to make room for another under memory pressure",
                m.evictions.clone(),
            )
        });
        m
    }

    /// Counts one eviction.
    pub fn evicted(&self, model: &str, version: u64) {
        self.evictions
            .get_or_create(&ModelLabels {
                model: model.to_string(),
                version: version.to_string(),
            })
            .inc();
    }
}

/// A loaded model version as the eviction choice sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resident {
    pub name: String,
    pub version: u64,
    /// Bytes it holds against the budget.
    pub bytes: u64,
    /// When it last served (or loaded, if it never served), in any monotonic unit.
    pub last_used: u64,
    /// No request queued or running.
    pub idle: bool,
}

/// The models to unload so that `need` more bytes fit: least recently used
/// idle ones first, as few as needed. `Some(vec![])` when it fits already;
/// `None` when it cannot fit even with every idle model gone.
pub fn choose_victims(
    residents: &[Resident],
    need: u64,
    used: u64,
    budget: u64,
) -> Option<Vec<(String, u64)>> {
    let mut over = used.saturating_add(need).saturating_sub(budget);
    if need > budget {
        return None;
    }
    if over == 0 {
        return Some(Vec::new());
    }
    let mut idle: Vec<&Resident> = residents.iter().filter(|r| r.idle).collect();
    // Oldest first; equal ages: the larger model first (frees more at once),
    // then by name for a deterministic choice.
    idle.sort_by(|a, b| {
        a.last_used
            .cmp(&b.last_used)
            .then(b.bytes.cmp(&a.bytes))
            .then(a.name.cmp(&b.name))
            .then(a.version.cmp(&b.version))
    });
    let mut victims = Vec::new();
    for r in idle {
        if over == 0 {
            break;
        }
        victims.push((r.name.clone(), r.version));
        over = over.saturating_sub(r.bytes);
    }
    (over == 0).then_some(victims)
}

/// Picks (with [`choose_victims`]) and removes from the registry the model
/// versions to evict so that `need` more bytes fit; the caller retires and
/// joins them, which releases their memory. `loading` (the version being
/// loaded, on a reload) is never chosen.
///
/// A version is idle when nothing but the registry and this scan holds its
/// instance: every request holds one from lookup to answer. A request that
/// looks it up after this check finds its queue closed and gets
/// `Unavailable` (retryable).
pub(crate) fn take_victims(
    registry: &crate::registry::Registry,
    admission: &crate::admission::Admission,
    need: u64,
    loading: (&str, u64),
) -> Vec<std::sync::Arc<crate::registry::Instance>> {
    let instances = registry.instances();
    let residents: Vec<Resident> = instances
        .iter()
        .map(|i| Resident {
            name: i.view.name.clone(),
            version: i.view.version,
            bytes: i.view.memory_bytes,
            last_used: i.last_used_ns.load(std::sync::atomic::Ordering::Relaxed),
            idle: std::sync::Arc::strong_count(i) <= 2
                && i.queue.is_empty()
                && (i.view.name.as_str(), i.view.version) != loading,
        })
        .collect();
    let Some(victims) = choose_victims(
        &residents,
        need,
        admission.memory_used(),
        admission.memory_budget(),
    ) else {
        return Vec::new();
    };
    drop(instances);
    victims
        .into_iter()
        .filter_map(|(name, version)| registry.remove_version(&name, version).ok().flatten())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, bytes: u64, last_used: u64, idle: bool) -> Resident {
        Resident {
            name: name.into(),
            version: 1,
            bytes,
            last_used,
            idle,
        }
    }

    fn names(v: Option<Vec<(String, u64)>>) -> Option<Vec<String>> {
        v.map(|v| v.into_iter().map(|(n, _)| n).collect())
    }

    #[test]
    fn fits_already_evicts_nothing() {
        assert_eq!(
            choose_victims(&[r("a", 10, 1, true)], 5, 10, 100),
            Some(vec![])
        );
    }

    #[test]
    fn least_recently_used_idle_models_go_first_and_only_as_many_as_needed() {
        let rs = [
            r("recent", 40, 30, true),
            r("old", 40, 10, true),
            r("busy_oldest", 40, 1, false),
            r("middle", 10, 20, true),
        ];
        // 130 used of 150: 30 more needs 10 freed: the oldest idle one suffices.
        assert_eq!(
            names(choose_victims(&rs, 30, 130, 150)),
            Some(vec!["old".into()])
        );
        // 60 more needs 40 freed... `old` frees exactly 40.
        assert_eq!(
            names(choose_victims(&rs, 60, 130, 150)),
            Some(vec!["old".into()])
        );
        // 70 more needs 50: `old` then `middle`; the busy model is never chosen.
        assert_eq!(
            names(choose_victims(&rs, 70, 130, 150)),
            Some(vec!["old".into(), "middle".into()])
        );
    }

    #[test]
    fn impossible_evicts_nothing() {
        let rs = [r("idle", 10, 1, true), r("busy", 100, 0, false)];
        // Even with `idle` gone there is no room: keep it loaded.
        assert_eq!(choose_victims(&rs, 50, 110, 120), None);
        // Bigger than the whole budget.
        assert_eq!(choose_victims(&[], 200, 0, 100), None);
    }

    #[test]
    fn policy_parses() {
        assert_eq!(
            "evict".parse::<MemoryPolicy>().unwrap(),
            MemoryPolicy::EvictLru
        );
        assert_eq!(
            "refuse".parse::<MemoryPolicy>().unwrap(),
            MemoryPolicy::Refuse
        );
        assert!(
            "drop"
                .parse::<MemoryPolicy>()
                .unwrap_err()
                .to_string()
                .contains("'drop'")
        );
    }
}
