//! A trait-impl method (native `async fn` in a trait) with `companions = false`.
use cache_runtime::pg_cached;

#[allow(async_fn_in_trait)]
pub trait Answerer {
    fn answer(&self, query: &str) -> impl std::future::Future<Output = String> + Send;
    async fn count(&self, query: &str) -> usize;
}

pub struct Model;

impl Answerer for Model {
    #[pg_cached(namespace = "answer", ttl = "2h", companions = false)]
    async fn answer(&self, query: &str) -> String {
        format!("answer to {query}")
    }

    #[pg_cached(companions = false)]
    async fn count(&self, query: &str) -> usize {
        query.len()
    }
}

#[tokio::main]
async fn main() {
    assert_eq!(Model.answer("q").await, "answer to q");
    assert_eq!(Model.count("four").await, 4);
    // The trait's `Send` bound holds.
    tokio::spawn(async { Model.answer("q").await }).await.unwrap();
}
