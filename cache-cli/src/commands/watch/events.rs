//! The cache's events, heard on `pg_cached_events` (LISTEN/NOTIFY), decoded for people.
//!
//! cache-runtime sends a notification from every transaction that changes entries, so that services drop
//! what changed from their in-process tiers: keys written or deleted, a namespace purged (when the purge
//! starts and again when it ends), a tag invalidated (by `invalidate_tag` or by a trigger on a source
//! table), a cluster-wide lease released. The payload format is cache-runtime's (`cache_runtime::channel`),
//! verified and decoded here with its code, under each server's events secret (read at start: the tool's role
//! must be the cache's owner or granted). Namespaces and tags travel as hashes, shown as such; payloads the
//! cache did not send are only counted. Nothing heard on the channel is printed without
//! [`escape`](crate::output::escape): any role may send there.
//!
//! One listener per server runs in a task of its own and forwards what it hears over a channel; each tick
//! of `watch` drains the channel. Notifications sent while a listener is reconnecting are lost (PostgreSQL
//! does not queue them), so the reconnections are counted and shown.
//!
//! The cache notifies only while some listener is registered (migration 0013), so each listener registers,
//! as a tier's does, and again after it reconnects: while `watch` runs, writes notify.
//! [`Listeners::start`] returns once the writes in progress at the registration have ended, so that every
//! change committed afterwards is heard.

use crate::error::CliError;
use crate::output::escape;
use crate::target::{Shard, Target};
use cache_runtime::channel::{in_flight_ended, register_listener, Notice, Secret};
use serde::Serialize;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// How `watch`'s listeners name themselves in the cache's registry of listeners.
const NAME: &str = "pg-cached watch";

/// The channel cache-runtime notifies on (its `events::CHANNEL`).
pub const CHANNEL: &str = cache_runtime::EVENTS_CHANNEL;

/// One decoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Keys written or deleted: how many.
    KeysInvalidated(u64),
    /// A namespace purge started or ended: the namespace's hash, in hex.
    NamespacePurged(String),
    /// The entries carrying a tag were invalidated: the tag's hash, in hex.
    TagInvalidated(String),
    /// A cluster-wide single-flight lease was released (its value is stored, or its computation gave up).
    LeaseReleased,
    /// A transaction under REPEATABLE READ or SERIALIZABLE queued a tag invalidation (its tags are announced
    /// as [`Event::TagInvalidated`] too); a listening cache or the next sweep runs it.
    InvalidationQueued,
    /// Signed by the cache, but of a kind this version does not know (a newer library's event).
    Unrecognized,
    /// Not sent by the cache: malformed, not UTF-8, or not signed with the server's events secret.
    Forged,
}

/// Verifies and decodes a payload with cache-runtime's own code. Never fails.
pub fn decode(secret: &Secret, payload: &str) -> Event {
    match secret.open(payload).map(|message| message.map(|m| m.notice)) {
        Ok(Some(Notice::Keys(hashes))) => Event::KeysInvalidated(hashes.len() as u64),
        Ok(Some(Notice::Namespace(hash))) => Event::NamespacePurged(format!("{hash:016x}")),
        Ok(Some(Notice::Tag(hash))) => Event::TagInvalidated(format!("{hash:016x}")),
        Ok(Some(Notice::Done(_))) => Event::LeaseReleased,
        Ok(Some(Notice::Queued(_))) => Event::InvalidationQueued,
        Ok(_) => Event::Unrecognized,
        Err(_) => Event::Forged,
    }
}

/// How many invalidated tags one tick lists: a trigger on a table updated in bulk sends one event per row.
pub const MAX_TAGS_SHOWN: usize = 20;

/// What was heard during one tick; its JSON shape is documented in README.md.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Keys written or deleted by any process (each makes services drop the key from their tiers).
    pub keys_invalidated: u64,
    /// Namespaces purged (their hashes), each once, in the order heard.
    pub namespaces_purged: Vec<String>,
    /// Tags invalidated (their hashes), each once, in the order heard (at most [`MAX_TAGS_SHOWN`]; the rest
    /// are counted).
    pub tags_invalidated: Vec<String>,
    /// Tags invalidated beyond those listed.
    pub more_tags_invalidated: u64,
    /// Cluster-wide single-flight leases released.
    pub leases_released: u64,
    /// Tag invalidations queued by transactions under REPEATABLE READ or SERIALIZABLE.
    pub invalidations_queued: u64,
    /// Payloads signed by the cache but not understood.
    pub unrecognized: u64,
    /// Payloads the cache did not send (any role may NOTIFY): dropped, as the cache's listeners drop them.
    pub forged: u64,
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
            Event::InvalidationQueued => self.invalidations_queued += 1,
            Event::Unrecognized => self.unrecognized += 1,
            Event::Forged => self.forged += 1,
        }
    }

    /// The events as phrases: "keys invalidated: 3", "namespace purged: 3f2a…", "lease released". Text from
    /// the channel goes through [`escape`].
    pub fn phrases(&self) -> Vec<String> {
        let mut phrases = Vec::new();
        if self.keys_invalidated > 0 {
            phrases.push(format!("keys invalidated: {}", self.keys_invalidated));
        }
        phrases.extend(self.namespaces_purged.iter().map(|ns| format!("namespace purged: {}", escape(ns))));
        if !self.tags_invalidated.is_empty() {
            let more = match self.more_tags_invalidated {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            let tags: Vec<String> = self.tags_invalidated.iter().map(|tag| escape(tag)).collect();
            phrases.push(format!("tags invalidated: {}{more}", tags.join(", ")));
        }
        match self.leases_released {
            0 => {}
            1 => phrases.push("lease released".to_owned()),
            n => phrases.push(format!("leases released: {n}")),
        }
        if self.invalidations_queued > 0 {
            phrases.push(format!("tag invalidations queued: {}", self.invalidations_queued));
        }
        if self.unrecognized > 0 {
            phrases.push(format!("unrecognized events: {}", self.unrecognized));
        }
        if self.forged > 0 {
            phrases.push(format!("forged events dropped: {}", self.forged));
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
    Event(Event),
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
                let secret: Vec<u8> = sqlx::query_scalar("SELECT secret FROM cache_events_secret")
                    .fetch_one(&shard.pool)
                    .await
                    .map_err(shard.error())?;
                if let Some(in_flight) = register_listener(&mut listener, NAME).await.map_err(shard.error())? {
                    while !in_flight_ended(&shard.pool, &in_flight).await.map_err(shard.error())? {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
                Ok((shard.clone(), listener, Secret::new(&secret)))
            })
            .await?;
        for (shard, listener, secret) in listeners {
            tokio::spawn(forward(shard, listener, secret, sender.clone()));
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
                Heard::Event(event) => counts.add(event),
                Heard::Reconnected => counts.listener_reconnects += 1,
                Heard::Failed(error) => return Err(error),
            }
        }
        Ok(counts)
    }
}

/// Forwards one server's notifications until the receiver goes away or the listener fails for good.
async fn forward(shard: Shard, mut listener: PgListener, secret: Secret, sender: UnboundedSender<Heard>) {
    loop {
        let heard = match listener.try_recv().await {
            // sqlx's accessor panics on a payload that is not UTF-8 (a SQL_ASCII database passes any bytes):
            // the cache never sends one, so it is forged.
            Ok(Some(notification)) => Heard::Event(
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(&secret, notification.payload())))
                    .unwrap_or(Event::Forged),
            ),
            // The connection dropped. Registering runs on it: sqlx reconnects and LISTENs again first.
            Ok(None) => match register_listener(&mut listener, NAME).await {
                Ok(_) => Heard::Reconnected,
                Err(error) => Heard::Failed(CliError::database(&shard.name, error)),
            },
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

    /// What pg_cached_sign sends for `body` under the secret "s".
    fn signed(body: &str) -> String {
        Secret::new(b"s").sign(body)
    }

    #[test]
    fn payloads_decode_into_events() {
        let secret = Secret::new(b"s");
        let decode = |body: &str| decode(&secret, &signed(body));
        let keys = "00000000000000ff|k|0123456789abcdef,fedcba9876543210,0000000000000001";
        assert_eq!(decode(keys), Event::KeysInvalidated(3));
        assert_eq!(decode("00000000000000ff|n|aa818245c677a1df"), Event::NamespacePurged("aa818245c677a1df".into()));
        assert_eq!(decode("00000000000000ff|d|0123456789abcdef"), Event::LeaseReleased);
        assert_eq!(decode("0000000000000000|t|aa818245c677a1df"), Event::TagInvalidated("aa818245c677a1df".into()));
        assert_eq!(decode("00000000000000ff|x|0123456789abcdef"), Event::Unrecognized);
        assert_eq!(decode("00000000000000ff|k|"), Event::KeysInvalidated(0));
        for forged in ["garbage", "0000000000000000|t|doc:42", "0000000000000000|t|\u{1b}[2J"] {
            assert_eq!(super::decode(&secret, forged), Event::Forged, "{forged:?}");
        }
        let other = Secret::new(b"not the server's");
        assert_eq!(super::decode(&other, &signed(keys)), Event::Forged);
    }

    #[test]
    fn counts_read_as_phrases() {
        let mut counts = EventCounts::default();
        for event in [
            Event::KeysInvalidated(2),
            Event::KeysInvalidated(1),
            Event::NamespacePurged("aa".into()),
            Event::NamespacePurged("aa".into()),
            Event::TagInvalidated("bb".into()),
            Event::TagInvalidated("bb".into()),
            Event::LeaseReleased,
            Event::Forged,
        ] {
            counts.add(event);
        }
        assert_eq!(
            counts.phrases(),
            [
                "keys invalidated: 3",
                "namespace purged: aa",
                "tags invalidated: bb",
                "lease released",
                "forged events dropped: 1"
            ]
        );
        for i in 0..(MAX_TAGS_SHOWN + 5) {
            counts.add(Event::TagInvalidated(format!("{i:02x}")));
        }
        assert_eq!(counts.tags_invalidated.len(), MAX_TAGS_SHOWN);
        assert_eq!(counts.more_tags_invalidated, 6, "bb and 00..12 fill the list");
    }

    #[test]
    fn text_from_the_channel_is_printed_escaped() {
        let counts = EventCounts {
            namespaces_purged: vec!["a\u{1b}[2Jb".into()],
            tags_invalidated: vec!["t\r\n\u{7}x".into()],
            ..EventCounts::default()
        };
        let phrases = counts.phrases().join(" ");
        assert!(!phrases.chars().any(char::is_control), "{phrases:?}");
        assert_eq!(phrases, "namespace purged: a\\u{1b}[2Jb tags invalidated: t\\r\\n\\u{7}x");
    }
}
