//! A `HashSet` argument in the key: serde writes it in iteration order, which differs between processes.
use cache_runtime::pg_cached;
use std::collections::HashSet;

#[pg_cached]
async fn by_tags(tags: HashSet<String>) -> usize {
    tags.len()
}

#[pg_cached]
async fn by_ref<'a, T, S>(
    names: &HashSet<String>,
    ids: std::collections::HashSet<u32>,
    set: &'a HashSet<T, S>,
) -> usize {
    names.len() + ids.len() + set.len()
}

fn main() {}
