//! The two ends of a memoized stream's entry: replaying a stored one, and storing a recorded one.

use super::record::Stored;
use super::Plan;
use crate::entry::{EntryMeta, Write};
use crate::error::CacheError;
use crate::memo::site::Site;
use crate::tags::Tags;
use crate::usage::Usage;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A stored stream being replayed.
pub(super) struct Replay<C> {
    chunks: std::vec::IntoIter<(C, u64)>,
    /// With `replay = "as_recorded"`: when the replay began, and the wait for the next chunk.
    paced: Option<(Instant, Option<Pin<Box<tokio::time::Sleep>>>)>,
}

impl<C: DeserializeOwned> Replay<C> {
    /// Every chunk decoded up front (a chunk of another shape would otherwise break the replay half-way:
    /// `None` makes the call compute instead).
    pub(super) fn new(stored: Stored, paced: bool) -> Option<Replay<C>> {
        let chunks: Vec<(C, u64)> =
            stored.into_chunks().map(|(chunk, at)| chunk.ok().map(|c| (c, at))).collect::<Option<_>>()?;
        Some(Replay { chunks: chunks.into_iter(), paced: paced.then(|| (Instant::now(), None)) })
    }

    /// Chunks received whole from another caller's computation, replayed as fast as they are read.
    pub(super) fn whole(chunks: Vec<C>) -> Replay<C> {
        Replay { chunks: chunks.into_iter().map(|chunk| (chunk, 0)).collect::<Vec<_>>().into_iter(), paced: None }
    }

    /// The next chunk, when its time has come.
    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<C>> {
        if let Some((began, sleep)) = &mut self.paced {
            if sleep.is_none() {
                let Some((_, at)) = self.chunks.as_slice().first() else { return Poll::Ready(None) };
                let due = *began + Duration::from_millis(*at);
                *sleep = Some(Box::pin(tokio::time::sleep_until(due.into())));
            }
            if let Some(wait) = sleep {
                std::task::ready!(wait.as_mut().poll(cx));
            }
            *sleep = None;
        }
        Poll::Ready(self.chunks.next().map(|(chunk, _)| chunk))
    }
}

/// Stores a whole recorded stream, guarded like every memoized write, then tells the followers.
pub(super) async fn store(
    site: &'static Site,
    plan: Plan,
    json: String,
    tags: Result<Option<Tags>, CacheError>,
    compute_us: i64,
    usage: Usage,
) {
    let Plan { cache, key, tenant, start, lead, lease, similar } = plan;
    let store = cache.memo().sealed(site.encrypt);
    let written = match (site.ttl.resolve(store.config().default_ttl), tags) {
        (Ok(ttl), Ok(tags)) => {
            let meta = EntryMeta { tags, compute_us: Some(compute_us), usage };
            let write =
                Write { key: key.clone(), json: json.into(), ttl, keep: None, started: Some(start), meta, tenant };
            store.write(write, None).await.unwrap_or(false)
        }
        (Err(error), _) | (_, Err(error)) => {
            store.record_error(site.namespace, &error);
            tracing::warn!(namespace = site.namespace, %error, "stream not stored");
            false
        }
    };
    if !written {
        tracing::debug!(
            namespace = site.namespace,
            "stream not stored (an invalidation came first, or the store failed)"
        );
    } else if let Some(query) = &similar {
        // Before the flight ends, so that a caller arriving next finds the paraphrase too.
        if let Err(error) = cache.store_vector(&key, &query.scope, &query.text, &query.vector).await {
            store.record_error(site.namespace, &error);
            tracing::warn!(namespace = site.namespace, key, %error, "the stream's vector was not stored");
        }
    }
    // The flight (complete since the stream ended) stays joinable until now, so that callers arriving while
    // it was written replayed it from memory; from here on they read the entry.
    drop(lead);
    if let Some(lease) = lease {
        lease.release().await;
    }
}
