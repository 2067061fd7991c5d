//! The benchmark suite of pg_cached: `cache-runtime` side by side with what users would otherwise pick (raw
//! sqlx, pgbench running the same statement, Redis), reported as ratios measured in the same run.
//!
//! Run it with `scripts/bench` (see `docs/BENCHMARKS.md`); `scripts/bench --quick` for rough figures in
//! a few minutes, `--smoke` for the self-check that the tests also run.

pub mod data;
pub mod fingerprint;
pub mod harness;
pub mod memo;
pub mod pgbench;
pub mod redis_ref;
pub mod report;
pub mod setup;
pub mod suite;
pub mod tier;

pub use suite::{run, Group, Options, Outcome, RowResult, Variant};

/// Why a row may be skipped without the run failing: a reference that is not installed or not reachable, or
/// that needs more server connections than the server allows.
pub fn is_benign_skip(reason: &str) -> bool {
    ["Redis", "pgbench", "max_connections is"].iter().any(|what| reason.contains(what))
}
