//! A `#[pg_cached]` function whose cache cannot be reached still returns its body's value, every time.

use cache_runtime::{pg_cached, PgCache};
use sqlx::postgres::PgPoolOptions;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Svc {
    cache: PgCache,
    runs: AtomicUsize,
}

impl Svc {
    #[pg_cached(cache = self.cache, ttl = "1h")]
    async fn square(&self, x: u64) -> u64 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        x * x
    }

    #[pg_cached(cache = self.cache)]
    async fn fallible(&self, x: i64) -> Result<i64, String> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if x < 0 {
            Err("negative".into())
        } else {
            Ok(x)
        }
    }

    #[pg_cached(cache = self.cache, cache_none = true)]
    async fn maybe(&self, x: u32) -> Option<u32> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        (x > 0).then_some(x)
    }
}

async fn unreachable() -> Result<Svc, Box<dyn std::error::Error>> {
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://postgres@127.0.0.1:1/nope")?;
    let cache = PgCache::builder().pool(pool).sweep_interval(None).build().await?;
    Ok(Svc { cache, runs: AtomicUsize::new(0) })
}

#[tokio::test]
async fn an_unreachable_database_runs_the_body_every_time() -> TestResult {
    let svc = unreachable().await?;
    let started = Instant::now();
    for i in 1..=3 {
        assert_eq!(svc.square(7).await, 49);
        assert_eq!(svc.runs.load(Ordering::SeqCst), i);
    }
    assert_eq!(svc.fallible(3).await, Ok(3));
    assert_eq!(svc.fallible(-3).await, Err("negative".to_owned()));
    assert_eq!(svc.maybe(0).await, None);
    assert_eq!(svc.maybe(2).await, Some(2));
    assert_eq!(svc.runs.load(Ordering::SeqCst), 7);
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    Ok(())
}

#[tokio::test]
async fn companions_of_an_unreachable_cache() -> TestResult {
    let svc = unreachable().await?;
    // The key needs no database.
    assert!(svc.square_cache_key(7)?.starts_with("square:"));
    // Invalidation reports the failure; it does not pretend.
    assert!(svc.square_invalidate(7).await.is_err());
    // Refresh returns the body's value.
    assert_eq!(svc.square_refresh(7).await, 49);
    assert_eq!(svc.runs.load(Ordering::SeqCst), 1);
    Ok(())
}
