//! The companions: `_cache_key`, `_invalidate` and `_refresh`, for a free function and a method.
use cache_runtime::{pg_cached, CacheError, PgCache};

#[pg_cached(namespace = "retrieval", skip(trace_id))]
pub async fn retrieve(query: &str, max_results: usize, trace_id: u64) -> Vec<String> {
    let _ = trace_id;
    vec![query.to_owned(); max_results]
}

pub struct Orchestrator {
    cache: Option<PgCache>,
}

impl Orchestrator {
    #[pg_cached(namespace = "answer", ttl = "2h", version = 2, skip(trace_id), cache = self.cache)]
    pub async fn answer(&mut self, query: &str, trace_id: u64) -> String {
        format!("{query}{trace_id}")
    }
}

#[pg_cached(skip(cache), cache = cache)]
async fn with_cache_arg(cache: &Option<PgCache>, x: u32) -> u32 {
    let _ = cache;
    x
}

#[tokio::main]
async fn main() -> Result<(), CacheError> {
    let key: String = retrieve_cache_key("q", 2)?;
    assert!(key.starts_with("retrieval:"), "{key}");
    assert_eq!(key.len(), "retrieval:".len() + 64);
    assert_eq!(key, retrieve_cache_key("q", 2)?);
    assert_ne!(key, retrieve_cache_key("q", 3)?);
    assert_eq!(retrieve_refresh("q", 1, 7).await, ["q"]);
    // Without a cache there is nothing to invalidate: an error, not a panic.
    assert!(retrieve_invalidate("q", 2).await.is_err());

    let mut o = Orchestrator { cache: None };
    let key = o.answer_cache_key("q")?;
    assert!(key.starts_with("answer:"));
    assert_eq!(o.answer_refresh("q", 1).await, "q1");
    assert!(o.answer_invalidate("q").await.is_err());

    assert!(with_cache_arg_cache_key(1).is_ok());
    assert!(with_cache_arg_invalidate(&None, 1).await.is_err());
    Ok(())
}
