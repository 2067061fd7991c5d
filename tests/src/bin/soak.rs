//! Churn soak: a fixed working set with short TTLs and frequent sweeps, to show whether the cache table's
//! size and its dead tuples plateau (docs/RELIABILITY.md, "Churn soak").
//!
//! ```text
//! cargo run -p integration-tests --bin soak -- [--seconds 60] [--keys 2000] [--workers 4]
//!     [--sample-every 5] [--naptime 1s] [--url postgres://...] [--check [--tolerance 1.25]]
//! ```
//!
//! By default it runs on a private cluster (`integration_tests::pg_cluster`) whose autovacuum wakes every
//! `--naptime` (1 s: the default minute, accelerated like the TTLs). With `--url` it uses that database as it
//! is configured. Every memoized call's value is checked. It prints one markdown row per sample, then a
//! summary; with `--check` it exits non-zero unless the table size and the dead-tuple ratio plateau. Without
//! `--url` on a machine that cannot run a private cluster, it exits with status 77 (skipped).

use cache_runtime::{pg_cached, PgCache};
use integration_tests::pg_cluster::{ClusterError, PgCluster};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The exit status when no private cluster can run here (and no `--url` was given).
const SKIPPED: i32 = 77;

#[derive(Debug)]
struct Options {
    seconds: u64,
    keys: u64,
    workers: u64,
    sample_every: f64,
    naptime: String,
    url: Option<String>,
    check: bool,
    tolerance: f64,
}

fn options() -> Result<Options, BoxError> {
    let mut o = Options {
        seconds: 60,
        keys: 2000,
        workers: 4,
        sample_every: 5.0,
        naptime: "1s".into(),
        url: None,
        check: false,
        tolerance: 1.25,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => o.seconds = value()?.parse()?,
            "--keys" => o.keys = value()?.parse()?,
            "--workers" => o.workers = value()?.parse()?,
            "--sample-every" => o.sample_every = value()?.parse()?,
            "--naptime" => o.naptime = value()?,
            "--url" => o.url = Some(value()?),
            "--check" => o.check = true,
            "--tolerance" => o.tolerance = value()?.parse()?,
            "-h" | "--help" => {
                println!(
                    "soak [--seconds 60] [--keys 2000] [--workers 4] [--sample-every 5] [--naptime 1s] [--url URL] [--check [--tolerance 1.25]]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    Ok(o)
}

/// A retrieval-sized value: a few hundred bytes of JSON, a deterministic function of its argument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Doc {
    id: u64,
    title: String,
    body: String,
    scores: Vec<f64>,
}

fn doc(x: u64) -> Doc {
    Doc {
        id: x,
        title: format!("document {x}"),
        body: format!("{x:016x} ").repeat(16),
        scores: (0..8).map(|i| (x * 8 + i) as f64 / 7.0).collect(),
    }
}

struct Work {
    cache: PgCache,
}

impl Work {
    #[pg_cached(cache = self.cache, namespace = "soak", ttl = "2s")]
    async fn fetch(&self, x: u64) -> Doc {
        doc(x)
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    calls: u64,
    hit_ratio: f64,
    rows: i64,
    live: i64,
    dead: i64,
    heap: i64,
    pkey: i64,
    expires_idx: i64,
    total: i64,
    updates: i64,
    hot_updates: i64,
    autovacuums: i64,
}

impl Sample {
    fn dead_ratio(&self) -> f64 {
        self.dead as f64 / self.live.max(1) as f64
    }
}

async fn sample(pool: &sqlx::PgPool, at: f64, calls: u64, hit_ratio: f64) -> Result<Sample, sqlx::Error> {
    // pg_stat_user_tables is fed by backends about once a second; good enough at a 5 s sampling interval.
    let row: (i64, i64, i64, i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM cache_entries), s.n_live_tup, s.n_dead_tup, \
                pg_relation_size('cache_entries'), pg_relation_size('cache_entries_pkey'), \
                pg_relation_size('cache_entries_sweep_at_idx'), pg_total_relation_size('cache_entries'), \
                s.n_tup_upd, s.n_tup_hot_upd, s.autovacuum_count \
         FROM pg_stat_user_tables s WHERE s.relname = 'cache_entries'",
    )
    .fetch_one(pool)
    .await?;
    let (rows, live, dead, heap, pkey, expires_idx, total, updates, hot_updates, autovacuums) = row;
    Ok(Sample {
        at,
        calls,
        hit_ratio,
        rows,
        live,
        dead,
        heap,
        pkey,
        expires_idx,
        total,
        updates,
        hot_updates,
        autovacuums,
    })
}

fn kib(bytes: i64) -> String {
    format!("{:.0}", bytes as f64 / 1024.0)
}

fn print_header() {
    println!("| t (s) | calls/s | hit ratio | rows | live tuples | dead tuples | dead/live | heap KiB | pkey KiB | sweep_at idx KiB | total KiB | HOT updates | autovacuums |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
}

fn print_row(s: &Sample, prev: Option<&Sample>) {
    let (calls_per_s, hot) = match prev {
        Some(p) => {
            let updates = s.updates - p.updates;
            let hot = if updates > 0 {
                format!("{:.0}%", 100.0 * (s.hot_updates - p.hot_updates) as f64 / updates as f64)
            } else {
                "-".into()
            };
            ((s.calls - p.calls) as f64 / (s.at - p.at), hot)
        }
        None => (s.calls as f64 / s.at.max(0.001), "-".into()),
    };
    println!(
        "| {:.0} | {:.0} | {:.2} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} |",
        s.at,
        calls_per_s,
        s.hit_ratio,
        s.rows,
        s.live,
        s.dead,
        s.dead_ratio(),
        kib(s.heap),
        kib(s.pkey),
        kib(s.expires_idx),
        kib(s.total),
        hot,
        s.autovacuums
    );
}

/// Whether the run plateaued: after a warm-up (the first quarter), the largest table size of the second half
/// is at most `tolerance` times the largest of the first half (1.25 by default), and the dead/live ratio stays
/// below 1 on average over the second half (autovacuum keeps up).
fn verdict(samples: &[Sample], tolerance: f64) -> (bool, String) {
    let after_warmup: Vec<&Sample> =
        samples.iter().filter(|s| s.at >= samples.last().map_or(0.0, |l| l.at) / 4.0).collect();
    if after_warmup.len() < 4 {
        return (false, "too few samples for a verdict (run longer or sample more often)".into());
    }
    let (first, second) = after_warmup.split_at(after_warmup.len() / 2);
    let max = |part: &[&Sample]| part.iter().map(|s| s.total).max().unwrap_or(0);
    let growth = max(second) as f64 / max(first).max(1) as f64;
    let mean_dead = second.iter().map(|s| s.dead_ratio()).sum::<f64>() / second.len() as f64;
    let max_dead = second.iter().map(|s| s.dead_ratio()).fold(0.0, f64::max);
    let ok = growth <= tolerance && mean_dead < 1.0;
    (
        ok,
        format!(
            "largest total size, second half vs first half (after warm-up): {} KiB vs {} KiB (x{growth:.2}); \
             dead/live over the second half: mean {mean_dead:.2}, max {max_dead:.2} -> {}",
            kib(max(second)),
            kib(max(first)),
            if ok { "plateau" } else { "NO PLATEAU" }
        ),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let o = options()?;
    let naptime = format!("autovacuum_naptime = '{}'", o.naptime.replace('\'', ""));
    let (cluster, url) = match &o.url {
        Some(url) => (None, url.clone()),
        None => {
            let cluster = match tokio::task::spawn_blocking(move || PgCluster::start_with(&[naptime.as_str()])).await? {
                Ok(cluster) => cluster,
                Err(e @ ClusterError::Unavailable(_)) => {
                    eprintln!("{e}; pass --url to use an existing server");
                    std::process::exit(SKIPPED);
                }
                Err(e) => return Err(e.into()),
            };
            let url = cluster.url();
            (Some(cluster), url)
        }
    };
    let cache = PgCache::builder()
        .database_url(&url)
        .max_connections(o.workers as u32 + 2)
        .sweep_interval(Some(Duration::from_secs(1)))
        .build()
        .await?;
    cache.migrate().await?;
    let work = Arc::new(Work { cache: cache.clone() });
    let monitor = sqlx::PgPool::connect(&url).await?;
    let server_naptime: String =
        sqlx::query_scalar("SELECT current_setting('autovacuum_naptime')").fetch_one(&monitor).await?;
    let version: String = sqlx::query_scalar("SELECT current_setting('server_version')").fetch_one(&monitor).await?;
    println!(
        "churn soak: {} s, {} keys, TTL 2 s, sweeps every 1 s, {} workers; PostgreSQL {version}, autovacuum_naptime {server_naptime}{}",
        o.seconds,
        o.keys,
        o.workers,
        if cluster.is_some() { " (private cluster)" } else { "" }
    );

    let (stop, calls, wrong) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..o.workers {
        let (work, stop, calls, wrong, keys) =
            (Arc::clone(&work), Arc::clone(&stop), Arc::clone(&calls), Arc::clone(&wrong), o.keys);
        workers.spawn(async move {
            let mut state = (w + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            while !stop.load(Ordering::Relaxed) {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let x = state.wrapping_mul(0x2545_F491_4F6C_DD1D) % keys;
                if work.fetch(x).await != doc(x) {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut last_counts = cache.process_stats();
    print_header();
    let every = Duration::from_secs_f64(o.sample_every.max(0.1));
    let mut next = started + every;
    while started.elapsed() < Duration::from_secs(o.seconds) {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        let counts = cache.process_stats();
        let served = (counts.hits + counts.coalesced) - (last_counts.hits + last_counts.coalesced);
        let lookups = served + counts.misses - last_counts.misses;
        last_counts = counts;
        let s = sample(
            &monitor,
            started.elapsed().as_secs_f64(),
            calls.load(Ordering::Relaxed),
            served as f64 / lookups.max(1) as f64,
        )
        .await?;
        print_row(&s, samples.last());
        samples.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = workers.join_next().await {
        done?;
    }

    let stats = cache.process_stats();
    let wrong = wrong.load(Ordering::Relaxed);
    let (ok, summary) = verdict(&samples, o.tolerance);
    println!();
    println!(
        "{} calls, {wrong} wrong values, {} body runs, {} cache errors; {summary}",
        calls.load(Ordering::Relaxed),
        stats.executions,
        stats.errors
    );
    drop(cache);
    monitor.close().await;
    drop(cluster);
    if wrong > 0 {
        return Err(format!("{wrong} wrong values").into());
    }
    if o.check && !ok {
        return Err("the table did not plateau".into());
    }
    Ok(())
}
