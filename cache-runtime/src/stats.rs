//! Counters kept by this process, and the reports built from them and from the table.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// What one namespace's counters count. All are since this `PgCache` was built, in this process only.
#[derive(Debug, Default)]
pub(crate) struct NamespaceCounters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) executions: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) local_hits: AtomicU64,
    pub(crate) local_misses: AtomicU64,
    pub(crate) stale_if_error: AtomicU64,
    /// Microseconds of computation that hits avoided (each hit adds its entry's compute time).
    pub(crate) compute_saved_us: AtomicU64,
}

/// Which counter to bump.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event {
    /// Served from PostgreSQL.
    Hit,
    /// Not in PostgreSQL (or expired, or of the wrong shape).
    Miss,
    /// A cache operation failed; the caller was served without the cache.
    Error,
    /// Served by waiting for another caller's computation (single-flight).
    Coalesced,
    /// The memoized function's body ran.
    Execution,
    /// An expired value was served while a refresh ran (stale-while-revalidate).
    StaleServed,
    /// Served from the in-process tier.
    LocalHit,
    /// Not in the in-process tier.
    LocalMiss,
    /// The body failed and an entry expired less than `stale_if_error` ago was served instead.
    StaleIfError,
}

impl NamespaceCounters {
    fn counter(&self, event: Event) -> &AtomicU64 {
        match event {
            Event::Hit => &self.hits,
            Event::Miss => &self.misses,
            Event::Error => &self.errors,
            Event::Coalesced => &self.coalesced,
            Event::Execution => &self.executions,
            Event::StaleServed => &self.stale_served,
            Event::LocalHit => &self.local_hits,
            Event::LocalMiss => &self.local_misses,
            Event::StaleIfError => &self.stale_if_error,
        }
    }
}

/// How many namespaces get counters of their own; the rest are counted together under [`OTHER_NAMESPACES`].
/// Keys are free-form (`user42:profile` is a namespace of its own), so without a bound the counters would
/// grow with every distinct prefix.
pub const MAX_COUNTED_NAMESPACES: usize = 256;

/// The namespace under which counters of namespaces beyond [`MAX_COUNTED_NAMESPACES`] are added up. No
/// valid namespace (see [`validate_namespace`](crate::validate_namespace)) can be spelled this way.
pub const OTHER_NAMESPACES: &str = "*other*";

/// Per-namespace counters, created on first use, at most [`MAX_COUNTED_NAMESPACES`] of them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    by_namespace: RwLock<HashMap<String, NamespaceCounters>>,
}

impl Counters {
    pub(crate) fn record(&self, namespace: &str, event: Event) {
        let slot = self.add(namespace, |c| c.counter(event), 1);
        crate::metrics::event(slot, event);
    }

    /// Adds the compute time (µs) that a hit in `namespace` avoided.
    pub(crate) fn saved(&self, namespace: &str, compute_us: u64) {
        self.add(namespace, |c| &c.compute_saved_us, compute_us);
    }

    /// Adds `by` to the counter `which` of `namespace`, created if need be; returns the name it is counted
    /// under.
    fn add<'a>(&self, namespace: &'a str, which: impl Fn(&NamespaceCounters) -> &AtomicU64, by: u64) -> &'a str {
        // The common case: the namespace is known, and a shared lock is enough to bump its atomic.
        if let Some(found) = self.by_namespace.read().unwrap_or_else(|e| e.into_inner()).get(namespace) {
            which(found).fetch_add(by, Ordering::Relaxed);
            return namespace;
        }
        // A poisoned lock only means another thread panicked while holding it; the map is still usable.
        let mut map = self.by_namespace.write().unwrap_or_else(|e| e.into_inner());
        let slot = if map.contains_key(namespace) || map.len() < MAX_COUNTED_NAMESPACES {
            namespace
        } else {
            OTHER_NAMESPACES
        };
        which(map.entry(slot.to_owned()).or_default()).fetch_add(by, Ordering::Relaxed);
        slot
    }

    /// The name `namespace` is counted under: itself, or [`OTHER_NAMESPACES`] once the bound is reached.
    pub(crate) fn slot<'a>(&self, namespace: &'a str) -> &'a str {
        let map = self.by_namespace.read().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(namespace) || map.len() < MAX_COUNTED_NAMESPACES {
            namespace
        } else {
            OTHER_NAMESPACES
        }
    }

    pub(crate) fn snapshot(&self) -> HashMap<String, ProcessCounts> {
        let map = self.by_namespace.read().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(ns, c)| (ns.clone(), ProcessCounts::from(c))).collect()
    }
}

/// The namespace of a key: what comes before the first `:`. Keys without one share the namespace "", so
/// that counters stay one per namespace instead of growing with every distinct plain key.
pub(crate) fn namespace_of(key: &str) -> &str {
    key.split_once(':').map_or("", |(ns, _)| ns)
}

/// This process's counters for one namespace (or all of them, added up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ProcessCounts {
    /// Lookups answered from PostgreSQL.
    pub hits: u64,
    /// Lookups that found nothing usable in PostgreSQL.
    pub misses: u64,
    /// Cache operations that failed; the caller ran uncached.
    pub errors: u64,
    /// Calls answered by joining another caller's computation (single-flight).
    pub coalesced: u64,
    /// Times a memoized function's body actually ran.
    pub executions: u64,
    /// Expired values served while a background refresh ran.
    pub stale_served: u64,
    /// Lookups answered from the in-process tier.
    pub local_hits: u64,
    /// Lookups that missed the in-process tier and went on to PostgreSQL.
    pub local_misses: u64,
    /// Calls whose body failed (an `Err`, a `None`) and that were served an entry expired less than
    /// `stale_if_error` ago instead.
    pub stale_if_error: u64,
    /// Microseconds of computation that hits (in PostgreSQL, in the in-process tier, or by joining another
    /// caller's computation) did not have to redo: the sum of the compute times recorded with the entries
    /// they were served. See [`compute_saved`](Self::compute_saved).
    pub compute_saved_us: u64,
}

impl From<&NamespaceCounters> for ProcessCounts {
    fn from(c: &NamespaceCounters) -> Self {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProcessCounts {
            hits: get(&c.hits),
            misses: get(&c.misses),
            errors: get(&c.errors),
            coalesced: get(&c.coalesced),
            executions: get(&c.executions),
            stale_served: get(&c.stale_served),
            local_hits: get(&c.local_hits),
            local_misses: get(&c.local_misses),
            stale_if_error: get(&c.stale_if_error),
            compute_saved_us: get(&c.compute_saved_us),
        }
    }
}

impl ProcessCounts {
    /// Share of lookups served from a cache tier (PostgreSQL, in-process, or a joined computation), 0 to 1.
    /// `None` before the first lookup.
    pub fn hit_ratio(&self) -> Option<f64> {
        let served = self.hits + self.local_hits + self.coalesced + self.stale_served;
        let total = served + self.misses;
        (total > 0).then(|| served as f64 / total as f64)
    }

    /// The computation time hits avoided ([`compute_saved_us`](Self::compute_saved_us)).
    pub fn compute_saved(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.compute_saved_us)
    }
}

/// Adds another set of counters, for example to total several namespaces or several `PgCache`s.
impl std::ops::AddAssign<&ProcessCounts> for ProcessCounts {
    fn add_assign(&mut self, other: &ProcessCounts) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.errors += other.errors;
        self.coalesced += other.coalesced;
        self.executions += other.executions;
        self.stale_served += other.stale_served;
        self.local_hits += other.local_hits;
        self.local_misses += other.local_misses;
        self.stale_if_error += other.stale_if_error;
        self.compute_saved_us += other.compute_saved_us;
    }
}

/// One namespace in [`CacheStats`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct NamespaceStats {
    /// The namespace: the part of the key before the first `:`, or "" for keys without one.
    pub namespace: String,
    /// Rows in the table, expired or not.
    pub entries: u64,
    /// Rows that have not expired.
    pub active: u64,
    /// The compute time held in its live rows, in microseconds: what their computations took (memoized
    /// results only; values stored with `set` have none).
    pub compute_held_us: u64,
    /// This process's counters for the namespace.
    pub process: ProcessCounts,
}

/// A snapshot of the table and of this process's counters, from [`PgCache::stats`](crate::PgCache::stats).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// Rows in the table, expired or not.
    pub total_entries: u64,
    /// Rows that have not expired.
    pub active_entries: u64,
    /// Rows that have expired and wait for a sweep.
    pub expired_entries: u64,
    /// The table's size on disk, indexes and TOAST included (`pg_total_relation_size`).
    pub bytes_on_disk: u64,
    /// This process's counters, all namespaces added up.
    pub process: ProcessCounts,
    /// Per namespace, sorted by name: every namespace with rows or with counters in this process.
    pub namespaces: Vec<NamespaceStats>,
}

impl CacheStats {
    pub(crate) fn assemble(
        table: Vec<(String, u64, u64, u64)>,
        bytes_on_disk: u64,
        counters: HashMap<String, ProcessCounts>,
    ) -> CacheStats {
        let mut by_ns: std::collections::BTreeMap<String, NamespaceStats> = table
            .into_iter()
            .map(|(namespace, entries, active, compute_held_us)| {
                let process = ProcessCounts::default();
                let stats = NamespaceStats { namespace: namespace.clone(), entries, active, compute_held_us, process };
                (namespace, stats)
            })
            .collect();
        let mut process = ProcessCounts::default();
        for (namespace, counts) in counters {
            process += &counts;
            by_ns
                .entry(namespace.clone())
                .or_insert_with(|| NamespaceStats {
                    namespace,
                    entries: 0,
                    active: 0,
                    compute_held_us: 0,
                    process: Default::default(),
                })
                .process = counts;
        }
        let total_entries = by_ns.values().map(|n| n.entries).sum();
        let active_entries = by_ns.values().map(|n| n.active).sum();
        CacheStats {
            total_entries,
            active_entries,
            expired_entries: total_entries - active_entries,
            bytes_on_disk,
            process,
            namespaces: by_ns.into_values().collect(),
        }
    }

    /// The stats of one namespace, if it has rows or counters.
    pub fn namespace(&self, namespace: &str) -> Option<&NamespaceStats> {
        self.namespaces.iter().find(|n| n.namespace == namespace)
    }
}

/// Overall state in a [`HealthReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthStatus {
    /// The database answered and the table is readable.
    Healthy,
    /// The database answered, but something is off (for example the table is missing: run `migrate()`).
    Degraded,
    /// The database could not be reached in time. Memoized functions run uncached meanwhile.
    Unhealthy,
}

/// The result of [`PgCache::health_check`](crate::PgCache::health_check). Building it never fails or panics.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// Overall state.
    pub status: HealthStatus,
    /// Rows in the table, when it could be counted.
    pub total_entries: Option<u64>,
    /// Round trip of a trivial query, in milliseconds, when the database answered.
    pub latency_ms: Option<f64>,
    /// What went wrong, when something did.
    pub error: Option<String>,
    /// With [`shards`](crate::PgCacheBuilder::shards): each shard's own report, in the order given. Empty on
    /// one server.
    pub shards: Vec<ShardHealth>,
    /// With [`read_replicas`](crate::PgCacheBuilder::read_replicas): each standby's state. A standby that
    /// is not usable only sends its reads to the primary, so it does not change `status`.
    pub replicas: Vec<ReplicaHealth>,
}

/// One read replica's part of a [`HealthReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ReplicaHealth {
    /// The standby's `host:port/database`.
    pub replica: String,
    /// Whether reads go to it now (it is a standby known to be less than `max_lag` behind).
    pub usable: bool,
    /// How far behind the primary it may be, in milliseconds: the bound measured at its last probe, plus
    /// the time since. `None` when it is down, not a standby, or too far behind to measure.
    pub lag_ms: Option<f64>,
    /// Keys read from it by this process (a `get_many` counts each of its keys).
    pub reads: u64,
}

/// One shard's part of a [`HealthReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ShardHealth {
    /// The shard's `host:port/database`.
    pub shard: String,
    /// Its report.
    pub report: HealthReport,
}

impl HealthReport {
    pub(crate) fn new(
        status: HealthStatus,
        total_entries: Option<u64>,
        latency_ms: Option<f64>,
        error: Option<String>,
    ) -> HealthReport {
        HealthReport { status, total_entries, latency_ms, error, shards: Vec::new(), replicas: Vec::new() }
    }

    /// The report of a sharded cache: Healthy when every shard is, Unhealthy when none answers, Degraded in
    /// between; entries summed when every shard could count; the slowest shard's latency; every error.
    pub(crate) fn merge(shards: Vec<(String, HealthReport)>) -> HealthReport {
        let all = |status| shards.iter().all(|(_, r)| r.status == status);
        let status = if all(HealthStatus::Healthy) {
            HealthStatus::Healthy
        } else if all(HealthStatus::Unhealthy) {
            HealthStatus::Unhealthy
        } else {
            HealthStatus::Degraded
        };
        let total_entries = shards.iter().map(|(_, r)| r.total_entries).sum();
        let latency_ms = shards.iter().filter_map(|(_, r)| r.latency_ms).reduce(f64::max);
        let errors: Vec<String> =
            shards.iter().filter_map(|(name, r)| r.error.as_ref().map(|e| format!("shard {name}: {e}"))).collect();
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        let shards = shards.into_iter().map(|(shard, report)| ShardHealth { shard, report }).collect();
        HealthReport { status, total_entries, latency_ms, error, shards, replicas: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_counted_are_bounded() {
        let counters = Counters::default();
        for user in 0..1_000 {
            counters.record(&format!("user{user}"), Event::Hit);
        }
        counters.record("user0", Event::Miss);
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.len(), MAX_COUNTED_NAMESPACES + 1);
        assert_eq!(snapshot["user0"].misses, 1, "a namespace counted before the bound keeps its own counters");
        let other = snapshot[OTHER_NAMESPACES].hits;
        assert_eq!(other, 1_000 - MAX_COUNTED_NAMESPACES as u64);
        assert_eq!(snapshot.values().map(|c| c.hits).sum::<u64>(), 1_000, "nothing is lost");
    }

    #[test]
    fn counters_add_field_by_field() {
        let one = ProcessCounts {
            hits: 1,
            misses: 2,
            errors: 3,
            coalesced: 4,
            executions: 5,
            stale_served: 6,
            local_hits: 7,
            local_misses: 8,
            stale_if_error: 9,
            compute_saved_us: 10,
        };
        let mut total = one;
        total += &one;
        assert_eq!(
            total,
            ProcessCounts {
                hits: 2,
                misses: 4,
                errors: 6,
                coalesced: 8,
                executions: 10,
                stale_served: 12,
                local_hits: 14,
                local_misses: 16,
                stale_if_error: 18,
                compute_saved_us: 20,
            }
        );
    }
}
