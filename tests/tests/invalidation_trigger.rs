//! `invalidate_on_change` never breaks the application's own writes (issue 22, finding 4): a large UPDATE,
//! transactions changing rows of matching values in opposite order, and the application's transactions
//! under REPEATABLE READ. Each test gets a fresh database.

use cache_runtime::{CacheError, PgCache};
use integration_tests::{cache_on, listening, within, GENEROUS_OP_TIMEOUT};
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

async fn connect(pool: &PgPool) -> Result<PgConnection, sqlx::Error> {
    PgConnection::connect_with(&pool.connect_options()).await
}

/// `(key, tags)` entries written with `set_tagged`.
async fn tagged(cache: &PgCache, entries: &[(&str, &[&str])]) -> Result<(), CacheError> {
    for (key, tags) in entries {
        cache.set_tagged(key, &"v", None, tags).await?;
    }
    Ok(())
}

async fn present(cache: &PgCache, key: &str) -> Result<bool, CacheError> {
    Ok(cache.get::<String>(key).await?.is_some())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_twenty_thousand_row_update_succeeds_and_invalidates(pool: PgPool) -> TestResult {
    sqlx::raw_sql(
        "CREATE TABLE items (id int PRIMARY KEY, note text); \
         INSERT INTO items SELECT i, 'old' FROM generate_series(1, 20000) AS i;",
    )
    .execute(&pool)
    .await?;
    let cache = cache_on(pool.clone()).await;
    cache.invalidate_on_change("items", "id", "item:").await?;
    tagged(&cache, &[("e:first", &["item:1"]), ("e:last", &["item:20000"]), ("e:other", &["other:1"])]).await?;

    // Default max_locks_per_transaction: before, one lock per row's tag ran out of shared memory.
    sqlx::query("UPDATE items SET note = 'new'").execute(&pool).await?;
    assert!(!present(&cache, "e:first").await? && !present(&cache, "e:last").await?, "matching entries are gone");
    assert!(present(&cache, "e:other").await?, "an unrelated entry stays");
    let notes: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_pending_invalidations").fetch_one(&pool).await?;
    assert_eq!(notes, 0, "the COMMIT took its notes along");
    Ok(())
}

/// One round: T1 changes row 1 (value a) then row 3 (value b), T2 row 2 (value b) then row 4 (value a),
/// their first statements done before either runs its second. Both must commit.
async fn opposite_order_round(pool: &PgPool, barrier: Arc<Barrier>, first: i32, second: i32) -> TestResult {
    let mut conn = connect(pool).await?;
    sqlx::raw_sql("BEGIN").execute(&mut conn).await?;
    sqlx::query("UPDATE docs SET body = body || '.' WHERE id = $1").bind(first).execute(&mut conn).await?;
    barrier.wait().await;
    sqlx::query("UPDATE docs SET body = body || '.' WHERE id = $1").bind(second).execute(&mut conn).await?;
    sqlx::raw_sql("COMMIT").execute(&mut conn).await?;
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn opposite_order_updates_of_matching_values_never_deadlock(pool: PgPool) -> TestResult {
    sqlx::raw_sql(
        "CREATE TABLE docs (id int PRIMARY KEY, val text NOT NULL, body text NOT NULL); \
         INSERT INTO docs VALUES (1, 'a', ''), (2, 'b', ''), (3, 'b', ''), (4, 'a', '');",
    )
    .execute(&pool)
    .await?;
    let cache = cache_on(pool.clone()).await;
    cache.invalidate_on_change("docs", "val", "val:").await?;
    for round in 0..20 {
        tagged(&cache, &[("e:a", &["val:a"]), ("e:b", &["val:b"])]).await?;
        let barrier = Arc::new(Barrier::new(2));
        // Both in this task, each on its own connection: they run concurrently on the server.
        let (r1, r2) = tokio::join!(
            opposite_order_round(&pool, Arc::clone(&barrier), 1, 3),
            opposite_order_round(&pool, barrier, 2, 4)
        );
        assert!(r1.is_ok() && r2.is_ok(), "round {round}: {r1:?} / {r2:?}");
        assert!(!present(&cache, "e:a").await? && !present(&cache, "e:b").await?, "round {round}: invalidated");
    }
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_rolled_back_change_invalidates_nothing(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    one_doc_under_trigger(&pool, &cache).await?;
    tagged(&cache, &[("e:1", &["doc:1"])]).await?;
    let mut conn = connect(&pool).await?;
    sqlx::raw_sql("BEGIN; UPDATE docs SET body = 'y' WHERE id = 1; ROLLBACK;").execute(&mut conn).await?;
    assert!(present(&cache, "e:1").await?, "nothing changed, nothing invalidated");
    sqlx::raw_sql(
        "BEGIN; SAVEPOINT s; UPDATE docs SET body = 'y' WHERE id = 1; ROLLBACK TO s; \
         UPDATE docs SET body = body WHERE id = 2; COMMIT;",
    )
    .execute(&mut conn)
    .await?;
    assert!(present(&cache, "e:1").await?, "a change rolled back to its savepoint invalidates nothing");
    sqlx::raw_sql("UPDATE docs SET body = 'z' WHERE id = 1").execute(&mut conn).await?;
    assert!(!present(&cache, "e:1").await?);
    Ok(())
}

/// Opens `app`'s transaction at `level` and takes its snapshot (a first query).
async fn begin_with_snapshot(app: &mut PgConnection, level: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(&format!("BEGIN ISOLATION LEVEL {level}; SELECT count(*) FROM docs;")).execute(app).await.map(drop)
}

async fn queued(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM cache_deferred_invalidations").fetch_one(pool).await
}

async fn rows(pool: &PgPool, key: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM cache_entries WHERE cache_key = $1").bind(key).fetch_one(pool).await
}

/// Table `docs` with row 1, whose changes invalidate tag `doc:<id>`.
async fn one_doc_under_trigger(pool: &PgPool, cache: &PgCache) -> TestResult {
    sqlx::raw_sql("CREATE TABLE docs (id int PRIMARY KEY, body text); INSERT INTO docs VALUES (1, 'x');")
        .execute(pool)
        .await?;
    cache.invalidate_on_change("docs", "id", "doc:").await?;
    Ok(())
}

/// The application's transaction under REPEATABLE READ or SERIALIZABLE: its snapshot predates writes that
/// commit before its own COMMIT, which must neither fail the application's COMMIT nor survive the
/// invalidation. Before the queue (migration 0012), the rewritten entry failed the COMMIT with 40001 and the
/// new one survived.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_snapshot_transactions_change_invalidates_writes_its_snapshot_missed(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    one_doc_under_trigger(&pool, &cache).await?;
    for level in ["REPEATABLE READ", "SERIALIZABLE"] {
        tagged(&cache, &[("e:updated", &["doc:1"]), ("e:other", &["doc:2"])]).await?;
        let mut app = connect(&pool).await?;
        begin_with_snapshot(&mut app, level).await?;
        // Committed after the application's snapshot, before its change: one entry rewritten, one new.
        tagged(&cache, &[("e:updated", &["doc:1"]), ("e:new", &["doc:1"])]).await?;
        sqlx::raw_sql("UPDATE docs SET body = body || '.' WHERE id = 1").execute(&mut app).await?;
        sqlx::raw_sql("COMMIT").execute(&mut app).await.map_err(|e| format!("{level}: the COMMIT failed: {e}"))?;

        // At once, before anything drains the queue: both are gone for every reader.
        assert_eq!(queued(&pool).await?, 1, "{level}: the invalidation is queued");
        assert!(!present(&cache, "e:updated").await?, "{level}: an entry rewritten after the snapshot survived");
        assert!(!present(&cache, "e:new").await?, "{level}: an entry written after the snapshot survived");
        let many = cache.get_many::<String>(&["e:updated", "e:new", "e:other"]).await?;
        assert_eq!(many, vec![None, None, Some("v".to_owned())], "{level}: coalesced reads hide them too");
        assert!(present(&cache, "e:other").await?, "{level}: an entry of another tag stays");

        // The drain deletes them, and empties the queue; an entry written afterwards stays.
        let report = cache.sweep().await?;
        assert_eq!(report.invalidations_drained, 1, "{level}");
        assert_eq!(queued(&pool).await?, 0, "{level}");
        assert_eq!(rows(&pool, "e:updated").await? + rows(&pool, "e:new").await?, 0, "{level}: deleted");
        assert_eq!(rows(&pool, "e:other").await?, 1, "{level}");
        tagged(&cache, &[("e:after", &["doc:1"])]).await?;
        assert!(present(&cache, "e:after").await?, "{level}: an entry written after the drain is served");
        cache.delete("e:after").await?;
    }
    Ok(())
}

/// A memoized write whose computation began before such a COMMIT is refused while the invalidation is queued,
/// as it is refused after an invalidation under READ COMMITTED; a rolled-back snapshot transaction queues
/// nothing.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_queued_invalidation_refuses_older_computations(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    one_doc_under_trigger(&pool, &cache).await?;
    let mut app = connect(&pool).await?;
    begin_with_snapshot(&mut app, "REPEATABLE READ").await?;
    sqlx::raw_sql("UPDATE docs SET body = 'y' WHERE id = 1").execute(&mut app).await?;
    sqlx::raw_sql("ROLLBACK").execute(&mut app).await?;
    assert_eq!(queued(&pool).await?, 0, "a rolled-back transaction queues nothing");

    // The guard SQL functions apply to memoized writes: started before the COMMIT, written after it.
    let (started_us, snapshot): (i64, String) =
        sqlx::query_as("SELECT (extract(epoch FROM now()) * 1000000)::bigint, pg_current_snapshot()::text")
            .fetch_one(&pool)
            .await?;
    begin_with_snapshot(&mut app, "REPEATABLE READ").await?;
    sqlx::raw_sql("UPDATE docs SET body = 'z' WHERE id = 1").execute(&mut app).await?;
    sqlx::raw_sql("COMMIT").execute(&mut app).await?;
    let write = "SELECT pg_cached_write_entry(p_key => 'm:1', p_data => '\"v\"', p_ttl_ms => 60000, p_keep_ms => 0, \
                 p_started_us => $1, p_namespace => 'm', p_notify => '0000000000000000|k|', p_lock_timeout => '1000', \
                 p_async_commit => false, p_tags => ARRAY['doc:1'], p_compute_us => 1, p_started_snapshot => $2)";
    let written: bool = sqlx::query_scalar(write).bind(started_us).bind(&snapshot).fetch_one(&pool).await?;
    assert!(!written, "a computation that began before the change is refused while its invalidation is queued");
    assert_eq!(cache.sweep().await?.invalidations_drained, 1);
    let written: bool = sqlx::query_scalar(write).bind(started_us).bind(&snapshot).fetch_one(&pool).await?;
    assert!(!written, "and after the drain, by the drain's own mark");
    Ok(())
}

/// A process that listens for events (here: one with an in-process tier) drains the queue by itself, so
/// the keys come back without waiting for a sweep.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_listening_process_drains_the_queue_by_itself(pool: PgPool) -> TestResult {
    let cache = PgCache::builder()
        .pool(pool.clone())
        .op_timeout(GENEROUS_OP_TIMEOUT)
        .sweep_interval(None)
        .local_tier(100, Duration::from_secs(60))
        .build()
        .await?;
    one_doc_under_trigger(&pool, &cache).await?;
    tagged(&cache, &[("e:1", &["doc:1"])]).await?;
    assert!(present(&cache, "e:1").await?); // the first read starts the listener
    listening(&cache).await;
    let mut app = connect(&pool).await?;
    begin_with_snapshot(&mut app, "REPEATABLE READ").await?;
    sqlx::raw_sql("UPDATE docs SET body = 'y' WHERE id = 1").execute(&mut app).await?;
    sqlx::raw_sql("COMMIT").execute(&mut app).await?;
    let drained = within(Duration::from_secs(30), async || {
        matches!((queued(&pool).await, rows(&pool, "e:1").await), (Ok(0), Ok(0)))
    })
    .await;
    assert!(drained.is_some(), "the listener did not drain the queue");
    assert!(!present(&cache, "e:1").await?);
    Ok(())
}
