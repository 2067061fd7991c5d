use cache_runtime::pg_cached;

#[pg_cached]
fn lookup(id: u32) -> u32 {
    id
}

fn main() {
    let _ = lookup(1);
}
