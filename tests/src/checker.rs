//! A Jepsen-style history checker for invalidations.
//!
//! Concurrent tasks record what they did: every invalidation (the key, the version it made current, the
//! instant it completed) and every read (the key, the instant it started, the version it returned). A read
//! is an *anomaly* when it started after an invalidation of its key had completed (plus an optional grace
//! period) and still returned a version older than the one that invalidation made current: the cache served
//! something the application had already declared outdated.
//!
//! All instants come from one process's monotonic clock, so the check needs no clock synchronisation, and an
//! operation still in flight is never judged against an invalidation that completed after it began.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// xorshift64*: enough randomness for workloads, no dependency, reproducible from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, zero included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A duration between zero and `max`, in whole microseconds.
    pub fn duration_up_to(&mut self, max: Duration) -> Duration {
        let max_us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(self.below(max_us.saturating_add(1)))
    }
}

/// One completed invalidation of `key`, which made `version` the current one.
#[derive(Debug, Clone, Copy)]
pub struct Invalidation {
    pub key: usize,
    pub version: u64,
    pub completed: Instant,
}

/// One read of `key`, which started at `started` and returned `version`.
#[derive(Debug, Clone, Copy)]
pub struct Read {
    pub key: usize,
    pub started: Instant,
    pub version: u64,
}

/// A read that returned a version older than an invalidation completed before it started.
#[derive(Debug, Clone, Copy)]
pub struct Anomaly {
    pub read: Read,
    /// The invalidation with the highest version among those that completed before the read started.
    pub invalidation: Invalidation,
}

impl Anomaly {
    /// How long after the invalidation completed the read started.
    pub fn started_after(&self) -> Duration {
        self.read.started.saturating_duration_since(self.invalidation.completed)
    }
}

/// The result of [`History::check`].
#[derive(Debug)]
pub struct Verdict {
    pub reads: usize,
    pub invalidations: usize,
    pub anomalies: Vec<Anomaly>,
}

impl Verdict {
    /// One line for the test output: the counts and the first few anomalies.
    pub fn summary(&self) -> String {
        let mut line =
            format!("{} reads, {} invalidations, {} anomalies", self.reads, self.invalidations, self.anomalies.len());
        for anomaly in self.anomalies.iter().take(5) {
            line.push_str(&format!(
                "; key {} read v{} {:?} after the invalidation to v{} completed",
                anomaly.read.key,
                anomaly.read.version,
                anomaly.started_after(),
                anomaly.invalidation.version
            ));
        }
        line
    }
}

/// The operations of one run, recorded from any number of tasks.
#[derive(Debug, Default)]
pub struct History {
    invalidations: Mutex<Vec<Invalidation>>,
    reads: Mutex<Vec<Read>>,
}

impl History {
    /// Records that an invalidation of `key` to `version` has just completed.
    pub fn invalidated(&self, key: usize, version: u64) {
        let completed = Instant::now();
        self.invalidations.lock().unwrap_or_else(|e| e.into_inner()).push(Invalidation { key, version, completed });
    }

    /// Records a read of `key` that started at `started` and returned `version`.
    pub fn read(&self, key: usize, started: Instant, version: u64) {
        self.reads.lock().unwrap_or_else(|e| e.into_inner()).push(Read { key, started, version });
    }

    /// Finds every read that started more than `grace` after an invalidation of its key completed and
    /// returned a version older than that invalidation's. `Duration::ZERO` demands that a completed
    /// invalidation is seen by every read that starts after it.
    pub fn check(&self, grace: Duration) -> Verdict {
        let invalidations = self.invalidations.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let reads = self.reads.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Per key: invalidations in completion order, each with the highest version completed so far.
        let mut by_key: HashMap<usize, Vec<(Instant, Invalidation)>> = HashMap::new();
        let mut sorted = invalidations.clone();
        sorted.sort_by_key(|i| i.completed);
        for invalidation in sorted {
            let list = by_key.entry(invalidation.key).or_default();
            let highest = match list.last() {
                Some((_, best)) if best.version >= invalidation.version => *best,
                _ => invalidation,
            };
            list.push((invalidation.completed, highest));
        }
        let mut anomalies = Vec::new();
        for read in &reads {
            let Some(list) = by_key.get(&read.key) else { continue };
            // Invalidations that completed more than `grace` before the read started.
            let seen = list.partition_point(|(completed, _)| *completed + grace < read.started);
            if seen == 0 {
                continue;
            }
            let (_, highest) = list[seen - 1];
            if read.version < highest.version {
                anomalies.push(Anomaly { read: *read, invalidation: highest });
            }
        }
        anomalies.sort_by_key(|a| a.read.started);
        Verdict { reads: reads.len(), invalidations: invalidations.len(), anomalies }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_that_began_after_a_completed_invalidation_count() {
        let history = History::default();
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        history.invalidated(0, 1);
        std::thread::sleep(Duration::from_millis(2));
        let after = Instant::now();
        history.read(0, before, 0); // began before the invalidation completed: may see the old version
        history.read(0, after, 1); // up to date
        history.read(1, after, 0); // another key
        history.read(0, after, 0); // the anomaly
        let verdict = history.check(Duration::ZERO);
        assert_eq!((verdict.reads, verdict.invalidations, verdict.anomalies.len()), (4, 1, 1), "{verdict:?}");
        assert_eq!(verdict.anomalies[0].read.version, 0);
        assert_eq!(history.check(Duration::from_secs(1)).anomalies.len(), 0, "within the grace period");
    }

    #[test]
    fn the_highest_completed_version_is_the_bar() {
        let history = History::default();
        history.invalidated(3, 5);
        history.invalidated(3, 4); // completed later with a lower version (concurrent invalidators)
        std::thread::sleep(Duration::from_millis(1));
        history.read(3, Instant::now(), 4);
        let verdict = history.check(Duration::ZERO);
        assert_eq!(verdict.anomalies.len(), 1);
        assert_eq!(verdict.anomalies[0].invalidation.version, 5);
    }
}
