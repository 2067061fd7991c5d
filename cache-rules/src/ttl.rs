//! Time-to-live: how long a stored entry lives.
//!
//! The rule: more than zero and at most [`MAX_TTL`], 10,000 years of 365 days. PostgreSQL timestamps end in
//! the year 294276, but nobody means more than this; an entry that should not expire says so with
//! `Ttl::Never` (`ttl = "never"` in the attribute).

use std::time::Duration;

/// The longest TTL accepted, in seconds: 10,000 years of 365 days.
pub const MAX_TTL_SECS: u64 = 10_000 * 365 * 86_400;

/// The longest TTL accepted: 10,000 years of 365 days.
pub const MAX_TTL: Duration = Duration::from_secs(MAX_TTL_SECS);

/// Whether `ttl` is a TTL the cache accepts: more than zero and at most [`MAX_TTL`].
///
/// ```
/// use std::time::Duration;
/// assert!(cache_rules::ttl_in_range(Duration::from_millis(1)));
/// assert!(!cache_rules::ttl_in_range(Duration::ZERO));
/// assert!(!cache_rules::ttl_in_range(cache_rules::MAX_TTL + Duration::from_nanos(1)));
/// ```
pub fn ttl_in_range(ttl: Duration) -> bool {
    !ttl.is_zero() && ttl <= MAX_TTL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert!(ttl_in_range(Duration::from_nanos(1)));
        assert!(ttl_in_range(MAX_TTL));
        assert!(!ttl_in_range(Duration::ZERO));
        assert!(!ttl_in_range(MAX_TTL + Duration::from_nanos(1)));
        assert!(!ttl_in_range(Duration::MAX));
        assert_eq!(MAX_TTL.as_secs() / 86_400, 3_650_000);
    }
}
