//! One PostgreSQL server: its pool, and every operation the cache runs on it.
//!
//! This layer knows SQL and nothing else: no keys are checked here, no in-process tier or counter is
//! touched. [`PgCache`](crate::PgCache) does that above it, and calls a `Server` for the I/O. Each operation
//! goes through [`exec::run`](crate::exec::run): cancellation-safe, within its timeout, retried once on
//! a dead connection.

use crate::batch::{DeleteJob, Deletes, ReadJob, Reads, WriteJob, Writes};
use crate::coalesce::{Kind, Limits, Queue};
use crate::config::{Config, Durability};
use crate::error::{CacheError, Result};
use crate::exec::{self, DbFuture};
use crate::failover::Hosts;
use crate::replicas::Replicas;
use crate::sql;
use crate::tags::Tags;
use sqlx::postgres::{PgConnection, PgPool};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The most keys one write or delete statement carries: its notification names each in 17 bytes, and must
/// stay under PostgreSQL's 8,000-byte payload limit.
pub(crate) const MAX_KEYS_PER_NOTIFICATION: usize = 400;

/// What an entry carries besides its value.
#[derive(Debug, Clone, Default)]
pub(crate) struct EntryMeta {
    /// Its tags (see `tags.rs`).
    pub(crate) tags: Option<Tags>,
    /// How long its computation took, in microseconds, for a memoized result.
    pub(crate) compute_us: Option<i64>,
}

impl EntryMeta {
    /// From the `tags` and `compute_us` columns of a read.
    pub(crate) fn from_columns(tags: Option<Vec<String>>, compute_us: Option<i64>) -> EntryMeta {
        EntryMeta { tags: tags.filter(|t| !t.is_empty()).map(Into::into), compute_us }
    }
}

/// What a memoized call's lookup found.
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    /// The entry's JSON, if there is a live one or, within the stale window, an expired one.
    pub(crate) json: Option<String>,
    /// Milliseconds until expiry, `None` for an entry that never expires.
    pub(crate) remaining_ms: Option<i64>,
    /// False for an expired entry served from the stale window.
    pub(crate) fresh: bool,
    /// The database's clock when the lookup ran, in microseconds since the epoch.
    pub(crate) db_now_us: i64,
    /// Read from a standby: the instant whose commits it is known to hold (later ones it may lack). `None`:
    /// read from the primary.
    pub(crate) as_of: Option<Instant>,
    /// The entry's tags and compute time.
    pub(crate) meta: EntryMeta,
    /// The lookup's snapshot (`pg_current_snapshot()` as text), for the tag guard.
    pub(crate) snapshot: Option<Arc<str>>,
}

impl Lookup {
    /// The entry, if it is live (not one served from the stale window).
    pub(crate) fn live(self) -> Option<LiveEntry> {
        let (remaining_ms, as_of, meta) = (self.remaining_ms, self.as_of, self.meta);
        self.json.filter(|_| self.fresh).map(|json| LiveEntry { json, remaining_ms, as_of, meta })
    }

    /// When the computation that follows this lookup began, for the stale-set guard.
    pub(crate) fn start(&self) -> Start {
        Start { us: self.db_now_us, snapshot: self.snapshot.clone() }
    }

    /// This lookup as answered by a standby that holds every commit from before `as_of`. Its clock becomes
    /// the start of a computation (the stale-set guard's), so it is moved back by `max_lag`: a write is then
    /// refused for any invalidation the standby might not have shown, even with the servers' clocks apart.
    fn answered_by_standby(mut self, as_of: Instant, max_lag: Duration) -> Lookup {
        self.as_of = Some(as_of);
        self.db_now_us -= i64::try_from(max_lag.as_micros()).unwrap_or(i64::MAX);
        self
    }
}

/// Where a read may go when the cache has [read replicas](crate::PgCacheBuilder::read_replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFrom {
    /// A standby within the lag bound, else the primary.
    AnyCopy,
    /// The primary only: the read must see the latest writes (a value just stored by another caller).
    Primary,
}

/// Converts the milliseconds left before expiry into a duration for the in-process tier.
pub(crate) fn remaining(remaining_ms: Option<i64>) -> Option<Duration> {
    remaining_ms.map(|ms| Duration::from_millis(ms.max(0).unsigned_abs()))
}

/// When a memoized computation began, on the database: its clock (µs) and its lookup's snapshot. A write of
/// its result is refused for any invalidation the computation may not have seen.
#[derive(Debug, Clone)]
pub(crate) struct Start {
    pub(crate) us: i64,
    pub(crate) snapshot: Option<Arc<str>>,
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
    /// For a memoized result: when its computation began.
    pub(crate) started: Option<&'a Start>,
    /// The entry's tags.
    pub(crate) tags: Option<&'a Tags>,
    /// How long the computation took (µs), for a memoized result.
    pub(crate) compute_us: Option<i64>,
}

impl<'a> Write<'a> {
    /// A plain write of a key in `namespace` (no guard, no tags), for `ttl_ms`.
    pub(crate) fn plain(namespace: &'a str, ttl_ms: Option<i64>) -> Write<'a> {
        Write { namespace, ttl_ms, keep_ms: 0, started: None, tags: None, compute_us: None }
    }

    fn job(&self, key: &str, json: &str) -> WriteJob {
        WriteJob {
            key: key.to_owned(),
            json: json.to_owned(),
            namespace: self.namespace.to_owned(),
            ttl_ms: self.ttl_ms,
            keep_ms: self.keep_ms,
            started_us: self.started.map(|s| s.us),
            started_snapshot: self.started.and_then(|s| s.snapshot.clone()),
            tags: self.tags.cloned(),
            compute_us: self.compute_us,
        }
    }
}

fn no_answer<T>() -> Result<T> {
    Err(CacheError::Config("a coalesced operation got no answer".into()))
}

/// A live entry.
#[derive(Debug, Clone)]
pub(crate) struct LiveEntry {
    pub(crate) json: String,
    /// Milliseconds left before it expires; `None`: never.
    pub(crate) remaining_ms: Option<i64>,
    /// As [`Lookup::as_of`].
    pub(crate) as_of: Option<Instant>,
    pub(crate) meta: EntryMeta,
}

#[derive(Debug)]
pub(crate) struct Server {
    pool: PgPool,
    /// Where the primary may be; see `failover.rs`.
    hosts: Arc<Hosts>,
    maintenance_timeout: Duration,
    batch_size: i64,
    /// Whether single operations are coalesced (see `coalesce.rs`); bulk operations always are.
    coalesce: bool,
    reads: Arc<Queue<Reads>>,
    writes: Arc<Queue<Writes>>,
    deletes: Arc<Queue<Deletes>>,
    op_timeout: Duration,
    /// The operation timeout in milliseconds, as `set_config('lock_timeout', ...)` takes it.
    lock_timeout: String,
    /// Standbys that may answer reads (opt-in).
    replicas: Option<Arc<Replicas>>,
}

impl Server {
    /// A server reached through `pool`; `sender` is the cache's id in the notifications it sends.
    pub(crate) fn new(pool: PgPool, hosts: Arc<Hosts>, config: &Config, sender: u64) -> Server {
        let lock_timeout = config.op_timeout.as_millis().max(1).to_string();
        let limits = Limits {
            max_keys: config.coalesce_max_keys,
            max_batches: config.coalesce_in_flight.min(pool.options().get_max_connections().max(1) as usize),
            op_timeout: config.op_timeout,
        };
        let write_limits = Limits { max_keys: limits.max_keys.min(MAX_KEYS_PER_NOTIFICATION), ..limits };
        let async_commit = config.durability == Durability::AsyncCommit;
        Server {
            reads: Queue::new(Reads::new(config.coalesce_max_bytes, limits.max_keys), pool.clone(), limits, "get"),
            writes: Queue::new(
                Writes { sender, lock_timeout: lock_timeout.clone(), async_commit },
                pool.clone(),
                write_limits,
                "set",
            ),
            deletes: Queue::new(
                Deletes { sender, lock_timeout: lock_timeout.clone() },
                pool.clone(),
                write_limits,
                "delete",
            ),
            pool,
            hosts,
            coalesce: config.coalesce,
            op_timeout: config.op_timeout,
            maintenance_timeout: config.maintenance_timeout,
            lock_timeout,
            batch_size: config.batch_size,
            replicas: None,
        }
    }

    /// A read queue as this server's own, for a standby reached through `pool`.
    pub(crate) fn standby_reads(&self, pool: PgPool) -> Arc<Queue<Reads>> {
        Queue::new(self.reads.kind().clone(), pool, self.reads.limits(), "get")
    }

    /// Lets reads go to `replicas`.
    pub(crate) fn with_replicas(mut self, replicas: Arc<Replicas>) -> Server {
        self.replicas = Some(replicas);
        self
    }

    pub(crate) fn replicas(&self) -> Option<&Replicas> {
        self.replicas.as_deref()
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
        let result = exec::run(&self.pool, operation, self.op_timeout, work).await;
        self.observe(&result);
        result
    }

    /// Looks for a new primary when an outcome suggests the current one is gone (see `failover.rs`).
    fn observe<T>(&self, result: &Result<T>) {
        if let Err(error) = result {
            self.hosts.after_error(error, &self.pool);
        }
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
        crate::schema::migrate(&self.pool).await?;
        if gin_index {
            sqlx::raw_sql(sql::GIN_INDEX).execute(&self.pool).await.map_err(CacheError::db("migrate"))?;
        }
        Ok(())
    }

    /// A live entry.
    pub(crate) async fn get_live(&self, key: &str, from: ReadFrom) -> Result<Option<LiveEntry>> {
        Ok(self.lookup(key, 0, from).await?.live())
    }

    /// Live entries of `keys`, in order (coalesced into as few statements as the limits allow).
    pub(crate) async fn get_many_live(&self, keys: &[&str]) -> Vec<Result<Option<LiveEntry>>> {
        let jobs: Vec<ReadJob> = keys.iter().map(|key| ReadJob::new(*key, 0)).collect();
        let Some((replicas, replica, as_of)) = self.standby() else {
            let found = self.many(&self.reads, jobs).await;
            return found.into_iter().map(|lookup| lookup.map(Lookup::live)).collect();
        };
        replica.sent(jobs.len());
        let answers = self.many_unobserved(&replica.reads, jobs.clone()).await;
        if answers.iter().any(|a| a.is_err()) {
            replicas.failed(replica);
        }
        let mut found: Vec<Option<Result<Lookup>>> =
            answers.into_iter().map(|a| a.ok().map(|l| Ok(l.answered_by_standby(as_of, replicas.max_lag())))).collect();
        // What the standby did not answer, the primary does.
        let missing: Vec<usize> = (0..found.len()).filter(|&i| found[i].is_none()).collect();
        if !missing.is_empty() {
            let retry = missing.iter().map(|&i| jobs[i].clone()).collect();
            for (i, answer) in missing.into_iter().zip(self.many(&self.reads, retry).await) {
                found[i] = Some(answer);
            }
        }
        found.into_iter().map(|lookup| lookup.unwrap_or_else(no_answer).map(Lookup::live)).collect()
    }

    /// A memoized call's lookup: a live entry, or one expired less than `stale_window_ms` ago.
    pub(crate) async fn lookup(&self, key: &str, stale_window_ms: i64, from: ReadFrom) -> Result<Lookup> {
        let job = ReadJob::new(key, stale_window_ms);
        if from == ReadFrom::AnyCopy {
            if let Some((replicas, replica, as_of)) = self.standby() {
                replica.sent(1);
                match self.one_unobserved(&replica.reads, job.clone()).await {
                    Ok(lookup) => return Ok(lookup.answered_by_standby(as_of, replicas.max_lag())),
                    Err(error) => {
                        tracing::debug!(replica = %replica.name, %error, "read replica failed; reading the primary");
                        replicas.failed(replica);
                    }
                }
            }
        }
        self.one(&self.reads, job).await
    }

    /// A standby to read from now, if the cache has any and one is within the lag bound.
    fn standby(&self) -> Option<(&Arc<Replicas>, &crate::replicas::Replica, Instant)> {
        let replicas = self.replicas.as_ref()?;
        let (replica, as_of) = replicas.pick()?;
        Some((replicas, replica, as_of))
    }

    /// Writes `json` under `key` and tells every process; see [`sql::WRITE`]. Whether it wrote: a guarded write
    /// (`write.started_us`) is refused when the key or its namespace was invalidated since.
    pub(crate) async fn write(&self, key: &str, json: &str, write: Write<'_>) -> Result<bool> {
        self.one(&self.writes, write.job(key, json)).await
    }

    /// Writes each `(key, json, how)` (distinct keys); whether each was written.
    pub(crate) async fn write_many(&self, entries: &[(&str, &str, Write<'_>)]) -> Vec<Result<bool>> {
        let jobs = entries.iter().map(|(key, json, write)| write.job(key, json)).collect();
        self.many(&self.writes, jobs).await
    }

    /// Deletes `key`, records its invalidation and tells every process; whether a row was there.
    pub(crate) async fn delete_and_mark(&self, key: &str) -> Result<bool> {
        Ok(self.one(&self.deletes, DeleteJob { key: key.to_owned() }).await? > 0)
    }

    /// [`delete_and_mark`](Self::delete_and_mark) for distinct keys; the rows deleted for each.
    pub(crate) async fn delete_many(&self, keys: &[&str]) -> Vec<Result<u64>> {
        let jobs = keys.iter().map(|key| DeleteJob { key: (*key).to_owned() }).collect();
        self.many(&self.deletes, jobs).await
    }

    /// For reads, writes and deletes: statements that carried more than one operation, and those operations.
    pub(crate) fn shared_statements(&self) -> [(u64, u64); 3] {
        [self.reads.shared(), self.writes.shared(), self.deletes.shared()]
    }

    /// One per-key operation: coalesced with others in flight, or on its own when coalescing is off (or no
    /// tokio runtime is there to run dispatchers).
    async fn one<K: Kind>(&self, queue: &Arc<Queue<K>>, job: K::Job) -> Result<K::Output> {
        let result = self.one_unobserved(queue, job).await;
        self.observe(&result);
        result
    }

    /// [`one`](Self::one), without looking for a new primary after an error (for reads on standbys).
    async fn one_unobserved<K: Kind>(&self, queue: &Arc<Queue<K>>, job: K::Job) -> Result<K::Output> {
        if self.coalesce && tokio::runtime::Handle::try_current().is_ok() {
            queue.submit(vec![job]).await.pop().unwrap_or_else(no_answer)
        } else {
            queue.run_alone(job).await
        }
    }

    /// Many operations of one kind, in as few statements as the limits allow, whether or not single operations
    /// are coalesced.
    async fn many<K: Kind>(&self, queue: &Arc<Queue<K>>, jobs: Vec<K::Job>) -> Vec<Result<K::Output>> {
        let answers = self.many_unobserved(queue, jobs).await;
        if let Some(failed) = answers.iter().find(|a| a.is_err()) {
            self.observe(failed);
        }
        answers
    }

    async fn many_unobserved<K: Kind>(&self, queue: &Arc<Queue<K>>, jobs: Vec<K::Job>) -> Vec<Result<K::Output>> {
        if tokio::runtime::Handle::try_current().is_ok() {
            queue.submit(jobs).await
        } else {
            let mut answers = Vec::with_capacity(jobs.len());
            for job in jobs {
                answers.push(queue.run_alone(job).await);
            }
            answers
        }
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

    /// Rows, live rows and the compute time (µs) held in live rows, per namespace.
    pub(crate) async fn namespace_counts(&self) -> Result<Vec<(String, i64, i64, i64)>> {
        self.maintenance("stats", |conn| {
            Box::pin(sqlx::query_as::<_, (String, i64, i64, i64)>(sql::NAMESPACE_COUNTS).fetch_all(conn))
        })
        .await
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
