//! A memoized call's future must stay small whatever its body: deep chains of memoized functions (an
//! orchestrator calling a memoized retriever calling ...) would otherwise multiply their bodies' sizes and
//! overflow a thread's stack.

use cache_runtime::__private::{here, memoize, AsIs, CacheRef, SingleFlight, Site};
use cache_runtime::PgCache;
use integration_tests::memo;
use std::time::Duration;

static SITE: Site = Site::new("size", "future_size::f", 1);
static CLUSTER_SITE: Site =
    Site::new("size", "future_size::g", 1).single_flight(SingleFlight::Cluster).stale(Duration::from_secs(1));

async fn big_body() -> u64 {
    let buffer = [7u8; 8192];
    tokio::task::yield_now().await;
    u64::from(buffer[100])
}

#[tokio::test]
async fn a_memoized_future_does_not_hold_its_body_inline() {
    let cache = PgCache::builder()
        .database_url("postgres://postgres@127.0.0.1:1/unused")
        .sweep_interval(None)
        .build_lazy()
        .expect("a well-formed URL");
    assert!(std::mem::size_of_val(&big_body()) > 8192);
    for site in [&SITE, &CLUSTER_SITE] {
        let call = memoize(site, CacheRef::Explicit(Some(cache.clone())), memo::key(site, 1), AsIs, here(big_body()));
        let size = std::mem::size_of_val(&call);
        assert!(size <= 64, "a memoized future of {size} bytes");
        // And it still works: the database is unreachable, so the body runs.
        assert_eq!(call.await, 7);
    }
}
