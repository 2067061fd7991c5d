use cache_runtime::pg_cached;

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Answer(String);

#[pg_cached(local = "30s")]
async fn lookup(id: u32) -> Answer {
    Answer(id.to_string())
}

fn main() {}
