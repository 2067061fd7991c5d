//! The builder's settings of encryption at rest (see docs/SECURITY.md).

use super::PgCacheBuilder;
use crate::crypt::Keyring;

impl PgCacheBuilder {
    /// The keys that encrypt values at rest: the first encrypts, every one decrypts. On its own this turns
    /// nothing on; say what to encrypt with [`encrypt_namespaces`](Self::encrypt_namespaces),
    /// [`encrypt_all`](Self::encrypt_all) or `#[pg_cached(encrypt)]`. Values are encrypted with
    /// XChaCha20-Poly1305, bound to their cache key; an entry that cannot be decrypted (a key id this keyring
    /// lacks, a ciphertext copied under another key) is a miss, never an error or a wrong value.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cache_runtime::CacheError> {
    /// use cache_runtime::{Keyring, PgCache};
    ///
    /// let cache = PgCache::builder()
    ///     .database_url("postgres://postgres@127.0.0.1/app")
    ///     .encryption(Keyring::from_env()?) // PG_CACHED_KEYS="k2:<base64>,k1:<base64>"
    ///     .encrypt_namespaces(["answer", "retrieval"])
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn encryption(mut self, keyring: Keyring) -> Self {
        self.config.sealing.keyring = Some(keyring);
        self
    }

    /// Encrypts the values of these namespaces (a key's namespace is its text before the first `:`), through
    /// the store API and memoized functions alike. In these namespaces a value stored in plain text (written
    /// before encryption was turned on) is a miss. Needs [`encryption`](Self::encryption): without it,
    /// [`build`](Self::build) returns [`CacheError::Config`](crate::CacheError::Config).
    pub fn encrypt_namespaces<S: Into<String>>(mut self, namespaces: impl IntoIterator<Item = S>) -> Self {
        self.config.sealing.namespaces.extend(namespaces.into_iter().map(Into::into));
        self
    }

    /// Encrypts the values of every namespace, as [`encrypt_namespaces`](Self::encrypt_namespaces) would.
    pub fn encrypt_all(mut self) -> Self {
        self.config.sealing.all = true;
        self
    }

    /// Whether encrypted values are compressed with zstd first, when that shrinks them by 30 % or more
    /// (default `true`: ciphertext does not compress, so PostgreSQL's own TOAST compression no longer helps;
    /// docs/BENCHMARKS.md has the measurements). Plain values are never compressed by the cache.
    pub fn compress_encrypted(mut self, enabled: bool) -> Self {
        self.config.sealing.compress = enabled;
        self
    }
}
