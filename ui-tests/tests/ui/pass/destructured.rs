//! Argument patterns: every name they bind is in the key, `_` is not, `skip` names a binding.
use cache_runtime::pg_cached;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Point {
    x: i32,
    y: i32,
}

#[pg_cached(skip(trace))]
async fn distance(Point { x, y }: Point, (dx, mut dy, trace): (i32, i32, u64), _: u8, [first, ..]: [u8; 3]) -> i32 {
    dy += 1;
    let _ = trace;
    (x - dx).abs() + (y - dy).abs() + i32::from(first)
}

#[pg_cached]
async fn by_ref(&(a, b): &(u32, u32), mut c: u32) -> u32 {
    c += 1;
    a + b + c
}

#[tokio::main]
async fn main() {
    assert_eq!(distance(Point { x: 1, y: 1 }, (0, 0, 9), 7, [1, 2, 3]).await, 2);
    assert_eq!(by_ref(&(1, 2), 3).await, 7);
    // The key ignores `trace` and the `_` argument, and the companions keep the patterns.
    let k1 = distance_cache_key(Point { x: 1, y: 1 }, (0, 0, 1), [1, 2, 3]).unwrap();
    let k2 = distance_cache_key(Point { x: 1, y: 1 }, (0, 0, 2), [1, 9, 9]).unwrap();
    assert_eq!(k1, k2);
    assert_ne!(k1, distance_cache_key(Point { x: 1, y: 2 }, (0, 0, 1), [1, 2, 3]).unwrap());
    assert_eq!(distance_refresh(Point { x: 1, y: 1 }, (0, 0, 9), 7, [1, 2, 3]).await, 2);
}
