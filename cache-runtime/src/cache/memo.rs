//! [`MemoHandle`]: what the memoization engine (`memo/`) may do with a [`PgCache`], and no more. The engine
//! never touches the cache's state directly; everything it needs from the layers below goes through here.

use super::PgCache;
use crate::config::Config;
use crate::entry::{EntryMeta, LiveEntry, Lookup, ReadFrom, Write};
use crate::error::{CacheError, Result};
use crate::key::check_key;
use crate::observe::{Event, HitKind};
use crate::tier::flight::{Flights, Refreshing, StreamTicket};
use crate::tier::local::{LocalTier, DEFAULT_CAPACITY};
use crate::ttl::Ttl;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// See the module docs. Cheap to copy: a reference to the cache.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemoHandle<'a> {
    cache: &'a PgCache,
    /// `#[pg_cached(encrypt)]`: the function's values are encrypted whatever the cache says of its namespace.
    sealed: bool,
}

impl PgCache {
    /// The handle of the memoization engine.
    pub(crate) fn memo(&self) -> MemoHandle<'_> {
        MemoHandle { cache: self, sealed: false }
    }
}

impl<'a> MemoHandle<'a> {
    /// This handle for a function that encrypts its values (`#[pg_cached(encrypt)]`) or not.
    pub(crate) fn sealed(self, sealed: bool) -> MemoHandle<'a> {
        MemoHandle { sealed, ..self }
    }

    pub(crate) fn cache(&self) -> &'a PgCache {
        self.cache
    }

    pub(crate) fn config(&self) -> &'a Config {
        self.cache.config()
    }

    /// Looks a memoized call's key up: a live entry, or an expired one within `stale_window`.
    pub(crate) async fn lookup(&self, key: &str, stale_window: Option<Duration>, from: ReadFrom) -> Result<Lookup> {
        check_key(key)?;
        let started = crate::observe::metrics::clock();
        let stale_window_ms = Ttl::millis(stale_window).unwrap_or(0);
        let result = self.cache.node_for(key).lookup(key, stale_window_ms, from).await;
        self.cache.timed("lookup", key, started);
        self.cache.note_failure(key, "get", &result);
        Ok(self.cache.opened_lookup(key, result?, self.sealed))
    }

    /// A live entry of `key`, as [`PgCache::get`] reads it.
    pub(crate) async fn get_live(&self, key: &str, from: ReadFrom) -> Result<Option<LiveEntry>> {
        self.cache.get_live(key, from, self.sealed).await
    }

    /// Writes a memoized result (a guarded write, see [`Write::started`]); whether it was written.
    /// `local_max_age`: the function's own in-process max age (`local = "..."`), if any.
    pub(crate) async fn write(&self, write: Write, local_max_age: Option<Duration>) -> Result<bool> {
        self.cache.write(write, local_max_age, self.sealed).await
    }

    pub(crate) fn record(&self, namespace: &str, event: Event) {
        self.cache.record(namespace, event);
    }

    /// Counts a value served from an entry (`event`: which kind of hit) with the compute time and the usage it
    /// saved.
    pub(crate) fn served(&self, namespace: &str, event: Event, meta: &EntryMeta) {
        self.cache.record(namespace, event);
        if let Some(us) = meta.compute_us.filter(|_| matches!(event, Event::Hit | Event::LocalHit | Event::Coalesced)) {
            self.cache.inner.counters.saved(namespace, us.max(0).unsigned_abs());
        }
        if let Some(kind) = event.hit_kind() {
            self.saved_usage(namespace, kind, meta);
        }
    }

    /// Counts the usage a hit of `kind` saved: its entry's (see [`crate::usage`]). `served` calls it for the
    /// kinds of hit its events say; a tier serving another key's entry (semantic) calls it itself.
    pub(crate) fn saved_usage(&self, namespace: &str, kind: HitKind, meta: &EntryMeta) {
        self.cache.inner.counters.usage_saved(namespace, kind, meta.usage);
    }

    pub(crate) fn record_error(&self, namespace: &str, error: &CacheError) {
        self.cache.record_error(namespace, error);
    }

    /// Records how long a memoized body of `namespace` ran, since `started`.
    pub(crate) fn computed(&self, namespace: &str, started: Option<Instant>) {
        crate::observe::metrics::compute(self.cache.metric_namespace(namespace), started);
    }

    /// Computations in flight in this process, by key.
    pub(crate) fn flights(&self) -> &'a Flights {
        &self.cache.inner.flights
    }

    /// Marks `key` as refreshing in the background, unless a refresh of it already runs in this process.
    pub(crate) fn start_refresh(&self, key: &str) -> Option<Refreshing> {
        self.cache.inner.flights.start_refresh(key)
    }

    /// Joins the in-process flight of a memoized stream (see `tier/flight.rs`).
    pub(crate) fn join_stream(&self, key: &str, seen: u64) -> StreamTicket {
        self.cache.inner.flights.join_stream(key, seen)
    }

    /// How many stream flights have ended; read before a lookup, passed to [`join_stream`](Self::join_stream).
    pub(crate) fn streams_ended(&self) -> u64 {
        self.cache.inner.flights.streams_ended()
    }

    /// Whether a background refresh of `key` runs in this process.
    pub(crate) fn is_refreshing(&self, key: &str) -> bool {
        self.cache.inner.flights.is_refreshing(key)
    }

    /// The in-process tier a function uses: its own `local = "..."` one (created on first use when the builder
    /// made none), or the cache's tier for every key.
    pub(crate) fn tier(&self, local: Option<Duration>) -> Option<&'a LocalTier> {
        let Some(max_age) = local else { return self.cache.tier_for_all_keys() };
        let inner = &self.cache.inner;
        let tier = inner.local.get_or_init(|| {
            let max_age = max_age.max(Duration::from_secs(3600));
            LocalTier::new(DEFAULT_CAPACITY, max_age, false, Arc::clone(&inner.events.listening))
        });
        self.cache.keep_listening(tier);
        Some(tier)
    }

    /// A handle notified when another process reports `key` done (a released lease); listening starts if it
    /// had not.
    pub(crate) fn waiter(&self, key: &str) -> Arc<Notify> {
        self.cache.listen_for_events();
        self.cache.inner.events.waiter(key)
    }

    /// This cache's id in notifications.
    pub(crate) fn sender(&self) -> u64 {
        self.cache.inner.events.sender
    }

    /// Takes the lease on `key` for `owner` (`owner_prefix`: this cache's owners) for `lease_ms`.
    pub(crate) async fn lease_acquire(
        &self,
        key: &str,
        owner: &str,
        owner_prefix: &str,
        lease_ms: i64,
    ) -> Result<bool> {
        self.cache.server_for(key).lease_acquire(key, owner, owner_prefix, lease_ms).await
    }

    /// Gives up `owner`'s lease on `key` and wakes the processes waiting for it.
    pub(crate) async fn lease_release(&self, key: &str, owner: &str) -> Result<()> {
        let payload = crate::channel::done_payload(self.sender(), key);
        self.cache.server_for(key).lease_release(key, owner, payload).await
    }

    /// Whether someone holds a live lease on `key`.
    pub(crate) async fn lease_is_live(&self, key: &str) -> Result<bool> {
        self.cache.server_for(key).lease_is_live(key).await
    }
}
