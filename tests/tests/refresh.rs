//! Background refreshes (issue 23): a stale hit never waits, one refresh per key runs (in a process, and
//! across processes with cluster single-flight), a failed refresh keeps the stale value and is retried, and
//! `refresh_ahead` refreshes a hot key before it expires, so that it never misses.
//!
//! The services here are `Clone` (their state behind an `Arc`), so `#[pg_cached]` can call them again from a
//! task of their own; `audit.rs` covers a service that is not, whose refreshes still run in the caller.

use cache_runtime::{pg_cached, PgCache};
use integration_tests::{cache_on, within};
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// What the body does on each run: `x * 1000 + run` (runs counted from 1), held at a gate on the runs listed
/// in `held`, and failing on the runs listed in `failing`.
struct State {
    runs: AtomicU64,
    held: std::sync::Mutex<Vec<u64>>,
    failing: std::sync::Mutex<Vec<u64>>,
    entered: AtomicBool,
    gate: Semaphore,
}

impl Default for State {
    fn default() -> Self {
        State {
            runs: AtomicU64::new(0),
            held: Default::default(),
            failing: Default::default(),
            entered: AtomicBool::new(false),
            gate: Semaphore::new(0),
        }
    }
}

#[derive(Clone)]
struct Service {
    cache: PgCache,
    state: Arc<State>,
}

impl Service {
    fn new(cache: &PgCache) -> Service {
        Service { cache: cache.clone(), state: Arc::default() }
    }

    async fn body(&self, x: u64) -> Result<u64, String> {
        let run = self.state.runs.fetch_add(1, Ordering::SeqCst) + 1;
        if self.state.held.lock().expect("lock").contains(&run) {
            self.state.entered.store(true, Ordering::SeqCst);
            drop(self.state.gate.acquire().await);
        }
        if self.state.failing.lock().expect("lock").contains(&run) {
            return Err(format!("run {run} failed"));
        }
        Ok(x * 1000 + run)
    }

    fn hold(&self, run: u64) {
        self.state.held.lock().expect("lock").push(run);
    }

    fn runs(&self) -> u64 {
        self.state.runs.load(Ordering::SeqCst)
    }

    #[pg_cached(cache = self.cache, namespace = "refresh_stale", ttl = "1s", stale = "1h")]
    async fn stale(&self, x: u64, label: &str) -> Result<u64, String> {
        let _ = label;
        self.body(x).await
    }

    #[pg_cached(cache = self.cache, namespace = "refresh_cluster", ttl = "1s", stale = "1h", single_flight = "cluster")]
    async fn clustered(&self, x: u64) -> Result<u64, String> {
        self.body(x).await
    }

    #[pg_cached(cache = self.cache, namespace = "refresh_ahead", ttl = "4s", refresh_ahead = "75%")]
    async fn ahead(&self, x: u64) -> Result<u64, String> {
        self.body(x).await
    }
}

/// Waits until the held refresh has entered the body.
async fn entered(service: &Service) -> TestResult {
    let entered = within(Duration::from_secs(10), async || service.state.entered.load(Ordering::SeqCst)).await;
    entered.map(drop).ok_or_else(|| "the refresh never ran".into())
}

/// The caller that finds an entry stale gets it at once, while the refresh, blocked in its body, runs in the
/// background; 100 more callers meanwhile get it too, and the body runs once for all of them.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_stale_hit_never_waits_for_its_refresh(pool: PgPool) -> TestResult {
    let service = Service::new(&cache_on(pool).await);
    assert_eq!(service.stale(7, "q").await, Ok(7001));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    service.hold(2);
    // The refresh's body is held at its gate: a caller that waited for it would not return at all.
    let first = tokio::time::timeout(Duration::from_secs(10), service.stale(7, "q")).await;
    assert_eq!(first?, Ok(7001), "the triggering caller got the stale value");
    entered(&service).await?;
    let callers = (0..100).map(|_| {
        let service = service.clone();
        tokio::spawn(async move { service.stale(7, "q").await })
    });
    for caller in callers.collect::<Vec<_>>() {
        assert_eq!(caller.await?, Ok(7001));
    }
    assert_eq!(service.runs(), 2, "one refresh ran, for every caller");
    service.state.gate.add_permits(1);
    let refreshed = within(Duration::from_secs(10), async || service.stale(7, "q").await == Ok(7002)).await;
    assert!(refreshed.is_some(), "the refreshed value is stored and served");
    assert_eq!(service.runs(), 2);
    Ok(())
}

/// A refresh that fails leaves the stale value in place; the next caller that finds it stale starts another.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_failed_refresh_keeps_the_stale_value_and_is_retried(pool: PgPool) -> TestResult {
    let service = Service::new(&cache_on(pool).await);
    assert_eq!(service.stale(3, "q").await, Ok(3001));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    service.state.failing.lock().expect("lock").push(2);
    assert_eq!(service.stale(3, "q").await, Ok(3001), "stale, while run 2 fails in the background");
    within(Duration::from_secs(10), async || service.runs() == 2).await.ok_or("run 2 never ran")?;
    // Run 2 failed: the entry is still stale, and a later caller starts run 3, which succeeds.
    let retried = within(Duration::from_secs(10), async || {
        let value = service.stale(3, "q").await;
        assert!(matches!(value, Ok(3001) | Ok(3003)), "{value:?}");
        value == Ok(3003)
    })
    .await;
    assert!(retried.is_some(), "a later caller retried the refresh");
    Ok(())
}

/// With cluster single-flight, two processes that find one key stale at once refresh it once between them.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn two_processes_refresh_a_stale_key_once(pool: PgPool) -> TestResult {
    let state = Arc::<State>::default();
    let a = Service { cache: cache_on(pool.clone()).await, state: Arc::clone(&state) };
    let b = Service { cache: cache_on(pool).await, state };
    assert_eq!(a.clustered(5).await, Ok(5001));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    a.hold(2);
    assert_eq!(a.clustered(5).await, Ok(5001));
    entered(&a).await?;
    // B finds the key stale while A's refresh holds the lease: it serves the stale value and refreshes nothing.
    assert_eq!(b.clustered(5).await, Ok(5001));
    a.state.gate.add_permits(1);
    let refreshed = within(Duration::from_secs(10), async || b.clustered(5).await == Ok(5002)).await;
    assert!(refreshed.is_some(), "process B sees the value process A refreshed");
    assert_eq!(a.runs(), 2, "the body ran once for the refresh, in one process");
    Ok(())
}

/// `refresh_ahead`: a hit on an entry with little of its TTL left refreshes it in the background, so that the
/// key keeps hitting through its expiry.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn refresh_ahead_keeps_a_hot_key_from_missing(pool: PgPool) -> TestResult {
    integration_tests::init_tracing();
    let service = Service::new(&cache_on(pool).await);
    assert_eq!(service.ahead(9).await, Ok(9001));
    let misses = service.cache.process_stats().misses;
    // 75 % of a 4 s TTL is left after 1 s: the next hit is due.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(service.ahead(9).await, Ok(9001), "a hit, which starts the refresh");
    let refreshed = within(Duration::from_secs(10), async || service.ahead(9).await == Ok(9002)).await;
    assert!(refreshed.is_some(), "the refresh stored its value");
    assert_eq!(service.cache.process_stats().misses, misses, "no call missed");
    assert_eq!(service.runs(), 2);
    Ok(())
}
