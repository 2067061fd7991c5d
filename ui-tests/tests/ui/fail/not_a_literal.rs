use cache_runtime::pg_cached;

const SOME_CONST: &str = "30m";

#[pg_cached(ttl = SOME_CONST)]
async fn lookup(id: u32) -> u32 {
    id
}

fn main() {}
