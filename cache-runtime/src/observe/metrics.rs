//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`), so that any exporter
//! works: Prometheus, StatsD, OpenTelemetry. Without the feature every function here is empty and inlined
//! away.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `pg_cached_hits_total` | counter | `namespace`, `tier` (`postgres`, `local`, `flight`: another caller's computation) |
//! | `pg_cached_misses_total` | counter | `namespace` |
//! | `pg_cached_stale_served_total` | counter | `namespace` |
//! | `pg_cached_stale_if_error_total` | counter | `namespace` (an expired entry replaced a failed body) |
//! | `pg_cached_undecryptable_total` | counter | `namespace` (an encrypted entry that could not be decrypted: a miss) |
//! | `pg_cached_executions_total` | counter | `namespace` (a memoized body ran) |
//! | `pg_cached_errors_total` | counter | `namespace`, `kind` (see [`CacheError::kind`](crate::CacheError::kind)) |
//! | `pg_cached_invalidations_total` | counter | `namespace`, `scope` (`key`, `namespace`, `tag`) |
//! | `pg_cached_bytes_written_total` | counter | `namespace` (JSON bytes of the values written) |
//! | `pg_cached_events_dropped_total` | counter | `reason` (`unknown`: signed by the cache, of a kind this release does not know): notifications on the events channel dropped unapplied |
//! | `pg_cached_forged_events_total` | counter | none: notifications on the events channel that the cache did not send (malformed, not UTF-8, not signed with the database's secret), dropped without effect |
//! | `pg_cached_coalesced_batches_total` | counter | `operation` (`get`, `set`, `delete`): statements that carried more than one operation |
//! | `pg_cached_coalesced_operations_total` | counter | `operation`: the operations those statements carried |
//! | `pg_cached_operation_seconds` | histogram | `operation` (`get`, `set`, `delete`, `lookup`), `namespace`: PostgreSQL round trips |
//! | `pg_cached_compute_seconds` | histogram | `namespace` (a memoized body's run time) |
//! | `pg_cached_tokens_saved_total` | counter | `namespace`, `kind` (`exact`, `semantic`, `stale`, `local`): tokens (in and out) of the entries hits served, as their bodies reported them with [`usage`](crate::usage) |
//! | `pg_cached_cost_saved_micros_total` | counter | `namespace`, `kind`: the same entries' cost, in micro-USD |
//!
//! Label sets are bounded: namespaces beyond [`MAX_COUNTED_NAMESPACES`](crate::MAX_COUNTED_NAMESPACES) are
//! reported as [`OTHER_NAMESPACES`](crate::OTHER_NAMESPACES), as the process counters are.

use super::event::{Event, HitKind};
use crate::usage::Usage;
use std::time::Instant;

/// The start of something to time: `None` without the feature, so that the hot path reads no clock for a
/// histogram nobody records.
#[inline]
pub(crate) fn clock() -> Option<Instant> {
    cfg!(feature = "metrics").then(Instant::now)
}

/// Counts `event` for `namespace` (already bounded by the caller).
#[inline]
pub(crate) fn event(namespace: &str, event: Event) {
    #[cfg(feature = "metrics")]
    {
        let ns = namespace.to_owned();
        match event {
            Event::Hit => {
                metrics::counter!("pg_cached_hits_total", "namespace" => ns, "tier" => "postgres").increment(1)
            }
            Event::LocalHit => {
                metrics::counter!("pg_cached_hits_total", "namespace" => ns, "tier" => "local").increment(1)
            }
            Event::Coalesced => {
                metrics::counter!("pg_cached_hits_total", "namespace" => ns, "tier" => "flight").increment(1)
            }
            Event::Miss => metrics::counter!("pg_cached_misses_total", "namespace" => ns).increment(1),
            Event::StaleServed => metrics::counter!("pg_cached_stale_served_total", "namespace" => ns).increment(1),
            Event::StaleIfError => {
                metrics::counter!("pg_cached_stale_if_error_total", "namespace" => ns).increment(1);
            }
            Event::Execution => metrics::counter!("pg_cached_executions_total", "namespace" => ns).increment(1),
            Event::Undecryptable => {
                metrics::counter!("pg_cached_undecryptable_total", "namespace" => ns).increment(1);
            }
            // Errors are counted with their kind by `error`; a local-tier miss goes on to PostgreSQL, whose
            // outcome is what counts.
            Event::Error | Event::LocalMiss => {}
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (namespace, event);
}

/// Counts the usage a hit of `kind` in `namespace` (already bounded) saved. Nothing for zero usage: an entry
/// without usage leaves the counters as they are (absent, until a hit saves something).
#[inline]
pub(crate) fn usage_saved(namespace: &str, kind: HitKind, usage: Usage) {
    #[cfg(feature = "metrics")]
    {
        let (ns, kind) = (namespace.to_owned(), kind.label());
        if usage.tokens() > 0 {
            metrics::counter!("pg_cached_tokens_saved_total", "namespace" => ns.clone(), "kind" => kind)
                .increment(usage.tokens());
        }
        if usage.cost_micros_usd > 0 {
            metrics::counter!("pg_cached_cost_saved_micros_total", "namespace" => ns, "kind" => kind)
                .increment(usage.cost_micros_usd);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (namespace, kind, usage);
}

/// Counts a failed cache operation of `kind` for `namespace`.
#[inline]
pub(crate) fn error(namespace: &str, kind: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("pg_cached_errors_total", "namespace" => namespace.to_owned(), "kind" => kind).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (namespace, kind);
}

/// Counts an invalidation of one key (`scope` = `key`), of a whole namespace, or of tags (`tag`, across
/// namespaces: labelled with the namespace "").
#[inline]
pub(crate) fn invalidation(namespace: &str, scope: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("pg_cached_invalidations_total", "namespace" => namespace.to_owned(), "scope" => scope)
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (namespace, scope);
}

/// Counts a notification on the events channel that was authentic but dropped unapplied, and why (`unknown`:
/// a kind this release does not know).
#[inline]
pub(crate) fn event_dropped(reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("pg_cached_events_dropped_total", "reason" => reason).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = reason;
}

/// Counts a notification on the events channel that the cache did not send.
#[inline]
pub(crate) fn forged_event() {
    #[cfg(feature = "metrics")]
    metrics::counter!("pg_cached_forged_events_total").increment(1);
}

/// Counts `bytes` of JSON written for `namespace`.
#[inline]
pub(crate) fn bytes_written(namespace: &str, bytes: usize) {
    #[cfg(feature = "metrics")]
    metrics::counter!("pg_cached_bytes_written_total", "namespace" => namespace.to_owned())
        .increment(u64::try_from(bytes).unwrap_or(u64::MAX));
    #[cfg(not(feature = "metrics"))]
    let _ = (namespace, bytes);
}

/// Counts one statement that carried `operations` operations of kind `operation` (only when more than one).
#[inline]
pub(crate) fn coalesced(operation: &'static str, operations: usize) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("pg_cached_coalesced_batches_total", "operation" => operation).increment(1);
        metrics::counter!("pg_cached_coalesced_operations_total", "operation" => operation)
            .increment(u64::try_from(operations).unwrap_or(u64::MAX));
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (operation, operations);
}

/// Records how long one PostgreSQL operation (`get`, `set`, `delete`, or a memoized call's `lookup`) on a key
/// of `namespace` took, found or not, failed or not. Hits of the in-process tier are not timed: they are
/// counted as hits with `tier = "local"`. `started` comes from [`clock`].
#[inline]
pub(crate) fn operation(operation: &'static str, namespace: &str, started: Option<Instant>) {
    #[cfg(feature = "metrics")]
    if let Some(started) = started {
        metrics::histogram!("pg_cached_operation_seconds", "operation" => operation, "namespace" => namespace.to_owned())
            .record(started.elapsed().as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (operation, namespace, started);
}

/// Records how long a memoized body of `namespace` ran, since `started` (from [`clock`]).
#[inline]
pub(crate) fn compute(namespace: &str, started: Option<Instant>) {
    #[cfg(feature = "metrics")]
    if let Some(started) = started {
        metrics::histogram!("pg_cached_compute_seconds", "namespace" => namespace.to_owned())
            .record(started.elapsed().as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (namespace, started);
}
