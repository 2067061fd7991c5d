//! Leases for cluster-wide single-flight (`single_flight = "cluster"`).
//!
//! A lease is a row in `cache_leases` with an owner and a deadline. Taking one is a single upsert that only
//! succeeds when there is no row or the row's deadline has passed, so at most one live holder exists per key
//! across every process. No connection is held while the holder computes, and no advisory lock exists that
//! could leak through the pool.
//!
//! The holder deletes its row when done and sends a notification, which wakes the processes waiting for the
//! key at once; they also poll, so a lost notification only costs a poll interval. A holder that crashes,
//! hangs or overruns simply stops counting at its deadline, and the next caller to try takes over. A holder
//! whose future is dropped (cancelled) releases the lease from a background task.

use crate::error::Result;
use crate::store::PgCache;
use std::sync::atomic::{AtomicU64, Ordering};

const ACQUIRE: &str = "INSERT INTO cache_leases (cache_key, owner, deadline) \
     VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond') \
     ON CONFLICT (cache_key) DO UPDATE SET owner = EXCLUDED.owner, deadline = EXCLUDED.deadline \
     WHERE cache_leases.deadline <= now() RETURNING 1";

const RELEASE: &str = "WITH gone AS (DELETE FROM cache_leases WHERE cache_key = $1 AND owner = $2 RETURNING 1) \
     SELECT (SELECT count(*) FROM gone), (SELECT 1 FROM (SELECT pg_notify('pg_cached_events', $3)) AS n)";

static NEXT_OWNER: AtomicU64 = AtomicU64::new(0);

/// A held lease. Release it with [`Lease::release`]; dropping it releases it in the background.
#[derive(Debug)]
pub(crate) struct Lease {
    cache: PgCache,
    key: String,
    owner: String,
    released: bool,
}

impl PgCache {
    /// Takes the lease on `key` if nobody holds a live one.
    pub(crate) async fn try_lease(&self, key: &str) -> Result<Option<Lease>> {
        let owner = format!("{:016x}-{}", self.inner.events.sender, NEXT_OWNER.fetch_add(1, Ordering::Relaxed));
        let lease_ms = i64::try_from(self.config().lease.as_millis()).unwrap_or(i64::MAX);
        let query = sqlx::query_scalar::<_, i32>(ACQUIRE).bind(key).bind(&owner).bind(lease_ms);
        let taken = self.bounded("lease", self.config().op_timeout, query.fetch_optional(self.pool())).await?;
        Ok(taken.map(|_| Lease { cache: self.clone(), key: key.to_owned(), owner, released: false }))
    }
}

impl Lease {
    /// Gives the lease up and tells waiting processes the key is done.
    pub(crate) async fn release(mut self) {
        self.released = true;
        release(&self.cache, &self.key, &self.owner).await;
    }
}

async fn release(cache: &PgCache, key: &str, owner: &str) {
    let payload = cache.inner.events.done_payload(key);
    let query = sqlx::query_as::<_, (i64, Option<i32>)>(RELEASE).bind(key).bind(owner).bind(payload);
    if let Err(error) = cache.bounded("lease", cache.config().op_timeout, query.fetch_one(cache.pool())).await {
        // The lease still ends at its deadline.
        tracing::warn!(key, %error, "could not release a single-flight lease; it lapses at its deadline");
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (cache, key, owner) =
                (self.cache.clone(), std::mem::take(&mut self.key), std::mem::take(&mut self.owner));
            runtime.spawn(async move { release(&cache, &key, &owner).await });
        }
    }
}

const IS_LIVE: &str = "SELECT EXISTS (SELECT 1 FROM cache_leases WHERE cache_key = $1 AND deadline > now())";

impl PgCache {
    /// Whether someone holds a live lease on `key`.
    pub(crate) async fn lease_is_live(&self, key: &str) -> Result<bool> {
        let query = sqlx::query_scalar::<_, bool>(IS_LIVE).bind(key);
        self.bounded("lease", self.config().op_timeout, query.fetch_one(self.pool())).await
    }
}
