//! How long an entry lives.

use crate::error::CacheError;
use std::time::Duration;

/// How long a stored entry lives.
///
/// Every method that takes a TTL accepts `impl Into<Ttl>`, so all of these work:
///
/// ```
/// # use cache_runtime::Ttl;
/// # use std::time::Duration;
/// let _: Ttl = None.into();                             // the cache's default TTL
/// let _: Ttl = Some(Duration::from_secs(1800)).into();  // 30 minutes
/// let _: Ttl = Duration::from_secs(60).into();          // one minute
/// let _: Ttl = Ttl::Never;                              // never expires (until evicted or deleted)
/// ```
///
/// Entries that never expire are still subject to `max_entries` eviction, after every entry that does expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Ttl {
    /// The cache's default (see [`PgCacheBuilder::default_ttl`](crate::PgCacheBuilder::default_ttl)).
    #[default]
    Default,
    /// Expires this long after it is written.
    After(Duration),
    /// Never expires.
    Never,
}

impl Ttl {
    /// Resolves `Default` against the cache's default, and checks the bounds. `None` means never.
    pub(crate) fn resolve(self, default: Ttl) -> Result<Option<Duration>, CacheError> {
        let ttl = match self {
            Ttl::Default => default,
            other => other,
        };
        match ttl {
            Ttl::Never | Ttl::Default => Ok(None),
            // More than zero and at most 10,000 years: the rule is cache-rules' `ttl_in_range`.
            Ttl::After(d) if !cache_rules::ttl_in_range(d) => Err(CacheError::InvalidTtl(d)),
            Ttl::After(d) => Ok(Some(d)),
        }
    }

    /// The TTL as whole milliseconds for SQL (`NULL` = never), rounded up so that a sub-millisecond TTL is
    /// not zero.
    pub(crate) fn millis(resolved: Option<Duration>) -> Option<i64> {
        resolved.map(|d| i64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX))
    }
}

impl From<Duration> for Ttl {
    fn from(d: Duration) -> Self {
        Ttl::After(d)
    }
}

impl From<Option<Duration>> for Ttl {
    fn from(d: Option<Duration>) -> Self {
        d.map_or(Ttl::Default, Ttl::After)
    }
}
