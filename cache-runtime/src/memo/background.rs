//! Refreshes that run in the background, so that no caller waits for them: a stale hit is answered with the
//! stale value while one refresh runs (stale-while-revalidate), and with `refresh_ahead` a hit on an entry
//! close to its expiry starts one before the entry expires at all.
//!
//! A refresh is a [`Task`] made by the function's generated code (`work.rs`): the function called again with
//! owned copies of its arguments, under a refresh scope, so that its memoized call runs the body and writes
//! the result, guarded against invalidations like any memoized write. One refresh per key runs in a process
//! (a [`Refreshing`](crate::tier::flight::Refreshing) mark), and with `single_flight = "cluster"` one across
//! processes (the task takes the key's lease first, and gives up if another process holds it). A refresh
//! that fails leaves the entry as it was; the next caller that finds it stale starts another.

use super::lease::Lease;
use super::site::{SingleFlight, Site};
use super::work::{Body, How, Task, Work};
use crate::cache::{MemoHandle, PgCache};
use crate::entry::ReadFrom;
use std::future::Future;
use std::time::Duration;

/// Starts `task`, a background refresh of `key`, unless one is running in this process already (or no tokio
/// runtime is there to run it).
pub(crate) fn spawn_refresh(store: MemoHandle<'_>, site: &'static Site, key: &str, task: Task) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let Some(refreshing) = store.start_refresh(key) else { return };
    let (cache, key) = (store.cache().clone(), key.to_owned());
    // The task runs the call again: in the tenant scope of the call that started it, so that it computes the
    // same qualified key (and the body sees the same tenant).
    let tenant = crate::tenant::current();
    runtime.spawn(crate::tenant::within(tenant, async move {
        let _refreshing = refreshing;
        refresh(cache, site, key, task).await;
    }));
}

async fn refresh(cache: PgCache, site: &'static Site, key: String, task: Task) {
    let cluster = site.single_flight == SingleFlight::Cluster;
    let lease = if cluster {
        match Lease::try_take(&cache, &key).await {
            Ok(Some(lease)) => Some(lease),
            // Another process refreshes it.
            Ok(None) => return,
            // The store is failing: refresh anyway (the write may fail too; the caller already has a value).
            Err(_) => None,
        }
    } else {
        None
    };
    // Another process may have refreshed it since this one decided to (or taken the lease, refreshed and
    // released it): then there is nothing left to do.
    if still_needed(cache.memo().sealed(site.encrypt), site, &key).await {
        tracing::debug!(key, "refreshing in the background");
        super::refresh_scope(key, task).await;
    }
    if let Some(lease) = lease {
        lease.release().await;
    }
}

/// Whether the entry of `key` still needs the refresh: it is stale (or gone), or due for a refresh ahead.
async fn still_needed(store: MemoHandle<'_>, site: &Site, key: &str) -> bool {
    match store.lookup(key, None, ReadFrom::Primary).await {
        Ok(lookup) if lookup.json.is_some() && lookup.fresh => due(store, site, lookup.remaining_ms),
        _ => true,
    }
}

/// Whether a hit on an entry with `remaining_ms` left should start a refresh (`refresh_ahead`).
pub(crate) fn due(store: MemoHandle<'_>, site: &Site, remaining_ms: Option<i64>) -> bool {
    let (Some(percent), Some(remaining_ms)) = (site.refresh_ahead, remaining_ms) else { return false };
    let Ok(Some(ttl)) = site.ttl.resolve(store.config().default_ttl) else { return false };
    let threshold = ttl.saturating_mul(u32::from(percent)) / 100;
    Duration::from_millis(remaining_ms.max(0).unsigned_abs()) <= threshold
}

/// After a hit: when it is due (see [`due`]) and the function can run in the background, starts its refresh.
pub(crate) fn refresh_ahead<M, F>(
    store: MemoHandle<'_>,
    site: &'static Site,
    key: &str,
    remaining_ms: Option<i64>,
    work: Work<M, F>,
) where
    M: FnOnce(How) -> Body<F>,
    F: Future,
{
    if due(store, site, remaining_ms) && !store.is_refreshing(key) {
        if let Ok(task) = work.into_task() {
            spawn_refresh(store, site, key, task);
        }
    }
}
