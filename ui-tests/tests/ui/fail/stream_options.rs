//! Options a memoized stream does not take are reported where they are written, and `replay` belongs to
//! streams only.
use cache_runtime::pg_cached;
use futures_util::stream::{self, Stream};

#[pg_cached(ttl = "1m", stream, stale = "10m", local = "5s", refresh_ahead = "10%")]
fn fresh_only(q: String) -> impl Stream<Item = Result<String, String>> {
    stream::iter(vec![Ok(q)])
}

#[pg_cached(ttl = "1m", stream, replay = "fast")]
fn bad_replay(q: String) -> impl Stream<Item = Result<String, String>> {
    stream::iter(vec![Ok(q)])
}

#[pg_cached(ttl = "1m", replay = "immediate")]
async fn not_a_stream(q: String) -> String {
    q
}

fn main() {}
