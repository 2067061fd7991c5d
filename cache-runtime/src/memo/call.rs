//! One memoized call against the store: the lookup, the write (guarded against invalidations that happened
//! while the body ran), and the refresh of a stale entry.

use super::background;
use super::lease::Lease;
use super::policy::Policy;
use super::scope::TagScope;
use super::similar::Query;
use super::site::{SingleFlight, Site};
use super::work::{Body, How, Work};
use super::{run, served, Computed};
use crate::cache::MemoHandle;
use crate::entry::{EntryMeta, LiveEntry, ReadFrom, Start, Write};
use crate::observe::Event;
use crate::tier::local::LocalTier;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// One memoized call in progress.
pub(super) struct Call<'a, P> {
    pub(super) cache: MemoHandle<'a>,
    pub(super) site: &'static Site,
    pub(super) key: &'a str,
    /// The tenant whose scope qualified the key, for the row's `tenant` column.
    pub(super) tenant: Option<Arc<str>>,
    pub(super) policy: &'a P,
    pub(super) local: Option<&'a LocalTier>,
    /// The computation this call is part of (an outer memoized body), which inherits its tags.
    pub(super) outer: Option<&'a TagScope>,
    /// `similar(arg)`: the text and vector to store beside each entry this call writes.
    pub(super) similar: Option<&'a Query>,
}

/// What the store said about the key.
pub(super) enum Found<R> {
    /// A live entry, and its tags and compute time.
    Fresh(R, Arc<str>, EntryMeta),
    /// An expired entry within the stale window, and when the lookup ran.
    Stale(R, Arc<str>, EntryMeta, Start),
    /// Nothing usable; compute. `None` when the store is unreachable (then nothing is written either). The
    /// fallback is an entry expired less than `stale_if_error` ago, served if the computation fails.
    Missing(Option<Start>, Option<Fallback>),
}

/// An expired entry that may stand in for a failed computation (`stale_if_error`).
#[derive(Clone)]
pub(super) struct Fallback {
    pub(super) json: Arc<str>,
    pub(super) meta: EntryMeta,
}

impl<P> Call<'_, P> {
    pub(super) fn record(&self, event: Event) {
        self.cache.record(self.site.namespace, event);
        super::record_outcome(event);
    }

    /// Records a value served from an entry: the event, the compute time it saved, and its tags for the
    /// computation this call is part of.
    pub(super) fn record_served(&self, event: Event, meta: &EntryMeta) {
        served(self.cache, self.site, event, meta, self.outer);
        super::record_outcome(event);
    }

    /// Runs the body (see `memo::run`).
    pub(super) async fn run<R>(&self, body: impl Future<Output = R>) -> (R, Computed) {
        run(self.cache, self.site, self.outer, body).await
    }

    /// `stale_if_error`: the fallback's value instead of a failed outcome, if there is a fallback and the
    /// outcome failed.
    pub(super) fn or_fallback<R>(&self, outcome: R, fallback: Option<&Fallback>) -> R
    where
        P: Policy<R>,
    {
        let Some(fallback) = fallback.filter(|_| self.policy.failed(&outcome)) else { return outcome };
        match self.policy.decode(&fallback.json) {
            Ok(value) => {
                self.record_served(Event::StaleIfError, &fallback.meta);
                tracing::warn!(
                    namespace = self.site.namespace,
                    key = self.key,
                    "the computation failed; serving the entry expired within stale_if_error"
                );
                value
            }
            Err(_) => outcome,
        }
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

    /// Looks the key up, stale windows included, and notes the database clock for the stale-set guard.
    /// `from`: whether a read replica may answer.
    pub(super) async fn find<R>(&self, from: ReadFrom) -> Found<R>
    where
        P: Policy<R>,
    {
        let namespace = self.site.namespace;
        let fill = self.local.map(LocalTier::fill);
        let lookup = match self.cache.lookup(self.key, self.site.keep(), from).await {
            Ok(lookup) => lookup,
            // Already counted and logged by the store. A store that cannot be read will not take a write
            // either: skip it rather than make the caller wait for a second timeout.
            Err(_) => {
                super::record_outcome(Event::Error);
                return Found::Missing(None, None);
            }
        };
        let start = lookup.start();
        let Some(json) = lookup.json else {
            self.record(Event::Miss);
            tracing::debug!(namespace, key = self.key, "memoized miss");
            return Found::Missing(Some(start), None);
        };
        let expired_ms = lookup.remaining_ms.map_or(0, |ms| -ms.min(0)).unsigned_abs();
        let within = |window: Option<Duration>| window.is_some_and(|w| u128::from(expired_ms) <= w.as_millis());
        match self.policy.decode(&json) {
            Ok(outcome) if lookup.fresh => {
                self.record_served(Event::Hit, &lookup.meta);
                tracing::debug!(namespace, key = self.key, "memoized hit");
                if let Some(fill) = fill {
                    let (remaining_ms, as_of, meta) = (lookup.remaining_ms, lookup.as_of, lookup.meta.clone());
                    fill.put(
                        self.key,
                        LiveEntry { json: Arc::clone(&json), remaining_ms, as_of, meta },
                        self.site.local,
                    );
                }
                Found::Fresh(outcome, json, lookup.meta)
            }
            Ok(outcome) if within(self.site.stale) => {
                self.record(Event::Miss);
                Found::Stale(outcome, json, lookup.meta, start)
            }
            Ok(_) => {
                // Expired past the stale window, within stale_if_error's: compute, and keep it in reserve.
                self.record(Event::Miss);
                Found::Missing(Some(start), Some(Fallback { json, meta: lookup.meta }))
            }
            Err(error) => {
                self.record(Event::Miss);
                tracing::warn!(namespace, key = self.key, %error, "stored value has the wrong shape; recomputing");
                Found::Missing(Some(start), None)
            }
        }
    }

    /// The fast path of a hit: the same statement as `PgCache::get`, lighter than the lookup a miss needs (no
    /// stale window). Counts only what it serves, as `served` (a hit, or a follower's coalesced read); `Err`
    /// when the store could not be reached. `from`: whether a read replica may answer.
    /// A hit comes with the milliseconds its entry has left (`None`: it never expires).
    pub(super) async fn find_live<R>(&self, served: Event, from: ReadFrom) -> Result<Option<(R, Option<i64>)>, ()>
    where
        P: Policy<R>,
    {
        let fill = self.local.map(LocalTier::fill);
        let Some(entry) = self.cache.get_live(self.key, from).await.map_err(drop)? else { return Ok(None) };
        let Ok(outcome) = self.policy.decode(&entry.json) else { return Ok(None) };
        self.record_served(served, &entry.meta);
        tracing::debug!(namespace = self.site.namespace, key = self.key, ?served, "memoized hit");
        let remaining_ms = entry.remaining_ms;
        if let Some(fill) = fill {
            fill.put(self.key, entry, self.site.local);
        }
        Ok(Some((outcome, remaining_ms)))
    }

    /// Writes a computed outcome unless an invalidation happened that its computation (begun at `start`) may
    /// not have seen. `Ok(false)`: refused for that reason; `Err`: not written because the TTL is unusable, a
    /// tag was invalid, or the store failed (counted and logged there; the caller has its value either way).
    pub(super) async fn write(&self, json: &Arc<str>, start: Start, computed: &Computed) -> Result<bool, ()> {
        let ttl = self.ttl().ok_or(())?;
        let tags = match &computed.tags {
            Ok(tags) => tags.clone(),
            Err(error) => {
                self.record_error(error);
                tracing::warn!(namespace = self.site.namespace, key = self.key, %error, "result not cached");
                return Err(());
            }
        };
        let write = Write {
            key: self.key.to_owned(),
            json: Arc::clone(json),
            ttl,
            keep: self.site.keep(),
            started: Some(start),
            meta: EntryMeta { tags, compute_us: Some(computed.compute_us), usage: computed.usage },
            tenant: self.tenant.clone(),
        };
        let written = self.cache.write(write, self.site.local).await.map_err(drop)?;
        if let (true, Some(query)) = (written, self.similar) {
            self.store_similar(query).await;
        }
        Ok(written)
    }

    /// `single_flight = "off"`: look up, and on a miss compute and store.
    pub(super) async fn uncoalesced<R, M, F>(&self, mut work: Work<M, F>) -> R
    where
        P: Policy<R>,
        M: FnOnce(How) -> Body<F>,
        F: Future<Output = R>,
    {
        match self.find(ReadFrom::AnyCopy).await {
            Found::Fresh(outcome, ..) => outcome,
            Found::Stale(stale, _, meta, start) => self.refresh_stale(work, stale, &meta, start).await,
            Found::Missing(start, fallback) => {
                let (outcome, computed) = self.run(work.body()).await;
                if let (Some(start), Some(json)) = (start, self.encode(&outcome)) {
                    let _ = self.write(&json, start, &computed).await;
                }
                self.or_fallback(outcome, fallback.as_ref())
            }
        }
    }

    /// A stale entry, found by this caller, which refreshes it: in the background when the function allows
    /// it (the caller gets the stale value at once; see `background.rs`), else here, in the caller (with a
    /// cluster lease first under `single_flight = "cluster"`, and the stale value if another process holds
    /// it).
    pub(super) async fn refresh_stale<R, M, F>(&self, work: Work<M, F>, stale: R, meta: &EntryMeta, start: Start) -> R
    where
        P: Policy<R>,
        M: FnOnce(How) -> Body<F>,
        F: Future<Output = R>,
    {
        if self.cache.is_refreshing(self.key) {
            // Its refresh runs in the background already.
            self.record_served(Event::StaleServed, meta);
            return stale;
        }
        // Without a tokio runtime there is nowhere to spawn: refresh here.
        let mut work = match tokio::runtime::Handle::try_current() {
            Ok(_) => match work.into_task() {
                Ok(task) => {
                    background::spawn_refresh(self.cache, self.site, self.key, task);
                    self.record_served(Event::StaleServed, meta);
                    return stale;
                }
                Err(work) => work,
            },
            Err(_) => work,
        };
        let lease = if self.site.single_flight == SingleFlight::Cluster {
            match Lease::try_take(self.cache.cache(), self.key).await {
                Ok(Some(lease)) => Some(lease),
                // Another process refreshes it: serve the stale value and move on.
                Ok(None) => {
                    self.record_served(Event::StaleServed, meta);
                    return stale;
                }
                Err(_) => None,
            }
        } else {
            None
        };
        let outcome = self.refresh(work.body(), stale, meta, start).await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        outcome
    }

    /// Recomputes a stale entry. When the body fails (an `Err`, a `None` that is not cached), the stale value
    /// is served instead and stays in place until its window closes; any other outcome is returned, stored
    /// or not.
    pub(super) async fn refresh<R, F>(&self, body: F, stale: R, meta: &EntryMeta, start: Start) -> R
    where
        P: Policy<R>,
        F: Future<Output = R>,
    {
        let (outcome, computed) = self.run(body).await;
        if self.policy.failed(&outcome) {
            self.record_served(Event::StaleServed, meta);
            tracing::warn!(namespace = self.site.namespace, key = self.key, "refresh failed; serving the stale value");
            return stale;
        }
        // A value that is not stored (`cache_if` said no, too large, not representable) is still the body's
        // fresh answer: the caller that ran the body gets it.
        if let Some(json) = self.encode(&outcome) {
            let _ = self.write(&json, start, &computed).await;
        }
        outcome
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
        let start = self.cache.lookup(self.key, None, ReadFrom::Primary).await.ok().map(|lookup| lookup.start());
        let (outcome, computed) = self.run(body).await;
        if let (Some(json), Some(start)) = (self.encode(&outcome), start) {
            let _ = self.write(&json, start, &computed).await;
        }
        outcome
    }
}

/// `similar(arg)` (see `similar.rs`).
impl<P> Call<'_, P> {
    /// The value of the nearest stored text of the query's scope, if one is near enough and the guard
    /// accepts it; counted and served as a hit. `None` on a miss and when the store fails (logged).
    pub(super) async fn similar_hit<R>(&self, query: &Query) -> Option<R>
    where
        P: Policy<R>,
    {
        let cache = self.cache.cache();
        let policy = self.policy;
        let found = cache
            .read_nearest(&query.scope, &query.text, &query.vector, query.threshold, |key| async move {
                let entry = cache.memo().get_live(&key, ReadFrom::AnyCopy).await?;
                Ok(entry.and_then(|entry| Some((policy.decode(&entry.json).ok()?, entry.meta))))
            })
            .await;
        match found {
            Ok(Some(((value, meta), candidate))) => {
                self.record_served(Event::Hit, &meta);
                tracing::debug!(
                    namespace = self.site.namespace,
                    key = self.key,
                    matched = &*candidate.key,
                    score = candidate.score,
                    "memoized semantic hit"
                );
                Some(value)
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(namespace = self.site.namespace, %error, "semantic lookup failed; computing");
                None
            }
        }
    }

    /// Stores the text and vector of the entry just written, so that paraphrases find it.
    pub(super) async fn store_similar(&self, query: &Query) {
        let cache = self.cache.cache();
        if let Err(error) = cache.store_vector(self.key, &query.scope, &query.text, &query.vector).await {
            self.cache.record_error(self.site.namespace, &error);
            tracing::warn!(namespace = self.site.namespace, key = self.key, %error, "the entry's vector was not stored");
        }
    }
}
