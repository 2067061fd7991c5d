//! Memoized streams (`#[pg_cached(stream)]`): a function that returns a stream of `Result<C, E>` items (an
//! LLM answer arriving token by token) is recorded as its caller reads it, stored whole when it ends, and
//! replayed from then on.
//!
//! - **Miss**: the caller reads the function's own stream; each `Ok` chunk is recorded as it passes. The
//!   entry is written (guarded against invalidations, like every memoized write) only when the stream ends
//!   normally: a stream that yields an `Err`, that is dropped by its caller before its end, whose chunks
//!   pass `max_value_bytes`, or that `cache_if` refuses, stores nothing, and the next call computes again.
//! - **Hit**: the stored chunks come back in order, as fast as the caller reads them or, with
//!   `replay = "as_recorded"`, with the gaps they were recorded with.
//! - **Concurrent callers of a cold stream** in one process run it once: the first drives it and publishes
//!   each chunk to the key's flight (`tier/flight.rs`); the others follow it (`follow.rs`), from its first
//!   chunk and then live when the error type can report an interruption (`interrupt.rs`), or once it is
//!   whole otherwise. Across processes, `single_flight = "cluster"` makes followers wait for the stored
//!   entry through a lease.
//! - **`similar(arg)`**: after the exact key misses, the nearest stored text of the call's scope is looked
//!   for (`memo/similar.rs`); its recording is replayed as a hit. A recording that is stored keeps the
//!   call's text and vector beside it, so that paraphrases find it.
//!
//! `record.rs` holds the stored form and the recorder; this file the stream that ties them together.

mod follow;
mod interrupt;
mod record;
mod replay;

pub use interrupt::{Interrupt, InterruptInto, Interruption, NoInterrupt, StreamInterrupted};

use super::lease::Lease;
use super::scope::{gather_step, TagScope};
use super::similar::{self, Query, Similar};
use super::site::{CacheRef, SingleFlight, Site};
use crate::cache::{MemoHandle, PgCache};
use crate::entry::{EntryMeta, ReadFrom, Start};
use crate::error::CacheError;
use crate::observe::Event;
use crate::tier::flight::{Feed, StreamLead, StreamTicket};
use follow::{Follower, Step};
use futures_util::Stream;
use record::{Recorder, Spoiled, Stored};
use replay::{store, Replay};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::watch;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The stream of a memoized stream function's call (see the module docs).
pub struct MemoStream<C, E, S> {
    site: &'static Site,
    keep: Option<fn(&[C]) -> bool>,
    /// How an interruption of the flight this call follows becomes an `E`: with it, this call reads the
    /// leader's chunks live.
    live: Interruption<E>,
    /// The computation this call is part of (an outer memoized body), which inherits its tags.
    outer: Option<Arc<TagScope>>,
    state: State<C, E, S>,
}

impl<C, E, S> std::fmt::Debug for MemoStream<C, E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoStream").field("function", &self.site.function).finish_non_exhaustive()
    }
}

enum State<C, E, S> {
    /// Looking the key up, with the function's stream built but not polled yet.
    Looking {
        source: Option<S>,
        decision: BoxFuture<Decision>,
    },
    /// Reading the chunks of the flight another caller leads.
    Following(Box<Following<C, E, S>>),
    Replaying(Replay<C>),
    Live(Box<Live<S>>),
    /// Writing the recorded stream; then the end.
    Storing(BoxFuture<()>),
    Done,
}

/// What the lookup decided.
enum Decision {
    /// Replay this entry (found in `cache`, counted as `event`).
    Hit(Stored, EntryMeta, Event, PgCache),
    /// Run the function's stream, recording it under `plan` if there is one (none: no cache, or it failed).
    Compute(Option<Plan>),
    /// Another caller in this process computes it: read its feed.
    Follow(watch::Receiver<Feed>, PgCache, String, Option<Arc<str>>),
}

struct Following<C, E, S> {
    follower: Follower<C, E>,
    /// The function's own stream, for when the leader gives up before this call read anything.
    source: Option<S>,
    cache: PgCache,
    key: String,
    tenant: Option<Arc<str>>,
}

/// Where and how a computed stream is stored.
struct Plan {
    cache: PgCache,
    key: String,
    /// The tenant whose scope qualified the key, for the row's column.
    tenant: Option<Arc<str>>,
    start: Start,
    /// This process's flight, which the followers watch.
    lead: Option<StreamLead>,
    /// The cluster-wide lease, with `single_flight = "cluster"`.
    lease: Option<Lease>,
    /// With `similar(arg)`: the text and vector to store beside the recording.
    similar: Option<Query>,
}

struct Live<S> {
    source: Pin<Box<S>>,
    scope: Arc<TagScope>,
    recorder: Recorder,
    plan: Option<Plan>,
    started: Instant,
}

/// A memoized stream call: looks `key` up in `cache`, replays it on a hit, and on a miss reads `source`, the
/// function's own stream, recording it. `keep` is the `cache_if` predicate over the whole stream's chunks;
/// `similar`, with `similar(arg)`, the call's scope and text.
///
/// The function's body has run already, to build `source` (a stream does its work when it is polled, and
/// the returned stream may not borrow the arguments longer than the function's signature says); on a hit
/// `source` is dropped unpolled.
pub fn memoize_stream<C, E, S>(
    site: &'static Site,
    cache: CacheRef,
    key: Result<String, CacheError>,
    keep: Option<fn(&[C]) -> bool>,
    live: Interruption<E>,
    similar: Option<Similar>,
    source: S,
) -> MemoStream<C, E, S>
where
    C: Serialize + DeserializeOwned + Send + 'static,
    S: Stream<Item = Result<C, E>>,
{
    let outer = super::scope::current();
    // Inside a tenant scope the key is qualified by the tenant (see `tenant.rs`).
    let key = key.and_then(crate::tenant::scoped_owned);
    // So is the scope of `similar(arg)`: vectors are only compared with the same tenant's.
    let similar = similar.map(Similar::in_tenant_scope);
    let decision: BoxFuture<Decision> = match (cache.resolve(), key) {
        (Some(cache), Ok((key, tenant))) => Box::pin(decide(cache, site, key, tenant, similar)),
        (Some(cache), Err(error)) => {
            cache.memo().record_error(site.namespace, &error);
            tracing::warn!(namespace = site.namespace, %error, "cannot build the cache key; streaming uncached");
            Box::pin(std::future::ready(Decision::Compute(None)))
        }
        (None, _) => Box::pin(std::future::ready(Decision::Compute(None))),
    };
    MemoStream { site, keep, live, outer, state: State::Looking { source: Some(source), decision } }
}

/// Looks the key up (then, with `similar`, the nearest text of its scope); on a miss, joins the key's flight
/// (following its leader when there is one), and with `single_flight = "cluster"` the key's lease.
async fn decide(
    cache: PgCache,
    site: &'static Site,
    key: String,
    tenant: Option<Arc<str>>,
    mut similar: Option<Similar>,
) -> Decision {
    let store = cache.memo().sealed(site.encrypt);
    let mut from = ReadFrom::AnyCopy;
    let mut query = None;
    loop {
        let seen = store.streams_ended();
        let lookup = match store.lookup(&key, None, from).await {
            Ok(lookup) => lookup,
            // Counted and logged by the store; a store that cannot be read will not take a write either.
            Err(_) => return Decision::Compute(None),
        };
        let event = if from == ReadFrom::AnyCopy { Event::Hit } else { Event::Coalesced };
        if let Some(stored) = lookup.json.as_deref().filter(|_| lookup.fresh).and_then(Stored::parse) {
            return Decision::Hit(stored, lookup.meta, event, cache);
        }
        // Once, after the first exact miss: a stored paraphrase is served like a hit.
        if let Some(similar) = similar.take() {
            query = similar::prepare(site, &cache, similar).await;
            if let Some((stored, meta)) = match &query {
                Some(query) => nearest(&cache, site, &key, query).await,
                None => None,
            } {
                return Decision::Hit(stored, meta, Event::Hit, cache);
            }
        }
        let start = lookup.start();
        if site.single_flight == SingleFlight::Off {
            store.record(site.namespace, Event::Miss);
            return Decision::Compute(Some(Plan {
                cache,
                key,
                tenant,
                start,
                lead: None,
                lease: None,
                similar: query,
            }));
        }
        let lead = match store.join_stream(&key, seen) {
            StreamTicket::Lead(lead) => lead,
            StreamTicket::Follow(feed) => return Decision::Follow(feed, cache, key, tenant),
            StreamTicket::Recheck => {
                // A flight ended after this lookup: its entry may be there now.
                from = ReadFrom::Primary;
                continue;
            }
        };
        let lease = match site.single_flight {
            SingleFlight::Cluster => match Lease::try_take(&cache, &key).await {
                Ok(Some(lease)) => Some(lease),
                Ok(None) => {
                    // Another process streams it: wait until it is stored or its lease lapses.
                    wait_for_other_process(store, &key).await;
                    from = ReadFrom::Primary;
                    continue;
                }
                Err(_) => None,
            },
            _ => None,
        };
        store.record(site.namespace, Event::Miss);
        return Decision::Compute(Some(Plan { cache, key, tenant, start, lead: Some(lead), lease, similar: query }));
    }
}

/// The recording of the nearest stored text of `query`'s scope, if one is near enough (see
/// `PgCache::read_nearest`); `None` on a miss and when the store fails (logged).
async fn nearest(cache: &PgCache, site: &Site, key: &str, query: &Query) -> Option<(Stored, EntryMeta)> {
    let found = cache
        .read_nearest(&query.scope, &query.text, &query.vector, query.threshold, |found| async move {
            let entry = cache.memo().get_live(&found, ReadFrom::AnyCopy).await?;
            Ok(entry.and_then(|entry| Some((Stored::parse(&entry.json)?, entry.meta))))
        })
        .await;
    match found {
        Ok(Some((hit, candidate))) => {
            tracing::debug!(
                namespace = site.namespace,
                key,
                matched = &*candidate.key,
                score = candidate.score,
                "memoized stream: semantic hit"
            );
            Some(hit)
        }
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(namespace = site.namespace, %error, "semantic lookup failed; computing");
            None
        }
    }
}

/// Polls until `key` has an entry or nobody holds its lease (at most a lease's duration).
async fn wait_for_other_process(store: MemoHandle<'_>, key: &str) {
    let done = store.waiter(key);
    let mut poll = Duration::from_millis(25);
    loop {
        let _ = tokio::time::timeout(poll, done.notified()).await;
        poll = (poll * 2).min(Duration::from_millis(500));
        let stored = store.lookup(key, None, ReadFrom::Primary).await.map(|l| l.json.is_some());
        if !matches!(stored, Ok(false)) || !matches!(store.lease_is_live(key).await, Ok(true)) {
            return;
        }
    }
}

// Nothing is pinned in place: the source and the futures are boxed, and the rest is moved freely.
impl<C, E, S> Unpin for MemoStream<C, E, S> {}

impl<C, E, S> Stream for MemoStream<C, E, S>
where
    C: Serialize + DeserializeOwned + Send + 'static,
    S: Stream<Item = Result<C, E>>,
{
    type Item = Result<C, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<C, E>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Looking { source, decision } => {
                    let decided = std::task::ready!(decision.as_mut().poll(cx));
                    let source = source.take();
                    this.state = this.after_lookup(decided, source);
                }
                State::Following(following) => {
                    let step = std::task::ready!(following.follower.poll_step(cx));
                    if let Step::Item(item) = step {
                        return Poll::Ready(Some(item));
                    }
                    let State::Following(following) = std::mem::replace(&mut this.state, State::Done) else {
                        unreachable!("matched just above")
                    };
                    this.state = this.after_following(*following, step);
                }
                State::Replaying(replay) => return replay.poll_next(cx).map(|chunk| chunk.map(Ok)),
                State::Live(live) => {
                    let item = std::task::ready!(gather_step(&live.scope, || live.source.as_mut().poll_next(cx)));
                    match item {
                        Some(Ok(chunk)) => {
                            let json = live.recorder.chunk(&chunk);
                            if let Some(lead) = live.plan.as_ref().and_then(|plan| plan.lead.as_ref()) {
                                match json {
                                    Some(json) => lead.chunk(json),
                                    None => lead.interrupt(),
                                }
                            }
                            return Poll::Ready(Some(Ok(chunk)));
                        }
                        Some(Err(error)) => {
                            live.recorder.failed();
                            if let Some(lead) = live.plan.as_ref().and_then(|plan| plan.lead.as_ref()) {
                                lead.interrupt();
                            }
                            return Poll::Ready(Some(Err(error)));
                        }
                        None => {
                            let State::Live(live) = std::mem::replace(&mut this.state, State::Done) else {
                                unreachable!("matched just above")
                            };
                            this.state = this.finish(*live);
                        }
                    }
                }
                State::Storing(storing) => {
                    std::task::ready!(storing.as_mut().poll(cx));
                    this.state = State::Done;
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }
}

impl<C, E, S> MemoStream<C, E, S>
where
    C: Serialize + DeserializeOwned + Send + 'static,
    S: Stream<Item = Result<C, E>>,
{
    fn after_lookup(&self, decision: Decision, source: Option<S>) -> State<C, E, S> {
        match decision {
            Decision::Hit(stored, meta, event, cache) => match self.replay(stored) {
                Some(replay) => {
                    cache.memo().served(self.site.namespace, event, &meta);
                    super::record_outcome(event);
                    if let Some(outer) = &self.outer {
                        outer.inherit_entry(&meta);
                    }
                    State::Replaying(replay)
                }
                // Stored in a shape that no longer decodes as `C`: compute it again.
                None => self.start_live(source, None),
            },
            Decision::Compute(plan) => self.start_live(source, plan),
            Decision::Follow(feed, cache, key, tenant) => {
                let follower = Follower::new(feed, self.live);
                State::Following(Box::new(Following { follower, source, cache, key, tenant }))
            }
        }
    }

    /// What a follower does once it no longer reads its leader's feed.
    fn after_following(&self, following: Following<C, E, S>, step: Step<C, E>) -> State<C, E, S> {
        let Following { source, cache, key, tenant, .. } = following;
        let coalesced = |tags: Option<&crate::tags::Tags>| {
            cache.memo().record(self.site.namespace, Event::Coalesced);
            super::record_outcome(Event::Coalesced);
            if let Some(outer) = &self.outer {
                outer.inherit(tags);
            }
        };
        match step {
            Step::Item(_) | Step::Stop => State::Done,
            Step::End(tags) => {
                coalesced(tags.as_ref());
                State::Done
            }
            Step::Whole(chunks, tags) => {
                coalesced(tags.as_ref());
                State::Replaying(Replay::whole(chunks))
            }
            // Without the text: a paraphrase was looked for before this call followed the flight.
            Step::Retry => {
                State::Looking { source, decision: Box::pin(decide(cache.clone(), self.site, key, tenant, None)) }
            }
            Step::Alone => self.start_live(source, None),
        }
    }

    fn replay(&self, stored: Stored) -> Option<Replay<C>> {
        Replay::new(stored, self.site.replay_as_recorded)
    }

    fn start_live(&self, source: Option<S>, plan: Option<Plan>) -> State<C, E, S> {
        let Some(source) = source else { return State::Done };
        if let Some(plan) = &plan {
            plan.cache.memo().record(self.site.namespace, Event::Execution);
        }
        let scope = TagScope::new(self.site.tags);
        let limit = plan.as_ref().map_or(0, |plan| plan.cache.memo().config().max_value_bytes);
        let source = Box::pin(source);
        State::Live(Box::new(Live { source, scope, recorder: Recorder::new(limit), plan, started: Instant::now() }))
    }

    /// The stream ended normally: stores the recording, if it may be stored.
    fn finish(&self, live: Live<S>) -> State<C, E, S> {
        let Live { scope, recorder, plan, started, .. } = live;
        let (tags, usage) = (scope.finish(), scope.usage());
        if let Some(outer) = &self.outer {
            outer.absorb(&tags, usage);
        }
        let Some(plan) = plan else { return State::Done };
        if let Some(lead) = &plan.lead {
            lead.complete(tags.as_ref().ok().cloned().flatten());
        }
        let kept = match self.keep {
            Some(keep) => serde_json::from_str::<Vec<C>>(&recorder.chunks_json()).is_ok_and(|chunks| keep(&chunks)),
            None => true,
        };
        let json = match recorder.finish() {
            Ok(json) if kept => json,
            outcome => {
                let why = match outcome {
                    Err(Spoiled::TooLong) => {
                        // Counted like any value over the limit (errors, kind `value_too_large`): the stream
                        // itself passed through whole.
                        let limit = plan.cache.memo().config().max_value_bytes;
                        plan.cache.memo().record_error(self.site.namespace, &CacheError::ValueTooLarge { limit });
                        "its chunks passed max_value_bytes"
                    }
                    Err(Spoiled::Failed) => "an item was an error",
                    Err(Spoiled::Unstorable(reason)) => {
                        let error = CacheError::UnsupportedValue { reason };
                        plan.cache.memo().record_error(self.site.namespace, &error);
                        "a chunk cannot be stored as JSONB"
                    }
                    Ok(_) => "cache_if refused it",
                };
                tracing::debug!(namespace = self.site.namespace, key = plan.key, why, "stream not stored");
                return State::Done;
            }
        };
        let compute_us = i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX);
        State::Storing(Box::pin(store(self.site, plan, json, tags, compute_us, usage)))
    }
}
