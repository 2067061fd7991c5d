//! The stored form of an encrypted value: a JSONB object, so the `data` column keeps its type and every
//! statement that moves rows (sweeps, purges, replication) works unchanged:
//!
//! ```json
//! {"pg_cached_enc": 1, "kid": "k1", "n": "<base64 nonce>", "c": "<base64 ciphertext>", "z": "zstd"}
//! ```
//!
//! `pg_cached_enc` is the format version, `kid` the id of the key, `n` the 24-byte nonce, `c` the ciphertext
//! with its 16-byte tag, and `z` (present only then) says the plaintext was compressed with zstd before it was
//! encrypted. The associated data is the cache key and the compression flag: a ciphertext copied under another
//! key, or with `z` added or removed, fails to decrypt.

use super::keyring::Keyring;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::Deserialize;
use std::cell::RefCell;

/// The format version written.
const VERSION: u32 = 1;

/// Plaintexts shorter than this are not compressed: zstd's frame costs more than it saves on them.
const COMPRESS_FROM: usize = 512;
/// zstd level 1: the fastest.
const ZSTD_LEVEL: i32 = 1;

thread_local! {
    // zstd's contexts are allocated once per thread: making one per value costs more than compressing 1 KB.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        RefCell::new(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok());
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// Why a stored value could not be opened. Each is a miss to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// The envelope names a key id the keyring does not hold (written by a process with a newer keyring, or
    /// under a key removed too early).
    UnknownKey(String),
    /// Authentication failed: a wrong key under a reused id, a ciphertext copied from another cache key, or
    /// tampering.
    Rejected,
    /// Not an envelope of a version this release reads, or a field is not valid base64 or UTF-8.
    Malformed,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::UnknownKey(id) => write!(f, "encrypted under key id {id:?}, which this keyring does not hold"),
            OpenError::Rejected => f.write_str("did not authenticate (wrong key, or copied from another cache key)"),
            OpenError::Malformed => f.write_str("is not a well-formed encrypted value"),
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    pg_cached_enc: u32,
    kid: String,
    n: String,
    c: String,
    #[serde(default)]
    z: Option<String>,
}

/// Whether stored JSON text may be an envelope (cheap: no parsing). A plain value that merely mentions the
/// mark is told apart by [`open`], which then answers `Malformed`.
pub(crate) fn looks_sealed(json: &str) -> bool {
    json.starts_with('{') && json.contains("\"pg_cached_enc\"")
}

/// Whether `json` is an envelope in form (without opening it).
pub(crate) fn is_envelope(json: &str) -> bool {
    serde_json::from_str::<Envelope>(json).is_ok()
}

/// Encrypts `json`, stored under `key`, with the keyring's current key; compressed first when `compress` and
/// it is long enough to gain.
pub(crate) fn seal(keyring: &Keyring, key: &str, json: &str, compress: bool) -> String {
    let compressed = (compress && json.len() >= COMPRESS_FROM)
        .then(|| COMPRESSOR.with_borrow_mut(|zstd| zstd.as_mut()?.compress(json.as_bytes()).ok()))
        .flatten()
        // Kept only where it pays: 30 % or more (docs/BENCHMARKS.md, "Encryption at rest").
        .filter(|packed| packed.len() * 10 <= json.len() * 7);
    let zipped = compressed.is_some();
    let plaintext = compressed.as_deref().unwrap_or(json.as_bytes());
    let (id, cipher) = keyring.current();
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let aad = associated_data(key, zipped);
    // Encryption fails only for plaintexts past 256 GiB, far beyond the value size limit.
    let sealed = cipher.encrypt(&nonce, Payload { msg: plaintext, aad: &aad }).unwrap_or_default();
    let mut out = String::with_capacity(sealed.len() * 4 / 3 + 96);
    out.push_str("{\"pg_cached_enc\":1,\"kid\":\"");
    out.push_str(id); // ids are plain ASCII without quotes (see keyring.rs)
    out.push_str("\",\"n\":\"");
    STANDARD.encode_string(nonce, &mut out);
    out.push_str("\",\"c\":\"");
    STANDARD.encode_string(&sealed, &mut out);
    out.push('"');
    if zipped {
        out.push_str(",\"z\":\"zstd\"");
    }
    out.push('}');
    out
}

/// Decrypts the envelope `json` stored under `key`; `limit`: the largest plaintext accepted (a compressed one
/// is never inflated past it).
pub(crate) fn open(keyring: &Keyring, key: &str, json: &str, limit: usize) -> Result<String, OpenError> {
    let envelope: Envelope = serde_json::from_str(json).map_err(|_| OpenError::Malformed)?;
    if envelope.pg_cached_enc != VERSION || envelope.z.as_deref().is_some_and(|z| z != "zstd") {
        return Err(OpenError::Malformed);
    }
    let cipher = keyring.get(&envelope.kid).ok_or_else(|| OpenError::UnknownKey(envelope.kid.clone()))?;
    let nonce = STANDARD.decode(&envelope.n).map_err(|_| OpenError::Malformed)?;
    let sealed = STANDARD.decode(&envelope.c).map_err(|_| OpenError::Malformed)?;
    if nonce.len() != 24 {
        return Err(OpenError::Malformed);
    }
    let zipped = envelope.z.is_some();
    let aad = associated_data(key, zipped);
    let plain = cipher
        .decrypt(XNonce::from_slice(&nonce), Payload { msg: &sealed, aad: &aad })
        .map_err(|_| OpenError::Rejected)?;
    let plain = if zipped {
        DECOMPRESSOR
            .with_borrow_mut(|zstd| zstd.as_mut()?.decompress(&plain, limit).ok())
            .ok_or(OpenError::Malformed)?
    } else {
        plain
    };
    String::from_utf8(plain).map_err(|_| OpenError::Malformed)
}

/// What the ciphertext is bound to: the cache key, and whether the plaintext is compressed.
fn associated_data(key: &str, zipped: bool) -> Vec<u8> {
    let mut aad = Vec::with_capacity(key.len() + 2);
    aad.extend_from_slice(key.as_bytes());
    aad.push(0);
    aad.push(if zipped { b'z' } else { b'j' });
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::new("k2", [2; 32]).unwrap().with_key("k1", [1; 32]).unwrap()
    }

    #[test]
    fn round_trips_compressed_or_not() {
        let long = serde_json::to_string(&"the same words again and again ".repeat(100)).unwrap();
        for (json, compress) in [("[1,2,3]", true), (long.as_str(), true), (long.as_str(), false)] {
            let sealed = seal(&ring(), "ns:a", json, compress);
            assert!(looks_sealed(&sealed) && !sealed.contains("again"), "{sealed}");
            assert_eq!(sealed.contains("\"z\""), compress && json.len() > 512);
            assert!(sealed.contains(r#""kid":"k2""#));
            let value: serde_json::Value = serde_json::from_str(&sealed).unwrap();
            let reformatted = value.to_string(); // as JSONB would give it back, keys in another order
            assert_eq!(open(&ring(), "ns:a", &reformatted, 1 << 20).unwrap(), json);
        }
    }

    #[test]
    fn another_key_or_keyring_cannot_open() {
        let sealed = seal(&ring(), "ns:a", "\"secret\"", true);
        assert_eq!(open(&ring(), "ns:b", &sealed, 1024), Err(OpenError::Rejected));
        let other = Keyring::new("k2", [3; 32]).unwrap();
        assert_eq!(open(&other, "ns:a", &sealed, 1024), Err(OpenError::Rejected));
        let stranger = Keyring::new("k9", [2; 32]).unwrap();
        assert_eq!(open(&stranger, "ns:a", &sealed, 1024), Err(OpenError::UnknownKey("k2".into())));
        let flipped = sealed.replacen("\"c\":\"", "\"c\":\"A", 1);
        assert!(open(&ring(), "ns:a", &flipped, 1024).is_err());
        assert_eq!(open(&ring(), "ns:a", r#"{"pg_cached_enc": "yes"}"#, 1024), Err(OpenError::Malformed));
    }

    #[test]
    fn a_compressed_value_is_never_inflated_past_the_limit() {
        let long = serde_json::to_string(&"x".repeat(100_000)).unwrap();
        let sealed = seal(&ring(), "ns:a", &long, true);
        assert_eq!(open(&ring(), "ns:a", &sealed, 1000), Err(OpenError::Malformed));
    }
}
