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
//!   slot is free and no dispatcher is running: a few callers, each on a connection.
//! - Otherwise operations queue, and dispatcher tasks take them in batches as slots free, at most half the
//!   slots' worth of dispatchers (at least one). Two modes, then: a few callers use every slot, each for its
//!   own statement; many callers are served by fewer, larger statements, and while a dispatcher runs no
//!   caller sends a statement of its own beside it. At 16 callers on a 2-core machine, four statements of
//!   four to five keys with a fifth of the gets sent alone beside them served 30-38k gets/s; two of seven
//!   keys, 44-53k (docs/BENCHMARKS.md, "Half the slots for batches"). When more waits than half the slots
//!   can carry in full batches (bulk calls such as `get_many`), fewer dispatchers would not make fuller
//!   statements, and every slot may run one. A dispatcher yields
//!   once before it looks at the queue, and once more before it ends on an empty queue: the callers a batch
//!   has just answered are ready to run on the same worker, and their next operations then share one
//!   statement instead of each taking a slot for one key.
//! - A dispatcher keeps its connection from one batch to the next (for up to a second, and only while the
//!   pool has connections to spare): sqlx checks every connection it gets back with a round trip of its own,
//!   which would otherwise double the round trips under load. For the same reason a lone caller, and a
//!   dispatcher that ends, leave their connection warm for the next one (`warm.rs`).
//! - A caller that left before its batch was formed is not sent at all.
//!
//! **Bounds.** A batch holds at most `max_keys` operations, and no more of a kind's budget than it allows (the
//! tag locks a batch of writes may take, see `writes.rs`). The first job of a batch is always taken, so every
//! job makes progress; a caller waits at most its own operation timeout, queued or not.
//!
//! **Locks.** A batch of writes or deletes waits for no lock (see [`Locking`]): a job whose key, tag or
//! namespace lock someone else holds comes back [`Outcome::Blocked`] and is sent again alone, in a task of its
//! own (at most half the batch slots' worth at once, see `alone.rs`), waiting for its lock within its own
//! caller's deadline. So one held lock costs only the operations that need it. A caller's own statement (a
//! lone operation, [`Queue::run_alone`]) waits for its locks, as a statement of its own always did.
//!
//! **Errors.** A batch that fails as a whole for a reason other than its connection is run again one
//! operation at a time (for kinds where one operation can fail alone), so that a bad operation fails only
//! its own caller. Every caller of a batch that failed gets the same error (shared, not copied).
//!
//! **Capacity.** The counts of batches running and operations carried change only through a `Permit`
//! (`permit.rs`), given back on drop whatever ends its holder.

use super::detach::FinishOnDrop;
use super::exec::{self, DbFuture, Failure};
use super::warm::{Held, Warm};
use permit::{Permit, State};
use sqlx::postgres::{PgConnection, PgPool};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

mod alone;
mod permit;
mod waiting;

/// What one caller gets back: its output, or why its batch gave it none.
pub(crate) type Answer<O> = std::result::Result<O, Failure>;

/// What a batch's statement gave one job.
#[derive(Debug, Clone)]
pub(crate) enum Outcome<O> {
    Done(O),
    /// Not done, because a lock it needs was held by someone else (the batch tried its locks, see
    /// [`Locking::Try`]): to be sent again alone.
    Blocked,
}

/// How a statement takes the advisory locks of its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Locking {
    /// Waits for each up to this long (the server's `lock_timeout`): a statement that carries only its
    /// caller's operation.
    Wait(Duration),
    /// Waits for none: a job whose lock is held comes back [`Outcome::Blocked`]. Many callers' batches.
    Try,
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

    /// `locking` says how the statement takes its locks (kinds that take none ignore it).
    fn params(&self, jobs: &[Self::Job], locking: Locking) -> Self::Params;

    /// How much of a batch's [`budget`](Self::budget) `job` may take.
    fn weight(&self, _job: &Self::Job) -> usize {
        0
    }

    /// The most weight one batch carries (its first job is taken whatever its weight).
    fn budget(&self) -> usize {
        usize::MAX
    }

    /// Runs one batch; one outcome per job in order. A batch of one job sends the one-key statement.
    fn run<'c>(
        conn: &'c mut PgConnection,
        params: &'c Self::Params,
    ) -> impl Future<Output = Result<Vec<Outcome<Self::Output>>, sqlx::Error>> + Send + 'c;
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

pub(super) struct Pending<K: Kind> {
    job: K::Job,
    reply: oneshot::Sender<Answer<K::Output>>,
    deadline: Instant,
}

pub(crate) struct Queue<K: Kind> {
    kind: K,
    /// The pool's connections, and those left by the last batches for the next (see `warm.rs`); shared by
    /// the pool's queues.
    warm: Arc<Warm>,
    limits: Limits,
    operation: &'static str,
    state: Mutex<State<K>>,
    /// Turns for jobs sent again alone after their batch found their lock held (see `alone.rs`).
    alone: tokio::sync::Semaphore,
    /// Statements that carried more than one operation, and the operations they carried (for the tests; the
    /// `metrics` feature reports the same).
    #[cfg(feature = "test-support")]
    shared: [std::sync::atomic::AtomicU64; 2],
}

impl<K: Kind> std::fmt::Debug for Queue<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("operation", &self.operation).field("limits", &self.limits).finish()
    }
}

impl<K: Kind> Queue<K> {
    pub(crate) fn new(kind: K, warm: Arc<Warm>, limits: Limits, operation: &'static str) -> Arc<Queue<K>> {
        Arc::new(Queue {
            kind,
            warm,
            limits,
            operation,
            state: Mutex::new(State::new()),
            alone: tokio::sync::Semaphore::new(alone::turns(limits.max_batches)),
            #[cfg(feature = "test-support")]
            shared: Default::default(),
        })
    }

    pub(crate) fn kind(&self) -> &K {
        &self.kind
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    fn pool(&self) -> &PgPool {
        self.warm.pool()
    }

    /// See `Warm::counts`.
    #[cfg(feature = "test-support")]
    pub(crate) fn warm_counts(&self) -> [u64; 3] {
        self.warm.counts()
    }

    /// Statements that carried more than one operation so far, and how many operations they carried.
    #[cfg(feature = "test-support")]
    pub(crate) fn shared(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.shared[0].load(Relaxed), self.shared[1].load(Relaxed))
    }

    fn state(&self) -> MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `job` as a statement of its own, without queueing.
    pub(crate) async fn run_alone(&self, job: K::Job) -> crate::Result<K::Output> {
        let locking = Locking::Wait(self.limits.op_timeout);
        let work = statement::<K>(self.kind.params(std::slice::from_ref(&job), locking));
        let outputs = exec::run(self.pool(), self.operation, self.limits.op_timeout, work).await?;
        match outputs.into_iter().next() {
            Some(Outcome::Done(output)) => Ok(output),
            _ => Err(no_row(self.operation)),
        }
    }

    /// Queues `jobs` (in order, so that they tend to share batches) and waits for their answers, each within
    /// the operation timeout. Must run inside a tokio runtime.
    pub(crate) async fn submit(self: &Arc<Self>, jobs: Vec<K::Job>) -> Vec<crate::Result<K::Output>> {
        let deadline = Instant::now() + self.limits.op_timeout;
        let mut answers = Vec::with_capacity(jobs.len());
        let (own_batch, dispatchers) = {
            let mut state = self.state();
            // A lone operation runs its batch of one itself, in the caller's task: no task switch, so a lone
            // caller pays nothing for coalescing. It is alone when nothing waits, a slot is free, and no
            // dispatcher runs (a few callers, each with its own connection). Past that, callers queue, so that
            // those one finished batch wakes share the next statement rather than each taking a slot for one key.
            let inline = jobs.len() == 1
                && state.pending.is_empty()
                && state.dispatching() == 0
                && state.running() < self.limits.max_batches;
            let mut own = inline.then(|| {
                let mut permit = state.take_slot(self, true);
                permit.carry(&mut state, 1);
                (permit, Vec::with_capacity(1))
            });
            for job in jobs {
                let (reply, answer) = oneshot::channel();
                let pending = Pending { job, reply, deadline };
                match &mut own {
                    Some((_, batch)) => batch.push(pending),
                    None => state.pending.push_back(pending),
                }
                answers.push(answer);
            }
            let dispatchers = if own.is_none() { self.dispatchers_wanted(&mut state) } else { Vec::new() };
            (own, dispatchers)
        };
        self.launch(dispatchers);
        if let Some((permit, batch)) = own_batch {
            let queue = Arc::clone(self);
            let own = FinishOnDrop::new(move |_| async move {
                // The caller's own statement: it waits for its locks, within its deadline. On a warm connection
                // if one is idle, left warm for the next caller (before the permit goes, so that a dispatcher it
                // starts can take it).
                let mut held = queue.warm.take();
                queue.run_batch(batch, &mut held, Locking::Wait(queue.limits.op_timeout)).await;
                queue.warm.keep(held);
                drop(permit);
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
        let timeout = self.limits.op_timeout;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(answer)) => answer.map_err(|failure| failure.into_error(self.operation, timeout)),
            Err(_) => Err(crate::CacheError::Timeout { operation: self.operation, after: timeout }),
            // The batch was dropped unanswered: its task panicked, or its runtime is shutting down.
            Ok(Err(_)) => Err(crate::CacheError::Internal(format!(
                "the batch carrying this `{}` ended without an answer (its task panicked or its runtime shut down)",
                self.operation
            ))),
        }
    }

    /// Slots for the dispatchers the queue needs now, taken under the lock; [`launch`](Self::launch) them once
    /// it is released. A dispatcher is running a batch or about to take the next one, never idle: so jobs that
    /// arrive while every dispatcher is busy get a new one, up to the cap (see [`dispatcher_cap`], and no more
    /// than are free), and only then wait to be coalesced.
    fn dispatchers_wanted(self: &Arc<Self>, state: &mut State<K>) -> Vec<Permit<K>> {
        let batches = state.pending.len().div_ceil(self.limits.max_keys);
        let cap = dispatcher_cap(self.limits.max_batches, batches);
        let wanted = (state.dispatching() + batches).min(cap);
        let free = self.limits.max_batches.saturating_sub(state.running());
        let new = wanted.saturating_sub(state.dispatching()).min(free);
        (0..new).map(|_| state.take_slot(self, false)).collect()
    }

    /// Starts a dispatcher for each permit (which it holds until it ends); without a runtime the permits are
    /// simply given back.
    fn launch(self: &Arc<Self>, permits: Vec<Permit<K>>) {
        if permits.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        for permit in permits {
            tokio::spawn(Arc::clone(self).dispatch(permit));
        }
    }

    /// A dispatcher: takes batches and runs them until the queue stays empty.
    async fn dispatch(self: Arc<Self>, mut permit: Permit<K>) {
        // Callers woken together (by the batch that just answered them) are ready to run on this worker: let
        // them queue their operations before taking the batch.
        tokio::task::yield_now().await;
        // The connection of the last batch, kept for the next one (see `exec::attempt_holding`).
        let mut held = self.warm.take();
        loop {
            let batch = match self.take_batch(&mut permit) {
                Some(batch) => batch,
                None => {
                    // The callers the last batch answered may not have run yet: give them one turn to send
                    // their next operations, which this connection can then carry.
                    tokio::task::yield_now().await;
                    match self.take_batch(&mut permit) {
                        Some(batch) => batch,
                        None => {
                            let mut state = self.state();
                            // Checked again under the lock that ends this dispatcher, so that no job can be
                            // queued between the last look and the end and find no dispatcher.
                            if state.pending.is_empty() {
                                permit.retire(&mut state);
                                drop(state);
                                self.warm.keep(held);
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            self.run_batch(batch, &mut held, Locking::Try).await;
            permit.unload(&mut self.state());
            // Give the connection back between batches when someone else may be waiting for one, and now and
            // then anyway (see `warm.rs`).
            if self.warm.pool_is_taken() || held.due_back() {
                held = Held::empty();
            }
        }
    }

    /// The next batch, counted as carried by `permit`, or `None` when nothing is waiting. Jobs whose callers
    /// left are dropped here; jobs of a key already in the batch wait for the next one when keys may not
    /// share, and the batch ends before the job that would take it past the kind's budget (see `waiting.rs`).
    fn take_batch(&self, permit: &mut Permit<K>) -> Option<Vec<Pending<K>>> {
        let mut state = self.state();
        let batch = state.pending.take(self.limits.max_keys, self.kind.budget(), |job| self.kind.weight(job));
        if batch.is_empty() {
            return None;
        }
        permit.carry(&mut state, batch.len());
        Some(batch)
    }

    /// Runs one batch, on `held` if it holds a connection (and leaves it there after a success), taking its
    /// locks as `locking` says.
    async fn run_batch(self: &Arc<Self>, batch: Vec<Pending<K>>, held: &mut Held, locking: Locking) {
        let deadline = batch.iter().map(|p| p.deadline).max().unwrap_or_else(Instant::now);
        let (jobs, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.job, (p.reply, p.deadline))).unzip();
        match self.execute(&jobs, deadline, held, locking).await {
            Ok(outputs) => self.answer(jobs, replies, outputs),
            Err(failure) if K::SPLIT_ON_ERROR && jobs.len() > 1 && !failure.is_connection_error() => {
                for (job, (reply, deadline)) in jobs.into_iter().zip(replies) {
                    match self.execute(std::slice::from_ref(&job), deadline, held, Locking::Try).await {
                        Ok(outputs) => self.answer(vec![job], vec![(reply, deadline)], outputs),
                        Err(failure) => {
                            let _ = reply.send(Err(failure));
                        }
                    }
                }
            }
            Err(failure) => {
                for (reply, _) in replies {
                    let _ = reply.send(Err(failure.clone()));
                }
            }
        }
    }

    /// Sends each caller its output; a job that found its lock held is sent again alone.
    fn answer(
        self: &Arc<Self>,
        jobs: Vec<K::Job>,
        replies: Vec<(oneshot::Sender<Answer<K::Output>>, Instant)>,
        outputs: Vec<Outcome<K::Output>>,
    ) {
        let mut outputs = outputs.into_iter();
        for (job, (reply, deadline)) in jobs.into_iter().zip(replies) {
            match outputs.next() {
                Some(Outcome::Done(output)) => {
                    let _ = reply.send(Ok(output));
                }
                Some(Outcome::Blocked) => self.send_alone(Pending { job, reply, deadline }),
                None => {
                    let missing = sqlx::Error::Protocol("a batch returned fewer rows than it had jobs".into());
                    let _ = reply.send(Err(Failure::Db(Arc::new(missing))));
                }
            }
        }
    }

    async fn execute(
        &self,
        jobs: &[K::Job],
        deadline: Instant,
        held: &mut Held,
        locking: Locking,
    ) -> Answer<Vec<Outcome<K::Output>>> {
        if jobs.len() > 1 {
            #[cfg(feature = "test-support")]
            {
                use std::sync::atomic::Ordering::Relaxed;
                self.shared[0].fetch_add(1, Relaxed);
                self.shared[1].fetch_add(jobs.len() as u64, Relaxed);
            }
            crate::observe::metrics::coalesced(self.operation, jobs.len());
        }
        let work = statement::<K>(self.kind.params(jobs, locking));
        held.starting();
        exec::attempt_holding(self.pool(), &mut held.conn, deadline, self.limits.op_timeout, &work, None).await
    }
}

/// How many dispatchers a queue may run when `batches` full batches' worth of jobs wait: half the slots (at
/// least one), so that many callers' single operations gather into fewer, fuller statements; all of them
/// while more waits than half could carry in one batch each (bulk calls such as `get_many`), since every
/// statement is then full anyway and more of them only add parallelism.
fn dispatcher_cap(max_batches: usize, batches: usize) -> usize {
    let half = (max_batches / 2).max(1);
    if batches > half {
        max_batches
    } else {
        half
    }
}

/// A statement answered without the row its key needed: the server and this version disagree.
fn no_row(operation: &'static str) -> crate::CacheError {
    let source = sqlx::Error::Protocol("a statement returned no row for its key".into());
    crate::CacheError::Database { operation, source: Arc::new(source) }
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

#[cfg(test)]
mod tests;
