//! One memoized call against the store: the lookup, the write (guarded against invalidations that happened
//! while the body ran), and the refresh of a stale entry.

use super::run;
use crate::__private::{Policy, Site};
use crate::local::LocalTier;
use crate::server::{remaining, LiveEntry, ReadFrom};
use crate::stats::Event;
use crate::store::{MemoWrite, PgCache};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// One memoized call in progress.
pub(super) struct Call<'a, P> {
    pub(super) cache: &'a PgCache,
    pub(super) site: &'static Site,
    pub(super) key: &'a str,
    pub(super) policy: &'a P,
    pub(super) local: Option<&'a LocalTier>,
}

/// What the store said about the key.
pub(super) enum Found<R> {
    /// A live entry.
    Fresh(R, Arc<str>),
    /// An expired entry within the stale window; `started_us` is the database clock at the lookup.
    Stale(R, Arc<str>, i64),
    /// Nothing usable; compute. `None` when the store is unreachable (then nothing is written either).
    Missing(Option<i64>),
}

impl<P> Call<'_, P> {
    pub(super) fn record(&self, event: Event) {
        self.cache.record(self.site.namespace, event);
        super::record_outcome(event);
    }

    fn record_error(&self, error: &crate::CacheError) {
        self.cache.record_error(self.site.namespace, error);
        super::record_outcome(Event::Error);
    }

    /// The TTL of this function's entries, or `None` (logged) when it cannot be used.
    pub(super) fn ttl(&self) -> Option<Option<Duration>> {
        match self.site.ttl.resolve(self.cache.config().default_ttl) {
            Ok(ttl) => Some(ttl),
            Err(error) => {
                self.record_error(&error);
                tracing::warn!(namespace = self.site.namespace, %error, "result not cached");
                None
            }
        }
    }

    /// The JSON to store for `outcome`, if it is stored at all.
    pub(super) fn encode<R>(&self, outcome: &R) -> Option<Arc<str>>
    where
        P: Policy<R>,
    {
        match self.policy.encode(outcome, self.cache.config().max_value_bytes)? {
            Ok(json) => Some(json.into()),
            Err(error) => {
                self.record_error(&error);
                tracing::warn!(namespace = self.site.namespace, key = self.key, %error, "result not cached");
                None
            }
        }
    }

    /// Looks the key up, stale window included, and notes the database clock for the stale-set guard.
    /// `from`: whether a read replica may answer.
    pub(super) async fn find<R>(&self, from: ReadFrom) -> Found<R>
    where
        P: Policy<R>,
    {
        let namespace = self.site.namespace;
        let epoch = self.local.map(LocalTier::epoch);
        let lookup = match self.cache.lookup(self.key, self.site.stale, from).await {
            Ok(lookup) => lookup,
            // Already counted and logged by the store. A store that cannot be read will not take a write
            // either: skip it rather than make the caller wait for a second timeout.
            Err(_) => {
                super::record_outcome(Event::Error);
                return Found::Missing(None);
            }
        };
        let Some(json) = lookup.json else {
            self.record(Event::Miss);
            tracing::debug!(namespace, key = self.key, "memoized miss");
            return Found::Missing(Some(lookup.db_now_us));
        };
        match self.policy.decode(&json) {
            Ok(outcome) if lookup.fresh => {
                self.record(Event::Hit);
                tracing::debug!(namespace, key = self.key, "memoized hit");
                let json: Arc<str> = json.into();
                if let (Some(tier), Some(epoch)) = (self.local, epoch) {
                    let remaining = remaining(lookup.remaining_ms);
                    tier.put(self.key, Arc::clone(&json), remaining, self.site.local, epoch, lookup.as_of);
                }
                Found::Fresh(outcome, json)
            }
            Ok(outcome) => {
                self.record(Event::Miss);
                Found::Stale(outcome, json.into(), lookup.db_now_us)
            }
            Err(error) => {
                self.record(Event::Miss);
                tracing::warn!(namespace, key = self.key, %error, "stored value has the wrong shape; recomputing");
                Found::Missing(Some(lookup.db_now_us))
            }
        }
    }

    /// The fast path of a hit: the same statement as `PgCache::get`, lighter than the lookup a miss needs (no
    /// stale window, no clock). Counts only what it serves, as `served` (a hit, or a follower's coalesced
    /// read); `Err` when the store could not be reached. `from`: whether a read replica may answer.
    pub(super) async fn find_live<R>(&self, served: Event, from: ReadFrom) -> Result<Option<R>, ()>
    where
        P: Policy<R>,
    {
        let epoch = self.local.map(LocalTier::epoch);
        let found = self.cache.get_live(self.key, from).await.map_err(drop)?;
        let Some(LiveEntry { json, remaining_ms, as_of }) = found else { return Ok(None) };
        let Ok(outcome) = self.policy.decode(&json) else { return Ok(None) };
        self.record(served);
        tracing::debug!(namespace = self.site.namespace, key = self.key, ?served, "memoized hit");
        if let (Some(tier), Some(epoch)) = (self.local, epoch) {
            tier.put(self.key, json.into(), remaining(remaining_ms), self.site.local, epoch, as_of);
        }
        Ok(Some(outcome))
    }

    /// Writes a computed outcome unless an invalidation happened after `started_us`. `Ok(false)`: refused
    /// for that reason; `Err`: not written because the TTL is unusable or the store failed (counted and
    /// logged there; the caller has its value either way).
    pub(super) async fn write(&self, json: &str, started_us: i64) -> Result<bool, ()> {
        let ttl = self.ttl().ok_or(())?;
        let memo = MemoWrite { stale: self.site.stale, local_max_age: self.site.local };
        self.cache.set_json_guarded(self.key, json, ttl, started_us, memo).await.map_err(drop)
    }

    /// `single_flight = "off"`: look up, and on a miss compute and store.
    pub(super) async fn uncoalesced<R, F>(&self, body: F) -> R
    where
        P: Policy<R>,
        F: Future<Output = R>,
    {
        match self.find(ReadFrom::AnyCopy).await {
            Found::Fresh(outcome, _) => outcome,
            Found::Stale(stale, _, started_us) => self.refresh(body, stale, started_us).await,
            Found::Missing(started_us) => {
                let outcome = run(self.cache, self.site, body).await;
                if let (Some(started_us), Some(json)) = (started_us, self.encode(&outcome)) {
                    let _ = self.write(&json, started_us).await;
                }
                outcome
            }
        }
    }

    /// Recomputes a stale entry; when the body gives nothing storable (an `Err`, a `None`), the stale value is
    /// served instead and stays in place until its window closes.
    pub(super) async fn refresh<R, F>(&self, body: F, stale: R, started_us: i64) -> R
    where
        P: Policy<R>,
        F: Future<Output = R>,
    {
        let outcome = run(self.cache, self.site, body).await;
        match self.encode(&outcome) {
            Some(json) => {
                let _ = self.write(&json, started_us).await;
                outcome
            }
            None => {
                self.record(Event::StaleServed);
                tracing::warn!(
                    namespace = self.site.namespace,
                    key = self.key,
                    "refresh gave nothing storable; serving the stale value"
                );
                stale
            }
        }
    }

    /// `{fn}_refresh`: runs the body without using what is stored, and overwrites the entry with what it
    /// returns.
    pub(super) async fn refresh_now<R, F>(&self, body: F) -> R
    where
        P: Policy<R>,
        F: Future<Output = R>,
    {
        // The database clock now, for the same guard as every memoized write: an invalidation that lands while
        // the body runs wins over this refresh.
        let started_us = self.cache.lookup(self.key, None, ReadFrom::Primary).await.ok().map(|lookup| lookup.db_now_us);
        let outcome = run(self.cache, self.site, body).await;
        if let (Some(json), Some(started_us)) = (self.encode(&outcome), started_us) {
            let _ = self.write(&json, started_us).await;
        }
        outcome
    }
}
