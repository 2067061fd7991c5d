use cache_runtime::pg_cached;

#[pg_cached(namespace = "tenant:answers")]
async fn lookup(id: u32) -> u32 {
    id
}

fn main() {}
