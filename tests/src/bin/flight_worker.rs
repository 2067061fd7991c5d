//! One process of the cluster-wide single-flight tests (`tests/tests/cluster.rs`).
//!
//! `flight_worker <database> <tag> <callers> <body_ms> <lease_ms>`: connects to `<database>` on the server of
//! `DATABASE_URL`, runs `<callers>` concurrent memoized calls of one cold key with
//! `single_flight = "cluster"`, and prints `RESULT <value>` per call. The body records each run in the
//! `flight_runs` table, so the test can count executions across processes.

use cache_runtime::__private::{SingleFlight, Site};
use cache_runtime::PgCache;
use integration_tests::memo;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

static SITE: Site = Site::new("flight", "cluster::shared_work", 1).single_flight(SingleFlight::Cluster);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [database, tag, callers, body_ms, lease_ms] = args.as_slice() else {
        return Err("usage: flight_worker <database> <tag> <callers> <body_ms> <lease_ms>".into());
    };
    let (callers, body_ms, lease_ms): (usize, u64, u64) = (callers.parse()?, body_ms.parse()?, lease_ms.parse()?);
    let base = std::env::var("DATABASE_URL")?;
    let options = PgConnectOptions::from_str(&base)?.database(database);
    let pool = PgPoolOptions::new().max_connections(10).connect_with(options).await?;
    let cache = PgCache::builder()
        .pool(pool.clone())
        .lease_duration(Duration::from_millis(lease_ms))
        .op_timeout(Duration::from_secs(2))
        .sweep_interval(None)
        .build()
        .await?;
    println!("READY");
    let mut calls = Vec::new();
    for _ in 0..callers {
        let (cache, pool, tag) = (cache.clone(), pool.clone(), tag.clone());
        calls.push(tokio::spawn(async move {
            memo::call(&cache, &SITE, 42, async {
                sqlx::query("INSERT INTO flight_runs (tag) VALUES ($1)").bind(&tag).execute(&pool).await.ok();
                tokio::time::sleep(Duration::from_millis(body_ms)).await;
                format!("value-from-{tag}")
            })
            .await
        }));
    }
    for call in calls {
        println!("RESULT {}", call.await?);
    }
    Ok(())
}
