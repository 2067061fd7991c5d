//! The statements of one server other than the coalesced per-key operations: invalidation marks and tags,
//! triggers, maintenance in batches, reports, and cluster-wide single-flight leases.

use super::exec;
use super::{sql, Server};
use crate::error::Result;
use crate::report::TableCounts;
use crate::usage::Usage;
use std::time::Duration;

impl Server {
    /// Records the invalidation of `namespace` and sends `payload`.
    pub(crate) async fn mark_namespace(&self, namespace: &str, payload: String) -> Result<()> {
        let (namespace, lock_timeout) = (namespace.to_owned(), self.lock_timeout.clone());
        self.op("delete_namespace", move |conn| {
            let query = sqlx::query_scalar::<_, Option<String>>(sql::MARK_NAMESPACE)
                .bind(namespace.clone())
                .bind(payload.clone())
                .bind(lock_timeout.clone());
            Box::pin(async move { query.fetch_one(conn).await.map(drop) })
        })
        .await
    }

    /// Sends one event to every process.
    pub(crate) async fn notify(&self, payload: String) -> Result<()> {
        self.op("notify", move |conn| {
            let query = sqlx::query(sql::NOTIFY).bind(payload.clone());
            Box::pin(async move { query.execute(conn).await.map(drop) })
        })
        .await
    }

    /// Runs a batched delete (`statement` takes the `LIKE` pattern, if any, then the batch size) until a
    /// batch comes back short; each batch is its own short transaction. Returns the rows deleted.
    async fn delete_in_batches(
        &self,
        operation: &'static str,
        statement: &'static str,
        pattern: Option<String>,
    ) -> Result<u64> {
        let limit = self.batch_size;
        let mut total = 0;
        loop {
            let pattern = pattern.clone();
            let deleted = self
                .maintenance(operation, move |conn| {
                    let mut query = sqlx::query(statement);
                    if let Some(pattern) = &pattern {
                        query = query.bind(pattern.clone());
                    }
                    let query = query.bind(limit);
                    Box::pin(async move { Ok(query.execute(conn).await?.rows_affected()) })
                })
                .await?;
            total += deleted;
            if deleted < limit.unsigned_abs() {
                return Ok(total);
            }
        }
    }

    /// Deletes every row whose key matches the `LIKE` pattern.
    pub(crate) async fn delete_matching(&self, operation: &'static str, pattern: String) -> Result<u64> {
        self.delete_in_batches(operation, sql::DELETE_PREFIX_BATCH, Some(pattern)).await
    }

    pub(crate) async fn delete_expired(&self) -> Result<u64> {
        self.delete_in_batches("clear_expired", sql::DELETE_EXPIRED_BATCH, None).await
    }

    /// Evicts rows closest to expiry until the table holds at most `max` rows; the rows evicted.
    pub(crate) async fn evict_to(&self, max: i64) -> Result<u64> {
        let mut excess = self
            .maintenance("enforce_max_entries", move |conn| {
                Box::pin(sqlx::query_scalar::<_, i64>(sql::COUNT_EXCESS).bind(max).fetch_one(conn))
            })
            .await?;
        let mut total = 0;
        while excess > 0 {
            let batch = excess.min(self.batch_size);
            let deleted = self
                .maintenance("enforce_max_entries", move |conn| {
                    let query = sqlx::query(sql::EVICT_BATCH).bind(batch);
                    Box::pin(async move { Ok(query.execute(conn).await?.rows_affected()) })
                })
                .await?;
            if deleted == 0 {
                break;
            }
            total += deleted;
            excess -= i64::try_from(deleted).unwrap_or(i64::MAX);
        }
        Ok(total)
    }

    /// Runs the queued tag invalidations (migration 0012) until the queue is empty; returns the rows drained.
    pub(crate) async fn drain_invalidations(&self) -> Result<u64> {
        super::drain_invalidations_on(&self.pool, self.maintenance_timeout).await
    }

    /// Deletes old invalidation marks and long-dead leases.
    pub(crate) async fn sweep_bookkeeping(&self) -> Result<()> {
        self.maintenance("sweep", |conn| {
            Box::pin(
                async move { sqlx::query_scalar::<_, i64>(sql::SWEEP_BOOKKEEPING).fetch_one(conn).await.map(drop) },
            )
        })
        .await
    }

    pub(crate) async fn keys(&self, pattern: String, limit: i64) -> Result<Vec<String>> {
        self.maintenance("keys", move |conn| {
            Box::pin(sqlx::query_scalar::<_, String>(sql::KEYS).bind(pattern.clone()).bind(limit).fetch_all(conn))
        })
        .await
    }

    /// Rows, live rows, and the compute time (µs) and usage held in live rows, per namespace.
    pub(crate) async fn namespace_counts(&self) -> Result<Vec<(String, TableCounts)>> {
        type Row = (String, i64, i64, i64, i64, i64, i64);
        let rows = self
            .maintenance("stats", |conn| Box::pin(sqlx::query_as::<_, Row>(sql::NAMESPACE_COUNTS).fetch_all(conn)))
            .await?;
        let counts = rows.into_iter().map(|(namespace, entries, active, compute_us, input, output, cost)| {
            let usage_held = Usage::from_columns(Some(input), Some(output), Some(cost));
            let count = |n: i64| n.max(0).unsigned_abs();
            let table = TableCounts {
                entries: count(entries),
                active: count(active),
                compute_held_us: count(compute_us),
                usage_held,
            };
            (namespace, table)
        });
        Ok(counts.collect())
    }

    /// Deletes every entry carrying one of `tags` and records their invalidation; `payload_sender` names this
    /// cache in the notifications. The entries deleted.
    pub(crate) async fn invalidate_tags(&self, tags: Vec<String>, sender: String) -> Result<u64> {
        let lock_timeout = self.lock_timeout.clone();
        let deleted = self
            .maintenance("invalidate_tag", move |conn| {
                let query = sqlx::query_scalar::<_, i64>(sql::INVALIDATE_TAGS)
                    .bind(tags.clone())
                    .bind(sender.clone())
                    .bind(lock_timeout.clone());
                Box::pin(query.fetch_one(conn))
            })
            .await?;
        Ok(deleted.max(0).unsigned_abs())
    }

    /// Runs one trigger-management statement (`sql::INVALIDATE_ON_CHANGE` or `REMOVE_...`) with text arguments.
    pub(crate) async fn manage_trigger<T>(&self, statement: &'static str, args: Vec<String>) -> Result<T>
    where
        T: Send + Unpin + 'static + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        self.maintenance("invalidate_on_change", move |conn| {
            let mut query = sqlx::query_scalar::<_, T>(statement);
            for arg in &args {
                query = query.bind(arg.clone());
            }
            Box::pin(query.fetch_one(conn))
        })
        .await
    }

    pub(crate) async fn table_size(&self) -> Result<i64> {
        self.maintenance("stats", |conn| Box::pin(sqlx::query_scalar::<_, i64>(sql::TABLE_SIZE).fetch_one(conn))).await
    }

    /// One round trip, bounded by `timeout`.
    pub(crate) async fn ping(&self, timeout: Duration) -> Result<()> {
        exec::run(&self.pool, "health_check", timeout, |conn| {
            Box::pin(async move { sqlx::query_scalar::<_, i32>(sql::PING).fetch_one(conn).await.map(drop) })
        })
        .await
    }

    pub(crate) async fn count_all(&self, timeout: Duration) -> Result<i64> {
        exec::run(&self.pool, "health_check", timeout, |conn| {
            Box::pin(sqlx::query_scalar::<_, i64>(sql::COUNT_ALL).fetch_one(conn))
        })
        .await
    }

    /// Takes the lease on `key` for `owner`; whether it was taken.
    pub(crate) async fn lease_acquire(
        &self,
        key: &str,
        owner: &str,
        owner_prefix: &str,
        lease_ms: i64,
    ) -> Result<bool> {
        let (key, owner, prefix) = (key.to_owned(), owner.to_owned(), owner_prefix.to_owned());
        let taken = self
            .op("lease", move |conn| {
                let query = sqlx::query_scalar::<_, i32>(sql::LEASE_ACQUIRE)
                    .bind(key.clone())
                    .bind(owner.clone())
                    .bind(lease_ms)
                    .bind(prefix.clone());
                Box::pin(query.fetch_optional(conn))
            })
            .await?;
        Ok(taken.is_some())
    }

    /// Gives up `owner`'s lease on `key` and sends `payload`.
    pub(crate) async fn lease_release(&self, key: &str, owner: &str, payload: String) -> Result<()> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        self.op("lease", move |conn| {
            let query = sqlx::query_as::<_, (i64, Option<i32>)>(sql::LEASE_RELEASE)
                .bind(key.clone())
                .bind(owner.clone())
                .bind(payload.clone());
            Box::pin(async move { query.fetch_one(conn).await.map(drop) })
        })
        .await
    }

    pub(crate) async fn lease_is_live(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.op("lease", move |conn| {
            Box::pin(sqlx::query_scalar::<_, bool>(sql::LEASE_IS_LIVE).bind(key.clone()).fetch_one(conn))
        })
        .await
    }
}
