//! A similarity threshold is a cosine in (0, 1], written as a number.
use cache_runtime::pg_cached;

#[pg_cached(namespace = "answer", similar(question, threshold = 0.0))]
async fn zero(question: &str) -> String {
    question.to_owned()
}

#[pg_cached(namespace = "answer", similar(question, threshold = 1.5))]
async fn above_one(question: &str) -> String {
    question.to_owned()
}

#[pg_cached(namespace = "answer", similar(question, threshold = "high"))]
async fn not_a_number(question: &str) -> String {
    question.to_owned()
}

#[pg_cached(namespace = "answer", similar(question, cutoff = 0.9))]
async fn unknown_similar_option(question: &str) -> String {
    question.to_owned()
}

fn main() {}
