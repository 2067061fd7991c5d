//! The cache's pooled connections when something happens to them: the server restarts, the tokio runtime
//! that opened them shuts down, or writes wait behind a row lock.
//!
//! The rule each test checks: a pooled connection that went bad costs no caller an error (the operation is
//! retried once on a fresh connection), and a write that cannot finish gives its connection back instead of
//! starving every later operation.
//!
//! The restart test controls its own server: a private cluster started by `integration_tests::pg_cluster`
//! (skipped, with a message, where this machine cannot run one). The runtime test uses plain `#[test]`s with
//! runtimes of its own, on a database it creates on `DATABASE_URL`'s server. The lock test uses the shared
//! test server (a fresh database, `#[sqlx::test]`).

use cache_runtime::{pg_cached, CacheError, PgCache};
use integration_tests::pg_cluster::PgCluster;
use integration_tests::Squares;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Opens every connection of `pool` (holding `size` at once), gives them back, and waits until all are idle.
async fn open_every_connection(pool: &PgPool, size: u32) -> TestResult {
    let mut held = Vec::new();
    for _ in 0..size {
        held.push(pool.acquire().await?);
    }
    drop(held);
    // sqlx counts idle connections apart from its queue of them (a connection given back is queued before it is
    // counted), so a take racing a give-back (its reaper, a warm connection going back) can show the count
    // briefly off by one, or wrapped below zero (CI once read usize::MAX). Read until one reading shows every
    // connection idle, and assert on that reading, not on a fresh one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = (pool.size(), pool.num_idle());
    while seen != (size, size as usize) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        seen = (pool.size(), pool.num_idle());
    }
    assert_eq!(seen, (size, size as usize), "every connection open and idle");
    Ok(())
}

/// Sets then reads back `n` keys `{prefix}:{i}`, one operation at a time; returns what went wrong.
async fn set_and_get(cache: &PgCache, prefix: &str, n: u64) -> Vec<String> {
    let mut failures = Vec::new();
    for i in 0..n {
        let key = format!("{prefix}:{i}");
        if let Err(error) = cache.set(&key, &i, None).await {
            failures.push(format!("set {key}: {error}"));
        }
        match cache.get::<u64>(&key).await {
            Ok(Some(v)) if v == i => {}
            other => failures.push(format!("get {key}: {other:?}")),
        }
    }
    failures
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

// ---------------------------------------------------------------------------------------------------------
// 1. A server restart under a full, idle pool
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_costs_no_operation_an_error() -> TestResult {
    let Some(cluster) = blocking(|| PgCluster::start_or_skip(&[])).await else { return Ok(()) };
    let cluster = Arc::new(cluster);
    // Generous: the retry connects afresh to a server that has just come up; the test is about errors.
    let cache = PgCache::builder()
        .database_url(cluster.url())
        .max_connections(10)
        .op_timeout(Duration::from_secs(2))
        .sweep_interval(None)
        .build()
        .await?;
    cache.migrate().await?;
    let squares = Squares::new(&cache);
    assert_eq!(squares.square(7).await, 49);
    assert!(set_and_get(&cache, "before", 5).await.is_empty());
    open_every_connection(cache.single_pool().expect("a cache on one server"), 10).await?;

    let c = Arc::clone(&cluster);
    let restarted = Instant::now();
    blocking(move || c.restart()).await?; // `pg_ctl stop -m fast`, then start; returns once it accepts connections
    println!("restart took {:?}", restarted.elapsed());

    let errors_before = cache.process_stats().errors;
    let started = Instant::now();
    let failures = set_and_get(&cache, "after", 25).await;
    println!(
        "50 operations after the restart took {:?}; {} failed: {failures:?}; pool size {}",
        started.elapsed(),
        failures.len(),
        cache.single_pool().expect("a cache on one server").size()
    );
    assert!(
        failures.is_empty(),
        "{} of 50 operations after the restart failed (a dead pooled connection must be retried once on a fresh \
         one): {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let hits_before = cache.process_stats().hits;
    assert_eq!(squares.square(7).await, 49);
    assert_eq!(squares.runs(), 1, "the memoized call was served from the cache after the restart");
    assert_eq!(cache.process_stats().hits, hits_before + 1);
    assert_eq!(cache.process_stats().errors, errors_before, "no cache operation failed after the restart");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// 2. A process-wide cache used from a later tokio runtime
// ---------------------------------------------------------------------------------------------------------

static CUBE_RUNS: AtomicU64 = AtomicU64::new(0);

/// Memoized in the process-wide cache (`set_global`).
#[pg_cached(namespace = "conn_global", ttl = "10m")]
async fn cube(x: u64) -> u64 {
    CUBE_RUNS.fetch_add(1, Ordering::SeqCst);
    x * x * x
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
}

/// A migrated database of this test's own on `DATABASE_URL`'s server, dropped at the end.
#[derive(Debug)]
struct ScratchDatabase {
    /// `DATABASE_URL`.
    server_url: String,
    server: PgConnectOptions,
    name: String,
}

impl ScratchDatabase {
    fn create() -> Result<ScratchDatabase, Box<dyn std::error::Error + Send + Sync>> {
        let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL must be set for the integration tests")?;
        let server = PgConnectOptions::from_str(&url)?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let name = format!("pg_cached_runtimes_{}_{nanos}", std::process::id());
        let scratch = ScratchDatabase { server_url: url, server, name };
        runtime()?.block_on(async {
            let mut admin = sqlx::PgConnection::connect_with(&scratch.server).await?;
            sqlx::raw_sql(&format!("CREATE DATABASE \"{}\"", scratch.name)).execute(&mut admin).await?;
            admin.close().await?;
            let pool = PgPoolOptions::new().max_connections(1).connect_with(scratch.options()).await?;
            integration_tests::cache_on(pool.clone()).await.migrate().await?;
            pool.close().await;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })?;
        Ok(scratch)
    }

    fn options(&self) -> PgConnectOptions {
        self.server.clone().database(&self.name)
    }

    /// `DATABASE_URL` with this database in place of its own.
    fn url(&self) -> String {
        let (scheme, rest) = self.server_url.split_once("://").unwrap_or(("postgres", &self.server_url));
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let query = rest[authority_end..].find('?').map_or("", |q| &rest[authority_end + q..]);
        format!("{scheme}://{}/{}{query}", &rest[..authority_end], self.name)
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let Ok(rt) = runtime() else { return };
        let dropped = rt.block_on(async {
            let mut admin = sqlx::PgConnection::connect_with(&self.server).await?;
            sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name))
                .execute(&mut admin)
                .await?;
            admin.close().await
        });
        if let Err(error) = dropped {
            eprintln!("warning: could not drop the scratch database {}: {error}", self.name);
        }
    }
}

#[test]
fn a_process_wide_cache_keeps_working_on_a_later_runtime() -> TestResult {
    let database = ScratchDatabase::create()?;
    let first = runtime()?;
    let cache = first.block_on(async {
        let cache = PgCache::builder()
            .database_url(database.url())
            .max_connections(4)
            .op_timeout(Duration::from_secs(2))
            .sweep_interval(None)
            .build()
            .await?;
        cache_runtime::set_global(cache.clone());
        let failures = set_and_get(&cache, "rt", 20).await;
        assert!(failures.is_empty(), "on the first runtime: {failures:?}");
        assert_eq!(cube(3).await, 27);
        assert_eq!(cube(3).await, 27);
        open_every_connection(cache.single_pool().expect("a cache on one server"), 4).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(cache)
    })?;
    assert_eq!(CUBE_RUNS.load(Ordering::SeqCst), 1);
    // Every pooled connection was opened on the first runtime, which now shuts down.
    drop(first);

    let second = runtime()?;
    second.block_on(async {
        let errors_before = cache.process_stats().errors;
        let mut failures = Vec::new();
        for i in 0..20u64 {
            let key = format!("rt:{i}");
            match cache.get::<u64>(&key).await {
                Ok(Some(v)) if v == i => {}
                other => failures.push(format!("get {key}: {other:?}")),
            }
        }
        failures.extend(set_and_get(&cache, "rt2", 10).await);
        println!("on the later runtime: {} of 40 operations failed: {failures:?}", failures.len());
        assert!(
            failures.is_empty(),
            "{} of 40 operations on the later runtime failed (connections pooled by a runtime that shut down must \
             be replaced, not used): {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        let hits_before = cache.process_stats().hits;
        assert_eq!(cube(3).await, 27);
        assert_eq!(CUBE_RUNS.load(Ordering::SeqCst), 1, "the process-wide cache served the memoized call");
        assert_eq!(cache.process_stats().hits, hits_before + 1);
        assert_eq!(cache.process_stats().errors, errors_before, "no cache operation failed on the later runtime");
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })?;
    // The cache's connections belong to the second runtime: close them while it runs.
    second.block_on(cache.single_pool().expect("a cache on one server").close());
    Ok(())
}

/// A runtime that shuts down while coalesced batches are in flight leaves no dispatcher slot behind: a later
/// runtime's gets still run (audit finding 5: before, four such leaks stopped the queue for good, and every
/// later get timed out).
#[test]
fn a_runtime_that_shuts_down_mid_batch_leaks_no_dispatcher_slot() -> TestResult {
    let database = ScratchDatabase::create()?;
    let build = || {
        PgCache::builder()
            .database_url(database.url())
            .max_connections(6)
            .coalesce_in_flight(4)
            .op_timeout(Duration::from_secs(2))
            .sweep_interval(None)
            .build_lazy()
    };
    // The pool needs a runtime to be made in; this one outlives the test's others.
    let setup = runtime()?;
    let cache = setup.block_on(async { build() })?;
    for round in 0..3 {
        let first = runtime()?;
        let locker = first.block_on(async {
            cache.set("slot:k", &round, None).await?;
            // A lock that holds every read of the table, so that batches are in flight when the runtime goes.
            let mut locker = sqlx::PgConnection::connect_with(&database.options()).await?;
            sqlx::raw_sql("BEGIN; LOCK TABLE cache_entries IN ACCESS EXCLUSIVE MODE").execute(&mut locker).await?;
            for _ in 0..64 {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get::<i32>("slot:k").await });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(locker)
        })?;
        // The runtime ends with its dispatchers blocked mid-statement; then the lock goes with its connection.
        drop(first);
        drop(locker);
    }
    let later = runtime()?;
    later.block_on(async {
        for i in 0..5 {
            let started = Instant::now();
            let got = cache.get::<i32>("slot:k").await;
            assert!(matches!(got, Ok(Some(2))), "get {i} on the later runtime: {got:?} after {:?}", started.elapsed());
        }
        cache.single_pool().expect("a cache on one server").close().await;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// 3. Writes behind a row lock
// ---------------------------------------------------------------------------------------------------------

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn writes_stuck_behind_a_row_lock_give_their_connections_back(pool: PgPool) -> TestResult {
    let op_timeout = Duration::from_millis(200);
    let small = PgPoolOptions::new().max_connections(2).connect_with((*pool.connect_options()).clone()).await?;
    let cache = PgCache::builder().pool(small).op_timeout(op_timeout).sweep_interval(None).build().await?;
    cache.set("locked:k", &0, None).await?;

    // Another session holds the row, in a transaction left open.
    let mut holder = pool.begin().await?;
    sqlx::query("SELECT 1 FROM cache_entries WHERE cache_key = 'locked:k' FOR UPDATE").execute(&mut *holder).await?;

    let started = Instant::now();
    let (w1, w2, w3, w4) = tokio::join!(
        cache.set("locked:k", &1, None),
        cache.set("locked:k", &2, None),
        cache.set("locked:k", &3, None),
        cache.set("locked:k", &4, None)
    );
    let writes_took = started.elapsed();
    let writes: Vec<Result<(), CacheError>> = vec![w1, w2, w3, w4];
    println!("four writes behind the lock took {writes_took:?}: {writes:?}");
    assert!(writes.iter().all(Result::is_err), "the locked row cannot be written: {writes:?}");

    // The server cancels a write stuck behind a lock at the operation timeout: 3x that is plenty for the
    // connections to come back.
    tokio::time::sleep(op_timeout * 3).await;
    let mut failures = Vec::new();
    for i in 0..10u64 {
        let key = format!("free:{i}");
        if let Err(error) = cache.set(&key, &i, None).await {
            failures.push(format!("set {key}: {error}"));
        }
        match cache.get::<u64>(&key).await {
            Ok(Some(v)) if v == i => {}
            other => failures.push(format!("get {key}: {other:?}")),
        }
    }
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&pool)
    .await?;
    holder.rollback().await?;
    println!(
        "after the timed-out writes: {} of 20 operations failed, {waiting} sessions waiting on a lock",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of 20 operations on other keys failed after the writes timed out ({waiting} sessions still waiting on \
         the lock, holding the pool's connections): {:?}",
        failures.len(),
        &failures[..failures.len().min(4)]
    );
    Ok(())
}
