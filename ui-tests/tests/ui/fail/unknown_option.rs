use cache_runtime::pg_cached;

#[pg_cached(ttll = "30m")]
async fn lookup(id: u32) -> u32 {
    id
}

fn main() {}
