//! [`LatestInstant`]: the latest of the instants it was given, shared between threads without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Instants are kept as nanoseconds since this one (taken on first use), plus one, so that zero means none.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// The latest instant given to [`advance`](Self::advance) since the last [`clear`](Self::clear), if any.
/// Used for "when did the last removal happen" (the in-process tier) and "up to when is this standby known
/// to be complete" (read replicas).
#[derive(Debug, Default)]
pub(crate) struct LatestInstant(AtomicU64);

impl LatestInstant {
    /// Moves it to `at`, unless it is later already.
    pub(crate) fn advance(&self, at: Instant) {
        let nanos = at.saturating_duration_since(origin()).as_nanos();
        self.0.fetch_max(u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1, Ordering::AcqRel);
    }

    /// Forgets every instant given so far.
    pub(crate) fn clear(&self) {
        self.0.store(0, Ordering::Release);
    }

    pub(crate) fn get(&self) -> Option<Instant> {
        let nanos = self.0.load(Ordering::Acquire).checked_sub(1)?;
        origin().checked_add(Duration::from_nanos(nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_until_cleared() {
        let latest = LatestInstant::default();
        assert_eq!(latest.get(), None);
        let (early, late) = (Instant::now(), Instant::now() + Duration::from_millis(5));
        latest.advance(late);
        latest.advance(early);
        assert_eq!(latest.get(), Some(late), "an earlier instant does not move it back");
        latest.clear();
        assert_eq!(latest.get(), None);
    }
}
