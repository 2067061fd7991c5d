//! [`Keyring`]: the keys that encrypt values at rest, each with an id that is stored beside its ciphertexts.
//!
//! Key bytes live only inside the ciphers: they are never formatted, logged or returned, and errors name a
//! key by its id or its place in the list, never by its bytes.

use crate::error::CacheError;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use std::fmt;

/// The environment variable [`Keyring::from_env`] reads.
pub const KEYS_ENV: &str = "PG_CACHED_KEYS";

/// The longest key id: ids are stored in every encrypted entry, so they stay short.
const MAX_ID_CHARS: usize = 32;

/// 256-bit keys with ids for [encryption at rest](crate::PgCacheBuilder::encryption). The first key
/// encrypts every new value; every key of the ring decrypts (so values written under a key being retired
/// are still read while [`PgCache::rekey`](crate::PgCache::rekey) moves them to the first one).
///
/// ```
/// use cache_runtime::Keyring;
///
/// // The new key first, the one being retired after it.
/// let keyring = Keyring::new("2026-12", [7; 32])?.with_key("2026-06", [9; 32])?;
/// assert_eq!(keyring.current_id(), "2026-12");
/// assert_eq!(keyring.ids().collect::<Vec<_>>(), ["2026-12", "2026-06"]);
/// // Debug names the ids only, never the bytes.
/// assert_eq!(format!("{keyring:?}"), r#"Keyring { ids: ["2026-12", "2026-06"] }"#);
/// # Ok::<(), cache_runtime::CacheError>(())
/// ```
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<Key>,
}

#[derive(Clone)]
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl Keyring {
    /// A keyring of one key, which encrypts and decrypts. `id`: 1 to 32 characters of `A-Z a-z 0-9 - _ .`.
    ///
    /// # Errors
    /// [`CacheError::Config`] for an invalid id.
    pub fn new(id: &str, key: [u8; 32]) -> Result<Keyring, CacheError> {
        Keyring { keys: Vec::new() }.with_key(id, key)
    }

    /// This keyring with one more key, after the others: it decrypts, and encrypts only if it is the first.
    ///
    /// # Errors
    /// [`CacheError::Config`] for an invalid id or one already in the ring.
    pub fn with_key(mut self, id: &str, key: [u8; 32]) -> Result<Keyring, CacheError> {
        check_id(id)?;
        if self.get(id).is_some() {
            return Err(CacheError::Config(format!("key id {id:?} is listed twice")));
        }
        self.keys.push(Key { id: id.to_owned(), cipher: XChaCha20Poly1305::new(&key.into()) });
        Ok(self)
    }

    /// A keyring from bytes of any length (as read from a secret store): each key must be exactly 32 bytes.
    ///
    /// ```
    /// let bytes = vec![1u8; 32];
    /// let keyring = cache_runtime::Keyring::from_slice("k1", &bytes)?;
    /// assert!(cache_runtime::Keyring::from_slice("k1", &bytes[..16]).is_err());
    /// # Ok::<(), cache_runtime::CacheError>(())
    /// ```
    ///
    /// # Errors
    /// [`CacheError::Config`] for an invalid id or a key that is not 32 bytes long.
    pub fn from_slice(id: &str, key: &[u8]) -> Result<Keyring, CacheError> {
        Keyring::new(id, exactly_32(id, key)?)
    }

    /// Parses the format of [`PG_CACHED_KEYS`](KEYS_ENV): comma-separated `id:base64key` pairs, the key that
    /// encrypts first, each key 32 bytes in standard base64 (with padding: 44 characters), spaces around
    /// entries ignored. Generate a key with `openssl rand -base64 32`.
    ///
    /// ```
    /// let keys = "k2:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=, k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    /// let keyring = cache_runtime::Keyring::parse(keys)?;
    /// assert_eq!(keyring.ids().collect::<Vec<_>>(), ["k2", "k1"]);
    /// # Ok::<(), cache_runtime::CacheError>(())
    /// ```
    ///
    /// # Errors
    /// [`CacheError::Config`] naming the entry that is wrong (by place and id, never its key).
    pub fn parse(spec: &str) -> Result<Keyring, CacheError> {
        let mut keyring = Keyring { keys: Vec::new() };
        for (place, entry) in spec.split(',').map(str::trim).enumerate() {
            let place = place + 1;
            let Some((id, encoded)) = entry.split_once(':') else {
                return Err(CacheError::Config(format!("key entry {place} is not of the form id:base64key")));
            };
            let bytes = STANDARD
                .decode(encoded.trim())
                .map_err(|_| CacheError::Config(format!("key {id:?} (entry {place}) is not valid standard base64")))?;
            keyring = keyring.with_key(id.trim(), exactly_32(id, &bytes)?)?;
        }
        Ok(keyring)
    }

    /// The keyring in the environment variable `PG_CACHED_KEYS` (see [`parse`](Self::parse)).
    ///
    /// # Errors
    /// [`CacheError::Config`] when the variable is unset, empty or malformed.
    pub fn from_env() -> Result<Keyring, CacheError> {
        match std::env::var(KEYS_ENV) {
            Ok(spec) if !spec.trim().is_empty() => Keyring::parse(&spec),
            _ => Err(CacheError::Config(format!("{KEYS_ENV} is not set"))),
        }
    }

    /// The id of the key that encrypts new values.
    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Every key's id, the one that encrypts first.
    pub fn ids(&self) -> impl ExactSizeIterator<Item = &str> {
        self.keys.iter().map(|key| key.id.as_str())
    }

    /// The cipher that encrypts, and its id.
    pub(crate) fn current(&self) -> (&str, &XChaCha20Poly1305) {
        (&self.keys[0].id, &self.keys[0].cipher)
    }

    /// The cipher of key `id`, if the ring has it.
    pub(crate) fn get(&self, id: &str) -> Option<&XChaCha20Poly1305> {
        self.keys.iter().find(|key| key.id == id).map(|key| &key.cipher)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").field("ids", &self.ids().collect::<Vec<_>>()).finish()
    }
}

fn check_id(id: &str) -> Result<(), CacheError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if id.is_empty() || id.chars().count() > MAX_ID_CHARS || !id.chars().all(allowed) {
        let reason = format!("1 to {MAX_ID_CHARS} characters of A-Z a-z 0-9 - _ .");
        return Err(CacheError::Config(format!("invalid key id {id:?}: {reason}")));
    }
    Ok(())
}

fn exactly_32(id: &str, bytes: &[u8]) -> Result<[u8; 32], CacheError> {
    <[u8; 32]>::try_from(bytes)
        .map_err(|_| CacheError::Config(format!("key {id:?} is {} bytes long; keys are 32 bytes", bytes.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_ids_and_lengths_without_showing_keys() {
        assert!(Keyring::new("", [0; 32]).is_err());
        assert!(Keyring::new("has space", [0; 32]).is_err());
        assert!(Keyring::new(&"x".repeat(33), [0; 32]).is_err());
        assert!(Keyring::new("a", [0; 32]).unwrap().with_key("a", [1; 32]).is_err());
        let secret = "c2VjcmV0c2VjcmV0c2VjcmV0"; // 18 bytes
        let error = Keyring::parse(&format!("k1:{secret}")).unwrap_err().to_string();
        assert!(error.contains("18 bytes") && !error.contains(secret), "{error}");
        let error = Keyring::parse("k1:not base64!").unwrap_err().to_string();
        assert!(!error.contains("not base64"), "{error}");
        assert!(Keyring::parse("nocolon").is_err());
    }
}
