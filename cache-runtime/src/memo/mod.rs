//! The memoization engine behind [`__private::memoize`](crate::__private::memoize): what one memoized call
//! does, from the in-process tier to PostgreSQL to running the body.
//!
//! - `mod.rs` (here): the entry point, the [`Memoized`] future (an in-process hit answers synchronously,
//!   everything else runs boxed), the in-process tier's fast path, and `{fn}_refresh` scoping.
//! - `call.rs`: one call against the store: lookups, writes guarded against invalidations, stale refreshes.
//! - `leader.rs`: single-flight: followers wait for one leader, which may hold a cluster-wide lease.
//! - `work.rs`: the body, made only when needed, or a task that runs the call in the background;
//!   `background.rs`: those background refreshes (stale-while-revalidate, `refresh_ahead`).
//! - `lease.rs`: cluster-wide leases; `scope.rs`: the tags a running body gathers.
//! - `private.rs`, `site.rs`, `policy.rs`: the contract with generated code (`__private`).

mod background;
mod call;
mod leader;
pub(crate) mod lease;
pub(crate) mod policy;
pub(crate) mod scope;
pub(crate) mod similar;
pub(crate) mod site;
pub(crate) mod stream;
pub(crate) mod work;

use crate::cache::{MemoHandle, PgCache};
use crate::entry::{EntryMeta, ReadFrom};
use crate::error::CacheError;
use crate::observe::Event;
use crate::tags::Tags;
use crate::tier::local::LocalEntry;
use crate::usage::Usage;
use call::Call;
use policy::Policy;
use scope::TagScope;
use similar::Similar;
use site::{CacheRef, SingleFlight, Site};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tracing::Instrument;
use work::{Body, How, Work};

tokio::task_local! {
    /// Set by a `{fn}_refresh` companion: the one key whose lookup is skipped.
    static REFRESH_KEY: String;
}

/// Runs `call` with `key` marked for refresh (see `__private::refresh`).
pub(crate) async fn refresh_scope<R>(key: String, call: impl Future<Output = R>) -> R {
    REFRESH_KEY.scope(key, call).await
}

fn refresh_requested(key: &str) -> bool {
    REFRESH_KEY.try_with(|k| k == key).unwrap_or(false)
}

pub(crate) fn memoize_with<R, P, M, F, L>(
    site: &'static Site,
    cache: CacheRef,
    key: Result<String, CacheError>,
    policy: P,
    make: M,
    values: L,
    similar: Option<Similar>,
) -> Memoized<R, impl Future<Output = R>>
where
    P: Policy<R>,
    M: FnOnce(How) -> Body<F>,
    F: Future<Output = R>,
    L: LocalValues<R>,
{
    let cache = cache.resolve();
    // Inside a tenant scope the key is qualified by the tenant (see `tenant.rs`): every step below, the
    // in-process tier included, sees only the qualified key. A refused scope is a key error: uncached.
    let key = key.and_then(crate::tenant::scoped_owned);
    // The computation this call is part of, if any: it inherits this call's tags, hit or miss.
    let outer = crate::memo::scope::current();
    // Each call is a span, so that tracing and OpenTelemetry users see cache hits in their traces; `outcome`
    // and `tier` are filled in as they become known (see `record_outcome`).
    let span = tracing::info_span!(
        "pg_cached",
        namespace = site.namespace,
        function = site.function,
        outcome = tracing::field::Empty,
        tier = tracing::field::Empty,
    );
    let store = cache.as_ref().map(|cache| cache.memo().sealed(site.encrypt));
    let key_str = key.as_ref().ok().map(|(key, _)| key.as_str());
    let hit = span.in_scope(|| local_hit(site, store, key_str, &policy, values, outer.as_deref()));
    if let (Some((value, remaining_ms)), Some(store), Ok((key, _))) = (hit, store, &key) {
        span.record("outcome", "hit").record("tier", "local");
        background::refresh_ahead(store, site, key, remaining_ms, Work::new(make));
        return Memoized::ready(value);
    }
    let similar = similar.map(Similar::in_tenant_scope);
    Memoized::pending(memoize_slow(site, cache, key, policy, Work::new(make), outer, similar).instrument(span))
}

/// Notes what `event` says about the current memoized call on its span: `outcome` is `hit`, `miss`,
/// `stale` or `error`; `tier`, for a hit, `local`, `postgres` or `flight` (another caller's computation).
pub(crate) fn record_outcome(event: Event) {
    let (outcome, tier) = match event {
        Event::Hit => ("hit", Some("postgres")),
        Event::LocalHit => ("hit", Some("local")),
        Event::Coalesced => ("hit", Some("flight")),
        Event::Miss => ("miss", None),
        Event::StaleServed | Event::StaleIfError => ("stale", None),
        Event::Error => ("error", None),
        Event::Execution | Event::LocalMiss | Event::Undecryptable => return,
    };
    let span = tracing::Span::current();
    span.record("outcome", outcome);
    if let Some(tier) = tier {
        span.record("tier", tier);
    }
}

/// The future of a memoized call: a value already found in the in-process tier, or the boxed lookup.
pub struct Memoized<R, S> {
    state: MemoizedState<R, S>,
}

enum MemoizedState<R, S> {
    Ready(Option<R>),
    Pending(Pin<Box<S>>),
}

impl<R, S> Memoized<R, S> {
    fn ready(value: R) -> Self {
        Memoized { state: MemoizedState::Ready(Some(value)) }
    }
    fn pending(future: S) -> Self {
        Memoized { state: MemoizedState::Pending(Box::pin(future)) }
    }
}

// Nothing is ever pinned in place: the value is moved out, and the pending future lives in a `Box`.
impl<R, S> Unpin for Memoized<R, S> {}

impl<R, S: Future<Output = R>> Future for Memoized<R, S> {
    type Output = R;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<R> {
        match &mut self.get_mut().state {
            MemoizedState::Ready(value) => {
                Poll::Ready(value.take().expect("a memoized call polled after it completed"))
            }
            MemoizedState::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl<R, S> std::fmt::Debug for Memoized<R, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            MemoizedState::Ready(_) => "ready",
            MemoizedState::Pending(_) => "pending",
        };
        f.debug_struct("Memoized").field("state", &state).finish()
    }
}

/// How in-process hits become values: by decoding the JSON, or by cloning an already decoded value.
pub(crate) trait LocalValues<R> {
    fn take(&self, entry: &LocalEntry) -> Option<R>;
    fn keep(&self, entry: &LocalEntry, value: &R);
}

pub(crate) struct JsonOnly;
impl<R> LocalValues<R> for JsonOnly {
    fn take(&self, _: &LocalEntry) -> Option<R> {
        None
    }
    fn keep(&self, _: &LocalEntry, _: &R) {}
}

pub(crate) struct Typed;
impl<R: Clone + Send + Sync + 'static> LocalValues<R> for Typed {
    fn take(&self, entry: &LocalEntry) -> Option<R> {
        entry.typed::<R>()
    }
    fn keep(&self, entry: &LocalEntry, value: &R) {
        entry.set_typed(value.clone());
    }
}

/// Answers from the in-process tier, synchronously, when it holds the key: the value and the milliseconds the
/// entry has left in PostgreSQL.
fn local_hit<R, P, L>(
    site: &Site,
    cache: Option<MemoHandle<'_>>,
    key: Option<&str>,
    policy: &P,
    values: L,
    outer: Option<&TagScope>,
) -> Option<(R, Option<i64>)>
where
    P: Policy<R>,
    L: LocalValues<R>,
{
    let (cache, key) = (cache?, key?);
    if refresh_requested(key) {
        return None;
    }
    let tier = cache.tier(site.local)?;
    let entry = tier.get(key);
    let value = entry.as_ref().and_then(|entry| {
        values.take(entry).or_else(|| {
            let value = policy.decode(&entry.json).ok()?;
            values.keep(entry, &value);
            Some(value)
        })
    });
    match (value, entry) {
        (Some(value), Some(entry)) => {
            served(cache, site, Event::LocalHit, &entry.meta, outer);
            Some((value, entry.remaining_ms()))
        }
        _ => {
            cache.record(site.namespace, Event::LocalMiss);
            None
        }
    }
}

/// Counts a value served from an entry (`event`: which kind of hit) with the compute time and usage it saved,
/// and passes its tags and usage on to the computation this call is part of.
pub(crate) fn served(cache: MemoHandle<'_>, site: &Site, event: Event, meta: &EntryMeta, outer: Option<&TagScope>) {
    cache.served(site.namespace, event, meta);
    if let Some(outer) = outer {
        outer.inherit_entry(meta);
    }
}

/// `key`: the call's key and the tenant whose scope qualified it, or why there is none.
async fn memoize_slow<R, P, M, F>(
    site: &'static Site,
    cache: Option<PgCache>,
    key: Result<(String, Option<Arc<str>>), CacheError>,
    policy: P,
    mut work: Work<M, F>,
    outer: Option<Arc<TagScope>>,
    similar: Option<Similar>,
) -> R
where
    P: Policy<R>,
    M: FnOnce(How) -> Body<F>,
    F: Future<Output = R>,
{
    let Some(cache) = cache else {
        // No cache: the body still runs in a scope of its own, so that its tags reach an outer cached call.
        let scope = TagScope::new(site.tags);
        let outcome = crate::memo::scope::gather(Arc::clone(&scope), work.body()).await;
        if let Some(outer) = &outer {
            outer.absorb(&scope.finish(), scope.usage());
        }
        return outcome;
    };
    let store = cache.memo().sealed(site.encrypt);
    let (key, tenant) = match key {
        Ok(key) => key,
        Err(error) => {
            store.record_error(site.namespace, &error);
            record_outcome(Event::Error);
            tracing::warn!(namespace = site.namespace, function = site.function, %error, "cannot build the cache key; running uncached");
            return run(store, site, outer.as_deref(), work.body()).await.0;
        }
    };
    let local = store.tier(site.local);
    let mut call =
        Call { cache: store, site, key: &key, tenant, policy: &policy, local, outer: outer.as_deref(), similar: None };
    if refresh_requested(&key) {
        // A refresh stores the text and vector again too (the entry is rewritten under the same key).
        let query = match similar {
            Some(similar) => similar::prepare(site, &cache, similar).await,
            None => None,
        };
        call.similar = query.as_ref();
        return call.refresh_now(work.body()).await;
    }
    // A hit, the common case, needs neither the flight map nor the body. With `similar(arg)` the exact key is
    // looked up first whatever the single-flight mode, then the nearest text of the scope.
    let store_down = match (site.single_flight, &similar) {
        (SingleFlight::Off, None) => false,
        _ => match call.find_live(Event::Hit, ReadFrom::AnyCopy).await {
            Ok(Some((outcome, remaining_ms))) => {
                background::refresh_ahead(store, site, &key, remaining_ms, work);
                return outcome;
            }
            Ok(None) => false,
            Err(()) => true,
        },
    };
    let query = match similar {
        Some(similar) if !store_down => similar::prepare(site, &cache, similar).await,
        _ => None,
    };
    if let Some(query) = &query {
        if let Some(outcome) = call.similar_hit(query).await {
            return outcome;
        }
    }
    call.similar = query.as_ref();
    match site.single_flight {
        SingleFlight::Off => call.uncoalesced(work).await,
        SingleFlight::Process | SingleFlight::Cluster => call.single_flight(work, store_down).await,
    }
}

/// What a run of the body produced besides its outcome.
pub(crate) struct Computed {
    /// The tags it gathered (its static tags, `tag()` calls, and inner memoized calls'), or the first invalid
    /// tag it was given (then the outcome is not stored).
    pub(crate) tags: Result<Option<Tags>, CacheError>,
    /// How long it ran, in microseconds.
    pub(crate) compute_us: i64,
    /// What it consumed: its `usage()` reports and its inner memoized calls' usage.
    pub(crate) usage: Usage,
}

/// Runs the body in a tag scope of its own, timing it; its tags and usage also go to `outer`, the computation
/// this call is part of, whatever becomes of its outcome (the tokens were spent either way).
async fn run<R>(
    cache: MemoHandle<'_>,
    site: &Site,
    outer: Option<&TagScope>,
    body: impl Future<Output = R>,
) -> (R, Computed) {
    cache.record(site.namespace, Event::Execution);
    let started = std::time::Instant::now();
    let scope = TagScope::new(site.tags);
    let outcome = crate::memo::scope::gather(Arc::clone(&scope), body).await;
    cache.computed(site.namespace, Some(started));
    let (tags, usage) = (scope.finish(), scope.usage());
    if let Some(outer) = outer {
        outer.absorb(&tags, usage);
    }
    let compute_us = i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX);
    (outcome, Computed { tags, compute_us, usage })
}
