//! Usage and savings (issue 25): what memoized bodies report with `cache_runtime::usage` is stored with their
//! entries, inherited by outer memoized calls, and counted as saved by every hit, of every kind, in the process
//! counters, the metrics and the stats. This binary installs a metrics recorder process-wide, so its tests use
//! namespaces of their own.

use cache_runtime::__private::Site;
use cache_runtime::{pg_cached, usage, PgCache, ProcessCounts, Usage};
use futures_util::StreamExt;
use integration_tests::memo;
use integration_tests::{cache_on, listening, within};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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

/// The value of counter `name` labelled with `namespace` and `kind` (0 if never incremented). A snapshot of the
/// debugging recorder drains its counters, so every snapshot's values are added to the running totals here.
fn counter(name: &str, namespace: &str, kind: &str) -> u64 {
    type Totals = HashMap<(String, Vec<(String, String)>), u64>;
    static TOTALS: OnceLock<Mutex<Totals>> = OnceLock::new();
    let mut totals = TOTALS.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner());
    for (key, (_, _, value)) in snapshotter().snapshot().into_hashmap() {
        if let (MetricKind::Counter, DebugValue::Counter(n)) = (key.kind(), value) {
            let key = key.key();
            let mut labels: Vec<(String, String)> =
                key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            labels.sort_unstable();
            *totals.entry((key.name().to_owned(), labels)).or_default() += n;
        }
    }
    let labels = vec![("kind".to_owned(), kind.to_owned()), ("namespace".to_owned(), namespace.to_owned())];
    totals.get(&(name.to_owned(), labels)).copied().unwrap_or(0)
}

/// This process's counters for `namespace`, from `stats()` (which also reads the table).
async fn counts(cache: &PgCache, namespace: &str) -> ProcessCounts {
    let stats = cache.stats().await.expect("stats");
    stats.namespace(namespace).map(|n| n.process).unwrap_or_default()
}

/// What each row of `namespace` holds: (input, output, cost), NULL as -1.
async fn stored(pool: &PgPool, namespace: &str) -> Vec<(i64, i64, i64)> {
    sqlx::query_as(
        "SELECT coalesce(input_tokens, -1), coalesce(output_tokens, -1), coalesce(cost_micros, -1) \
         FROM cache_entries WHERE cache_key LIKE $1 ORDER BY cache_key",
    )
    .bind(format!("{namespace}:%"))
    .fetch_all(pool)
    .await
    .expect("reading the usage columns")
}

const RETRIEVAL: Usage = Usage { input_tokens: 120, output_tokens: 0, cost_micros_usd: 12 };
const GENERATION: Usage = Usage { input_tokens: 1_000, output_tokens: 300, cost_micros_usd: 5_400 };

#[derive(Clone)]
struct Rag {
    cache: PgCache,
    runs: Arc<AtomicU64>,
}

impl Rag {
    fn new(cache: &PgCache) -> Rag {
        Rag { cache: cache.clone(), runs: Arc::default() }
    }

    /// Reports its usage in two parts, as a body making two metered calls would.
    #[pg_cached(cache = self.cache, namespace = "us_retrieve", ttl = "1h")]
    async fn retrieve(&self, topic: u64) -> Vec<u64> {
        usage(Usage { input_tokens: 100, cost_micros_usd: 10, ..Usage::default() });
        usage(Usage { input_tokens: 20, cost_micros_usd: 2, ..Usage::default() });
        vec![topic, topic + 1]
    }

    /// Two questions share a topic: the second one's retrieval is a hit, whose stored usage it inherits.
    #[pg_cached(cache = self.cache, namespace = "us_answer", ttl = "1h")]
    async fn answer(&self, question: u64) -> u64 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let docs = self.retrieve(question / 2).await;
        usage(GENERATION);
        docs.iter().sum::<u64>() + question
    }
}

/// Usage adds up through two levels of memoized calls, on a miss and on a hit of the inner call, and each
/// hit counts what its entry holds.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn usage_is_summed_through_two_levels_of_memoized_calls(pool: PgPool) -> TestResult {
    snapshotter();
    let cache = cache_on(pool.clone()).await;
    let rag = Rag::new(&cache);
    assert_eq!(rag.answer(4).await, 9); // retrieve(2): a miss
    assert_eq!(rag.answer(5).await, 10); // retrieve(2): a hit
    let whole = RETRIEVAL + GENERATION;
    let row = |u: Usage| (u.input_tokens as i64, u.output_tokens as i64, u.cost_micros_usd as i64);
    assert_eq!(stored(&pool, "us_retrieve").await, [row(RETRIEVAL)], "the two reports, summed");
    assert_eq!(stored(&pool, "us_answer").await, [row(whole), row(whole)], "inner usage, miss or hit, included");

    let retrieve = counts(&cache, "us_retrieve").await;
    assert_eq!((retrieve.hits, retrieve.tokens_saved, retrieve.cost_saved), (1, 120, 12));
    assert_eq!(counts(&cache, "us_answer").await.tokens_saved, 0, "no hit of an answer yet");

    for _ in 0..3 {
        assert_eq!(rag.answer(5).await, 10);
    }
    assert_eq!(rag.runs.load(Ordering::SeqCst), 2);
    let answer = counts(&cache, "us_answer").await;
    assert_eq!(answer.hits, 3);
    assert_eq!((answer.tokens_saved, answer.cost_saved), (3 * whole.tokens(), 3 * whole.cost_micros_usd));
    assert_eq!(counter("pg_cached_tokens_saved_total", "us_answer", "exact"), 3 * whole.tokens());
    assert_eq!(counter("pg_cached_cost_saved_micros_total", "us_answer", "exact"), 3 * whole.cost_micros_usd);
    let all = cache.process_stats();
    assert_eq!(all.tokens_saved, 3 * whole.tokens() + RETRIEVAL.tokens());
    assert_eq!(all.cost_saved, 3 * whole.cost_micros_usd + RETRIEVAL.cost_micros_usd);
    Ok(())
}

const USAGE: Usage = Usage { input_tokens: 40, output_tokens: 2, cost_micros_usd: 7 };

#[derive(Clone)]
struct Kinds {
    cache: PgCache,
}

impl Kinds {
    async fn body(&self, x: u64) -> u64 {
        usage(USAGE);
        x * 2
    }

    #[pg_cached(cache = self.cache, namespace = "us_local", ttl = "1h", local = "10m")]
    async fn local(&self, x: u64) -> u64 {
        self.body(x).await
    }

    #[pg_cached(cache = self.cache, namespace = "us_stale", ttl = "1h", stale = "1h")]
    async fn stale(&self, x: u64) -> u64 {
        self.body(x).await
    }

    #[pg_cached(cache = self.cache, namespace = "us_flight", ttl = "1h")]
    async fn flight(&self, x: u64) -> u64 {
        // Long enough that concurrent callers find the computation in flight (the count holds either way).
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.body(x).await
    }
}

/// Every value served from an entry counts its usage, in the counters and under its kind in the metrics.
fn check_kinds(c: &ProcessCounts, namespace: &str) {
    let exact = c.hits + c.coalesced;
    let stale = c.stale_served + c.stale_if_error;
    let served = exact + c.local_hits + stale;
    assert_eq!(c.tokens_saved, served * USAGE.tokens(), "{namespace}: {c:?}");
    assert_eq!(c.cost_saved, served * USAGE.cost_micros_usd, "{namespace}: {c:?}");
    for (kind, n) in [("exact", exact), ("local", c.local_hits), ("stale", stale)] {
        assert_eq!(counter("pg_cached_tokens_saved_total", namespace, kind), n * USAGE.tokens(), "{namespace} {kind}");
        let cost = counter("pg_cached_cost_saved_micros_total", namespace, kind);
        assert_eq!(cost, n * USAGE.cost_micros_usd, "{namespace} {kind}");
    }
}

/// Hits from the in-process tier, stale values, and callers that joined a computation in flight each count
/// the entry's usage, under their kind.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn every_kind_of_hit_counts_its_entrys_usage(pool: PgPool) -> TestResult {
    snapshotter();
    let cache = cache_on(pool.clone()).await;
    let kinds = Kinds { cache: cache.clone() };

    // Local: the tier serves once its listener is connected (started by the first call), and the writer's own
    // notification may drop the key from its tier once: call until the tier answers.
    assert_eq!(kinds.local(1).await, 2);
    listening(&cache).await;
    let local_hit =
        within(Duration::from_secs(10), async || kinds.local(1).await == 2 && cache.process_stats().local_hits > 0)
            .await;
    assert!(local_hit.is_some(), "the in-process tier served the entry");
    let local = counts(&cache, "us_local").await;
    assert!(local.local_hits > 0);
    check_kinds(&local, "us_local");

    // Stale: the entry expires (by the database's clock, moved here rather than waited for); the next caller
    // is served it while it refreshes in the background.
    assert_eq!(kinds.stale(3).await, 6);
    sqlx::query("UPDATE cache_entries SET expires_at = now() - interval '1 second' WHERE cache_key LIKE 'us_stale:%'")
        .execute(&pool)
        .await?;
    assert_eq!(kinds.stale(3).await, 6);
    let stale = counts(&cache, "us_stale").await;
    assert_eq!(stale.stale_served, 1, "{stale:?}");
    check_kinds(&stale, "us_stale");

    // In flight: 50 callers of a cold key; whoever did not run the body saved its usage.
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let kinds = kinds.clone();
            tokio::spawn(async move { kinds.flight(21).await })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await?, 42);
    }
    let flight = counts(&cache, "us_flight").await;
    // (The stale entry's background refresh may run meanwhile: count this function's runs only.)
    let ran = flight.executions;
    assert_eq!(ran, 1, "single flight: one run for 50 callers");
    assert_eq!(flight.hits + flight.coalesced + flight.local_hits, 50 - ran, "{flight:?}");
    check_kinds(&flight, "us_flight");
    Ok(())
}

/// `stats()` sums the usage held in live rows per namespace; expired rows and rows without usage add nothing.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn stats_sum_the_usage_held_in_live_entries(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    let rag = Rag::new(&cache);
    for question in [10, 11, 20, 30] {
        rag.answer(question).await;
    }
    cache.set("us_answer:by-hand", &1, None).await?;
    let held = |stats: &cache_runtime::CacheStats, ns: &str| stats.namespace(ns).map(|n| n.usage_held);
    let stats = cache.stats().await?;
    assert_eq!(held(&stats, "us_answer"), Some([GENERATION + RETRIEVAL; 4].into_iter().sum()));
    assert_eq!(held(&stats, "us_retrieve"), Some([RETRIEVAL; 3].into_iter().sum()), "topics 5, 10, 15");
    assert_eq!(stats.namespace("us_answer").map(|n| n.active), Some(5));

    let expired = sqlx::query(
        "UPDATE cache_entries SET expires_at = now() - interval '1 second' \
         WHERE cache_key IN (SELECT cache_key FROM cache_entries WHERE cache_key LIKE 'us_retrieve:%' LIMIT 1)",
    )
    .execute(&pool)
    .await?;
    assert_eq!(expired.rows_affected(), 1);
    let stats = cache.stats().await?;
    assert_eq!(held(&stats, "us_retrieve"), Some(RETRIEVAL + RETRIEVAL), "an expired row holds nothing");
    Ok(())
}

static OLD: Site = Site::new("us_old", "usage::old", 1);

/// An entry written before migration 0008 (its usage NULL), here by the previous release's positional call
/// of the write function, is still served; its hits count no usage.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_hit_on_an_entry_without_usage_counts_zero(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    let key = memo::key(&OLD, 5)?;
    let written: bool = sqlx::query_scalar(
        "SELECT pg_cached_write_entry($1, '99'::jsonb, 3600000, 0, NULL, 'us_old', '', '1000', false, NULL, \
         1500, NULL)",
    )
    .bind(&key)
    .fetch_one(&pool)
    .await?;
    assert!(written, "version 1's positional call still resolves");
    assert_eq!(stored(&pool, "us_old").await, [(-1, -1, -1)]);

    let ran = AtomicU64::new(0);
    let body = async {
        ran.fetch_add(1, Ordering::SeqCst);
        usage(USAGE);
        0_u64
    };
    assert_eq!(memo::call(&cache, &OLD, 5, body).await, 99, "served from the old entry");
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    let old = counts(&cache, "us_old").await;
    assert_eq!((old.hits, old.tokens_saved, old.cost_saved, old.compute_saved_us), (1, 0, 0, 1500));
    let stats = cache.stats().await?;
    assert_eq!(stats.namespace("us_old").map(|n| n.usage_held), Some(Usage::default()));
    Ok(())
}

struct Streamer {
    cache: PgCache,
}

impl Streamer {
    /// Reports its usage from inside the stream, as an LLM client does when the final chunk says it.
    #[pg_cached(cache = self.cache, namespace = "us_stream", ttl = "1h", stream)]
    fn tokens(&self, n: u64) -> impl futures_util::Stream<Item = Result<u64, String>> + Send + '_ {
        futures_util::stream::iter(0..n).map(move |i| {
            if i + 1 == n {
                usage(USAGE);
            }
            Ok(i)
        })
    }
}

/// A memoized stream stores the usage reported while it was read, and each replay counts it.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_replayed_stream_counts_the_usage_reported_while_it_was_recorded(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    let streamer = Streamer { cache: cache.clone() };
    let first: Vec<_> = streamer.tokens(4).collect().await;
    let row = (USAGE.input_tokens as i64, USAGE.output_tokens as i64, USAGE.cost_micros_usd as i64);
    assert_eq!(stored(&pool, "us_stream").await, [row]);
    for _ in 0..2 {
        let replayed: Vec<_> = streamer.tokens(4).collect().await;
        assert_eq!(replayed, first);
    }
    let counted = counts(&cache, "us_stream").await;
    assert_eq!((counted.hits, counted.tokens_saved, counted.cost_saved), (2, 2 * USAGE.tokens(), 14));
    Ok(())
}
