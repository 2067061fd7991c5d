//! The settings of a cache, as every layer reads them: plain values, set by
//! [`PgCacheBuilder`](crate::PgCacheBuilder), and their bounds, checked when it builds. A leaf module.
//!
//! **Bounds.** A setting out of range is refused with [`CacheError::Config`] rather than clamped, since a
//! silent clamp would give a cache other than the one asked for: zero where it means nothing (a zero timeout,
//! a zero batch), and durations past what the server or `Instant` arithmetic can hold (`Duration::MAX`
//! panics when added to an instant; an operation timeout over `INT_MAX` ms is a `lock_timeout` PostgreSQL
//! refuses, so every write would fail). Only values under the server's resolution are raised to it (a
//! timeout of 0.3 ms counts as 1 ms), and the in-process tier's max age is capped (see
//! [`PgCacheBuilder::local_tier`](crate::PgCacheBuilder::local_tier)).

use crate::crypt::Sealing;
use crate::error::CacheError;
use crate::semantic::Embedder;
use crate::ttl::Ttl;
use cache_rules::MAX_TTL;
use std::sync::Arc;
use std::time::Duration;

/// The longest operation and maintenance timeout: the server takes them as its `lock_timeout` and
/// `statement_timeout`, which hold at most `INT_MAX` milliseconds (about 24.8 days).
pub(crate) const MAX_SERVER_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// The longest of the other duration settings: 10,000 years, as for a TTL. Instants and PostgreSQL's
/// timestamps hold that much past now; `Duration::MAX` overflows both.
pub(crate) const MAX_DURATION: Duration = MAX_TTL;

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
    /// Each tenant's quota: at most this many rows, and this many bytes of values (`None`: no such limit).
    pub(crate) tenant_quota: (Option<u64>, Option<u64>),
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
    pub(crate) coalesce_in_flight: usize,
    /// With read replicas: how old a standby's answers may be.
    pub(crate) max_replica_lag: Duration,
    /// How often an event listener checks its connection (a ping to itself, due back by the next check).
    pub(crate) listener_heartbeat: Duration,
    /// The model that embeds texts for semantic entries; `None`: semantic lookups are refused (the API) or
    /// skipped (memoized functions, which then work by their exact key).
    pub(crate) embedder: Option<Arc<dyn Embedder>>,
    /// The lowest cosine at which a stored text answers an asked one.
    pub(crate) similarity_threshold: f32,
    /// Encryption at rest: the keys and which namespaces (see `crypt/`).
    pub(crate) sealing: Sealing,
}

/// The default [`PgCacheBuilder::similarity_threshold`](crate::PgCacheBuilder::similarity_threshold): the
/// knee of the curve measured in docs/SEMANTIC.md.
pub const DEFAULT_SIMILARITY_THRESHOLD: f32 = 0.85;

impl Default for Config {
    fn default() -> Self {
        Config {
            default_ttl: Ttl::After(Duration::from_secs(60 * 60)),
            max_entries: Some(10_000),
            tenant_quota: (None, None),
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
            coalesce_in_flight: 4,
            max_replica_lag: Duration::from_secs(1),
            listener_heartbeat: Duration::from_secs(5),
            embedder: None,
            similarity_threshold: DEFAULT_SIMILARITY_THRESHOLD,
            sealing: Sealing { compress: true, ..Sealing::default() },
        }
    }
}

impl Config {
    /// These settings as the cache uses them, or the first one out of bounds (see each setter's docs). Values
    /// under the server's resolution are raised to it: 1 ms for the timeouts, 10 ms for a lease.
    pub(crate) fn checked(mut self) -> Result<Config, CacheError> {
        let lock_timeout = "PostgreSQL's largest lock_timeout, about 24.8 days";
        self.op_timeout = bounded("op_timeout", self.op_timeout, MAX_SERVER_TIMEOUT, lock_timeout)?;
        let statement_timeout = "PostgreSQL's largest statement_timeout, about 24.8 days";
        self.maintenance_timeout =
            bounded("maintenance_timeout", self.maintenance_timeout, MAX_SERVER_TIMEOUT, statement_timeout)?;
        self.op_timeout = self.op_timeout.max(Duration::from_millis(1));
        self.maintenance_timeout = self.maintenance_timeout.max(Duration::from_millis(1));
        let lease = bounded("lease_duration", self.lease, MAX_DURATION, TEN_THOUSAND_YEARS)?;
        self.lease = lease.max(Duration::from_millis(10));
        bounded("read_replicas' max_lag", self.max_replica_lag, MAX_DURATION, TEN_THOUSAND_YEARS)?;
        // The listener waits a whole interval for each ping; a day is already far longer than anyone needs.
        let day = Duration::from_secs(24 * 3600);
        bounded("listener_heartbeat", self.listener_heartbeat, day, "one day")?;
        if let Some(interval) = self.sweep_interval {
            bounded("sweep_interval", interval, MAX_DURATION, "10,000 years; None turns the sweeper off")?;
        }
        if let Ttl::After(ttl) = self.default_ttl {
            bounded("default_ttl", ttl, MAX_TTL, "10,000 years; Ttl::Never makes entries permanent")?;
        }
        if let Some((capacity, max_age)) = self.local_tier {
            nonzero("local_tier's capacity", capacity, "")?;
            // Past the tier's own cap, a longer max age means the same: none but the entry's TTL.
            bounded("local_tier's max_age", max_age, Duration::MAX, "")?;
        }
        if let Some(max_entries) = self.max_entries {
            nonzero("max_entries", max_entries, " (None means no limit)")?;
        }
        if let Some(max) = self.tenant_quota.0 {
            nonzero("tenant_quota's max_entries", max, " (None means no limit)")?;
        }
        if let Some(max) = self.tenant_quota.1 {
            nonzero("tenant_quota's max_bytes", max, " (None means no limit)")?;
        }
        nonzero("max_value_bytes", self.max_value_bytes, "")?;
        nonzero("batch_size", self.batch_size, "")?;
        nonzero("coalesce_max_keys", self.coalesce_max_keys, "")?;
        nonzero("coalesce_in_flight", self.coalesce_in_flight, " (coalesce(false) turns coalescing off)")?;
        check_threshold(self.similarity_threshold)?;
        let sealing = &self.sealing;
        if (sealing.all || !sealing.namespaces.is_empty()) && sealing.keyring.is_none() {
            return Err(CacheError::Config(
                "encrypt_all() or encrypt_namespaces() needs a keyring: add .encryption(Keyring)".into(),
            ));
        }
        Ok(self)
    }
}

/// Checks a similarity threshold: a cosine in (0, 1]. Zero or less would let unrelated texts hit; above 1 nothing
/// ever would.
pub(crate) fn check_threshold(threshold: f32) -> Result<(), CacheError> {
    if threshold > 0.0 && threshold <= 1.0 {
        return Ok(());
    }
    Err(CacheError::Config(format!("similarity_threshold must be in (0, 1], got {threshold}")))
}

/// The largest pool: PostgreSQL's own limit on connections (`MAX_BACKENDS`, 2^18 - 1).
pub(crate) const MAX_CONNECTIONS: u32 = (1 << 18) - 1;

/// Checks [`PgCacheBuilder::max_connections`](crate::PgCacheBuilder::max_connections), when it was given.
pub(crate) fn check_max_connections(max_connections: Option<u32>) -> Result<(), CacheError> {
    let Some(n) = max_connections else { return Ok(()) };
    nonzero("max_connections", n, "")?;
    if n > MAX_CONNECTIONS {
        return Err(CacheError::Config(format!(
            "max_connections must be at most {MAX_CONNECTIONS} (PostgreSQL's own limit), got {n}"
        )));
    }
    Ok(())
}

const TEN_THOUSAND_YEARS: &str = "10,000 years";

/// `value` when it is more than zero and at most `max` (`max_is` says what that is).
fn bounded(name: &str, value: Duration, max: Duration, max_is: &str) -> Result<Duration, CacheError> {
    if value.is_zero() {
        return Err(CacheError::Config(format!("{name} must be more than zero, got {value:?}")));
    }
    if value > max {
        return Err(CacheError::Config(format!("{name} must be at most {max:?} ({max_is}), got {value:?}")));
    }
    Ok(value)
}

/// Refuses a zero count; `hint` says what to do instead.
fn nonzero<N: Default + PartialEq + std::fmt::Display>(name: &str, n: N, hint: &str) -> Result<(), CacheError> {
    if n == N::default() {
        return Err(CacheError::Config(format!("{name} must be at least 1, got {n}{hint}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
