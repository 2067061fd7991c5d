use cache_runtime::pg_cached;

pub struct Answer;

#[pg_cached]
async fn lookup(id: u32) -> Answer {
    let _ = id;
    Answer
}

#[pg_cached]
async fn fallible(id: u32) -> Result<Answer, String> {
    let _ = id;
    Ok(Answer)
}

fn main() {}
