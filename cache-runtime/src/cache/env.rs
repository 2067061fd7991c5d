//! Building a [`PgCache`] from a URL or from the environment (`DATABASE_URL`, `CACHE_DEFAULT_TTL_MINUTES`,
//! `CACHE_MAX_ENTRIES`).

use super::{PgCache, PgCacheBuilder};
use crate::error::{CacheError, Result};
use crate::ttl::Ttl;
use cache_rules::MAX_TTL;
use std::time::Duration;

impl PgCache {
    /// Connects with default settings (see [`PgCacheBuilder`]).
    ///
    /// # Errors
    /// As [`PgCacheBuilder::build`].
    pub async fn connect(database_url: &str) -> Result<PgCache> {
        PgCache::builder().database_url(database_url).build().await
    }

    /// Connects with settings from the environment:
    /// - `DATABASE_URL` (required),
    /// - `CACHE_DEFAULT_TTL_MINUTES` (default 60; `0` means entries never expire; at most 10,000 years),
    /// - `CACHE_MAX_ENTRIES` (default 10000; `0` means no limit).
    ///
    /// # Errors
    /// [`CacheError::Config`] for a missing or malformed variable; otherwise as [`PgCacheBuilder::build`].
    pub async fn from_env() -> Result<PgCache> {
        PgCache::builder_from_env()?.build().await
    }

    /// A builder preset from the environment, as [`from_env`](Self::from_env) reads it.
    ///
    /// # Errors
    /// [`CacheError::Config`] for a missing or malformed variable.
    pub fn builder_from_env() -> Result<PgCacheBuilder> {
        let url = std::env::var("DATABASE_URL").map_err(|_| CacheError::Config("DATABASE_URL is not set".into()))?;
        let mut builder = PgCache::builder().database_url(url);
        if let Some(minutes) = env_number("CACHE_DEFAULT_TTL_MINUTES")? {
            let max = MAX_TTL.as_secs() / 60;
            builder = match minutes {
                0 => builder.default_ttl(Ttl::Never),
                m if m > max => {
                    let message = format!("CACHE_DEFAULT_TTL_MINUTES must be at most {max} (10,000 years), got {m}");
                    return Err(CacheError::Config(message));
                }
                m => builder.default_ttl(Duration::from_secs(m * 60)),
            };
        }
        if let Some(n) = env_number("CACHE_MAX_ENTRIES")? {
            builder = builder.max_entries((n > 0).then_some(n));
        }
        Ok(builder)
    }

    /// Starts a [`PgCacheBuilder`].
    pub fn builder() -> PgCacheBuilder {
        PgCacheBuilder::default()
    }
}

fn env_number(name: &str) -> Result<Option<u64>> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| CacheError::Config(format!("{name} must be a whole number, got {text:?}"))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(CacheError::Config(format!("{name} is not valid UTF-8"))),
    }
}
