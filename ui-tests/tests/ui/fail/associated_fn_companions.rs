// An associated function with neither a receiver nor `Self` in its signature looks like a free function to
// the attribute: `_refresh` calls it by its bare name, which is not in scope in an `impl` block. The fix is
// `companions = false` (and a namespace of its own), or mentioning `Self` in the signature.
use cache_runtime::pg_cached;

pub struct Repo;

impl Repo {
    #[pg_cached]
    async fn count(table: String) -> usize {
        table.len()
    }
}

fn main() {}
