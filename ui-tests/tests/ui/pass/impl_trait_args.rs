//! `impl Trait` arguments: their concrete type is part of the key.
use cache_runtime::pg_cached;
use serde::Serialize;
use std::fmt::Display;

#[pg_cached]
async fn show(value: impl Display + Serialize + Send, times: usize) -> String {
    value.to_string().repeat(times)
}

#[pg_cached(skip(log))]
async fn with_skipped(x: u32, log: impl FnOnce(u32) + Send) -> u32 {
    log(x);
    x
}

#[tokio::main]
async fn main() {
    assert_eq!(show(1u8, 2).await, "11");
    assert_eq!(with_skipped(3, |_| ()).await, 3);
    assert_ne!(show_cache_key(1u8, 2).unwrap(), show_cache_key(1u16, 2).unwrap());
}
