use cache_runtime::pg_cached;

pub trait Answerer {
    async fn answer(&self, query: &str) -> String;
}

pub struct Model;

impl Answerer for Model {
    #[pg_cached]
    async fn answer(&self, query: &str) -> String {
        query.to_owned()
    }
}

fn main() {}
