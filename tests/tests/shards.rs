//! One cache over three PostgreSQL servers (issue 13): routing, fan-out merges, and a shard that goes down
//! and comes back. Each test starts three private clusters (see `tests/src/pg_cluster.rs`) and stops them
//! when it ends; where no server binaries exist they print SKIPPED and pass, unless
//! `PG_CACHED_REQUIRE_CLUSTER=1`.

use cache_runtime::{pg_cached, CacheError, HealthStatus, PgCache, Ttl};
use integration_tests::pg_cluster::PgCluster;
use integration_tests::within;
use sqlx::Connection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("a blocking task panicked")
}

/// Three running clusters, or `None` where this machine cannot run them.
async fn three_clusters() -> Option<Vec<Arc<PgCluster>>> {
    let mut clusters = Vec::new();
    for _ in 0..3 {
        clusters.push(Arc::new(blocking(|| PgCluster::start_or_skip(&[])).await?));
    }
    Some(clusters)
}

async fn sharded_cache(clusters: &[Arc<PgCluster>], op_timeout: Duration) -> Result<PgCache, CacheError> {
    let cache = PgCache::builder()
        .shards(clusters.iter().map(|c| c.url()))
        .op_timeout(op_timeout)
        .sweep_interval(None)
        .build_lazy()?;
    cache.migrate().await?;
    Ok(cache)
}

/// The keys stored on one server, read directly.
async fn keys_on(cluster: &PgCluster) -> Result<Vec<String>, sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect(&cluster.url()).await?;
    let keys =
        sqlx::query_scalar("SELECT cache_key FROM cache_entries ORDER BY cache_key").fetch_all(&mut conn).await?;
    conn.close().await?;
    Ok(keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_live_on_their_shard_and_fan_out_operations_merge() -> TestResult {
    let Some(clusters) = three_clusters().await else { return Ok(()) };
    let cache = sharded_cache(&clusters, Duration::from_secs(5)).await?;
    let keys: Vec<String> = (0..300).map(|i| format!("docs:{i:03}")).collect();
    for (i, key) in keys.iter().enumerate() {
        cache.set(key, &i, Ttl::Never).await?;
    }
    cache.set_many(&[("other:a", 1), ("other:b", 2)], Ttl::Never).await?;

    // Each key is on the shard shard_for names, and only there; every shard holds some.
    for (index, cluster) in clusters.iter().enumerate() {
        let stored = keys_on(cluster).await?;
        assert!(stored.len() > 50, "shard {index} holds only {} of 302 keys", stored.len());
        for key in &stored {
            assert_eq!(cache.shard_for(key), index, "{key} is stored on shard {index}");
        }
    }

    // Reads of any kind find every key, in order.
    let read: Vec<Option<usize>> = cache.get_many(&keys).await?;
    assert_eq!(read, (0..300).map(Some).collect::<Vec<_>>());
    assert_eq!(cache.get::<usize>("docs:123").await?, Some(123));

    // keys() merges the shards' sorted lists; stats sum them; health reports each shard.
    assert_eq!(cache.keys(Some("docs:"), 5).await?, &keys[..5]);
    let stats = cache.stats().await?;
    assert_eq!(stats.total_entries, 302);
    let health = cache.health_check().await;
    assert_eq!(health.status, HealthStatus::Healthy);
    assert_eq!(health.shards.len(), 3);
    assert_eq!(health.total_entries, Some(302));

    // A namespace purge and a bulk delete reach every shard.
    assert_eq!(cache.delete_namespace("docs").await?, 300);
    assert_eq!(cache.delete_many(&["other:a", "other:b", "other:c"]).await?, 2);
    for cluster in &clusters {
        assert!(keys_on(cluster).await?.is_empty());
    }
    Ok(())
}

/// A memoized function whose body counts its runs per argument.
struct Squares {
    cache: PgCache,
    runs: Vec<AtomicU64>,
}

impl Squares {
    #[pg_cached(cache = self.cache, namespace = "squares", ttl = "1h")]
    async fn square(&self, x: u64) -> u64 {
        self.runs[x as usize].fetch_add(1, Ordering::SeqCst);
        x * x
    }
}

const ARGS: u64 = 60;

/// Calls every argument from 8 tasks at once, checking every answer; returns how many calls there were.
async fn call_all(squares: &Arc<Squares>, rounds: u64) -> u64 {
    let mut set = JoinSet::new();
    for task in 0..8u64 {
        let squares = Arc::clone(squares);
        set.spawn(async move {
            for round in 0..rounds {
                for x in 0..ARGS {
                    let x = (x + task * 7 + round) % ARGS;
                    assert_eq!(squares.square(x).await, x * x, "a wrong value for {x}");
                }
            }
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.expect("a caller panicked");
    }
    8 * rounds * ARGS
}

fn runs(squares: &Squares, x: u64) -> u64 {
    squares.runs[x as usize].load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_is_down_costs_only_its_own_keys() -> TestResult {
    let Some(clusters) = three_clusters().await else { return Ok(()) };
    let cache = sharded_cache(&clusters, Duration::from_millis(300)).await?;
    let squares = Arc::new(Squares { cache: cache.clone(), runs: (0..ARGS).map(|_| AtomicU64::new(0)).collect() });
    call_all(&squares, 1).await;
    let shard_of = |x: u64| cache.shard_for(&squares.square_cache_key(x).expect("a key"));
    let (down, up): (Vec<u64>, Vec<u64>) = (0..ARGS).partition(|&x| shard_of(x) == 1);
    assert!(!down.is_empty() && !up.is_empty(), "the arguments must span the shards");
    let before: Vec<u64> = (0..ARGS).map(|x| runs(&squares, x)).collect();

    let stopped = Arc::clone(&clusters[1]);
    blocking(move || stopped.stop()).await?;
    // Each call of a key on the stopped shard waits for its lookup and its write to time out.
    call_all(&squares, 1).await;
    for &x in &up {
        assert_eq!(runs(&squares, x), before[x as usize], "key {x} on a live shard was recomputed");
    }
    for &x in &down {
        assert!(runs(&squares, x) > before[x as usize], "key {x} on the stopped shard cannot have hit");
    }
    assert_eq!(cache.health_check().await.status, HealthStatus::Degraded);

    let restarted = Arc::clone(&clusters[1]);
    blocking(move || restarted.start()).await?;
    // Its entries survived the restart; they hit again without anyone reconnecting by hand.
    let resumed = within(Duration::from_secs(20), async || {
        let before: Vec<u64> = down.iter().map(|&x| runs(&squares, x)).collect();
        call_all(&squares, 1).await;
        down.iter().zip(before).all(|(&x, runs_before)| runs(&squares, x) == runs_before)
    })
    .await;
    assert!(resumed.is_some(), "hits on the restarted shard did not resume within 20 s");
    assert_eq!(cache.health_check().await.status, HealthStatus::Healthy);
    Ok(())
}

#[test]
fn shards_must_be_distinct_and_not_empty() {
    let twice = PgCache::builder().shards(["postgres://h:5432/db", "postgres://u:p@h:5432/db"]).build_lazy();
    assert!(matches!(twice, Err(CacheError::Config(message)) if message.contains("listed twice")));
    let none = PgCache::builder().shards(Vec::<String>::new()).build_lazy();
    assert!(matches!(none, Err(CacheError::Config(_))));
    let bad = PgCache::builder().shards(["postgres://h/db", "not a url"]).build_lazy();
    assert!(matches!(bad, Err(CacheError::Config(_))));
}
