//! The RAG pipeline of the `examples` crate (retrieval and answers memoized with `#[pg_cached]`) and its demo,
//! against a real PostgreSQL. Each test gets a fresh database; retrieval and generation run without their
//! simulated latency.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use cache_runtime::{PgCache, ProcessCounts};
use examples::demo::{self, DemoOptions};
use examples::generate::LOCAL_MODEL;
use examples::pipeline::{ANSWER_NAMESPACE, ANSWER_STREAM_NAMESPACE, CONTEXT_DOCUMENTS, RETRIEVAL_NAMESPACE};
use examples::{
    Answer, AnswerChunk, AnswerGenerator, BoxFuture, CounterSnapshot, Document, GenerateError, LocalGenerator, Lookup,
    Orchestrator, PipelineError, RetrievalEngine, RetrievalError, RetrievalResult, Retriever,
};
use futures_util::stream::{self, BoxStream, StreamExt};
use integration_tests::cache_on;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const QUESTION: &str = "How does VACUUM reclaim space from dead tuples?";

/// The bundled corpus, without simulated latency, built once.
fn engine() -> Arc<RetrievalEngine> {
    static ENGINE: OnceLock<Arc<RetrievalEngine>> = OnceLock::new();
    Arc::clone(ENGINE.get_or_init(|| Arc::new(RetrievalEngine::from_bundled_corpus())))
}

/// The local stand-in without latency, counting its calls; it fails with a 503 while `fail` is set.
#[derive(Debug)]
struct TestGenerator {
    model: String,
    inner: LocalGenerator,
    calls: AtomicUsize,
    fail: AtomicBool,
}

impl TestGenerator {
    fn new(model: &str) -> Arc<TestGenerator> {
        Arc::new(TestGenerator {
            model: model.to_string(),
            inner: LocalGenerator::new().without_latency(),
            calls: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl AnswerGenerator for TestGenerator {
    fn model(&self) -> &str {
        &self.model
    }

    fn is_stand_in(&self) -> bool {
        true
    }

    fn generate<'a>(
        &'a self,
        question: &'a str,
        context: &'a [Document],
    ) -> BoxFuture<'a, Result<Answer, GenerateError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(GenerateError::Status { status: 503, body: "overloaded".into() });
            }
            let mut answer = self.inner.generate(question, context).await?;
            answer.model = self.model.clone();
            Ok(answer)
        })
    }

    /// The stand-in's chunks under this model's name; while `fail` is set, two words and then a 503.
    fn generate_stream(
        &self,
        question: &str,
        context: &[Document],
    ) -> BoxStream<'static, Result<AnswerChunk, GenerateError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let model = self.model.clone();
        let chunks = self.inner.generate_stream(question, context).map(move |chunk| match chunk {
            Ok(AnswerChunk::End { sources, generated_by_stand_in, usage, .. }) => {
                Ok(AnswerChunk::End { model: model.clone(), sources, generated_by_stand_in, usage })
            }
            other => other,
        });
        if self.fail.load(Ordering::SeqCst) {
            let overloaded = GenerateError::Status { status: 503, body: "overloaded".into() };
            return chunks.take(2).chain(stream::once(async move { Err(overloaded) })).boxed();
        }
        chunks.boxed()
    }
}

fn pipeline(cache: &PgCache, generator: Arc<dyn AnswerGenerator>) -> Orchestrator {
    Orchestrator::new(Retriever::new(engine(), cache.clone()), generator, cache.clone())
}

/// Runs `call` and returns its output with what the retrieval and answer namespaces did meanwhile.
async fn observed<T>(cache: &PgCache, call: impl std::future::Future<Output = T>) -> (T, Lookup, Lookup) {
    let before = CounterSnapshot::take(cache).await.expect("stats");
    let value = call.await;
    let after = CounterSnapshot::take(cache).await.expect("stats");
    (value, after.lookup_since(&before, RETRIEVAL_NAMESPACE), after.lookup_since(&before, ANSWER_NAMESPACE))
}

async fn rows(pool: &PgPool, namespace: &str) -> Vec<(String, serde_json::Value)> {
    sqlx::query_as("SELECT cache_key, data FROM cache_entries WHERE cache_key LIKE $1 ORDER BY cache_key")
        .bind(format!("{namespace}:%"))
        .fetch_all(pool)
        .await
        .expect("read the table")
}

async fn counts(cache: &PgCache, namespace: &str) -> ProcessCounts {
    CounterSnapshot::take(cache).await.expect("stats").namespace(namespace)
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn process_query_misses_then_hits(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    let generator = TestGenerator::new("test-model");
    let rag = pipeline(&cache, generator.clone());

    let (first, retrieval, answer) = observed(&cache, rag.process_query(QUESTION)).await;
    let first = first?;
    assert_eq!((retrieval, answer), (Lookup::Miss, Lookup::Miss));
    assert_eq!(generator.calls(), 1);
    assert!(first.sources.contains(&"pg-002".to_string()), "{first:?}");

    let (second, retrieval, answer) = observed(&cache, rag.process_query(QUESTION)).await;
    assert_eq!((retrieval, answer), (Lookup::NotConsulted, Lookup::Hit));
    assert_eq!(second?, first);
    assert_eq!(generator.calls(), 1, "a hit does not call the generator");

    let answer_counts = counts(&cache, ANSWER_NAMESPACE).await;
    assert_eq!((answer_counts.hits, answer_counts.misses, answer_counts.executions), (1, 1, 1));
    let retrieval_counts = counts(&cache, RETRIEVAL_NAMESPACE).await;
    assert_eq!((retrieval_counts.hits, retrieval_counts.misses, retrieval_counts.executions), (0, 1, 1));

    // retrieve is memoized on its own: the orchestrator's search is a hit when called directly.
    let (direct, retrieval, answer) = observed(&cache, rag.retriever().retrieve(QUESTION, CONTEXT_DOCUMENTS)).await;
    assert_eq!((retrieval, answer), (Lookup::Hit, Lookup::NotConsulted));
    assert_eq!(direct?, engine().search(QUESTION, CONTEXT_DOCUMENTS)?);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn stored_rows_have_the_expected_shapes(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    let rag = pipeline(&cache, Arc::new(LocalGenerator::new().without_latency()));
    let answer = rag.process_query(QUESTION).await?;

    let shaped: Vec<bool> = sqlx::query_scalar(
        "SELECT data ? 'results' AND data ? 'total_found' FROM cache_entries WHERE cache_key LIKE 'retrieval:%'",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(shaped, vec![true]);

    let retrieval_rows = rows(&pool, RETRIEVAL_NAMESPACE).await;
    let [(key, data)] = retrieval_rows.as_slice() else { panic!("one retrieval row, got {retrieval_rows:?}") };
    assert_eq!(key, &rag.retriever().retrieve_cache_key(QUESTION, CONTEXT_DOCUMENTS)?);
    let object_keys: BTreeSet<&str> = data.as_object().expect("an object").keys().map(String::as_str).collect();
    assert_eq!(object_keys, BTreeSet::from(["results", "total_found"]));
    let stored: RetrievalResult = serde_json::from_value(data.clone())?;
    let expected = engine().search(QUESTION, CONTEXT_DOCUMENTS)?;
    assert_eq!(stored, expected, "the row holds exactly what the search returned");
    assert_eq!(stored.results.len(), CONTEXT_DOCUMENTS);
    assert!(stored.total_found >= stored.results.len());
    let first_hit = data["results"][0].as_object().expect("a result object");
    let hit_keys: BTreeSet<&str> = first_hit.keys().map(String::as_str).collect();
    assert_eq!(hit_keys, BTreeSet::from(["bm25", "id", "score", "snippet", "title", "vector"]));

    let answer_rows = rows(&pool, ANSWER_NAMESPACE).await;
    let [(key, data)] = answer_rows.as_slice() else { panic!("one answer row, got {answer_rows:?}") };
    assert_eq!(key, &rag.process_query_cache_key(QUESTION)?);
    assert_eq!(data, &serde_json::to_value(&answer)?);
    let object_keys: BTreeSet<&str> = data.as_object().expect("an object").keys().map(String::as_str).collect();
    assert_eq!(
        object_keys,
        BTreeSet::from(["generated_by_stand_in", "generation_ms", "model", "question", "sources", "text", "usage"])
    );
    assert_eq!(data["model"], LOCAL_MODEL);
    assert_eq!(data["generated_by_stand_in"], true);

    // The TTLs of the attributes: 30 minutes for retrieval, 2 hours for answers.
    let ttls: Vec<(String, f64)> = sqlx::query_as(
        "SELECT split_part(cache_key, ':', 1), EXTRACT(EPOCH FROM expires_at - created_at)::float8 \
         FROM cache_entries ORDER BY 1",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(ttls, vec![("answer".to_string(), 7200.0), ("retrieval".to_string(), 1800.0)]);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_fresh_cache_on_the_same_pool_sees_the_entries(pool: PgPool) -> TestResult {
    let first = cache_on(pool.clone()).await;
    let answer = pipeline(&first, TestGenerator::new("test-model")).process_query(QUESTION).await?;

    // As after a restart: a new PgCache (new counters, no shared state) and a new generator.
    let restarted = cache_on(pool.clone()).await;
    let generator = TestGenerator::new("test-model");
    let rag = pipeline(&restarted, generator.clone());
    let (again, retrieval, answer_lookup) = observed(&restarted, rag.process_query(QUESTION)).await;
    assert_eq!((retrieval, answer_lookup), (Lookup::NotConsulted, Lookup::Hit));
    assert_eq!(again?, answer);
    assert_eq!(generator.calls(), 0);
    let counts = counts(&restarted, ANSWER_NAMESPACE).await;
    assert_eq!((counts.hits, counts.misses), (1, 0));
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn generator_errors_are_not_cached(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    let generator = TestGenerator::new("flaky-model");
    generator.fail.store(true, Ordering::SeqCst);
    let rag = pipeline(&cache, generator.clone());

    let (outcome, retrieval, answer) = observed(&cache, rag.process_query(QUESTION)).await;
    assert!(matches!(outcome, Err(PipelineError::Generate(GenerateError::Status { status: 503, .. }))), "{outcome:?}");
    assert_eq!((retrieval, answer), (Lookup::Miss, Lookup::Miss));
    assert!(rows(&pool, ANSWER_NAMESPACE).await.is_empty(), "an error is not stored");
    assert_eq!(rows(&pool, RETRIEVAL_NAMESPACE).await.len(), 1, "the search succeeded and is stored");

    // The next call tries again: the answer misses again, the search is now a hit.
    let (outcome, retrieval, answer) = observed(&cache, rag.process_query(QUESTION)).await;
    assert!(outcome.is_err());
    assert_eq!((retrieval, answer), (Lookup::Hit, Lookup::Miss));
    assert_eq!(generator.calls(), 2);

    // Once the generator recovers, its answer is stored and served.
    generator.fail.store(false, Ordering::SeqCst);
    let (recovered, _, answer) = observed(&cache, rag.process_query(QUESTION)).await;
    let recovered = recovered?;
    assert_eq!(answer, Lookup::Miss);
    let (served, _, answer) = observed(&cache, rag.process_query(QUESTION)).await;
    assert_eq!(answer, Lookup::Hit);
    assert_eq!(served?, recovered);
    assert_eq!(generator.calls(), 3);
    assert_eq!(rows(&pool, ANSWER_NAMESPACE).await.len(), 1);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn retrieval_errors_are_not_cached(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    let generator = TestGenerator::new("test-model");
    let rag = pipeline(&cache, generator.clone());

    let outcome = rag.process_query("  ?!  ").await;
    assert!(matches!(outcome, Err(PipelineError::Retrieval(RetrievalError::EmptyQuery))), "{outcome:?}");
    let outcome = rag.retriever().retrieve(QUESTION, 0).await;
    assert_eq!(outcome, Err(RetrievalError::ZeroMaxResults));
    assert_eq!(generator.calls(), 0);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_entries").fetch_one(&pool).await?;
    assert_eq!(total, 0);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn invalidating_an_answer_keeps_its_retrieval(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    let generator = TestGenerator::new("test-model");
    let rag = pipeline(&cache, generator.clone());
    rag.process_query(QUESTION).await?;

    assert!(rag.process_query_invalidate(QUESTION).await?);
    assert!(!rag.process_query_invalidate(QUESTION).await?, "already gone");
    let (_, retrieval, answer) = observed(&cache, rag.process_query(QUESTION)).await;
    assert_eq!((retrieval, answer), (Lookup::Hit, Lookup::Miss));
    assert_eq!(generator.calls(), 2);

    // Purging the retrieval namespace leaves the answers; the next search recomputes.
    assert_eq!(cache.delete_namespace(RETRIEVAL_NAMESPACE).await?, 1);
    let (_, retrieval, answer) = observed(&cache, rag.process_query(QUESTION)).await;
    assert_eq!((retrieval, answer), (Lookup::NotConsulted, Lookup::Hit));
    let (_, retrieval, _) = observed(&cache, rag.retriever().retrieve(QUESTION, CONTEXT_DOCUMENTS)).await;
    assert_eq!(retrieval, Lookup::Miss);

    // A refresh regenerates and overwrites without a lookup.
    let refreshed = rag.process_query_refresh(QUESTION).await?;
    assert_eq!(generator.calls(), 3);
    let (served, _, answer) = observed(&cache, rag.process_query(QUESTION)).await;
    assert_eq!((served?, answer), (refreshed, Lookup::Hit));
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn answers_are_keyed_by_model(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    let small = TestGenerator::new("small-model");
    let large = TestGenerator::new("large-model");
    let a = pipeline(&cache, small.clone()).process_query(QUESTION).await?;

    let rag = pipeline(&cache, large.clone());
    let (b, retrieval, answer) = observed(&cache, rag.process_query(QUESTION)).await;
    assert_eq!((retrieval, answer), (Lookup::Hit, Lookup::Miss), "same search, another model's answer");
    let b = b?;
    assert_eq!((a.model.as_str(), b.model.as_str()), ("small-model", "large-model"));
    assert_eq!((small.calls(), large.calls()), (1, 1));
    assert_ne!(pipeline(&cache, small).process_query_cache_key(QUESTION)?, rag.process_query_cache_key(QUESTION)?);
    assert_eq!(rows(&pool, ANSWER_NAMESPACE).await.len(), 2);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn the_demo_turns_misses_into_hits(pool: PgPool) -> TestResult {
    let queries = ["What is MVCC in PostgreSQL?", "Why do caches need a TTL?", "How do tokio timeouts work?"];
    let mut options = DemoOptions::new(engine(), Arc::new(LocalGenerator::new().without_latency()));
    options.queries = queries.iter().map(|q| q.to_string()).collect();
    // Entries left by an earlier run: the demo must clear them first.
    let stale = cache_on(pool.clone()).await;
    pipeline(&stale, Arc::new(LocalGenerator::new().without_latency())).process_query(queries[0]).await?;

    // Each call builds a new cache over a new pool on the test's database, as the demo does after a "restart".
    let connect_options = pool.connect_options();
    let connect = || {
        let pool = PgPoolOptions::new().max_connections(4).connect_lazy_with((*connect_options).clone());
        PgCache::builder().pool(pool).sweep_interval(None).build()
    };
    let mut out = Vec::new();
    let report = demo::run(options, connect, &mut out).await?;
    let text = String::from_utf8(out)?;

    assert_eq!(report.cleared, (1, 1), "{text}");
    let lookups = |pass: usize| -> Vec<(Lookup, Lookup)> {
        report.passes[pass].calls.iter().map(|c| (c.retrieval, c.answer)).collect()
    };
    assert_eq!(lookups(0), vec![(Lookup::Miss, Lookup::Miss); 3], "{text}");
    assert_eq!(lookups(1), vec![(Lookup::NotConsulted, Lookup::Hit); 3], "{text}");
    // Between passes 2 and 3 a document cited by some queries changed in the `documents` table: its trigger
    // removed the retrieval and answer entries of exactly those queries, and only at COMMIT.
    let change = report.source_change.as_ref().expect("a document was edited");
    let cited = change.citing.len();
    assert!((1..3).contains(&cited), "cited by some queries but not all: {change:?}\n{text}");
    // Each citing query's retrieval and answer, and the first query's streamed answer if it cites it.
    let streamed_cites = u64::from(change.citing.contains(&0));
    assert_eq!(
        (change.removed_on_rollback, change.removed_on_commit),
        (0, 2 * cited as u64 + streamed_cites),
        "{text}"
    );
    let expected: Vec<(Lookup, Lookup)> = (0..3)
        .map(|i| {
            if change.citing.contains(&i) {
                (Lookup::Miss, Lookup::Miss)
            } else {
                (Lookup::NotConsulted, Lookup::Hit)
            }
        })
        .collect();
    assert_eq!(lookups(2), expected, "after the edit and the restart\n{text}");
    assert!(text.contains("(exactly those that cite"), "{text}");
    assert!(report.passes.iter().flat_map(|p| &p.calls).all(|c| matches!(c.outcome, Some(Ok(_)))));
    assert!(report.passes[1].calls.iter().all(|c| c.speedup().is_some()));

    let inv = &report.invalidation;
    assert!(inv.answer_removed);
    assert_eq!((inv.after_invalidate.retrieval, inv.after_invalidate.answer), (Lookup::Hit, Lookup::Miss));
    assert_eq!(inv.retrieval_purged, 3);
    assert_eq!(
        (inv.retrieve_after_purge.retrieval, inv.retrieve_after_purge.answer),
        (Lookup::Miss, Lookup::NotConsulted)
    );
    assert_eq!((inv.answer_after_purge.retrieval, inv.answer_after_purge.answer), (Lookup::NotConsulted, Lookup::Hit));

    // The first query's answer streamed in pass 1 (generated, recorded), replayed in pass 2, chunk for chunk.
    let [generated, replayed] = report.streams.as_slice() else { panic!("two streams: {:?}", report.streams) };
    assert_eq!((generated.lookup, replayed.lookup), (Lookup::Miss, Lookup::Hit), "{text}");
    assert!(generated.error.is_none() && generated.chunks.len() > 2, "{generated:?}");
    assert_eq!(replayed.chunks, generated.chunks);
    let streamed = AnswerChunk::assemble(queries[0], &generated.chunks, 0).expect("a whole answer");
    let Some(Ok(whole)) = &report.passes[0].calls[0].outcome else { panic!("pass 1 answered") };
    assert_eq!(streamed.text, whole.text, "the stream and the answer agree");
    assert!(text.contains("miss: generated while you read it") && text.contains("hit: replayed from the cache"));

    let [retrieval, answer, streams] = report.namespaces.as_slice() else {
        panic!("three namespaces: {:?}", report.namespaces)
    };
    assert_eq!(streams.namespace, ANSWER_STREAM_NAMESPACE);
    assert_eq!((streams.counts.hits, streams.counts.misses), (1, 1));
    assert!(streams.counts.tokens_saved > 0, "the replay saved the stream's tokens: {:?}", streams.counts);
    assert_eq!(retrieval.namespace, RETRIEVAL_NAMESPACE);
    let cited = cited as u64;
    // Retrieval hits: the first query's stream in pass 1, and its answer recomputed after its invalidation.
    assert_eq!((retrieval.counts.hits, retrieval.counts.misses, retrieval.active_entries), (2, 4 + cited, 1));
    assert_eq!(answer.namespace, ANSWER_NAMESPACE);
    assert_eq!((answer.counts.hits, answer.counts.misses, answer.active_entries), (7 - cited, 4 + cited, 3));
    assert!(answer.counts.compute_saved_us > 0, "answer hits saved the generator's time");
    assert!(answer.counts.tokens_saved > 0 && answer.counts.cost_saved > 0, "and its tokens: {:?}", answer.counts);

    for expected in [
        "LOCAL STAND-IN, not a language model",
        "Pass 1 of 3",
        "Pass 3 of 3: after the edit and a restart",
        "ROLLBACK  ->  0 cache entries removed",
        "time saved",
        "tokens saved",
        "(tokens estimated by the stand-in, example prices)",
        "tokens estimated by the stand-in, example prices (examples/prices.example.json",
        "data keys: results, total_found",
        "ttl 30m",
        "ttl 2h",
        "Cache stats",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    Ok(())
}

/// A streamed answer: the first call streams the generator's chunks and stores them (tagged with its
/// documents, with its usage), the second replays the same chunks without calling the generator, and the
/// chunks make up the same answer as `process_query`'s.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn streamed_answers_are_recorded_then_replayed(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    let generator = TestGenerator::new("test-model");
    let rag = pipeline(&cache, generator.clone());
    let streamed: Vec<AnswerChunk> = rag.stream_answer(QUESTION).map(Result::unwrap).collect().await;
    assert_eq!(generator.calls(), 1);
    assert!(streamed.len() > 2 && matches!(streamed.last(), Some(AnswerChunk::End { .. })), "{streamed:?}");
    let stored = rows(&pool, ANSWER_STREAM_NAMESPACE).await;
    assert_eq!(stored.len(), 1, "one entry for the whole stream");

    let replayed: Vec<AnswerChunk> = rag.stream_answer(QUESTION).map(Result::unwrap).collect().await;
    assert_eq!(replayed, streamed, "chunk for chunk");
    assert_eq!(generator.calls(), 1, "a replay does not call the generator");
    let counted = counts(&cache, ANSWER_STREAM_NAMESPACE).await;
    assert_eq!((counted.hits, counted.executions), (1, 1));
    assert!(counted.tokens_saved > 0, "the replay counts the answer's tokens as saved: {counted:?}");

    let whole = rag.process_query(QUESTION).await?;
    let assembled = AnswerChunk::assemble(QUESTION, &streamed, whole.generation_ms).expect("an end chunk");
    assert_eq!(assembled, whole, "the stream and the whole answer agree");

    // The retrieval's document tags reach the stream's entry: invalidating a cited document removes it.
    let cited = whole.sources.first().expect("a cited document");
    cache.invalidate_tag(&format!("doc:{cited}")).await?;
    assert!(rows(&pool, ANSWER_STREAM_NAMESPACE).await.is_empty());
    Ok(())
}

/// A generator stream that fails after two chunks stores nothing: the caller sees the chunks and the
/// error, and the next call generates again.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_failed_stream_is_not_stored(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    let generator = TestGenerator::new("test-model");
    let rag = pipeline(&cache, generator.clone());
    generator.fail.store(true, Ordering::SeqCst);
    let items: Vec<Result<AnswerChunk, PipelineError>> = rag.stream_answer(QUESTION).collect().await;
    assert_eq!(items.len(), 3, "two chunks, then the error");
    assert!(matches!(items.last(), Some(Err(PipelineError::Generate(GenerateError::Status { status: 503, .. })))));
    assert!(rows(&pool, ANSWER_STREAM_NAMESPACE).await.is_empty());

    generator.fail.store(false, Ordering::SeqCst);
    let chunks: Vec<AnswerChunk> = rag.stream_answer(QUESTION).map(Result::unwrap).collect().await;
    assert!(matches!(chunks.last(), Some(AnswerChunk::End { .. })));
    assert_eq!(generator.calls(), 2, "the failed stream left nothing to replay");
    assert_eq!(rows(&pool, ANSWER_STREAM_NAMESPACE).await.len(), 1);
    Ok(())
}
