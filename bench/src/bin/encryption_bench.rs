//! `encryption_bench`: what encryption at rest (issue 27) costs and what compression before it saves.
//!
//! - `sizes`: bytes stored per value (`pg_column_size` of the `data` column) for the bench's 1 KB and 10 KB
//!   values and the demo's answers and retrieval results: plaintext under PostgreSQL's TOAST compression
//!   (pglz, and lz4 when the server has it), encrypted without compression, encrypted after zstd; and the
//!   time zstd takes per value. This is the table that decided `compress_encrypted`'s default.
//! - `latency`: p50 and p99 of `get` and `set` of 1 KB and 8 KB values, plain and encrypted, at 1 and 64
//!   callers; the two sides alternate in slices so that drift on a shared machine hits both alike.
//!
//! ```sh
//! cargo run --release -p bench --bin encryption_bench -- --url "$DATABASE_URL" sizes
//! cargo run --release -p bench --bin encryption_bench -- --url "$DATABASE_URL" latency
//! ```

use bench::data::{Answer, Payload, Retrieval};
use cache_runtime::{Keyring, PgCache};
use clap::{Parser, Subcommand};
use sqlx::PgPool;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(name = "encryption_bench")]
struct Cli {
    /// A database the bench may write its entries in (it migrates it); default: `DATABASE_URL`.
    #[arg(long)]
    url: Option<String>,
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Stored bytes per value: TOAST compression of plaintext against encryption with and without zstd.
    Sizes,
    /// get and set latency, plain and encrypted.
    Latency {
        /// Slices per variant (alternated).
        #[arg(long, default_value_t = 4)]
        slices: u32,
        /// Milliseconds per slice.
        #[arg(long, default_value_t = 750)]
        slice_ms: u64,
        /// Keys per value size.
        #[arg(long, default_value_t = 2_000)]
        keys: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(url) = cli.url.or_else(|| std::env::var("DATABASE_URL").ok()) else {
        eprintln!("encryption_bench: give --url or DATABASE_URL");
        return ExitCode::FAILURE;
    };
    let result = match cli.command {
        Mode::Sizes => sizes(&url).await,
        Mode::Latency { slices, slice_ms, keys } => latency(&url, slices, Duration::from_millis(slice_ms), keys).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("encryption_bench: {error}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn keyring() -> Keyring {
    Keyring::new("bench", [0x42; 32]).expect("a valid id")
}

async fn cache(url: &str, encrypted: bool, compress: bool) -> Result<PgCache> {
    let builder = PgCache::builder().database_url(url).sweep_interval(None).max_entries(None).max_connections(16);
    let builder =
        if encrypted { builder.encryption(keyring()).encrypt_all().compress_encrypted(compress) } else { builder };
    let cache = builder.build().await?;
    cache.migrate().await?;
    Ok(cache)
}

/// The sample values: (label, JSON values).
fn samples() -> Vec<(&'static str, Vec<serde_json::Value>)> {
    let json = |value: String| serde_json::from_str::<serde_json::Value>(&value).expect("JSON");
    let bench_1k = (0..50).map(|id| json(serde_json::to_string(&Retrieval::sample(id)).expect("serializes"))).collect();
    let bench_10k = (0..50).map(|id| json(serde_json::to_string(&Answer::sample(id)).expect("serializes"))).collect();
    let engine = examples::RetrievalEngine::from_bundled_corpus();
    let generator = examples::LocalGenerator::new();
    let (mut answers, mut retrievals) = (Vec::new(), Vec::new());
    for question in examples::demo::DEFAULT_QUERIES {
        let Ok(found) = engine.search(question, 5) else { continue };
        let documents = engine.documents_for(&found);
        retrievals.push(serde_json::to_value(&found).expect("serializes"));
        if let Ok(answer) = generator.compose(question, &documents) {
            answers.push(serde_json::to_value(&answer).expect("serializes"));
        }
    }
    vec![("bench 1 KB", bench_1k), ("bench 10 KB", bench_10k), ("demo answer", answers), ("demo retrieval", retrievals)]
}

async fn sizes(url: &str) -> Result<()> {
    let plain = cache(url, false, false).await?;
    let sealed = cache(url, true, false).await?;
    let zipped = cache(url, true, true).await?;
    let pool = plain.single_pool().ok_or("one server expected")?.clone();
    let lz4 =
        sqlx::query("CREATE TEMP TABLE IF NOT EXISTS lz4_probe (v jsonb COMPRESSION lz4)").execute(&pool).await.is_ok();
    println!("| values | plaintext JSON | plaintext, pglz | plaintext, lz4 | encrypted | zstd, then encrypted | zstd µs (compress + decompress) |");
    println!("|---|---|---|---|---|---|---|");
    let (mut compressor, mut decompressor) = (zstd::bulk::Compressor::new(1)?, zstd::bulk::Decompressor::new()?);
    for (label, values) in samples() {
        let n = values.len().max(1) as u64;
        let (mut text, mut pglz, mut lz4_bytes, mut enc, mut enc_z, mut zstd_us) = (0u64, 0u64, 0u64, 0u64, 0u64, 0f64);
        for (i, value) in values.iter().enumerate() {
            let json = serde_json::to_string(value)?;
            text += json.len() as u64;
            pglz += column_size(&pool, &json, "pglz").await?;
            if lz4 {
                lz4_bytes += column_size(&pool, &json, "lz4").await?;
            }
            let key = format!("sizes:{label}:{i}");
            sealed.set(&key, value, None).await?;
            enc += stored_size(&pool, &key).await?;
            zipped.set(&key, value, None).await?;
            enc_z += stored_size(&pool, &key).await?;
            // Contexts reused, as the runtime keeps one per thread.
            let started = Instant::now();
            for _ in 0..20 {
                let packed = compressor.compress(json.as_bytes())?;
                std::hint::black_box(decompressor.decompress(&packed, json.len())?);
            }
            zstd_us += started.elapsed().as_secs_f64() * 1e6 / 20.0;
        }
        let lz4_cell = if lz4 { format!("{}", lz4_bytes / n) } else { "n/a".to_owned() };
        println!(
            "| {label} ({} values) | {} | {} | {lz4_cell} | {} | {} | {:.1} |",
            values.len(),
            text / n,
            pglz / n,
            enc / n,
            enc_z / n,
            zstd_us / n as f64
        );
    }
    plain.delete_namespace("sizes").await?;
    Ok(())
}

/// The stored size of `json` in a jsonb column with `method`'s TOAST compression.
async fn column_size(pool: &PgPool, json: &str, method: &str) -> Result<u64> {
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("CREATE TEMP TABLE probe (v jsonb COMPRESSION {method}) ON COMMIT DROP"))
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO probe VALUES ($1::jsonb)").bind(json).execute(&mut *tx).await?;
    let size: i32 = sqlx::query_scalar("SELECT pg_column_size(v) FROM probe").fetch_one(&mut *tx).await?;
    tx.rollback().await?;
    Ok(u64::try_from(size).unwrap_or(0))
}

async fn stored_size(pool: &PgPool, key: &str) -> Result<u64> {
    let size: i32 = sqlx::query_scalar("SELECT pg_column_size(data) FROM cache_entries WHERE cache_key = $1")
        .bind(key)
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(size).unwrap_or(0))
}

/// An 8 KB value: the bench's answer, its text cut to fit.
fn value_8k(id: u64) -> Answer {
    let mut answer = Answer::sample(id);
    let overhead = serde_json::to_string(&answer).map_or(0, |j| j.len()) - answer.answer.len();
    answer.answer.truncate(8 * 1024 - overhead);
    answer
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Get,
    Set,
}

async fn latency(url: &str, slices: u32, slice: Duration, keys: u64) -> Result<()> {
    let variants = [("plain", cache(url, false, false).await?), ("encrypted", cache(url, true, true).await?)];
    let one_k: Arc<Vec<serde_json::Value>> =
        Arc::new((0..keys).map(|id| serde_json::to_value(Retrieval::sample(id)).expect("serializes")).collect());
    let eight_k: Arc<Vec<serde_json::Value>> =
        Arc::new((0..keys).map(|id| serde_json::to_value(value_8k(id)).expect("serializes")).collect());
    println!("| value | op | callers | plain p50 | encrypted p50 | added p50 | plain p99 | encrypted p99 |");
    println!("|---|---|---|---|---|---|---|---|");
    for (size, values) in [("1 KB", &one_k), ("8 KB", &eight_k)] {
        for (name, cache) in &variants {
            for (id, value) in values.iter().enumerate() {
                cache.set(&format!("{name}:{size}:{id}"), value, None).await?;
            }
        }
        for op in [Op::Get, Op::Set] {
            for callers in [1usize, 64] {
                let mut samples: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
                for _ in 0..slices {
                    for (side, (name, cache)) in variants.iter().enumerate() {
                        let prefix = format!("{name}:{size}");
                        samples[side].extend(run_slice(cache, &prefix, values, op, callers, slice).await?);
                    }
                }
                let [plain, encrypted] = samples.map(|mut s| {
                    s.sort_unstable();
                    (percentile(&s, 0.5), percentile(&s, 0.99))
                });
                println!(
                    "| {size} | {op:?} | {callers} | {:.3} ms | {:.3} ms | {:+.3} ms ({:+.1} %) | {:.3} ms | {:.3} ms |",
                    plain.0,
                    encrypted.0,
                    encrypted.0 - plain.0,
                    (encrypted.0 / plain.0 - 1.0) * 100.0,
                    plain.1,
                    encrypted.1
                );
            }
        }
    }
    for (name, cache) in &variants {
        cache.delete_namespace(name).await?;
    }
    Ok(())
}

/// Latencies (µs) of `callers` tasks running `op` on random keys of `prefix` for `slice`.
async fn run_slice(
    cache: &PgCache,
    prefix: &str,
    values: &Arc<Vec<serde_json::Value>>,
    op: Op,
    callers: usize,
    slice: Duration,
) -> Result<Vec<u32>> {
    let end = Instant::now() + slice;
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let (cache, prefix, values) = (cache.clone(), prefix.to_owned(), Arc::clone(values));
        tasks.push(tokio::spawn(async move {
            let mut rng = bench::data::Rng::new(0xE4C0 + caller as u64);
            let mut latencies = Vec::new();
            while Instant::now() < end {
                let id = rng.below(values.len() as u64) as usize;
                let key = format!("{prefix}:{id}");
                let started = Instant::now();
                match op {
                    Op::Get => {
                        let found: Option<serde_json::Value> = cache.get(&key).await?;
                        std::hint::black_box(found);
                    }
                    Op::Set => cache.set(&key, &values[id], None).await?,
                }
                latencies.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            Ok::<_, cache_runtime::CacheError>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// The `q` quantile of sorted microseconds, in milliseconds.
fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[index]) / 1000.0
}
