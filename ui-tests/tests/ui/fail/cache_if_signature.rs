//! `cache_if` takes a path to a `fn(&T) -> bool`, where `T` is the stored value.
use cache_runtime::pg_cached;

fn takes_the_result(docs: &Result<Vec<String>, String>) -> bool {
    docs.is_ok()
}

fn returns_nothing(_: &Vec<String>) {}

#[pg_cached(cache_if = takes_the_result)]
async fn wrong_argument(query: String) -> Result<Vec<String>, String> {
    Ok(vec![query])
}

#[pg_cached(cache_if = returns_nothing)]
async fn wrong_return(query: String) -> Result<Vec<String>, String> {
    Ok(vec![query])
}

#[pg_cached(cache_if = |docs: &Vec<String>| !docs.is_empty())]
async fn a_closure(query: String) -> Result<Vec<String>, String> {
    Ok(vec![query])
}

fn main() {}
