//! [`PgCache`]: the public store, and its per-key operations (set, get, delete, the memoized lookup).
//!
//! `PgCache` checks keys and values, keeps the counters and the in-process tier, and sends I/O to the
//! [`Server`] below it. Maintenance (purges, sweeps, stats, health) is in `maintenance.rs`; settings in
//! `config.rs`.

use crate::codec;
use crate::config::Config;
use crate::error::{CacheError, Result};
use crate::events::Events;
use crate::failover::Hosts;
use crate::flight::Flights;
use crate::local::LocalTier;
use crate::replicas::Replicas;
use crate::server::{remaining, EntryMeta, LiveEntry, Lookup, ReadFrom, Server, Start, Write};
use crate::shards::Shards;
use crate::stats::{namespace_of, Counters, Event};
use crate::ttl::Ttl;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::postgres::PgPool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The longest key the `cache_key VARCHAR(500)` column holds, in characters.
pub const MAX_KEY_CHARS: usize = 500;

/// A PostgreSQL-backed cache of JSON values.
///
/// Cheap to clone (an `Arc`), `Send + Sync`, and meant to be built once and shared.
///
/// ```no_run
/// # async fn demo() -> Result<(), cache_runtime::CacheError> {
/// use cache_runtime::PgCache;
/// use std::time::Duration;
///
/// let cache = PgCache::connect("postgres://postgres@127.0.0.1/app").await?;
/// cache.migrate().await?;
/// cache.set("retrieval:python:5", &vec!["doc-1", "doc-2"], Some(Duration::from_secs(1800))).await?;
/// let docs: Option<Vec<String>> = cache.get("retrieval:python:5").await?;
/// assert_eq!(docs.as_deref(), Some(&["doc-1".to_string(), "doc-2".to_string()][..]));
/// # Ok(()) }
/// ```
///
/// # Expiry
/// An expired entry is never returned: every read compares `expires_at` with the database's clock. Expired
/// rows are deleted later, by [`clear_expired`](Self::clear_expired) or by the background sweeper.
///
/// # Failures, timeouts and cancellation
/// Every operation is bounded by the operation timeout (250 ms by default,
/// [`PgCacheBuilder::op_timeout`](crate::PgCacheBuilder::op_timeout)); a database that hangs gives
/// [`CacheError::Timeout`], not a hung caller. Maintenance operations (sweeps, namespace purges, stats) are
/// bounded per batch by the maintenance timeout. A caller that is cancelled (its future dropped) never costs a
/// pooled connection: its statement finishes in a task of its own and the connection goes back to the pool. A statement that meets a dead connection (after a server restart) is
/// retried once on a fresh one within the same timeout.
#[derive(Clone, Debug)]
pub struct PgCache {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) shards: Shards,
    pub(crate) config: Config,
    pub(crate) counters: Counters,
    pub(crate) flights: Flights,
    /// The in-process tier, created by the builder or on first use by a function with `local = "..."`.
    pub(crate) local: Arc<OnceLock<LocalTier>>,
    pub(crate) events: Arc<Events>,
    pub(crate) sweeper: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(handle) = self.sweeper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            handle.abort();
        }
    }
}

/// What a write may add to a plain `set`: a memoized result's guard, stale window and tier setting, and any
/// entry's tags and compute time.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemoWrite {
    /// How long the row is kept past its expiry, to be served stale (`stale`, `stale_if_error`).
    pub(crate) keep: Option<Duration>,
    /// The function's own in-process max age (`local = "..."`), if any.
    pub(crate) local_max_age: Option<Duration>,
    /// For a memoized result: when its computation began. The write is refused for any invalidation of its
    /// key, namespace or tags the computation may not have seen.
    pub(crate) started: Option<Start>,
    /// Its tags and compute time.
    pub(crate) meta: EntryMeta,
}

/// Checks a key as every operation does before any I/O, for tools that take keys from people: not empty, no
/// NUL character, at most [`MAX_KEY_CHARS`] characters.
///
/// ```
/// assert!(cache_runtime::validate_key("retrieval:abc").is_ok());
/// assert!(cache_runtime::validate_key("a\0b").is_err());
/// ```
///
/// # Errors
/// [`CacheError::InvalidKey`] or [`CacheError::KeyTooLong`].
pub fn validate_key(key: &str) -> Result<()> {
    check_key(key)
}

/// Checks a key before any I/O: no NUL (PostgreSQL text cannot hold it), not empty, at most 500 characters
/// (longer keys would fail or, with a cast, be truncated into collisions).
pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(CacheError::InvalidKey { reason: "the key is empty".into() });
    }
    if key.contains('\0') {
        return Err(CacheError::InvalidKey { reason: "the key contains a NUL character".into() });
    }
    // Byte length bounds character count from above: only count characters when it could matter.
    if key.len() > MAX_KEY_CHARS {
        let chars = key.chars().count();
        if chars > MAX_KEY_CHARS {
            return Err(CacheError::KeyTooLong { chars, max: MAX_KEY_CHARS });
        }
    }
    Ok(())
}

impl PgCache {
    /// A cache over `pools`, one per shard, each with its shard name and its hosts; `replicas` (named pools)
    /// answer reads for the one server there is when they are given.
    pub(crate) fn from_parts(
        pools: Vec<(String, PgPool, Arc<Hosts>)>,
        replicas: Vec<(String, PgPool)>,
        config: Config,
    ) -> PgCache {
        let local = Arc::new(OnceLock::new());
        let events = Arc::new(Events::new(pools.len()));
        if let Some((capacity, max_age)) = config.local_tier {
            let _ = local.set(LocalTier::new(capacity, max_age, true, Arc::clone(&events.listening)));
        }
        let cache = PgCache {
            inner: Arc::new(Inner {
                shards: Shards::new(
                    pools
                        .into_iter()
                        .map(|(name, pool, hosts)| {
                            let server = Server::new(pool, hosts, &config, events.sender);
                            (name, with_replicas(server, replicas.clone(), &config))
                        })
                        .collect(),
                ),
                config,
                counters: Counters::default(),
                flights: Flights::default(),
                local,
                events,
                sweeper: std::sync::Mutex::new(None),
            }),
        };
        if cache.inner.local.get().is_some() {
            cache.listen_for_events();
        }
        cache.start_sweeper();
        cache
    }

    /// The pool the cache uses; with [`shards`](crate::PgCacheBuilder::shards), the first shard's.
    pub fn pool(&self) -> &PgPool {
        self.inner.shards.first().pool()
    }

    /// The index of the shard that holds `key`, in the order given to
    /// [`PgCacheBuilder::shards`](crate::PgCacheBuilder::shards) (always 0 on one server).
    pub fn shard_for(&self, key: &str) -> usize {
        self.inner.shards.index_for(key)
    }

    /// The server that holds `key`.
    pub(crate) fn server_for(&self, key: &str) -> &Server {
        self.inner.shards.for_key(key)
    }

    pub(crate) fn shards(&self) -> &Shards {
        &self.inner.shards
    }

    /// Creates or updates the cache's tables and SQL functions (idempotent; safe to run from several
    /// processes at once). The functions are replaced only by a newer version of them: a process of an older
    /// release leaves those of a newer one in place. Run it as the role that owns the cache; other roles need
    /// [`grant`](Self::grant).
    ///
    /// # Errors
    /// [`CacheError::Migrate`] or [`CacheError::Database`] when the schema cannot be created.
    pub async fn migrate(&self) -> Result<()> {
        let gin_index = self.inner.config.gin_index;
        crate::shards::on_every_shard(self.shards(), |server| server.migrate(gin_index)).await.into_iter().collect()
    }

    /// Stores `value` under `key`. `ttl`: `None` for the default, `Some(duration)`, or [`Ttl::Never`].
    ///
    /// Concurrent writers of one key never fail: the last write wins, whole.
    ///
    /// # Errors
    /// Refused before any I/O, with a typed error: keys that are empty, hold NUL or exceed 500 characters
    /// ([`CacheError::InvalidKey`], [`CacheError::KeyTooLong`]); values holding NaN, infinities or U+0000, or
    /// larger than the size limit; an invalid TTL. Then [`CacheError::Timeout`] or [`CacheError::Database`]
    /// when the database does not take the write.
    pub async fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T, ttl: impl Into<Ttl>) -> Result<()> {
        check_key(key)?;
        let ttl = ttl.into().resolve(self.inner.config.default_ttl)?;
        let json = codec::encode(value, self.inner.config.max_value_bytes)?;
        self.set_json(key, &json, ttl).await
    }

    pub(crate) async fn set_json(&self, key: &str, json: &str, ttl: Option<Duration>) -> Result<()> {
        self.write_json(key, json, ttl, &MemoWrite::default()).await.map(drop)
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
    /// Those of [`set`](Self::set), and [`CacheError::InvalidTag`] for a bad tag, before any I/O.
    pub async fn set_tagged<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: impl Into<Ttl>,
        tags: &[impl AsRef<str>],
    ) -> Result<()> {
        check_key(key)?;
        let tags = crate::tags::stored_form(tags)?;
        let ttl = ttl.into().resolve(self.inner.config.default_ttl)?;
        let json = codec::encode(value, self.inner.config.max_value_bytes)?;
        let memo = MemoWrite { meta: EntryMeta { tags, compute_us: None }, ..MemoWrite::default() };
        self.write_json(key, &json, ttl, &memo).await.map(drop)
    }

    /// Every write: one statement that also tells every process (see `sql::WRITE`), then this process's tier.
    /// A guarded write (`memo.started`) may be refused: returns whether the row was written.
    pub(crate) async fn write_json(
        &self,
        key: &str,
        json: &str,
        ttl: Option<Duration>,
        memo: &MemoWrite,
    ) -> Result<bool> {
        let namespace = namespace_of(key);
        let epoch = self.inner.local.get().map(LocalTier::epoch);
        let write = Write {
            namespace,
            ttl_ms: Ttl::millis(ttl),
            keep_ms: Ttl::millis(memo.keep).unwrap_or(0),
            started: memo.started.as_ref(),
            tags: memo.meta.tags.as_ref(),
            compute_us: memo.meta.compute_us,
        };
        let started = crate::metrics::clock();
        let result = self.server_for(key).write(key, json, write).await;
        self.timed("set", key, started);
        self.note_failure(key, "set", &result);
        let written = result?;
        if !written {
            tracing::debug!(namespace, key, "result computed before an invalidation; not stored");
        }
        self.after_write(key, json, ttl, written, memo, epoch);
        Ok(written)
    }

    /// Brings this process's tier up to date after a write of `key`: the new value if the tier holds such
    /// keys and it was written, otherwise nothing. `epoch` is the tier's epoch from before the write.
    pub(crate) fn after_write(
        &self,
        key: &str,
        json: &str,
        ttl: Option<Duration>,
        written: bool,
        memo: &MemoWrite,
        epoch: Option<u64>,
    ) {
        if written {
            crate::metrics::bytes_written(self.metric_namespace(namespace_of(key)), json.len());
        }
        if let (Some(tier), Some(epoch)) = (self.inner.local.get(), epoch) {
            if written && (tier.for_all_keys || memo.local_max_age.is_some()) {
                tier.put(key, json.into(), memo.meta.clone(), ttl, memo.local_max_age, epoch, None);
            } else {
                tier.remove(key);
            }
        }
    }

    /// Starts listening for other processes' invalidations and lease releases (once).
    pub(crate) fn listen_for_events(&self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            let pools = self.shards().all().iter().map(Server::pool);
            self.inner.events.ensure_listening(pools, Arc::downgrade(&self.inner.local));
        }
    }

    /// The in-process tier when the builder turned it on for every key (`local_tier`).
    pub(crate) fn local_tier_for_all_keys(&self) -> Option<&LocalTier> {
        self.inner.local.get().filter(|tier| tier.for_all_keys)
    }

    /// The in-process tier, created on first use by a function with `local = "..."` when the builder did not.
    pub(crate) fn local_tier_for(&self, max_age: Duration) -> &LocalTier {
        let tier = self.inner.local.get_or_init(|| {
            LocalTier::new(
                crate::local::DEFAULT_CAPACITY,
                max_age.max(Duration::from_secs(3600)),
                false,
                Arc::clone(&self.inner.events.listening),
            )
        });
        self.listen_for_events();
        tier
    }

    /// Looks a memoized call's key up: a live entry, or an expired one within `stale_window`.
    pub(crate) async fn lookup(&self, key: &str, stale_window: Option<Duration>, from: ReadFrom) -> Result<Lookup> {
        check_key(key)?;
        let started = crate::metrics::clock();
        let result = self.server_for(key).lookup(key, Ttl::millis(stale_window).unwrap_or(0), from).await;
        self.timed("lookup", key, started);
        self.note_failure(key, "get", &result);
        result
    }

    /// Reads `key`. `None` when it is missing, expired, or stored in a shape that no longer deserializes
    /// into `T` (a changed type is a miss, not an error that sticks; the next `set` replaces the entry).
    ///
    /// # Errors
    /// [`CacheError::InvalidKey`] or [`CacheError::KeyTooLong`] before any I/O; [`CacheError::Timeout`] or
    /// [`CacheError::Database`] when the database cannot answer.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        check_key(key)?;
        let tier = self.local_tier_for_all_keys();
        if let Some(entry) = tier.and_then(|tier| tier.get(key)) {
            return Ok(self.decode_counted(key, &entry.json, Event::LocalHit));
        }
        if tier.is_some() {
            self.record(namespace_of(key), Event::LocalMiss);
        }
        let epoch = tier.map(LocalTier::epoch);
        let Some(LiveEntry { json, remaining_ms, as_of, meta }) = self.get_live(key, ReadFrom::AnyCopy).await? else {
            self.record(namespace_of(key), Event::Miss);
            tracing::debug!(namespace = namespace_of(key), key, "cache miss");
            return Ok(None);
        };
        let value = self.decode_counted(key, &json, Event::Hit);
        if let (Some(tier), Some(epoch), Some(_)) = (tier, epoch, &value) {
            tier.put(key, json.into(), meta, remaining(remaining_ms), None, epoch, as_of);
        }
        Ok(value)
    }

    /// Decodes a stored value, counting it as `hit`, or as a miss when it has the wrong shape.
    pub(crate) fn decode_counted<T: DeserializeOwned>(&self, key: &str, json: &str, hit: Event) -> Option<T> {
        let namespace = namespace_of(key);
        match codec::decode(json) {
            Ok(value) => {
                self.record(namespace, hit);
                tracing::debug!(namespace, key, "cache hit");
                Some(value)
            }
            Err(error) => {
                self.record(namespace, Event::Miss);
                tracing::warn!(namespace, key, %error, "stored value does not match the requested type; treated as a miss");
                None
            }
        }
    }

    /// The JSON of a live entry and the milliseconds it has left, straight from PostgreSQL: the statement of
    /// [`get`](Self::get), also the fast path of a memoized hit.
    pub(crate) async fn get_live(&self, key: &str, from: ReadFrom) -> Result<Option<LiveEntry>> {
        check_key(key)?;
        let started = crate::metrics::clock();
        let result = self.server_for(key).get_live(key, from).await;
        self.timed("get", key, started);
        self.note_failure(key, "get", &result);
        result
    }

    /// Deletes `key`; `true` if a row was there (expired or not).
    ///
    /// It is also an invalidation: a memoized computation of this key that started before the delete will not
    /// store its result, and every process drops the key from its in-process tier.
    ///
    /// # Errors
    /// [`CacheError::InvalidKey`] or [`CacheError::KeyTooLong`] before any I/O; [`CacheError::Timeout`] or
    /// [`CacheError::Database`] when the database cannot answer.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        check_key(key)?;
        self.forget_locally(key);
        let started = crate::metrics::clock();
        let result = self.server_for(key).delete_and_mark(key).await;
        self.note_failure(key, "delete", &result);
        self.after_delete(key, result.is_ok());
        self.timed("delete", key, started);
        result
    }

    /// After a delete of `key` (`done`: it committed): the tier once more, since a read of this process that
    /// fetched the row before the delete committed may have refilled it meanwhile (the epoch catches most,
    /// not a read that began after the first removal); and the metric.
    pub(crate) fn after_delete(&self, key: &str, done: bool) {
        self.forget_locally(key);
        if done {
            crate::metrics::invalidation(self.metric_namespace(namespace_of(key)), "key");
        }
    }

    /// Records how long `operation` on `key` took, since `started` (from `metrics::clock`).
    pub(crate) fn timed(&self, operation: &'static str, key: &str, started: Option<Instant>) {
        crate::metrics::operation(operation, self.metric_namespace(namespace_of(key)), started);
    }

    /// Drops `key` from this process's tier, and detaches its computation in flight, if any, so that callers
    /// arriving from now on start a fresh one instead of waiting for a value computed before.
    pub(crate) fn forget_locally(&self, key: &str) {
        if let Some(tier) = self.inner.local.get() {
            tier.remove(key);
        }
        self.inner.flights.detach(|flight| flight == key);
    }

    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn record(&self, namespace: &str, event: Event) {
        self.inner.counters.record(namespace, event);
    }

    /// Counts a failed cache operation (the caller ran, or runs, without the cache).
    pub(crate) fn record_error(&self, namespace: &str, error: &CacheError) {
        self.inner.counters.record(namespace, Event::Error);
        crate::metrics::error(self.metric_namespace(namespace), error.kind());
    }

    /// `namespace` as metrics label it: bounded as the process counters are.
    pub(crate) fn metric_namespace<'a>(&self, namespace: &'a str) -> &'a str {
        if cfg!(feature = "metrics") {
            self.inner.counters.slot(namespace)
        } else {
            namespace
        }
    }

    pub(crate) fn note_failure<T>(&self, key: &str, operation: &'static str, result: &Result<T>) {
        if let Err(error) = result {
            let namespace = namespace_of(key);
            self.record_error(namespace, error);
            if is_undefined_table(error) {
                tracing::warn!(namespace, operation, "the cache_entries table does not exist: call PgCache::migrate()");
            } else {
                tracing::warn!(namespace, operation, %error, "cache operation failed");
            }
        }
    }
}

/// `server`, reading from `replicas` too when there are any.
fn with_replicas(server: Server, replicas: Vec<(String, PgPool)>, config: &Config) -> Server {
    if replicas.is_empty() {
        return server;
    }
    let members = replicas.into_iter().map(|(name, pool)| (name, pool.clone(), server.standby_reads(pool))).collect();
    let replicas = Replicas::new(server.pool().clone(), members, config.max_replica_lag, config.op_timeout);
    replicas.start_monitor();
    server.with_replicas(replicas)
}

fn is_undefined_table(error: &CacheError) -> bool {
    match error {
        CacheError::Database { source: sqlx::Error::Database(db), .. } => db.code().as_deref() == Some("42P01"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_before_io() {
        assert!(check_key(&"k".repeat(500)).is_ok());
        assert!(matches!(check_key(&"k".repeat(501)), Err(CacheError::KeyTooLong { chars: 501, max: 500 })));
        // 500 characters of 2 bytes each is still 500 characters.
        assert!(check_key(&"é".repeat(500)).is_ok());
        assert!(matches!(check_key("a\0b"), Err(CacheError::InvalidKey { .. })));
        assert!(matches!(check_key(""), Err(CacheError::InvalidKey { .. })));
    }
}
