//! `bench`: runs the suite and writes the report. See `scripts/bench`.

use bench::data::Size;
use bench::{Group, Options};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Benchmarks cache-runtime against raw sqlx, pgbench and Redis, and writes docs/BENCHMARKS.md.
///
/// Needs DATABASE_URL (run it through scripts/bench or scripts/with-postgres). Redis is used when REDIS_URL
/// (default redis://127.0.0.1:6379) answers; pgbench when it is installed. Rows without them are skipped.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Cli {
    /// Short durations (2 s per variant and case) on the full data set: rough figures in a few minutes.
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// The self-check: every row for about 100 ms on a small data set, in its own database.
    #[arg(long)]
    smoke: bool,
    /// Measured seconds per variant and case.
    #[arg(long)]
    duration: Option<f64>,
    /// Warm-up seconds before each segment.
    #[arg(long)]
    warmup: Option<f64>,
    /// Segments per variant (run A B .. B A so that drift hits every variant alike).
    #[arg(long)]
    segments: Option<u32>,
    /// Client counts, comma-separated.
    #[arg(long, value_delimiter = ',')]
    clients: Option<Vec<usize>>,
    /// Value sizes, comma-separated: 1kb, 10kb.
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<String>>,
    /// Entries of ~1 KB in the data set.
    #[arg(long)]
    rows: Option<u64>,
    /// Entries of ~10 KB in the data set.
    #[arg(long)]
    rows_10kb: Option<u64>,
    /// Distinct arguments of the memoized functions (the #[pg_cached] rows).
    #[arg(long)]
    macro_keys: Option<u64>,
    /// Only these comparisons, comma-separated: get, macro, set-full, set-async, set-unlogged.
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Only these variants, comma-separated: pgcache, pgcache-lean, sqlx, sqlx-text, pgbench, redis,
    /// pgcache-gin, macro, direct-get (for profiling one of them).
    #[arg(long, value_delimiter = ',')]
    variants: Option<Vec<String>>,
    /// Skip the fingerprinting micro-benchmark.
    #[arg(long)]
    no_fingerprint: bool,
    /// Run only the fingerprinting micro-benchmark (no database needed), for this many seconds per case.
    #[arg(long)]
    fingerprint_only: Option<f64>,
    /// Where BENCHMARKS.md and bench/ are written (the generated section of BENCHMARKS.md is replaced).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Name of the bench database, created on DATABASE_URL's server.
    #[arg(long)]
    database: Option<String>,
    /// Skip the Redis rows even if a server answers.
    #[arg(long)]
    no_redis: bool,
    /// Worker threads of the client's tokio runtime (default: one per core, as `#[tokio::main]` does).
    #[arg(long)]
    worker_threads: Option<usize>,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn options(cli: &Cli, database_url: String) -> Result<Options, String> {
    let mut opts = if cli.smoke {
        Options::smoke(database_url)
    } else if cli.quick {
        Options::quick(database_url)
    } else {
        Options::full(database_url)
    };
    if let Some(d) = cli.duration {
        opts.duration = secs(d);
    }
    if let Some(w) = cli.warmup {
        opts.warmup = secs(w);
    }
    if let Some(s) = cli.segments {
        opts.segments = s.max(1);
    }
    if let Some(c) = &cli.clients {
        opts.clients = c.iter().copied().filter(|&c| c > 0).collect();
    }
    if let Some(sizes) = &cli.sizes {
        opts.sizes = sizes
            .iter()
            .map(|s| match s.to_ascii_lowercase().as_str() {
                "1kb" | "1k" => Ok(Size::K1),
                "10kb" | "10k" => Ok(Size::K10),
                other => Err(format!("unknown size {other:?} (1kb, 10kb)")),
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(n) = cli.rows {
        opts.rows.k1 = n.max(1);
    }
    if let Some(n) = cli.rows_10kb {
        opts.rows.k10 = n.max(1);
    }
    if let Some(n) = cli.macro_keys {
        opts.macro_keys = n.max(1);
    }
    if let Some(only) = &cli.only {
        opts.groups = only
            .iter()
            .map(|name| Group::parse(name).ok_or_else(|| format!("unknown comparison {name:?}")))
            .collect::<Result<_, _>>()?;
    }
    if let Some(only) = &cli.variants {
        opts.variants = Some(
            only.iter()
                .map(|name| {
                    bench::Variant::ALL
                        .into_iter()
                        .find(|v| v.name() == name)
                        .ok_or_else(|| format!("unknown variant {name:?}"))
                })
                .collect::<Result<_, _>>()?,
        );
    }
    if cli.no_fingerprint {
        opts.fingerprint_budget = Duration::ZERO;
    }
    if let Some(db) = &cli.database {
        opts.database = db.clone();
    }
    opts.redis_url = if cli.no_redis {
        None
    } else {
        Some(std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()))
    };
    opts.out = cli.out.clone();
    opts.command = std::env::var("BENCH_COMMAND").unwrap_or_else(|_| {
        let args: Vec<String> = std::env::args().collect();
        args.join(" ")
    });
    Ok(opts)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.worker_threads {
        runtime.worker_threads(n.max(1));
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(error) => {
            eprintln!("error: cannot start the tokio runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    if let Some(budget) = cli.fingerprint_only {
        bench::fingerprint::measure(secs(budget));
        return ExitCode::SUCCESS;
    }
    let Ok(database_url) = std::env::var("DATABASE_URL") else {
        eprintln!("error: DATABASE_URL is not set. Run the suite with scripts/bench (it provides PostgreSQL).");
        return ExitCode::from(2);
    };
    let opts = match options(&cli, database_url) {
        Ok(opts) => opts,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = match bench::run(opts.clone()).await {
        Ok(outcome) => outcome,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(out) = &opts.out {
        if let Err(error) = bench::report::write(out, &opts, &outcome) {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    }
    let failed: Vec<_> = outcome.rows.iter().filter(|r| r.failed()).collect();
    for row in &failed {
        eprintln!(
            "error: {} / {} / {} clients / {}: {} failed operations ({})",
            row.case.group.name(),
            row.case.size.label(),
            row.case.clients,
            row.label,
            row.errors,
            row.first_error.as_deref().unwrap_or("")
        );
    }
    eprintln!("[bench] done in {:.0} s", outcome.wall_secs);
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
