//! Memoize async functions in PostgreSQL.
//!
//! `cache-runtime` is a cache store over one JSONB table, and the [`macro@pg_cached`] attribute that turns an
//! async function into a memoized one. Services that cache retrieval results and LLM answers get a shared,
//! persistent, queryable cache from the database they already run, with no Redis.
//!
//! ```no_run
//! use cache_runtime::{pg_cached, PgCache};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Doc { id: String, text: String }
//!
//! #[pg_cached(namespace = "retrieval", ttl = "30m")]
//! async fn retrieve(query: &str, max_results: usize) -> Result<Vec<Doc>, std::io::Error> {
//!     // ... an expensive search ...
//! # Ok(vec![])
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = PgCache::from_env().await?;
//! cache.migrate().await?;
//! cache_runtime::set_global(cache);
//! let docs = retrieve("rust async", 5).await?; // runs the search and stores the result
//! let again = retrieve("rust async", 5).await?; // served from PostgreSQL
//! # Ok(()) }
//! ```
//!
//! # The store
//! [`PgCache`] is the store: `set`, `get`, `delete`, namespace purges, expiry sweeps, a row limit, stats and
//! a health check, each bounded by a timeout. Keys come from [`cache_key!`], which fingerprints its arguments
//! with SHA-256 over a canonical encoding: stable across processes, builds and platforms, blind to `HashMap`
//! order, and length-prefixed so `("ab", "c")` and `("a", "bc")` differ. See each item's docs for the
//! behaviour you can rely on.
//!
//! The table is `cache_entries (cache_key VARCHAR(500) PRIMARY KEY, data JSONB NOT NULL, created_at, expires_at)`,
//! created by [`PgCache::migrate`] (or with `psql`: the numbered files of `migrations/`, then
//! `migrations/functions.sql`). Values are plain JSONB, so they can be read and queried with SQL, except in
//! namespaces encrypted at rest ([`PgCacheBuilder::encryption`] with a [`Keyring`]; docs/SECURITY.md), whose
//! values are ciphertext inside a JSONB object.
//!
//! # Database roles
//! Only the role that ran [`PgCache::migrate`] (the cache's owner) may use the cache's tables and SQL
//! functions; a service connected as another role needs [`PgCache::grant`] (everything the cache does) or
//! [`PgCache::grant_reader`] (reading only) first, once, from the owner. docs/RELIABILITY.md ("Security")
//! says what each role may do.
//!
//! # Concurrent misses: single-flight
//! When many callers miss the same key at once, `#[pg_cached]` runs the function once and shares the result:
//!
//! - `single_flight = "process"` (the default): callers in one process share one computation. It costs
//!   nothing on a hit and nothing extra on a miss.
//! - `single_flight = "cluster"`: callers in every process share one computation. The first process to miss
//!   takes a *lease*, a row in `cache_leases` with an owner and a deadline; the others wait for the value,
//!   woken by a notification when the leader is done and polling as a fallback. No connection is held while
//!   the body runs and no advisory lock can leak. A leader that crashes, is cancelled or overruns blocks
//!   nobody past its lease ([`PgCacheBuilder::lease_duration`], 30 s by default); then one waiting process
//!   takes over. A miss costs two more short statements (take and release the lease): measured from one
//!   task with a trivial body, misses run at 0.6-0.8x the rate of `"process"` (docs/BENCHMARKS.md), which
//!   is why it is not the default. Use it where a computation is expensive, such as a paid LLM call.
//! - `single_flight = "off"`: every caller that misses computes.
//!
//! Errors are not shared: when the leader's outcome is not stored (an `Err`, a `None`), each waiting caller
//! runs the function itself.
//!
//! # Stale-while-revalidate
//! With `stale = "10m"`, for up to ten minutes after an entry expires, callers get the expired value at once
//! while one caller refreshes it (one per process, or one across processes with cluster single-flight).
//! The refreshing caller runs the function in its own call and gets the new value: the function's future
//! borrows its arguments, so it cannot be moved to a background task. If the refresh fails (an `Err` or a
//! `None`), the stale value is served instead and stays until the window closes.
//!
//! # No stale sets
//! [`PgCache::delete`], [`PgCache::delete_namespace`], [`PgCache::invalidate_tag`] and the generated
//! `{fn}_invalidate` companions record when they ran. A memoized result (and a `{fn}_refresh`) is only written if its computation started after
//! the last invalidation of its key and of its namespace (compared on the database's clock), so a slow
//! computation that began before an invalidation can never put its outdated value back. Writes and
//! invalidations of one key take turns under a transaction-scoped advisory lock, so the check cannot miss
//! an invalidation that is committing at the same moment. A caller that starts after an invalidation has
//! completed never receives a value computed before it: invalidations detach this process's computations
//! in flight, and single-flight followers read the leader's value back from PostgreSQL rather than taking
//! it from memory.
//!
//! # Tags: invalidating what depends on something
//! An entry can carry tags: the function's static `tags("...")`, those its body adds with [`tag`] and
//! [`tags`], and, with no code at all, the tags of every memoized call its body made (hit or miss). An
//! answer built on a retrieval that returned document 42 is tagged `doc:42` because the retrieval was.
//! [`PgCache::invalidate_tag`] deletes every entry carrying a tag, with the guarantees above;
//! [`PgCache::invalidate_on_change`] installs a trigger on the source table that does it inside the
//! transaction that changes a row: on COMMIT the entries are gone and every process's tier is told, on
//! ROLLBACK nothing happened, and a computation that began before the COMMIT (and so may have read the old
//! row) does not store its result.
//!
//! ```no_run
//! use cache_runtime::{pg_cached, PgCache};
//!
//! #[pg_cached(namespace = "retrieval", ttl = "30m")]
//! async fn retrieve(query: String) -> Vec<u64> {
//!     let ids = vec![42, 7]; // ... a search ...
//!     cache_runtime::tags(ids.iter().map(|id| format!("doc:{id}")));
//!     ids
//! }
//!
//! #[pg_cached(namespace = "answer", ttl = "2h")]
//! async fn answer(question: String) -> String {
//!     let ids = retrieve(question).await; // this entry inherits doc:42 and doc:7
//!     format!("{ids:?}")
//! }
//!
//! # async fn demo(cache: PgCache) -> Result<(), cache_runtime::CacheError> {
//! cache.invalidate_on_change("documents", "id", "doc:").await?;
//! // UPDATE documents SET ... WHERE id = 42; COMMIT;  -> both entries above are gone
//! cache.invalidate_tag("doc:7").await?;              // or from the application
//! # Ok(()) }
//! ```
//!
//! # Usage: what the cache saved in tokens and money
//! A body that calls an LLM reports what the call consumed with [`usage`] (a [`Usage`]: input and output
//! tokens, cost in micro-USD). It is stored with the entry and inherited by outer memoized calls, like tags;
//! every hit counts it as saved: [`ProcessCounts::tokens_saved`] and [`ProcessCounts::cost_saved`], the
//! `pg_cached_tokens_saved_total` and `pg_cached_cost_saved_micros_total` metrics (by namespace and kind of
//! hit), and [`NamespaceStats::usage_held`] for what live entries hold.
//!
//! # The in-process tier
//! A PostgreSQL hit costs a network round trip. For hot keys, an in-process tier (L1) answers from memory:
//! turn it on for every key with [`PgCacheBuilder::local_tier`], or per function with `local = "30s"`.
//!
//! **Coherence guarantee.** Every write, delete, namespace purge and `{fn}_invalidate`, from any process
//! (with or without a tier of its own), sends a notification (LISTEN/NOTIFY on `pg_cached_events`) from the
//! transaction that made the change, and every process drops the key or namespace from its tier, normally
//! within milliseconds. While no process listens (no tier, no wait for another process's computation), the
//! notification is not sent: PostgreSQL lets one notifying transaction commit at a time, which halved writes
//! at 16 writers. Listeners register in `cache_listeners` (migration 0013 has the protocol), and a tier
//! serves only once the writes in progress at its registration have ended. A read that fetched a row before an invalidation reached this process never puts it
//! in the tier afterwards (an epoch check). Notifications can be lost while a process's listener is
//! disconnected, so the tier serves nothing until the listener is connected, and is cleared every time it
//! connects. Whatever happens, an L1 entry is never served
//! after its PostgreSQL expiry, nor longer than the tier's max age after it was stored: the max age is the
//! bound on how stale a value can be when a notification is lost. Choose it as the staleness you can accept.
//!
//! # Many callers: coalesced round trips
//! Under load the cost of a cache operation is its round trip, not its row. Gets, memoized lookups, writes
//! and deletes issued while others of their kind are in flight wait for the next free slot and go out
//! together, as one statement per kind (`= ANY($1)` for reads, one multi-row upsert for writes): no timer,
//! so a lone caller pays nothing, and every guarantee above holds per key inside a batch. With it the
//! default pool of 10 serves hundreds of concurrent callers. [`PgCache::get_many`],
//! [`PgCache::set_many`] and [`PgCache::delete_many`] batch the keys a caller already holds.
//! [`PgCacheBuilder::coalesce`] turns coalescing of single operations off; docs/BENCHMARKS.md has the
//! figures.
//!
//! # Failure model
//! - Bad input (a NUL character, a NaN, an infinity, a -0.0, an oversized value, an over-long key) is a typed
//!   [`CacheError`] before any I/O; it never panics and never stores something that would come back
//!   different.
//! - A database that is down or slow is a [`CacheError::Timeout`] or [`CacheError::Database`] within the
//!   operation timeout (250 ms by default, waiting for a connection included).
//! - A memoized function never sees any of this: it runs uncached, and the failure is logged with `tracing`
//!   (with the namespace) and counted in [`PgCache::stats`].
//!
//! # The process-wide instance
//! Memoized functions without a `cache = ...` option use [`global()`]: the cache given to [`set_global`], or
//! one built lazily from the environment (`DATABASE_URL`, `CACHE_DEFAULT_TTL_MINUTES`, `CACHE_MAX_ENTRIES`).

#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

// The layers, top to bottom; each uses only those below it (docs/ARCHITECTURE.md).
//   memo     the contract with generated code (`__private`) and the memoization engine
//   semantic embedders and the nearest-text search of semantic hits
//   cache    `PgCache`: the public store, its builder, bulk and tag operations, maintenance and reports
//   tier     this process's own state: the in-process tier, flights in progress, the event listener
//   route    which server: shards, read replicas, failover, connection sources
//   server   one PostgreSQL server: pools, coalesced statements, execution, the SQL text
//   leaves   entry, key, tags, tenant, channel, codec, ttl, usage, error, observe, latest, redact: used by all, using none
mod cache;
mod memo;
mod route;
pub mod semantic;
mod server;
mod tier;

pub mod channel;
mod codec;
mod config;
mod crypt;
mod entry;
mod error;
mod key;
mod latest;
mod observe;
mod redact;
mod report;
mod tags;
mod tenant;
mod ttl;
mod usage;

#[doc(hidden)]
#[allow(missing_docs)]
#[path = "memo/private.rs"]
pub mod __private;

pub use cache::{global, set_global, PgCache, PgCacheBuilder, SimilarHit, SweepReport, TenantStats};
pub use config::{Durability, DEFAULT_SIMILARITY_THRESHOLD};
pub use crypt::{Keyring, KEYS_ENV};
pub use error::{CacheError, Result};
pub use key::{validate_key, validate_namespace, MAX_KEY_CHARS, MAX_NAMESPACE_LEN};
pub use memo::scope::{tag, tags, usage};
pub use memo::stream::StreamInterrupted;
pub use observe::{ProcessCounts, MAX_COUNTED_NAMESPACES, OTHER_NAMESPACES};
pub use redact::redact_url;
pub use report::{
    CacheStats, HealthReport, HealthStatus, KeyIdCount, NamespaceStats, RekeyReport, ReplicaHealth, ShardHealth,
};
pub use server::schema::FUNCTIONS_VERSION;
pub use server::sql::MIGRATOR;
pub use tags::{validate_tag, MAX_TAGS_PER_ENTRY, MAX_TAG_CHARS};
pub use tenant::{current_tenant, tenant, validate_tenant, MAX_COUNTED_TENANTS, MAX_TENANT_CHARS};
pub use ttl::Ttl;
pub use usage::Usage;

/// The LISTEN/NOTIFY channel on which caches tell each other of invalidations and finished computations
/// (payload format: [`channel`]). Tools such as `pg-cached watch` listen on it.
pub const EVENTS_CHANNEL: &str = channel::CHANNEL;

#[doc(inline)]
pub use cache_macros::pg_cached;

/// Hooks for the tests and benchmarks of this workspace (feature `test-support`). **Not a stable API.**
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod test_support {
    use crate::PgCache;

    /// How many entries `cache`'s in-process tier holds (0 when it is off).
    pub fn local_len(cache: &PgCache) -> u64 {
        cache.local_len()
    }

    /// For reads, writes and deletes, in that order: how many statements carried more than one operation,
    /// and how many operations they carried.
    pub fn shared_statements(cache: &PgCache) -> [(u64, u64); 3] {
        cache.shared_statements()
    }

    /// For the primaries' connections left warm from one caller's statement to the next: how many callers
    /// took one, how many were kept, and how many are warm now.
    pub fn warm_connections(cache: &PgCache) -> [u64; 3] {
        cache.warm_connections()
    }

    /// Loses the answer of the next delete statement carrying `key`, after it committed: it fails as if its
    /// connection had died, and runs once more on a fresh connection.
    pub fn lose_next_delete_answer(key: &str) {
        crate::server::lost::lose_next_delete_answer(key);
    }

    /// How many times `cache`'s event listener has connected.
    pub fn listener_connects(cache: &PgCache) -> u64 {
        cache.listener_connects()
    }

    /// The `scope_hash` of `cache_semantic` rows for `namespace`, `scope` and `model_id` (for benchmarks that
    /// load many rows with one statement).
    pub fn semantic_scope_hash(namespace: &str, scope: &str, model_id: &str) -> i64 {
        crate::cache::Scope::new(namespace, scope, model_id).hash
    }

    /// A scope of semantic vectors in memory, as a cache holds one, for measuring its search.
    #[derive(Debug)]
    pub struct ScopeProbe(crate::tier::vectors::ScopeVectors);

    impl ScopeProbe {
        /// A scope holding `vectors` (unit vectors of one length).
        pub fn new(vectors: &[Vec<f32>]) -> ScopeProbe {
            let scope = crate::tier::vectors::ScopeVectors::new(1);
            for (i, vector) in vectors.iter().enumerate() {
                scope.upsert(&i.to_string(), "", vector);
            }
            ScopeProbe(scope)
        }

        /// How many of the scope's vectors the first pass leaves to be scored exactly when `query` asks for
        /// the best one at or above `threshold`.
        pub fn exact_pass_size(&self, query: &[f32], threshold: f32) -> usize {
            self.0.exact_pass_size(query, threshold, 1)
        }
    }

    /// The key [`PgCache::set_similar`] stores `text` under.
    pub fn similar_key(namespace: &str, scope: &str, text: &str) -> String {
        crate::cache::similar_key(namespace, scope, text)
    }
}
