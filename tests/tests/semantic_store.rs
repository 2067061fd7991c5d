//! Semantic entries through the API (`set_similar`, `get_similar`) on a real PostgreSQL with the real model:
//! paraphrases hit, other scopes and other models never do, every removal of the entry takes its vector,
//! and a cache without an embedder says so with a typed error. Tests that need the model skip without it
//! (see `integration_tests::model`).

use cache_runtime::semantic::{EmbedFuture, Embedder, MiniLm};
use cache_runtime::{CacheError, PgCache, DEFAULT_SIMILARITY_THRESHOLD};
use integration_tests::model::minilm;
use sqlx::PgPool;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn semantic_cache(pool: PgPool, model: MiniLm) -> PgCache {
    PgCache::builder().pool(pool).sweep_interval(None).embedder(model).build().await.expect("no I/O")
}

async fn semantic_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM cache_semantic").fetch_one(pool).await.expect("count")
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_paraphrase_hits_and_an_unrelated_question_misses(pool: PgPool) -> TestResult {
    let Some(model) = minilm("a_paraphrase_hits_and_an_unrelated_question_misses") else { return Ok(()) };
    let cache = semantic_cache(pool.clone(), model).await;
    let stored = "How do I reset my password?";
    cache.set_similar("answer", "gpt-4o|5", stored, &"Settings, then Security", None).await?;
    assert_eq!(semantic_rows(&pool).await, 1);

    let exact = cache.get_similar::<String>("answer", "gpt-4o|5", stored).await?.expect("the exact text hits");
    assert_eq!((exact.value.as_str(), exact.score, exact.text.as_str()), ("Settings, then Security", 1.0, stored));

    let hit = cache.get_similar::<String>("answer", "gpt-4o|5", "How can I reset my password?").await?;
    let hit = hit.expect("a paraphrase hits");
    assert_eq!(hit.value, "Settings, then Security");
    assert_eq!(hit.text, stored);
    assert!(hit.score >= DEFAULT_SIMILARITY_THRESHOLD && hit.score < 1.0, "score {}", hit.score);

    for other in ["What is the capital of France?", "How do I delete my account?"] {
        let miss = cache.get_similar::<String>("answer", "gpt-4o|5", other).await?;
        assert!(miss.is_none(), "{other:?} must not hit: {miss:?}");
    }
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn another_scope_or_namespace_never_hits(pool: PgPool) -> TestResult {
    let Some(model) = minilm("another_scope_or_namespace_never_hits") else { return Ok(()) };
    let cache = semantic_cache(pool, model).await;
    let question = "How do I reset my password?";
    cache.set_similar("answer", "gpt-4o|5", question, &1, None).await?;
    // Not even the exact text: the scope is part of the key and of the vectors compared.
    for (namespace, scope) in [("answer", "gpt-4o|6"), ("answer", "llama|5"), ("answer", ""), ("other", "gpt-4o|5")] {
        for text in [question, "How can I reset my password?"] {
            let found = cache.get_similar::<i32>(namespace, scope, text).await?;
            assert!(found.is_none(), "{namespace}/{scope}/{text:?}: {found:?}");
        }
    }
    Ok(())
}

/// The same model under another id, as a new version of a model would be.
#[derive(Debug)]
struct Renamed(MiniLm, String);

impl Embedder for Renamed {
    fn model_id(&self) -> &str {
        &self.1
    }
    fn dimensions(&self) -> usize {
        self.0.dimensions()
    }
    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
        self.0.embed(texts)
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn vectors_of_another_model_are_never_compared(pool: PgPool) -> TestResult {
    let Some(model) = minilm("vectors_of_another_model_are_never_compared") else { return Ok(()) };
    let first = semantic_cache(pool.clone(), model.clone()).await;
    let renamed = Renamed(model, "all-MiniLM-L6-v2@another-version".into());
    let second = PgCache::builder().pool(pool).sweep_interval(None).embedder(renamed).build().await?;
    first.set_similar("answer", "s", "How do I reset my password?", &1, None).await?;
    // The exact text is still an exact hit (same key, whatever the model); a paraphrase is not compared.
    assert!(second.get_similar::<i32>("answer", "s", "How do I reset my password?").await?.is_some());
    assert!(second.get_similar::<i32>("answer", "s", "How can I reset my password?").await?.is_none());
    assert!(first.get_similar::<i32>("answer", "s", "How can I reset my password?").await?.is_some());
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn removing_the_entry_removes_its_vector(pool: PgPool) -> TestResult {
    let Some(model) = minilm("removing_the_entry_removes_its_vector") else { return Ok(()) };
    let cache = semantic_cache(pool.clone(), model).await;
    let paraphrase = "How can I reset my password?";
    cache.set_similar("answer", "s", "How do I reset my password?", &1, None).await?;
    assert!(cache.get_similar::<i32>("answer", "s", paraphrase).await?.is_some());
    cache.delete_namespace("answer").await?;
    assert_eq!(semantic_rows(&pool).await, 0, "the namespace purge cascades to the vectors");
    assert!(cache.get_similar::<i32>("answer", "s", paraphrase).await?.is_none());

    // Expiry: an expired entry is never served by meaning either, and the sweep takes its vector.
    cache
        .set_similar("answer", "s", "How do I reset my password?", &2, Some(std::time::Duration::from_millis(1).into()))
        .await?;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(cache.get_similar::<i32>("answer", "s", paraphrase).await?.is_none());
    cache.clear_expired().await?;
    assert_eq!(semantic_rows(&pool).await, 0, "the expiry sweep cascades to the vectors");

    // Another process's write is found here (the catch-up), and the entry's deletion there is seen here.
    let other = semantic_cache(pool.clone(), minilm("other process").expect("loaded above")).await;
    other.set_similar("answer", "s", "How do I reset my password?", &3, None).await?;
    assert_eq!(cache.get_similar::<i32>("answer", "s", paraphrase).await?.map(|h| h.value), Some(3));
    let key: String = sqlx::query_scalar("SELECT cache_key FROM cache_semantic").fetch_one(&pool).await?;
    assert!(other.delete(&key).await?);
    assert!(cache.get_similar::<i32>("answer", "s", paraphrase).await?.is_none());
    assert_eq!(semantic_rows(&pool).await, 0);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn without_an_embedder_the_api_says_so(pool: PgPool) -> TestResult {
    let cache = integration_tests::cache_on(pool).await;
    let set = cache.set_similar("answer", "s", "q", &1, None).await.unwrap_err();
    assert!(matches!(&set, CacheError::Config(m) if m.contains("embedder")), "{set}");
    let get = cache.get_similar::<i32>("answer", "s", "q").await.unwrap_err();
    assert!(matches!(&get, CacheError::Config(m) if m.contains("embedder")), "{get}");
    for bad in [0.0, -0.5, 1.01, f32::NAN] {
        let built = PgCache::builder().database_url("postgres://localhost/x").similarity_threshold(bad).build_lazy();
        assert!(matches!(&built, Err(CacheError::Config(m)) if m.contains("similarity_threshold")), "{bad}");
    }
    assert!(PgCache::builder().database_url("postgres://localhost/x").similarity_threshold(1.0).build_lazy().is_ok());
    Ok(())
}
