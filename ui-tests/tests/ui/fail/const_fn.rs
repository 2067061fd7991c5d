use cache_runtime::pg_cached;

#[pg_cached]
const fn lookup(id: u32) -> u32 {
    id
}

fn main() {}
