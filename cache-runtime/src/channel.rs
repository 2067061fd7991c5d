//! The events channel: its name, and the format of what caches send on it. One source for the format: the
//! cache's statements encode with it, its listener and `pg-cached watch` verify and decode with it (the SQL
//! functions that notify from inside PostgreSQL write the same format: see "The events channel" in
//! `migrations/functions.sql`).
//!
//! A payload is `<mac>|<sender>|<kind>|<data>`. The body after the mac is what the cache means:
//! - sender: a random id per `PgCache` (16 hex digits), so a process can ignore its own news;
//! - kind and data: `k` (comma-separated key hashes), `n` (a namespace's hash), `t` (a tag's hash, sent by
//!   `pg_cached_invalidate_tags` in SQL, also from triggers, with sender `0000000000000000`), `d` (a finished
//!   key's hash), `p` (a listener's heartbeat to itself, a sequence number), `q` (a tag invalidation was
//!   queued, the queue row's id: sent by a trigger's transaction under REPEATABLE READ or SERIALIZABLE, see
//!   migration 0012); every hash and number is 16 lowercase hex digits.
//!
//! **What a listener learns.** PostgreSQL has no privilege for LISTEN: any role that can connect hears the
//! channel. So no payload carries a key, namespace or tag: keys travel as their 64-bit hash (FNV-1a, the
//! same in every process: `key_hash` in `key/mod.rs`), namespaces and tags as [`name_hash`] (SHA-256). A role
//! that can guess a tag's text can check its guess against a hash; it reads nothing it could not guess.
//!
//! **Who may send.** Nor is there a privilege for NOTIFY. The mac is HMAC-SHA256 (RFC 2104) of the body under
//! the database's secret (table `cache_events_secret`, which only the cache's owner and the roles it granted
//! can read), truncated to its first 16 bytes, in 32 lowercase hex digits. A listener reads the secret when
//! it connects and drops, counted, whatever does not verify ([`Secret::open`]). Before the mac is computed a
//! payload must have the format above and at most [`MAX_PAYLOAD`] bytes, so a forged one costs at most one
//! HMAC over 8,000 bytes and allocates nothing; what is kept of an authentic one is its hashes.
//!
//! **Replays.** A payload heard once can be sent again by anyone. It then repeats an invalidation the cache
//! did make: a tier drops entries it may fetch again, nothing more (a replayed heartbeat is not the one
//! awaited, a replayed lease release wakes waiters who read again).

use crate::key::key_hash;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgListener, PgPool};
use std::fmt::Write;

/// The LISTEN/NOTIFY channel on which caches tell each other of invalidations and finished computations.
pub const CHANNEL: &str = "pg_cached_events";

/// The longest payload PostgreSQL sends (its limit is just under 8,000 bytes); anything longer is refused
/// unread.
pub const MAX_PAYLOAD: usize = 8000;

/// Hex digits of the mac: 16 bytes of HMAC-SHA256.
const MAC_HEX: usize = 32;

/// Hex digits of a sender, a hash or a number.
const WORD_HEX: usize = 16;

/// One notification, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// Keys were written or deleted: their 64-bit hashes.
    Keys(Vec<u64>),
    /// A namespace purge started or ended: the namespace's [`name_hash`].
    Namespace(u64),
    /// The entries carrying a tag were invalidated: the tag's [`name_hash`].
    Tag(u64),
    /// A cluster-wide single-flight lease on the key with this hash was released.
    Done(u64),
    /// A listener's heartbeat to itself (see `tier/events.rs`); others ignore it.
    Ping(u64),
    /// A transaction under REPEATABLE READ or SERIALIZABLE queued the invalidation of tags it could not make
    /// under its snapshot (the queue row's id); listeners run the queue (`pg_cached_drain_invalidations`).
    Queued(u64),
}

/// A decoded payload: who sent it, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sending cache's id.
    pub sender: u64,
    /// What it says.
    pub notice: Notice,
}

/// A payload the cache did not send: malformed, too long, or not signed with the database's secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forged;

/// The hash by which payloads name a namespace or a tag: the first 8 bytes of SHA-256 of its UTF-8 text, big
/// endian (`pg_cached_name_hash` in SQL computes the same).
pub fn name_hash(name: &str) -> u64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A database's events secret, ready to sign and verify (see the module docs). Its `Debug` shows nothing of
/// it.
#[derive(Clone)]
pub struct Secret {
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// The secret `key` (the `secret` column of `cache_events_secret`; any length, as RFC 2104 allows).
    pub fn new(key: &[u8]) -> Secret {
        // RFC 2104: a key longer than the block is hashed, a shorter one padded with zeros to the block.
        let mut block = [0u8; 64];
        if key.len() > block.len() {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        Secret { keyed: <Hmac<Sha256> as KeyInit>::new(&block.into()) }
    }

    /// `body` signed: `<mac>|<body>`, as `pg_cached_sign` signs it in SQL.
    pub fn sign(&self, body: &str) -> String {
        let mut mac = self.keyed.clone();
        mac.update(body.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut payload = String::with_capacity(MAC_HEX + 1 + body.len());
        for byte in &digest[..MAC_HEX / 2] {
            let _ = write!(payload, "{byte:02x}");
        }
        payload.push('|');
        payload.push_str(body);
        payload
    }

    /// Checks and decodes a payload. `Ok(None)`: signed with this secret but of a kind this version does not
    /// know (a newer release's). Costs at most one HMAC over [`MAX_PAYLOAD`] bytes, and allocates only for
    /// an authentic payload's keys.
    ///
    /// # Errors
    /// [`Forged`] for anything else: too long, malformed, or a mac that does not verify.
    pub fn open(&self, payload: &str) -> Result<Option<Message>, Forged> {
        let (mac, body) = split_checked(payload).ok_or(Forged)?;
        let mut expected = [0u8; MAC_HEX / 2];
        for (i, byte) in expected.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&mac[2 * i..2 * i + 2], 16).map_err(|_| Forged)?;
        }
        let mut keyed = self.keyed.clone();
        keyed.update(body.as_bytes());
        // Constant time: a forger learns nothing from how long the comparison took.
        keyed.verify_truncated_left(&expected).map_err(|_| Forged)?;
        Ok(decode_body(body))
    }
}

/// The mac and the body of a payload of the right length and alphabet, or `None`.
fn split_checked(payload: &str) -> Option<(&str, &str)> {
    let bytes = payload.as_bytes();
    let shortest = MAC_HEX + 1 + WORD_HEX + 3;
    if bytes.len() > MAX_PAYLOAD || bytes.len() < shortest || bytes[MAC_HEX] != b'|' {
        return None;
    }
    // Hex digits, separators and the kind letters only: one pass, no allocation.
    let allowed = |b: &u8| matches!(b, b'0'..=b'9' | b'a'..=b'z' | b'|' | b',');
    bytes.iter().all(allowed).then(|| (&payload[..MAC_HEX], &payload[MAC_HEX + 1..]))
}

/// One hash or number: exactly 16 lowercase hex digits.
fn word(text: &str) -> Option<u64> {
    let lower_hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    (text.len() == WORD_HEX && text.as_bytes().iter().all(lower_hex)).then(|| u64::from_str_radix(text, 16).ok())?
}

/// Decodes an authenticated body; `None` for a kind or shape this version does not understand.
fn decode_body(body: &str) -> Option<Message> {
    let mut parts = body.splitn(3, '|');
    let (sender, kind, data) = (parts.next()?, parts.next()?, parts.next()?);
    let sender = word(sender)?;
    let notice = match kind {
        "k" if data.is_empty() => Notice::Keys(Vec::new()),
        "k" => Notice::Keys(data.split(',').map(word).collect::<Option<Vec<u64>>>()?),
        "n" => Notice::Namespace(word(data)?),
        "t" => Notice::Tag(word(data)?),
        "d" => Notice::Done(word(data)?),
        "p" => Notice::Ping(word(data)?),
        "q" => Notice::Queued(word(data)?),
        _ => return None,
    };
    Some(Message { sender, notice })
}

/// `sender` as payloads carry it.
pub(crate) fn sender_id(sender: u64) -> String {
    format!("{sender:016x}")
}

/// The body of the event that `keys` changed (signed in SQL by the statement that sends it).
pub(crate) fn keys_payload<'a>(sender: u64, keys: impl IntoIterator<Item = &'a str>) -> String {
    let mut payload = format!("{sender:016x}|k|");
    for (i, key) in keys.into_iter().enumerate() {
        let comma = if i == 0 { "" } else { "," };
        let _ = write!(payload, "{comma}{:016x}", key_hash(key));
    }
    payload
}

/// The body of the event that `namespace` was purged.
pub(crate) fn namespace_payload(sender: u64, namespace: &str) -> String {
    format!("{sender:016x}|n|{:016x}", name_hash(namespace))
}

/// The body of a listener's heartbeat number `sequence` (the listener signs it itself).
pub(crate) fn ping_payload(sender: u64, sequence: u64) -> String {
    format!("{sender:016x}|p|{sequence:016x}")
}

/// The body of the event that the lease on `key` was released.
pub(crate) fn done_payload(sender: u64, key: &str) -> String {
    format!("{sender:016x}|d|{:016x}", key_hash(key))
}

/// Registers the session of `listener`, which LISTENs on [`CHANNEL`], as a listener: the cache's writes
/// notify only while some listener is registered (migration 0013 has the protocol). `name` is kept for
/// operators (a cache's sender id, a tool's name; 32 characters at most). The row lives as long as the
/// session. Returns the snapshot (as text) taken once the registration committed: a change made by a
/// transaction in progress in it may not be notified, so wait for [`in_flight_ended`] before trusting that
/// every change is heard. `None`: the database holds functions of an earlier version, which notify whatever
/// happens (migrating it adds a row that keeps them notifying).
///
/// # Errors
/// A database error, `42501` for a role the cache was not granted to; `42883` (no such function) for a
/// database whose functions are not applied yet (a migration under way): try again later.
pub async fn register_listener(listener: &mut PgListener, name: &str) -> Result<Option<String>, sqlx::Error> {
    match sqlx::query("SELECT pg_cached_register_listener($1)").bind(name).execute(&mut *listener).await {
        Ok(_) => sqlx::query_scalar("SELECT pg_current_snapshot()::text").fetch_one(&mut *listener).await.map(Some),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(UNDEFINED_FUNCTION) => {
            // Functions of version 5 or older notify on every write; none at all (migrations applied, the
            // functions not yet) will be version 6 by the time anything is written.
            let applied: Option<i32> =
                sqlx::query_scalar("SELECT functions_version FROM cache_schema").fetch_optional(&mut *listener).await?;
            match applied {
                Some(version) if version < REGISTRY_VERSION => Ok(None),
                _ => Err(sqlx::Error::Database(db)),
            }
        }
        Err(error) => Err(error),
    }
}

/// The version of the SQL functions that brought the registry of listeners.
const REGISTRY_VERSION: i32 = 6;

/// SQLSTATE of a call to a function the database does not have.
const UNDEFINED_FUNCTION: &str = "42883";

/// Whether every transaction in progress in `snapshot` (from [`register_listener`]) has ended.
///
/// # Errors
/// A database error.
pub async fn in_flight_ended(pool: &PgPool, snapshot: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_snapshot_xip($1::pg_snapshot) AS x \
         WHERE pg_xact_status(x) = 'in progress')",
    )
    .bind(snapshot)
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests;
