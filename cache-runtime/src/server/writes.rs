//! Coalesced writes and deletes (see `coalesce/`): many keys in one call of a SQL function, and the one-key
//! function for a batch of one. Each statement also sends the notification that names every key it
//! changed, from inside its own transaction. A batch tries its jobs' locks ([`Locking::Try`]): a job whose
//! lock is held comes back [`Outcome::Blocked`], for the queue to send it again alone.

use super::coalesce::{Kind, Locking, Outcome};
use super::sql;
use crate::channel::keys_payload;
use crate::entry::Write;
use crate::key::namespace_of;
use crate::ttl::Ttl;
use sqlx::postgres::PgConnection;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes; one notification per batch names every key written.
#[derive(Debug)]
pub(crate) struct Writes {
    pub(crate) sender: u64,
    /// The operation timeout in milliseconds, as `set_config('lock_timeout', ...)` takes it.
    pub(crate) lock_timeout: String,
    pub(crate) async_commit: bool,
}

/// What one write statement binds: the batch's writes as they came, and the notification.
pub(crate) struct WriteParams {
    writes: Vec<Write>,
    notify: String,
    lock_timeout: String,
    async_commit: bool,
    try_locks: bool,
}

/// The lock timeout and whether to try the locks, for `locking`; `op_timeout` is the kind's own timeout (in
/// ms, as `set_config` takes it), which still bounds a batch's waits for rows.
fn locks(locking: Locking, op_timeout: &str) -> (String, bool) {
    match locking {
        Locking::Wait(limit) => (limit.as_millis().max(1).to_string(), false),
        Locking::Try => (op_timeout.to_owned(), true),
    }
}

/// A statement's answer for one job: NULL when the job did not get its locks.
fn outcome<T>(answer: Option<T>) -> Outcome<T> {
    answer.map_or(Outcome::Blocked, Outcome::Done)
}

impl Kind for Writes {
    type Job = Write;
    type Output = bool;
    type Params = WriteParams;
    const SAME_KEY_SHARES: bool = false;
    const SPLIT_ON_ERROR: bool = true;

    fn key(job: &Write) -> &str {
        &job.key
    }

    /// A write takes a lock (and a bucket's) per tag: a batch carries at most
    /// [`cache_rules::MAX_TAG_LOCKS_PER_BATCH`] tags, so that its locks stay bounded.
    fn weight(&self, job: &Write) -> usize {
        job.meta.tags.as_deref().map_or(0, <[String]>::len)
    }

    fn budget(&self) -> usize {
        cache_rules::MAX_TAG_LOCKS_PER_BATCH
    }

    fn params(&self, jobs: &[Write], locking: Locking) -> WriteParams {
        let (lock_timeout, try_locks) = locks(locking, &self.lock_timeout);
        WriteParams {
            // Cheap: the JSON and the tags are shared, only the keys are copied.
            writes: jobs.to_vec(),
            notify: keys_payload(self.sender, jobs.iter().map(|j| j.key.as_str())),
            lock_timeout,
            async_commit: self.async_commit,
            try_locks,
        }
    }

    async fn run<'c>(conn: &'c mut PgConnection, p: &'c WriteParams) -> sqlx::Result<Vec<Outcome<bool>>> {
        let written: Vec<Option<bool>> = match p.writes.as_slice() {
            [one] => vec![write_one(conn, one, p).await?],
            writes => write_many(conn, writes, p).await?,
        };
        Ok(written.into_iter().map(outcome).collect())
    }
}

/// Milliseconds the row is kept past its expiry.
fn keep_ms(write: &Write) -> i64 {
    Ttl::millis(write.keep).unwrap_or(0)
}

/// [`sql::WRITE`] for one key.
async fn write_one(conn: &mut PgConnection, w: &Write, p: &WriteParams) -> sqlx::Result<Option<bool>> {
    let usage = w.meta.usage.to_columns();
    sqlx::query_scalar::<_, Option<bool>>(sql::WRITE)
        .bind(&w.key)
        .bind(&*w.json)
        .bind(Ttl::millis(w.ttl))
        .bind(keep_ms(w))
        .bind(w.started.as_ref().map(|s| s.us))
        .bind(namespace_of(&w.key))
        .bind(&p.notify)
        .bind(&p.lock_timeout)
        .bind(p.async_commit)
        .bind(w.meta.tags.as_deref())
        .bind(w.meta.compute_us)
        .bind(w.started.as_ref().and_then(|s| s.snapshot.as_deref()))
        .bind(usage[0])
        .bind(usage[1])
        .bind(usage[2])
        .bind(p.try_locks)
        .bind(w.tenant.as_deref())
        .fetch_one(conn)
        .await
}

/// [`sql::WRITE_MANY`]: the same, one array per argument. Tags go as one string per key, joined by U+001F
/// (which tags never hold): SQL arrays of arrays must be rectangular.
async fn write_many(conn: &mut PgConnection, writes: &[Write], p: &WriteParams) -> sqlx::Result<Vec<Option<bool>>> {
    let column = |f: fn(&Write) -> Option<i64>| writes.iter().map(f).collect::<Vec<_>>();
    // Usage: NULL arrays when no write of the batch has any (the common case for `set`).
    let any_usage = writes.iter().any(|w| !w.meta.usage.is_zero());
    let usage =
        |field: usize| any_usage.then(|| writes.iter().map(|w| w.meta.usage.to_columns()[field]).collect::<Vec<_>>());
    sqlx::query_scalar::<_, Vec<Option<bool>>>(sql::WRITE_MANY)
        .bind(writes.iter().map(|w| w.key.as_str()).collect::<Vec<_>>())
        .bind(writes.iter().map(|w| &*w.json).collect::<Vec<_>>())
        .bind(column(|w| Ttl::millis(w.ttl)))
        .bind(writes.iter().map(keep_ms).collect::<Vec<_>>())
        .bind(column(|w| w.started.as_ref().map(|s| s.us)))
        .bind(writes.iter().map(|w| namespace_of(&w.key)).collect::<Vec<_>>())
        .bind(&p.notify)
        .bind(&p.lock_timeout)
        .bind(p.async_commit)
        .bind(writes.iter().map(|w| w.meta.tags.as_ref().map(|t| t.join("\u{1f}"))).collect::<Vec<_>>())
        .bind(column(|w| w.meta.compute_us))
        .bind(writes.iter().map(|w| w.started.as_ref().and_then(|s| s.snapshot.as_deref())).collect::<Vec<_>>())
        .bind(usage(0))
        .bind(usage(1))
        .bind(usage(2))
        .bind(p.try_locks)
        // NULL when no write of the batch has a tenant (a cache without tenants).
        .bind(
            writes
                .iter()
                .any(|w| w.tenant.is_some())
                .then(|| writes.iter().map(|w| w.tenant.as_deref()).collect::<Vec<_>>()),
        )
        .fetch_one(conn)
        .await
}

/// Deletes, each also an invalidation of its key; one notification per batch.
#[derive(Debug)]
pub(crate) struct Deletes {
    pub(crate) sender: u64,
    pub(crate) lock_timeout: String,
    /// Statements built so far: with the sender, each statement's token.
    pub(crate) statements: AtomicU64,
}

pub(crate) struct DeleteParams {
    keys: Vec<String>,
    notify: String,
    lock_timeout: String,
    try_locks: bool,
    /// Unique to the statement, the same when `exec` sends it again after a lost answer: the retry of a
    /// delete that committed answers what it did (see `pg_cached_delete` in `migrations/functions.sql`).
    token: String,
}

impl Kind for Deletes {
    /// The key to delete.
    type Job = String;
    type Output = u64;
    type Params = DeleteParams;
    const SAME_KEY_SHARES: bool = false;
    const SPLIT_ON_ERROR: bool = true;

    fn key(job: &String) -> &str {
        job
    }

    fn params(&self, jobs: &[String], locking: Locking) -> DeleteParams {
        let (lock_timeout, try_locks) = locks(locking, &self.lock_timeout);
        DeleteParams {
            keys: jobs.to_vec(),
            notify: keys_payload(self.sender, jobs.iter().map(String::as_str)),
            lock_timeout,
            try_locks,
            token: format!("{:016x}{:016x}", self.sender, self.statements.fetch_add(1, Ordering::Relaxed)),
        }
    }

    async fn run<'c>(conn: &'c mut PgConnection, p: &'c DeleteParams) -> sqlx::Result<Vec<Outcome<u64>>> {
        let deleted: Vec<Option<i64>> = if p.keys.len() == 1 {
            let deleted = sqlx::query_scalar::<_, Option<i64>>(sql::DELETE)
                .bind(&p.keys[0])
                .bind(&p.notify)
                .bind(&p.lock_timeout)
                .bind(p.try_locks)
                .bind(&p.token)
                .fetch_one(conn)
                .await?;
            vec![deleted]
        } else {
            sqlx::query_scalar::<_, Vec<Option<i64>>>(sql::DELETE_MANY)
                .bind(&p.keys)
                .bind(&p.notify)
                .bind(&p.lock_timeout)
                .bind(p.try_locks)
                .bind(&p.token)
                .fetch_one(conn)
                .await?
        };
        #[cfg(feature = "test-support")]
        if let Some(error) = super::lost::lost(&p.keys) {
            return Err(error);
        }
        Ok(deleted.into_iter().map(|n| outcome(n.map(|n| n.max(0).unsigned_abs()))).collect())
    }
}
