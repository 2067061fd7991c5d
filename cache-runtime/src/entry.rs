//! What the layers pass to each other about one entry: its metadata, what a lookup found, and when a
//! memoized computation began. A leaf module: every layer may use it, it uses none of them.

use crate::tags::Tags;
use crate::usage::Usage;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What an entry carries besides its value.
#[derive(Debug, Clone, Default)]
pub(crate) struct EntryMeta {
    /// Its tags (see `tags.rs`).
    pub(crate) tags: Option<Tags>,
    /// How long its computation took, in microseconds, for a memoized result.
    pub(crate) compute_us: Option<i64>,
    /// What its computation consumed (see [`crate::usage`]); zero when nothing was reported, for values
    /// stored with `set`, and for entries written before usage was recorded.
    pub(crate) usage: Usage,
}

impl EntryMeta {
    /// From the `tags`, `compute_us` and usage columns of a read.
    pub(crate) fn from_columns(tags: Option<Vec<String>>, compute_us: Option<i64>, usage: Usage) -> EntryMeta {
        EntryMeta { tags: tags.filter(|t| !t.is_empty()).map(Into::into), compute_us, usage }
    }
}

/// What a memoized call's lookup found.
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    /// The entry's JSON, if there is a live one or, within the stale window, an expired one.
    pub(crate) json: Option<Arc<str>>,
    /// Milliseconds until expiry, `None` for an entry that never expires.
    pub(crate) remaining_ms: Option<i64>,
    /// False for an expired entry served from the stale window.
    pub(crate) fresh: bool,
    /// The database's clock when the lookup ran, in microseconds since the epoch.
    pub(crate) db_now_us: i64,
    /// Read from a standby: the instant whose commits it is known to hold (later ones it may lack). `None`:
    /// read from the primary.
    pub(crate) as_of: Option<Instant>,
    /// The entry's tags and compute time.
    pub(crate) meta: EntryMeta,
    /// The lookup's snapshot (`pg_current_snapshot()` as text), for the tag guard.
    pub(crate) snapshot: Option<Arc<str>>,
}

impl Lookup {
    /// The entry, if it is live (not one served from the stale window).
    pub(crate) fn live(self) -> Option<LiveEntry> {
        let (remaining_ms, as_of, meta) = (self.remaining_ms, self.as_of, self.meta);
        self.json.filter(|_| self.fresh).map(|json| LiveEntry { json, remaining_ms, as_of, meta })
    }

    /// When the computation that follows this lookup began, for the stale-set guard.
    pub(crate) fn start(&self) -> Start {
        Start { us: self.db_now_us, snapshot: self.snapshot.clone() }
    }

    /// This lookup as answered by a standby that holds every commit from before `as_of`. Its clock becomes
    /// the start of a computation (the stale-set guard's), so it is moved back by `max_lag`: a write is then
    /// refused for any invalidation the standby might not have shown, even with the servers' clocks apart.
    pub(crate) fn answered_by_standby(mut self, as_of: Instant, max_lag: Duration) -> Lookup {
        self.as_of = Some(as_of);
        self.db_now_us -= i64::try_from(max_lag.as_micros()).unwrap_or(i64::MAX);
        self
    }
}

/// Where a read may go when the cache has [read replicas](crate::PgCacheBuilder::read_replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFrom {
    /// A standby within the lag bound, else the primary.
    AnyCopy,
    /// The primary only: the read must see the latest writes (a value just stored by another caller).
    Primary,
}

/// Converts the milliseconds left before expiry into a duration for the in-process tier.
pub(crate) fn remaining(remaining_ms: Option<i64>) -> Option<Duration> {
    remaining_ms.map(|ms| Duration::from_millis(ms.max(0).unsigned_abs()))
}

/// When a memoized computation began, on the database: its clock (µs) and its lookup's snapshot. A write of
/// its result is refused for any invalidation the computation may not have seen.
#[derive(Debug, Clone)]
pub(crate) struct Start {
    pub(crate) us: i64,
    pub(crate) snapshot: Option<Arc<str>>,
}

/// A live entry.
#[derive(Debug, Clone)]
pub(crate) struct LiveEntry {
    pub(crate) json: Arc<str>,
    /// Milliseconds left before it expires; `None`: never.
    pub(crate) remaining_ms: Option<i64>,
    /// As [`Lookup::as_of`].
    pub(crate) as_of: Option<Instant>,
    pub(crate) meta: EntryMeta,
}

impl LiveEntry {
    /// The entry a write just made, as the in-process tier keeps it.
    pub(crate) fn written(json: Arc<str>, ttl: Option<Duration>, meta: EntryMeta) -> LiveEntry {
        LiveEntry { json, remaining_ms: crate::ttl::Ttl::millis(ttl), as_of: None, meta }
    }
}

/// One write of an entry, in the one shape every layer passes down: built once by [`PgCache`](crate::PgCache)
/// (from a `set`, a bulk write or a memoized result) and sent as it is to the statement that writes it.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub(crate) key: String,
    /// The value, as JSON already checked for what JSONB cannot hold.
    pub(crate) json: Arc<str>,
    /// How long it lives; `None`: forever.
    pub(crate) ttl: Option<Duration>,
    /// How long the row is kept past its expiry, to be served stale (`stale`, `stale_if_error`).
    pub(crate) keep: Option<Duration>,
    /// For a memoized result: when its computation began. The write is refused for any invalidation of its
    /// key, namespace or tags that the computation may not have seen.
    pub(crate) started: Option<Start>,
    /// Its tags and compute time.
    pub(crate) meta: EntryMeta,
    /// The tenant whose scope computed the key (see `tenant.rs`), for the row's `tenant` column.
    pub(crate) tenant: Option<Arc<str>>,
}

impl Write {
    /// A plain write (no guard, no tags), as `set` makes.
    pub(crate) fn plain(key: impl Into<String>, json: Arc<str>, ttl: Option<Duration>) -> Write {
        Write { key: key.into(), json, ttl, keep: None, started: None, meta: EntryMeta::default(), tenant: None }
    }
}
