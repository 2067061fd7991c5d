//! `tenant` needs a value.
use cache_runtime::pg_cached;

#[pg_cached(namespace = "answer", tenant)]
async fn answer(question: &str) -> String {
    question.to_owned()
}

fn main() {}
