use cache_runtime::pg_cached;

#[pg_cached(ttl = "30m", namespace = "a", ttl = "1h")]
async fn lookup(id: u32) -> u32 {
    id
}

fn main() {}
