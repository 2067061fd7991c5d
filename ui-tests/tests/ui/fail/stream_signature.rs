//! A `stream` function is not `async`, returns a stream, and its items are `Result`s.
use cache_runtime::pg_cached;
use futures_util::stream::{self, Stream};

#[pg_cached(ttl = "1m", stream)]
async fn asynchronous(q: String) -> impl Stream<Item = Result<String, String>> {
    stream::iter(vec![Ok(q)])
}

#[pg_cached(ttl = "1m", stream)]
fn not_a_stream(q: String) -> Vec<String> {
    vec![q]
}

#[pg_cached(ttl = "1m", stream)]
fn bare_items(q: String) -> impl Stream<Item = String> {
    stream::iter(vec![q])
}

#[pg_cached(ttl = "1m", stream)]
fn nothing(q: String) {
    let _ = q;
}

fn main() {}
