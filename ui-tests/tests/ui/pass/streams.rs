//! Memoized streams: `impl Stream`, `BoxStream` and `Pin<Box<dyn Stream>>` returns, with the options a stream
//! takes (`tags`, `cache_if` over the chunks, `replay`, `single_flight`, `version`).
use cache_runtime::{pg_cached, PgCache};
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use std::pin::Pin;

#[derive(Clone, Serialize, Deserialize)]
pub struct Token {
    text: String,
}

fn complete(tokens: &[Token]) -> bool {
    !tokens.is_empty()
}

pub struct Model {
    cache: Option<PgCache>,
}

impl Model {
    #[pg_cached(cache = self.cache, ttl = "1h", stream, tags("answers"), cache_if = complete)]
    pub fn answer(&self, question: &str) -> impl Stream<Item = Result<Token, String>> + Send + '_ {
        let text = question.to_owned();
        stream::iter(vec![Ok(Token { text })])
    }

    #[pg_cached(cache = self.cache, ttl = "1h", stream, replay = "as_recorded", version = 2)]
    pub fn boxed(&self, question: String) -> BoxStream<'_, Result<Token, std::io::Error>> {
        stream::iter(vec![Ok(Token { text: question })]).boxed()
    }

    #[pg_cached(cache = self.cache, ttl = "1h", stream, replay = "immediate", single_flight = "process")]
    pub fn pinned(&self, n: u32) -> Pin<Box<dyn Stream<Item = Result<u32, String>> + Send>> {
        if n == 0 {
            // An early `return` returns the stream, as it would without the attribute.
            return Box::pin(stream::empty());
        }
        Box::pin(stream::iter((0..n).map(Ok)))
    }
}

#[pg_cached(ttl = "10m", stream)]
fn free(words: Vec<String>) -> impl Stream<Item = Result<String, String>> {
    stream::iter(words.into_iter().map(Ok))
}

fn main() {
    let model = Model { cache: None };
    let _ = model.answer("q");
    let _ = model.boxed("q".into());
    let _ = model.pinned(3);
    let _ = free(vec!["a".into()]);
}

/// A `Result` alias with the error type fixed (`std::io::Result`): accepted like `Result<T, E>`.
#[pg_cached(ttl = "10m", stream)]
fn io_alias(n: u32) -> impl Stream<Item = std::io::Result<u32>> {
    stream::iter((0..n).map(Ok))
}
