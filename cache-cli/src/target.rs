//! The cache this run operates: a [`PgCache`] for the operations cache-runtime offers, and one pool per
//! server for this tool's own read-only SQL (metadata the library does not expose).
//!
//! With `--shards`, the `PgCache` is built with `.shards(urls)`, so deletes and purges reach every shard
//! exactly as the services' own calls would, and the tool's SQL runs on every shard at once; commands merge
//! the results. Each shard's pool comes from a one-server `PgCache` over the same URL, so multi-host URLs
//! (a primary and its standbys) and named shards (`eu-1=postgres://...`) are understood the same way the
//! library understands them, and `shard_for` routes by the same identities as the services.
//!
//! Nothing here may hang: connecting is bounded by `--timeout`, and every statement of the tool's own by
//! [`STATEMENT_TIMEOUT`] (the library's connections also carry it as `statement_timeout`).

use crate::cli::ConnectionArgs;
use crate::error::CliError;
use cache_runtime::{redact_url, CacheError, PgCache, PgCacheBuilder};
use futures_util::future::join_all;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, PgPool};
use std::future::Future;
use std::time::Duration;

/// The longest any statement of this tool may run: the library's default maintenance timeout, which it also
/// sets as the connections' `statement_timeout`.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections per server: enough for a listener and a few statements at once, and little for the server.
const POOL_SIZE: u32 = 4;

/// One PostgreSQL server (a shard, or the only server).
#[derive(Debug, Clone)]
pub struct Shard {
    /// `host:port/database`, never credentials; shown in output and errors.
    pub name: String,
    /// A pool on it, for this tool's own statements.
    pub pool: PgPool,
}

impl Shard {
    /// Maps a driver error on this server into a [`CliError`].
    pub fn error(&self) -> impl FnOnce(sqlx::Error) -> CliError + '_ {
        |source| CliError::database(&self.name, source)
    }
}

/// The cache and its servers.
#[derive(Debug)]
pub struct Target {
    /// The cache, as the services build it (background sweeper off: this tool sweeps only when asked).
    pub cache: PgCache,
    /// Its servers, in the order given (so `cache.shard_for(key)` indexes this).
    pub shards: Vec<Shard>,
}

/// Settings a command may need beyond the connection.
#[derive(Debug, Default, Clone)]
pub struct Tuning {
    /// The row limit a sweep enforces; `None` for none.
    pub max_entries: Option<u64>,
    /// The keys of encryption at rest (`rekey`), from `PG_CACHED_KEYS`.
    pub keyring: Option<cache_runtime::Keyring>,
}

impl Target {
    /// Connects to the server(s) named on the command line, within `--timeout`.
    ///
    /// # Errors
    /// [`CliError::Usage`] when no database is named; [`CliError::Connect`] when a server cannot be reached.
    pub async fn connect(args: &ConnectionArgs, tuning: Tuning) -> Result<Target, CliError> {
        let urls = urls(args)?;
        // A shard is given as the services give it (maybe `name=postgres://...`): a one-shard list.
        let sharded = !args.shards.is_empty();
        let one = |url: &str| match sharded {
            true => PgCache::builder().shards([url]),
            false => PgCache::builder().database_url(url),
        };
        let builder = |url: &str| configure(one(url), args.timeout, &tuning);
        let connecting = urls.iter().map(|url| connect_one(builder(url), url, args.timeout));
        let caches: Vec<PgCache> = join_all(connecting).await.into_iter().collect::<Result<_, _>>()?;
        // Each of these caches runs on the one server of its URL.
        let shards = caches
            .iter()
            .flat_map(PgCache::shard_pools)
            .map(|pool| Shard { name: server_name(pool), pool: pool.clone() })
            .collect();
        let cache = match <[PgCache; 1]>::try_from(caches) {
            Ok([only]) => only,
            // Every shard answered above: the sharded cache may open its own connections lazily.
            Err(_) => configure(PgCache::builder().shards(urls), args.timeout, &tuning).build_lazy()?,
        };
        Ok(Target { cache, shards })
    }

    /// Runs `work` on every server at once, each bounded by [`STATEMENT_TIMEOUT`]; the results in server
    /// order, or the first error.
    ///
    /// # Errors
    /// The first error of any server, or [`CliError::Timeout`].
    pub async fn on_every_shard<'a, T, F, Fut>(&'a self, what: &'static str, work: F) -> Result<Vec<T>, CliError>
    where
        F: Fn(&'a Shard) -> Fut,
        Fut: Future<Output = Result<T, CliError>>,
    {
        let runs = self.shards.iter().map(|shard| bounded(shard, what, work(shard)));
        join_all(runs).await.into_iter().collect()
    }

    /// The server that holds `key`.
    pub fn shard_for(&self, key: &str) -> &Shard {
        let index = self.cache.shard_for(key).min(self.shards.len().saturating_sub(1));
        &self.shards[index]
    }
}

/// Runs `work` on `shard` within [`STATEMENT_TIMEOUT`].
///
/// # Errors
/// `work`'s error, or [`CliError::Timeout`].
pub async fn bounded<T>(
    shard: &Shard,
    what: &'static str,
    work: impl Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    tokio::time::timeout(STATEMENT_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(CliError::Timeout { what, server: shard.name.clone(), after: STATEMENT_TIMEOUT }))
}

/// The URLs to use: `--shards` if given, else `--database-url` / `DATABASE_URL`.
fn urls(args: &ConnectionArgs) -> Result<Vec<String>, CliError> {
    let shards: Vec<String> = args.shards.iter().flat_map(|list| split_shards(list)).collect();
    if !shards.is_empty() {
        return Ok(shards);
    }
    match args.database_url.as_deref().map(str::trim) {
        Some(url) if !url.is_empty() => Ok(vec![url.to_owned()]),
        _ => Err(CliError::Usage("no database given: set DATABASE_URL, or pass --database-url or --shards".into())),
    }
}

/// The settings every cache of this tool gets: the operation timeout (which also bounds connecting), no
/// background sweeper, a small pool.
fn configure(builder: PgCacheBuilder, timeout: Duration, tuning: &Tuning) -> PgCacheBuilder {
    let builder =
        builder.op_timeout(timeout).sweep_interval(None).max_connections(POOL_SIZE).max_entries(tuning.max_entries);
    match &tuning.keyring {
        Some(keyring) => builder.encryption(keyring.clone()),
        None => builder,
    }
}

/// Builds a one-server cache, which connects. The builder bounds each attempt by `timeout` (probing for
/// the primary, then the pool's first connection); the outer limit is only a backstop.
async fn connect_one(builder: PgCacheBuilder, url: &str, timeout: Duration) -> Result<PgCache, CliError> {
    let server = redact_url(url);
    let backstop = timeout * 2 + Duration::from_secs(2);
    match tokio::time::timeout(backstop, builder.build()).await {
        Ok(Ok(cache)) => Ok(cache),
        Ok(Err(error)) if error.is_unavailable() => {
            Err(CliError::Connect { server, reason: diagnose(url, &error, timeout).await })
        }
        Ok(Err(error)) => Err(error.into()),
        Err(_) => Err(CliError::Connect { server, reason: format!("no answer within {backstop:?}") }),
    }
}

/// Why connecting failed, in the driver's words. The pool retries a refused connection until its timeout
/// and then only says that it timed out; one direct attempt recovers the reason ("Connection refused").
async fn diagnose(url: &str, error: &CacheError, timeout: Duration) -> String {
    let pooled = root_cause(error);
    let timed_out = matches!(error, CacheError::Timeout { .. })
        || matches!(error, CacheError::Database { source, .. } if matches!(**source, sqlx::Error::PoolTimedOut));
    // Multi-host URLs do not parse here; the pool's word is all there is for them.
    let Some(options) = timed_out.then(|| url.parse::<PgConnectOptions>().ok()).flatten() else {
        return pooled;
    };
    let attempt = tokio::time::timeout(timeout.min(Duration::from_secs(2)), PgConnection::connect_with(&options));
    match attempt.await {
        Ok(Err(direct)) => root_cause(&direct),
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            pooled
        }
        Err(_) => format!("no answer within {timeout:?}"),
    }
}

/// The innermost message of an error chain: "Connection refused (os error 111)" rather than the wrappers.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

/// A comma-separated list of shards, each `URL` or `NAME=URL`, where a URL may itself list several hosts
/// separated by commas: a comma starts a new shard only where what follows opens one (`scheme://` or
/// `NAME=scheme://`); otherwise it belongs to the URL before it.
fn split_shards(list: &str) -> Vec<String> {
    let mut shards: Vec<String> = Vec::new();
    for piece in list.split(',').filter(|piece| !piece.trim().is_empty()) {
        match shards.last_mut() {
            Some(last) if !opens_a_shard(piece.trim_start()) => {
                last.push(',');
                last.push_str(piece);
            }
            _ => shards.push(piece.to_owned()),
        }
    }
    shards.into_iter().map(|s| s.trim().to_owned()).collect()
}

/// Whether `piece` starts with `scheme://` or `name=scheme://` (a name and a scheme hold neither `/`, `:`,
/// `@` nor `?`, which every host, port or path before a `://` further on would).
fn opens_a_shard(piece: &str) -> bool {
    piece.find("://").is_some_and(|end| !piece[..end].contains(['/', ':', '@', '?']) && end > 0)
}

/// `host:port/database` of the server a pool connects to.
fn server_name(pool: &PgPool) -> String {
    let options = pool.connect_options();
    format!("{}:{}/{}", options.get_host(), options.get_port(), options.get_database().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_take_the_place_of_the_database_url() {
        let args = |url: Option<&str>, shards: &[&str]| ConnectionArgs {
            database_url: url.map(str::to_owned),
            shards: shards.iter().map(|s| (*s).to_owned()).collect(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(urls(&args(Some("postgres://a/x"), &[])).ok(), Some(vec!["postgres://a/x".to_owned()]));
        let sharded = urls(&args(Some("postgres://a/x"), &["postgres://b/y", " postgres://c/z"]));
        assert_eq!(sharded.ok(), Some(vec!["postgres://b/y".to_owned(), "postgres://c/z".to_owned()]));
        assert!(matches!(urls(&args(None, &[])), Err(CliError::Usage(_))));
        // Multi-host URLs and named shards, in one list or in several flags.
        let listed = urls(&args(
            None,
            &["postgres://u@a1,a2:5433/x?sslmode=disable,eu-2=postgres://b1,b2/y", "c=postgresql://c/z,"],
        ));
        let expected = ["postgres://u@a1,a2:5433/x?sslmode=disable", "eu-2=postgres://b1,b2/y", "c=postgresql://c/z"];
        assert_eq!(listed.ok(), Some(expected.map(str::to_owned).to_vec()));
        assert!(matches!(urls(&args(Some(" "), &[])), Err(CliError::Usage(_))));
    }
}
