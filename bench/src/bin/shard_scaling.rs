//! `shard_scaling`: `PgCache::get` and `PgCache::set` throughput on 1, 2 and 3 shards, in the same run. Run it
//! through `scripts/bench-shards`, which starts three clusters.
//!
//! Three caches: on the first shard alone (one URL, as a user with one server builds it), on the first two
//! and on all three (`PgCacheBuilder::shards`), each with the default pool per shard. Each variant has its own
//! keys (a prefix per variant), loaded before the measurements; gets read them (every get must hit) and sets
//! overwrite them with the default durability (`AsyncCommit`). Segments alternate (A B C C B A per client
//! count) so that drift on a shared machine hits all three alike; every get row runs before the first set, so
//! that gets do not read the dead rows the sets leave behind. Every error and timeout is counted and shown: a
//! run that had any exits non-zero after printing its report.

use bench::harness::{drive, Measurement};
use cache_runtime::{PgCache, Ttl};
use clap::Parser;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

/// Measures gets and sets on one shard, on two and on three.
#[derive(Debug, Parser)]
#[command(name = "shard_scaling")]
struct Cli {
    /// The three shards' URLs, comma-separated (the 1-shard cache uses the first, the 2-shard cache the
    /// first two).
    #[arg(long, value_delimiter = ',', num_args = 1.., required = true)]
    shards: Vec<String>,
    /// Client counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Measured seconds per segment (each variant gets two segments per operation and client count).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Entries of ~1 KB per variant.
    #[arg(long, default_value_t = 20_000)]
    rows: u64,
    /// Where to write the Markdown report (also printed).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Set,
}

/// One cache under test: its shard count and its own keys.
struct Variant {
    shards: usize,
    cache: PgCache,
}

impl Variant {
    fn key(&self, i: u64) -> String {
        key(self.shards, i)
    }
}

fn key(shards: usize, i: u64) -> String {
    format!("bench_shards{shards}:{i}")
}

fn value() -> String {
    "x".repeat(1000)
}

async fn load(variant: &Variant, rows: u64) -> Result<(), String> {
    variant.cache.migrate().await.map_err(|e| e.to_string())?;
    let value = value();
    for start in (0..rows).step_by(200) {
        let batch: Vec<(String, &str)> =
            (start..(start + 200).min(rows)).map(|i| (variant.key(i), value.as_str())).collect();
        variant.cache.set_many(&batch, Ttl::Never).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn measure(variant: &Variant, op: Op, clients: usize, rows: u64, window: Duration) -> Measurement {
    let cache = variant.cache.clone();
    let shards = variant.shards;
    let value = std::sync::Arc::new(value());
    drive(clients, Duration::from_millis(500), window, move |_, random| {
        let cache = cache.clone();
        let value = std::sync::Arc::clone(&value);
        async move {
            let key = key(shards, random % rows);
            match op {
                Op::Get => match cache.get::<String>(&key).await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err(format!("a loaded key was missing: {key}")),
                    Err(error) => Err(error.to_string()),
                },
                // Overwrites a loaded key with the same value, so that the gets of later rows still hit.
                Op::Set => cache.set(&key, value.as_str(), Ttl::Never).await.map_err(|e| e.to_string()),
            }
        }
    })
    .await
}

/// Errors and timeouts over a whole run, with the first error seen.
#[derive(Default)]
struct Failures {
    errors: u64,
    timeouts: u64,
    first: Option<String>,
}

/// One operation at one client count: A B C C B A; the median rate of each, the ratios to one shard, p99,
/// client CPU per operation, and errors (timeouts).
async fn row(
    variants: &[Variant],
    op: Op,
    clients: usize,
    rows: u64,
    window: Duration,
    failures: &mut Failures,
) -> String {
    let mut results = vec![Measurement::default(); variants.len()];
    let order: Vec<usize> = (0..variants.len()).chain((0..variants.len()).rev()).collect();
    for index in order {
        results[index].absorb(measure(&variants[index], op, clients, rows, window).await);
    }
    for m in &results {
        failures.errors += m.errors;
        failures.timeouts += m.timeouts;
        if failures.first.is_none() {
            failures.first.clone_from(&m.first_error);
        }
    }
    let rates: Vec<f64> = results.iter().map(Measurement::median_rate).collect();
    let base = rates[0].max(1.0);
    let join = |f: &dyn Fn(&Measurement) -> String| results.iter().map(f).collect::<Vec<_>>().join(" / ");
    let name = match op {
        Op::Get => "get",
        Op::Set => "set",
    };
    format!(
        "| {name} | {clients} | {} | {} | {} | {} | {} |",
        rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" | "),
        rates[1..].iter().map(|r| format!("{:.2}x", r / base)).collect::<Vec<_>>().join(" | "),
        join(&|m| m.quantile_us(0.99).map_or("-".to_owned(), |us| format!("{us:.0}"))),
        join(&|m| m.client_cpu_us_per_op().map_or("-".to_owned(), |us| format!("{us:.1}"))),
        join(&|m| format!("{} ({})", m.errors, m.timeouts)),
    )
}

/// What share of a variant's keys each of its shards holds (`PgCache::shard_for`).
fn key_shares(variant: &Variant, rows: u64) -> String {
    let mut counts = vec![0u64; variant.shards];
    for i in 0..rows {
        counts[variant.cache.shard_for(&variant.key(i))] += 1;
    }
    let shares: Vec<String> =
        counts.iter().map(|&n| format!("{:.1}%", 100.0 * n as f64 / rows.max(1) as f64)).collect();
    format!("| {} | {rows} | {} |", variant.shards, shares.join(" / "))
}

async fn run(cli: Cli) -> Result<(String, Failures), String> {
    if cli.shards.len() != 3 {
        return Err(format!("--shards takes 3 URLs, not {}", cli.shards.len()));
    }
    let mut variants = Vec::new();
    for n in 1..=3 {
        let builder = PgCache::builder().sweep_interval(None).max_entries(None);
        let builder =
            if n == 1 { builder.database_url(&cli.shards[0]) } else { builder.shards(cli.shards[..n].iter()) };
        let cache = builder.build().await.map_err(|e| e.to_string())?;
        variants.push(Variant { shards: n, cache });
    }
    for variant in &variants {
        load(variant, cli.rows).await?;
    }
    let window = Duration::from_secs_f64(cli.duration);
    let mut report = String::from(
        "| op | clients | 1 shard, ops/s | 2 shards, ops/s | 3 shards, ops/s | 2 shards / 1 | 3 shards / 1 \
         | p99 µs (1 / 2 / 3) | client CPU µs/op (1 / 2 / 3) | errors (timeouts) (1 / 2 / 3) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut failures = Failures::default();
    for op in [Op::Get, Op::Set] {
        for &clients in &cli.clients {
            let line = row(&variants, op, clients, cli.rows, window, &mut failures).await;
            eprintln!("{line}");
            let _ = writeln!(report, "{line}");
        }
    }
    report.push_str("\nShare of each variant's keys held by each shard (`PgCache::shard_for`):\n\n");
    report.push_str("| shards | keys | share per shard (shard 1 / 2 / 3) |\n|---|---|---|\n");
    for variant in &variants {
        let _ = writeln!(report, "{}", key_shares(variant, cli.rows));
    }
    Ok((report, failures))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = cli.out.clone();
    match run(cli).await {
        Ok((mut report, failures)) => {
            if failures.errors > 0 {
                let _ = write!(
                    report,
                    "\n**{} operations failed ({} timeouts); the first: {}**\n",
                    failures.errors,
                    failures.timeouts,
                    failures.first.as_deref().unwrap_or("-")
                );
            }
            print!("{report}");
            if let Some(path) = out {
                if let Err(error) = std::fs::write(&path, &report) {
                    eprintln!("error: cannot write {}: {error}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            if failures.errors > 0 {
                eprintln!("error: {} operations failed ({} timeouts)", failures.errors, failures.timeouts);
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
