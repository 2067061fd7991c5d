//! `similar(...)` must name a text argument that is part of the key.
use cache_runtime::pg_cached;

#[pg_cached(namespace = "answer", similar(question))]
async fn no_such_argument(query: &str) -> String {
    query.to_owned()
}

#[pg_cached(namespace = "answer", skip(question), similar(question))]
async fn skipped(question: &str, model: &str) -> String {
    format!("{question} {model}")
}

#[pg_cached(namespace = "answer", similar(top_k))]
async fn not_text(question: &str, top_k: usize) -> String {
    format!("{question} {top_k}")
}

#[pg_cached(namespace = "answer", similar(bytes))]
async fn bytes_are_not_text(bytes: &[u8]) -> usize {
    bytes.len()
}

fn main() {}
