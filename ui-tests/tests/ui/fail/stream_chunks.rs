//! The chunks of a memoized stream are stored, so they must serialize; `cache_if` judges all of them.
use cache_runtime::pg_cached;
use futures_util::stream::{self, Stream};

pub struct Opaque;

#[pg_cached(ttl = "1m", stream)]
fn opaque(n: u32) -> impl Stream<Item = Result<Opaque, String>> {
    stream::iter((0..n).map(|_| Ok(Opaque)))
}

fn one_chunk(chunk: &String) -> bool {
    !chunk.is_empty()
}

#[pg_cached(ttl = "1m", stream, cache_if = one_chunk)]
fn judged(q: String) -> impl Stream<Item = Result<String, String>> {
    stream::iter(vec![Ok(q)])
}

fn main() {}
