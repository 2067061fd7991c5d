//! `replica_reads`: `PgCache::get` throughput with one primary plus one read replica, against the primary
//! alone, in the same run. Run it through `scripts/bench-replicas`, which starts the pair.
//!
//! Both caches read the same keys from the same data; segments alternate (A B B A per client count) so that
//! drift on a shared machine hits both alike. Each row also says what share of the replica cache's reads the
//! standby answered, so a row where the standby was skipped (lagging) cannot pass for a replica figure.

use bench::harness::{drive, Measurement};
use cache_runtime::{PgCache, Ttl};
use clap::Parser;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Measures gets against a primary alone and against the primary plus a read replica.
#[derive(Debug, Parser)]
#[command(name = "replica_reads")]
struct Cli {
    /// The primary's URL.
    #[arg(long)]
    primary: String,
    /// The standby's URL (a hot standby streaming from the primary).
    #[arg(long)]
    replica: String,
    /// Client counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    clients: Vec<usize>,
    /// Measured seconds per segment (each variant gets two segments per client count).
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Entries of ~1 KB.
    #[arg(long, default_value_t = 20_000)]
    rows: u64,
    /// The replica cache's lag bound, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    max_lag_ms: u64,
    /// Where to write the Markdown report (also printed).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn key(i: u64) -> String {
    format!("bench_replica:{i}")
}

async fn load(cache: &PgCache, rows: u64) -> Result<(), String> {
    cache.migrate().await.map_err(|e| e.to_string())?;
    let value = "x".repeat(1000);
    for start in (0..rows).step_by(200) {
        let batch: Vec<(String, &str)> = (start..(start + 200).min(rows)).map(|i| (key(i), value.as_str())).collect();
        cache.set_many(&batch, Ttl::Never).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn replica_reads(cache: &PgCache) -> u64 {
    cache.health_check().await.replicas.first().map_or(0, |r| r.reads)
}

/// The measurement, and every get issued (warm-up included), for the standby's share.
async fn measure(cache: &PgCache, clients: usize, rows: u64, window: Duration) -> (Measurement, u64) {
    let cache = cache.clone();
    let issued = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&issued);
    let measurement = drive(clients, Duration::from_millis(500), window, move |_, random| {
        let cache = cache.clone();
        counter.fetch_add(1, Ordering::Relaxed);
        async move {
            match cache.get::<String>(&key(random % rows)).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err("a loaded key was missing".to_owned()),
                Err(error) => Err(error.to_string()),
            }
        }
    })
    .await;
    (measurement, issued.load(Ordering::Relaxed))
}

/// One client count: A B B A; the median rate of each, errors, p99, and the standby's share of B's reads.
async fn row(primary: &PgCache, replica: &PgCache, clients: usize, rows: u64, window: Duration) -> String {
    let (mut alone, mut with_replica) = (Measurement::default(), Measurement::default());
    let mut standby_share = (0u64, 0u64);
    for variant in [false, true, true, false] {
        if variant {
            let before = replica_reads(replica).await;
            let (m, issued) = measure(replica, clients, rows, window).await;
            standby_share.0 += replica_reads(replica).await - before;
            standby_share.1 += issued;
            with_replica.absorb(m);
        } else {
            alone.absorb(measure(primary, clients, rows, window).await.0);
        }
    }
    let (a, b) = (alone.median_rate(), with_replica.median_rate());
    let share = 100.0 * standby_share.0 as f64 / standby_share.1.max(1) as f64;
    let p99 = |m: &Measurement| m.quantile_us(0.99).map_or("-".to_owned(), |us| format!("{:.0}", us));
    format!(
        "| {clients} | {a:.0} | {b:.0} | {:.2}x | {share:.0}% | {} / {} | {} / {} |",
        b / a.max(1.0),
        p99(&alone),
        p99(&with_replica),
        alone.errors,
        with_replica.errors
    )
}

async fn run(cli: Cli) -> Result<String, String> {
    let build = |replica: bool| {
        let builder = PgCache::builder().database_url(&cli.primary).sweep_interval(None).max_entries(None);
        if replica {
            builder.read_replicas([cli.replica.as_str()], Duration::from_millis(cli.max_lag_ms))
        } else {
            builder
        }
    };
    let primary = build(false).build().await.map_err(|e| e.to_string())?;
    let replica = build(true).build().await.map_err(|e| e.to_string())?;
    load(&primary, cli.rows).await?;
    // Every read must find its key: wait until the standby holds them all and is within the bound.
    tokio::time::sleep(Duration::from_millis(cli.max_lag_ms)).await;
    for _ in 0..600 {
        if replica.health_check().await.replicas.first().is_some_and(|r| r.usable) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let window = Duration::from_secs_f64(cli.duration);
    let mut report = String::from(
        "| clients | primary alone, gets/s | primary + replica, gets/s | ratio | answered by the standby \
         | p99 µs (alone / replica) | errors (alone / replica) |\n|---|---|---|---|---|---|---|\n",
    );
    for &clients in &cli.clients {
        let line = row(&primary, &replica, clients, cli.rows, window).await;
        eprintln!("{line}");
        let _ = writeln!(report, "{line}");
    }
    Ok(report)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = cli.out.clone();
    match run(cli).await {
        Ok(report) => {
            print!("{report}");
            if let Some(path) = out {
                if let Err(error) = std::fs::write(&path, &report) {
                    eprintln!("error: cannot write {}: {error}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
