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
    /// An encrypted entry that could not be decrypted (unknown key id, failed authentication), or a plain one
    /// in an encrypted namespace: counted besides the miss it is.
    Undecryptable,
}

impl Event {
    /// Which kind of hit this event is, for the usage it saved; `None` for what serves no entry.
    pub(crate) fn hit_kind(self) -> Option<HitKind> {
        match self {
            // A follower of another caller's computation got the same key's value without running the body.
            Event::Hit | Event::Coalesced => Some(HitKind::Exact),
            Event::LocalHit => Some(HitKind::Local),
            Event::StaleServed | Event::StaleIfError => Some(HitKind::Stale),
            Event::Miss | Event::Error | Event::Execution | Event::LocalMiss | Event::Undecryptable => None,
        }
    }
}

/// How a value was served from an entry, as the savings metrics label it (`kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // `Semantic` is for the semantic tier, which serves an entry stored under a similar key.
pub(crate) enum HitKind {
    /// The key's own entry, from PostgreSQL (or a computation in flight for that key).
    Exact,
    /// A similar key's entry (the semantic tier).
    Semantic,
    /// An expired entry (stale-while-revalidate, `stale_if_error`).
    Stale,
    /// The in-process tier.
    Local,
}

impl HitKind {
    /// The `kind` label's value.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn label(self) -> &'static str {
        match self {
            HitKind::Exact => "exact",
            HitKind::Semantic => "semantic",
            HitKind::Stale => "stale",
            HitKind::Local => "local",
        }
    }
}
