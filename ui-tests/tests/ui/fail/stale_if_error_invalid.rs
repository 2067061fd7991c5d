use cache_runtime::pg_cached;

#[pg_cached(stale_if_error = "never")]
async fn never(id: u32) -> Result<u32, String> {
    Ok(id)
}

#[pg_cached(stale_if_error = "1 hour")]
async fn words(id: u32) -> Result<u32, String> {
    Ok(id)
}

fn main() {}
