//! Concurrent calls of a `#[pg_cached]` function on one key, against a real PostgreSQL.

use cache_runtime::{pg_cached, PgCache};
use integration_tests::cache_on;
use sqlx::PgPool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Slow {
    cache: PgCache,
    runs: AtomicUsize,
    delay: Duration,
}

impl Slow {
    #[pg_cached(cache = self.cache, ttl = "10m")]
    async fn compute(&self, x: u64) -> u64 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        x + 1
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_thousand_callers_on_a_cold_key_run_the_body_once(pool: PgPool) -> TestResult {
    let slow =
        Arc::new(Slow { cache: cache_on(pool).await, runs: AtomicUsize::new(0), delay: Duration::from_millis(300) });
    let mut callers = JoinSet::new();
    for _ in 0..1_000 {
        let slow = Arc::clone(&slow);
        callers.spawn(async move { slow.compute(41).await });
    }
    let results = tokio::time::timeout(Duration::from_secs(20), callers.join_all()).await?;
    assert_eq!(results.len(), 1_000);
    assert!(results.iter().all(|&r| r == 42));
    assert_eq!(slow.runs.load(Ordering::SeqCst), 1);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_cancelled_leader_does_not_strand_its_followers(pool: PgPool) -> TestResult {
    let slow =
        Arc::new(Slow { cache: cache_on(pool).await, runs: AtomicUsize::new(0), delay: Duration::from_millis(400) });
    let leader = {
        let slow = Arc::clone(&slow);
        tokio::spawn(async move { tokio::time::timeout(Duration::from_millis(100), slow.compute(1)).await })
    };
    // Wait until the leader's body runs, so that the followers queue behind it.
    while slow.runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut followers = JoinSet::new();
    for _ in 0..50 {
        let slow = Arc::clone(&slow);
        followers.spawn(async move { slow.compute(1).await });
    }
    assert!(leader.await?.is_err(), "the leader was cancelled by its timeout");
    let results = tokio::time::timeout(Duration::from_secs(10), followers.join_all()).await?;
    assert!(results.iter().all(|&r| r == 2), "{results:?}");
    assert_eq!(slow.runs.load(Ordering::SeqCst), 2, "the leader's run, then one follower's");
    // The follower that took over stored the value.
    assert_eq!(slow.compute(1).await, 2);
    assert_eq!(slow.runs.load(Ordering::SeqCst), 2);
    Ok(())
}
