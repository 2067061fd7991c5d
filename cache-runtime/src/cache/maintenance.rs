//! Work on many rows at once: namespace purges, expiry sweeps, eviction, the background sweeper, and the
//! reports (keys, stats, health).

use super::{Inner, PgCache};
use crate::error::Result;
use crate::report::{CacheStats, HealthReport, HealthStatus, TableCounts};
use crate::route::replicas::Replicas;
use crate::route::shards::on_every_shard;
use crate::server::Server;
use serde::Serialize;
use std::sync::Weak;
use std::time::{Duration, Instant};

/// What one [`PgCache::sweep`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SweepReport {
    /// Expired rows deleted.
    pub expired: u64,
    /// Live rows evicted to bring the table back to `max_entries`.
    pub evicted: u64,
    /// Rows evicted to bring tenants back under their
    /// [quota](crate::PgCacheBuilder::tenant_quota), oldest first.
    pub tenant_evicted: u64,
    /// Tag invalidations run that transactions under REPEATABLE READ or SERIALIZABLE had queued (see
    /// [`PgCache::invalidate_on_change`]).
    pub invalidations_drained: u64,
}

/// Escapes `%`, `_` and `\` for a `LIKE` pattern.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl PgCache {
    /// Deletes every entry whose key starts with `namespace:`, in batches, and returns how many went.
    ///
    /// Each batch is its own short transaction, so purging a million rows never holds a long lock. It is also
    /// an invalidation of the whole namespace: a memoized computation in it that started before the purge will
    /// not store its result, and every process drops the namespace from its in-process tier.
    ///
    /// # Errors
    /// [`CacheError::InvalidNamespace`](crate::CacheError::InvalidNamespace) before any I/O; a timeout or
    /// database error when the mark or a batch fails (the batches done so far stay done).
    pub async fn delete_namespace(&self, namespace: &str) -> Result<u64> {
        crate::key::validate_namespace(namespace)?;
        // First the invalidation mark and the notification, so that nothing computed before the purge is
        // stored after it, and other processes drop the namespace from their in-process tiers.
        self.forget_namespace_locally(namespace);
        // Every shard purges at once; an error on one (a shard that is down) is returned after the others
        // are done, so the caller knows the namespace may survive there.
        let payload = crate::channel::namespace_payload(self.inner.events.sender, namespace);
        let pattern = like_prefix(&format!("{namespace}:"));
        let purged = on_every_shard(self.shards(), |server| {
            let (payload, pattern) = (payload.clone(), pattern.clone());
            async move {
                server.mark_namespace(namespace, payload).await?;
                server.delete_matching("delete_namespace", pattern).await
            }
        })
        .await;
        // While the batches ran, reads in every process could still fetch rows not yet deleted and put them
        // in their tiers: tell everyone once more.
        self.forget_namespace_locally(namespace);
        for error in on_every_shard(self.shards(), |server| server.notify(payload.clone()))
            .await
            .into_iter()
            .filter_map(Result::err)
        {
            tracing::warn!(namespace, %error, "could not notify the end of a namespace purge");
        }
        let total = sum(purged)?;
        crate::observe::metrics::invalidation(self.metric_namespace(namespace), "namespace");
        tracing::info!(namespace, deleted = total, "namespace purged");
        Ok(total)
    }

    fn forget_namespace_locally(&self, namespace: &str) {
        if let Some(tier) = self.inner.local.get() {
            tier.remove_namespace(namespace);
        }
        self.inner.flights.detach(|key| crate::key::namespace_of(key) == namespace);
    }

    /// Deletes expired rows in batches (soonest-expired first) and returns how many went. Each batch is its
    /// own transaction; rows locked by a concurrent sweep in another process are skipped, not waited for.
    ///
    /// # Errors
    /// A timeout or database error when a batch fails (the batches done so far stay done).
    pub async fn clear_expired(&self) -> Result<u64> {
        sum(on_every_shard(self.shards(), Server::delete_expired).await)
    }

    /// Brings the table back to `max_entries` rows and returns how many were evicted (0 without a limit). With
    /// shards, each holds at most its share, `max_entries / shards`.
    ///
    /// **Eviction order:** the entries closest to expiry go first; entries that never expire go last; the
    /// next write of an evicted key simply re-creates it. Finding the excess walks the `expires_at` index once
    /// (`max_entries` + excess entries, never the rows themselves); each eviction batch then costs O(batch).
    ///
    /// # Errors
    /// A timeout or database error when the count or a batch fails.
    pub async fn enforce_max_entries(&self) -> Result<u64> {
        let Some(max) = self.config().max_entries else {
            return Ok(0);
        };
        let shards = u64::try_from(self.shards().len()).unwrap_or(1).max(1);
        let max = i64::try_from(max.div_ceil(shards)).unwrap_or(i64::MAX);
        let evicted = sum(on_every_shard(self.shards(), |server| server.evict_to(max)).await)?;
        if evicted > 0 {
            tracing::info!(evicted, max_entries = max, "evicted entries over the limit");
        }
        Ok(evicted)
    }

    /// One sweep: the queued tag invalidations (see [`invalidate_on_change`](Self::invalidate_on_change)),
    /// then [`clear_expired`](Self::clear_expired), then
    /// [`enforce_tenant_quotas`](Self::enforce_tenant_quotas), then
    /// [`enforce_max_entries`](Self::enforce_max_entries), then old bookkeeping rows (invalidation marks
    /// older than a day, leases long past their deadline).
    ///
    /// # Errors
    /// The first step that fails.
    pub async fn sweep(&self) -> Result<SweepReport> {
        let invalidations_drained = sum(on_every_shard(self.shards(), Server::drain_invalidations).await)?;
        let expired = self.clear_expired().await?;
        let tenant_evicted = self.enforce_tenant_quotas().await?;
        let evicted = self.enforce_max_entries().await?;
        on_every_shard(self.shards(), Server::sweep_bookkeeping).await.into_iter().collect::<Result<()>>()?;
        Ok(SweepReport { expired, evicted, tenant_evicted, invalidations_drained })
    }

    /// Starts the background sweeper, unless it is turned off or there is no tokio runtime.
    pub(crate) fn start_sweeper(&self) {
        let Some(interval) = self.config().sweep_interval else { return };
        // The sweeper holds only a Weak: it ends when the last PgCache clone is dropped.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let handle = runtime.spawn(sweep_loop(std::sync::Arc::downgrade(&self.inner), interval));
            *self.inner.sweeper.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        }
    }

    /// Up to `limit` live keys, in byte order, that start with `prefix` (all keys with `None`).
    ///
    /// # Errors
    /// A timeout or database error.
    pub async fn keys(&self, prefix: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let pattern = like_prefix(prefix.unwrap_or(""));
        let per_shard = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut keys = Vec::new();
        for shard_keys in on_every_shard(self.shards(), |server| server.keys(pattern.clone(), per_shard)).await {
            keys.extend(shard_keys?);
        }
        // Each shard's keys come sorted: the first `limit` of their merge.
        keys.sort_unstable();
        keys.truncate(limit);
        Ok(keys)
    }

    /// Counts of the table per namespace, its size on disk, and this process's hit and miss counters.
    ///
    /// # Errors
    /// A timeout or database error.
    pub async fn stats(&self) -> Result<CacheStats> {
        let reports = on_every_shard(self.shards(), |server| async move {
            Ok::<_, crate::CacheError>((server.namespace_counts().await?, server.table_size().await?))
        })
        .await;
        let mut table: Vec<(String, TableCounts)> = Vec::new();
        let mut size = 0;
        for report in reports {
            let (counts, shard_size) = report?;
            size += shard_size.unsigned_abs();
            for (namespace, counts) in counts {
                match table.iter_mut().find(|row| row.0 == namespace) {
                    Some(row) => row.1 += counts,
                    None => table.push((namespace, counts)),
                }
            }
        }
        Ok(CacheStats::assemble(table, size, self.inner.counters.snapshot()))
    }

    /// This process's counters only: no I/O.
    pub fn process_stats(&self) -> crate::ProcessCounts {
        let mut all = crate::ProcessCounts::default();
        for counts in self.inner.counters.snapshot().values() {
            all += counts;
        }
        all.forged_events = self.inner.events.forged.load(std::sync::atomic::Ordering::Relaxed);
        all
    }

    /// Checks the database: a round trip, then a count of the table, on every shard at once. Never fails and
    /// never panics; problems are in the report. With shards, `shards` has one report per shard (in the order
    /// they were given) and the overall status is the worst of theirs, except that some shards down and some
    /// up is `Degraded`: the cache still serves the keys of the others.
    pub async fn health_check(&self) -> HealthReport {
        let timeout = self.config().op_timeout.max(Duration::from_secs(1));
        let reports = on_every_shard(self.shards(), |server| check_server(server, timeout)).await;
        if reports.len() == 1 {
            let mut report = reports
                .into_iter()
                .next()
                .unwrap_or_else(|| HealthReport::new(HealthStatus::Unhealthy, None, None, None));
            report.replicas = self.shards().first().replicas().map(Replicas::report).unwrap_or_default();
            return report;
        }
        let named: Vec<(String, HealthReport)> =
            reports.into_iter().enumerate().map(|(i, report)| (self.shards().name(i).to_owned(), report)).collect();
        HealthReport::merge(named)
    }
}

async fn check_server(server: &Server, timeout: Duration) -> HealthReport {
    let started = Instant::now();
    if let Err(error) = server.ping(timeout).await {
        return HealthReport::new(HealthStatus::Unhealthy, None, None, Some(error.to_string()));
    }
    let latency_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    match server.count_all(timeout).await {
        Ok(n) => HealthReport::new(HealthStatus::Healthy, Some(n.unsigned_abs()), latency_ms, None),
        Err(error) => HealthReport::new(HealthStatus::Degraded, None, latency_ms, Some(error.to_string())),
    }
}

/// The sum of per-shard counts, or the first error.
fn sum(results: Vec<Result<u64>>) -> Result<u64> {
    results.into_iter().sum()
}

async fn sweep_loop(inner: Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let cache = PgCache { inner };
        match cache.sweep().await {
            Ok(SweepReport { expired, evicted, tenant_evicted, invalidations_drained }) => {
                tracing::debug!(expired, evicted, tenant_evicted, invalidations_drained, "cache sweep done");
            }
            Err(error) => tracing::warn!(%error, "cache sweep failed; retrying at the next interval"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(like_prefix("a_b:"), "a\\_b:%");
        assert_eq!(like_prefix("50%\\"), "50\\%\\\\%");
    }
}
