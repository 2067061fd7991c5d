//! Single-flight: concurrent misses of one key share one computation. The first caller to join the key's
//! flight leads: it looks the key up again, takes a cluster-wide lease when asked, runs the body and
//! publishes the outcome; the others wait and take the outcome as JSON.

use super::call::{Call, Fallback, Found};
use super::lease::Lease;
use super::policy::Policy;
use super::site::SingleFlight;
use super::work::{Body, How, Work};
use super::Computed;
use crate::entry::{EntryMeta, ReadFrom, Start};
use crate::observe::Event;
use crate::tier::flight::Shared;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What the leader of a flight still has to do once its followers have been answered.
enum LeaderWork<R> {
    /// Give up the lease if one is held, and return the outcome.
    Done(R, Option<Lease>),
    /// Refresh a stale entry (see `Call::refresh_stale`), serving the stale value meanwhile or if it fails.
    Refresh(R, EntryMeta, Start),
}

impl<P> Call<'_, P> {
    /// Joins the key's flight (after a lookup that missed). The leader looks up again or computes (under a
    /// cluster lease when asked); followers take its outcome as JSON the moment it is known. `store_down`:
    /// that lookup failed to reach the store, so the leader does not wait for another timeout.
    ///
    /// The work is only borrowed by the leader's initializer: a follower keeps its own, its body unmade, in
    /// case the leader's outcome cannot be shared.
    pub(super) async fn single_flight<R, M, F>(&self, mut work: Work<M, F>, store_down: bool) -> R
    where
        P: Policy<R>,
        M: FnOnce(How) -> Body<F>,
        F: Future<Output = R>,
    {
        // A flight that finished between the caller's lookup and this join has stored its value by then, and
        // the leader's own lookup finds it.
        let mut ticket = self.cache.flights().join(self.key);
        let mut leader: Option<LeaderWork<R>> = None;
        let (work_ref, leader_slot) = (&mut work, &mut leader);
        let shared = ticket
            .cell()
            .get_or_init(|| async move {
                let (shared, left) = self.lead(work_ref, store_down).await;
                *leader_slot = Some(left);
                shared
            })
            .await
            .clone();
        if let Some(left) = leader {
            ticket.lead();
            return self.finish_leading(left, work).await;
        }
        drop(ticket);
        if let Some(outcome) = self.follow(&shared).await {
            return outcome;
        }
        // The leader's outcome could not be shared (an `Err`, a `None`, a value JSONB cannot hold, a value
        // invalidated since): this caller goes its own way, as if single-flight were off.
        self.uncoalesced(work).await
    }

    /// A follower's outcome from what its leader published, if it can use it.
    async fn follow<R>(&self, shared: &Shared) -> Option<R>
    where
        P: Policy<R>,
    {
        let (json, meta, event) = match shared {
            // Read it back: this read starts after the follower's call did, so it reflects every invalidation
            // that completed before the call, in any process. The copy serves only if the store fails.
            Shared::Stored(json, meta) => match self.find_live(Event::Coalesced, ReadFrom::Primary).await {
                Ok(found) => return found.map(|(outcome, _)| outcome),
                Err(()) => (json, meta, Event::Coalesced),
            },
            Shared::Unstored(json, meta) => (json, meta, Event::Coalesced),
            // The same for a stale value: served only if the store still holds it (or a fresher one).
            Shared::Stale(json, meta) => match self.cache.lookup(self.key, self.site.stale, ReadFrom::Primary).await {
                Ok(lookup) => return self.still_stale(lookup),
                Err(_) => (json, meta, Event::StaleServed),
            },
            Shared::Fallback(json, meta) => (json, meta, Event::StaleIfError),
            Shared::Unshareable => return None,
        };
        match self.policy.decode(json) {
            Ok(outcome) => {
                self.record_served(event, meta);
                Some(outcome)
            }
            Err(error) => {
                tracing::warn!(namespace = self.site.namespace, %error, "shared value does not decode; recomputing");
                None
            }
        }
    }

    /// A stale value's follower, from its own read: the refreshed entry, the stale one still there, or `None`
    /// (deleted since, or of another shape) to compute its own.
    fn still_stale<R>(&self, lookup: crate::entry::Lookup) -> Option<R>
    where
        P: Policy<R>,
    {
        let outcome = self.policy.decode(lookup.json.as_deref()?).ok()?;
        self.record_served(if lookup.fresh { Event::Coalesced } else { Event::StaleServed }, &lookup.meta);
        Some(outcome)
    }

    /// The leader's part inside the flight: what followers get, and what is left to do afterwards.
    /// `store_down`: this caller's lookup just failed to reach the store; do not wait for another timeout.
    async fn lead<R, M, F>(&self, work: &mut Work<M, F>, store_down: bool) -> (Shared, LeaderWork<R>)
    where
        P: Policy<R>,
        M: FnOnce(How) -> Body<F>,
        F: Future<Output = R>,
    {
        let cluster = self.site.single_flight == SingleFlight::Cluster;
        let mut skip_lookup = store_down;
        loop {
            // The primary: a value another caller has just stored may not have reached a read replica yet.
            let skip = std::mem::take(&mut skip_lookup);
            let found = if skip { Found::Missing(None, None) } else { self.find(ReadFrom::Primary).await };
            match found {
                Found::Fresh(outcome, json, meta) => {
                    return (Shared::Stored(json, meta), LeaderWork::Done(outcome, None));
                }
                Found::Stale(stale, json, meta, start) => {
                    // Followers get the stale value (each after reading it back); the leader refreshes it,
                    // in the background if it can (see `Call::refresh_stale`).
                    return (Shared::Stale(json, meta.clone()), LeaderWork::Refresh(stale, meta, start));
                }
                Found::Missing(start, fallback) => {
                    let mut lease = None;
                    if cluster && start.is_some() {
                        match Lease::try_take(self.cache.cache(), self.key).await {
                            Ok(Some(held)) => lease = Some(held),
                            Ok(None) => {
                                // Another process computes: wait for its value, or for its lease to lapse.
                                if let Some((outcome, json, meta)) = self.await_other_process().await {
                                    return (Shared::Stored(json, meta), LeaderWork::Done(outcome, None));
                                }
                                continue;
                            }
                            Err(_) => {}
                        }
                    }
                    let (outcome, computed) = self.run(work.body()).await;
                    let shared = self.publish(&outcome, start, &computed, fallback.as_ref()).await;
                    let outcome = self.or_fallback(outcome, fallback.as_ref());
                    return (shared, LeaderWork::Done(outcome, lease));
                }
            }
        }
    }

    /// Stores a computed outcome (before followers are answered, so that they can read it back) and says what
    /// followers get: with `stale_if_error`, a failed outcome's fallback.
    async fn publish<R>(
        &self,
        outcome: &R,
        start: Option<Start>,
        computed: &Computed,
        fallback: Option<&Fallback>,
    ) -> Shared
    where
        P: Policy<R>,
    {
        let Some(json) = self.encode(outcome) else {
            return match fallback {
                Some(fallback) if self.policy.failed(outcome) => {
                    Shared::Fallback(Arc::clone(&fallback.json), fallback.meta.clone())
                }
                _ => Shared::Unshareable,
            };
        };
        let tags = computed.tags.as_ref().ok().cloned().flatten();
        let meta = EntryMeta { tags, compute_us: None, usage: computed.usage };
        // `start` is `None` when the store is down: followers still get the outcome, instead of each paying
        // another timeout and running the body themselves.
        let Some(start) = start else { return Shared::Unstored(json, meta) };
        match self.write(&json, start, computed).await {
            Ok(true) => Shared::Stored(json, meta),
            // Computed before an invalidation of the key: nobody may be served it.
            Ok(false) => Shared::Unshareable,
            Err(()) => Shared::Unstored(json, meta),
        }
    }

    /// Waits while another process holds the lease: returns its value once stored, or `None` when the lease
    /// lapsed (or the store failed) so that the caller tries to take over.
    async fn await_other_process<R>(&self) -> Option<(R, Arc<str>, EntryMeta)>
    where
        P: Policy<R>,
    {
        let done = self.cache.waiter(self.key);
        let mut poll = Duration::from_millis(25);
        loop {
            let notified = done.notified();
            let _ = tokio::time::timeout(poll, notified).await;
            poll = (poll * 2).min(Duration::from_millis(500));
            match self.cache.lookup(self.key, None, ReadFrom::Primary).await {
                Ok(lookup) => {
                    if let Some(json) = lookup.json {
                        if let Ok(outcome) = self.policy.decode(&json) {
                            self.record_served(Event::Coalesced, &lookup.meta);
                            return Some((outcome, json, lookup.meta));
                        }
                        return None;
                    }
                }
                Err(_) => return None,
            }
            // Still missing: is the lease still held? If not, go back and compete for it.
            match self.cache.lease_is_live(self.key).await {
                Ok(true) => {}
                Ok(false) | Err(_) => return None,
            }
        }
    }

    async fn finish_leading<R, M, F>(&self, left: LeaderWork<R>, work: Work<M, F>) -> R
    where
        P: Policy<R>,
        M: FnOnce(How) -> Body<F>,
        F: Future<Output = R>,
    {
        match left {
            LeaderWork::Done(outcome, lease) => {
                if let Some(lease) = lease {
                    lease.release().await;
                }
                outcome
            }
            LeaderWork::Refresh(stale, meta, start) => self.refresh_stale(work, stale, &meta, start).await,
        }
    }
}
