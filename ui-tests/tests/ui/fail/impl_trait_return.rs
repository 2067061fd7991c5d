use cache_runtime::pg_cached;

#[pg_cached]
async fn lookup(id: u32) -> impl std::fmt::Display {
    id
}

fn main() {}
