//! `tags`, `stale_if_error` and `cache_if`, and dynamic tags from inside the body.
use cache_runtime::pg_cached;

mod filters {
    pub fn non_empty(docs: &Vec<u32>) -> bool {
        !docs.is_empty()
    }
}

fn positive(x: &i64) -> bool {
    *x > 0
}

#[pg_cached(namespace = "retrieval", tags("corpus", "retrieval"), stale_if_error = "1h", cache_if = filters::non_empty)]
async fn retrieve(query: String) -> Result<Vec<u32>, String> {
    cache_runtime::tag(format!("query:{query}"));
    cache_runtime::tags([1, 2].iter().map(|id| format!("doc:{id}")));
    Ok(vec![1, 2])
}

#[pg_cached(cache_if = positive, cache_none = true)]
async fn maybe(x: i64) -> Option<i64> {
    (x != 0).then_some(x)
}

#[pg_cached(cache_if = positive)]
async fn plain(x: i64) -> i64 {
    x
}

#[tokio::main]
async fn main() {
    assert_eq!(retrieve("rust".into()).await, Ok(vec![1, 2]));
    assert_eq!(maybe(-1).await, Some(-1));
    assert_eq!(plain(3).await, 3);
}
