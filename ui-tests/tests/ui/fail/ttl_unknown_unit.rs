use cache_runtime::pg_cached;

#[pg_cached(ttl = "5x")]
async fn lookup(id: u32) -> u32 {
    id
}

fn main() {}
