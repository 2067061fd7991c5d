//! Sets in the key: a `BTreeSet` is ordered, a skipped `HashSet` is not in the key, and a `HashMap` is fine
//! because the key encoding sorts map entries.
use cache_runtime::pg_cached;
use std::collections::{BTreeSet, HashMap, HashSet};

#[pg_cached(skip(seen))]
async fn count_new(tags: BTreeSet<String>, seen: &HashSet<String>) -> usize {
    tags.iter().filter(|tag| !seen.contains(*tag)).count()
}

#[pg_cached]
async fn total(weights: HashMap<String, u32>) -> u32 {
    weights.values().sum()
}

#[tokio::main]
async fn main() {
    let tags: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
    let seen: HashSet<String> = ["b"].map(String::from).into();
    assert_eq!(count_new(tags.clone(), &seen).await, 2);
    assert_eq!(
        count_new_cache_key(tags).unwrap(),
        count_new_cache_key(["c", "b", "a"].map(String::from).into()).unwrap()
    );
    assert_eq!(total([("x".to_owned(), 1), ("y".to_owned(), 2)].into()).await, 3);
}
