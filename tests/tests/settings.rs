//! The builder's settings at their extremes, and the passwords in its URLs, against a real PostgreSQL
//! (issue 22, findings 8 and 9).
//!
//! Every setting, given zero, its bound, or far past it (`Duration::MAX`, `u32::MAX`...), either makes
//! `build` refuse it with `CacheError::Config` naming the setting, or gives a cache whose writes, reads,
//! memoized calls (cluster single-flight, a lease held while the body runs) and sweeps work, as the bounds
//! documented on `PgCacheBuilder` say. Nothing panics, in the caller or in a background task (the sweeper,
//! the replica monitor): a panic hook watches for that.
//!
//! A cache built from a URL with a password (one server, shards, several hosts, a read replica, the
//! password in the query string) shows it in no `Debug` output, report or log line. The password is made
//! up: the test server accepts any (trust authentication, as `scripts/test` sets it up).

use cache_runtime::{pg_cached, CacheError, PgCache, PgCacheBuilder, Ttl};
use sqlx::PgPool;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const YEARS_10K: Duration = Duration::from_secs(10_000 * 365 * 86_400);
/// `INT_MAX` milliseconds: PostgreSQL's largest `lock_timeout` and `statement_timeout`.
const SERVER_LIMIT: Duration = Duration::from_millis(2_147_483_647);
const DAYS_25: Duration = Duration::from_secs(25 * 86_400);

/// The setting a refusal must name, the outcome the documented bounds give, and the change to a builder
/// (`url`: the test database's).
type Case = (&'static str, Expect, fn(PgCacheBuilder, &str) -> PgCacheBuilder);

/// What a case must give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// `build` refuses it with `CacheError::Config` naming the setting.
    Refused,
    /// The cache builds and works.
    Works,
}
use Expect::{Refused, Works};

const CASES: &[Case] = &[
    ("op_timeout", Refused, |b, _| b.op_timeout(Duration::MAX)),
    ("op_timeout", Refused, |b, _| b.op_timeout(DAYS_25)),
    ("op_timeout", Works, |b, _| b.op_timeout(SERVER_LIMIT)),
    ("op_timeout", Refused, |b, _| b.op_timeout(Duration::ZERO)),
    ("maintenance_timeout", Refused, |b, _| b.maintenance_timeout(Duration::MAX)),
    ("maintenance_timeout", Refused, |b, _| b.maintenance_timeout(DAYS_25)),
    ("maintenance_timeout", Works, |b, _| b.maintenance_timeout(SERVER_LIMIT)),
    ("maintenance_timeout", Refused, |b, _| b.maintenance_timeout(Duration::ZERO)),
    ("lease_duration", Refused, |b, _| b.lease_duration(Duration::MAX)),
    ("lease_duration", Works, |b, _| b.lease_duration(YEARS_10K)),
    ("lease_duration", Refused, |b, _| b.lease_duration(Duration::ZERO)),
    ("lease_duration", Works, |b, _| b.lease_duration(Duration::from_nanos(1))),
    ("sweep_interval", Refused, |b, _| b.sweep_interval(Duration::MAX)),
    ("sweep_interval", Works, |b, _| b.sweep_interval(YEARS_10K)),
    ("max_lag", Refused, |b, url| b.read_replicas([url], Duration::MAX)),
    ("max_lag", Works, |b, url| b.read_replicas([url], YEARS_10K)),
    ("max_lag", Refused, |b, url| b.read_replicas([url], Duration::ZERO)),
    ("default_ttl", Refused, |b, _| b.default_ttl(Duration::MAX)),
    ("default_ttl", Works, |b, _| b.default_ttl(YEARS_10K)),
    ("default_ttl", Refused, |b, _| b.default_ttl(Duration::ZERO)),
    ("local_tier", Works, |b, _| b.local_tier(u64::MAX, Duration::MAX)),
    ("local_tier", Refused, |b, _| b.local_tier(0, Duration::from_secs(60))),
    ("local_tier", Refused, |b, _| b.local_tier(10, Duration::ZERO)),
    ("max_entries", Refused, |b, _| b.max_entries(0_u64)),
    ("max_entries", Works, |b, _| b.max_entries(u64::MAX)),
    ("max_value_bytes", Refused, |b, _| b.max_value_bytes(0)),
    ("max_value_bytes", Works, |b, _| b.max_value_bytes(usize::MAX)),
    ("batch_size", Refused, |b, _| b.batch_size(0)),
    ("batch_size", Works, |b, _| b.batch_size(u32::MAX)),
    ("coalesce_max_keys", Refused, |b, _| b.coalesce_max_keys(0)),
    ("coalesce_max_keys", Works, |b, _| b.coalesce_max_keys(usize::MAX)),
    ("coalesce_in_flight", Refused, |b, _| b.coalesce_in_flight(0)),
    ("coalesce_in_flight", Works, |b, _| b.coalesce_in_flight(usize::MAX)),
];

/// The pool's size, apart: past its bound, a version that does not check it tries to allocate the idle
/// queue of `u32::MAX` connections, which aborts the whole test process.
const POOL_SIZES: &[Case] = &[
    ("max_connections", Refused, |b, _| b.max_connections(0)),
    ("max_connections", Works, |b, _| b.max_connections(262_143)),
    ("max_connections", Refused, |b, _| b.max_connections(262_144)),
    ("max_connections", Refused, |b, _| b.max_connections(u32::MAX)),
];

#[sqlx::test(migrator = "cache_runtime::MIGRATOR")]
async fn every_setting_is_refused_or_works_and_nothing_panics(pool: PgPool) -> TestResult {
    run_cases(&pool, CASES).await
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR")]
async fn every_pool_size_is_refused_or_works_and_nothing_panics(pool: PgPool) -> TestResult {
    run_cases(&pool, POOL_SIZES).await
}

/// Runs every case over the test's pool and over a URL of its database, and fails with the list of cases
/// that did neither refuse nor work, or panicked.
async fn run_cases(pool: &PgPool, cases: &'static [Case]) -> TestResult {
    watch_panics();
    migrate(pool).await?;
    let url = url_of(pool, None);
    let mut failures = Vec::new();
    for (index, (setting, expect, change)) in cases.iter().enumerate() {
        for (source, base) in
            [("pool", PgCache::builder().pool(pool.clone())), ("url", PgCache::builder().database_url(&url))]
        {
            // A generous timeout, so that a busy machine does not fail a case; each case may change it.
            let builder = change(base.op_timeout(Duration::from_secs(10)).sweep_interval(None), &url);
            let id = index * 2 + usize::from(source == "url");
            let outcome = tokio::spawn(refused_or_works(builder, setting, *expect, id)).await;
            let problem = match outcome {
                Ok(Ok(())) => continue,
                Ok(Err(problem)) => problem,
                Err(join) => format!("panicked: {join}"),
            };
            failures.push(format!("case {index} ({setting}) over a {source}: {problem}"));
        }
    }
    let panics = std::mem::take(&mut *PANICS.lock().unwrap_or_else(|e| e.into_inner()));
    assert!(failures.is_empty() && panics.is_empty(), "{failures:#?}\npanics: {panics:#?}");
    Ok(())
}

/// `Ok` when `builder` is refused with `CacheError::Config` naming `setting`, or builds a cache that works,
/// as `expect` says.
async fn refused_or_works(builder: PgCacheBuilder, setting: &str, expect: Expect, id: usize) -> Result<(), String> {
    let cache = match (builder.build().await, expect) {
        (Err(CacheError::Config(message)), Refused) if message.contains(setting) => return Ok(()),
        (Err(error), _) => return Err(format!("build failed with {error:?}")),
        (Ok(_), Refused) => return Err("built, although the setting is out of bounds".into()),
        (Ok(cache), Works) => cache,
    };
    works(&cache, id).await?;
    if setting == "max_lag" {
        // The replica monitor probes at once, then at most every second: let it run.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// Writes (default and explicit TTL), reads, a memoized call under cluster single-flight, a delete and a
/// sweep all succeed on `cache`.
async fn works(cache: &PgCache, id: usize) -> Result<(), String> {
    let key = format!("settings:{id}");
    cache.set(&key, &id, Ttl::Default).await.map_err(|e| format!("set with the default TTL: {e}"))?;
    match cache.get::<usize>(&key).await {
        Ok(Some(found)) if found == id => {}
        other => return Err(format!("get after set gave {other:?}")),
    }
    cache.set(&key, &id, Duration::from_secs(60)).await.map_err(|e| format!("set with a TTL: {e}"))?;
    let counted = Counted { cache: cache.clone(), runs: AtomicUsize::new(0), leased: AtomicBool::new(false) };
    let (first, again) = (counted.plus_one(id).await, counted.plus_one(id).await);
    let runs = counted.runs.load(Ordering::SeqCst);
    if (first, again, runs) != (id + 1, id + 1, 1) {
        return Err(format!("memoized calls gave {first} and {again}, the body ran {runs} times (once expected)"));
    }
    if !counted.leased.load(Ordering::SeqCst) {
        return Err("the memoized body ran without a cluster lease".into());
    }
    match cache.delete(&key).await {
        Ok(true) => {}
        other => return Err(format!("delete gave {other:?}")),
    }
    cache.sweep().await.map_err(|e| format!("sweep: {e}"))?;
    Ok(())
}

/// A memoized function that counts its runs, and notes whether a cluster lease was held while it ran (a
/// lease that cannot be taken is not an error the caller sees: the body just runs without one).
struct Counted {
    cache: PgCache,
    runs: AtomicUsize,
    leased: AtomicBool,
}

impl Counted {
    #[pg_cached(cache = self.cache, namespace = "settings_memo", ttl = "10m", single_flight = "cluster")]
    async fn plus_one(&self, x: usize) -> usize {
        self.runs.fetch_add(1, Ordering::SeqCst);
        for pool in self.cache.shard_pools() {
            let leases = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cache_leases").fetch_one(pool).await;
            self.leased.fetch_or(leases.is_ok_and(|n| n > 0), Ordering::SeqCst);
        }
        x + 1
    }
}

/// The made-up password of the secrets test (see the module docs).
const PASSWORD: &str = "Pw1-made-up-Xy9";

#[sqlx::test(migrator = "cache_runtime::MIGRATOR")]
async fn no_cache_built_from_a_url_shows_its_password(pool: PgPool) -> TestResult {
    capture_logs();
    watch_panics();
    migrate(&pool).await?;
    let options = pool.connect_options();
    let (port, database) = (options.get_port(), options.get_database().unwrap_or("postgres"));
    let user = options.get_username();
    let at = |host: &str| format!("postgres://{user}:{PASSWORD}@{host}:{port}/{database}");
    let builders = [
        ("one server", PgCache::builder().database_url(at("127.0.0.1"))),
        ("shards", PgCache::builder().shards([at("127.0.0.1"), at("localhost")])),
        (
            "several hosts",
            PgCache::builder()
                .database_url(format!("postgres://{user}:{PASSWORD}@127.0.0.1:{port},localhost:{port}/{database}")),
        ),
        (
            "read replica",
            PgCache::builder().database_url(at("127.0.0.1")).read_replicas([at("localhost")], Duration::from_secs(1)),
        ),
        ("query string", PgCache::builder().database_url(url_of(&pool, Some(PASSWORD)))),
        ("in-process tier", PgCache::builder().database_url(at("127.0.0.1")).local_tier(100, Duration::from_secs(60))),
    ];
    for (id, (how, builder)) in builders.into_iter().enumerate() {
        let builder = builder.op_timeout(Duration::from_secs(10)).sweep_interval(None);
        let shown_builder = format!("{builder:?}");
        let cache = builder.build().await.map_err(|e| format!("{how}: {e}"))?;
        works(&cache, 1_000 + id).await.map_err(|e| format!("{how}: {e}"))?;
        let (health, stats) = (cache.health_check().await, cache.stats().await);
        let shown = format!("{shown_builder}\n{cache:?}\n{health:?}\n{stats:?}\n{:?}", cache.process_stats());
        assert!(!shown.contains(PASSWORD), "{how} shows the password:\n{shown}");
        assert!(shown.contains(&format!("{port}/{database}")), "{how} still says where it connects:\n{shown}");
    }
    let logs = String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    assert!(!logs.is_empty(), "the log capture works");
    assert!(!logs.contains(PASSWORD), "a log line shows the password:\n{logs}");
    assert!(PANICS.lock().unwrap_or_else(|e| e.into_inner()).is_empty());
    Ok(())
}

/// Applies the cache's SQL functions to the test's database: `sqlx::test` runs only the table migrations.
async fn migrate(pool: &PgPool) -> TestResult {
    PgCache::builder().pool(pool.clone()).sweep_interval(None).build().await?.migrate().await?;
    Ok(())
}

/// A URL of the test's database (host, port, user and database of `pool`), with `password` in its query
/// string if given.
fn url_of(pool: &PgPool, password: Option<&str>) -> String {
    let options = pool.connect_options();
    let database = options.get_database().unwrap_or("postgres");
    let url = format!("postgres://{}@{}:{}/{database}", options.get_username(), options.get_host(), options.get_port());
    match password {
        Some(password) => format!("{url}?sslmode=disable&password={password}"),
        None => url,
    }
}

/// Every panic of this process, from any thread or task, since the last check.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records every panic in [`PANICS`] (and still prints it).
fn watch_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.lock().unwrap_or_else(|e| e.into_inner()).push(info.to_string());
            previous(info);
        }));
    });
}

/// Every log line of this process, at every level.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Sends every log line, at every level, to [`LOGS`].
fn capture_logs() {
    struct Capture;
    impl Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            LOGS.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| Capture)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber in this test binary");
    });
}
