//! What happened in one cache operation, as the process counters and the metrics count it. A leaf of the
//! `observe` layer: both of its other files use it.

/// Which counter to bump.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event {
    /// Served from PostgreSQL.
    Hit,
    /// Not in PostgreSQL (or expired, or of the wrong shape).
    Miss,
    /// A cache operation failed; the caller was served without the cache.
    Error,
    /// Served by waiting for another caller's computation (single-flight).
    Coalesced,
    /// The memoized function's body ran.
    Execution,
    /// An expired value was served while a refresh ran (stale-while-revalidate).
    StaleServed,
    /// Served from the in-process tier.
    LocalHit,
    /// Not in the in-process tier.
    LocalMiss,
    /// The body failed and an entry expired less than `stale_if_error` ago was served instead.
    StaleIfError,
}
