use cache_runtime::pg_cached;

#[pg_cached(skip(trace_id))]
async fn lookup(id: u32, trace: u64) -> u32 {
    let _ = trace;
    id
}

fn main() {}
