//! Where a cache's connections come from: a pool, a URL (one host, or a primary and its standbys), sqlx
//! connection options, or several URLs for shards; and how servers are named (never with credentials).

use crate::error::{CacheError, Result};
use crate::redact::redact_url;
use sqlx::postgres::{PgConnectOptions, PgPool};

/// Where the cache's connections come from.
#[derive(Default)]
pub(crate) enum Source {
    #[default]
    Unset,
    Pool(PgPool),
    Url(String),
    Options(Box<PgConnectOptions>),
    Shards(Vec<String>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Unset => f.write_str("Unset"),
            Source::Pool(pool) => f.debug_tuple("Pool").field(pool).finish(),
            Source::Url(url) => f.debug_tuple("Url").field(&redact_url(url)).finish(),
            Source::Shards(urls) => {
                f.debug_tuple("Shards").field(&urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>()).finish()
            }
            Source::Options(options) => f
                .debug_struct("Options")
                .field("host", &options.get_host())
                .field("port", &options.get_port())
                .field("database", &options.get_database())
                .finish_non_exhaustive(),
        }
    }
}

impl Source {
    /// The servers to connect to, each with its shard name and its hosts (several when a URL names a primary
    /// and its standbys).
    pub(crate) fn servers(&self) -> Result<Vec<(String, Vec<PgConnectOptions>)>> {
        let servers: Vec<Vec<PgConnectOptions>> = match self {
            Source::Url(url) => vec![parse_url(url)?],
            Source::Options(options) => vec![vec![(**options).clone()]],
            Source::Shards(urls) => urls.iter().map(|url| parse_url(url)).collect::<Result<_>>()?,
            Source::Pool(_) | Source::Unset => {
                return Err(CacheError::Config("PgCache::builder() needs .pool(), .database_url() or .shards()".into()))
            }
        };
        if servers.is_empty() {
            return Err(CacheError::Config("PgCacheBuilder::shards() was given no URL".into()));
        }
        let named: Vec<(String, Vec<PgConnectOptions>)> = servers.into_iter().map(|h| (server_name(&h), h)).collect();
        for (i, (name, _)) in named.iter().enumerate() {
            if named[..i].iter().any(|(other, _)| other == name) {
                return Err(CacheError::Config(format!("shard {name} is listed twice")));
            }
        }
        Ok(named)
    }
}

/// A shard's name: its hosts and database, never its credentials (see `shards.rs`).
pub(crate) fn server_name(hosts: &[PgConnectOptions]) -> String {
    let list: Vec<String> = hosts.iter().map(|o| format!("{}:{}", o.get_host(), o.get_port())).collect();
    format!("{}/{}", list.join(","), hosts.first().and_then(|o| o.get_database()).unwrap_or(""))
}

/// The hosts of a URL (one, or several for a primary and its standbys; see `failover.rs`).
fn parse_url(url: &str) -> Result<Vec<PgConnectOptions>> {
    crate::route::failover::parse_hosts(url)
        .map_err(|e| CacheError::Config(format!("invalid database URL {}: {e}", redact_url(url))))
}
