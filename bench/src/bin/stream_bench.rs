//! `stream_bench`: what memoizing a stream costs (issue 25), as ratios against references measured in the
//! same run, alternating the two sides so that drift on a shared machine hits both alike.
//!
//! - **First chunk of a replay** against `PgCache::get` of the very entry (the same stored bytes, decoded as
//!   one JSON value): what a caller waits before the first token of a cached answer, against the plain read.
//! - **Recording on a miss** against reading the function's stream alone, for a stream of 1 KB chunks. The
//!   stream alone is paced as an LLM streams (`--gap-us` per chunk, 0 for "as fast as memory"), and the
//!   memoized side includes everything a miss adds: the lookup, recording each chunk, and the write.
//!
//! ```sh
//! cargo run --release -p bench --bin stream_bench -- --url "$DATABASE_URL"
//! ```

use cache_runtime::{pg_cached, PgCache};
use clap::Parser;
use futures_util::stream::{self, Stream, StreamExt};
use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(name = "stream_bench")]
struct Cli {
    /// A database the bench may create its tables in (it migrates it); default: `DATABASE_URL`.
    #[arg(long)]
    url: Option<String>,
    /// Rounds of each measurement (each round runs both sides once).
    #[arg(long, default_value_t = 400)]
    rounds: usize,
    /// Chunks of the recorded stream.
    #[arg(long, default_value_t = 64)]
    chunks: usize,
    /// Bytes of text per chunk.
    #[arg(long, default_value_t = 1024)]
    chunk_bytes: usize,
    /// Microseconds the stream alone takes per chunk (an LLM streams a token every 10-50 ms).
    #[arg(long, default_value_t = 1000)]
    gap_us: u64,
}

struct Model {
    cache: PgCache,
    chunks: usize,
    chunk_bytes: usize,
    gap: Duration,
    /// Distinguishes the misses' keys.
    round: AtomicU64,
}

impl Model {
    /// The stream alone: `chunks` chunks of `chunk_bytes`, each after `gap`.
    fn source(&self) -> impl Stream<Item = Result<String, Infallible>> + Send + '_ {
        let text = "x".repeat(self.chunk_bytes);
        stream::iter(0..self.chunks).then(move |i| {
            let chunk = format!("{i}:{text}");
            async move {
                if !self.gap.is_zero() {
                    tokio::time::sleep(self.gap).await;
                }
                Ok(chunk)
            }
        })
    }

    #[pg_cached(cache = self.cache, namespace = "bench_stream", ttl = "1h", stream)]
    fn answer(&self, question: u64) -> impl Stream<Item = Result<String, Infallible>> + Send + '_ {
        self.source()
    }
}

/// Median of `samples`, in microseconds.
fn median(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples.get(samples.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

async fn first_chunk_vs_get(model: &Model, rounds: usize) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let stored: Vec<_> = model.answer(0).collect().await;
    assert_eq!(stored.len(), model.chunks, "the stream ran whole");
    let key = model.answer_cache_key(0)?;
    let (mut replays, mut gets) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        let started = Instant::now();
        let first = Box::pin(model.answer(0)).next().await;
        replays.push(started.elapsed());
        assert!(matches!(first, Some(Ok(_))), "a replay starts with the first chunk");
        let started = Instant::now();
        let value: Option<serde_json::Value> = model.cache.get(&key).await?;
        gets.push(started.elapsed());
        assert!(value.is_some(), "the entry is there");
    }
    Ok((median(&mut replays), median(&mut gets)))
}

async fn recording_vs_alone(model: &Model, rounds: usize) -> (f64, f64) {
    let (mut memoized, mut alone) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        let question = 1 + model.round.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let read = model.answer(question).count().await;
        memoized.push(started.elapsed());
        assert_eq!(read, model.chunks);
        let started = Instant::now();
        let read = model.source().count().await;
        alone.push(started.elapsed());
        assert_eq!(read, model.chunks);
    }
    (median(&mut memoized), median(&mut alone))
}

async fn run(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let url = match &cli.url {
        Some(url) => url.clone(),
        None => std::env::var("DATABASE_URL").map_err(|_| "pass --url or set DATABASE_URL")?,
    };
    let cache = PgCache::builder().database_url(url).sweep_interval(None).build().await?;
    cache.migrate().await?;
    cache.delete_namespace("bench_stream").await?;
    let model = Model {
        cache,
        chunks: cli.chunks,
        chunk_bytes: cli.chunk_bytes,
        gap: Duration::from_micros(cli.gap_us),
        round: AtomicU64::new(0),
    };
    let (replay, get) = first_chunk_vs_get(&model, cli.rounds).await?;
    println!(
        "first chunk of a replay ({} chunks of {} B): p50 {replay:.0} us; PgCache::get of the same entry: \
         p50 {get:.0} us; ratio {:.2}x (target <= 1.1x)",
        cli.chunks,
        cli.chunk_bytes,
        replay / get
    );
    let rounds = (cli.rounds / 8).max(10);
    let (memoized, alone) = recording_vs_alone(&model, rounds).await;
    println!(
        "a miss ({} chunks of {} B, {} us apart): p50 {memoized:.0} us memoized (lookup, recording, write) vs \
         {alone:.0} us alone; overhead {:+.1}% (target <= 5%)",
        cli.chunks,
        cli.chunk_bytes,
        cli.gap_us,
        (memoized / alone - 1.0) * 100.0
    );
    model.cache.delete_namespace("bench_stream").await?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stream_bench: {error}");
            ExitCode::FAILURE
        }
    }
}
