//! The `metrics` feature (issue 14): what a memoized function, the store and a failing store report through
//! the `metrics` facade, checked with metrics-util's debugging recorder, and the tracing span of each
//! memoized call. This binary installs the recorder process-wide, so its tests use namespaces of their own.

use cache_runtime::{pg_cached, PgCache, Ttl};
use integration_tests::{cache_on, cache_on_closed_port, listening};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use sqlx::PgPool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("the only recorder of this test binary");
        snapshotter
    })
}

/// Per metric (name and labels): a counter's total, or a histogram's number of samples.
type Metrics = std::collections::HashMap<metrics_util::CompositeKey, u64>;

/// Everything recorded so far by every test of this binary. The recorder's own snapshot drains what it
/// returns (counters are swapped to zero), and the tests run at once: each snapshot's values are added to
/// these totals, so that no test loses what another's snapshot took. Tests use namespaces of their own.
fn snapshot() -> Metrics {
    static TOTALS: Mutex<Option<Metrics>> = Mutex::new(None);
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let totals = totals.get_or_insert_with(Metrics::new);
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let added = match value {
            DebugValue::Counter(n) => n,
            DebugValue::Histogram(samples) => samples.len() as u64,
            DebugValue::Gauge(_) => 0,
        };
        *totals.entry(key).or_default() += added;
    }
    totals.clone()
}

/// The total of counter `name` with exactly these labels (0 if never incremented), or the number of samples
/// of histogram `name`, in `snapshot`.
fn read(snapshot: &Metrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    let found = snapshot.iter().find(|(key, _)| {
        let kind_matches = matches!(key.kind(), MetricKind::Counter | MetricKind::Histogram);
        let key = key.key();
        let mut have: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        let mut want = labels.to_vec();
        have.sort_unstable();
        want.sort_unstable();
        kind_matches && key.name() == name && have == want
    });
    found.map_or(0, |(_, n)| *n)
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

struct Metered {
    cache: PgCache,
}

impl Metered {
    #[pg_cached(cache = self.cache, namespace = "metered", ttl = "1h")]
    async fn double(&self, n: u32) -> u32 {
        RUNS.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        n * 2
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn memoized_calls_and_store_operations_are_reported(pool: PgPool) -> TestResult {
    snapshotter();
    let cache = cache_on(pool).await;
    let metered = Metered { cache: cache.clone() };
    assert_eq!(metered.double(21).await, 42);
    assert_eq!(metered.double(21).await, 42);
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    let m = snapshot();
    let ns = [("namespace", "metered")];
    assert_eq!(read(&m, "pg_cached_executions_total", &ns), 1);
    assert_eq!(read(&m, "pg_cached_compute_seconds", &ns), 1, "one body run, one sample");
    assert_eq!(read(&m, "pg_cached_hits_total", &[("namespace", "metered"), ("tier", "postgres")]), 1);
    assert_eq!(read(&m, "pg_cached_misses_total", &ns), 1);
    assert_eq!(read(&m, "pg_cached_bytes_written_total", &ns), 2, "the JSON `42`");

    cache.set("plain:a", &"x".repeat(10), Ttl::Default).await?;
    assert_eq!(cache.get::<String>("plain:a").await?.as_deref(), Some("xxxxxxxxxx"));
    assert!(cache.delete("plain:a").await?);
    cache.delete_namespace("plain").await?;
    let m = snapshot();
    let plain = [("namespace", "plain")];
    assert_eq!(read(&m, "pg_cached_bytes_written_total", &plain), 12, "the JSON string with its quotes");
    assert_eq!(read(&m, "pg_cached_operation_seconds", &[("operation", "set"), ("namespace", "plain")]), 1);
    assert_eq!(read(&m, "pg_cached_operation_seconds", &[("operation", "get"), ("namespace", "plain")]), 1);
    assert_eq!(read(&m, "pg_cached_operation_seconds", &[("operation", "delete"), ("namespace", "plain")]), 1);
    assert_eq!(read(&m, "pg_cached_invalidations_total", &[("namespace", "plain"), ("scope", "key")]), 1);
    assert_eq!(read(&m, "pg_cached_invalidations_total", &[("namespace", "plain"), ("scope", "namespace")]), 1);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn hits_are_labelled_by_tier(pool: PgPool) -> TestResult {
    snapshotter();
    let cache =
        PgCache::builder().pool(pool).local_tier(100, Duration::from_secs(60)).sweep_interval(None).build().await?;
    listening(&cache).await;
    cache.set("tiered:k", &1u8, Ttl::Default).await?;
    for _ in 0..3 {
        assert_eq!(cache.get::<u8>("tiered:k").await?, Some(1));
    }
    let local = read(&snapshot(), "pg_cached_hits_total", &[("namespace", "tiered"), ("tier", "local")]);
    assert_eq!(local, 3, "a write fills the tier");
    Ok(())
}

#[tokio::test]
async fn failures_are_counted_by_kind() {
    snapshotter();
    let cache = cache_on_closed_port();
    assert!(cache.get::<u8>("down:k").await.is_err());
    assert!(cache.get::<u8>("down:k\0").await.is_err(), "a bad key is refused before any I/O, not counted");
    let m = snapshot();
    let errors = read(&m, "pg_cached_errors_total", &[("namespace", "down"), ("kind", "timeout")])
        + read(&m, "pg_cached_errors_total", &[("namespace", "down"), ("kind", "database")]);
    assert_eq!(errors, 1);
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn coalesced_statements_are_counted(pool: PgPool) -> TestResult {
    snapshotter();
    // Bulk reads always share statements: 10 keys make one statement.
    let cache = cache_on(pool).await;
    let keys: Vec<String> = (0..10).map(|i| format!("bulk:{i}")).collect();
    assert_eq!(cache.get_many::<u8>(&keys).await?, vec![None; 10]);
    let m = snapshot();
    assert!(read(&m, "pg_cached_coalesced_batches_total", &[("operation", "get")]) >= 1);
    assert!(read(&m, "pg_cached_coalesced_operations_total", &[("operation", "get")]) >= 10);
    Ok(())
}
