//! Response cache (Triton's `response_cache`): a model that opts in answers
//! a request it has answered before from memory, without queueing or
//! running the engine.
//!
//! The key is a 128-bit XXH3 hash of the model name and version, every
//! input's name, dtype, shape and exact bytes, and the outputs asked for;
//! so a new version or any changed byte is a miss. One byte budget covers
//! every model, least recently used entries leave first, and an entry larger
//! than the budget is not kept. Requests of a sequence (state) are never
//! looked up or stored (the runtime checks that); a version's entries go
//! when it is unloaded.

use crate::metrics::{Metrics, ModelLabels};
use crate::runtime::InferRequest;
use lru::LruCache;
use parking_lot::Mutex;
use pomme_core::Tensor;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use xxhash_rust::xxh3::Xxh3;

/// The cache's Prometheus families (Triton's `nv_cache_*` equivalents,
/// docs/METRICS.md).
#[derive(Clone, Debug, Default)]
pub(crate) struct CacheMetrics {
    hits: Family<ModelLabels, Counter>,
    misses: Family<ModelLabels, Counter>,
    hit_seconds: Family<ModelLabels, Counter<f64, AtomicU64>>,
    miss_seconds: Family<ModelLabels, Counter<f64, AtomicU64>>,
    entries: Gauge,
    bytes: Gauge,
    evictions: Counter,
}

impl CacheMetrics {
    pub(crate) fn register(metrics: &Metrics, budget: u64) -> CacheMetrics {
        let m = CacheMetrics::default();
        let budget_gauge: Gauge = Gauge::default();
        budget_gauge.set(budget as i64);
        metrics.with_registry(|r| {
            r.register(
                "cache_hits",
                "Requests answered from the response cache",
                m.hits.clone(),
            );
            r.register(
                "cache_misses",
                "Requests of a caching model the response cache could not answer",
                m.misses.clone(),
            );
            r.register_with_unit(
                "cache_hit_duration",
                "Time spent looking up hits in the response cache",
                prometheus_client::registry::Unit::Seconds,
                m.hit_seconds.clone(),
            );
            r.register_with_unit(
                "cache_miss_duration",
                "Time spent looking up and inserting misses in the response cache",
                prometheus_client::registry::Unit::Seconds,
                m.miss_seconds.clone(),
            );
            r.register(
                "cache_entries",
                "Responses held in the response cache",
                m.entries.clone(),
            );
            r.register(
                "cache_used_bytes",
                "Bytes the response cache holds",
                m.bytes.clone(),
            );
            r.register(
                "cache_budget_bytes",
                "The response cache's byte budget",
                budget_gauge,
            );
            r.register(
                "cache_evictions",
                "Responses evicted from the response cache (least recently used first)",
                m.evictions.clone(),
            );
        });
        m
    }

    fn labels(model: &str, version: u64) -> ModelLabels {
        ModelLabels {
            model: model.to_string(),
            version: version.to_string(),
        }
    }

    pub(crate) fn hit(&self, model: &str, version: u64, took: Duration) {
        let l = Self::labels(model, version);
        self.hits.get_or_create(&l).inc();
        self.hit_seconds
            .get_or_create(&l)
            .inc_by(took.as_secs_f64());
    }

    pub(crate) fn miss(&self, model: &str, version: u64, took: Duration) {
        let l = Self::labels(model, version);
        self.misses.get_or_create(&l).inc();
        self.miss_seconds
            .get_or_create(&l)
            .inc_by(took.as_secs_f64());
    }

    pub(crate) fn stored(&self, cache: &ResponseCache, put: &Put) {
        self.evictions.inc_by(put.evicted);
        self.refresh(cache);
    }

    /// Brings the entry and byte gauges up to date.
    pub(crate) fn refresh(&self, cache: &ResponseCache) {
        let (entries, bytes) = cache.usage();
        self.entries.set(entries as i64);
        self.bytes.set(bytes as i64);
    }
}

/// One cached answer.
pub(crate) struct Cached {
    pub outputs: Vec<(String, Tensor)>,
    model: Arc<str>,
    version: u64,
    bytes: u64,
}

/// What [`ResponseCache::put`] did, for the metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Put {
    pub stored: bool,
    pub evicted: u64,
}

pub(crate) struct ResponseCache {
    budget: u64,
    state: Mutex<State>,
}

struct State {
    lru: LruCache<u128, Arc<Cached>>,
    bytes: u64,
}

impl ResponseCache {
    pub(crate) fn new(budget_bytes: u64) -> ResponseCache {
        ResponseCache {
            budget: budget_bytes,
            state: Mutex::new(State {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    /// The key of `req` for `version` of its model.
    pub(crate) fn key(req: &InferRequest, version: u64) -> u128 {
        let mut h = Xxh3::new();
        let field = |h: &mut Xxh3, b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(&mut h, req.model.as_bytes());
        h.update(&version.to_le_bytes());
        h.update(&(req.inputs.len() as u64).to_le_bytes());
        for (name, t) in &req.inputs {
            field(&mut h, name.as_bytes());
            field(&mut h, t.dtype().kserve_name().as_bytes());
            h.update(&(t.shape().len() as u64).to_le_bytes());
            for d in t.shape() {
                h.update(&(*d as u64).to_le_bytes());
            }
            match (t.raw(), t.strings()) {
                (Some(raw), _) => field(&mut h, raw),
                (None, Some(items)) => {
                    for s in items {
                        field(&mut h, s);
                    }
                }
                (None, None) => {}
            }
        }
        match &req.outputs {
            None => h.update(&[0]),
            Some(names) => {
                h.update(&[1]);
                for n in names {
                    field(&mut h, n.as_bytes());
                }
            }
        }
        h.digest128()
    }

    pub(crate) fn get(&self, key: u128) -> Option<Arc<Cached>> {
        self.state.lock().lru.get(&key).cloned()
    }

    /// Stores an answer, evicting the least recently used entries to stay
    /// within the budget.
    pub(crate) fn put(
        &self,
        key: u128,
        model: &str,
        version: u64,
        outputs: &[(String, Tensor)],
    ) -> Put {
        let bytes: u64 = outputs
            .iter()
            .map(|(n, t)| (n.len() + t.byte_len()) as u64)
            .sum::<u64>()
            + 64;
        if bytes > self.budget {
            return Put::default();
        }
        let entry = Arc::new(Cached {
            outputs: outputs.to_vec(),
            model: model.into(),
            version,
            bytes,
        });
        let mut s = self.state.lock();
        if let Some(old) = s.lru.put(key, entry) {
            s.bytes -= old.bytes;
        }
        s.bytes += bytes;
        let mut evicted = 0;
        while s.bytes > self.budget {
            let Some((_, gone)) = s.lru.pop_lru() else {
                break;
            };
            s.bytes -= gone.bytes;
            evicted += 1;
        }
        Put {
            stored: true,
            evicted,
        }
    }

    /// Drops every entry of a model version (unloaded).
    pub(crate) fn forget(&self, model: &str, version: u64) {
        let mut s = self.state.lock();
        let keys: Vec<u128> = s
            .lru
            .iter()
            .filter(|(_, c)| &*c.model == model && c.version == version)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(c) = s.lru.pop(&k) {
                s.bytes -= c.bytes;
            }
        }
    }

    /// (entries, bytes) in use.
    pub(crate) fn usage(&self) -> (u64, u64) {
        let s = self.state.lock();
        (s.lru.len() as u64, s.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: f32) -> InferRequest {
        InferRequest::new(
            "m",
            vec![(
                "x".into(),
                Tensor::from_vec(vec![1, 4], vec![v; 4]).unwrap(),
            )],
        )
    }

    fn out(n: usize) -> Vec<(String, Tensor)> {
        vec![("y".into(), Tensor::from_vec(vec![n], vec![0u8; n]).unwrap())]
    }

    #[test]
    fn keys_see_every_byte_the_version_and_the_outputs_asked() {
        let base = ResponseCache::key(&req(1.0), 1);
        assert_eq!(base, ResponseCache::key(&req(1.0), 1));
        assert_ne!(base, ResponseCache::key(&req(1.0), 2));
        assert_ne!(base, ResponseCache::key(&req(1.0 + f32::EPSILON), 1));
        let mut only_y = req(1.0);
        only_y.outputs = Some(vec!["y".into()]);
        assert_ne!(base, ResponseCache::key(&only_y, 1));
        let mut other = req(1.0);
        other.model = "n".into();
        assert_ne!(base, ResponseCache::key(&other, 1));
        // Same bytes, another shape.
        let mut reshaped = req(1.0);
        reshaped.inputs[0].1 = reshaped.inputs[0].1.clone().reshape(vec![2, 2]).unwrap();
        assert_ne!(base, ResponseCache::key(&reshaped, 1));
        // The request id and priority are not part of the answer.
        let mut tagged = req(1.0);
        tagged.id = Some("abc".into());
        tagged.priority = Some(2);
        assert_eq!(base, ResponseCache::key(&tagged, 1));
    }

    #[test]
    fn least_recently_used_entries_leave_to_stay_in_budget() {
        let m = "m";
        // Each entry: 1 ("y") + 100 + 64 = 165 bytes; three fit in 500.
        let c = ResponseCache::new(500);
        for k in 0..3u128 {
            assert!(c.put(k, m, 1, &out(100)).stored);
        }
        assert!(c.get(0).is_some()); // 0 is now the most recent
        let p = c.put(3, m, 1, &out(100));
        assert_eq!(p.evicted, 1);
        assert!(c.get(1).is_none(), "1 was least recently used");
        assert!(c.get(0).is_some() && c.get(3).is_some());
        assert_eq!(c.usage(), (3, 495));
        // Too big for the budget: not kept, nothing evicted.
        assert_eq!(c.put(9, m, 1, &out(1000)), Put::default());
        assert_eq!(c.usage().0, 3);
        c.forget("m", 1);
        assert_eq!(c.usage(), (0, 0));
    }
}
