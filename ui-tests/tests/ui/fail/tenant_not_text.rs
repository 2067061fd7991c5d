//! `tenant = ...` must be text: a number is reported at the expression.
use cache_runtime::pg_cached;

#[pg_cached(namespace = "answer", tenant = org_id, skip(org_id))]
async fn answer(org_id: u64, question: &str) -> String {
    format!("{org_id} {question}")
}

fn main() {}
