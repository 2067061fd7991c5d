//! How every database operation runs: on a pooled connection, within a deadline, and to its end even if its
//! caller is cancelled.
//!
//! **Cancellation.** sqlx closes a connection whose query future is dropped mid-flight (it cannot know where
//! the protocol stands). A caller that is cancelled (an HTTP request dropped by its client, a `timeout`
//! around a call) would then cost a connection, and the next caller would pay for a new one and might be
//! cancelled while connecting: under a storm of cancellations the pool thrashes and the cache stops
//! answering. So the operation runs in the caller's task inside a [`FinishOnDrop`]: if the caller goes away,
//! the rest of the operation moves to a task of its own, which runs the statement to its end and returns the
//! connection to the pool. An operation whose caller left before it got a connection runs nothing.
//!
//! **Deadlines.** The caller waits at most the operation's timeout. The statement is bounded on the server
//! (each write sets `lock_timeout` for its own transaction; the cache's own pool also sets
//! `statement_timeout`), so a write stuck behind a row lock is cancelled there and frees its connection. Only
//! a server that stops answering altogether meets the task's last-resort bound, which drops the connection.
//!
//! **One retry.** A statement that fails because its connection was dead (the server restarted, the
//! connection belonged to a tokio runtime that has shut down) runs once more, on a fresh connection, within
//! the same deadline. Every operation sent this way is idempotent (reads, upserts, deletes, lease
//! take-overs by their own owner), so a retry never does harm; a delete's statement carries a token, so that
//! its retry after a commit whose answer was lost reports the row the first run removed.

use super::detach::FinishOnDrop;
use crate::error::{CacheError, Result};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, Postgres};
use sqlx::Connection;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout_at, Instant};

/// Why an attempt gave no result. Cheap to clone: every caller of a coalesced batch that failed gets the same
/// failure.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// Its caller left before it began: it was not sent.
    Abandoned,
    /// Its deadline passed: waiting for a connection, or on the server.
    Deadline,
    /// The database or the connection failed.
    Db(Arc<sqlx::Error>),
}

impl Failure {
    /// The error a caller of `operation` (bounded by `timeout`) sees.
    pub(crate) fn into_error(self, operation: &'static str, timeout: Duration) -> CacheError {
        match self {
            // An abandoned operation has nobody to tell; should one ask, it timed out from its side.
            Failure::Abandoned | Failure::Deadline => CacheError::Timeout { operation, after: timeout },
            Failure::Db(source) => CacheError::Database { operation, source },
        }
    }

    /// See [`is_connection_error`].
    pub(crate) fn is_connection_error(&self) -> bool {
        matches!(self, Failure::Db(error) if is_connection_error(error))
    }
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Failure {
        match error {
            sqlx::Error::PoolTimedOut => Failure::Deadline,
            error => Failure::Db(Arc::new(error)),
        }
    }
}

/// The future of one statement on a borrowed connection.
pub(crate) type DbFuture<'c, T> = Pin<Box<dyn Future<Output = std::result::Result<T, sqlx::Error>> + Send + 'c>>;

/// Runs `work` on a connection from `pool`, as described in the module docs. `work` may run twice (see
/// "One retry"), so it rebuilds its statement from owned values each time.
pub(crate) async fn run<T, W>(pool: &PgPool, operation: &'static str, timeout: Duration, work: W) -> Result<T>
where
    T: Send + 'static,
    W: for<'c> Fn(&'c mut PgConnection) -> DbFuture<'c, T> + Send + Sync + 'static,
{
    let deadline = Instant::now() + timeout;
    let classify = |failure: Failure| failure.into_error(operation, timeout);
    if tokio::runtime::Handle::try_current().is_err() {
        // Not inside tokio: sqlx cannot run either, and will say so.
        return attempt_holding(pool, &mut None, deadline, timeout, &work, None).await.map_err(classify);
    }
    let pool = pool.clone();
    let operation_future = FinishOnDrop::new(move |abandoned| async move {
        attempt_holding(&pool, &mut None, deadline, timeout, &work, Some(&abandoned)).await
    });
    match timeout_at(deadline, operation_future).await {
        Ok(outcome) => outcome.map_err(classify),
        Err(_) => Err(CacheError::Timeout { operation, after: timeout }),
    }
}

/// One attempt (and the retry) of [`run`], in the current task (for callers that are tasks of their own), on
/// `held` if it holds a connection, else on one from `pool`; after a success the connection is
/// left in `held`, for the caller to run its next statement on or to give back (after a failure, `held` is
/// empty: the connection went back to the pool, which checks it, or was closed).
///
/// A connection given back to the pool costs a round trip: sqlx checks every connection it gets back with a
/// `Sync`. A dispatcher with batches queued up runs them on one connection and saves that check.
pub(crate) async fn attempt_holding<T, W>(
    pool: &PgPool,
    held: &mut Option<PoolConnection<Postgres>>,
    deadline: Instant,
    timeout: Duration,
    work: &W,
    abandoned: Option<&AtomicBool>,
) -> std::result::Result<T, Failure>
where
    W: for<'c> Fn(&'c mut PgConnection) -> DbFuture<'c, T> + Sync,
{
    let mut conn = match held.take() {
        Some(conn) => conn,
        None => timeout_at(deadline, pool.acquire()).await.map_err(|_| Failure::Deadline)??,
    };
    if abandoned.is_some_and(|gone| gone.load(Ordering::Acquire)) {
        // The caller is gone: nobody wants this statement's result.
        return Err(Failure::Abandoned);
    }
    // The last-resort bound (see the module docs), well past the caller's own deadline.
    let hard_deadline = deadline + timeout.saturating_mul(3).max(Duration::from_secs(1));
    let error = match on_connection(&mut conn, hard_deadline, work).await {
        Ok(value) => {
            *held = Some(conn);
            return Ok(value);
        }
        Err(error) => error,
    };
    if !is_connection_error(&error) {
        return Err(error.into());
    }
    conn.close_on_drop();
    drop(conn);
    if Instant::now() >= deadline {
        return Err(error.into());
    }
    tracing::debug!(%error, "a pooled connection was dead; retrying once on a fresh one");
    let options = pool.connect_options();
    let mut fresh =
        timeout_at(deadline, PgConnection::connect_with(&options)).await.map_err(|_| Failure::Deadline)??;
    let outcome = match timeout_at(hard_deadline, work(&mut fresh)).await {
        Ok(outcome) => outcome.map_err(Failure::from),
        Err(_) => Err(Failure::Deadline),
    };
    // The fresh connection is not the pool's to keep: close it politely, off the caller's path.
    tokio::spawn(async move {
        let _ = fresh.close().await;
    });
    outcome
}

async fn on_connection<T, W>(
    conn: &mut PoolConnection<Postgres>,
    hard_deadline: Instant,
    work: &W,
) -> std::result::Result<T, sqlx::Error>
where
    W: for<'c> Fn(&'c mut PgConnection) -> DbFuture<'c, T> + Sync,
{
    match timeout_at(hard_deadline, work(conn)).await {
        Ok(outcome) => outcome,
        Err(_) => {
            // Dropping the statement mid-flight leaves the connection unusable.
            conn.close_on_drop();
            Err(sqlx::Error::PoolTimedOut)
        }
    }
}

/// Whether `error` means the connection itself failed before any result arrived, so that the same
/// statement on another connection may well succeed.
pub(crate) fn is_connection_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 57P01-03: the server is shutting down, crashed, or not accepting connections yet; class 08:
            // connection exceptions.
            matches!(&*code, "57P01" | "57P02" | "57P03") || code.starts_with("08")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_are_told_apart() {
        let io = sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "gone"));
        assert!(is_connection_error(&io));
        assert!(!is_connection_error(&sqlx::Error::RowNotFound));
        assert!(!is_connection_error(&sqlx::Error::PoolTimedOut));
    }
}
