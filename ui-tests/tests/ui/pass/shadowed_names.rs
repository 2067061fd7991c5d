//! Names that the generated code might have used, as arguments and as locals of the body.
use cache_runtime::pg_cached;

#[pg_cached]
async fn names(key: u32, cache: u32, site: u32, policy: u32) -> u32 {
    let key = key + 1;
    let cache = cache + key;
    let policy = policy + site;
    let memoize = |x: u32| x;
    memoize(key + cache + policy)
}

// Local items named like what the generated code uses do not disturb it: it names `::core`, `::std` and
// `::cache_runtime` by absolute paths.
#[allow(dead_code)]
mod core {}
#[allow(dead_code)]
struct String;
type Result<T> = std::result::Result<T, u8>;

#[pg_cached]
async fn with_alias(x: u32) -> Result<u32> {
    if x == 0 {
        return Err(0);
    }
    Ok(x)
}

#[pg_cached]
async fn with_local_items(x: u32) -> u32 {
    #[allow(dead_code)]
    struct Site;
    #[allow(dead_code)]
    fn memoize() {}
    x
}

#[tokio::main]
async fn main() {
    assert_eq!(names(1, 2, 3, 4).await, 2 + 4 + 7);
    assert_eq!(with_local_items(5).await, 5);
    assert_eq!(with_alias(3).await, Ok(3));
    assert!(with_alias_cache_key(3).is_ok());
}
