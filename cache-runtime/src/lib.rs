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
//! with SHA-256 over a canonical encoding. See each item's docs for the behaviour you can rely on.
//!
//! # Failure model
//! - Bad input (a NUL character, a NaN, an oversized value, an over-long key) is a typed [`CacheError`]
//!   before any I/O; it never panics and never stores something that would come back different.
//! - A database that is down or slow is a [`CacheError::Timeout`] or [`CacheError::Database`] within the
//!   operation timeout.
//! - A memoized function never sees any of this: it runs uncached, and the failure is logged with `tracing`
//!   and counted in [`PgCache::stats`].

#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod canonical;
mod codec;
mod error;
mod events;
mod flight;
mod global;
mod key;
mod lease;
mod local;
mod stats;
mod store;
mod ttl;

#[doc(hidden)]
#[allow(missing_docs)]
#[path = "private.rs"]
pub mod __private;

pub use error::{CacheError, Result};
pub use global::{global, set_global};
pub use key::{validate_namespace, MAX_NAMESPACE_LEN};
pub use stats::{CacheStats, HealthReport, HealthStatus, NamespaceStats, ProcessCounts};
pub use store::{Durability, PgCache, PgCacheBuilder, MAX_KEY_CHARS, MIGRATOR};
pub use ttl::Ttl;

#[doc(inline)]
pub use cache_macros::pg_cached;
