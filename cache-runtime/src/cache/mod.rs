//! [`PgCache`], the public store: what it holds, how it is built, and the helpers its operations share.
//!
//! Each family of operations has a file of its own, all of them `impl PgCache`:
//! - `ops.rs`: per-key `set`, `set_tagged`, `get`, `delete`;
//! - `bulk.rs`: `get_many`, `set_many`, `delete_many`;
//! - `tags.rs`: `invalidate_tag(s)`, `invalidate_on_change` and its removal;
//! - `maintenance.rs`: namespace purges, sweeps, eviction, `keys`, `stats`, `health_check`;
//! - `builder.rs`, `env.rs`: [`PgCacheBuilder`], `connect`, `from_env`;
//! - `similar.rs`: semantic entries, `set_similar` and `get_similar`;
//! - `tenants.rs`: per-tenant purges, stats and quotas, and row-level security by tenant;
//! - `memo.rs`: the narrow handle through which the memoization engine uses a cache;
//! - `global.rs`: the process-wide instance.
//!
//! `PgCache` checks keys and values, keeps the counters and the in-process tier, and sends I/O down through
//! `route/` (which shard, which replica) to a `server/`. Its state ([`Inner`]) is private to this module.

mod builder;
mod bulk;
mod env;
mod global;
mod grant;
mod maintenance;
mod memo;
mod ops;
mod rekey;
mod sealing;
mod similar;
mod tags;
mod tenants;

pub use builder::PgCacheBuilder;
pub use global::{global, set_global};
pub use maintenance::SweepReport;
pub(crate) use memo::MemoHandle;
#[cfg(feature = "test-support")]
pub(crate) use similar::similar_key;
pub(crate) use similar::Scope;
pub use similar::SimilarHit;
pub use tenants::TenantStats;

use crate::codec;
use crate::config::Config;
use crate::entry::{LiveEntry, ReadFrom, Write};
use crate::error::{CacheError, Result};
use crate::key::{check_key, namespace_of};
use crate::observe::{Counters, Event};
use crate::route::failover::Hosts;
use crate::route::node::Node;
use crate::route::replicas::Replicas;
use crate::route::shards::{on_every_shard, Shards};
use crate::server::Server;
use crate::tier::events::{Events, Targets};
use crate::tier::flight::Flights;
use crate::tier::local::{Fill, LocalTier};
use crate::tier::vectors::Vectors;
use serde::de::DeserializeOwned;
use sqlx::postgres::PgPool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

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
/// # What a `PgCache` does
/// - **Build it**: [`PgCache::builder`], [`connect`](Self::connect), [`from_env`](Self::from_env),
///   [`builder_from_env`](Self::builder_from_env); then [`migrate`](Self::migrate) once.
/// - **One key**: [`set`](Self::set), [`set_tagged`](Self::set_tagged), [`get`](Self::get),
///   [`delete`](Self::delete).
/// - **Many keys**: [`get_many`](Self::get_many), [`set_many`](Self::set_many),
///   [`delete_many`](Self::delete_many).
/// - **Invalidate what depends on something**: [`invalidate_tag`](Self::invalidate_tag),
///   [`invalidate_tags`](Self::invalidate_tags), [`invalidate_on_change`](Self::invalidate_on_change),
///   [`remove_invalidate_on_change`](Self::remove_invalidate_on_change),
///   [`delete_namespace`](Self::delete_namespace).
/// - **Keep it tidy**: [`sweep`](Self::sweep), [`clear_expired`](Self::clear_expired),
///   [`enforce_max_entries`](Self::enforce_max_entries) (a background sweeper does all three).
/// - **Look at it**: [`keys`](Self::keys), [`stats`](Self::stats), [`process_stats`](Self::process_stats),
///   [`health_check`](Self::health_check), [`shard_for`](Self::shard_for),
///   [`single_pool`](Self::single_pool), [`shard_pools`](Self::shard_pools).
/// - **Tenants** (inside [`tenant`](crate::tenant), every key is the tenant's):
///   [`delete_tenant`](Self::delete_tenant), [`tenant_stats`](Self::tenant_stats),
///   [`enforce_tenant_quotas`](Self::enforce_tenant_quotas),
///   [`enable_tenant_isolation`](Self::enable_tenant_isolation).
/// - **Match by meaning**: [`set_similar`](Self::set_similar), [`get_similar`](Self::get_similar) (with an
///   [`embedder`](crate::PgCacheBuilder::embedder)).
/// - **Memoize**: `#[pg_cached]` functions use it (see [`macro@crate::pg_cached`]).
///
/// # Expiry
/// An expired entry is never returned: every read compares `expires_at` with the database's clock. Expired
/// rows are deleted later, by [`clear_expired`](Self::clear_expired) or by the background sweeper.
///
/// # Failures, timeouts and cancellation
/// Every operation is bounded by the operation timeout (250 ms by default,
/// [`PgCacheBuilder::op_timeout`](crate::PgCacheBuilder::op_timeout)); a database that hangs gives
/// [`CacheError::Timeout`], not a hung caller. Maintenance operations (sweeps, namespace purges, stats) are
/// bounded per batch by the maintenance timeout. A caller that is cancelled (its future dropped) never costs
/// a pooled connection: its statement finishes in a task of its own and the connection goes back to the
/// pool. A statement that meets a dead connection (after a server restart) is retried once on a fresh one
/// within the same timeout.
#[derive(Clone, Debug)]
pub struct PgCache {
    inner: Arc<Inner>,
}

/// What every clone of one `PgCache` shares. Private to this module: the layers above reach it only through
/// `PgCache`'s methods and [`MemoHandle`].
#[derive(Debug)]
struct Inner {
    shards: Shards,
    config: Config,
    counters: Counters,
    flights: Arc<Flights>,
    /// The in-process tier, created by the builder or on first use by a function with `local = "..."`.
    local: Arc<OnceLock<LocalTier>>,
    events: Arc<Events>,
    /// The vectors of the semantic scopes this process searched (see `similar.rs`).
    vectors: Vectors,
    sweeper: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Hits per tenant in this process (see `tenants.rs`).
    tenant_hits: crate::tenant::TenantHits,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(handle) = self.sweeper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            handle.abort();
        }
    }
}

impl PgCache {
    /// A cache over `pools`, one per shard, each with its shard name and its hosts; `replicas` (named pools)
    /// answer reads for the one server there is when they are given.
    fn from_parts(
        pools: Vec<(String, PgPool, Arc<Hosts>)>,
        replicas: Vec<(String, PgPool)>,
        config: Config,
    ) -> PgCache {
        let local = Arc::new(OnceLock::new());
        let events = Arc::new(Events::new(pools.len(), config.listener_heartbeat));
        if let Some((capacity, max_age)) = config.local_tier {
            let _ = local.set(LocalTier::new(capacity, max_age, true, Arc::clone(&events.listening)));
        }
        let nodes = pools
            .into_iter()
            .map(|(name, pool, hosts)| {
                let server = Server::new(pool, &config, events.sender, Box::new(hosts));
                (name, node(server, replicas.clone(), &config))
            })
            .collect();
        let inner = Inner {
            shards: Shards::new(nodes),
            config,
            counters: Counters::default(),
            flights: Arc::default(),
            local,
            events,
            vectors: Vectors::default(),
            sweeper: std::sync::Mutex::new(None),
            tenant_hits: crate::tenant::TenantHits::default(),
        };
        let cache = PgCache { inner: Arc::new(inner) };
        if cache.inner.local.get().is_some() {
            cache.listen_for_events();
        }
        cache.start_sweeper();
        cache
    }

    /// The connection pool, when the cache runs on one server; `None` with
    /// [`shards`](crate::PgCacheBuilder::shards) (see [`shard_pools`](Self::shard_pools)). Useful to run
    /// the application's own SQL next to the cache (a trigger's source table, a test's checks).
    pub fn single_pool(&self) -> Option<&PgPool> {
        (self.inner.shards.len() == 1).then(|| self.inner.shards.first().primary().pool())
    }

    /// The connection pool of each shard's primary, in the order given to
    /// [`PgCacheBuilder::shards`](crate::PgCacheBuilder::shards) (one pool on one server).
    pub fn shard_pools(&self) -> impl ExactSizeIterator<Item = &PgPool> {
        self.inner.shards.all().iter().map(|node| node.primary().pool())
    }

    /// The index of the shard that holds `key`, in the order given to
    /// [`PgCacheBuilder::shards`](crate::PgCacheBuilder::shards) (always 0 on one server).
    pub fn shard_for(&self, key: &str) -> usize {
        self.inner.shards.index_for(key)
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
        on_every_shard(self.shards(), |server| server.migrate(gin_index)).await.into_iter().collect()
    }

    /// The shard that holds `key`.
    fn node_for(&self, key: &str) -> &Node {
        self.inner.shards.for_key(key)
    }

    /// The primary server of the shard that holds `key`.
    fn server_for(&self, key: &str) -> &Server {
        self.node_for(key).primary()
    }

    fn shards(&self) -> &Shards {
        &self.inner.shards
    }

    fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Every write: one statement that also tells every process (see `sql::WRITE`), then this process's tier.
    /// A guarded write (`write.started`) may be refused: returns whether the row was written. `local_max_age`:
    /// the function's own in-process max age (`local = "..."`), if any.
    /// `sealed`: encrypt the value whatever its namespace (`#[pg_cached(encrypt)]`); the tier keeps plaintext.
    async fn write(&self, write: Write, local_max_age: Option<Duration>, sealed: bool) -> Result<bool> {
        let fill = self.inner.local.get().map(LocalTier::fill);
        let (key, json, ttl, meta) = (write.key.clone(), Arc::clone(&write.json), write.ttl, write.meta.clone());
        let started = crate::observe::metrics::clock();
        let result = match self.sealed(write, sealed) {
            Ok(write) => self.server_for(&key).write(write).await,
            Err(error) => Err(error),
        };
        self.timed("set", &key, started);
        self.note_failure(&key, "set", &result);
        let written = result?;
        if !written {
            tracing::debug!(namespace = namespace_of(&key), key, "result computed before an invalidation; not stored");
        }
        self.after_write(fill.as_ref(), &key, LiveEntry::written(json, ttl, meta), written, local_max_age);
        Ok(written)
    }

    /// Brings this process's tier up to date after a write of `key` (`fill` was taken before it): the new
    /// entry if the tier holds such keys and it was written, otherwise the key leaves the tier.
    fn after_write(
        &self,
        fill: Option<&Fill<'_>>,
        key: &str,
        entry: LiveEntry,
        written: bool,
        local: Option<Duration>,
    ) {
        if written {
            crate::observe::metrics::bytes_written(self.metric_namespace(namespace_of(key)), entry.json.len());
        }
        let Some(fill) = fill else { return };
        if written && (fill.tier().for_all_keys || local.is_some()) {
            fill.put(key, entry, local);
        } else {
            fill.tier().remove(key);
        }
    }

    /// Starts listening for other processes' invalidations and lease releases (once).
    fn listen_for_events(&self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            let targets =
                Targets { local: Arc::downgrade(&self.inner.local), flights: Arc::downgrade(&self.inner.flights) };
            self.inner.events.ensure_listening(self.shard_pools(), &targets);
        }
    }

    /// The in-process tier when the builder turned it on for every key (`local_tier`).
    fn tier_for_all_keys(&self) -> Option<&LocalTier> {
        self.inner.local.get().filter(|tier| tier.for_all_keys).inspect(|tier| self.keep_listening(tier))
    }

    /// Makes sure `tier` has its listeners: while it is not listening (not started yet, connecting, or its
    /// task ended with the runtime it ran in) it serves nothing, and the listeners it lacks are started.
    fn keep_listening(&self, tier: &LocalTier) {
        if !tier.listening() {
            self.listen_for_events();
        }
    }

    /// The JSON of a live entry and the milliseconds it has left, straight from PostgreSQL: the statement of
    /// [`get`](Self::get), also the fast path of a memoized hit. Decrypted; an entry that cannot be is
    /// `None` (`sealed`: the value must be encrypted, whatever its namespace).
    async fn get_live(&self, key: &str, from: ReadFrom, sealed: bool) -> Result<Option<LiveEntry>> {
        check_key(key)?;
        let started = crate::observe::metrics::clock();
        let result = self.node_for(key).get_live(key, from).await;
        self.timed("get", key, started);
        self.note_failure(key, "get", &result);
        Ok(result?.and_then(|entry| self.opened_entry(key, entry, sealed)))
    }

    /// Decodes a stored value, counting it as `hit`, or as a miss when it has the wrong shape.
    fn decode_counted<T: DeserializeOwned>(&self, key: &str, json: &str, hit: Event) -> Option<T> {
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

    /// After a delete of `key` (`done`: it committed): the tier once more, since a read of this process that
    /// fetched the row before the delete committed may have refilled it meanwhile (the epoch catches most,
    /// not a read that began after the first removal); and the metric.
    fn after_delete(&self, key: &str, done: bool) {
        self.forget_locally(key);
        if done {
            crate::observe::metrics::invalidation(self.metric_namespace(namespace_of(key)), "key");
        }
    }

    /// Drops `key` from this process's tier, and detaches its computation in flight, if any, so that callers
    /// arriving from now on start a fresh one instead of waiting for a value computed before.
    fn forget_locally(&self, key: &str) {
        if let Some(tier) = self.inner.local.get() {
            tier.remove(key);
        }
        self.inner.flights.detach(|flight| flight == key);
    }

    /// Records how long `operation` on `key` took, since `started` (from `metrics::clock`).
    fn timed(&self, operation: &'static str, key: &str, started: Option<Instant>) {
        crate::observe::metrics::operation(operation, self.metric_namespace(namespace_of(key)), started);
    }

    fn record(&self, namespace: &str, event: Event) {
        self.inner.counters.record(namespace, event);
        if event.hit_kind().is_some() {
            self.inner.tenant_hits.hit_here();
        }
    }

    /// Counts a failed cache operation (the caller ran, or runs, without the cache).
    fn record_error(&self, namespace: &str, error: &CacheError) {
        self.inner.counters.record(namespace, Event::Error);
        crate::observe::metrics::error(self.metric_namespace(namespace), error.kind());
    }

    /// `namespace` as metrics label it: bounded as the process counters are.
    fn metric_namespace<'a>(&self, namespace: &'a str) -> &'a str {
        if cfg!(feature = "metrics") {
            self.inner.counters.slot(namespace)
        } else {
            namespace
        }
    }

    fn note_failure<T>(&self, key: &str, operation: &'static str, result: &Result<T>) {
        if let Err(error) = result {
            let namespace = namespace_of(key);
            self.record_error(namespace, error);
            if error.sqlstate() == Some("42P01") {
                tracing::warn!(namespace, operation, "the cache_entries table does not exist: call PgCache::migrate()");
            } else {
                tracing::warn!(namespace, operation, %error, "cache operation failed");
            }
        }
    }
}

/// A shard of `server`, reading from `replicas` too when there are any.
fn node(server: Server, replicas: Vec<(String, PgPool)>, config: &Config) -> Node {
    if replicas.is_empty() {
        return Node::new(server, None);
    }
    let members = replicas.into_iter().map(|(name, pool)| (name, pool.clone(), server.standby_reads(pool))).collect();
    let replicas = Replicas::new(server.pool().clone(), members, config.max_replica_lag, config.op_timeout);
    replicas.start_monitor();
    Node::new(server, Some(replicas))
}

#[cfg(feature = "test-support")]
impl PgCache {
    /// See [`crate::test_support`].
    pub(crate) fn local_len(&self) -> u64 {
        self.inner.local.get().map_or(0, LocalTier::len)
    }

    /// See [`crate::test_support`].
    pub(crate) fn shared_statements(&self) -> [(u64, u64); 3] {
        let mut total = [(0, 0); 3];
        for node in self.shards().all() {
            for (sum, (statements, operations)) in total.iter_mut().zip(node.primary().shared_statements()) {
                sum.0 += statements;
                sum.1 += operations;
            }
        }
        total
    }

    /// See [`crate::test_support`].
    pub(crate) fn warm_connections(&self) -> [u64; 3] {
        let mut total = [0; 3];
        for node in self.shards().all() {
            for (sum, count) in total.iter_mut().zip(node.primary().warm_counts()) {
                *sum += count;
            }
        }
        total
    }

    /// See [`crate::test_support`].
    pub(crate) fn listener_connects(&self) -> u64 {
        self.inner.events.connects.load(std::sync::atomic::Ordering::Relaxed)
    }
}
