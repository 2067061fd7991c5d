//! The bulk API: many keys in one call, for callers that already hold them (a batch of embeddings, the
//! documents of one answer). Keys go to the server in as few statements as the coalescing limits allow
//! (see `PgCacheBuilder::coalesce_max_keys`), whether or not single operations are coalesced.

use super::PgCache;
use crate::codec;
use crate::entry::{EntryMeta, LiveEntry, Write};
use crate::error::Result;
use crate::key::{check_key, namespace_of};
use crate::observe::Event;
use crate::route::shards::scatter;
use crate::tier::local::LocalTier;

use crate::ttl::Ttl;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Each key's first place in `keys`, and the distinct keys in that order.
fn distinct<'a>(keys: impl IntoIterator<Item = &'a str>) -> (Vec<usize>, Vec<&'a str>) {
    let mut index = HashMap::new();
    let mut unique = Vec::new();
    let slots = keys
        .into_iter()
        .map(|key| {
            *index.entry(key).or_insert_with(|| {
                unique.push(key);
                unique.len() - 1
            })
        })
        .collect();
    (slots, unique)
}

/// Checks every key before any I/O (see `check_key`).
fn check_keys(keys: &[impl AsRef<str>]) -> Result<()> {
    keys.iter().try_for_each(|key| check_key(key.as_ref()))
}

/// The first error among `results`, after all of them are in.
fn first_error<T>(results: Vec<Result<T>>) -> Result<Vec<T>> {
    results.into_iter().collect()
}

impl PgCache {
    /// Reads many keys: one result per key, in order, as [`get`](Self::get) would give it. Duplicates are
    /// allowed (each is read once). An empty slice does nothing.
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_runtime::PgCache) -> Result<(), cache_runtime::CacheError> {
    /// let embeddings: Vec<Option<Vec<f32>>> = cache.get_many(&["emb:a", "emb:b", "emb:a"]).await?;
    /// assert_eq!(embeddings.len(), 3);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`CacheError::InvalidKey`](crate::CacheError::InvalidKey) or
    /// [`CacheError::KeyTooLong`](crate::CacheError::KeyTooLong) for any bad key, before any I/O; then
    /// [`CacheError::Timeout`](crate::CacheError::Timeout) or
    /// [`CacheError::Database`](crate::CacheError::Database) when some key could not be read.
    pub async fn get_many<T: DeserializeOwned>(&self, keys: &[impl AsRef<str>]) -> Result<Vec<Option<T>>> {
        check_keys(keys)?;
        // Inside a tenant scope, every key is qualified by the tenant (see `tenant.rs`).
        let (keys, _) = crate::tenant::scoped_keys(keys.iter().map(AsRef::as_ref))?;
        let (slots, unique) = distinct(keys.iter().map(AsRef::as_ref));
        let tier = self.tier_for_all_keys();
        let fill = tier.map(|tier| tier.fill());
        // Per distinct key: its JSON and where it came from, or `None` for a miss.
        let mut found: Vec<Option<(Arc<str>, Event)>> = vec![None; unique.len()];
        let mut to_fetch = Vec::new();
        for (i, key) in unique.iter().enumerate() {
            match tier.and_then(|tier| tier.get(key)) {
                Some(entry) => found[i] = Some((Arc::clone(&entry.json), Event::LocalHit)),
                None => {
                    if tier.is_some() {
                        self.record(namespace_of(key), Event::LocalMiss);
                    }
                    to_fetch.push(i);
                }
            }
        }
        let fetch_keys: Vec<&str> = to_fetch.iter().map(|&i| unique[i]).collect();
        let fetched = scatter(
            self.shards(),
            fetch_keys.clone(),
            |key| key,
            |server, keys| async move { server.get_many_live(&keys).await },
        )
        .await;
        for (key, result) in fetch_keys.iter().zip(&fetched) {
            self.note_failure(key, "get", result);
        }
        for (&i, entry) in to_fetch.iter().zip(first_error(fetched)?) {
            if let Some(entry) = entry.and_then(|entry| self.opened_entry(unique[i], entry, false)) {
                let json = Arc::clone(&entry.json);
                if let Some(fill) = &fill {
                    fill.put(unique[i], entry, None);
                }
                found[i] = Some((json, Event::Hit));
            }
        }
        // Each place decodes its own copy, so duplicates need no `T: Clone`.
        let decode = |slot: usize| match &found[slot] {
            Some((json, event)) => self.decode_counted(unique[slot], json, *event),
            None => {
                self.record(namespace_of(unique[slot]), Event::Miss);
                None
            }
        };
        Ok(slots.iter().map(|&slot| decode(slot)).collect())
    }

    /// Stores every `(key, value)` for `ttl`, as [`set`](Self::set) would. A key given twice keeps its last
    /// value. An empty slice does nothing.
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_runtime::PgCache) -> Result<(), cache_runtime::CacheError> {
    /// use std::time::Duration;
    /// let batch = [("emb:a", vec![0.1_f32, 0.2]), ("emb:b", vec![0.3, 0.4])];
    /// cache.set_many(&batch, Some(Duration::from_secs(3600))).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Before any I/O, the errors of [`set`](Self::set) for any key or value; then
    /// [`CacheError::Timeout`](crate::CacheError::Timeout) or
    /// [`CacheError::Database`](crate::CacheError::Database) when some entry was not written (the others may
    /// have been).
    pub async fn set_many<T: Serialize>(&self, entries: &[(impl AsRef<str>, T)], ttl: impl Into<Ttl>) -> Result<()> {
        let ttl = ttl.into().resolve(self.config().default_ttl)?;
        let mut jsons = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            check_key(key.as_ref())?;
            jsons.push(codec::encode(value, self.config().max_value_bytes)?);
        }
        let (keys, tenant) = crate::tenant::scoped_write_keys(entries.iter().map(|(key, _)| key.as_ref()))?;
        // Last write wins: keep each key's last place only.
        let mut last = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            last.insert(key.as_str(), i);
        }
        let writes: Vec<Write> = (keys.iter().zip(jsons).enumerate())
            .filter(|(i, (key, _))| last.get(key.as_str()) == Some(i))
            .map(|(_, (key, json))| Write { tenant: tenant.clone(), ..Write::plain(key.as_str(), json.into(), ttl) })
            .collect();
        // Encrypted where their namespaces are; `writes` keeps the plaintext for this process's tier.
        let stored = writes.iter().map(|write| self.sealed(write.clone(), false)).collect::<Result<Vec<_>>>()?;
        let fill = self.inner.local.get().map(LocalTier::fill);
        let results = scatter(
            self.shards(),
            stored,
            |write| &write.key,
            |node, writes| async move { node.primary().write_many(writes).await },
        )
        .await;
        for (write, result) in writes.into_iter().zip(&results) {
            self.note_failure(&write.key, "set", result);
            let entry = LiveEntry::written(write.json, ttl, EntryMeta::default());
            self.after_write(fill.as_ref(), &write.key, entry, matches!(result, Ok(true)), None);
        }
        first_error(results).map(drop)
    }

    /// Deletes every key, as [`delete`](Self::delete) would (each is also an invalidation); the rows deleted.
    /// Duplicates count once. An empty slice does nothing.
    ///
    /// # Errors
    /// [`CacheError::InvalidKey`](crate::CacheError::InvalidKey) or
    /// [`CacheError::KeyTooLong`](crate::CacheError::KeyTooLong) for any bad key, before any I/O; then
    /// [`CacheError::Timeout`](crate::CacheError::Timeout) or
    /// [`CacheError::Database`](crate::CacheError::Database) when some key was not deleted.
    pub async fn delete_many(&self, keys: &[impl AsRef<str>]) -> Result<u64> {
        check_keys(keys)?;
        let (keys, _) = crate::tenant::scoped_keys(keys.iter().map(AsRef::as_ref))?;
        self.delete_scoped(&keys).await
    }

    /// [`delete_many`](Self::delete_many) of keys already qualified by their tenant (see `tenant.rs`).
    pub(super) async fn delete_scoped(&self, keys: &[String]) -> Result<u64> {
        let (_, unique) = distinct(keys.iter().map(AsRef::as_ref));
        for key in &unique {
            self.forget_locally(key);
        }
        let results = scatter(
            self.shards(),
            unique.clone(),
            |key| key,
            |node, keys| async move { node.primary().delete_many(&keys).await },
        )
        .await;
        for (key, result) in unique.iter().zip(&results) {
            self.note_failure(key, "delete", result);
            self.after_delete(key, result.is_ok());
        }
        Ok(first_error(results)?.into_iter().sum())
    }
}
