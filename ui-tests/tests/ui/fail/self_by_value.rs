use cache_runtime::pg_cached;

pub struct Query(String);

impl Query {
    #[pg_cached]
    async fn run(self) -> String {
        self.0
    }

    #[pg_cached]
    async fn run_mut(mut self) -> String {
        self.0.push('!');
        self.0
    }
}

fn main() {}
