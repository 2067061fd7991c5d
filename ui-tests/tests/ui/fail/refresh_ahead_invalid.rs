use cache_runtime::pg_cached;

#[pg_cached(ttl = "1m", refresh_ahead = "150%")]
async fn too_much(x: u32) -> u32 {
    x
}

#[pg_cached(ttl = "1m", refresh_ahead = "soon")]
async fn not_a_percentage(x: u32) -> u32 {
    x
}

#[pg_cached(ttl = "never", refresh_ahead = "10%")]
async fn never_expires(x: u32) -> u32 {
    x
}

#[pg_cached(ttl = "1m", background_refresh = "no")]
async fn not_a_flag(x: u32) -> u32 {
    x
}

fn main() {}
