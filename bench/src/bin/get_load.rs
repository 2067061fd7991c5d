//! `get_load`: N tasks calling `PgCache::get` (or `set`, with `--op set`) on the bench data set for a few
//! seconds, with how the calls were coalesced. A small, steady load to profile (`perf record`, `strace -c -f`) and to compare two builds of
//! the runtime by alternating their binaries; the suite (`scripts/bench`) is the report.
//!
//! Needs the data set `scripts/bench` loads (database `pg_cached_bench`, schema `bench_logged`):
//!
//! ```sh
//! cargo run --release -p bench --bin get_load -- \
//!     --url 'postgres://postgres@127.0.0.1:5432/pg_cached_bench' --clients 1,16,64 --seconds 3
//! ```

use bench::data::{Retrieval, Rng, Size};
use bench::setup::{with_search_path, Table};
use cache_runtime::test_support::shared_statements;
use cache_runtime::PgCache;
use clap::Parser;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs `PgCache::get` from N tasks and prints gets per second and statements shared.
#[derive(Debug, Parser)]
#[command(name = "get_load")]
struct Cli {
    /// The bench database's URL (the schema is chosen here).
    #[arg(long)]
    url: String,
    /// Client counts, comma-separated; each runs with a fresh `PgCache`.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    clients: Vec<usize>,
    /// Seconds per client count.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// `PgCacheBuilder::coalesce_in_flight`.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// `PgCacheBuilder::max_connections`.
    #[arg(long, default_value_t = 10)]
    max_connections: u32,
    /// Entries of ~1 KB in the data set (keys are drawn from them).
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// What each task calls: `get`, or `set` (the value it read first, written back under its key).
    #[arg(long, default_value = "get")]
    op: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    for &clients in &cli.clients {
        match run(&cli, clients).await {
            Ok(line) => println!("{line}"),
            Err(error) => {
                eprintln!("get_load: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

async fn run(cli: &Cli, clients: usize) -> Result<String, String> {
    let cache = PgCache::builder()
        .database_url(with_search_path(&cli.url, Table::Logged.schema()))
        .sweep_interval(None)
        .max_entries(None)
        .coalesce_in_flight(cli.in_flight)
        .max_connections(cli.max_connections)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let (gets, misses, errors) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let end = Instant::now() + Duration::from_secs(cli.seconds);
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let (cache, gets, misses, errors) = (cache.clone(), gets.clone(), misses.clone(), errors.clone());
        let rows = cli.rows;
        let set = cli.op == "set";
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(0x10AD_0000 + client as u64 * 7919);
            let value = cache.get::<Retrieval>(&Size::K1.key(1 + rng.below(rows))).await.ok().flatten();
            while Instant::now() < end {
                let key = Size::K1.key(1 + rng.below(rows));
                let outcome = match (&value, set) {
                    (Some(value), true) => cache.set(&key, value, Duration::from_secs(3600)).await.map(|()| true),
                    _ => cache.get::<Retrieval>(&key).await.map(|v| v.is_some()),
                };
                match outcome {
                    Ok(true) => gets.fetch_add(1, Ordering::Relaxed),
                    Ok(false) => misses.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())?;
    }
    let [reads, writes, _] = shared_statements(&cache);
    let (statements, operations) = if cli.op == "set" { writes } else { reads };
    let hits = gets.load(Ordering::Relaxed);
    let all = hits + misses.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed);
    let op = &cli.op;
    Ok(format!(
        "{clients} clients: {} {op}s/s ({hits} done, {} misses, {} errors); {statements} shared statements carrying \
         {operations} ({:.1} each), {} on their own",
        all / cli.seconds.max(1),
        misses.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        operations as f64 / statements.max(1) as f64,
        all.saturating_sub(operations),
    ))
}
