use cache_runtime::pg_cached;

#[pg_cached(ttl = "1m")]
pub struct Settings {
    pub size: u32,
}

fn main() {
    let _ = Settings { size: 1 };
}
