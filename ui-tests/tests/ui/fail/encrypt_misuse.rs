//! `encrypt` is a bare flag, and cannot encrypt what the semantic tier keeps in plain form.
use cache_runtime::pg_cached;

#[pg_cached(namespace = "answer", encrypt = true)]
async fn with_a_value(question: &str) -> String {
    question.to_owned()
}

#[pg_cached(namespace = "answer", encrypt = 1)]
async fn with_a_number(question: &str) -> String {
    question.to_owned()
}

#[pg_cached(namespace = "answer", encrypt, similar(question))]
async fn with_similar(question: &str) -> String {
    question.to_owned()
}

#[pg_cached(namespace = "answer", encrypt, encrypt)]
async fn twice(question: &str) -> String {
    question.to_owned()
}

fn main() {}
