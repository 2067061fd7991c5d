//! The options passed on to the runtime: `single_flight`, `stale`, `local` (whose return type is `Clone`) and
//! `encrypt`.
use cache_runtime::pg_cached;

#[pg_cached(ttl = "10m", single_flight = "cluster", stale = "1h", local = "30s")]
async fn everything(x: u32) -> Vec<u32> {
    vec![x]
}

#[pg_cached(single_flight = "process", local = "1d12h")]
async fn local_result(x: u32) -> Result<String, String> {
    Ok(x.to_string())
}

#[pg_cached(namespace = "secret", encrypt, local = "1m")]
async fn encrypted(x: u32) -> String {
    x.to_string()
}

#[tokio::main]
async fn main() {
    assert_eq!(everything(1).await, [1]);
    assert_eq!(local_result(2).await.as_deref(), Ok("2"));
    assert_eq!(encrypted(3).await, "3");
}
