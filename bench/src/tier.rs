//! The in-process tier (issue: "L1 hits ≥ 1,000,000/s on one core, ≥ 20× Redis GET"): one task calling in a
//! loop, so the figure is what one core delivers, with the macro's fingerprinting included.
//!
//! Three ways to serve the same hit of a ~1 KB retrieval result, each decoded into the typed value:
//! - `#[pg_cached(local = "1h")]` answered from this process's memory;
//! - the same memoized function without `local`, answered by PostgreSQL;
//! - Redis GET of the same JSON, then `serde_json` into the same type.

use crate::data::{Payload, Retrieval};
use cache_runtime::{pg_cached, PgCache};
use serde::Serialize;
use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// One row of the tier comparison.
#[derive(Debug, Clone, Serialize)]
pub struct TierRow {
    /// What served the hit.
    pub label: &'static str,
    /// Calls per second from one task (median of the rounds).
    pub ops_per_sec: Option<f64>,
    /// Why the row was skipped.
    pub skipped: Option<String>,
}

#[derive(Debug, Clone)]
struct Tiered {
    cache: PgCache,
}

impl Tiered {
    #[pg_cached(cache = self.cache, namespace = "bench_tier_local", ttl = "1d", local = "1h")]
    async fn local(&self, query: &str, max_results: u32) -> Result<Retrieval, Infallible> {
        Ok(sample(query, max_results))
    }

    #[pg_cached(cache = self.cache, namespace = "bench_tier_pg", ttl = "1d")]
    async fn postgres(&self, query: &str, max_results: u32) -> Result<Retrieval, Infallible> {
        Ok(sample(query, max_results))
    }

    #[pg_cached(cache = self.cache, namespace = "bench_miss_process", ttl = "1h", single_flight = "process")]
    async fn miss_process(&self, run: u64, i: u64) -> Result<Retrieval, Infallible> {
        Ok(Retrieval::sample(run ^ i))
    }

    #[pg_cached(cache = self.cache, namespace = "bench_miss_cluster", ttl = "1h", single_flight = "cluster")]
    async fn miss_cluster(&self, run: u64, i: u64) -> Result<Retrieval, Infallible> {
        Ok(Retrieval::sample(run ^ i))
    }
}

fn sample(query: &str, max_results: u32) -> Retrieval {
    let id = query.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut result = Retrieval::sample(id);
    result.documents.truncate(max_results as usize);
    result
}

/// Calls per second of `call` over `rounds` rounds of `per_round` each, one at a time; the median round.
async fn rate<F, Fut>(per_round: Duration, rounds: u32, mut call: F) -> f64
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::new();
    let mut i = 0u64;
    for _ in 0..rounds.max(1) {
        let began = Instant::now();
        let mut calls = 0u64;
        while began.elapsed() < per_round {
            for _ in 0..64 {
                call(i).await;
                i += 1;
            }
            calls += 64;
        }
        samples.push(calls as f64 / began.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Measures the three rows, about `budget` each. `keys` distinct arguments are cycled through, all warm.
pub async fn measure(
    cache: PgCache,
    redis: Option<&crate::redis_ref::RedisRef>,
    keys: u64,
    budget: Duration,
) -> Vec<TierRow> {
    let tiered = Tiered { cache };
    let queries: Vec<String> = (1..=keys.max(1)).map(|i| format!("hot query {i}")).collect();
    let n = queries.len() as u64;
    for query in &queries {
        let _ = tiered.local(query, 5).await;
        let _ = tiered.postgres(query, 5).await;
    }
    // The function's tier keeps nothing until its event listener is connected: wait, then fill it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache_runtime::test_support::listener_connects(&tiered.cache) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for query in &queries {
        let _ = tiered.local(query, 5).await;
    }
    let (rounds, per_round) = (5, budget / 5);
    let mut rows = Vec::new();

    let before = tiered.cache.process_stats();
    let local = rate(per_round, rounds, |i| {
        let query = &queries[(i % n) as usize];
        let tiered = &tiered;
        async move {
            black_box(tiered.local(query, 5).await.ok());
        }
    })
    .await;
    let after = tiered.cache.process_stats();
    let from_memory = after.local_hits - before.local_hits;
    let total = from_memory + (after.local_misses - before.local_misses);
    eprintln!("[tier] #[pg_cached(local)] hit: {local:.0} calls/s ({from_memory} of {total} from memory)");
    rows.push(TierRow {
        label: "#[pg_cached(local = \"1h\")] hit, in-process",
        ops_per_sec: Some(local),
        skipped: None,
    });

    let pg = rate(per_round, rounds, |i| {
        let query = &queries[(i % n) as usize];
        let tiered = &tiered;
        async move {
            black_box(tiered.postgres(query, 5).await.ok());
        }
    })
    .await;
    eprintln!("[tier] #[pg_cached] hit, PostgreSQL: {pg:.0} calls/s");
    rows.push(TierRow { label: "#[pg_cached] hit, PostgreSQL", ops_per_sec: Some(pg), skipped: None });

    // The price of cluster-wide single-flight: every call a miss (a fresh argument), the body trivial, so the
    // figure is the cache's own work on a miss: lookups and write, plus the lease's take and release.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let process = rate(per_round, rounds, |i| {
        let tiered = &tiered;
        async move {
            black_box(tiered.miss_process(run, i).await.ok());
        }
    })
    .await;
    let cluster = rate(per_round, rounds, |i| {
        let tiered = &tiered;
        async move {
            black_box(tiered.miss_cluster(run, i).await.ok());
        }
    })
    .await;
    eprintln!("[tier] misses: single_flight = \"process\" {process:.0}/s, \"cluster\" {cluster:.0}/s");
    rows.push(TierRow { label: "miss, single_flight = \"process\"", ops_per_sec: Some(process), skipped: None });
    rows.push(TierRow { label: "miss, single_flight = \"cluster\"", ops_per_sec: Some(cluster), skipped: None });
    let _ = tiered.cache.delete_namespace("bench_miss_process").await;
    let _ = tiered.cache.delete_namespace("bench_miss_cluster").await;

    match redis {
        None => rows.push(TierRow { label: "Redis GET + decode", ops_per_sec: None, skipped: Some("no Redis".into()) }),
        Some(redis) => match redis_rate(redis, &queries, per_round, rounds).await {
            Ok(rate) => {
                eprintln!("[tier] Redis GET + decode: {rate:.0} calls/s");
                rows.push(TierRow { label: "Redis GET + decode", ops_per_sec: Some(rate), skipped: None });
            }
            Err(reason) => rows.push(TierRow { label: "Redis GET + decode", ops_per_sec: None, skipped: Some(reason) }),
        },
    }
    rows
}

async fn redis_rate(
    redis: &crate::redis_ref::RedisRef,
    queries: &[String],
    per_round: Duration,
    rounds: u32,
) -> Result<f64, String> {
    let mut conn = redis.connections(1).await?.pop().ok_or("no Redis connection")?;
    let keys: Vec<String> = queries.iter().map(|q| redis.key(&format!("tier:{q}"))).collect();
    for (query, key) in queries.iter().zip(&keys) {
        let json = serde_json::to_string(&sample(query, 5)).map_err(|e| e.to_string())?;
        redis::cmd("SET")
            .arg(key)
            .arg(json)
            .arg("EX")
            .arg(3600)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    }
    let n = keys.len() as u64;
    let conn = std::cell::RefCell::new(conn);
    let rate = rate(per_round, rounds, |i| {
        let key = &keys[(i % n) as usize];
        let conn = &conn;
        async move {
            let mut c = conn.borrow().clone();
            let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut c).await.ok();
            black_box(bytes.and_then(|b| serde_json::from_slice::<Retrieval>(&b).ok()));
        }
    })
    .await;
    let mut conn = conn.into_inner();
    redis::cmd("DEL").arg(&keys).query_async::<()>(&mut conn).await.map_err(|e| e.to_string())?;
    Ok(rate)
}
