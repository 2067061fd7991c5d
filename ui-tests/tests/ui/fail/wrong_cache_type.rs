use cache_runtime::pg_cached;

pub struct Service {
    cache: String,
}

impl Service {
    #[pg_cached(cache = self.cache)]
    async fn lookup(&self, id: u32) -> u32 {
        id
    }
}

fn main() {}
