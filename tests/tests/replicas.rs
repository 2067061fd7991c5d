//! Read replicas (issue 13): gets go to a streaming standby while it is provably less than `max_lag` behind,
//! and to the primary otherwise. The test builds a real pair (a private cluster and a `pg_basebackup` standby
//! streaming from it) and checks every answer through each phase: standby in use, standby paused (its
//! replay stopped, so it falls behind), standby resumed, standby stopped.
//!
//! The bound it checks does not depend on the machine's speed: a value written before `max_lag` elapsed is
//! never answered with an older one. A slower machine only makes the standby usable less often.

use cache_runtime::{CacheError, HealthReport, PgCache, Ttl};
use integration_tests::pg_cluster::PgCluster;
use integration_tests::{listening, within, Squares};
use sqlx::Connection;
use std::sync::Arc;
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const MAX_LAG: Duration = Duration::from_secs(2);
const KEYS: u64 = 50;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("a blocking task panicked")
}

/// Index scans of the cache table counted by `cluster` itself: a standby counts the reads it answered.
async fn index_scans_on(cluster: &PgCluster) -> Result<i64, sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect(&cluster.url()).await?;
    // Statistics are flushed by each backend at the end of its transaction, at most once a second.
    let scans = sqlx::query_scalar(
        "SELECT coalesce(idx_scan, 0) + coalesce(seq_scan, 0) FROM pg_stat_user_tables WHERE relname = 'cache_entries'",
    )
    .fetch_optional(&mut conn)
    .await?;
    conn.close().await?;
    Ok(scans.unwrap_or(0))
}

async fn on_standby(standby: &PgCluster, statement: &str) -> Result<(), sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect(&standby.url()).await?;
    sqlx::query(statement).execute(&mut conn).await?;
    conn.close().await
}

fn replica_usable(report: &HealthReport) -> bool {
    report.replicas.first().is_some_and(|r| r.usable)
}

async fn wait_until_usable(cache: &PgCache, usable: bool) -> TestResult {
    within(Duration::from_secs(30), async || replica_usable(&cache.health_check().await) == usable)
        .await
        .ok_or(format!("the standby did not become usable = {usable} within 30 s"))?;
    Ok(())
}

/// Every one of `reads` gets of `key` answers `expected`.
async fn all_reads_are(cache: &PgCache, key: &str, expected: u64, reads: usize) -> TestResult {
    for read in 0..reads {
        let got: Option<u64> = cache.get(key).await?;
        assert_eq!(got, Some(expected), "read {read} of {key}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_use_a_standby_only_within_the_lag_bound() -> TestResult {
    let Some(primary) = blocking(|| PgCluster::start_or_skip(&[])).await else { return Ok(()) };
    let primary = Arc::new(primary);
    let p = Arc::clone(&primary);
    let standby = Arc::new(blocking(move || PgCluster::start_standby_of(&p)).await?);
    let build = |tier: bool| {
        let builder = PgCache::builder()
            .database_url(primary.url())
            .read_replicas([standby.url()], MAX_LAG)
            .op_timeout(Duration::from_secs(2))
            .sweep_interval(None);
        if tier {
            builder.local_tier(1_000, Duration::from_secs(600))
        } else {
            builder
        }
    };
    let cache = build(false).build().await?;
    cache.migrate().await?;
    let squares = Squares::new(&cache);
    for x in 0..KEYS {
        cache.set(&format!("replica:v{x}"), &x, Ttl::Default).await?;
        assert_eq!(squares.square(x).await, x * x);
    }

    // 1. The standby answers reads once it has caught up: every value is right, and it did the reading. A read
    //    may miss a value written less than MAX_LAG before it, so the reads wait that long after the writes.
    tokio::time::sleep(MAX_LAG).await;
    wait_until_usable(&cache, true).await?;
    let scans_before = index_scans_on(&standby).await?;
    for x in 0..KEYS {
        assert_eq!(cache.get::<u64>(&format!("replica:v{x}")).await?, Some(x));
        assert_eq!(squares.square(x).await, x * x);
    }
    assert_eq!(squares.runs(), KEYS, "memoized calls hit, whichever server answered");
    let report = cache.health_check().await;
    assert!(report.replicas[0].reads >= KEYS, "{report:?}");
    within(Duration::from_secs(10), async || index_scans_on(&standby).await.unwrap_or(0) > scans_before)
        .await
        .ok_or("the standby's own statistics show no read of the cache table")?;

    // 2. Replay paused: the standby falls behind the next write. Once MAX_LAG has passed since that write
    //    returned, no read may answer the older value, and the standby is reported unusable.
    let tiered = build(true).build().await?;
    listening(&tiered).await;
    wait_until_usable(&tiered, true).await?;
    assert_eq!(tiered.get::<u64>("replica:v7").await?, Some(7), "the tier is filled before the pause");
    on_standby(&standby, "SELECT pg_wal_replay_pause()").await?;
    cache.set("replica:v7", &700u64, Ttl::Default).await?;
    // Meanwhile the tiered cache keeps reading: the standby may still answer the old value (it is within the
    // bound for a while), but its tier must not keep that answer once it has heard of the write.
    let written = tokio::time::Instant::now();
    while written.elapsed() < MAX_LAG {
        let got: Option<u64> = tiered.get("replica:v7").await?;
        assert!(matches!(got, Some(7 | 700)), "{got:?}");
    }
    all_reads_are(&cache, "replica:v7", 700, 200).await?;
    // The tiered cache heard of the write and must not keep a value the paused standby still has.
    within(Duration::from_secs(10), async || tiered.get::<u64>("replica:v7").await.ok().flatten() == Some(700))
        .await
        .ok_or("the tiered cache never answered the new value")?;
    all_reads_are(&tiered, "replica:v7", 700, 200).await?;
    assert!(!replica_usable(&cache.health_check().await), "a standby that stopped replaying is not used");

    // 3. Replay resumed: the standby catches up and is used again, by itself.
    on_standby(&standby, "SELECT pg_wal_replay_resume()").await?;
    wait_until_usable(&cache, true).await?;
    all_reads_are(&cache, "replica:v7", 700, 50).await?;

    // 4. Standby stopped: reads go to the primary; no caller sees an error or a wrong value.
    let s = Arc::clone(&standby);
    blocking(move || s.stop()).await?;
    for x in 0..KEYS {
        let expected = if x == 7 { 700 } else { x };
        assert_eq!(cache.get::<u64>(&format!("replica:v{x}")).await?, Some(expected));
        assert_eq!(squares.square(x).await, x * x);
    }
    assert_eq!(squares.runs(), KEYS);
    wait_until_usable(&cache, false).await?;
    Ok(())
}

#[tokio::test]
async fn replicas_and_shards_do_not_mix() {
    let built = PgCache::builder()
        .shards(["postgres://postgres@127.0.0.1:1/a", "postgres://postgres@127.0.0.1:2/b"])
        .read_replicas(["postgres://postgres@127.0.0.1:3/a"], MAX_LAG)
        .build_lazy();
    assert!(matches!(built, Err(CacheError::Config(_))), "{built:?}");
}
