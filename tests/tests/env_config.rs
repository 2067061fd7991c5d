//! `PgCache::from_env` and the process-wide instance read their settings from the environment. One test
//! function, alone in its binary, because the environment is process-wide.

use cache_runtime::{CacheError, PgCache, Ttl};
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test]
async fn settings_come_from_the_environment() -> TestResult {
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL must be set (run through scripts/test)")?;

    std::env::set_var("CACHE_MAX_ENTRIES", "ten thousand");
    let err = PgCache::builder_from_env().expect_err("a malformed number is refused");
    assert!(matches!(err, CacheError::Config(ref m) if m.contains("CACHE_MAX_ENTRIES")), "{err}");

    // Past the longest TTL (10,000 years), named by its variable rather than failing every write.
    std::env::set_var("CACHE_DEFAULT_TTL_MINUTES", u64::MAX.to_string());
    let err = PgCache::builder_from_env().expect_err("a TTL past 10,000 years is refused");
    assert!(matches!(err, CacheError::Config(ref m) if m.contains("CACHE_DEFAULT_TTL_MINUTES")), "{err}");

    std::env::set_var("CACHE_MAX_ENTRIES", "25");
    std::env::set_var("CACHE_DEFAULT_TTL_MINUTES", "0");
    let cache = PgCache::from_env().await?;
    cache.migrate().await?;
    let key = format!("envtest:{}", std::process::id());
    cache.set(&key, &1, None).await?;
    let expires: Option<f64> =
        sqlx::query_scalar("SELECT extract(epoch FROM expires_at)::float8 FROM cache_entries WHERE cache_key = $1")
            .bind(&key)
            .fetch_one(cache.single_pool().expect("a cache on one server"))
            .await?;
    assert_eq!(expires, None, "CACHE_DEFAULT_TTL_MINUTES=0 means entries never expire");
    cache.delete(&key).await?;

    std::env::set_var("CACHE_DEFAULT_TTL_MINUTES", "5");
    let cache = PgCache::from_env().await?;
    cache.set(&key, &1, Ttl::Default).await?;
    let ttl: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - created_at)::float8 FROM cache_entries WHERE cache_key = $1",
    )
    .bind(&key)
    .fetch_one(cache.single_pool().expect("a cache on one server"))
    .await?;
    assert_eq!(Duration::from_secs_f64(ttl), Duration::from_secs(300));
    cache.delete(&key).await?;

    std::env::remove_var("DATABASE_URL");
    assert!(matches!(PgCache::from_env().await, Err(CacheError::Config(_))));
    // Without a usable environment the process-wide instance is absent: memoized calls run uncached.
    assert!(cache_runtime::global().is_none());
    std::env::set_var("DATABASE_URL", url);
    Ok(())
}
