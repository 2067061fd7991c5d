//! The returned future is `Send` when the body's is: it can be spawned on a multi-threaded runtime.
use cache_runtime::{pg_cached, PgCache};
use std::sync::Arc;

#[pg_cached(ttl = "1m")]
async fn slow_double(x: u64) -> u64 {
    tokio::task::yield_now().await;
    x * 2
}

pub struct Client {
    cache: Option<PgCache>,
}

impl Client {
    #[pg_cached(cache = self.cache)]
    async fn fetch(&self, id: String) -> Result<String, String> {
        tokio::task::yield_now().await;
        Ok(id)
    }
}

fn assert_send<T: Send>(t: T) -> T {
    t
}

#[tokio::main]
async fn main() {
    assert_eq!(tokio::spawn(slow_double(21)).await.unwrap(), 42);
    let client = Arc::new(Client { cache: None });
    let c = Arc::clone(&client);
    let got = tokio::spawn(async move { c.fetch("a".into()).await }).await.unwrap();
    assert_eq!(got.unwrap(), "a");
    let _ = assert_send(slow_double_refresh(1));
    let _ = assert_send(slow_double_invalidate(1));
    let _ = assert_send(client.fetch_refresh("b".into()));
}
