//! The per-key operations of [`PgCache`]: `set`, `set_tagged`, `get`, `delete`.

use super::PgCache;
use crate::codec;
use crate::entry::{EntryMeta, ReadFrom, Write};
use crate::error::Result;
use crate::key::{check_key, namespace_of};
use crate::observe::Event;
use crate::ttl::Ttl;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

impl PgCache {
    /// Stores `value` under `key`. `ttl`: `None` for the default, `Some(duration)`, or [`Ttl::Never`].
    ///
    /// Concurrent writers of one key never fail: the last write wins, whole.
    ///
    /// Inside a [`tenant`](crate::tenant) scope, `key` is the tenant's own (qualified by the tenant, as in
    /// every operation of a `PgCache`): a `get` of the same key for another tenant, or outside any scope,
    /// does not find it. In a scope whose tenant id was refused, every operation fails with
    /// [`CacheError::InvalidTenant`](crate::CacheError::InvalidTenant) before any I/O.
    ///
    /// # Errors
    /// Refused before any I/O, with a typed error: keys that are empty, hold NUL or exceed 500 characters
    /// ([`CacheError::InvalidKey`](crate::CacheError::InvalidKey),
    /// [`CacheError::KeyTooLong`](crate::CacheError::KeyTooLong)); values holding NaN, infinities or U+0000, or
    /// larger than the size limit; an invalid TTL. Then [`CacheError::Timeout`](crate::CacheError::Timeout) or
    /// [`CacheError::Database`](crate::CacheError::Database) when the database does not take the write.
    pub async fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T, ttl: impl Into<Ttl>) -> Result<()> {
        self.set_tagged(key, value, ttl, &[] as &[&str]).await
    }

    /// [`set`](Self::set), with `tags`: [`invalidate_tag`](Self::invalidate_tag) of any of them deletes the
    /// entry. The entry's previous tags, if any, are replaced.
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_runtime::PgCache) -> Result<(), cache_runtime::CacheError> {
    /// use std::time::Duration;
    /// cache.set_tagged("answer:q1", &"42", Some(Duration::from_secs(3600)), &["doc:7", "doc:9"]).await?;
    /// cache.invalidate_tag("doc:9").await?; // answer:q1 is gone
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Those of [`set`](Self::set), [`CacheError::InvalidTag`](crate::CacheError::InvalidTag) for a bad
    /// tag, and [`CacheError::TooManyTags`](crate::CacheError::TooManyTags) past
    /// [`MAX_TAGS_PER_ENTRY`](crate::MAX_TAGS_PER_ENTRY) distinct tags, before any I/O.
    pub async fn set_tagged<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: impl Into<Ttl>,
        tags: &[impl AsRef<str>],
    ) -> Result<()> {
        check_key(key)?;
        let (key, tenant) = crate::tenant::scoped_write_key(key)?;
        self.set_scoped(&key, tenant, value, ttl, tags).await
    }

    /// [`set_tagged`](Self::set_tagged) of a key already qualified by its tenant (see `tenant.rs`).
    pub(super) async fn set_scoped<T: Serialize + ?Sized>(
        &self,
        key: &str,
        tenant: Option<Arc<str>>,
        value: &T,
        ttl: impl Into<Ttl>,
        tags: &[impl AsRef<str>],
    ) -> Result<()> {
        let tags = crate::tags::entry_form(tags)?;
        let ttl = ttl.into().resolve(self.config().default_ttl)?;
        let json = codec::encode(value, self.config().max_value_bytes)?;
        let mut write = Write::plain(key, json.into(), ttl);
        write.meta = EntryMeta { tags, ..EntryMeta::default() };
        write.tenant = tenant;
        self.write(write, None, false).await.map(drop)
    }

    /// Reads `key`. `None` when it is missing, expired, or stored in a shape that no longer deserializes
    /// into `T` (a changed type is a miss, not an error that sticks; the next `set` replaces the entry).
    ///
    /// # Errors
    /// [`CacheError::InvalidKey`](crate::CacheError::InvalidKey) or
    /// [`CacheError::KeyTooLong`](crate::CacheError::KeyTooLong) before any I/O;
    /// [`CacheError::Timeout`](crate::CacheError::Timeout) or
    /// [`CacheError::Database`](crate::CacheError::Database) when the database cannot answer.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        check_key(key)?;
        let (key, _) = crate::tenant::scoped_key(key)?;
        self.get_scoped(&key).await
    }

    /// [`get`](Self::get) of a key already qualified by its tenant (see `tenant.rs`).
    pub(super) async fn get_scoped<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let tier = self.tier_for_all_keys();
        if let Some(entry) = tier.and_then(|tier| tier.get(key)) {
            return Ok(self.decode_counted(key, &entry.json, Event::LocalHit));
        }
        if tier.is_some() {
            self.record(namespace_of(key), Event::LocalMiss);
        }
        let fill = tier.map(|tier| tier.fill());
        let Some(entry) = self.get_live(key, ReadFrom::AnyCopy, false).await? else {
            self.record(namespace_of(key), Event::Miss);
            tracing::debug!(namespace = namespace_of(key), key, "cache miss");
            return Ok(None);
        };
        let value = self.decode_counted(key, &entry.json, Event::Hit);
        if let (Some(fill), Some(_)) = (fill, &value) {
            fill.put(key, entry, None);
        }
        Ok(value)
    }

    /// Deletes `key`; `true` if this delete removed a row (expired or not), `false` if there was none.
    ///
    /// The answer is this delete's own, also when its connection failed after the commit and the statement
    /// ran once more on a fresh connection (see "One retry" in the reliability docs): the retry finds its
    /// first run's record and answers what it did, instead of `false` for the row it had itself removed.
    ///
    /// It is also an invalidation: a memoized computation of this key that started before the delete will not
    /// store its result, and every process drops the key from its in-process tier.
    ///
    /// # Errors
    /// [`CacheError::InvalidKey`](crate::CacheError::InvalidKey) or
    /// [`CacheError::KeyTooLong`](crate::CacheError::KeyTooLong) before any I/O;
    /// [`CacheError::Timeout`](crate::CacheError::Timeout) or
    /// [`CacheError::Database`](crate::CacheError::Database) when the database cannot answer.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        check_key(key)?;
        let (key, _) = crate::tenant::scoped_key(key)?;
        let key = key.as_str();
        self.forget_locally(key);
        let started = crate::observe::metrics::clock();
        let result = self.server_for(key).delete(key).await;
        self.note_failure(key, "delete", &result);
        self.after_delete(key, result.is_ok());
        self.timed("delete", key, started);
        result
    }
}
