//! Coalesced round trips (issue 11): every guarantee holds per key inside a batch, and the bulk API keeps
//! order and duplicates. Each test runs many tasks at once so that operations really share statements.

use cache_runtime::test_support::shared_statements;
use cache_runtime::{pg_cached, CacheError, PgCache, Ttl};
use integration_tests::cache_on;
use sqlx::PgPool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A cache over the test's database with a pool of `connections`, so that callers outnumber connections
/// and queue up; the operation timeout is long, so that nothing here depends on the machine's speed.
async fn small_pool_cache(pool: &PgPool, connections: u32, coalesce: bool) -> Result<PgCache, CacheError> {
    PgCache::builder()
        .connect_options((*pool.connect_options()).clone())
        .max_connections(connections)
        .op_timeout(Duration::from_secs(10))
        .sweep_interval(None)
        .coalesce(coalesce)
        .build()
        .await
}

/// The value task `i` writes under its own key in round `round`.
fn value_of(i: usize, round: usize) -> String {
    format!("value {i} of round {round}: {}", "x".repeat(i % 700))
}

async fn every_caller_gets_its_own_value(cache: PgCache, tasks: usize) -> TestResult {
    for round in 0..3 {
        let mut set = JoinSet::new();
        for i in 0..tasks {
            let cache = cache.clone();
            set.spawn(async move {
                let key = format!("own:{i}");
                cache.set(&key, &value_of(i, round), Some(Duration::from_secs(600))).await?;
                let read: Option<String> = cache.get(&key).await?;
                Ok::<_, CacheError>((i, read))
            });
        }
        while let Some(joined) = set.join_next().await {
            let (i, read) = joined??;
            assert_eq!(read.as_deref(), Some(value_of(i, round).as_str()), "task {i} read another caller's value");
        }
    }
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn five_hundred_callers_each_get_their_own_value(pool: PgPool) -> TestResult {
    let cache = small_pool_cache(&pool, 4, true).await?;
    every_caller_gets_its_own_value(cache.clone(), 500).await?;
    let [(reads, read_ops), (writes, write_ops), _] = shared_statements(&cache);
    // 500 callers on 4 connections: most of them must have shared statements.
    assert!(reads > 0 && read_ops > 500, "reads shared {reads} statements ({read_ops} operations)");
    assert!(writes > 0 && write_ops > 500, "writes shared {writes} statements ({write_ops} operations)");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn five_hundred_callers_without_coalescing_get_their_own_value(pool: PgPool) -> TestResult {
    let cache = small_pool_cache(&pool, 4, false).await?;
    every_caller_gets_its_own_value(cache.clone(), 500).await?;
    assert_eq!(shared_statements(&cache), [(0, 0); 3], "coalescing is off: one statement per operation");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_bad_key_fails_only_its_own_caller(pool: PgPool) -> TestResult {
    let cache = small_pool_cache(&pool, 2, true).await?;
    for i in 0..50 {
        cache.set(&format!("good:{i}"), &i, Some(Duration::from_secs(600))).await?;
    }
    let mut set = JoinSet::new();
    for i in 0..200usize {
        let cache = cache.clone();
        set.spawn(async move {
            let key = if i % 10 == 3 { format!("bad:\0{i}") } else { format!("good:{}", i % 50) };
            (i, cache.get::<usize>(&key).await)
        });
    }
    while let Some(joined) = set.join_next().await {
        match joined? {
            (i, Err(CacheError::InvalidKey { .. })) if i % 10 == 3 => {}
            (i, Ok(Some(value))) if i % 10 != 3 => assert_eq!(value, i % 50),
            (i, other) => panic!("caller {i} got {other:?}"),
        }
    }
    Ok(())
}

/// Many callers write the same few keys at once: one statement cannot touch a row twice, so writes of one key
/// go to different batches. Every caller must succeed, and each key must end with one of its writers' values.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn the_same_key_written_by_many_callers_at_once(pool: PgPool) -> TestResult {
    let cache = small_pool_cache(&pool, 2, true).await?;
    let mut set = JoinSet::new();
    for i in 0..300usize {
        let cache = cache.clone();
        set.spawn(async move { cache.set(&format!("shared:{}", i % 3), &i, Ttl::Never).await });
    }
    while let Some(joined) = set.join_next().await {
        joined??;
    }
    for k in 0..3 {
        let value: usize = cache.get(&format!("shared:{k}")).await?.expect("written");
        assert_eq!(value % 3, k, "key shared:{k} holds a value meant for another key");
    }
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_caller_whose_batch_cannot_start_times_out_and_the_cache_recovers(pool: PgPool) -> TestResult {
    let cache = PgCache::builder()
        .connect_options((*pool.connect_options()).clone())
        .max_connections(1)
        .op_timeout(Duration::from_millis(200))
        .sweep_interval(None)
        .build()
        .await?;
    cache.set("queued:warm", &1, Ttl::Never).await?;
    let held = cache.single_pool().expect("a cache on one server").acquire().await?;
    let mut set = JoinSet::new();
    for i in 0..20 {
        let cache = cache.clone();
        set.spawn(async move { cache.get::<i32>(&format!("queued:{i}")).await });
    }
    while let Some(joined) = set.join_next().await {
        assert!(matches!(joined?, Err(CacheError::Timeout { .. })), "a queued caller waits at most its timeout");
    }
    drop(held);
    // The callers that left are not sent; the queue serves the next ones.
    let mut answered = None;
    for _ in 0..50 {
        if let Ok(value) = cache.get::<i32>("queued:warm").await {
            answered = value;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered, Some(1));
    Ok(())
}

/// Issue 26, item 10: a coalesced read brings every key's value in its one statement, however large (a
/// response holds at most `coalesce_max_keys` values of at most `max_value_bytes`). Before, a row longer than
/// its share of a 4 MiB budget was converted, dropped and sent again alone: 80 operations for these 40 keys.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_coalesced_read_sends_each_key_once_whatever_its_size(pool: PgPool) -> TestResult {
    let cache = PgCache::builder()
        .connect_options((*pool.connect_options()).clone())
        .max_connections(2)
        .op_timeout(Duration::from_secs(10))
        .sweep_interval(None)
        .build()
        .await?;
    // 40 values of about 200 KB: 8 MB in one response.
    let keys: Vec<String> = (0..40).map(|i| format!("big:{i}")).collect();
    let entries: Vec<(String, String)> =
        keys.iter().enumerate().map(|(i, k)| (k.clone(), format!("{i}: {}", "x".repeat(200_000 + i)))).collect();
    cache.set_many(&entries, Ttl::Never).await?;
    let read: Vec<Option<String>> = cache.get_many(&keys).await?;
    let expected: Vec<Option<String>> = entries.into_iter().map(|(_, v)| Some(v)).collect();
    assert_eq!(read, expected);
    let [(statements, operations), _, _] = shared_statements(&cache);
    assert_eq!((statements, operations), (1, 40), "one statement, each key sent once");
    Ok(())
}

/// Memoized computations that wait at a gate, so that a test can act while they are in progress.
struct Gated {
    cache: PgCache,
    gate: Semaphore,
    started: AtomicUsize,
}

impl Gated {
    #[pg_cached(cache = self.cache, namespace = "gated", ttl = "10m")]
    async fn compute(&self, i: u64) -> u64 {
        self.started.fetch_add(1, Ordering::SeqCst);
        let _ = self.gate.acquire().await;
        i
    }
}

/// Memoized computations of many keys finish at once, so their guarded writes share statements; the keys
/// invalidated meanwhile must not be stored, their neighbours must.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn an_invalidation_during_a_batch_refuses_only_its_key(pool: PgPool) -> TestResult {
    let cache = small_pool_cache(&pool, 2, true).await?;
    let gated = Arc::new(Gated { cache: cache.clone(), gate: Semaphore::new(0), started: AtomicUsize::new(0) });
    let mut set = JoinSet::new();
    for i in 0..40u64 {
        let gated = Arc::clone(&gated);
        set.spawn(async move { gated.compute(i).await });
    }
    // Every computation has looked its key up and is waiting; invalidate every fourth key.
    integration_tests::within(Duration::from_secs(20), async || gated.started.load(Ordering::SeqCst) == 40)
        .await
        .expect("40 computations start");
    for i in (0..40u64).step_by(4) {
        gated.compute_invalidate(i).await?;
    }
    gated.gate.add_permits(40);
    let mut returned = Vec::new();
    while let Some(joined) = set.join_next().await {
        returned.push(joined?);
    }
    let [_, (writes, _), _] = shared_statements(&cache);
    assert!(writes > 0, "the 40 writes shared no statement: this test did not test a batch");
    returned.sort_unstable();
    assert_eq!(returned, (0..40).collect::<Vec<u64>>(), "every caller gets what its body computed");
    for i in 0..40u64 {
        let stored: Option<u64> = cache.get(&gated.compute_cache_key(i)?).await?;
        if i % 4 == 0 {
            assert_eq!(stored, None, "key {i} was computed before its invalidation and stored after it");
        } else {
            assert_eq!(stored, Some(i), "key {i} was not invalidated and must be stored");
        }
    }
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn get_many_keeps_order_and_duplicates(pool: PgPool) -> TestResult {
    let cache = cache_on(pool).await;
    cache.set("doc:a", &"A", Ttl::Never).await?;
    cache.set("doc:c", &"C", Ttl::Never).await?;
    cache.set("doc:expired", &"X", Some(Duration::from_millis(1))).await?;
    cache.set("doc:number", &7, Ttl::Never).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let keys = ["doc:c", "doc:a", "doc:b", "doc:a", "doc:expired", "doc:number", "doc:c"];
    let read: Vec<Option<String>> = cache.get_many(&keys).await?;
    let expected = [Some("C"), Some("A"), None, Some("A"), None, None, Some("C")];
    assert_eq!(read, expected.map(|v| v.map(String::from)).to_vec(), "a number does not decode as a string: a miss");
    let none: [&str; 0] = [];
    assert!(cache.get_many::<String>(&none).await?.is_empty());
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn set_many_keeps_the_last_value_of_a_key(pool: PgPool) -> TestResult {
    let cache = cache_on(pool).await;
    let entries = [("doc:1", 1), ("doc:2", 2), ("doc:1", 3), ("doc:3", 4), ("doc:1", 5)];
    cache.set_many(&entries, Some(Duration::from_secs(60))).await?;
    let read: Vec<Option<i32>> = cache.get_many(&["doc:1", "doc:2", "doc:3"]).await?;
    assert_eq!(read, vec![Some(5), Some(2), Some(4)]);
    let none: [(&str, i32); 0] = [];
    cache.set_many(&none, Ttl::Never).await?;
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_bad_entry_fails_the_bulk_call_before_any_io(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    let bad_key = [("doc:1", 1.0), ("doc:\u{0}", 2.0)];
    assert!(matches!(cache.set_many(&bad_key, Ttl::Never).await, Err(CacheError::InvalidKey { .. })));
    let bad_value = [("doc:1", 1.0), ("doc:2", f64::NAN)];
    assert!(matches!(cache.set_many(&bad_value, Ttl::Never).await, Err(CacheError::UnsupportedValue { .. })));
    let long = "k".repeat(501);
    assert!(matches!(cache.get_many::<f64>(&["doc:1", &long]).await, Err(CacheError::KeyTooLong { .. })));
    assert!(matches!(cache.delete_many(&["doc:1", ""]).await, Err(CacheError::InvalidKey { .. })));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_entries").fetch_one(&pool).await?;
    assert_eq!(rows, 0, "nothing was written by a refused bulk call");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn delete_many_counts_rows_and_invalidates(pool: PgPool) -> TestResult {
    let cache = cache_on(pool).await;
    cache.set_many(&[("doc:1", 1), ("doc:2", 2), ("doc:3", 3)], Ttl::Never).await?;
    assert_eq!(cache.delete_many(&["doc:1", "doc:3", "doc:1", "doc:missing"]).await?, 2);
    let read: Vec<Option<i32>> = cache.get_many(&["doc:1", "doc:2", "doc:3"]).await?;
    assert_eq!(read, vec![None, Some(2), None]);
    let none: [&str; 0] = [];
    assert_eq!(cache.delete_many(&none).await?, 0);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn bulk_calls_larger_than_a_batch_span_several_statements(pool: PgPool) -> TestResult {
    let cache = PgCache::builder().pool(pool).sweep_interval(None).coalesce_max_keys(7).build().await?;
    let entries: Vec<(String, usize)> = (0..100).map(|i| (format!("n:{i}"), i * i)).collect();
    cache.set_many(&entries, Ttl::Never).await?;
    let keys: Vec<String> = (0..110).rev().map(|i| format!("n:{i}")).collect();
    let read: Vec<Option<usize>> = cache.get_many(&keys).await?;
    let expected: Vec<Option<usize>> = (0..110).rev().map(|i| (i < 100).then_some(i * i)).collect();
    assert_eq!(read, expected);
    assert_eq!(cache.delete_many(&keys).await?, 100);
    Ok(())
}

/// 256 callers on the default pool of 10: with coalescing none of them needs a connection of its own.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn two_hundred_fifty_six_callers_on_the_default_pool(pool: PgPool) -> TestResult {
    let cache = PgCache::builder()
        .connect_options((*pool.connect_options()).clone())
        .op_timeout(Duration::from_secs(10))
        .sweep_interval(None)
        .build()
        .await?;
    let entries: Vec<(String, u32)> = (0..256).map(|i| (format!("hot:{i}"), i)).collect();
    cache.set_many(&entries, Ttl::Never).await?;
    let mut set = JoinSet::new();
    for i in 0..256u32 {
        let cache = cache.clone();
        set.spawn(async move {
            for round in 0..20 {
                let key = format!("hot:{}", (i + round) % 256);
                assert_eq!(cache.get::<u32>(&key).await?, Some((i + round) % 256));
            }
            Ok::<_, CacheError>(())
        });
    }
    while let Some(joined) = set.join_next().await {
        joined??;
    }
    Ok(())
}

/// Batches in flight at once may share keys (writes of one key never share a batch, but may sit in two).
/// Their locks are taken in one global order, so they wait for each other and never deadlock: PostgreSQL's
/// deadlock counter for the database must not move. (A deadlock would not reach callers: the failed batch
/// is re-run one write at a time. Hence the counter.)
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn overlapping_batches_do_not_deadlock(pool: PgPool) -> TestResult {
    let deadlocks = async |pool: &PgPool| -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(pool)
            .await
    };
    let before = deadlocks(&pool).await?;
    let cache = small_pool_cache(&pool, 8, true).await?;
    let mut set = JoinSet::new();
    for task in 0..8usize {
        let cache = cache.clone();
        set.spawn(async move {
            for round in 0..20usize {
                // The same 60 keys, in a different order per task and round.
                let mut entries: Vec<(String, usize)> = (0..60).map(|k| (format!("overlap:{k}"), task)).collect();
                entries.rotate_left((task * 7 + round * 13) % 60);
                if (task + round) % 2 == 1 {
                    entries.reverse();
                }
                cache.set_many(&entries, Ttl::Never).await?;
            }
            Ok::<_, CacheError>(())
        });
    }
    while let Some(joined) = set.join_next().await {
        joined??;
    }
    // A backend reports its statistics at the latest when it exits.
    cache.single_pool().expect("a cache on one server").close().await;
    drop(cache);
    let mut after = deadlocks(&pool).await?;
    for _ in 0..20 {
        if after != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = deadlocks(&pool).await?;
    }
    assert_eq!(after, before, "batches with shared keys deadlocked");
    Ok(())
}

/// Dispatchers under unbroken load keep their connection from batch to batch; when the pool has none to
/// spare they give it back between batches, so other operations still get a connection within their timeout.
/// (Here 256 readers keep both connections busy; with dispatchers that kept theirs for a whole second, some
/// of the writes waited that long and timed out. With the rule they wait a few milliseconds.)
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn busy_readers_leave_connections_for_other_operations(pool: PgPool) -> TestResult {
    let cache = PgCache::builder()
        .connect_options((*pool.connect_options()).clone())
        .max_connections(2)
        .op_timeout(Duration::from_millis(600))
        .sweep_interval(None)
        .build()
        .await?;
    cache.set("busy:hot", &7, Ttl::Never).await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut readers = JoinSet::new();
    for i in 0..256 {
        let (cache, stop, reads) = (cache.clone(), Arc::clone(&stop), Arc::clone(&reads));
        readers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let key = if i % 2 == 0 { "busy:hot" } else { "busy:cold" };
                if let Ok(value) = cache.get::<i32>(key).await {
                    assert_eq!(value, (key == "busy:hot").then_some(7));
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // Every connection is busy with reads before the writes start.
    integration_tests::within(Duration::from_secs(20), async || reads.load(Ordering::Relaxed) >= 1_000)
        .await
        .expect("the readers get going");
    for i in 0..50 {
        cache.set(&format!("busy:w{i}"), &i, Ttl::Never).await?;
        assert_eq!(cache.get::<i32>(&format!("busy:w{i}")).await?, Some(i));
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = readers.join_next().await {
        joined?;
    }
    Ok(())
}
