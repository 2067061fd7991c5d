//! `large_reads` (issue 26 item 10): reads of large values, where the read byte budget that coalesced reads
//! had until issue 26 (a per-key share of 4 MiB) deferred rows and sent them again. One case per invocation,
//! so the peak RSS (VmHWM) printed is that case's.
//!
//! --load: (re)creates schema bench_large and stores --entries values of --kb KB under keys large:<kb>:<i>.
use cache_runtime::PgCache;
use clap::Parser;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Cli {
    #[arg(long)]
    url: String,
    #[arg(long)]
    load: bool,
    /// Value size in KB (of JSON).
    #[arg(long)]
    kb: usize,
    #[arg(long, default_value_t = 400)]
    entries: u64,
    /// get or get_many (100 keys)
    #[arg(long, default_value = "get")]
    mode: String,
    #[arg(long, default_value_t = 1)]
    clients: usize,
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

fn key(kb: usize, i: u64) -> String {
    format!("large:{kb}:{i:06}")
}

fn value(kb: usize, i: u64) -> String {
    // Pseudo-random hex: TOAST's pglz barely compresses it, like real payloads.
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut s = String::with_capacity(kb * 1024);
    while s.len() < kb * 1024 - 2 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{:016x}", x));
    }
    s.truncate(kb * 1024 - 2);
    s
}

fn vmhwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("large_reads: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<String, String> {
    let url = bench::setup::with_search_path(&cli.url, "bench_large");
    if cli.load {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&cli.url).await.map_err(|e| e.to_string())?;
        sqlx::Executor::execute(&mut conn, "CREATE SCHEMA IF NOT EXISTS bench_large")
            .await
            .map_err(|e| e.to_string())?;
    }
    let cache = PgCache::builder()
        .database_url(url)
        .sweep_interval(None)
        .max_entries(None)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    if cli.load {
        cache.migrate().await.map_err(|e| e.to_string())?;
        for i in 0..cli.entries {
            cache
                .set(&key(cli.kb, i), &value(cli.kb, i), Duration::from_secs(86_400))
                .await
                .map_err(|e| e.to_string())?;
        }
        return Ok(format!("loaded {} entries of {} KB", cli.entries, cli.kb));
    }
    let many = match cli.mode.as_str() {
        "get" => false,
        "get_many" => true,
        other => return Err(format!("mode {other}")),
    };
    let (ok, errors, timeouts) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let lat: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new(Vec::new()));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let (kb, entries) = (cli.kb, cli.entries);
    // Warm-up 0.3 s, then the measured window.
    for (phase, secs) in [(0, 0.3), (1, cli.seconds)] {
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut tasks = Vec::new();
        for c in 0..cli.clients {
            let (cache, ok, errors, timeouts, lat) =
                (cache.clone(), ok.clone(), errors.clone(), timeouts.clone(), lat.clone());
            let first_error = first_error.clone();
            tasks.push(tokio::spawn(async move {
                let mut x: u64 = 0x5EED + c as u64 * 7919 + phase * 31;
                let mut mine = Vec::new();
                while Instant::now() < end {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let t = Instant::now();
                    let r: Result<usize, cache_runtime::CacheError> = if many {
                        let start = x % entries;
                        let keys: Vec<String> = (0..100).map(|j| key(kb, (start + j * 3) % entries)).collect();
                        cache.get_many::<String>(&keys).await.map(|v| v.iter().filter(|x| x.is_some()).count())
                    } else {
                        cache.get::<String>(&key(kb, x % entries)).await.map(|v| usize::from(v.is_some()))
                    };
                    let us = t.elapsed().as_micros() as u32;
                    if phase == 1 {
                        match r {
                            Ok(n) if n == if many { 100 } else { 1 } => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                mine.push(us);
                            }
                            Ok(n) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                first_error.lock().unwrap().get_or_insert_with(|| format!("{n} hits, expected all"));
                            }
                            Err(e) => {
                                first_error.lock().unwrap().get_or_insert_with(|| e.to_string());
                                if e.to_string().to_lowercase().contains("time") {
                                    timeouts.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                }
                lat.lock().unwrap().extend(mine);
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())?;
        }
    }
    let mut l = lat.lock().unwrap().clone();
    l.sort_unstable();
    let pct = |p: f64| if l.is_empty() { 0 } else { l[((l.len() as f64 - 1.0) * p).round() as usize] };
    let [(statements, operations), _, _] = cache_runtime::test_support::shared_statements(&cache);
    Ok(format!(
        "kb={} mode={} clients={} ops/s={:.1} p50_us={} p99_us={} ok={} errors={} timeouts={} shared_stmts={} shared_ops={} vmhwm_mb={:.0} first_error={:?}",
        cli.kb,
        cli.mode,
        cli.clients,
        ok.load(Ordering::Relaxed) as f64 / cli.seconds,
        pct(0.5),
        pct(0.99),
        ok.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        timeouts.load(Ordering::Relaxed),
        statements,
        operations,
        vmhwm_kb() as f64 / 1024.0,
        first_error.lock().unwrap().clone()
    ))
}
