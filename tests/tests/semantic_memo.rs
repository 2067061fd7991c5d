//! `#[pg_cached(similar(question))]` on a real PostgreSQL with the real model: a paraphrase is answered by
//! the stored answer, every other argument stays an exact part of the key, another model's entries are
//! never compared, every invalidation (key, namespace, tag, trigger) reaches semantic entries, and under 500
//! concurrent callers the body runs once and every paraphrase hits. Skips without the model (see
//! `integration_tests::model`); build optimized (`--release`) for the concurrency test's 1,000 embeddings.

use cache_runtime::semantic::{EmbedFuture, Embedder, MiniLm};
use cache_runtime::{pg_cached, tag, PgCache};
use integration_tests::model::minilm;
use sqlx::PgPool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const STORED: &str = "How do I reset my password?";
const PARAPHRASE: &str = "How can I reset my password?";
/// Further from `STORED` (cosine 0.94 with all-MiniLM-L6-v2), but still above the default threshold.
const REWORDED: &str = "I forgot my password, how do I reset it?";

struct Rag {
    cache: PgCache,
    calls: AtomicUsize,
}

impl Rag {
    async fn new(pool: PgPool, embedder: Option<Arc<dyn Embedder>>) -> Arc<Rag> {
        let builder = PgCache::builder().pool(pool).sweep_interval(None);
        let builder = match embedder {
            Some(embedder) => builder.embedder(embedder),
            None => builder,
        };
        Arc::new(Rag { cache: builder.build().await.expect("no I/O"), calls: AtomicUsize::new(0) })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The answer names the call that computed it, so that a test sees which computation it was served.
    #[pg_cached(namespace = "answer", ttl = "2h", similar(question), cache = self.cache, tags("corpus"))]
    async fn answer(&self, question: &str, model: &str, top_k: usize) -> Result<String, String> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tag(format!("doc:{top_k}"));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        Ok(format!("answer #{n} to {question:?} by {model} from {top_k} documents"))
    }

    #[pg_cached(namespace = "strict", similar(question, threshold = 0.99), cache = self.cache)]
    async fn strict(&self, question: String) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        format!("strict answer to {question:?}")
    }
}

fn model(test: &str) -> Option<Arc<dyn Embedder>> {
    minilm(test).map(|m| Arc::new(m) as Arc<dyn Embedder>)
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_paraphrase_is_served_and_other_arguments_stay_exact(pool: PgPool) -> TestResult {
    let Some(model) = model("a_paraphrase_is_served_and_other_arguments_stay_exact") else { return Ok(()) };
    let rag = Rag::new(pool, Some(model)).await;
    let first = rag.answer(STORED, "small", 5).await?;
    assert_eq!(rag.calls(), 1);
    assert_eq!(rag.answer(PARAPHRASE, "small", 5).await?, first, "the paraphrase gets the stored answer");
    assert_eq!(rag.answer(STORED, "small", 5).await?, first, "the exact text too");
    assert_eq!(rag.answer(REWORDED, "small", 5).await?, first, "a rewording above the threshold too");
    assert_eq!(rag.calls(), 1);
    // Another model or top_k is another scope: computed, not served.
    assert!(rag.answer(PARAPHRASE, "large", 5).await?.starts_with("answer #2"));
    assert!(rag.answer(PARAPHRASE, "small", 6).await?.starts_with("answer #3"));
    // An unrelated question is a miss.
    assert!(rag.answer("What is the capital of France?", "small", 5).await?.starts_with("answer #4"));
    // The function's own threshold: 0.99 does not let the rewording through.
    rag.strict(STORED.to_owned()).await;
    rag.strict(REWORDED.to_owned()).await;
    assert_eq!(rag.calls(), 6);
    Ok(())
}

/// The same model under another id, as a new version of a model would be.
#[derive(Debug)]
struct Renamed(MiniLm);

impl Embedder for Renamed {
    fn model_id(&self) -> &str {
        "all-MiniLM-L6-v2@another-version"
    }
    fn dimensions(&self) -> usize {
        self.0.dimensions()
    }
    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
        self.0.embed(texts)
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn another_model_never_matches_and_no_model_means_exact_keys(pool: PgPool) -> TestResult {
    let Some(model) = minilm("another_model_never_matches_and_no_model_means_exact_keys") else { return Ok(()) };
    let first = Rag::new(pool.clone(), Some(Arc::new(model.clone()))).await;
    first.answer(STORED, "small", 5).await?;
    let renamed = Rag::new(pool.clone(), Some(Arc::new(Renamed(model)))).await;
    renamed.answer(PARAPHRASE, "small", 5).await?;
    assert_eq!(renamed.calls(), 1, "vectors of another model are not compared");
    // Without an embedder: exact keys only, and no failure.
    let plain = Rag::new(pool, None).await;
    let exact = plain.answer(STORED, "small", 5).await?;
    assert!(exact.starts_with("answer #1 to") && plain.calls() == 0, "the exact key still hits: {exact}");
    plain.answer("How could I reset my password?", "small", 5).await?;
    assert_eq!(plain.calls(), 1);
    Ok(())
}

/// Stores the answer, checks that the paraphrase hits, runs `invalidate`, and checks that the paraphrase
/// then runs the body.
async fn invalidated_by<F, Fut>(rag: &Rag, invalidate: F) -> TestResult
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = TestResult>,
{
    let before = rag.calls();
    rag.answer(STORED, "small", 7).await?;
    rag.answer(PARAPHRASE, "small", 7).await?;
    assert_eq!(rag.calls(), before + 1, "stored, then served to the paraphrase");
    invalidate().await?;
    rag.answer(PARAPHRASE, "small", 7).await?;
    assert_eq!(rag.calls(), before + 2, "after the invalidation the paraphrase computes");
    // Leave nothing for the next round.
    rag.cache.delete_namespace("answer").await?;
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn every_invalidation_reaches_semantic_entries(pool: PgPool) -> TestResult {
    let Some(model) = model("every_invalidation_reaches_semantic_entries") else { return Ok(()) };
    let rag = Rag::new(pool.clone(), Some(model)).await;
    let vectors =
        || async { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cache_semantic").fetch_one(&pool).await };

    invalidated_by(&rag, || async {
        assert!(rag.answer_invalidate(STORED, "small", 7).await?, "the stored question's entry was there");
        Ok(())
    })
    .await?;
    invalidated_by(&rag, || async {
        rag.cache.delete_namespace("answer").await?;
        Ok(())
    })
    .await?;
    for tag in ["corpus", "doc:7"] {
        invalidated_by(&rag, || async {
            assert!(rag.cache.invalidate_tag(tag).await? >= 1);
            Ok(())
        })
        .await?;
    }

    sqlx::query("CREATE TABLE documents (id int PRIMARY KEY, body text)").execute(&pool).await?;
    sqlx::query("INSERT INTO documents VALUES (7, 'v1')").execute(&pool).await?;
    rag.cache.invalidate_on_change("documents", "id", "doc:").await?;
    invalidated_by(&rag, || async {
        sqlx::query("UPDATE documents SET body = 'v2' WHERE id = 7").execute(&pool).await?;
        Ok(())
    })
    .await?;
    assert_eq!(vectors().await?, 0, "every vector went with its entry");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn five_hundred_callers_one_computation_then_five_hundred_paraphrase_hits(pool: PgPool) -> TestResult {
    let Some(model) = model("five_hundred_callers_one_computation_then_five_hundred_paraphrase_hits") else {
        return Ok(());
    };
    let rag = Rag::new(pool, Some(model)).await;
    let cold = futures_util::future::join_all((0..500).map(|_| {
        let rag = Arc::clone(&rag);
        tokio::spawn(async move { rag.answer(STORED, "small", 5).await })
    }))
    .await;
    assert_eq!(rag.calls(), 1, "500 callers of one cold question: one computation");
    let expected = format!("answer #1 to {STORED:?} by small from 5 documents");
    for result in cold {
        assert_eq!(result??, expected);
    }

    let paraphrases = [
        PARAPHRASE,
        "How do I reset my password",
        "how do i reset my password?",
        "How can I reset my password",
        "How do I reset my account password?",
    ];
    let warm = futures_util::future::join_all((0..500).map(|i| {
        let rag = Arc::clone(&rag);
        let question = paraphrases[i % paraphrases.len()];
        tokio::spawn(async move { rag.answer(question, "small", 5).await })
    }))
    .await;
    for result in warm {
        assert_eq!(result??, expected, "every paraphrase is served the stored answer");
    }
    assert_eq!(rag.calls(), 1, "and none computed");
    Ok(())
}

/// A memoized stream with `similar(question)`: one call streams and records, a paraphrase replays the same
/// chunks without running the body, and an unrelated question streams anew.
struct Streamer {
    cache: PgCache,
    calls: AtomicUsize,
}

impl Streamer {
    #[pg_cached(namespace = "streamed", ttl = "2h", stream, similar(question), cache = self.cache)]
    fn answer(&self, question: &str) -> impl futures_util::Stream<Item = Result<String, String>> + Send + '_ {
        use futures_util::StreamExt;
        // Counted when the stream is read (the body itself runs on every call, to build the stream).
        let question = question.to_owned();
        futures_util::stream::once(async move { self.calls.fetch_add(1, Ordering::SeqCst) + 1 }).flat_map(move |n| {
            let words: Vec<Result<String, String>> =
                format!("answer #{n} to {question}").split(' ').map(|w| Ok(w.to_owned())).collect();
            futures_util::stream::iter(words)
        })
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_paraphrase_replays_the_stored_stream(pool: PgPool) -> TestResult {
    use futures_util::StreamExt;
    let Some(model) = model("a_paraphrase_replays_the_stored_stream") else { return Ok(()) };
    let cache = PgCache::builder().pool(pool.clone()).sweep_interval(None).embedder(model).build().await?;
    let streamer = Streamer { cache, calls: AtomicUsize::new(0) };
    let read = |question: &'static str| streamer.answer(question).map(Result::unwrap).collect::<Vec<String>>();
    let first = read(STORED).await;
    assert_eq!(first.first().map(String::as_str), Some("answer"));
    assert_eq!(streamer.calls.load(Ordering::SeqCst), 1);
    let vectors: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_semantic").fetch_one(&pool).await?;
    assert_eq!(vectors, 1, "the recording keeps its question's vector");

    assert_eq!(read(PARAPHRASE).await, first, "the paraphrase replays the recording, chunk for chunk");
    assert_eq!(streamer.calls.load(Ordering::SeqCst), 1);
    let unrelated = read("What is the capital of France?").await;
    assert!(unrelated.join(" ").starts_with("answer #2"), "{unrelated:?}");
    let streamed = streamer.cache.process_stats();
    assert_eq!((streamed.hits, streamed.executions), (1, 2), "{streamed:?}");
    Ok(())
}
