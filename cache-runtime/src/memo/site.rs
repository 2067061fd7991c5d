//! What generated code tells the engine about one memoized function ([`Site`], built once in a `static`),
//! and which cache a call uses ([`CacheRef`]). Part of the `__private` contract.

// Items of the hidden `__private` contract, re-exported there: not part of the documented API.
#![allow(missing_docs)]

use crate::cache::PgCache;
use crate::key::KeyBuilder;
use crate::ttl::Ttl;
use std::time::Duration;

/// How concurrent misses of one key are coalesced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SingleFlight {
    /// Every caller that misses computes.
    Off,
    /// Callers in this process share one computation per key.
    Process,
    /// Callers in every process share one computation per key, through a lease row in PostgreSQL.
    Cluster,
}

/// Static description of one memoized function.
#[derive(Debug)]
pub struct Site {
    pub(crate) namespace: &'static str,
    pub(crate) function: &'static str,
    pub(crate) version: u32,
    pub(crate) ttl: Ttl,
    pub(crate) single_flight: SingleFlight,
    pub(crate) stale: Option<Duration>,
    pub(crate) local: Option<Duration>,
    /// `stale_if_error = "..."`: how long after expiry an entry may stand in for a failed computation.
    pub(crate) stale_if_error: Option<Duration>,
    /// `tags("...")`: every entry of the function carries these.
    pub(crate) tags: &'static [&'static str],
    /// `refresh_ahead = "N%"`: a hit on an entry with at most this share of its TTL left starts a background
    /// refresh, in percent.
    pub(crate) refresh_ahead: Option<u8>,
    /// `replay = "as_recorded"`: a memoized stream is replayed with the gaps it was recorded with.
    pub(crate) replay_as_recorded: bool,
    /// `similar(arg)`: calls are also matched by the meaning of one text argument; `Some(threshold)` when
    /// the function sets its own (`similar(arg, threshold = 0.9)`).
    pub(crate) similar: Option<Option<f32>>,
    /// `encrypt`: the function's values are encrypted at rest, whatever the cache says of its namespace.
    pub(crate) encrypt: bool,
    /// Whether this function has said, once, that it runs by its exact key alone for want of an embedder.
    pub(crate) similar_warned: std::sync::atomic::AtomicBool,
    /// The hash state after the function's fixed part (format, namespace, path, version), computed once:
    /// every call clones it and adds only its own arguments.
    prefix: std::sync::OnceLock<KeyBuilder>,
}

impl Site {
    pub const fn new(namespace: &'static str, function: &'static str, version: u32) -> Site {
        Site {
            namespace,
            function,
            version,
            ttl: Ttl::Default,
            single_flight: SingleFlight::Process,
            stale: None,
            local: None,
            stale_if_error: None,
            tags: &[],
            refresh_ahead: None,
            replay_as_recorded: false,
            similar: None,
            encrypt: false,
            similar_warned: std::sync::atomic::AtomicBool::new(false),
            prefix: std::sync::OnceLock::new(),
        }
    }
    pub const fn ttl(mut self, ttl: Ttl) -> Site {
        self.ttl = ttl;
        self
    }
    pub const fn single_flight(mut self, mode: SingleFlight) -> Site {
        self.single_flight = mode;
        self
    }
    pub const fn stale(mut self, window: Duration) -> Site {
        self.stale = Some(window);
        self
    }
    pub const fn local(mut self, max_age: Duration) -> Site {
        self.local = Some(max_age);
        self
    }
    pub const fn stale_if_error(mut self, window: Duration) -> Site {
        self.stale_if_error = Some(window);
        self
    }
    /// `refresh_ahead = "N%"` (checked by the macro: 1 to 99).
    pub const fn refresh_ahead(mut self, percent: u8) -> Site {
        self.refresh_ahead = Some(percent);
        self
    }
    /// `replay = "as_recorded"`.
    pub const fn replay_as_recorded(mut self) -> Site {
        self.replay_as_recorded = true;
        self
    }
    /// `similar(arg)` (`threshold`: `None` for the cache's, else checked by the macro: in (0, 1]).
    pub const fn similar(mut self, threshold: Option<f32>) -> Site {
        self.similar = Some(threshold);
        self
    }
    /// `encrypt` (the macro refuses it with `similar(...)`).
    pub const fn encrypt(mut self) -> Site {
        self.encrypt = true;
        self
    }
    /// Static tags (checked by the macro, at compile time).
    pub const fn tags(mut self, tags: &'static [&'static str]) -> Site {
        self.tags = tags;
        self
    }

    /// How long past expiry a row of this function must be kept: for stale serving and for `stale_if_error`.
    pub(crate) fn keep(&self) -> Option<Duration> {
        match (self.stale, self.stale_if_error) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

impl KeyBuilder {
    /// Starts the fingerprint of one call of a memoized function.
    pub fn new(site: &'static Site) -> KeyBuilder {
        site.prefix.get_or_init(|| KeyBuilder::for_function(site.namespace, site.function, site.version)).clone()
    }
}

/// Which cache a memoized call uses.
#[derive(Debug)]
pub enum CacheRef {
    /// The process-wide instance ([`crate::global`]).
    Global,
    /// The value of a `cache = ...` expression; `None` runs uncached.
    Explicit(Option<PgCache>),
}

impl CacheRef {
    pub(crate) fn resolve(self) -> Option<PgCache> {
        match self {
            CacheRef::Global => crate::global(),
            CacheRef::Explicit(cache) => cache,
        }
    }
}
