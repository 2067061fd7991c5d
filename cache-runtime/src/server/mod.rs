//! One PostgreSQL server: its pool, and every operation the cache runs on it.
//!
//! This layer knows SQL and nothing else: no keys are checked here, no in-process tier or counter is
//! touched, and it does not know which shard or replica it is. [`PgCache`](crate::PgCache) does that above
//! it (through `route/`), and calls a `Server` for the I/O. Each operation goes through [`exec::run`] or a
//! coalescing queue ([`coalesce`]): cancellation-safe, within its timeout, retried once on a dead connection.
//!
//! - `mod.rs` (here): the server, and its coalesced per-key operations (reads, writes, deletes);
//! - `reads.rs`, `writes.rs`: how a batch of each becomes one statement;
//! - `statements.rs`: every other statement (marks, tags, triggers, maintenance, reports, leases);
//! - `semantic.rs`: semantic entries' texts and vectors (`cache_semantic`);
//! - `coalesce/`, `exec.rs`, `detach.rs`: how operations share statements, run, and survive cancellation;
//! - `sql.rs`: the SQL text.

pub(crate) mod coalesce;
pub(crate) mod detach;
pub(crate) mod exec;
#[cfg(feature = "test-support")]
pub(crate) mod lost;
pub(crate) mod reads;
mod rekey;
pub(crate) mod schema;
pub(crate) mod semantic;
pub(crate) mod sql;
mod statements;
mod tenants;
pub(crate) mod warm;
pub(crate) mod writes;

use crate::config::{Config, Durability};
use crate::entry::{Lookup, Write};
use crate::error::{CacheError, Result};
use coalesce::{Kind, Limits, Queue};
use exec::DbFuture;
use reads::{ReadJob, Reads};
use sqlx::postgres::{PgConnection, PgPool};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use warm::Warm;
use writes::{Deletes, Writes};

/// The most keys one write or delete statement carries: its notification names each in 17 bytes, and must
/// stay under PostgreSQL's 8,000-byte payload limit.
pub(crate) const MAX_KEYS_PER_NOTIFICATION: usize = 400;

/// Told of every failed operation on a server, with the server's pool: the route layer uses it to look for a
/// new primary when an error says the current one is gone (see `route/failover.rs`).
pub(crate) trait OnError: Send + Sync + std::fmt::Debug {
    fn failed(&self, error: &CacheError, pool: &PgPool);
}

/// Nobody to tell.
impl OnError for () {
    fn failed(&self, _: &CacheError, _: &PgPool) {}
}

#[derive(Debug)]
pub(crate) struct Server {
    pool: PgPool,
    on_error: Box<dyn OnError>,
    maintenance_timeout: Duration,
    batch_size: i64,
    /// Whether single operations are coalesced (see `coalesce/`); bulk operations always are.
    coalesce: bool,
    reads: Arc<Queue<Reads>>,
    writes: Arc<Queue<Writes>>,
    deletes: Arc<Queue<Deletes>>,
    op_timeout: Duration,
    /// The operation timeout in milliseconds, as `set_config('lock_timeout', ...)` takes it.
    lock_timeout: String,
}

impl Server {
    /// A server reached through `pool`; `sender` is the cache's id in the notifications it sends.
    pub(crate) fn new(pool: PgPool, config: &Config, sender: u64, on_error: Box<dyn OnError>) -> Server {
        let lock_timeout = config.op_timeout.as_millis().max(1).to_string();
        let limits = Limits {
            max_keys: config.coalesce_max_keys,
            max_batches: config.coalesce_in_flight.min(pool.options().get_max_connections().max(1) as usize),
            op_timeout: config.op_timeout,
        };
        let write_limits = Limits { max_keys: limits.max_keys.min(MAX_KEYS_PER_NOTIFICATION), ..limits };
        let async_commit = config.durability == Durability::AsyncCommit;
        let writes = Writes { sender, lock_timeout: lock_timeout.clone(), async_commit };
        let deletes = Deletes { sender, lock_timeout: lock_timeout.clone(), statements: AtomicU64::new(0) };
        // One stash of warm connections for the pool, shared by its three queues.
        let warm = Warm::new(pool.clone(), limits.max_batches);
        Server {
            reads: Queue::new(Reads, Arc::clone(&warm), limits, "get"),
            writes: Queue::new(writes, Arc::clone(&warm), write_limits, "set"),
            deletes: Queue::new(deletes, warm, write_limits, "delete"),
            pool,
            on_error,
            coalesce: config.coalesce,
            op_timeout: config.op_timeout,
            maintenance_timeout: config.maintenance_timeout,
            lock_timeout,
            batch_size: config.batch_size,
        }
    }

    /// A read queue like this server's own, for a standby reached through `pool`.
    pub(crate) fn standby_reads(&self, pool: PgPool) -> Arc<Queue<Reads>> {
        let warm = Warm::new(pool, self.reads.limits().max_batches);
        Queue::new(self.reads.kind().clone(), warm, self.reads.limits(), "get")
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

    /// Tells `on_error` of a failure.
    fn observe<T>(&self, result: &Result<T>) {
        if let Err(error) = result {
            self.on_error.failed(error, &self.pool);
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
        schema::migrate(&self.pool).await?;
        if gin_index {
            sqlx::raw_sql(sql::GIN_INDEX).execute(&self.pool).await.map_err(CacheError::db("migrate"))?;
        }
        Ok(())
    }

    /// A read of one key (see [`ReadJob`]).
    pub(crate) async fn read(&self, job: ReadJob) -> Result<Lookup> {
        self.one(&self.reads, job).await
    }

    /// Reads of live entries of `keys`, in order (in as few statements as the limits allow).
    pub(crate) async fn read_many(&self, keys: &[&str]) -> Vec<Result<Lookup>> {
        self.many(&self.reads, keys.iter().map(|key| ReadJob::live(*key)).collect()).await
    }

    /// [`read`](Self::read) through a standby's queue: a failure is the caller's to handle, and says
    /// nothing about this server.
    pub(crate) async fn read_on(&self, standby: &Arc<Queue<Reads>>, job: ReadJob) -> Result<Lookup> {
        self.one_unobserved(standby, job).await
    }

    /// [`read_many`](Self::read_many) through a standby's queue, unobserved as [`read_on`](Self::read_on).
    pub(crate) async fn read_many_on(&self, standby: &Arc<Queue<Reads>>, keys: &[&str]) -> Vec<Result<Lookup>> {
        self.many_unobserved(standby, keys.iter().map(|key| ReadJob::live(*key)).collect()).await
    }

    /// Writes an entry and tells every process (see [`sql::WRITE`]). Whether it wrote: a guarded write
    /// (`write.started`) is refused when the key, its namespace or one of its tags was invalidated since.
    pub(crate) async fn write(&self, write: Write) -> Result<bool> {
        self.one(&self.writes, write).await
    }

    /// [`write`](Self::write) for entries of distinct keys; whether each was written.
    pub(crate) async fn write_many(&self, writes: Vec<Write>) -> Vec<Result<bool>> {
        self.many(&self.writes, writes).await
    }

    /// Deletes `key`, records its invalidation and tells every process; whether a row was there.
    pub(crate) async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.one(&self.deletes, key.to_owned()).await? > 0)
    }

    /// [`delete`](Self::delete) for distinct keys; the rows deleted for each.
    pub(crate) async fn delete_many(&self, keys: &[&str]) -> Vec<Result<u64>> {
        self.many(&self.deletes, keys.iter().map(|key| (*key).to_owned()).collect()).await
    }

    /// For reads, writes and deletes: statements that carried more than one operation, and those operations.
    #[cfg(feature = "test-support")]
    pub(crate) fn shared_statements(&self) -> [(u64, u64); 3] {
        [self.reads.shared(), self.writes.shared(), self.deletes.shared()]
    }

    /// Connections taken warm, kept warm, and warm now (see `warm.rs`).
    #[cfg(feature = "test-support")]
    pub(crate) fn warm_counts(&self) -> [u64; 3] {
        self.reads.warm_counts()
    }

    /// One per-key operation: coalesced with others in flight, or on its own when coalescing is off (or no
    /// tokio runtime is there to run dispatchers).
    async fn one<K: Kind>(&self, queue: &Arc<Queue<K>>, job: K::Job) -> Result<K::Output> {
        let result = self.one_unobserved(queue, job).await;
        self.observe(&result);
        result
    }

    async fn one_unobserved<K: Kind>(&self, queue: &Arc<Queue<K>>, job: K::Job) -> Result<K::Output> {
        if self.coalesce && tokio::runtime::Handle::try_current().is_ok() {
            queue.submit(vec![job]).await.pop().unwrap_or_else(|| Err(no_answer(queue)))
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
}

/// A queue that gave fewer answers than it was given jobs: a bug of this crate, never the caller's.
fn no_answer<K: Kind>(queue: &Queue<K>) -> CacheError {
    CacheError::Internal(format!("a coalesced operation got no answer from {queue:?}"))
}

/// [`drain_invalidations`] on a connection of `pool`, within `timeout` (which bounds its lock waits too).
pub(crate) async fn drain_invalidations_on(pool: &PgPool, timeout: Duration) -> Result<u64> {
    let lock_timeout = timeout.as_millis().max(1).to_string();
    exec::run(pool, "drain_invalidations", timeout, move |conn| {
        Box::pin(drain_invalidations(conn, lock_timeout.clone()))
    })
    .await
}

/// Drains the queue of tag invalidations that transactions under REPEATABLE READ or SERIALIZABLE left
/// (migration 0012) on `conn`, batch after batch until one comes back short; returns the rows drained. The
/// connection must not be inside a transaction of a snapshot isolation level (the function refuses).
pub(crate) async fn drain_invalidations(conn: &mut PgConnection, lock_timeout_ms: String) -> sqlx::Result<u64> {
    let mut drained = 0;
    loop {
        let rows: i64 = sqlx::query_scalar(sql::DRAIN_INVALIDATIONS)
            .bind(&lock_timeout_ms)
            .bind(sql::DRAIN_BATCH)
            .fetch_one(&mut *conn)
            .await?;
        drained += rows.unsigned_abs();
        if rows < i64::from(sql::DRAIN_BATCH) {
            return Ok(drained);
        }
    }
}
