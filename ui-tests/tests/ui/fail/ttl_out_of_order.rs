use cache_runtime::pg_cached;

#[pg_cached(ttl = "30m1h")]
async fn lookup(id: u32) -> u32 {
    id
}

#[pg_cached(ttl = "1h2h")]
async fn lookup_again(id: u32) -> u32 {
    id
}

fn main() {}
