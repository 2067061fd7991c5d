//! `tenant_overhead`: what tenant scoping costs a memoized call that hits, in the in-process tier and in
//! PostgreSQL, outside any tenant scope and inside one (docs/TENANTS.md, "Cost").
//!
//! One caller, sequential calls of one memoized function over a fixed set of warm keys; rounds alternate
//! (no scope, scope, scope, no scope) so that drift on a shared machine hits both alike. Reports the median
//! and the 99th percentile per call.
//!
//! ```sh
//! cargo run --release -p bench --bin tenant_overhead -- --database-url postgres://postgres@127.0.0.1/db
//! ```

use cache_runtime::{pg_cached, tenant, PgCache};
use clap::Parser;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Measures memoized hits with and without a tenant scope.
#[derive(Debug, Parser)]
#[command(name = "tenant_overhead")]
struct Cli {
    /// The database (it gets the cache's tables if it lacks them).
    #[arg(long)]
    database_url: String,
    /// Calls per round (each variant gets two rounds per tier).
    #[arg(long, default_value_t = 20_000)]
    calls: u64,
    /// Distinct keys the calls cycle over.
    #[arg(long, default_value_t = 100)]
    keys: u64,
}

struct Svc {
    cache: PgCache,
}

impl Svc {
    #[pg_cached(cache = self.cache, namespace = "bench_tenant_local", ttl = "1h", local = "1h")]
    async fn local(&self, i: u64) -> String {
        format!("value {i}")
    }

    #[pg_cached(cache = self.cache, namespace = "bench_tenant_pg", ttl = "1h")]
    async fn postgres(&self, i: u64) -> String {
        format!("value {i}")
    }
}

/// Per-call latencies of `calls` calls of `call`, sorted.
async fn round<F: std::future::Future<Output = String>>(
    calls: u64,
    keys: u64,
    call: impl Fn(u64) -> F,
) -> Vec<Duration> {
    let mut times = Vec::with_capacity(usize::try_from(calls).unwrap_or(0));
    for n in 0..calls {
        let started = Instant::now();
        std::hint::black_box(call(n % keys).await);
        times.push(started.elapsed());
    }
    times.sort_unstable();
    times
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// `(p50, p99)` of two rounds merged.
fn summary(mut a: Vec<Duration>, b: Vec<Duration>) -> (Duration, Duration) {
    a.extend(b);
    a.sort_unstable();
    (quantile(&a, 0.5), quantile(&a, 0.99))
}

async fn run(cli: Cli) -> Result<String, Box<dyn std::error::Error>> {
    let cache = PgCache::builder().database_url(&cli.database_url).sweep_interval(None).build().await?;
    cache.migrate().await?;
    let svc = Svc { cache };
    // Warm every key in both tiers, with and without the scope.
    for i in 0..cli.keys {
        svc.local(i).await;
        svc.postgres(i).await;
        tenant("acme", svc.local(i)).await;
        tenant("acme", svc.postgres(i)).await;
    }
    let (calls, keys) = (cli.calls, cli.keys);
    let mut out = String::from("| tier | scope | p50 | p99 |\n|---|---|---|---|\n");
    let svc = &svc;
    for tier in ["local", "postgres"] {
        let plain = move |i| async move {
            match tier {
                "local" => svc.local(i).await,
                _ => svc.postgres(i).await,
            }
        };
        let scoped = move |i| tenant("acme", plain(i));
        let plain_a = round(calls, keys, plain).await;
        let scoped_a = round(calls, keys, scoped).await;
        let scoped_b = round(calls, keys, scoped).await;
        let plain_b = round(calls, keys, plain).await;
        for (scope, (p50, p99)) in [("none", summary(plain_a, plain_b)), ("tenant", summary(scoped_a, scoped_b))] {
            out.push_str(&format!("| {tier} | {scope} | {p50:.2?} | {p99:.2?} |\n"));
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tenant_overhead: {error}");
            ExitCode::FAILURE
        }
    }
}
