use cache_runtime::pg_cached;

#[pg_cached]
async fn lookup(id: u32) -> Result<u32, String> {
    let parsed: u32 = "1".parse()?;
    Ok(id + parsed)
}

fn main() {}
