//! The settings of a cache, as every layer reads them: plain values, set by
//! [`PgCacheBuilder`](crate::PgCacheBuilder) and checked there. A leaf module.

use crate::ttl::Ttl;
use std::time::Duration;

/// How cache writes meet the write-ahead log.
///
/// A cache can always be rebuilt, so by default writes do not wait for the WAL to reach disk: each write
/// turns `synchronous_commit` off for its own transaction only (it never touches the session or other
/// writes). A crash can then lose the last few hundred milliseconds of cache writes, which only means a few
/// extra misses; in exchange a write costs about a third as much (see `docs/BENCHMARKS.md`). The entries
/// that survive are never torn or corrupted either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Commit without waiting for the WAL flush (`synchronous_commit = off` for the write's transaction).
    #[default]
    AsyncCommit,
    /// Wait for the WAL flush, as ordinary writes do.
    Full,
}

/// Settings of a [`PgCache`]. Built by [`PgCacheBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) default_ttl: Ttl,
    pub(crate) max_entries: Option<u64>,
    pub(crate) max_value_bytes: usize,
    pub(crate) op_timeout: Duration,
    pub(crate) maintenance_timeout: Duration,
    pub(crate) durability: Durability,
    pub(crate) sweep_interval: Option<Duration>,
    pub(crate) batch_size: i64,
    pub(crate) gin_index: bool,
    pub(crate) lease: Duration,
    pub(crate) local_tier: Option<(u64, Duration)>,
    pub(crate) coalesce: bool,
    pub(crate) coalesce_max_keys: usize,
    pub(crate) coalesce_max_bytes: usize,
    pub(crate) coalesce_in_flight: usize,
    /// With read replicas: how old a standby's answers may be.
    pub(crate) max_replica_lag: Duration,
    /// How often an event listener checks its connection (a ping to itself, due back by the next check).
    pub(crate) listener_heartbeat: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_ttl: Ttl::After(Duration::from_secs(60 * 60)),
            max_entries: Some(10_000),
            max_value_bytes: 1024 * 1024,
            op_timeout: Duration::from_millis(250),
            maintenance_timeout: Duration::from_secs(30),
            durability: Durability::AsyncCommit,
            sweep_interval: Some(Duration::from_secs(60)),
            batch_size: 1000,
            gin_index: false,
            lease: Duration::from_secs(30),
            local_tier: None,
            coalesce: true,
            coalesce_max_keys: 128,
            coalesce_max_bytes: 4 * 1024 * 1024,
            coalesce_in_flight: 4,
            max_replica_lag: Duration::from_secs(1),
            listener_heartbeat: Duration::from_secs(5),
        }
    }
}
