//! Coalescing: many callers' operations of one kind, sent as one statement.
//!
//! Every round trip to PostgreSQL costs a backend wake-up and a network turn whatever it carries, so under
//! many concurrent callers the cost is per statement, not per row. A [`Queue`] collects the operations
//! issued while earlier batches are in flight and sends them together as soon as a dispatcher is free, the
//! way DataLoader and group commit work. There is no timer: a lone caller finds an idle queue, its batch of
//! one leaves at once (as the one-key statement, see [`Kind::run`]) and it pays no added latency.
//!
//! **Dispatchers.** At most `max_batches` batches per queue (`PgCacheBuilder::coalesce_in_flight`) are in
//! flight, each on a pooled connection through [`exec::attempt_holding`] (so a batch gets the same deadline and
//! the same one retry on a dead connection as a single operation).
//! - A lone operation runs its batch of one in the caller's own task (no task switch; if the caller is
//!   cancelled the batch finishes in a task of its own, see `detach.rs`). It is lone when nothing waits, a
//!   slot is free and each statement in flight carries one operation: a few callers, each on a connection.
//! - Otherwise operations queue, and dispatcher tasks take them in batches as slots free. A dispatcher yields
//!   once before it looks at the queue, and once more before it ends on an empty queue: the callers a batch
//!   has just answered are ready to run on the same worker, and their next operations then share one
//!   statement instead of each taking a slot for one key.
//! - A dispatcher keeps its connection from one batch to the next (for up to a second, and only while the
//!   pool has connections to spare): sqlx checks every connection it gets back with a round trip of its own,
//!   which would otherwise double the round trips under load.
//! - A caller that left before its batch was formed is not sent at all.
//!
//! **Bounds.** A batch holds at most `max_keys` operations, and no more of a kind's budget than it allows (the
//! bytes a read may bring back, see `batch.rs`): a job the statement defers because its row would not fit goes
//! back to the front of the queue knowing its size, so the next batch makes room for it or sends it alone.
//! The first job of a batch is always taken, so every job makes progress; a caller waits at most its own
//! operation timeout, queued or not.
//!
//! **Errors.** A batch that fails as a whole for a reason other than its connection is run again one
//! operation at a time (for kinds where one operation can fail alone), so that a bad operation fails only
//! its own caller.

use crate::server::detach::FinishOnDrop;
use crate::server::exec::{self, DbFuture};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, Postgres};
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The longest a dispatcher keeps one connection for batch after batch.
const HOLD_AT_MOST: Duration = Duration::from_secs(1);

/// What one caller gets back: its output, or the error of the statement that carried it.
pub(crate) type Answer<O> = std::result::Result<O, sqlx::Error>;

/// What a batch's statement gave one job.
#[derive(Debug, Clone)]
pub(crate) enum Outcome<O> {
    Done(O),
    /// Not sent back, because its row (`bytes` long) would have taken the response past the batch's budget.
    Deferred {
        bytes: usize,
    },
}

/// One kind of coalesced operation: what a job is, and how a batch of them becomes one statement.
pub(crate) trait Kind: Send + Sync + 'static {
    type Job: Send + Sync + 'static;
    type Output: Send + 'static;
    /// What the statement binds, built once per batch from its jobs (it may be sent twice; see `exec`).
    type Params: Send + Sync + 'static;

    /// Whether two jobs of the same key may share a batch. Writes and deletes may not: one statement cannot
    /// touch a row twice, and each caller must get its own write's result.
    const SAME_KEY_SHARES: bool;
    /// Whether a failed batch is retried one job at a time, because one job can fail alone.
    const SPLIT_ON_ERROR: bool;

    fn key(job: &Self::Job) -> &str;

    fn params(&self, jobs: &[Self::Job]) -> Self::Params;

    /// How much of a batch's [`budget`](Self::budget) `job` may take.
    fn weight(&self, _job: &Self::Job) -> usize {
        0
    }

    /// The most weight one batch carries (its first job is taken whatever its weight).
    fn budget(&self) -> usize {
        usize::MAX
    }

    /// Notes on a job the statement deferred how large its row turned out to be, for the next batch to make
    /// room.
    fn deferred(_job: &mut Self::Job, _bytes: usize) {}

    /// Runs one batch; one outcome per job in order. A batch of one job sends the one-key statement, which
    /// never defers.
    fn run<'c>(
        conn: &'c mut PgConnection,
        params: &'c Self::Params,
    ) -> impl Future<Output = Answer<Vec<Outcome<Self::Output>>>> + Send + 'c;
}

/// How far coalescing may go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Operations per statement.
    pub(crate) max_keys: usize,
    /// Batches in flight at once per queue (each holds a pooled connection while it runs).
    pub(crate) max_batches: usize,
    /// Each operation's time limit, queueing included.
    pub(crate) op_timeout: Duration,
}

struct Pending<K: Kind> {
    job: K::Job,
    reply: oneshot::Sender<Answer<K::Output>>,
    deadline: Instant,
}

struct State<K: Kind> {
    pending: VecDeque<Pending<K>>,
    /// Batches running: dispatcher tasks alive, and callers running their own batch of one.
    running: usize,
    /// Operations in the batches now running.
    carried: usize,
}

pub(crate) struct Queue<K: Kind> {
    kind: K,
    pool: PgPool,
    limits: Limits,
    operation: &'static str,
    state: Mutex<State<K>>,
    /// Statements that carried more than one operation, and the operations they carried.
    shared_statements: AtomicU64,
    shared_operations: AtomicU64,
}

impl<K: Kind> std::fmt::Debug for Queue<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("operation", &self.operation).field("limits", &self.limits).finish()
    }
}

impl<K: Kind> Queue<K> {
    pub(crate) fn new(kind: K, pool: PgPool, limits: Limits, operation: &'static str) -> Arc<Queue<K>> {
        Arc::new(Queue {
            kind,
            pool,
            limits,
            operation,
            state: Mutex::new(State { pending: VecDeque::new(), running: 0, carried: 0 }),
            shared_statements: AtomicU64::new(0),
            shared_operations: AtomicU64::new(0),
        })
    }

    /// Statements that carried more than one operation so far, and how many operations they carried.
    pub(crate) fn kind(&self) -> &K {
        &self.kind
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    pub(crate) fn shared(&self) -> (u64, u64) {
        (self.shared_statements.load(Ordering::Relaxed), self.shared_operations.load(Ordering::Relaxed))
    }

    fn state(&self) -> MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `job` as a statement of its own, without queueing.
    pub(crate) async fn run_alone(&self, job: K::Job) -> crate::Result<K::Output> {
        let work = statement::<K>(self.kind.params(std::slice::from_ref(&job)));
        let outputs = exec::run(&self.pool, self.operation, self.limits.op_timeout, work).await?;
        match outputs.into_iter().next() {
            Some(Outcome::Done(output)) => Ok(output),
            _ => Err(crate::CacheError::Database {
                operation: self.operation,
                source: sqlx::Error::Protocol("a statement returned no row for its key".into()),
            }),
        }
    }

    /// Queues `jobs` (in order, so that they tend to share batches) and waits for their answers, each within
    /// the operation timeout. Must run inside a tokio runtime.
    pub(crate) async fn submit(self: &Arc<Self>, jobs: Vec<K::Job>) -> Vec<crate::Result<K::Output>> {
        let deadline = Instant::now() + self.limits.op_timeout;
        let mut answers = Vec::with_capacity(jobs.len());
        let mut own_batch = Vec::new();
        {
            let mut state = self.state();
            // A lone operation runs its batch of one itself, in the caller's task: no task switch, so a lone
            // caller pays nothing for coalescing. It is alone when nothing waits, a slot is free, and every
            // statement in flight carries a single operation (a few callers, each with its own connection).
            // Past that, callers queue, so that those one finished batch wakes share the next statement rather
            // than each taking a slot for one key.
            let inline = jobs.len() == 1
                && state.pending.is_empty()
                && state.running < self.limits.max_batches
                && state.carried < self.limits.max_batches;
            if inline {
                state.running += 1;
                state.carried += 1;
            }
            for job in jobs {
                let (reply, answer) = oneshot::channel();
                let pending = Pending { job, reply, deadline };
                if inline {
                    own_batch.push(pending);
                } else {
                    state.pending.push_back(pending);
                }
                answers.push(answer);
            }
            if !inline {
                self.start_dispatchers(&mut state);
            }
        }
        if !own_batch.is_empty() {
            let queue = Arc::clone(self);
            let own = FinishOnDrop::new(move |_| async move {
                let slot = InlineSlot(Arc::clone(&queue));
                queue.run_batch(own_batch, &mut None).await;
                drop(slot);
            });
            // Past the deadline the caller stops waiting (its answer below is a timeout); the batch finishes
            // in a task of its own.
            let _ = tokio::time::timeout_at(deadline, own).await;
        }
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            results.push(self.await_answer(answer, deadline).await);
        }
        results
    }

    async fn await_answer(
        &self,
        answer: oneshot::Receiver<Answer<K::Output>>,
        deadline: Instant,
    ) -> crate::Result<K::Output> {
        let (operation, after) = (self.operation, self.limits.op_timeout);
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(Ok(output))) => Ok(output),
            Ok(Ok(Err(sqlx::Error::PoolTimedOut))) | Err(_) => Err(crate::CacheError::Timeout { operation, after }),
            Ok(Ok(Err(source))) => Err(crate::CacheError::Database { operation, source }),
            // The dispatcher panicked or its runtime is shutting down.
            Ok(Err(_)) => Err(crate::CacheError::Database { operation, source: sqlx::Error::WorkerCrashed }),
        }
    }

    fn start_dispatchers(self: &Arc<Self>, state: &mut State<K>) {
        // A dispatcher is running a batch or about to take the next one, never idle: so jobs that arrive while
        // every dispatcher is busy get a new one, up to the cap, and only then wait to be coalesced.
        let wanted = (state.running + state.pending.len().div_ceil(self.limits.max_keys)).min(self.limits.max_batches);
        while state.running < wanted {
            state.running += 1;
            tokio::spawn(Arc::clone(self).dispatch());
        }
    }

    /// A dispatcher: takes batches and runs them until the queue stays empty.
    async fn dispatch(self: Arc<Self>) {
        let _slot = Slot(&self);
        // Callers woken together (by the batch that just answered them) are ready to run on this worker: let
        // them queue their operations before taking the batch.
        tokio::task::yield_now().await;
        // The connection of the last batch, kept for the next one (see `exec::attempt_holding`), and since when.
        let (mut held, mut held_since) = (None, Instant::now());
        loop {
            let batch = match self.take_batch(false) {
                Some(batch) => batch,
                None => {
                    // The callers the last batch answered may not have run yet: give them one turn to send
                    // their next operations, which this connection can then carry.
                    tokio::task::yield_now().await;
                    match self.take_batch(true) {
                        Some(batch) => batch,
                        None => return,
                    }
                }
            };
            if held.is_none() {
                held_since = Instant::now();
            }
            let carried = Carried(&self, batch.len());
            self.run_batch(batch, &mut held).await;
            drop(carried);
            // Give the connection back between batches when someone else may be waiting for one, and now and
            // then anyway, so that the pool's own rules (lifetime, the host it connects to after a failover)
            // reach it under unbroken load too.
            if self.pool_is_taken() || held_since.elapsed() >= HOLD_AT_MOST {
                held = None;
            }
        }
    }

    /// The next batch, or `None` when nothing is waiting (and, if `last`, one dispatcher fewer). Jobs whose
    /// callers left are dropped here; jobs of a key already in the batch wait for the next one when keys may
    /// not share, and the batch ends before the job that would take it past the kind's budget.
    fn take_batch(&self, last: bool) -> Option<Vec<Pending<K>>> {
        let mut state = self.state();
        let mut batch = Vec::new();
        let mut keys = HashSet::new();
        let mut skipped = Vec::new();
        let (budget, mut used) = (self.kind.budget(), 0usize);
        while batch.len() < self.limits.max_keys {
            let Some(next) = state.pending.pop_front() else { break };
            if next.reply.is_closed() {
                continue;
            }
            if !K::SAME_KEY_SHARES && !keys.insert(K::key(&next.job).to_owned()) {
                skipped.push(next);
                continue;
            }
            let weight = self.kind.weight(&next.job);
            if !batch.is_empty() && used.saturating_add(weight) > budget {
                state.pending.push_front(next);
                break;
            }
            used = used.saturating_add(weight);
            batch.push(next);
        }
        for pending in skipped.into_iter().rev() {
            state.pending.push_front(pending);
        }
        if batch.is_empty() {
            if last {
                state.running -= 1;
            }
            return None;
        }
        state.carried += batch.len();
        Some(batch)
    }

    /// Whether every connection of the pool is out.
    fn pool_is_taken(&self) -> bool {
        self.pool.num_idle() == 0 && self.pool.size() >= self.pool.options().get_max_connections()
    }

    /// Runs one batch, on `held` if it holds a connection (and leaves it there after a success).
    async fn run_batch(self: &Arc<Self>, batch: Vec<Pending<K>>, held: &mut Option<PoolConnection<Postgres>>) {
        let deadline = batch.iter().map(|p| p.deadline).max().unwrap_or_else(Instant::now);
        let (jobs, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.job, (p.reply, p.deadline))).unzip();
        match self.execute(&jobs, deadline, held).await {
            Ok(outputs) => self.answer(jobs, replies, outputs),
            Err(error) if K::SPLIT_ON_ERROR && jobs.len() > 1 && !exec::is_connection_error(&error) => {
                for (job, (reply, deadline)) in jobs.into_iter().zip(replies) {
                    match self.execute(std::slice::from_ref(&job), deadline, held).await {
                        Ok(outputs) => self.answer(vec![job], vec![(reply, deadline)], outputs),
                        Err(error) => {
                            let _ = reply.send(Err(error));
                        }
                    }
                }
            }
            Err(error) => {
                for (reply, _) in replies {
                    let _ = reply.send(Err(duplicate(&error)));
                }
            }
        }
    }

    /// Sends each caller its output; jobs the batch deferred go back to the front of the queue.
    fn answer(
        self: &Arc<Self>,
        jobs: Vec<K::Job>,
        replies: Vec<(oneshot::Sender<Answer<K::Output>>, Instant)>,
        outputs: Vec<Outcome<K::Output>>,
    ) {
        let mut deferred = Vec::new();
        let mut outputs = outputs.into_iter();
        for (mut job, (reply, deadline)) in jobs.into_iter().zip(replies) {
            match outputs.next() {
                Some(Outcome::Done(output)) => {
                    let _ = reply.send(Ok(output));
                }
                Some(Outcome::Deferred { bytes }) => {
                    K::deferred(&mut job, bytes);
                    deferred.push(Pending { job, reply, deadline });
                }
                None => {
                    let _ =
                        reply.send(Err(sqlx::Error::Protocol("a batch returned fewer rows than it had jobs".into())));
                }
            }
        }
        if !deferred.is_empty() {
            let mut state = self.state();
            for pending in deferred.into_iter().rev() {
                state.pending.push_front(pending);
            }
            // This dispatcher is still running and will take them next.
        }
    }

    async fn execute(
        &self,
        jobs: &[K::Job],
        deadline: Instant,
        held: &mut Option<PoolConnection<Postgres>>,
    ) -> Answer<Vec<Outcome<K::Output>>> {
        if jobs.len() > 1 {
            self.shared_statements.fetch_add(1, Ordering::Relaxed);
            self.shared_operations.fetch_add(jobs.len() as u64, Ordering::Relaxed);
            crate::observe::metrics::coalesced(self.operation, jobs.len());
        }
        let work = statement::<K>(self.kind.params(jobs));
        exec::attempt_holding(&self.pool, held, deadline, self.limits.op_timeout, &work, None).await
    }
}

/// The statement of one batch, as `exec` runs it (possibly twice, so it shares its parameters).
fn statement<K: Kind>(
    params: K::Params,
) -> impl for<'c> Fn(&'c mut PgConnection) -> DbFuture<'c, Vec<Outcome<K::Output>>> + Send + Sync + 'static {
    let params = Arc::new(params);
    move |conn| {
        let params = Arc::clone(&params);
        Box::pin(async move { K::run(conn, &params).await })
    }
}

/// The slot of a caller that ran its own batch (and its one operation): given back when the batch is done
/// (or abandoned), and with it, a dispatcher for whatever queued up meanwhile.
struct InlineSlot<K: Kind>(Arc<Queue<K>>);

impl<K: Kind> Drop for InlineSlot<K> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.running = state.running.saturating_sub(1);
        state.carried = state.carried.saturating_sub(1);
        if !state.pending.is_empty() && tokio::runtime::Handle::try_current().is_ok() {
            self.0.start_dispatchers(&mut state);
        }
    }
}

/// Counts a running batch's operations out when it is done (or abandoned).
struct Carried<'a, K: Kind>(&'a Queue<K>, usize);

impl<K: Kind> Drop for Carried<'_, K> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.carried = state.carried.saturating_sub(self.1);
    }
}

/// Counts a dispatcher out if it panics (a normal exit is counted by `take_batch`), so the queue starts a
/// new one on the next submission.
struct Slot<'a, K: Kind>(&'a Queue<K>);

impl<K: Kind> Drop for Slot<'_, K> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut state = self.0.state();
            state.running = state.running.saturating_sub(1);
        }
    }
}

/// A copy of `error` for each caller of a failed batch (`sqlx::Error` is not `Clone`). Keeps what callers and
/// logs look at: the kind of failure, the message and a database error's SQLSTATE.
pub(crate) fn duplicate(error: &sqlx::Error) -> sqlx::Error {
    match error {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::WorkerCrashed => sqlx::Error::WorkerCrashed,
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        sqlx::Error::Database(db) => sqlx::Error::Database(Box::new(SharedDbError {
            message: db.message().to_owned(),
            code: db.code().map(|code| code.into_owned()),
        })),
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// A database error handed to each caller of a failed batch.
#[derive(Debug)]
struct SharedDbError {
    message: String,
    code: Option<String>,
}

impl std::fmt::Display for SharedDbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SharedDbError {}

impl sqlx::error::DatabaseError for SharedDbError {
    fn message(&self) -> &str {
        &self.message
    }
    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.code.as_deref().map(std::borrow::Cow::Borrowed)
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::batch::{ReadJob, Reads};

    /// A read queue over a pool that never connects: enough to form batches.
    fn read_queue(max_bytes: usize, max_keys: usize) -> Arc<Queue<Reads>> {
        let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://nobody@127.0.0.1:9/none").unwrap();
        let limits = Limits { max_keys, max_batches: 1, op_timeout: Duration::from_secs(1) };
        Queue::new(Reads::new(max_bytes, max_keys), pool, limits, "get")
    }

    fn queued(
        queue: &Queue<Reads>,
        jobs: &[(&str, Option<usize>)],
    ) -> Vec<oneshot::Receiver<Answer<crate::server::Lookup>>> {
        let mut state = queue.state();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut answers = Vec::new();
        for &(key, bytes) in jobs {
            let (reply, answer) = oneshot::channel();
            state.pending.push_back(Pending { job: ReadJob { bytes, ..ReadJob::new(key, 0) }, reply, deadline });
            answers.push(answer);
        }
        state.running = 1;
        answers
    }

    fn next_keys(queue: &Queue<Reads>) -> Vec<String> {
        queue.take_batch(true).unwrap_or_default().into_iter().map(|p| p.job.key).collect()
    }

    #[tokio::test]
    async fn a_batch_stops_before_the_read_that_would_pass_its_byte_budget() {
        let queue = read_queue(3_000, 100);
        let _answers = queued(&queue, &[("a", Some(2_000)), ("b", Some(900)), ("c", Some(200)), ("d", None)]);
        assert_eq!(next_keys(&queue), ["a", "b"]);
        // A key of unknown length weighs the budget's share of a full batch (30 bytes here).
        assert_eq!(next_keys(&queue), ["c", "d"]);
        assert!(queue.take_batch(true).is_none());
    }

    #[tokio::test]
    async fn a_read_longer_than_the_whole_budget_goes_alone() {
        let queue = read_queue(3_000, 100);
        let _answers = queued(&queue, &[("big", Some(5_000)), ("small", None), ("other", None)]);
        assert_eq!(next_keys(&queue), ["big"]);
        assert_eq!(next_keys(&queue), ["small", "other"]);
    }

    #[tokio::test]
    async fn unknown_lengths_fill_a_batch_up_to_its_key_cap() {
        let queue = read_queue(4 << 20, 128);
        let jobs: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
        let _answers = queued(&queue, &jobs.iter().map(|k| (k.as_str(), None)).collect::<Vec<_>>());
        assert_eq!(next_keys(&queue).len(), 128);
        assert_eq!(next_keys(&queue).len(), 128);
        assert_eq!(next_keys(&queue).len(), 44);
    }

    #[test]
    fn duplicated_errors_keep_their_kind_and_code() {
        let io = sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "gone"));
        assert!(exec::is_connection_error(&duplicate(&io)));
        let db = duplicate(&sqlx::Error::Database(Box::new(SharedDbError {
            message: "relation \"cache_entries\" does not exist".into(),
            code: Some("42P01".into()),
        })));
        let sqlx::Error::Database(db) = db else { panic!("not a database error") };
        assert_eq!(db.code().as_deref(), Some("42P01"));
        assert!(db.message().contains("cache_entries"));
    }
}
