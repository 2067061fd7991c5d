//! The process-wide cache that `#[pg_cached]` uses when no `cache = ...` is given.

use super::PgCache;
use std::sync::RwLock;

enum State {
    /// Nothing set yet: the first use builds it from the environment.
    Unset,
    Ready(PgCache),
    /// Building from the environment failed (already warned): run uncached.
    Unavailable,
}

static GLOBAL: RwLock<State> = RwLock::new(State::Unset);

/// Makes `cache` the process-wide instance, replacing any earlier one.
///
/// Memoized functions without a `cache = ...` option use it. Call it once at start-up, before the first
/// memoized call, or the first call builds one from the environment instead.
pub fn set_global(cache: PgCache) {
    *GLOBAL.write().unwrap_or_else(|e| e.into_inner()) = State::Ready(cache);
}

/// The process-wide instance.
///
/// If none was set, the first call builds one from the environment ([`PgCache::builder_from_env`]) without
/// connecting yet, and creates the table in the background (`migrate`), so a database that is down at
/// start-up only means misses until it comes up. If the environment is unusable (`DATABASE_URL` missing or
/// malformed), a warning is logged once and `None` is returned from then on: memoized functions run uncached.
pub fn global() -> Option<PgCache> {
    if let State::Ready(cache) = &*GLOBAL.read().unwrap_or_else(|e| e.into_inner()) {
        return Some(cache.clone());
    }
    let mut state = GLOBAL.write().unwrap_or_else(|e| e.into_inner());
    match &*state {
        State::Ready(cache) => Some(cache.clone()),
        State::Unavailable => None,
        State::Unset => match PgCache::builder_from_env().and_then(|b| b.build_lazy()) {
            Ok(cache) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let migrating = cache.clone();
                    runtime.spawn(async move {
                        if let Err(error) = migrating.migrate().await {
                            tracing::warn!(%error, "could not create the cache table; memoized calls run uncached until it exists");
                        }
                    });
                }
                *state = State::Ready(cache.clone());
                Some(cache)
            }
            Err(error) => {
                tracing::warn!(%error, "no process-wide cache: memoized functions will run uncached (call cache_runtime::set_global to provide one)");
                *state = State::Unavailable;
                None
            }
        },
    }
}
