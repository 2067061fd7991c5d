//! Connections left warm from one caller's statement to the next (`server/warm.rs`): a few callers reuse
//! them instead of paying sqlx's check of every connection given back to the pool, a failed statement's
//! connection is never reused, a pool of one keeps nothing back, and whatever is kept goes back to the pool
//! within its bound once the callers stop.

use cache_runtime::test_support::warm_connections;
use cache_runtime::{PgCache, Ttl};
use sqlx::PgPool;
use std::time::Duration;
use tokio::task::JoinSet;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

async fn cache_with(pool: &PgPool, connections: u32) -> Result<PgCache, cache_runtime::CacheError> {
    PgCache::builder()
        .connect_options((*pool.connect_options()).clone())
        .max_connections(connections)
        .op_timeout(Duration::from_secs(10))
        .sweep_interval(None)
        .build()
        .await
}

/// How long the last warm connection may take to go back (it is kept at most a second): ten times that.
const BACK_WITHIN: Duration = Duration::from_secs(10);

/// Waits for every warm connection of `cache` to go back to its pool, within [`BACK_WITHIN`].
async fn all_go_back(cache: &PgCache) {
    let empty = integration_tests::within(BACK_WITHIN, async || warm_connections(cache)[2] == 0).await;
    assert!(empty.is_some(), "warm connections still held: {:?}", warm_connections(cache));
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_lone_callers_connection_serves_the_next_caller(pool: PgPool) -> TestResult {
    let cache = cache_with(&pool, 10).await?;
    for i in 0..20 {
        cache.set(&format!("warm:{i}"), &i, Ttl::Never).await?;
        assert_eq!(cache.get::<i32>(&format!("warm:{i}")).await?, Some(i));
        assert!(cache.delete(&format!("warm:{i}")).await?);
        assert_eq!(cache.get::<i32>(&format!("warm:{i}")).await?, None);
    }
    let [taken, kept, _] = warm_connections(&cache);
    // Each operation of one caller follows the last within far less than the second a connection stays warm.
    assert!(taken > 0, "no operation ran on a warm connection (kept {kept})");
    assert!(kept >= taken, "{taken} taken warm, only {kept} kept");
    all_go_back(&cache).await;
    Ok(())
}

/// Sixteen callers at once, each checking its own values, over and over: warm connections go from one caller
/// to the next (and across reads, writes and deletes, which share them) without mixing up answers.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn callers_sharing_warm_connections_each_get_their_own_answers(pool: PgPool) -> TestResult {
    let cache = cache_with(&pool, 10).await?;
    let mut tasks = JoinSet::new();
    for task in 0..16 {
        let cache = cache.clone();
        tasks.spawn(async move {
            for round in 0..40 {
                let key = format!("warm:{task}:{}", round % 5);
                let value = format!("{task}/{round}");
                cache.set(&key, &value, Ttl::Never).await?;
                assert_eq!(cache.get::<String>(&key).await?, Some(value));
                if round % 7 == 0 {
                    assert!(cache.delete(&key).await?);
                    assert_eq!(cache.get::<String>(&key).await?, None);
                }
            }
            Ok::<_, cache_runtime::CacheError>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    assert!(warm_connections(&cache)[0] > 0, "nothing ran warm: {:?}", warm_connections(&cache));
    all_go_back(&cache).await;
    Ok(())
}

/// A pool of one connection keeps none back: the other operations (a lease, a sweep) would wait for it.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_pool_of_one_keeps_nothing_warm(pool: PgPool) -> TestResult {
    let cache = cache_with(&pool, 1).await?;
    for i in 0..10 {
        cache.set(&format!("one:{i}"), &i, Ttl::Never).await?;
        assert_eq!(cache.get::<i32>(&format!("one:{i}")).await?, Some(i));
    }
    assert_eq!(warm_connections(&cache), [0, 0, 0]);
    assert_eq!(cache.stats().await?.total_entries, 10, "the pool's one connection serves other statements");
    Ok(())
}

/// A statement that fails leaves its connection to the pool, not to the next caller: a read whose session is
/// terminated under it is answered by the retry on a fresh connection, and the dead one is never taken warm
/// again (the next callers' operations all succeed).
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_connection_killed_while_warm_costs_no_operation(pool: PgPool) -> TestResult {
    let cache = cache_with(&pool, 10).await?;
    cache.set("killed:k", &1, Ttl::Never).await?;
    assert_eq!(cache.get::<i32>("killed:k").await?, Some(1));
    // Terminate every session of the cache's pool (the warm one among them), as a restart would.
    let database: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&pool).await?;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() \
         AND backend_type = 'client backend'",
    )
    .bind(&database)
    .execute(&pool)
    .await?;
    for i in 0..20 {
        assert_eq!(cache.get::<i32>("killed:k").await?, Some(1), "read {i} after the sessions were killed");
        cache.set("killed:k", &1, Ttl::Never).await?;
    }
    Ok(())
}

/// A cache dropped outside any runtime context, with a connection warm, gives it back without a panic: while
/// its runtime still runs (after `block_on` returned, as a command-line tool does), and after the runtime
/// itself was dropped. (sqlx gives a connection back to its pool in a task it spawns, which needs a runtime.)
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_cache_dropped_outside_its_runtime_gives_back_its_warm_connections(pool: PgPool) -> TestResult {
    for runtime_first in [false, true] {
        let options = (*pool.connect_options()).clone();
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let cache = runtime
                .block_on(async {
                    let cache = PgCache::builder()
                        .connect_options(options)
                        .max_connections(4)
                        .sweep_interval(None)
                        .build()
                        .await?;
                    cache.set("dropped:k", &1, Ttl::Never).await?;
                    assert_eq!(cache.get::<i32>("dropped:k").await?, Some(1));
                    Ok::<_, cache_runtime::CacheError>(cache)
                })
                .map_err(|e| e.to_string())?;
            if warm_connections(&cache)[2] == 0 {
                return Err("no connection was warm when the cache was dropped".into());
            }
            if runtime_first {
                drop(runtime);
                drop(cache);
            } else {
                drop(cache);
                drop(runtime);
            }
            Ok(())
        })
        .join();
        match dropped {
            Ok(outcome) => outcome?,
            Err(_) => {
                panic!("dropping the cache outside its runtime panicked (runtime dropped first: {runtime_first})")
            }
        }
    }
    Ok(())
}
