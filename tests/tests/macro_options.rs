//! The options that `#[pg_cached]` passes to the runtime as they are: `local`, `stale` and `single_flight`.
//! Each test checks that the option reaches the runtime, not the runtime's feature in depth.

use cache_runtime::{pg_cached, PgCache};
use integration_tests::cache_on;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Svc {
    cache: PgCache,
    runs: AtomicUsize,
    fail: AtomicBool,
}

impl Svc {
    async fn new(pool: PgPool) -> Arc<Svc> {
        Arc::new(Svc { cache: cache_on(pool).await, runs: AtomicUsize::new(0), fail: AtomicBool::new(false) })
    }

    fn run(&self) -> usize {
        self.runs.fetch_add(1, Ordering::SeqCst) + 1
    }

    #[pg_cached(cache = self.cache, local = "1m")]
    async fn local(&self, x: u32) -> Vec<u32> {
        self.run();
        vec![x]
    }

    #[pg_cached(cache = self.cache, ttl = "1s", stale = "1h")]
    async fn stale(&self, x: u32) -> Result<String, String> {
        let run = self.run();
        if self.fail.load(Ordering::SeqCst) {
            Err(format!("run {run} failed"))
        } else {
            Ok(format!("run {run} for {x}"))
        }
    }

    #[pg_cached(cache = self.cache, single_flight = "cluster")]
    async fn cluster(&self, x: u32) -> u32 {
        self.run();
        tokio::time::sleep(Duration::from_millis(200)).await;
        x + 1
    }

    #[pg_cached(cache = self.cache, single_flight = "off")]
    async fn uncoalesced(&self, x: u32) -> u32 {
        self.run();
        tokio::time::sleep(Duration::from_millis(200)).await;
        x + 1
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn local_serves_hits_from_memory(pool: PgPool) -> TestResult {
    let svc = Svc::new(pool.clone()).await;
    assert_eq!(svc.local(1).await, [1]);
    // The first call created the function's tier, which keeps nothing until its event listener is connected
    // (it could miss invalidations); the next call, a PostgreSQL hit, fills it.
    integration_tests::listening(&svc.cache).await;
    assert_eq!(svc.local(1).await, [1]);
    // Change the stored row behind the cache's back: the in-process tier still answers.
    sqlx::query("UPDATE cache_entries SET data = '[999]'").execute(&pool).await?;
    assert_eq!(svc.local(1).await, [1]);
    assert_eq!(svc.runs.load(Ordering::SeqCst), 1);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn stale_serves_the_expired_value_when_the_refresh_fails(pool: PgPool) -> TestResult {
    let svc = Svc::new(pool).await;
    assert_eq!(svc.stale(1).await, Ok("run 1 for 1".to_owned()));
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    svc.fail.store(true, Ordering::SeqCst);
    // Expired but within the stale window: the refresh runs, fails, and the stale value is served.
    assert_eq!(svc.stale(1).await, Ok("run 1 for 1".to_owned()));
    assert_eq!(svc.runs.load(Ordering::SeqCst), 2);
    svc.fail.store(false, Ordering::SeqCst);
    assert_eq!(svc.stale(1).await, Ok("run 3 for 1".to_owned()), "a successful refresh replaces it");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn single_flight_modes(pool: PgPool) -> TestResult {
    let svc = Svc::new(pool).await;
    let mut callers = JoinSet::new();
    for _ in 0..50 {
        let svc = Arc::clone(&svc);
        callers.spawn(async move { svc.cluster(1).await });
    }
    let results = tokio::time::timeout(Duration::from_secs(20), callers.join_all()).await?;
    assert!(results.iter().all(|&r| r == 2));
    assert_eq!(svc.runs.load(Ordering::SeqCst), 1, "cluster: one run");

    let mut callers = JoinSet::new();
    for _ in 0..5 {
        let svc = Arc::clone(&svc);
        callers.spawn(async move { svc.uncoalesced(1).await });
    }
    let results = tokio::time::timeout(Duration::from_secs(20), callers.join_all()).await?;
    assert!(results.iter().all(|&r| r == 2));
    assert_eq!(svc.runs.load(Ordering::SeqCst), 6, "off: every concurrent miss runs the body");
    Ok(())
}
