//! Connections kept warm from one caller's statement to the next.
//!
//! sqlx checks every connection given back to its pool with a round trip of its own (a `Sync`, sent by the
//! task that returns it), so an operation that takes a pooled connection for one statement costs the server
//! two round trips. A caller that ran its own batch of one (a few callers, each with a connection, see
//! `coalesce/`) leaves its connection here instead, after a clean success, and the next caller takes it: the
//! check is skipped only for a connection whose statement just finished without error. A dispatcher that ends
//! leaves its connection here too.
//!
//! Bounds: at most `cap` connections (half the pool at most); none kept while every connection of the pool
//! is out (someone may be waiting for one); and no connection stays out of the pool for longer than
//! [`HOLD_AT_MOST`] since the pool handed it out, so that the pool's own rules (lifetime, the host it connects
//! to after a failover) reach it under unbroken load too. A sweeper task gives back what nobody took.

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, Postgres};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The longest a connection serves statements without going back to the pool.
const HOLD_AT_MOST: Duration = Duration::from_secs(1);

/// A connection out of the pool, and since when.
struct Out {
    conn: PoolConnection<Postgres>,
    since: Instant,
}

/// The connection a caller runs on: a warm one, or none yet (one is taken from the pool when needed). Give it
/// back with [`Warm::keep`].
pub(crate) struct Held {
    pub(crate) conn: Option<PoolConnection<Postgres>>,
    /// When the pool handed `conn` out (`None`: not yet known; now, if a connection comes out of the pool).
    since: Option<Instant>,
}

impl Held {
    /// No connection yet.
    pub(crate) fn empty() -> Held {
        Held { conn: None, since: None }
    }

    /// Notes the start of a statement (called just before each): a connection it takes from the pool is out
    /// since now.
    pub(crate) fn starting(&mut self) {
        if self.conn.is_none() {
            self.since = Some(Instant::now());
        }
    }

    /// Whether the connection has been out of the pool for as long as it may be.
    pub(crate) fn due_back(&self) -> bool {
        self.since.is_some_and(|since| since.elapsed() >= HOLD_AT_MOST)
    }
}

/// The warm connections of one pool, shared by its queues.
pub(crate) struct Warm {
    pool: PgPool,
    cap: usize,
    state: Mutex<State>,
    /// Connections taken warm, and given back to be kept (for the tests).
    #[cfg(feature = "test-support")]
    counts: [std::sync::atomic::AtomicU64; 2],
}

struct State {
    /// In the order they were kept: the last is the most recently used.
    idle: Vec<Out>,
    sweeper: Option<JoinHandle<()>>,
    /// The runtime of the last connection kept: sqlx gives a connection back to its pool in a task, so one
    /// dropped outside any runtime (a cache dropped after `block_on` returned) is given back through it.
    runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm").field("cap", &self.cap).field("idle", &self.lock().idle.len()).finish()
    }
}

impl Warm {
    /// Warm connections of `pool`: at most `cap`, and at most half the pool's connections (none for a pool
    /// of one).
    pub(crate) fn new(pool: PgPool, cap: usize) -> Arc<Warm> {
        let half = pool.options().get_max_connections() as usize / 2;
        Arc::new(Warm {
            pool,
            cap: cap.min(half),
            state: Mutex::new(State { idle: Vec::new(), sweeper: None, runtime: None }),
            #[cfg(feature = "test-support")]
            counts: Default::default(),
        })
    }

    /// The pool these connections come from.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used warm connection, if one is idle; connections due back go back to the pool.
    pub(crate) fn take(&self) -> Held {
        let (taken, due) = {
            let mut state = self.lock();
            let due = due_back(&mut state.idle);
            (state.idle.pop(), due)
        };
        drop(due); // back to the pool, outside the lock
        match taken {
            Some(out) => {
                #[cfg(feature = "test-support")]
                self.counts[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Held { conn: Some(out.conn), since: Some(out.since) }
            }
            None => Held::empty(),
        }
    }

    /// Keeps the connection of `held` for the next caller, or gives it back to the pool: when it is due back,
    /// when every connection of the pool is out, when `cap` are kept already, or outside a runtime.
    pub(crate) fn keep(self: &Arc<Self>, held: Held) {
        let (Some(conn), Some(since)) = (held.conn, held.since) else { return };
        if self.cap == 0 || since.elapsed() >= HOLD_AT_MOST || self.pool_is_taken() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let mut state = self.lock();
        if state.idle.len() >= self.cap {
            return;
        }
        state.idle.push(Out { conn, since });
        #[cfg(feature = "test-support")]
        self.counts[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if state.sweeper.as_ref().is_none_or(JoinHandle::is_finished) {
            state.sweeper = Some(runtime.spawn(sweep(Arc::downgrade(self))));
        }
        state.runtime = Some(runtime);
    }

    /// Whether every connection of the pool is out.
    pub(crate) fn pool_is_taken(&self) -> bool {
        self.pool.num_idle() == 0 && self.pool.size() >= self.pool.options().get_max_connections()
    }

    /// Connections taken warm so far, connections kept so far, and connections idle here now.
    #[cfg(feature = "test-support")]
    pub(crate) fn counts(&self) -> [u64; 3] {
        use std::sync::atomic::Ordering::Relaxed;
        [self.counts[0].load(Relaxed), self.counts[1].load(Relaxed), self.lock().idle.len() as u64]
    }
}

/// A cache dropped outside any runtime context would otherwise panic here: each connection's own drop spawns
/// the task that gives it back. Within the runtime that kept them, the spawn works (and if that runtime has
/// shut down, the task is dropped with it and the connection closed).
impl Drop for Warm {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let idle = std::mem::take(&mut state.idle);
        if idle.is_empty() || tokio::runtime::Handle::try_current().is_ok() {
            return;
        }
        match &state.runtime {
            Some(runtime) => {
                let _entered = runtime.enter();
                drop(idle);
            }
            // Never: a connection is only kept inside a runtime. Forgotten rather than a panic in a drop.
            None => std::mem::forget(idle),
        }
    }
}

/// Removes the connections of `idle` that are due back. Allocates nothing when none is (every `take`).
fn due_back(idle: &mut Vec<Out>) -> Vec<Out> {
    let is_due = |out: &Out| out.since.elapsed() >= HOLD_AT_MOST;
    if !idle.iter().any(is_due) {
        return Vec::new();
    }
    let (due, kept) = std::mem::take(idle).into_iter().partition(is_due);
    *idle = kept;
    due
}

/// Gives back connections as they become due, until none is kept (or the connections' owner is gone).
async fn sweep(warm: Weak<Warm>) {
    loop {
        tokio::time::sleep(HOLD_AT_MOST / 4).await;
        let Some(warm) = warm.upgrade() else { return };
        let (due, empty) = {
            let mut state = warm.lock();
            let due = due_back(&mut state.idle);
            let empty = state.idle.is_empty();
            if empty {
                state.sweeper = None;
            }
            (due, empty)
        };
        drop(due);
        if empty {
            return;
        }
    }
}
