//! Work on many rows at once: namespace purges, expiry sweeps, eviction, the background sweeper, and the
//! reports (keys, stats, health).

use crate::error::Result;
use crate::stats::{CacheStats, HealthReport, HealthStatus};
use crate::store::{Inner, PgCache};
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
        let payload = self.inner.events.namespace_payload(namespace);
        self.server().mark_namespace(namespace, payload.clone()).await?;
        let total = self.server().delete_matching("delete_namespace", like_prefix(&format!("{namespace}:"))).await?;
        // While the batches ran, reads in every process could still fetch rows not yet deleted and put them
        // in their tiers: tell everyone once more.
        self.forget_namespace_locally(namespace);
        if let Err(error) = self.server().notify(payload).await {
            tracing::warn!(namespace, %error, "could not notify the end of a namespace purge");
        }
        tracing::info!(namespace, deleted = total, "namespace purged");
        Ok(total)
    }

    fn forget_namespace_locally(&self, namespace: &str) {
        if let Some(tier) = self.inner.local.get() {
            tier.remove_namespace(namespace);
        }
        self.inner.flights.detach(|key| crate::stats::namespace_of(key) == namespace);
    }

    /// Deletes expired rows in batches (soonest-expired first) and returns how many went. Each batch is its
    /// own transaction; rows locked by a concurrent sweep in another process are skipped, not waited for.
    ///
    /// # Errors
    /// A timeout or database error when a batch fails (the batches done so far stay done).
    pub async fn clear_expired(&self) -> Result<u64> {
        self.server().delete_expired().await
    }

    /// Brings the table back to `max_entries` rows and returns how many were evicted (0 without a limit).
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
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let evicted = self.server().evict_to(max).await?;
        if evicted > 0 {
            tracing::info!(evicted, max_entries = max, "evicted entries over the limit");
        }
        Ok(evicted)
    }

    /// One sweep: [`clear_expired`](Self::clear_expired), then
    /// [`enforce_max_entries`](Self::enforce_max_entries), then old bookkeeping rows (invalidation marks
    /// older than a day, leases long past their deadline).
    ///
    /// # Errors
    /// The first step that fails.
    pub async fn sweep(&self) -> Result<SweepReport> {
        let expired = self.clear_expired().await?;
        let evicted = self.enforce_max_entries().await?;
        self.server().sweep_bookkeeping().await?;
        Ok(SweepReport { expired, evicted })
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
        self.server().keys(pattern, i64::try_from(limit).unwrap_or(i64::MAX)).await
    }

    /// Counts of the table per namespace, its size on disk, and this process's hit and miss counters.
    ///
    /// # Errors
    /// A timeout or database error.
    pub async fn stats(&self) -> Result<CacheStats> {
        let counts = self.server().namespace_counts().await?;
        let size = self.server().table_size().await?;
        let table =
            counts.into_iter().map(|(ns, total, active)| (ns, total.unsigned_abs(), active.unsigned_abs())).collect();
        Ok(CacheStats::assemble(table, size.unsigned_abs(), self.inner.counters.snapshot()))
    }

    /// This process's counters only: no I/O.
    pub fn process_stats(&self) -> crate::ProcessCounts {
        let mut all = crate::ProcessCounts::default();
        for counts in self.inner.counters.snapshot().values() {
            all += counts;
        }
        all
    }

    /// Checks the database: a round trip, then a count of the table. Never fails and never panics; problems
    /// are in the report.
    pub async fn health_check(&self) -> HealthReport {
        let timeout = self.config().op_timeout.max(Duration::from_secs(1));
        let started = Instant::now();
        if let Err(error) = self.server().ping(timeout).await {
            return HealthReport::new(HealthStatus::Unhealthy, None, None, Some(error.to_string()));
        }
        let latency_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        match self.server().count_all(timeout).await {
            Ok(n) => HealthReport::new(HealthStatus::Healthy, Some(n.unsigned_abs()), latency_ms, None),
            Err(error) => HealthReport::new(HealthStatus::Degraded, None, latency_ms, Some(error.to_string())),
        }
    }
}

async fn sweep_loop(inner: Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let cache = PgCache { inner };
        match cache.sweep().await {
            Ok(SweepReport { expired, evicted }) => tracing::debug!(expired, evicted, "cache sweep done"),
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
