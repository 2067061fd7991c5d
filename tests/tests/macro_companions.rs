//! The companions of `#[pg_cached]` (`_cache_key`, `_invalidate`, `_refresh`) against a real PostgreSQL.

use cache_runtime::{pg_cached, PgCache};
use integration_tests::cache_on;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Stamps {
    cache: PgCache,
    runs: AtomicU64,
    fail: AtomicBool,
}

impl Stamps {
    async fn new(pool: PgPool) -> Stamps {
        Stamps { cache: cache_on(pool).await, runs: AtomicU64::new(0), fail: AtomicBool::new(false) }
    }
}

impl Stamps {
    /// Returns the number of the run that produced the value.
    #[pg_cached(cache = self.cache, namespace = "stamp", skip(trace_id))]
    async fn stamp(&self, id: u32, trace_id: u64) -> u64 {
        let _ = (id, trace_id);
        self.runs.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// A destructured argument: `_refresh` must compute the same key as the call itself.
    #[pg_cached(cache = self.cache)]
    async fn pair(&self, (a, b): (u32, u32), _: &str) -> u64 {
        u64::from(a + b) * 100 + self.runs.fetch_add(1, Ordering::SeqCst) + 1
    }

    #[pg_cached(cache = self.cache)]
    async fn fallible(&self, id: u32) -> Result<u64, String> {
        let _ = id;
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail.load(Ordering::SeqCst) {
            Err(format!("run {run} failed"))
        } else {
            Ok(run)
        }
    }
}

async fn stored(pool: &PgPool) -> Vec<(String, serde_json::Value)> {
    sqlx::query_as("SELECT cache_key, data FROM cache_entries ORDER BY cache_key")
        .fetch_all(pool)
        .await
        .expect("read the table")
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn cache_key_is_the_stored_key(pool: PgPool) -> TestResult {
    let s = Stamps::new(pool.clone()).await;
    assert_eq!(s.stamp(7, 1).await, 1);
    let key = s.stamp_cache_key(7)?;
    assert!(key.starts_with("stamp:"), "{key}");
    assert_eq!(key.len(), "stamp:".len() + 64);
    assert_eq!(stored(&pool).await, [(key.clone(), serde_json::json!(1))]);
    assert_ne!(key, s.stamp_cache_key(8)?);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn invalidate_removes_the_entry(pool: PgPool) -> TestResult {
    let s = Stamps::new(pool.clone()).await;
    assert_eq!(s.stamp(7, 1).await, 1);
    assert_eq!(s.stamp(8, 1).await, 2);
    assert_eq!(s.stamp(7, 2).await, 1);
    assert!(s.stamp_invalidate(7).await?, "there was an entry");
    assert!(!s.stamp_invalidate(7).await?, "it is gone");
    assert_eq!(stored(&pool).await.len(), 1, "the other entry stays");
    assert_eq!(s.stamp(7, 3).await, 3, "the next call recomputes");
    assert_eq!(s.stamp(7, 4).await, 3);
    assert_eq!(s.stamp(8, 4).await, 2);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn refresh_runs_the_body_and_overwrites(pool: PgPool) -> TestResult {
    let s = Stamps::new(pool.clone()).await;
    assert_eq!(s.stamp(7, 1).await, 1);
    assert_eq!(s.stamp_refresh(7, 2).await, 2, "refresh runs the body even though there is an entry");
    assert_eq!(s.stamp(7, 3).await, 2, "and its value replaced the entry");
    let key = s.stamp_cache_key(7)?;
    assert_eq!(stored(&pool).await, [(key, serde_json::json!(2))]);

    // Refreshing a cold key stores it too.
    assert_eq!(s.stamp_refresh(9, 0).await, 3);
    assert_eq!(s.stamp(9, 0).await, 3);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn refresh_of_a_destructured_argument_uses_the_same_key(pool: PgPool) -> TestResult {
    let s = Stamps::new(pool.clone()).await;
    assert_eq!(s.pair((1, 2), "x").await, 301);
    assert_eq!(s.pair((1, 2), "ignored: `_` binds nothing").await, 301);
    assert_eq!(s.pair_refresh((1, 2), "y").await, 302);
    assert_eq!(s.pair((1, 2), "z").await, 302);
    assert_eq!(s.pair((2, 1), "z").await, 303, "(2, 1) is another key");
    assert_eq!(stored(&pool).await.len(), 2);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn refresh_does_not_store_what_the_function_would_not(pool: PgPool) -> TestResult {
    let s = Stamps::new(pool.clone()).await;
    assert_eq!(s.fallible(1).await, Ok(1));
    s.fail.store(true, Ordering::SeqCst);
    assert_eq!(s.fallible_refresh(1).await, Err("run 2 failed".to_owned()), "refresh returns the Err");
    s.fail.store(false, Ordering::SeqCst);
    assert_eq!(s.fallible(1).await, Ok(1), "an Err is not stored: the Ok entry is still there");
    assert_eq!(stored(&pool).await.len(), 1);
    Ok(())
}
