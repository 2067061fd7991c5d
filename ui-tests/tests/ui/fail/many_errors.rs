use cache_runtime::pg_cached;

#[pg_cached(ttl = "1.5h", namespace = "", skip(nope), version = -1, colour = "blue", ttl = "1h")]
fn lookup(id: u32) -> u32 {
    id
}

fn main() {
    let _ = lookup(1);
}
