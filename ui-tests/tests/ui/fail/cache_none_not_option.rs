use cache_runtime::pg_cached;

#[pg_cached(cache_none = true)]
async fn lookup(id: u32) -> Result<u32, String> {
    Ok(id)
}

fn main() {}
