//! Counters kept by this process, per namespace, bounded in number.

use super::event::{Event, HitKind};
use crate::usage::Usage;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// What one namespace's counters count. All are since this `PgCache` was built, in this process only.
#[derive(Debug, Default)]
pub(crate) struct NamespaceCounters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) executions: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) local_hits: AtomicU64,
    pub(crate) local_misses: AtomicU64,
    pub(crate) stale_if_error: AtomicU64,
    pub(crate) undecryptable: AtomicU64,
    /// Microseconds of computation that hits avoided (each hit adds its entry's compute time).
    pub(crate) compute_saved_us: AtomicU64,
    /// Tokens (in and out) and micro-USD that hits avoided (each hit adds its entry's usage).
    pub(crate) tokens_saved: AtomicU64,
    pub(crate) cost_saved: AtomicU64,
}

impl NamespaceCounters {
    fn counter(&self, event: Event) -> &AtomicU64 {
        match event {
            Event::Hit => &self.hits,
            Event::Miss => &self.misses,
            Event::Error => &self.errors,
            Event::Coalesced => &self.coalesced,
            Event::Execution => &self.executions,
            Event::StaleServed => &self.stale_served,
            Event::LocalHit => &self.local_hits,
            Event::LocalMiss => &self.local_misses,
            Event::StaleIfError => &self.stale_if_error,
            Event::Undecryptable => &self.undecryptable,
        }
    }
}

/// How many namespaces get counters of their own; the rest are counted together under [`OTHER_NAMESPACES`].
/// Keys are free-form (`user42:profile` is a namespace of its own), so without a bound the counters would
/// grow with every distinct prefix.
pub const MAX_COUNTED_NAMESPACES: usize = 256;

/// The namespace under which counters of namespaces beyond [`MAX_COUNTED_NAMESPACES`] are added up. No
/// valid namespace (see [`validate_namespace`](crate::validate_namespace)) can be spelled this way.
pub const OTHER_NAMESPACES: &str = "*other*";

/// Per-namespace counters, created on first use, at most [`MAX_COUNTED_NAMESPACES`] of them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    by_namespace: RwLock<HashMap<String, NamespaceCounters>>,
}

impl Counters {
    pub(crate) fn record(&self, namespace: &str, event: Event) {
        let slot = self.add(namespace, |c| c.counter(event), 1);
        crate::observe::metrics::event(slot, event);
    }

    /// Adds the compute time (µs) that a hit in `namespace` avoided.
    pub(crate) fn saved(&self, namespace: &str, compute_us: u64) {
        self.add(namespace, |c| &c.compute_saved_us, compute_us);
    }

    /// Adds the usage that a hit of `kind` in `namespace` avoided: its entry's.
    pub(crate) fn usage_saved(&self, namespace: &str, kind: HitKind, usage: Usage) {
        if usage.is_zero() {
            return;
        }
        let slot = self.add(namespace, |c| &c.tokens_saved, usage.tokens());
        self.add(slot, |c| &c.cost_saved, usage.cost_micros_usd);
        crate::observe::metrics::usage_saved(slot, kind, usage);
    }

    /// Adds `by` to the counter `which` of `namespace`, created if need be; returns the name it is counted
    /// under.
    fn add<'a>(&self, namespace: &'a str, which: impl Fn(&NamespaceCounters) -> &AtomicU64, by: u64) -> &'a str {
        // The common case: the namespace is known, and a shared lock is enough to bump its atomic.
        if let Some(found) = self.by_namespace.read().unwrap_or_else(|e| e.into_inner()).get(namespace) {
            saturating_add(which(found), by);
            return namespace;
        }
        // A poisoned lock only means another thread panicked while holding it; the map is still usable.
        let mut map = self.by_namespace.write().unwrap_or_else(|e| e.into_inner());
        let slot = if map.contains_key(namespace) || map.len() < MAX_COUNTED_NAMESPACES {
            namespace
        } else {
            OTHER_NAMESPACES
        };
        saturating_add(which(map.entry(slot.to_owned()).or_default()), by);
        slot
    }

    /// The name `namespace` is counted under: itself, or [`OTHER_NAMESPACES`] once the bound is reached.
    pub(crate) fn slot<'a>(&self, namespace: &'a str) -> &'a str {
        let map = self.by_namespace.read().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(namespace) || map.len() < MAX_COUNTED_NAMESPACES {
            namespace
        } else {
            OTHER_NAMESPACES
        }
    }

    pub(crate) fn snapshot(&self) -> HashMap<String, ProcessCounts> {
        let map = self.by_namespace.read().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(ns, c)| (ns.clone(), ProcessCounts::from(c))).collect()
    }
}

/// Adds `by` to `counter`, stopping at `u64::MAX` (usage is user-reported and may be large).
fn saturating_add(counter: &AtomicU64, by: u64) {
    if by == 1 {
        // Counts of events: a u64 of them does not overflow.
        counter.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_add(by)));
}

/// This process's counters for one namespace (or all of them, added up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ProcessCounts {
    /// Lookups answered from PostgreSQL.
    pub hits: u64,
    /// Lookups that found nothing usable in PostgreSQL.
    pub misses: u64,
    /// Cache operations that failed; the caller ran uncached.
    pub errors: u64,
    /// Calls answered by joining another caller's computation (single-flight).
    pub coalesced: u64,
    /// Times a memoized function's body actually ran.
    pub executions: u64,
    /// Expired values served while a background refresh ran.
    pub stale_served: u64,
    /// Lookups answered from the in-process tier.
    pub local_hits: u64,
    /// Lookups that missed the in-process tier and went on to PostgreSQL.
    pub local_misses: u64,
    /// Calls whose body failed (an `Err`, a `None`) and that were served an entry expired less than
    /// `stale_if_error` ago instead.
    pub stale_if_error: u64,
    /// Encrypted entries that could not be decrypted and were treated as misses (each also counts in
    /// [`misses`](Self::misses)): a key id this keyring lacks, a failed authentication (a ciphertext copied
    /// under another key, a wrong key), or a plain value in an encrypted namespace. See docs/SECURITY.md.
    pub undecryptable: u64,
    /// Microseconds of computation that hits (in PostgreSQL, in the in-process tier, or by joining another
    /// caller's computation) did not have to redo: the sum of the compute times recorded with the entries
    /// they were served. See [`compute_saved`](Self::compute_saved).
    pub compute_saved_us: u64,
    /// Notifications on the events channel that this cache's listeners dropped because the cache did not send
    /// them (malformed, not UTF-8, or not signed with the database's events secret): each had no effect.
    /// Counted for the whole process, never per namespace (a forged notification names none).
    pub forged_events: u64,
    /// Tokens (input and output) that hits did not have to spend again: the sum of the
    /// [`Usage::tokens`](crate::Usage::tokens) stored with the entries they were served (hits of every kind:
    /// PostgreSQL, in-process, a joined computation, stale). Entries without usage add 0.
    pub tokens_saved: u64,
    /// Money that those hits did not spend again, in micro-USD (millionths of a dollar): the sum of the
    /// entries' [`Usage::cost_micros_usd`](crate::Usage::cost_micros_usd). See
    /// [`cost_saved_usd`](Self::cost_saved_usd).
    pub cost_saved: u64,
}

impl From<&NamespaceCounters> for ProcessCounts {
    fn from(c: &NamespaceCounters) -> Self {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProcessCounts {
            hits: get(&c.hits),
            misses: get(&c.misses),
            errors: get(&c.errors),
            coalesced: get(&c.coalesced),
            executions: get(&c.executions),
            stale_served: get(&c.stale_served),
            local_hits: get(&c.local_hits),
            local_misses: get(&c.local_misses),
            stale_if_error: get(&c.stale_if_error),
            undecryptable: get(&c.undecryptable),
            compute_saved_us: get(&c.compute_saved_us),
            forged_events: 0,
            tokens_saved: get(&c.tokens_saved),
            cost_saved: get(&c.cost_saved),
        }
    }
}

impl ProcessCounts {
    /// Share of lookups served from a cache tier (PostgreSQL, in-process, or a joined computation), 0 to 1.
    /// `None` before the first lookup.
    pub fn hit_ratio(&self) -> Option<f64> {
        let served = self.hits + self.local_hits + self.coalesced + self.stale_served;
        let total = served + self.misses;
        (total > 0).then(|| served as f64 / total as f64)
    }

    /// The computation time hits avoided ([`compute_saved_us`](Self::compute_saved_us)).
    pub fn compute_saved(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.compute_saved_us)
    }

    /// The money hits saved ([`cost_saved`](Self::cost_saved)), in US dollars, for display.
    pub fn cost_saved_usd(&self) -> f64 {
        self.cost_saved as f64 / 1_000_000.0
    }
}

/// Adds another set of counters, for example to total several namespaces or several `PgCache`s.
impl std::ops::AddAssign<&ProcessCounts> for ProcessCounts {
    fn add_assign(&mut self, other: &ProcessCounts) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.errors += other.errors;
        self.coalesced += other.coalesced;
        self.executions += other.executions;
        self.stale_served += other.stale_served;
        self.local_hits += other.local_hits;
        self.local_misses += other.local_misses;
        self.stale_if_error += other.stale_if_error;
        self.undecryptable += other.undecryptable;
        self.compute_saved_us += other.compute_saved_us;
        self.forged_events += other.forged_events;
        self.tokens_saved = self.tokens_saved.saturating_add(other.tokens_saved);
        self.cost_saved = self.cost_saved.saturating_add(other.cost_saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_counted_are_bounded() {
        let counters = Counters::default();
        for user in 0..1_000 {
            counters.record(&format!("user{user}"), Event::Hit);
        }
        counters.record("user0", Event::Miss);
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.len(), MAX_COUNTED_NAMESPACES + 1);
        assert_eq!(snapshot["user0"].misses, 1, "a namespace counted before the bound keeps its own counters");
        let other = snapshot[OTHER_NAMESPACES].hits;
        assert_eq!(other, 1_000 - MAX_COUNTED_NAMESPACES as u64);
        assert_eq!(snapshot.values().map(|c| c.hits).sum::<u64>(), 1_000, "nothing is lost");
    }

    #[test]
    fn usage_saved_adds_tokens_and_cost_and_saturates() {
        let counters = Counters::default();
        let usage = Usage { input_tokens: 100, output_tokens: 20, cost_micros_usd: 900 };
        counters.usage_saved("answer", HitKind::Exact, usage);
        counters.usage_saved("answer", HitKind::Local, usage);
        counters.usage_saved("answer", HitKind::Stale, Usage::default());
        let answer = counters.snapshot()["answer"];
        assert_eq!((answer.tokens_saved, answer.cost_saved), (240, 1_800));
        counters.usage_saved("answer", HitKind::Exact, Usage { cost_micros_usd: u64::MAX, ..Usage::default() });
        assert_eq!(counters.snapshot()["answer"].cost_saved, u64::MAX);
    }

    #[test]
    fn counters_add_field_by_field() {
        let one = ProcessCounts {
            hits: 1,
            misses: 2,
            errors: 3,
            coalesced: 4,
            executions: 5,
            stale_served: 6,
            local_hits: 7,
            local_misses: 8,
            stale_if_error: 9,
            undecryptable: 14,
            compute_saved_us: 10,
            forged_events: 11,
            tokens_saved: 12,
            cost_saved: 13,
        };
        let mut total = one;
        total += &one;
        assert_eq!(
            total,
            ProcessCounts {
                hits: 2,
                misses: 4,
                errors: 6,
                coalesced: 8,
                executions: 10,
                stale_served: 12,
                local_hits: 14,
                local_misses: 16,
                stale_if_error: 18,
                undecryptable: 28,
                compute_saved_us: 20,
                forged_events: 22,
                tokens_saved: 24,
                cost_saved: 26,
            }
        );
    }
}
