//! `similar(arg)` on every text type it takes, with and without its own threshold, on free functions and
//! methods, on a stream, next to other options. Without a cache the bodies simply run.
use cache_runtime::pg_cached;
use std::borrow::Cow;

#[pg_cached(namespace = "answer", ttl = "2h", similar(question))]
async fn by_str(question: &str, model: &str, top_k: usize) -> Result<String, String> {
    Ok(format!("{question} {model} {top_k}"))
}

#[pg_cached(namespace = "answer", similar(question, threshold = 0.9), tags("corpus"))]
async fn by_string(question: String) -> String {
    question
}

#[pg_cached(namespace = "answer", similar(question, threshold = 1), single_flight = "off")]
async fn by_string_ref(question: &String) -> String {
    question.clone()
}

#[pg_cached(namespace = "answer", similar(question,), stale = "5m", local = "10s")]
async fn by_cow(question: Cow<'_, str>) -> String {
    question.into_owned()
}

/// A memoized stream matched by meaning too.
#[pg_cached(namespace = "answer_stream", stream, similar(question))]
fn streamed(question: &str) -> impl futures_util::Stream<Item = Result<String, String>> + Send {
    futures_util::stream::iter(vec![Ok(question.to_owned())])
}

struct Orchestrator;

impl Orchestrator {
    #[pg_cached(namespace = "answer", similar(question), skip(trace_id))]
    async fn answer(&self, question: &str, trace_id: u64) -> Option<String> {
        Some(format!("{question} {trace_id}"))
    }
}

#[tokio::main]
async fn main() {
    assert_eq!(by_str("q", "m", 3).await.as_deref(), Ok("q m 3"));
    assert_eq!(by_string("q".into()).await, "q");
    assert_eq!(by_string_ref(&"q".to_string()).await, "q");
    assert_eq!(by_cow(Cow::Borrowed("q")).await, "q");
    assert_eq!(Orchestrator.answer("q", 7).await.as_deref(), Some("q 7"));
    use futures_util::StreamExt;
    assert_eq!(streamed("q").collect::<Vec<_>>().await, vec![Ok("q".to_string())]);
}
