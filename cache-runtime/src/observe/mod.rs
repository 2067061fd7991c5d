//! What this process observed: per-namespace counters ([`PgCache::stats`](crate::PgCache::stats),
//! [`PgCache::process_stats`](crate::PgCache::process_stats)) and the `metrics` feature's counters and
//! histograms. Below every layer that counts; uses nothing but leaf modules.

mod counters;
mod event;
pub(crate) mod metrics;

pub(crate) use counters::Counters;
pub use counters::{ProcessCounts, MAX_COUNTED_NAMESPACES, OTHER_NAMESPACES};
pub(crate) use event::{Event, HitKind};
