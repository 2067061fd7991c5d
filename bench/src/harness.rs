//! Closed-loop load: N client tasks, each issuing one operation after another for a fixed time.

use crate::data::Rng;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one measured stretch produced.
#[derive(Debug, Clone, Default)]
pub struct Measurement {
    /// Operations completed inside the window.
    pub ops: u64,
    /// Operations that failed inside the window (or in the warm-up), timeouts included.
    pub errors: u64,
    /// Of `errors`, those that were the runtime's operation timeout (250 ms by default): on a machine shared
    /// with other work a stall can cause a few, which is not a fault of the code measured.
    pub timeouts: u64,
    /// The first failure seen, if any.
    pub first_error: Option<String>,
    /// Length of the window, in seconds (from its start to the last completion).
    pub secs: f64,
    /// Per-operation latencies in nanoseconds (empty for external tools).
    pub latencies_ns: Vec<u32>,
    /// Mean latency reported by an external tool (pgbench), in microseconds.
    pub reported_mean_us: Option<f64>,
    /// The rate of each stretch absorbed so far.
    pub segment_rates: Vec<f64>,
    /// CPU time the client spent in the window (this process's threads, or pgbench's), in nanoseconds.
    pub client_cpu_ns: u64,
}

/// CPU time of this process's live threads, in nanoseconds (Linux: `/proc/self/task/*/schedstat`).
pub fn own_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .filter_map(|task| task.ok())
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()))
        .sum()
}

/// CPU time of this process's waited-for children, in nanoseconds (`cutime + cstime` of `/proc/self/stat`,
/// in clock ticks of 10 ms).
pub fn children_cpu_ns() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0 };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); cutime and cstime are fields 16 and 17.
    let ticks: u64 = [13, 14].iter().filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok())).sum();
    ticks * 10_000_000
}

impl Measurement {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    /// The median of the stretches' rates: a stretch that a noisy neighbour slowed down does not count.
    pub fn median_rate(&self) -> f64 {
        if self.segment_rates.is_empty() {
            return self.rate();
        }
        let mut rates = self.segment_rates.clone();
        rates.sort_by(f64::total_cmp);
        let mid = rates.len() / 2;
        if rates.len() % 2 == 0 {
            (rates[mid - 1] + rates[mid]) / 2.0
        } else {
            rates[mid]
        }
    }

    /// Client CPU per operation, in microseconds.
    pub fn client_cpu_us_per_op(&self) -> Option<f64> {
        (self.ops > 0 && self.client_cpu_ns > 0).then(|| self.client_cpu_ns as f64 / self.ops as f64 / 1000.0)
    }

    /// Adds another stretch of the same variant.
    pub fn absorb(&mut self, other: Measurement) {
        self.segment_rates.push(other.rate());
        self.client_cpu_ns += other.client_cpu_ns;
        self.ops += other.ops;
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        self.secs += other.secs;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies_ns.extend(other.latencies_ns);
        self.reported_mean_us = match (self.reported_mean_us, other.reported_mean_us) {
            (Some(a), Some(b)) => Some((a + b) / 2.0),
            (a, b) => a.or(b),
        };
    }

    /// Mean latency in microseconds.
    pub fn mean_us(&self) -> Option<f64> {
        if let Some(mean) = self.reported_mean_us {
            return Some(mean);
        }
        if self.latencies_ns.is_empty() {
            return None;
        }
        let sum: u64 = self.latencies_ns.iter().map(|&ns| u64::from(ns)).sum();
        Some(sum as f64 / self.latencies_ns.len() as f64 / 1000.0)
    }

    /// The `q` quantile (0..=1) of latency in microseconds.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        if self.latencies_ns.is_empty() {
            return None;
        }
        let mut sorted = self.latencies_ns.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        Some(f64::from(sorted[index]) / 1000.0)
    }
}

/// Runs `op` from `clients` concurrent tasks: a warm-up of `warmup`, then a measured window of `window`.
///
/// `op(client, random)` performs one operation; `client` is the task's index (for per-client connections)
/// and `random` picks the key. Operations that start inside the window count, and each client measures at
/// least one (see below).
pub async fn drive<F, Fut>(clients: usize, warmup: Duration, window: Duration, op: F) -> Measurement
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    // One untimed call per client before the clock starts: opening the pool's connections and a session's
    // first call of a PL/pgSQL function (compiled on first use) can otherwise outlast a short window, so
    // that a row measures nothing. A failure here counts like any other.
    let mut primed = Measurement::default();
    for client in 0..clients {
        if let Err(error) = op(client, 0x5EED_0000 + client as u64).await {
            primed.errors += 1;
            if error.contains("timed out") {
                primed.timeouts += 1;
            }
            primed.first_error.get_or_insert(error);
        }
    }
    let start = Instant::now() + warmup;
    let end = start + window;
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let op = Arc::clone(&op);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(0xC11E_0000 + client as u64 * 7919 + start.elapsed().subsec_nanos() as u64);
            let mut latencies = Vec::with_capacity(1 << 16);
            let (mut errors, mut timeouts, mut first_error, mut last) = (0u64, 0u64, None, start);
            let mut fail = |error: String, errors: &mut u64| {
                *errors += 1;
                if error.contains("timed out") {
                    timeouts += 1;
                }
                first_error.get_or_insert(error);
            };
            // Every client measures at least one operation: on a slow machine one operation can outlast the
            // warm-up and the whole window, and a row must still measure something. The window then ends
            // at that operation's completion (`last`), so the rate stays operations over measured time.
            let mut measured = false;
            loop {
                let began = Instant::now();
                if began >= end && measured {
                    break;
                }
                let result = op(client, rng.next_u64()).await;
                let done = Instant::now();
                if began < start {
                    if let Err(error) = result {
                        // A warm-up failure is a failure too: something is misconfigured.
                        fail(error, &mut errors);
                    }
                    continue;
                }
                last = done;
                measured = true;
                match result {
                    Ok(()) => latencies.push(u32::try_from((done - began).as_nanos()).unwrap_or(u32::MAX)),
                    Err(error) => fail(error, &mut errors),
                }
            }
            (latencies, errors, timeouts, first_error, last)
        }));
    }
    // CPU is sampled when the window opens and after every client has stopped.
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(start.into()).await;
        own_cpu_ns()
    });
    let mut total = primed;
    let mut last = start;
    for task in tasks {
        match task.await {
            Ok((latencies, errors, timeouts, first_error, done)) => {
                total.ops += latencies.len() as u64;
                total.latencies_ns.extend(latencies);
                total.errors += errors;
                total.timeouts += timeouts;
                if total.first_error.is_none() {
                    total.first_error = first_error;
                }
                last = last.max(done);
            }
            Err(panic) => {
                total.errors += 1;
                total.first_error.get_or_insert(format!("client task failed: {panic}"));
            }
        }
    }
    total.secs = (last - start).as_secs_f64();
    if let Ok(cpu_at_start) = sampler.await {
        total.client_cpu_ns = own_cpu_ns().saturating_sub(cpu_at_start);
    }
    total
}

/// Nanoseconds per call of `f`: the median of `rounds` timed stretches of about `budget / rounds` each.
pub fn ns_per_call(budget: Duration, rounds: u32, mut f: impl FnMut()) -> f64 {
    // Calibrate a batch that takes about a millisecond.
    let mut batch = 1u64;
    loop {
        let began = Instant::now();
        for _ in 0..batch {
            f();
        }
        if began.elapsed() >= Duration::from_millis(1) || batch >= 1 << 24 {
            break;
        }
        batch *= 2;
    }
    let per_round = budget / rounds.max(1);
    let mut samples = Vec::new();
    for _ in 0..rounds.max(1) {
        let began = Instant::now();
        let mut calls = 0u64;
        while began.elapsed() < per_round {
            for _ in 0..batch {
                f();
            }
            calls += batch;
        }
        samples.push(began.elapsed().as_nanos() as f64 / calls as f64);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}
