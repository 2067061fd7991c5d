//! The in-process tier and its cross-process coherence, stale-while-revalidate, and stale-set protection.

use cache_runtime::__private::{SingleFlight, Site};
use cache_runtime::{test_support, PgCache};
use integration_tests::memo::{self, second_pool};
use integration_tests::{listening, within};
use sqlx::PgPool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A cache with a tier for every key, once its event listener is connected: until then the tier serves
/// nothing (it could miss invalidations).
async fn tiered(pool: PgPool, max_age: Duration) -> PgCache {
    let cache =
        PgCache::builder().pool(pool).local_tier(1000, max_age).sweep_interval(None).build().await.expect("no I/O");
    listening(&cache).await;
    cache
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn invalidations_reach_other_processes_tiers(pool: PgPool) -> TestResult {
    let a = tiered(pool.clone(), Duration::from_secs(60)).await;
    let b = tiered(second_pool(&pool).await, Duration::from_secs(60)).await;
    listening(&a).await;
    listening(&b).await;

    b.set("doc:1", &"v1", None).await?;
    assert_eq!(a.get::<String>("doc:1").await?.as_deref(), Some("v1"));
    // B's notification of its own write can reach A after A's first read and drop the key from A's tier
    // again (the safe side): read until A's tier answers.
    let from_tier = within(Duration::from_secs(2), async || {
        a.get::<String>("doc:1").await.ok().flatten().as_deref() == Some("v1") && a.process_stats().local_hits > 0
    })
    .await;
    assert!(from_tier.is_some(), "A's tier serves the key");

    // A write in B replaces the value A serves, within 200 ms.
    b.set("doc:1", &"v2", None).await?;
    let took = within(Duration::from_millis(200), async || {
        a.get::<String>("doc:1").await.ok().flatten().as_deref() == Some("v2")
    })
    .await;
    assert!(took.is_some(), "A still served v1 200 ms after B wrote v2");

    // A delete in B.
    assert_eq!(a.get::<String>("doc:1").await?.as_deref(), Some("v2"));
    b.delete("doc:1").await?;
    let took =
        within(Duration::from_millis(200), async || a.get::<String>("doc:1").await.ok().flatten().is_none()).await;
    assert!(took.is_some(), "A still served a deleted key after 200 ms");

    // A namespace purge in B.
    b.set("ns1:x", &1, None).await?;
    b.set("ns2:y", &2, None).await?;
    assert_eq!(a.get::<i32>("ns1:x").await?, Some(1));
    assert_eq!(a.get::<i32>("ns2:y").await?, Some(2));
    b.delete_namespace("ns1").await?;
    let took = within(Duration::from_millis(200), async || a.get::<i32>("ns1:x").await.ok().flatten().is_none()).await;
    assert!(took.is_some(), "A still served a purged namespace after 200 ms");
    assert_eq!(a.get::<i32>("ns2:y").await?, Some(2), "other namespaces stay");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_lost_listener_clears_the_tier(pool: PgPool) -> TestResult {
    let a = tiered(pool.clone(), Duration::from_secs(60)).await;
    listening(&a).await;
    for i in 0..20 {
        a.set(&format!("k:{i}"), &i, None).await?;
    }
    assert_eq!(test_support::local_len(&a), 20);
    let killed: i64 =
        sqlx::query_scalar("SELECT count(pg_terminate_backend(backend_pid)) FROM cache_listeners WHERE held")
            .fetch_one(&pool)
            .await?;
    assert_eq!(killed, 1, "one listener backend");
    let reconnected = within(Duration::from_secs(10), async || test_support::listener_connects(&a) >= 2).await;
    assert!(reconnected.is_some(), "the listener reconnects by itself");
    assert_eq!(test_support::local_len(&a), 0, "notifications may have been lost: the tier starts over");
    // And it works again: reads refill it from PostgreSQL.
    assert_eq!(a.get::<i32>("k:3").await?, Some(3));
    assert_eq!(test_support::local_len(&a), 1);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn the_tier_never_serves_expired_entries(pool: PgPool) -> TestResult {
    let a = tiered(pool.clone(), Duration::from_secs(60)).await;
    a.set("short:1", &1, Duration::from_millis(300)).await?;
    assert_eq!(a.get::<i32>("short:1").await?, Some(1));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(a.get::<i32>("short:1").await?, None, "PostgreSQL's expiry bounds the tier");

    // And the tier's own max age bounds entries that live longer in PostgreSQL.
    let short_lived = tiered(pool, Duration::from_millis(200)).await;
    short_lived.set("long:1", &1, None).await?;
    let before = short_lived.process_stats().local_hits;
    assert_eq!(short_lived.get::<i32>("long:1").await?, Some(1));
    assert_eq!(short_lived.process_stats().local_hits, before + 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(short_lived.get::<i32>("long:1").await?, Some(1));
    assert_eq!(short_lived.process_stats().local_hits, before + 1, "past max age: read from PostgreSQL");
    Ok(())
}

static LOCAL_SITE: Site = Site::new("local_fn", "tiers::local_fn", 1).local(Duration::from_secs(30));

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn per_function_tier_serves_clones_without_postgres(pool: PgPool) -> TestResult {
    // No tier in the builder: `local = "30s"` on the function creates one.
    let cache = memo_cache(pool.clone()).await;
    let runs = AtomicUsize::new(0);
    let body = || async {
        runs.fetch_add(1, Ordering::SeqCst);
        vec!["a".to_string(), "b".to_string()]
    };
    // The first call creates the tier, which serves nothing until the event listener is connected.
    let _: Vec<String> = memo::call_local(&cache, &LOCAL_SITE, 8, body()).await;
    listening(&cache).await;
    let before = cache.process_stats();
    for _ in 0..5 {
        let value: Vec<String> = memo::call_local(&cache, &LOCAL_SITE, 7, body()).await;
        assert_eq!(value, ["a", "b"]);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let stats = cache.process_stats();
    let delta = (stats.local_hits - before.local_hits, stats.hits - before.hits, stats.misses - before.misses);
    assert_eq!(delta, (4, 0, 1), "{stats:?}");
    // Stats report the tiers apart (the first call included).
    let ns = cache.stats().await?;
    assert_eq!(ns.namespace("local_fn").map(|n| (n.process.local_hits, n.process.local_misses)), Some((4, 2)));
    Ok(())
}

async fn memo_cache(pool: PgPool) -> PgCache {
    PgCache::builder().pool(pool).sweep_interval(None).build().await.expect("no I/O")
}

static STALE_SITE: Site = Site::new("stale_fn", "tiers::stale_fn", 1)
    .ttl(cache_runtime::Ttl::After(Duration::from_secs(1)))
    .stale(Duration::from_secs(30));

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn stale_values_are_served_at_once_while_one_refresh_runs(pool: PgPool) -> TestResult {
    let cache = memo_cache(pool.clone()).await;
    let first: String = memo::call(&cache, &STALE_SITE, 1, async { "v1".to_string() }).await;
    assert_eq!(first, "v1");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The refresher's body blocks until the test lets it go: every other caller must be answered before.
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let refresher = {
        let (cache, started, release, runs) = (cache.clone(), started.clone(), release.clone(), runs.clone());
        tokio::spawn(async move {
            memo::call(&cache, &STALE_SITE, 1, async move {
                runs.fetch_add(1, Ordering::SeqCst);
                started.notify_one();
                release.notified().await;
                "v2".to_string()
            })
            .await
        })
    };
    started.notified().await;
    for _ in 0..10 {
        let served: String = memo::call(&cache, &STALE_SITE, 1, async {
            runs.fetch_add(1, Ordering::SeqCst);
            "not this".to_string()
        })
        .await;
        assert_eq!(served, "v1", "the stale value, at once, while the refresh is blocked");
    }
    release.notify_one();
    assert_eq!(refresher.await?, "v2", "the refreshing caller gets the new value");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one refresh");
    assert_eq!(cache.process_stats().stale_served, 10);
    let fresh: String = memo::call(&cache, &STALE_SITE, 1, async { "not this".to_string() }).await;
    assert_eq!(fresh, "v2");
    Ok(())
}

static FLAKY_SITE: Site = Site::new("flaky_fn", "tiers::flaky_fn", 1)
    .ttl(cache_runtime::Ttl::After(Duration::from_secs(1)))
    .stale(Duration::from_secs(2))
    .single_flight(SingleFlight::Off);

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_failed_refresh_keeps_serving_stale_until_the_window_closes(pool: PgPool) -> TestResult {
    let cache = memo_cache(pool).await;
    let ok: Result<String, String> = memo::call_result(&cache, &FLAKY_SITE, 1, async { Ok("v1".to_string()) }).await;
    assert_eq!(ok.as_deref(), Ok("v1"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let failing = || async { Err::<String, String>("backend down".into()) };
    assert_eq!(memo::call_result(&cache, &FLAKY_SITE, 1, failing()).await.as_deref(), Ok("v1"), "stale, not the error");
    assert_eq!(memo::call_result(&cache, &FLAKY_SITE, 1, failing()).await.as_deref(), Ok("v1"));
    // Past ttl + window the stale value is gone: the error comes through.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(memo::call_result(&cache, &FLAKY_SITE, 1, failing()).await, Err("backend down".into()));
    Ok(())
}

static SLOW_SITE: Site = Site::new("slow_fn", "tiers::slow_fn", 1);

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_value_computed_before_an_invalidation_is_not_stored(pool: PgPool) -> TestResult {
    for invalidate_namespace in [false, true] {
        let cache = memo_cache(pool.clone()).await;
        let key = memo::key(&SLOW_SITE, 9)?;
        let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let slow = {
            let (cache, started, release) = (cache.clone(), started.clone(), release.clone());
            tokio::spawn(async move {
                memo::call(&cache, &SLOW_SITE, 9, async move {
                    started.notify_one();
                    release.notified().await;
                    "computed from old data".to_string()
                })
                .await
            })
        };
        started.notified().await;
        if invalidate_namespace {
            cache.delete_namespace("slow_fn").await?;
        } else {
            cache.delete(&key).await?;
        }
        release.notify_one();
        assert_eq!(slow.await?, "computed from old data", "the caller still gets its value");
        assert_eq!(cache.get::<String>(&key).await?, None, "but it is not served after the invalidation");
        let next: String = memo::call(&cache, &SLOW_SITE, 9, async { "fresh".to_string() }).await;
        assert_eq!(next, "fresh");
        assert_eq!(cache.get::<String>(&key).await?.as_deref(), Some("fresh"), "later computations are stored");
        cache.delete(&key).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
