//! `tenant = ...` takes an expression naming the caller's tenant: not a literal, and not on a stream.
use cache_runtime::pg_cached;
use futures_util::stream::{self, Stream};

#[pg_cached(namespace = "answer", tenant = "acme")]
async fn literal(question: &str) -> String {
    question.to_owned()
}

#[pg_cached(namespace = "chunks", stream, tenant = org)]
fn streamed(org: String) -> impl Stream<Item = Result<String, String>> {
    stream::iter(vec![Ok(org)])
}

fn main() {}
