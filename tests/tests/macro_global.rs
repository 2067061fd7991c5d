//! `#[pg_cached]` without `cache = ...` uses the process-wide cache set with `set_global`.
//! Alone in its own test binary, since the process-wide cache is shared by every test in a binary.

use cache_runtime::pg_cached;
use integration_tests::cache_on;
use sqlx::PgPool;
use std::sync::atomic::{AtomicUsize, Ordering};

type TestResult = Result<(), Box<dyn std::error::Error>>;

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[pg_cached(namespace = "global", ttl = "5m")]
async fn greet(name: &str) -> String {
    RUNS.fetch_add(1, Ordering::SeqCst);
    format!("hello {name}")
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn the_process_wide_cache_is_used(pool: PgPool) -> TestResult {
    cache_runtime::set_global(cache_on(pool.clone()).await);
    assert_eq!(greet("ada").await, "hello ada");
    assert_eq!(greet("ada").await, "hello ada");
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    let key: String = sqlx::query_scalar("SELECT cache_key FROM cache_entries").fetch_one(&pool).await?;
    assert_eq!(key, greet_cache_key("ada")?);
    assert!(greet_invalidate("ada").await?);
    assert_eq!(greet("ada").await, "hello ada");
    assert_eq!(RUNS.load(Ordering::SeqCst), 2);
    Ok(())
}
