//! The correctness findings of the security and correctness audit (issue 22), one test each, on a real
//! PostgreSQL. Each failed on the code before its fix; the finding's number is in the test's docs.
//!
//! "Two processes" are two `PgCache`s over the same database: they share nothing but the server, as two
//! processes would (their own pools, tiers, flights and event listeners).

use cache_runtime::{pg_cached, CacheError, PgCache};
use integration_tests::{cache_on, init_tracing, listening, within};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A memoized service whose body can be held: run `n` (counted from 1) waits for a permit of `gate` when
/// `held_run` is `n`. Not `Clone`, so that its stale refreshes run in the caller that triggers them.
struct Service {
    cache: PgCache,
    runs: AtomicU64,
    held_run: AtomicU64,
    entered: AtomicBool,
    gate: Semaphore,
}

impl Service {
    fn new(cache: &PgCache) -> Arc<Service> {
        Arc::new(Service {
            cache: cache.clone(),
            runs: AtomicU64::new(0),
            held_run: AtomicU64::new(0),
            entered: AtomicBool::new(false),
            gate: Semaphore::new(0),
        })
    }

    async fn body(&self, x: u64) -> u64 {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        if run == self.held_run.load(Ordering::SeqCst) {
            self.entered.store(true, Ordering::SeqCst);
            let _permit = self.gate.acquire().await;
        }
        x * 1000 + run
    }

    /// `x * 1000 + run`, memoized for a second and served stale for an hour after.
    #[pg_cached(cache = self.cache, namespace = "audit_stale", ttl = "1s", stale = "1h")]
    async fn versioned(&self, x: u64) -> u64 {
        self.body(x).await
    }

    /// The same, but the value is stored only when it is below 500.
    #[pg_cached(cache = self.cache, namespace = "audit_cache_if", ttl = "1s", stale = "1h", cache_if = below_500)]
    async fn filtered(&self, x: u64) -> u64 {
        self.body(x).await
    }
}

fn below_500(value: &u64) -> bool {
    *value < 500
}

/// Finding 1: a caller in process A that starts after process B's delete returned must not get the deleted
/// value, even while A's stale refresh of it (begun before the delete) is still running.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_delete_in_another_process_is_not_undone_by_a_stale_refresh_in_flight(pool: PgPool) -> TestResult {
    init_tracing();
    let (a, b) = (Service::new(&cache_on(pool.clone()).await), Service::new(&cache_on(pool).await));
    assert_eq!(a.versioned(7).await, 7001);
    tokio::time::sleep(Duration::from_millis(1200)).await; // expired: only served stale from now on
    a.held_run.store(2, Ordering::SeqCst);
    let refreshing = tokio::spawn({
        let a = Arc::clone(&a);
        async move { a.versioned(7).await }
    });
    within(Duration::from_secs(10), async || a.entered.load(Ordering::SeqCst)).await.ok_or("the refresh never ran")?;
    assert!(b.versioned_invalidate(7).await?, "process B deleted the entry");
    let after_delete = a.versioned(7).await;
    assert_ne!(after_delete, 7001, "a call that began after the delete got the deleted value");
    assert_eq!(after_delete, 7003, "it computed a value of its own");
    a.gate.add_permits(1);
    assert_eq!(refreshing.await?, 7002, "the refresh that ran the body gets its own result");
    Ok(())
}

/// Finding 2: a stale refresh whose fresh result is not stored (here `cache_if` refuses it) still gives the
/// caller that ran the body that result, not the expired value.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_stale_refresh_returns_its_fresh_result_even_when_it_is_not_stored(pool: PgPool) -> TestResult {
    let service = Service::new(&cache_on(pool).await);
    assert_eq!(service.filtered(0).await, 1, "stored: below 500");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(service.filtered(0).await, 2, "the refresh's own result, which is stored");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    service.runs.store(600, Ordering::SeqCst);
    assert_eq!(service.filtered(0).await, 601, "the body's result (not stored: 601 is not below 500), not 2");
    Ok(())
}

/// Finding 7: a value nested deeper than serde_json reads back is refused at write, with a typed error,
/// instead of being stored and never served.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn values_nested_too_deep_are_refused_at_write(pool: PgPool) -> TestResult {
    let cache = cache_on(pool).await;
    let nested = |depth: usize| (0..depth).fold(serde_json::json!(1), |inner, _| serde_json::json!([inner]));
    cache.set("deep:ok", &nested(127), None).await?;
    assert_eq!(cache.get::<serde_json::Value>("deep:ok").await?, Some(nested(127)));
    let refused = cache.set("deep:no", &nested(200), None).await;
    assert!(matches!(refused, Err(CacheError::UnsupportedValue { .. })), "{refused:?}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_entries WHERE cache_key = 'deep:no'")
        .fetch_one(cache.single_pool().expect("one server"))
        .await?;
    assert_eq!(rows, 0, "nothing was written");
    Ok(())
}

/// Finding 6a: a tier whose listener ran on a tokio runtime that has shut down does not go on serving: the
/// listener is gone, so the tier stops serving (and a new listener starts on the next runtime).
#[test]
fn a_tier_whose_listener_died_with_its_runtime_does_not_serve_what_others_deleted() -> TestResult {
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL must be set")?;
    let runtime = || tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let key = format!("audit_dead_listener:{}", std::process::id());
    let first = runtime()?;
    let cache = first.block_on(async {
        let cache =
            PgCache::builder().database_url(&url).local_tier(100, Duration::from_secs(3600)).sweep_interval(None);
        let cache = cache.build().await?;
        cache.migrate().await?;
        listening(&cache).await;
        cache.set(&key, &"old", None).await?;
        assert_eq!(cache.get::<String>(&key).await?.as_deref(), Some("old"));
        assert_eq!(cache_runtime::test_support::local_len(&cache), 1, "the tier holds the key");
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(cache)
    })?;
    drop(first);
    let later = runtime()?;
    later.block_on(async {
        let other = PgCache::builder().database_url(&url).sweep_interval(None).build().await?;
        assert!(other.delete(&key).await?, "the other process deleted the key");
        let connects = cache_runtime::test_support::listener_connects(&cache);
        let got = cache.get::<String>(&key).await?;
        assert_eq!(got, None, "the tier served a value another process had deleted");
        let again = async || cache_runtime::test_support::listener_connects(&cache) > connects;
        within(Duration::from_secs(10), again).await.ok_or("no listener started on the later runtime")?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })?;
    Ok(())
}

/// Finding 6b: a listener whose connection goes silent (half-open: the TCP connection stays, nothing
/// flows) is found out by its heartbeat; the tier then stops serving and is cleared.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_half_open_listener_is_found_out_by_its_heartbeat(pool: PgPool) -> TestResult {
    let proxy = FreezableProxy::start(&pool).await?;
    let through_proxy = PgPoolOptions::new().max_connections(4).connect_with(proxy.options(&pool)).await?;
    let cache = PgCache::builder()
        .pool(through_proxy)
        .local_tier(100, Duration::from_secs(3600))
        .listener_heartbeat(Duration::from_millis(200))
        .sweep_interval(None)
        .build()
        .await?;
    listening(&cache).await;
    cache.set("half:k", &1, None).await?;
    assert_eq!(cache.get::<i32>("half:k").await?, Some(1));
    assert_eq!(cache_runtime::test_support::local_len(&cache), 1);
    proxy.frozen.store(true, Ordering::SeqCst);
    let other = cache_on(pool).await;
    assert!(other.delete("half:k").await?);
    // Detection takes two heartbeats (0.4 s here); allow far more on a slow machine.
    let cleared = within(Duration::from_secs(10), async || cache_runtime::test_support::local_len(&cache) == 0).await;
    assert!(cleared.is_some(), "the tier still holds a key another process deleted");
    proxy.frozen.store(false, Ordering::SeqCst);
    assert_eq!(cache.get::<i32>("half:k").await?, None, "after the thaw the key reads as deleted");
    Ok(())
}

/// A TCP proxy to the test's server that can freeze: while frozen it forwards nothing either way but keeps
/// every connection open, as a half-open connection behaves.
struct FreezableProxy {
    port: u16,
    frozen: Arc<AtomicBool>,
}

impl FreezableProxy {
    async fn start(pool: &PgPool) -> Result<FreezableProxy, Box<dyn std::error::Error + Send + Sync>> {
        let options = pool.connect_options();
        let upstream = format!("{}:{}", options.get_host(), options.get_port());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let frozen = Arc::new(AtomicBool::new(false));
        let gate = Arc::clone(&frozen);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, Arc::clone(&gate)));
                tokio::spawn(pump(server_read, client_write, Arc::clone(&gate)));
            }
        });
        Ok(FreezableProxy { port, frozen })
    }

    /// `pool`'s connection options, through the proxy.
    fn options(&self, pool: &PgPool) -> sqlx::postgres::PgConnectOptions {
        (*pool.connect_options()).clone().host("127.0.0.1").port(self.port)
    }
}

/// Copies bytes from `from` to `to`, holding them while `frozen`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
