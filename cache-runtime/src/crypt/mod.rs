//! Encryption at rest: which values are encrypted ([`Sealing`]), with which keys ([`Keyring`]), and their
//! stored form (`envelope.rs`). A leaf: the store (`cache/`) seals each write and opens each read at the one
//! door both the store API and memoized calls pass, so no layer below ever sees a plaintext of an encrypted
//! namespace, and none above sees a ciphertext. The threat model is in docs/SECURITY.md.

pub(crate) mod envelope;
mod keyring;

pub use keyring::{Keyring, KEYS_ENV};

use crate::error::CacheError;
use envelope::OpenError;
use std::collections::HashSet;

/// Which namespaces a cache encrypts, and its keys. Fixed when the cache is built.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sealing {
    pub(crate) keyring: Option<Keyring>,
    /// `encrypt_all()`: every namespace.
    pub(crate) all: bool,
    /// `encrypt_namespaces([...])`.
    pub(crate) namespaces: HashSet<String>,
    /// zstd before encryption, where it gains (see `envelope::seal`).
    pub(crate) compress: bool,
}

/// What a read does with a stored value.
#[derive(Debug)]
pub(crate) enum Opened {
    /// Serve it as stored: a plain value where plain values are allowed.
    AsStored,
    /// Serve this plaintext, decrypted.
    Decrypted(String),
    /// A miss, for this reason (counted and logged by the caller).
    Refused(Refusal),
}

/// Why a stored value is not served.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// An envelope that could not be opened.
    Open(OpenError),
    /// A plain value in an encrypted namespace: it was not written by this cache with encryption on (written
    /// before encryption was turned on, or by someone else), so it is not trusted.
    Plain,
    /// An envelope, and no keyring to open it.
    NoKeyring,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Open(error) => write!(f, "the stored value {error}"),
            Refusal::Plain => f.write_str("the stored value is not encrypted, in a namespace that is"),
            Refusal::NoKeyring => f.write_str("the stored value is encrypted and this cache has no keyring"),
        }
    }
}

impl Sealing {
    /// Whether values of `namespace` are encrypted; `forced`: the function asked for it (`#[pg_cached(encrypt)]`).
    pub(crate) fn seals(&self, namespace: &str, forced: bool) -> bool {
        forced || self.all || (!self.namespaces.is_empty() && self.namespaces.contains(namespace))
    }

    /// The stored form of `json` under `key`.
    ///
    /// # Errors
    /// [`CacheError::Config`] when the cache has no keyring.
    pub(crate) fn seal(&self, key: &str, json: &str) -> Result<String, CacheError> {
        let keyring = self.keyring.as_ref().ok_or_else(no_keyring)?;
        Ok(envelope::seal(keyring, key, json, self.compress))
    }

    /// What to serve of `json`, stored under `key`; `sealed`: whether its namespace is encrypted (then a plain
    /// value is refused); `limit`: the largest plaintext accepted.
    pub(crate) fn open(&self, key: &str, json: &str, sealed: bool, limit: usize) -> Opened {
        if !envelope::looks_sealed(json) {
            return if sealed { Opened::Refused(Refusal::Plain) } else { Opened::AsStored };
        }
        let Some(keyring) = &self.keyring else {
            // A plain value that only mentions the mark is served where plain values are allowed.
            return match sealed || envelope::is_envelope(json) {
                true => Opened::Refused(Refusal::NoKeyring),
                false => Opened::AsStored,
            };
        };
        match envelope::open(keyring, key, json, limit) {
            Ok(plain) => Opened::Decrypted(plain),
            // A plain value that only mentions the mark, where plain values are allowed.
            Err(OpenError::Malformed) if !sealed => Opened::AsStored,
            Err(error) => Opened::Refused(Refusal::Open(error)),
        }
    }
}

fn no_keyring() -> CacheError {
    CacheError::Config(
        "encryption is on for this namespace but the cache has no keyring: see PgCacheBuilder::encryption".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealing(keyring: Option<Keyring>) -> Sealing {
        Sealing { keyring, namespaces: ["secret".to_owned()].into(), ..Sealing::default() }
    }

    #[test]
    fn what_a_read_serves() {
        let with = sealing(Some(Keyring::new("k1", [1; 32]).unwrap()));
        let without = sealing(None);
        let sealed = with.seal("secret:a", "\"v\"").unwrap();
        assert!(matches!(with.open("secret:a", &sealed, true, 1024), Opened::Decrypted(v) if v == "\"v\""));
        assert!(matches!(with.open("secret:b", &sealed, true, 1024), Opened::Refused(Refusal::Open(_))));
        assert!(matches!(with.open("secret:a", "\"plain\"", true, 1024), Opened::Refused(Refusal::Plain)));
        assert!(matches!(without.open("other:a", &sealed, false, 1024), Opened::Refused(Refusal::NoKeyring)));
        assert!(without.seal("secret:a", "1").is_err());
        // A plain value that only mentions the mark stays a plain value outside encrypted namespaces.
        let mention = r#"{"note": "the field \"pg_cached_enc\" marks an envelope"}"#;
        for cache in [&with, &without] {
            assert!(matches!(cache.open("other:a", mention, false, 1024), Opened::AsStored));
            assert!(matches!(cache.open("other:a", "[1]", false, 1024), Opened::AsStored));
        }
        assert!(with.seals("secret", false) && !with.seals("other", false) && with.seals("other", true));
    }
}
