//! In-process single-flight: concurrent calls with one key share one computation.
//!
//! Each key in flight has a [`tokio::sync::OnceCell`]. Every caller joins the cell; the first to get into
//! `get_or_init` is the leader and computes, the others wait for the value it publishes. `OnceCell` is what
//! makes a cancelled leader harmless: if the leader's future is dropped mid-computation, the cell stays empty
//! and the next waiter runs its own initializer, so followers are never stranded.
//!
//! Memoized streams have flights of their own ([`Flights::join_stream`]): the leader's caller drives the
//! stream, so nobody can wait inside a `OnceCell` for it. The leader publishes each chunk to a [`Feed`]
//! instead, which followers read from the start and then live; when the leader gives up (its stream failed,
//! or was dropped before the end), the followers that read nothing yet compute their own.

use crate::entry::EntryMeta;
use crate::tags::Tags;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, OnceCell};

/// What a leader hands to the callers that waited for it.
#[derive(Debug, Clone)]
pub(crate) enum Shared {
    /// The outcome is in the store (the leader found or wrote it): followers read it back, so that what
    /// they return reflects every invalidation that completed before their call began; the JSON is a
    /// fallback for when that read fails. The meta carries the tags followers pass on (in that case).
    Stored(Arc<str>, EntryMeta),
    /// The outcome as JSON that could not be stored (the store is down); followers decode their own copy.
    Unstored(Arc<str>, EntryMeta),
    /// An expired value, served while the leader refreshes it (stale-while-revalidate).
    Stale(Arc<str>, EntryMeta),
    /// The computation failed, and an entry expired within `stale_if_error` stands in for it.
    Fallback(Arc<str>, EntryMeta),
    /// The outcome was not cacheable (an `Err`, a `None`, a value JSONB cannot hold), or was computed before
    /// an invalidation: each follower runs the function itself.
    Unshareable,
}

type Cell = OnceCell<Shared>;

#[derive(Debug, Default)]
pub(crate) struct Flights {
    in_flight: Mutex<HashMap<String, Arc<Cell>>>,
    /// Keys being refreshed in the background (stale-while-revalidate, `refresh_ahead`): one refresh per key.
    refreshing: Mutex<HashSet<String>>,
    /// Memoized streams being computed, by key: what their followers watch.
    streams: Mutex<HashMap<String, watch::Receiver<Feed>>>,
    /// How many stream flights that ran to their end have left the map: a caller that looked its key up
    /// before one left may have missed the entry it wrote, and looks again rather than lead (see
    /// [`Flights::join_stream`]). One counter for all keys: a recheck costs one lookup, a map of recent keys
    /// more than it saves.
    streams_ended: AtomicU64,
}

/// What a stream's flight has produced so far, as its followers see it.
#[derive(Debug, Default)]
pub(crate) struct Feed {
    /// Every chunk the leader's stream yielded so far, as JSON, in order.
    pub(crate) chunks: Vec<Arc<str>>,
    /// How it ended, once it has.
    pub(crate) end: Option<FeedEnd>,
}

/// How a stream's flight ended.
#[derive(Debug, Clone)]
pub(crate) enum FeedEnd {
    /// The stream ended normally: `chunks` is all of it. The tags its computation gathered go to the
    /// followers' own outer computations.
    Complete(Option<Tags>),
    /// The leader gave up: its stream yielded an error, was dropped before its end, or could not be recorded
    /// (a chunk JSONB cannot hold, or more than `max_value_bytes`). Its chunks are gone.
    Interrupted,
}

/// A caller's place in a stream's flight.
#[derive(Debug)]
pub(crate) enum StreamTicket {
    Lead(StreamLead),
    Follow(watch::Receiver<Feed>),
    /// A flight ended since the caller's lookup: look again before leading.
    Recheck,
}

/// The leader's end of a stream's flight: it publishes each chunk, then how the stream ended. Dropped before
/// an end, it interrupts the flight. The flight stays joinable until the lead is dropped (after the entry
/// is written), so that a caller arriving in between replays it from memory.
#[derive(Debug)]
pub(crate) struct StreamLead {
    flights: Arc<Flights>,
    key: String,
    feed: watch::Sender<Feed>,
}

impl StreamLead {
    /// Publishes the next chunk.
    pub(crate) fn chunk(&self, json: &str) {
        self.feed.send_modify(|feed| feed.chunks.push(Arc::from(json)));
    }

    /// The stream ended normally.
    pub(crate) fn complete(&self, tags: Option<Tags>) {
        self.end(FeedEnd::Complete(tags));
    }

    /// The leader gives up: followers that read nothing yet compute again, the others are told. Callers
    /// arriving from now on start a new flight.
    pub(crate) fn interrupt(&self) {
        if self.end(FeedEnd::Interrupted) {
            self.leave();
        }
    }

    /// Sets how the flight ended, unless it already had; whether it did.
    fn end(&self, end: FeedEnd) -> bool {
        self.feed.send_if_modified(|feed| {
            let first = feed.end.is_none();
            if first {
                if matches!(end, FeedEnd::Interrupted) {
                    feed.chunks = Vec::new();
                }
                feed.end = Some(end);
            }
            first
        })
    }

    /// Takes the flight out of the map, if it is still this one's.
    fn leave(&self) {
        let mut streams = self.flights.streams.lock().unwrap_or_else(|e| e.into_inner());
        if streams.get(&self.key).is_some_and(|receiver| receiver.same_channel(&self.feed.subscribe())) {
            streams.remove(&self.key);
            if matches!(self.feed.borrow().end, Some(FeedEnd::Complete(_))) {
                self.flights.streams_ended.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

impl Drop for StreamLead {
    fn drop(&mut self) {
        self.end(FeedEnd::Interrupted);
        self.leave();
    }
}

impl Flights {
    /// Joins the flight for `key`, starting one if there is none.
    pub(crate) fn join(&self, key: &str) -> Ticket<'_> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let cell = Arc::clone(map.entry(key.to_owned()).or_default());
        Ticket { flights: self, key: key.to_owned(), cell, leader: false }
    }

    /// Detaches the flights whose key matches: their members finish as they are, and callers arriving from
    /// now on start new flights. Used by invalidations, so that nobody who calls after one gets a value
    /// computed before it.
    pub(crate) fn detach(&self, matches: impl Fn(&str) -> bool) {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).retain(|key, _| !matches(key));
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).retain(|key, _| !matches(key));
    }

    /// The count that [`join_stream`](Self::join_stream) compares: read it before looking the key up.
    pub(crate) fn streams_ended(&self) -> u64 {
        self.streams_ended.load(Ordering::SeqCst)
    }

    /// Joins the stream flight of `key`: follows the one that runs; else, unless a flight ended since the
    /// caller read `seen` (from [`streams_ended`](Self::streams_ended), before its lookup), leads a new one.
    pub(crate) fn join_stream(self: &Arc<Self>, key: &str, seen: u64) -> StreamTicket {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = streams.get(key).filter(|r| !matches!(r.borrow().end, Some(FeedEnd::Interrupted))) {
            return StreamTicket::Follow(running.clone());
        }
        // Read under the lock that removals take it under: no flight leaves unseen between the two.
        if self.streams_ended() != seen {
            return StreamTicket::Recheck;
        }
        let (feed, receiver) = watch::channel(Feed::default());
        streams.insert(key.to_owned(), receiver);
        StreamTicket::Lead(StreamLead { flights: Arc::clone(self), key: key.to_owned(), feed })
    }

    /// Marks `key` as being refreshed in the background, unless it already is: the guard unmarks it when the
    /// refresh ends, however it ends.
    pub(crate) fn start_refresh(self: &Arc<Self>, key: &str) -> Option<Refreshing> {
        let mut refreshing = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        refreshing.insert(key.to_owned()).then(|| Refreshing { flights: Arc::clone(self), key: key.to_owned() })
    }

    /// Whether `key` is being refreshed in the background.
    pub(crate) fn is_refreshing(&self, key: &str) -> bool {
        self.refreshing.lock().unwrap_or_else(|e| e.into_inner()).contains(key)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One caller's membership in a flight. Dropping it removes the flight when it is over: when the leader is
/// done (it may still be writing the value to the store until then, and late callers keep joining the
/// finished flight meanwhile instead of missing), or when it was abandoned with nobody waiting.
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    flights: &'a Flights,
    key: String,
    cell: Arc<Cell>,
    leader: bool,
}

impl Ticket<'_> {
    pub(crate) fn cell(&self) -> &Cell {
        &self.cell
    }

    /// Marks this caller as the one that computed the value.
    pub(crate) fn lead(&mut self) {
        self.leader = true;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let Some(current) = map.get(&self.key) else {
            return;
        };
        if !Arc::ptr_eq(current, &self.cell) {
            return;
        }
        // Under the lock nobody can join, so the count is exact: the map's reference plus ours.
        let alone = Arc::strong_count(&self.cell) <= 2;
        let finished_leader = self.leader && self.cell.initialized();
        if finished_leader || alone {
            map.remove(&self.key);
        }
    }
}

/// A background refresh of one key in progress (see [`Flights::start_refresh`]).
#[derive(Debug)]
pub(crate) struct Refreshing {
    flights: Arc<Flights>,
    key: String,
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.flights.refreshing.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flights_are_removed_when_done_or_abandoned() {
        let flights = Flights::default();
        {
            let mut ticket = flights.join("k");
            ticket.cell().get_or_init(|| async { Shared::Unshareable }).await;
            ticket.lead();
        }
        assert_eq!(flights.len(), 0);
        {
            let _abandoned = flights.join("k");
        }
        assert_eq!(flights.len(), 0);
        let a = flights.join("k");
        let b = flights.join("k");
        drop(a);
        assert_eq!(flights.len(), 1, "b still waits");
        drop(b);
        assert_eq!(flights.len(), 0);
    }
}
