use cache_runtime::pg_cached;

pub struct Client;

#[pg_cached]
async fn lookup(client: &Client, id: u32) -> u32 {
    let _ = client;
    id
}

fn main() {}
