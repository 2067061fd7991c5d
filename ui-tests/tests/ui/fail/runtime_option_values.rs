use cache_runtime::pg_cached;

#[pg_cached(single_flight = "global", stale = "never", local = "0s", cache_none = "yes")]
async fn lookup(id: u32) -> Option<u32> {
    Some(id)
}

fn main() {}
