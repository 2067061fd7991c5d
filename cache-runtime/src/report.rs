//! The reports a [`PgCache`](crate::PgCache) gives about itself: [`CacheStats`] (the table and this process's
//! counters) and [`HealthReport`] (whether the servers answer). Plain data, a leaf module: the cache layer
//! fills them in, the route layer reports its standbys in them.

use crate::observe::ProcessCounts;
use crate::usage::Usage;
use serde::Serialize;
use std::collections::HashMap;

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
    /// The usage held in its live rows: the sums of what their computations reported with
    /// [`usage`](crate::usage) (entries without usage count 0). What serving them all once more would save.
    pub usage_held: Usage,
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

/// What the table holds for one namespace (on one shard, or added up over all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TableCounts {
    pub(crate) entries: u64,
    pub(crate) active: u64,
    pub(crate) compute_held_us: u64,
    pub(crate) usage_held: Usage,
}

impl std::ops::AddAssign for TableCounts {
    fn add_assign(&mut self, other: TableCounts) {
        self.entries += other.entries;
        self.active += other.active;
        self.compute_held_us = self.compute_held_us.saturating_add(other.compute_held_us);
        self.usage_held += other.usage_held;
    }
}

impl CacheStats {
    pub(crate) fn assemble(
        table: Vec<(String, TableCounts)>,
        bytes_on_disk: u64,
        counters: HashMap<String, ProcessCounts>,
    ) -> CacheStats {
        let mut by_ns: std::collections::BTreeMap<String, NamespaceStats> = table
            .into_iter()
            .map(|(namespace, t)| {
                let stats = NamespaceStats {
                    namespace: namespace.clone(),
                    entries: t.entries,
                    active: t.active,
                    compute_held_us: t.compute_held_us,
                    usage_held: t.usage_held,
                    process: ProcessCounts::default(),
                };
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
                    usage_held: Usage::default(),
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

/// What [`PgCache::rekey`](crate::PgCache::rekey) did, so far (its progress callback sees it after each batch)
/// or in all. Entries it could not move stay as they are, and are misses for readers that cannot open them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RekeyReport {
    /// Encrypted entries found under a key other than the current one.
    pub examined: u64,
    /// Those re-encrypted under the current key.
    pub rekeyed: u64,
    /// Those rewritten or removed by a concurrent write or delete between the read and the update: left as
    /// that write made them (a newer value is never overwritten).
    pub changed_meanwhile: u64,
    /// Those under a key id the keyring does not hold: left as they are (give the keyring that key, or let
    /// them expire).
    pub unknown_key: u64,
    /// Those that did not authenticate under their key (copied from another cache key, or tampered with):
    /// left as they are; every read of them is a miss.
    pub undecryptable: u64,
    /// Batches run.
    pub batches: u64,
}

/// Encrypted entries under one key id, as [`PgCache::entries_by_key_id`](crate::PgCache::entries_by_key_id)
/// counts them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeyIdCount {
    /// The key id (`None`: an envelope without one, which no keyring can open).
    pub key_id: Option<String>,
    /// Entries encrypted under it, expired or not, over every shard.
    pub entries: u64,
}
