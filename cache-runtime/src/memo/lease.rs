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

use crate::cache::PgCache;
use crate::error::Result;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_OWNER: AtomicU64 = AtomicU64::new(0);

/// A held lease. Release it with [`Lease::release`]; dropping it releases it in the background.
#[derive(Debug)]
pub(crate) struct Lease {
    cache: PgCache,
    key: String,
    owner: String,
    released: bool,
}

impl Lease {
    /// Takes the lease on `key` in `cache` if nobody holds a live one.
    ///
    /// Cancellation-safe: the statement runs in a task of its own, so if this future is dropped after the row
    /// was written, the task still receives the lease and, finding nobody to hand it to, releases it.
    pub(crate) async fn try_take(cache: &PgCache, key: &str) -> Result<Option<Lease>> {
        let (handover, received) = tokio::sync::oneshot::channel();
        let (cache, key) = (cache.clone(), key.to_owned());
        tokio::spawn(async move {
            // A send to a dropped receiver gives the lease back, and dropping it releases it.
            let _ = handover.send(acquire(cache, key).await);
        });
        received.await.unwrap_or_else(|_| Err(crate::CacheError::Internal("the lease task ended early".into())))
    }

    /// Gives the lease up and tells waiting processes the key is done. The release runs in a task of its own
    /// that this call waits for: a cancelled caller leaves the task to finish, so the row never stays behind.
    pub(crate) async fn release(mut self) {
        self.released = true;
        if let Some(task) = spawn_release(&self.cache, std::mem::take(&mut self.key), std::mem::take(&mut self.owner)) {
            let _ = task.await;
        }
    }
}

async fn acquire(cache: PgCache, key: String) -> Result<Option<Lease>> {
    let store = cache.memo();
    let prefix = format!("{:016x}-", store.sender());
    let owner = format!("{prefix}{}", NEXT_OWNER.fetch_add(1, Ordering::Relaxed));
    let lease_ms = i64::try_from(store.config().lease.as_millis()).unwrap_or(i64::MAX);
    match store.lease_acquire(&key, &owner, &prefix, lease_ms).await {
        Ok(taken) => Ok(taken.then(|| Lease { cache: cache.clone(), key, owner, released: false })),
        Err(error) => {
            // A timeout may strike after the server took the lease: delete it by its (unique) owner, so
            // nobody waits for a lease that no caller knows it holds.
            let _ = spawn_release(&cache, key, owner);
            Err(error)
        }
    }
}

fn spawn_release(cache: &PgCache, key: String, owner: String) -> Option<tokio::task::JoinHandle<()>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let cache = cache.clone();
    Some(runtime.spawn(async move { release(&cache, &key, &owner).await }))
}

/// Deletes the lease row and wakes the waiting processes. A failure (server restarting, pool exhausted) is
/// retried in the background for as long as the lease would last anyway.
async fn release(cache: &PgCache, key: &str, owner: &str) {
    if try_release(cache, key, owner).await {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let (cache, key, owner) = (cache.clone(), key.to_owned(), owner.to_owned());
    runtime.spawn(async move {
        let give_up = tokio::time::Instant::now() + cache.memo().config().lease;
        let mut pause = std::time::Duration::from_millis(50);
        while tokio::time::Instant::now() < give_up {
            tokio::time::sleep(pause).await;
            if try_release(&cache, &key, &owner).await {
                return;
            }
            pause = (pause * 2).min(std::time::Duration::from_secs(1));
        }
        tracing::warn!(key, "could not release a single-flight lease; it lapses at its deadline");
    });
}

async fn try_release(cache: &PgCache, key: &str, owner: &str) -> bool {
    match cache.memo().lease_release(key, owner).await {
        Ok(()) => true,
        Err(error) => {
            tracing::debug!(key, %error, "releasing a single-flight lease failed; retrying");
            false
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            let _ = spawn_release(&self.cache, std::mem::take(&mut self.key), std::mem::take(&mut self.owner));
        }
    }
}
