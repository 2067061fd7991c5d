//! A follower of a stream's flight: a caller of a cold stream that another caller in this process is
//! already computing. It reads the leader's chunks from its feed: from the first, then live, when the
//! function's error type can report an interruption; otherwise once the whole stream is there.

use super::interrupt::{Interruption, StreamInterrupted};
use crate::tags::Tags;
use crate::tier::flight::{Feed, FeedEnd};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::watch;

/// What a follower does next.
pub(super) enum Step<C, E> {
    /// Yield this item.
    Item(Result<C, E>),
    /// The whole stream is here, decoded (a follower that waited for it): replay it.
    Whole(Vec<C>, Option<Tags>),
    /// The stream ended normally and every chunk was yielded.
    End(Option<Tags>),
    /// An interruption was reported: nothing follows.
    Stop,
    /// The leader gave up before this follower yielded anything: look the key up again.
    Retry,
    /// The leader's chunks do not decode as `C` and nothing was yielded: compute without the cache.
    Alone,
}

pub(super) struct Follower<C, E> {
    feed: watch::Receiver<Feed>,
    /// Chunks yielded so far.
    next: usize,
    live: Interruption<E>,
    /// The wait for the leader's next change.
    changed: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    _chunk: PhantomData<fn() -> C>,
}

impl<C: DeserializeOwned, E> Follower<C, E> {
    pub(super) fn new(feed: watch::Receiver<Feed>, live: Interruption<E>) -> Self {
        Follower { feed, next: 0, live, changed: None, _chunk: PhantomData }
    }

    pub(super) fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step<C, E>> {
        loop {
            if let Some(changed) = &mut self.changed {
                std::task::ready!(changed.as_mut().poll(cx));
                self.changed = None;
            }
            if let Some(step) = self.step() {
                return Poll::Ready(step);
            }
            // Nothing new: wait for the leader's next chunk or end (a clone has seen what this one has seen).
            let mut feed = self.feed.clone();
            self.changed = Some(Box::pin(async move {
                let _ = feed.changed().await;
            }));
        }
    }

    /// The next step from what the feed holds now; `None` to wait for more.
    fn step(&mut self) -> Option<Step<C, E>> {
        if self.next == usize::MAX {
            return Some(Step::Stop);
        }
        let feed = self.feed.borrow_and_update();
        match (&feed.end, self.live) {
            (Some(FeedEnd::Interrupted), _) if self.next == 0 => Some(Step::Retry),
            (Some(FeedEnd::Interrupted), Some(into)) => {
                self.next = usize::MAX;
                Some(Step::Item(Err(into(StreamInterrupted::new()))))
            }
            // Interrupted after some chunks were yielded, which only a live follower does.
            (Some(FeedEnd::Interrupted), None) => Some(Step::Stop),
            (end, Some(into)) => match feed.chunks.get(self.next) {
                Some(json) => {
                    let json = Arc::clone(json);
                    drop(feed);
                    Some(self.decode(&json, into))
                }
                None => match end {
                    Some(FeedEnd::Complete(tags)) => Some(Step::End(tags.clone())),
                    _ => None,
                },
            },
            (Some(FeedEnd::Complete(tags)), None) => {
                let chunks: Option<Vec<C>> = feed.chunks.iter().map(|json| serde_json::from_str(json).ok()).collect();
                Some(chunks.map_or(Step::Alone, |chunks| Step::Whole(chunks, tags.clone())))
            }
            (None, None) => None,
        }
    }

    /// The next chunk of a live follower.
    fn decode(&mut self, json: &str, into: fn(StreamInterrupted) -> E) -> Step<C, E> {
        match serde_json::from_str(json) {
            Ok(chunk) => {
                self.next += 1;
                Step::Item(Ok(chunk))
            }
            Err(_) if self.next == 0 => Step::Alone,
            Err(error) => {
                tracing::warn!(%error, "a memoized stream's chunk does not read back as its type");
                self.next = usize::MAX;
                Step::Item(Err(into(StreamInterrupted::new())))
            }
        }
    }
}
