//! Reads from hot standbys, opt-in: [`PgCacheBuilder::read_replicas`](crate::PgCacheBuilder::read_replicas).
//!
//! **How stale may a standby be?** A standby's own idea of its lag cannot be trusted: when its WAL receiver
//! is cut off it has nothing left to replay and reports itself caught up. So a monitor task measures it
//! from the primary's side. Every tick it notes the instant `t`, then reads the primary's WAL insert
//! position; every transaction that committed before `t` lies below that position. It then asks each
//! standby how far it has replayed. A standby that has replayed past the position sampled at `t` holds
//! every commit from before `t`, so whatever it answers later is at most `now - t` old. A read goes to a
//! standby only while that bound is under `max_lag`; otherwise (or when none qualifies, or the read fails)
//! it goes to the primary. On an idle primary the position does not move and the standbys stay usable.
//!
//! Only reads of values go to standbys: `get`, `get_many`, and a memoized call's first lookup. Everything
//! that must see the latest write (a single-flight follower reading its leader's value back, a process
//! waiting on another's lease) reads the primary, and every write, delete, lease and purge runs there.

use crate::latest::LatestInstant;
use crate::report::ReplicaHealth;
use crate::server::coalesce::Queue;
use crate::server::reads::Reads;
use futures_util::future::join_all;
use sqlx::postgres::PgPool;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The primary's WAL insert position, in bytes.
const PRIMARY_POSITION: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint";

/// Whether the server is a standby, and how far it has replayed (`NULL` on a primary).
const STANDBY_POSITION: &str = "SELECT pg_is_in_recovery(), (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint";

/// The standbys of one primary, and what the monitor last learned about them.
#[derive(Debug)]
pub(crate) struct Replicas {
    max_lag: Duration,
    /// How often the monitor samples: a quarter of `max_lag`, within 20 ms and 1 s.
    interval: Duration,
    /// A probe that takes longer than this counts as failed.
    probe_timeout: Duration,
    members: Vec<Replica>,
    primary: PgPool,
    /// Recent primary positions, oldest first: (instant taken, position).
    samples: Mutex<VecDeque<(Instant, i64)>>,
    /// Where the round robin over usable standbys starts next.
    next: AtomicUsize,
    monitor: OnceLock<tokio::task::JoinHandle<()>>,
}

/// One standby.
#[derive(Debug)]
pub(crate) struct Replica {
    /// Its `host:port/database`.
    pub(crate) name: String,
    pool: PgPool,
    /// Its own coalescing queue: reads sent to it share statements as reads to the primary do.
    pub(crate) reads: Arc<Queue<Reads>>,
    /// The instant of the newest primary sample it had replayed at the last probe (none: none, or down).
    caught_up: LatestInstant,
    /// Keys read from it.
    served: AtomicU64,
}

impl Replica {
    /// Counts `keys` reads sent to it.
    pub(crate) fn sent(&self, keys: usize) {
        self.served.fetch_add(u64::try_from(keys).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        if let Some(handle) = self.monitor.get() {
            handle.abort();
        }
    }
}

impl Replicas {
    /// `members`: each standby's name, pool and read queue.
    pub(crate) fn new(
        primary: PgPool,
        members: Vec<(String, PgPool, Arc<Queue<Reads>>)>,
        max_lag: Duration,
        probe_timeout: Duration,
    ) -> Arc<Replicas> {
        let members = members
            .into_iter()
            .map(|(name, pool, reads)| Replica {
                name,
                pool,
                reads,
                caught_up: LatestInstant::default(),
                served: AtomicU64::new(0),
            })
            .collect();
        let interval = (max_lag / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        Arc::new(Replicas {
            max_lag,
            interval,
            probe_timeout: probe_timeout.min(max_lag.max(interval)),
            members,
            primary,
            samples: Mutex::new(VecDeque::new()),
            next: AtomicUsize::new(0),
            monitor: OnceLock::new(),
        })
    }

    pub(crate) fn max_lag(&self) -> Duration {
        self.max_lag
    }

    /// A standby whose answers are now at most `max_lag` old, with the instant they are at least as new as
    /// (round robin over the usable ones); `None`: read the primary.
    pub(crate) fn pick(self: &Arc<Self>) -> Option<(&Replica, Instant)> {
        self.start_monitor();
        let count = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count).map(|i| &self.members[(start + i) % count]).find_map(|member| {
            let as_of = member.caught_up.get()?;
            self.within_bound(as_of).then_some((member, as_of))
        })
    }

    /// Whether a standby known to hold every commit from before `as_of` may answer now.
    fn within_bound(&self, as_of: Instant) -> bool {
        as_of.elapsed() < self.max_lag
    }

    /// After a read on `member` failed: skip it until the monitor finds it well again.
    pub(crate) fn failed(&self, member: &Replica) {
        member.caught_up.clear();
    }

    /// Each standby's state now.
    pub(crate) fn report(&self) -> Vec<ReplicaHealth> {
        self.members
            .iter()
            .map(|member| {
                let as_of = member.caught_up.get();
                ReplicaHealth {
                    replica: member.name.clone(),
                    usable: as_of.is_some_and(|as_of| self.within_bound(as_of)),
                    lag_ms: as_of.map(|as_of| as_of.elapsed().as_secs_f64() * 1000.0),
                    reads: member.served.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Starts the monitor, unless it runs already. It needs a tokio runtime, which building a cache does not, so
    /// it is started when the cache is built and again on each read.
    pub(crate) fn start_monitor(self: &Arc<Self>) {
        if self.monitor.get().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let _ = self.monitor.get_or_init(|| runtime.spawn(monitor(Arc::downgrade(self), self.interval)));
    }

    /// One round: sample the primary, then probe every standby at once.
    async fn probe(&self) {
        let taken = Instant::now();
        let position = tokio::time::timeout(
            self.probe_timeout,
            sqlx::query_scalar::<_, i64>(PRIMARY_POSITION).fetch_one(&self.primary),
        )
        .await;
        if let Ok(Ok(position)) = position {
            self.remember(taken, position);
        }
        join_all(self.members.iter().map(|member| self.probe_member(member))).await;
    }

    /// Keeps a primary sample, and only as many older ones as can still make a standby usable.
    fn remember(&self, taken: Instant, position: i64) {
        let keep = self.max_lag + 2 * self.interval;
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((taken, position));
        while samples.len() > 1 && samples.front().is_some_and(|(t, _)| t.elapsed() > keep) {
            samples.pop_front();
        }
    }

    /// The instant of the newest sample at or below `replayed`.
    fn newest_replayed(&self, replayed: i64) -> Option<Instant> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.iter().rev().find(|(_, position)| *position <= replayed).map(|(taken, _)| *taken)
    }

    async fn probe_member(&self, member: &Replica) {
        let answer = tokio::time::timeout(
            self.probe_timeout,
            sqlx::query_as::<_, (bool, Option<i64>)>(STANDBY_POSITION).fetch_one(&member.pool),
        )
        .await;
        match answer {
            Ok(Ok((true, Some(replayed)))) => {
                if let Some(taken) = self.newest_replayed(replayed) {
                    member.caught_up.advance(taken);
                }
            }
            // Down, too slow, or no longer a standby (promoted: it may be a new primary the cache's writes do
            // not go to, so its answers cannot be bounded by the samples).
            other => {
                if !matches!(other, Ok(Ok(_))) {
                    tracing::debug!(replica = %member.name, "read replica did not answer its probe; skipped");
                }
                member.caught_up.clear();
            }
        }
    }
}

async fn monitor(replicas: Weak<Replicas>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(replicas) = replicas.upgrade() else { return };
        replicas.probe().await;
    }
}
