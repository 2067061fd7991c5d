//! Memoized calls made through `cache_runtime::__private` directly, the way `#[pg_cached]` expands, so the
//! runtime's memoization logic is tested without any macro in between.

use cache_runtime::__private::{here, memoize, memoize_local, AsIs, CacheRef, KeyArg, KeyBuilder, OkOnly, Site};
use cache_runtime::{CacheError, PgCache};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;

/// The key `site` gives to `arg`.
pub fn key(site: &'static Site, arg: u64) -> Result<String, CacheError> {
    let mut builder = KeyBuilder::new(site);
    arg.add_to_key(&mut builder);
    builder.finish()
}

/// A memoized call of a function of one `u64` that returns a plain value.
pub async fn call<R, F>(cache: &PgCache, site: &'static Site, arg: u64, body: F) -> R
where
    R: Serialize + DeserializeOwned,
    F: Future<Output = R>,
{
    memoize(site, CacheRef::Explicit(Some(cache.clone())), key(site, arg), AsIs, here(body)).await
}

/// The same, for a function that returns a `Result` (only `Ok` is stored).
pub async fn call_result<T, E, F>(cache: &PgCache, site: &'static Site, arg: u64, body: F) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    F: Future<Output = Result<T, E>>,
{
    memoize(site, CacheRef::Explicit(Some(cache.clone())), key(site, arg), OkOnly, here(body)).await
}

/// The same, for a function with `local = "..."` (typed in-process hits).
pub async fn call_local<R, F>(cache: &PgCache, site: &'static Site, arg: u64, body: F) -> R
where
    R: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: Future<Output = R>,
{
    memoize_local(site, CacheRef::Explicit(Some(cache.clone())), key(site, arg), AsIs, here(body)).await
}

/// A second pool on the same database as `pool`, as another process would have.
pub async fn second_pool(pool: &sqlx::PgPool) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(5)
        .connect_with((*pool.connect_options()).clone())
        .await
        .expect("a second pool on the test database")
}
