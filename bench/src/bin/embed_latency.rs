//! `embed_latency`: how long `MiniLm` takes to embed one short question, the cost a semantic lookup adds
//! before it reaches the database (target: 10 ms on one core), and what batching saves per text.
//!
//! The model runs on one thread of its own (no thread pool), so the figures are one core's; pin the process
//! to make sure nothing else shares it:
//!
//! ```sh
//! scripts/fetch-model
//! cargo build --release -p bench --bin embed_latency
//! taskset -c 1 target/release/embed_latency --iterations 2000
//! ```

use cache_runtime::semantic::{default_model_dir, Embedder, MiniLm};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Embeds one question over and over, then batches of questions, and prints percentiles.
#[derive(Debug, Parser)]
#[command(name = "embed_latency")]
struct Cli {
    /// The model directory (default: $PG_CACHED_MODEL_DIR, else target/models/all-MiniLM-L6-v2).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Timed single-question calls (after 50 untimed ones).
    #[arg(long, default_value_t = 1000)]
    iterations: usize,
    /// The question embedded.
    #[arg(long, default_value = "How do I reset my password on the mobile app?")]
    question: String,
    /// Texts per call in the batch rows.
    #[arg(long, value_delimiter = ',', default_value = "8,64")]
    batches: Vec<usize>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("embed_latency: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let dir = cli.model_dir.clone().unwrap_or_else(default_model_dir);
    let started = Instant::now();
    let model = MiniLm::from_dir(&dir)?;
    println!("model {} loaded from {} in {:.0?}", model.model_id(), dir.display(), started.elapsed());

    let question = [cli.question.as_str()];
    for _ in 0..50 {
        model.embed(&question).await?;
    }
    let mut times = Vec::with_capacity(cli.iterations);
    let cpu = cpu_time();
    for _ in 0..cli.iterations {
        let t = Instant::now();
        model.embed(&question).await?;
        times.push(t.elapsed());
    }
    let cpu = cpu_time().zip(cpu).map(|(after, before)| (after - before) / cli.iterations as u32);
    println!("one question ({:?}), {} calls: {}", cli.question, cli.iterations, summary(&mut times));
    if let Some(cpu) = cpu {
        // Unlike the wall-clock figures, not inflated by other processes on a busy machine.
        println!("  CPU time per call (process, all threads): {:.2} ms", cpu.as_secs_f64() * 1e3);
    }

    for &size in &cli.batches {
        let texts: Vec<String> = (0..size).map(|i| format!("{} (variant {i})", cli.question)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let calls = (cli.iterations / size).max(10);
        let mut per_text = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            model.embed(&refs).await?;
            per_text.push(t.elapsed() / size as u32);
        }
        println!("batches of {size}, {calls} calls, time per text: {}", summary(&mut per_text));
    }
    Ok(())
}

/// The process's user + system CPU time, from /proc (Linux; `None` elsewhere).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on: utime and stime are 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel reports in USER_HZ, 100 on every Linux platform Rust targets.
    Some(Duration::from_millis(ticks * 10))
}

fn summary(times: &mut [Duration]) -> String {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(0.99)),
        ms(at(1.0))
    )
}
