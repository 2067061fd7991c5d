//! Memoized streams (issue 25): recorded while the caller reads them, stored when they end normally,
//! replayed chunk for chunk; nothing stored for a stream that fails, is dropped early, is too long or that
//! `cache_if` refuses; one computation for concurrent callers of a cold stream.

use cache_runtime::{pg_cached, PgCache};
use futures_util::stream::{self, BoxStream, StreamExt};
use futures_util::Stream;
use integration_tests::cache_on;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Chunk {
    index: usize,
    text: String,
}

/// A stand-in for an LLM that streams its answer a word at a time.
struct Llm {
    cache: PgCache,
    runs: AtomicU64,
}

/// The words of the answer to `question`; a question containing "fail" fails after its second word, one
/// containing "truncated" ends with a marker `cache_if` refuses.
fn words(question: &str) -> Vec<Result<Chunk, String>> {
    let mut words: Vec<Result<Chunk, String>> = format!("answer to {question} in several words")
        .split(' ')
        .enumerate()
        .map(|(index, word)| Ok(Chunk { index, text: word.to_owned() }))
        .collect();
    if question.contains("fail") {
        words.insert(2, Err("the model stopped".to_owned()));
    }
    if question.contains("truncated") {
        words.push(Ok(Chunk { index: words.len(), text: "[truncated]".to_owned() }));
    }
    words
}

/// `items`, one every `gap`, counting a run in `runs` when the stream is first polled (a stream does its
/// work when polled: building it is not running it).
fn paced<'a>(
    runs: &'a AtomicU64,
    items: Vec<Result<Chunk, String>>,
    gap: Duration,
) -> impl Stream<Item = Result<Chunk, String>> + Send + 'a {
    let start = stream::once(async move {
        runs.fetch_add(1, Ordering::SeqCst);
    });
    start.flat_map(move |()| stream::iter(items.clone())).then(move |item| async move {
        tokio::time::sleep(gap).await;
        item
    })
}

fn complete(chunks: &[Chunk]) -> bool {
    chunks.last().is_none_or(|chunk| chunk.text != "[truncated]")
}

impl Llm {
    fn new(cache: &PgCache) -> Llm {
        Llm { cache: cache.clone(), runs: AtomicU64::new(0) }
    }

    #[pg_cached(cache = self.cache, namespace = "stream_answer", ttl = "1h", stream, tags("answers"), cache_if = complete)]
    fn answer(&self, question: &str) -> impl Stream<Item = Result<Chunk, String>> + Send + '_ {
        paced(&self.runs, words(question), Duration::from_millis(2))
    }

    #[pg_cached(cache = self.cache, namespace = "stream_boxed", ttl = "1h", stream, replay = "as_recorded")]
    fn boxed(&self, question: String) -> BoxStream<'_, Result<Chunk, String>> {
        paced(&self.runs, words(&question), Duration::from_millis(20)).boxed()
    }

    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }
}

async fn collect(stream: impl Stream<Item = Result<Chunk, String>>) -> Vec<Result<Chunk, String>> {
    stream.collect().await
}

async fn rows(pool: &PgPool, namespace: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM cache_entries WHERE cache_key LIKE $1 || ':%'")
        .bind(namespace)
        .fetch_one(pool)
        .await
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_replay_is_chunk_for_chunk_what_was_streamed(pool: PgPool) -> TestResult {
    let llm = Llm::new(&cache_on(pool.clone()).await);
    let first = collect(llm.answer("what is MVCC?")).await;
    assert_eq!(first, words("what is MVCC?"));
    let again = collect(llm.answer("what is MVCC?")).await;
    assert_eq!(again, first, "the replay is identical");
    assert_eq!(llm.runs(), 1, "the second call was a hit");
    assert_eq!(rows(&pool, "stream_answer").await?, 1);
    // The companion deletes it, and tags reach it.
    assert!(llm.answer_invalidate("what is MVCC?").await?);
    let _ = collect(llm.answer("what is MVCC?")).await;
    assert_eq!(llm.cache.invalidate_tag("answers").await?, 1);
    assert_eq!(llm.runs(), 2);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_stream_dropped_early_stores_nothing_and_leaves_nothing_held(pool: PgPool) -> TestResult {
    let llm = Llm::new(&cache_on(pool.clone()).await);
    let total = words("q").len();
    for trial in 0..200usize {
        let question = format!("q{trial}");
        // k from 0 to total - 1 chunks, spread over the trials (a fixed pattern, not timing).
        let k = (trial * 7) % total;
        let taken: Vec<_> = llm.answer(&question).take(k).collect().await;
        assert_eq!(taken.len(), k);
    }
    assert_eq!(rows(&pool, "stream_answer").await?, 0, "no dropped stream was stored");
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_leases").fetch_one(&pool).await?;
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND d.datname = current_database()",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!((leases, locks), (0, 0), "no lease or advisory lock left behind");
    let complete = collect(llm.answer("q3")).await;
    assert_eq!(complete, words("q3"), "a later call computes the stream again, whole");
    assert_eq!(rows(&pool, "stream_answer").await?, 1);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn failed_truncated_and_oversized_streams_store_nothing(pool: PgPool) -> TestResult {
    let cache = PgCache::builder().pool(pool.clone()).max_value_bytes(400).sweep_interval(None).build().await?;
    let llm = Llm::new(&cache);
    let failed = collect(llm.answer("please fail")).await;
    assert_eq!(failed, words("please fail"), "the caller sees the error where it happened, and what follows");
    let truncated = collect(llm.answer("a truncated one")).await;
    assert_eq!(truncated.last(), Some(&Ok(Chunk { index: 8, text: "[truncated]".into() })));
    let long = "word ".repeat(60);
    let oversized = collect(llm.answer(&long)).await;
    assert_eq!(oversized, words(&long), "a stream longer than max_value_bytes passes through whole");
    assert_eq!(rows(&pool, "stream_answer").await?, 0);
    let _ = collect(llm.answer("please fail")).await;
    assert_eq!(llm.runs(), 4, "each was computed again");
    assert_eq!(cache.process_stats().errors, 1, "the stream over max_value_bytes is counted (value_too_large)");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn concurrent_callers_of_a_cold_stream_run_it_once(pool: PgPool) -> TestResult {
    let llm = Arc::new(Llm::new(&cache_on(pool).await));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let llm = Arc::clone(&llm);
            tokio::spawn(async move { collect(llm.answer("a cold question")).await })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await?, words("a cold question"), "every chunk, in order");
    }
    assert_eq!(llm.runs(), 1);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_boxed_stream_replays_with_its_recorded_gaps(pool: PgPool) -> TestResult {
    let llm = Llm::new(&cache_on(pool).await);
    let first = collect(llm.boxed("paced".into())).await;
    let started = Instant::now();
    let replay = collect(llm.boxed("paced".into())).await;
    assert_eq!(replay, first);
    // Six chunks recorded 20 ms apart: the replay takes at least the 100 ms between the first and the last.
    assert!(started.elapsed() >= Duration::from_millis(100), "replayed in {:?}", started.elapsed());
    assert_eq!(llm.runs(), 1);
    Ok(())
}
