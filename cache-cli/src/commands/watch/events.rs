//! The cache's events, heard on `pg_cached_events` (LISTEN/NOTIFY), decoded for people.
//!
//! cache-runtime sends a notification from every transaction that changes entries, so that services drop
//! what changed from their in-process tiers: keys written or deleted, a namespace purged (when the purge
//! starts and again when it ends), a tag invalidated (by `invalidate_tag` or by a trigger on a source
//! table), a cluster-wide lease released. The payload format is cache-runtime's (`cache_runtime::channel`),
//! decoded here with its decoder.
//!
//! One listener per server runs in a task of its own and forwards what it hears over a channel; each tick
//! of `watch` drains the channel. Notifications sent while a listener is reconnecting are lost (PostgreSQL
//! does not queue them), so the reconnections are counted and shown.

use crate::error::CliError;
use crate::target::{Shard, Target};
use cache_runtime::channel::Notice;
use serde::Serialize;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// The channel cache-runtime notifies on (its `events::CHANNEL`).
pub const CHANNEL: &str = cache_runtime::EVENTS_CHANNEL;

/// One decoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Keys written or deleted: how many.
    KeysInvalidated(u64),
    /// A namespace purge started or ended.
    NamespacePurged(String),
    /// The entries carrying a tag were invalidated.
    TagInvalidated(String),
    /// A cluster-wide single-flight lease was released (its value is stored, or its computation gave up).
    LeaseReleased,
    /// Something this version does not know (a newer library's event, a foreign sender).
    Unrecognized,
}

/// Decodes a payload with cache-runtime's own decoder. Never fails: what cannot be read is
/// [`Event::Unrecognized`].
pub fn decode(payload: &str) -> Event {
    match cache_runtime::channel::decode(payload).map(|message| message.notice) {
        Some(Notice::Keys(hashes)) => Event::KeysInvalidated(hashes.len() as u64),
        Some(Notice::Namespace(namespace)) => Event::NamespacePurged(namespace),
        Some(Notice::Tag(tag)) => Event::TagInvalidated(tag),
        Some(Notice::Done(_)) => Event::LeaseReleased,
        _ => Event::Unrecognized,
    }
}

/// How many invalidated tags one tick lists: a trigger on a table updated in bulk sends one event per row.
pub const MAX_TAGS_SHOWN: usize = 20;

/// What was heard during one tick; its JSON shape is documented in README.md.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Keys written or deleted by any process (each makes services drop the key from their tiers).
    pub keys_invalidated: u64,
    /// Namespaces purged, each once, in the order heard.
    pub namespaces_purged: Vec<String>,
    /// Tags invalidated, each once, in the order heard (at most [`MAX_TAGS_SHOWN`]; the rest are counted).
    pub tags_invalidated: Vec<String>,
    /// Tags invalidated beyond those listed.
    pub more_tags_invalidated: u64,
    /// Cluster-wide single-flight leases released.
    pub leases_released: u64,
    /// Payloads not understood.
    pub unrecognized: u64,
    /// Times a listener lost its connection and reconnected: events may have been missed.
    pub listener_reconnects: u64,
}

impl EventCounts {
    fn add(&mut self, event: Event) {
        match event {
            Event::KeysInvalidated(n) => self.keys_invalidated += n,
            Event::NamespacePurged(namespace) => {
                if !self.namespaces_purged.contains(&namespace) {
                    self.namespaces_purged.push(namespace);
                }
            }
            Event::TagInvalidated(tag) => {
                if self.tags_invalidated.contains(&tag) {
                } else if self.tags_invalidated.len() < MAX_TAGS_SHOWN {
                    self.tags_invalidated.push(tag);
                } else {
                    self.more_tags_invalidated += 1;
                }
            }
            Event::LeaseReleased => self.leases_released += 1,
            Event::Unrecognized => self.unrecognized += 1,
        }
    }

    /// The events as phrases: "keys invalidated: 3", "namespace purged: retrieval", "lease released".
    pub fn phrases(&self) -> Vec<String> {
        let mut phrases = Vec::new();
        if self.keys_invalidated > 0 {
            phrases.push(format!("keys invalidated: {}", self.keys_invalidated));
        }
        phrases.extend(self.namespaces_purged.iter().map(|ns| format!("namespace purged: {ns}")));
        if !self.tags_invalidated.is_empty() {
            let more = match self.more_tags_invalidated {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            phrases.push(format!("tags invalidated: {}{more}", self.tags_invalidated.join(", ")));
        }
        match self.leases_released {
            0 => {}
            1 => phrases.push("lease released".to_owned()),
            n => phrases.push(format!("leases released: {n}")),
        }
        if self.unrecognized > 0 {
            phrases.push(format!("unrecognized events: {}", self.unrecognized));
        }
        if self.listener_reconnects > 0 {
            phrases.push(format!("listener reconnected {} time(s); events may be missing", self.listener_reconnects));
        }
        phrases
    }
}

/// What a listener task reports.
#[derive(Debug)]
enum Heard {
    Payload(String),
    Reconnected,
    Failed(CliError),
}

/// The listeners of every server, and the channel they report on.
#[derive(Debug)]
pub struct Listeners {
    heard: UnboundedReceiver<Heard>,
}

impl Listeners {
    /// Starts listening on every server. Returns once every LISTEN is in place, so nothing sent after this
    /// returns is missed.
    ///
    /// # Errors
    /// A database error when a listener cannot connect or LISTEN.
    pub async fn start(target: &Target) -> Result<Listeners, CliError> {
        let (sender, heard) = unbounded_channel();
        let listeners = target
            .on_every_shard("listening for events", |shard| async move {
                let mut listener = PgListener::connect_with(&shard.pool).await.map_err(shard.error())?;
                listener.listen(CHANNEL).await.map_err(shard.error())?;
                Ok((shard.clone(), listener))
            })
            .await?;
        for (shard, listener) in listeners {
            tokio::spawn(forward(shard, listener, sender.clone()));
        }
        Ok(Listeners { heard })
    }

    /// Everything heard since the last call.
    ///
    /// # Errors
    /// A listener's failure to reconnect.
    pub fn drain(&mut self) -> Result<EventCounts, CliError> {
        let mut counts = EventCounts::default();
        while let Ok(heard) = self.heard.try_recv() {
            match heard {
                Heard::Payload(payload) => counts.add(decode(&payload)),
                Heard::Reconnected => counts.listener_reconnects += 1,
                Heard::Failed(error) => return Err(error),
            }
        }
        Ok(counts)
    }
}

/// Forwards one server's notifications until the receiver goes away or the listener fails for good.
async fn forward(shard: Shard, mut listener: PgListener, sender: UnboundedSender<Heard>) {
    loop {
        let heard = match listener.try_recv().await {
            Ok(Some(notification)) => Heard::Payload(notification.payload().to_owned()),
            // The connection dropped; sqlx reconnects and LISTENs again on the next call.
            Ok(None) => Heard::Reconnected,
            Err(error) => Heard::Failed(CliError::database(&shard.name, error)),
        };
        let failed = matches!(heard, Heard::Failed(_));
        if sender.send(heard).is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_decode_into_events() {
        assert_eq!(decode("00ff|k|0123456789abcdef,fedcba9876543210,0000000000000001"), Event::KeysInvalidated(3));
        assert_eq!(decode("00ff|n|retrieval"), Event::NamespacePurged("retrieval".into()));
        assert_eq!(decode("00ff|d|0123456789abcdef"), Event::LeaseReleased);
        assert_eq!(decode("0000000000000000|t|doc:42"), Event::TagInvalidated("doc:42".into()));
        assert_eq!(decode("00ff|t|a|b"), Event::TagInvalidated("a|b".into()), "a tag may hold `|`");
        assert_eq!(decode("00ff|x|whatever"), Event::Unrecognized);
        assert_eq!(decode("garbage"), Event::Unrecognized);
        assert_eq!(decode("00ff|k|"), Event::KeysInvalidated(0));
    }

    #[test]
    fn counts_read_as_phrases() {
        let mut counts = EventCounts::default();
        for payload in ["a|k|1,2", "a|k|3", "a|n|retrieval", "b|n|retrieval", "a|t|doc:1", "b|t|doc:1", "a|d|1"] {
            counts.add(decode(payload));
        }
        assert_eq!(
            counts.phrases(),
            ["keys invalidated: 3", "namespace purged: retrieval", "tags invalidated: doc:1", "lease released"]
        );
        for i in 0..(MAX_TAGS_SHOWN + 5) {
            counts.add(Event::TagInvalidated(format!("doc:{i}")));
        }
        assert_eq!(counts.tags_invalidated.len(), MAX_TAGS_SHOWN);
        assert_eq!(counts.more_tags_invalidated, 5, "doc:1 was listed already, doc:0 and doc:2..doc:19 fill the list");
    }
}
