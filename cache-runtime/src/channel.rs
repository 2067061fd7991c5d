//! The events channel: its name, and the format of what caches send on it. One source for the format: the
//! cache's statements encode with it, its listener and `pg-cached watch` decode with it (the SQL functions
//! that notify from inside PostgreSQL write the same format; `migrations/` says where).
//!
//! A payload is `<sender>|<kind>|<data>`, where sender is a random id per `PgCache` (16 hex digits), so a
//! process can ignore its own news. Kinds: `k` (comma-separated key hashes in hex), `n` (a namespace), `t` (a
//! tag, sent by `pg_cached_invalidate_tags` in SQL, also from triggers, with sender `0000000000000000`), `d`
//! (a finished key's hash), `p` (a listener's heartbeat to itself, a sequence number). Payloads stay far below PostgreSQL's 8,000-byte limit: a key travels as its
//! 16-character hash and a namespace is at most 64 characters.

use crate::key::key_hash;
use std::fmt::Write;

/// The LISTEN/NOTIFY channel on which caches tell each other of invalidations and finished computations.
pub const CHANNEL: &str = "pg_cached_events";

/// One notification, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// Keys were written or deleted: their 64-bit hashes.
    Keys(Vec<u64>),
    /// A namespace purge started or ended.
    Namespace(String),
    /// The entries carrying a tag were invalidated.
    Tag(String),
    /// A cluster-wide single-flight lease on the key with this hash was released.
    Done(u64),
    /// A listener's heartbeat to itself (see `tier/events.rs`); others ignore it.
    Ping(u64),
}

/// A decoded payload: who sent it, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sending cache's id.
    pub sender: u64,
    /// What it says.
    pub notice: Notice,
}

/// Decodes a payload; `None` for anything this version does not understand (a newer library's event, a
/// foreign sender, a malformed payload).
pub fn decode(payload: &str) -> Option<Message> {
    let mut parts = payload.splitn(3, '|');
    let (sender, kind, data) = (parts.next()?, parts.next()?, parts.next()?);
    let sender = u64::from_str_radix(sender, 16).ok()?;
    let hash = |text: &str| u64::from_str_radix(text, 16).ok();
    let notice = match kind {
        "k" => Notice::Keys(data.split(',').filter_map(hash).collect()),
        "n" if !data.is_empty() => Notice::Namespace(data.to_owned()),
        "t" if !data.is_empty() => Notice::Tag(data.to_owned()),
        "d" => Notice::Done(hash(data)?),
        "p" => Notice::Ping(hash(data)?),
        _ => return None,
    };
    Some(Message { sender, notice })
}

/// `sender` as payloads carry it.
pub(crate) fn sender_id(sender: u64) -> String {
    format!("{sender:016x}")
}

/// The event that `keys` changed.
pub(crate) fn keys_payload<'a>(sender: u64, keys: impl IntoIterator<Item = &'a str>) -> String {
    let mut payload = format!("{sender:016x}|k|");
    for (i, key) in keys.into_iter().enumerate() {
        let comma = if i == 0 { "" } else { "," };
        let _ = write!(payload, "{comma}{:016x}", key_hash(key));
    }
    payload
}

/// The event that `namespace` was purged.
pub(crate) fn namespace_payload(sender: u64, namespace: &str) -> String {
    format!("{sender:016x}|n|{namespace}")
}

/// A listener's heartbeat number `sequence`.
pub(crate) fn ping_payload(sender: u64, sequence: u64) -> String {
    format!("{sender:016x}|p|{sequence:016x}")
}

/// The event that the lease on `key` was released.
pub(crate) fn done_payload(sender: u64, key: &str) -> String {
    format!("{sender:016x}|d|{:016x}", key_hash(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_encoded_decodes() {
        let sender = 0x1234;
        let keys = decode(&keys_payload(sender, ["a:1", "a:2"])).expect("keys");
        assert_eq!(keys, Message { sender, notice: Notice::Keys(vec![key_hash("a:1"), key_hash("a:2")]) });
        let ns = decode(&namespace_payload(sender, "retrieval")).map(|m| m.notice);
        assert_eq!(ns, Some(Notice::Namespace("retrieval".into())));
        let done = decode(&done_payload(sender, "a:1")).map(|m| m.notice);
        assert_eq!(done, Some(Notice::Done(key_hash("a:1"))));
        assert_eq!(decode(&ping_payload(sender, 3)).map(|m| m.notice), Some(Notice::Ping(3)));
        let tag = decode("0000000000000000|t|doc:7").map(|m| m.notice);
        assert_eq!(tag, Some(Notice::Tag("doc:7".into())));
        for junk in ["", "x|k|1", "0000000000000000|z|1", "0000000000000000|n|", "00|d|zz"] {
            assert_eq!(decode(junk), None, "{junk:?}");
        }
    }
}
