//! Free functions: attributes, docs and visibility are kept; `Result`, `Option` and plain return types.
use cache_runtime::pg_cached;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Doc {
    id: u32,
}

#[derive(Debug)]
pub struct MyError;

/// Searches. This doc comment stays on the function.
#[pg_cached(namespace = "retrieval", ttl = "30m")]
#[must_use = "a search result"]
pub async fn retrieve(query: &str, max_results: usize) -> Result<Vec<Doc>, MyError> {
    if query.is_empty() {
        return Err(MyError);
    }
    Ok((0..max_results as u32).map(|id| Doc { id }).collect())
}

#[pg_cached(ttl = "never", version = 2, cache_none = true)]
pub(crate) async fn find(id: u32) -> Option<String> {
    (id > 0).then(|| id.to_string())
}

#[pg_cached(ttl = "1h30m", single_flight = "off")]
async fn plain(x: u64) -> u64 {
    x * 2
}

#[pg_cached]
async fn nothing() {}

#[tokio::main]
async fn main() {
    // No cache is configured, so every call runs its body.
    assert_eq!(retrieve("q", 2).await.unwrap(), vec![Doc { id: 0 }, Doc { id: 1 }]);
    assert!(retrieve("", 2).await.is_err());
    assert_eq!(find(3).await.as_deref(), Some("3"));
    assert_eq!(find(0).await, None);
    assert_eq!(plain(21).await, 42);
    nothing().await;
}
