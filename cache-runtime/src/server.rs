//! One PostgreSQL server: its pool, and every operation the cache runs on it.
//!
//! This layer knows SQL and nothing else: no keys are checked here, no in-process tier or counter is
//! touched. [`PgCache`](crate::PgCache) does that above it, and calls a `Server` for the I/O. Each operation
//! goes through [`exec::run`](crate::exec::run): in a task of its own, within its timeout, retried once on
//! a dead connection.

use crate::config::Config;
use crate::config::Durability;
use crate::error::{CacheError, Result};
use crate::exec::{self, DbFuture};
use crate::sql;
use sqlx::postgres::{PgConnection, PgPool};
use std::time::Duration;

/// What a memoized call's lookup found.
#[derive(Debug)]
pub(crate) struct Lookup {
    /// The entry's JSON, if there is a live one or, within the stale window, an expired one.
    pub(crate) json: Option<String>,
    /// Milliseconds until expiry, `None` for an entry that never expires.
    pub(crate) remaining_ms: Option<i64>,
    /// False for an expired entry served from the stale window.
    pub(crate) fresh: bool,
    /// The database's clock when the lookup ran, in microseconds since the epoch.
    pub(crate) db_now_us: i64,
}

/// Converts the milliseconds left before expiry into a duration for the in-process tier.
pub(crate) fn remaining(remaining_ms: Option<i64>) -> Option<Duration> {
    remaining_ms.map(|ms| Duration::from_millis(ms.max(0).unsigned_abs()))
}

/// How a row is written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Write<'a> {
    /// The key's namespace, whose invalidation also refuses a guarded write.
    pub(crate) namespace: &'a str,
    /// Milliseconds until expiry; `None`: never.
    pub(crate) ttl_ms: Option<i64>,
    /// Milliseconds the row is kept past its expiry, to be served stale.
    pub(crate) keep_ms: i64,
    /// For a memoized result: the database clock (µs) when its computation began.
    pub(crate) started_us: Option<i64>,
}

/// A live entry: its JSON and the milliseconds it has left (`None`: never expires).
pub(crate) type LiveEntry = (String, Option<i64>);

#[derive(Debug)]
pub(crate) struct Server {
    pool: PgPool,
    async_commit: bool,
    op_timeout: Duration,
    maintenance_timeout: Duration,
    /// The operation timeout in milliseconds, as `set_config('lock_timeout', ...)` takes it.
    lock_timeout: String,
    batch_size: i64,
}

impl Server {
    pub(crate) fn new(pool: PgPool, config: &Config) -> Server {
        Server {
            pool,
            async_commit: config.durability == Durability::AsyncCommit,
            op_timeout: config.op_timeout,
            maintenance_timeout: config.maintenance_timeout,
            lock_timeout: config.op_timeout.as_millis().max(1).to_string(),
            batch_size: config.batch_size,
        }
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A per-key operation, bounded by the operation timeout.
    async fn op<T, W>(&self, operation: &'static str, work: W) -> Result<T>
    where
        T: Send + 'static,
        W: for<'c> Fn(&'c mut PgConnection) -> DbFuture<'c, T> + Send + Sync + 'static,
    {
        exec::run(&self.pool, operation, self.op_timeout, work).await
    }

    /// A maintenance statement (a batch, a report), bounded by the maintenance timeout.
    async fn maintenance<T, W>(&self, operation: &'static str, work: W) -> Result<T>
    where
        T: Send + 'static,
        W: for<'c> Fn(&'c mut PgConnection) -> DbFuture<'c, T> + Send + Sync + 'static,
    {
        exec::run(&self.pool, operation, self.maintenance_timeout, work).await
    }

    pub(crate) async fn migrate(&self, gin_index: bool) -> Result<()> {
        crate::MIGRATOR.run(&self.pool).await?;
        if gin_index {
            sqlx::raw_sql(sql::GIN_INDEX).execute(&self.pool).await.map_err(CacheError::db("migrate"))?;
        }
        Ok(())
    }

    pub(crate) async fn get_live(&self, key: &str) -> Result<Option<LiveEntry>> {
        let key = key.to_owned();
        self.op("get", move |conn| {
            Box::pin(sqlx::query_as::<_, LiveEntry>(sql::GET).bind(key.clone()).fetch_optional(conn))
        })
        .await
    }

    pub(crate) async fn lookup(&self, key: &str, stale_window_ms: i64) -> Result<Lookup> {
        let key = key.to_owned();
        let row = self
            .op("get", move |conn| {
                let query = sqlx::query_as::<_, (Option<String>, Option<i64>, Option<bool>, i64)>(sql::LOOKUP)
                    .bind(key.clone())
                    .bind(stale_window_ms);
                Box::pin(query.fetch_one(conn))
            })
            .await?;
        let (json, remaining_ms, fresh, db_now_us) = row;
        Ok(Lookup { json, remaining_ms, fresh: fresh.unwrap_or(false), db_now_us })
    }

    /// Writes `json` under `key` and sends `notify`; see [`sql::WRITE`]. Whether it wrote: a guarded write
    /// (`write.started_us`) is refused when the key or its namespace was invalidated since.
    pub(crate) async fn write(&self, key: &str, json: &str, write: Write<'_>, notify: String) -> Result<bool> {
        let (lock_timeout, async_commit) = (self.lock_timeout.clone(), self.async_commit);
        let (key, json, namespace) = (key.to_owned(), json.to_owned(), write.namespace.to_owned());
        let Write { ttl_ms, keep_ms, started_us, .. } = write;
        self.op("set", move |conn| {
            let query = sqlx::query_scalar::<_, bool>(sql::WRITE)
                .bind(key.clone())
                .bind(json.clone())
                .bind(ttl_ms)
                .bind(keep_ms)
                .bind(started_us)
                .bind(namespace.clone())
                .bind(notify.clone())
                .bind(lock_timeout.clone())
                .bind(async_commit);
            Box::pin(query.fetch_one(conn))
        })
        .await
    }

    /// Deletes `key`, records its invalidation and sends `payload`; whether a row was there.
    pub(crate) async fn delete_and_mark(&self, key: &str, payload: String) -> Result<bool> {
        let (key, lock_timeout) = (key.to_owned(), self.lock_timeout.clone());
        let deleted = self
            .op("delete", move |conn| {
                let query = sqlx::query_scalar::<_, i64>(sql::DELETE)
                    .bind(key.clone())
                    .bind(payload.clone())
                    .bind(lock_timeout.clone());
                Box::pin(query.fetch_one(conn))
            })
            .await?;
        Ok(deleted > 0)
    }

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

    /// Rows and live rows per namespace.
    pub(crate) async fn namespace_counts(&self) -> Result<Vec<(String, i64, i64)>> {
        self.maintenance("stats", |conn| {
            Box::pin(sqlx::query_as::<_, (String, i64, i64)>(sql::NAMESPACE_COUNTS).fetch_all(conn))
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
