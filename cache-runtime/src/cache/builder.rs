//! Settings: [`PgCacheBuilder`], the environment variables of [`PgCache::from_env`], and [`Durability`].

use super::PgCache;
use crate::config::{Config, Durability};
use crate::error::{CacheError, Result};
use crate::redact::redact_url;
use crate::route::failover::Hosts;
use crate::route::source::{identity, warn_unnamed_host_lists, Source};
use crate::ttl::Ttl;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::time::Duration;

/// Builds a [`PgCache`].
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), cache_runtime::CacheError> {
/// use cache_runtime::{PgCache, Ttl};
/// use std::time::Duration;
///
/// let cache = PgCache::builder()
///     .pool(pool)
///     .default_ttl(Duration::from_secs(30 * 60))
///     .max_entries(50_000)
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
///
/// Settings that can be switched off take an `Option` (or anything that converts into one): `None` turns
/// them off, as in `.max_entries(None)` or `.sweep_interval(None)`.
///
/// **Bounds.** Each setter says which values it accepts. A value out of bounds is not clamped: [`build`]
/// and [`build_lazy`] refuse it with [`CacheError::Config`], which names the setting, the value and the
/// bound. Zero is refused wherever it would mean nothing, and durations wherever they exceed what the server
/// (or, for `Duration::MAX`, `Instant` arithmetic) can hold.
///
/// [`build`]: Self::build
/// [`build_lazy`]: Self::build_lazy
#[derive(Default)]
#[must_use = "a builder does nothing until .build() is awaited"]
pub struct PgCacheBuilder {
    source: Source,
    /// Standbys for reads (`read_replicas`), one URL each.
    replicas: Vec<String>,
    max_connections: Option<u32>,
    config: Config,
}

impl PgCacheBuilder {
    /// Uses an existing pool. Its settings are left alone; note that sqlx's default acquire timeout is 30 s,
    /// which the operation timeout bounds anyway.
    pub fn pool(mut self, pool: PgPool) -> Self {
        self.source = Source::Pool(pool);
        self
    }

    /// Connects to this URL with a pool of the cache's own (acquire timeout = operation timeout). Its
    /// connections also set `statement_timeout` to the maintenance timeout, so that no cache statement can
    /// run on the server for longer than that.
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.source = Source::Url(url.into());
        self
    }

    /// Like [`database_url`](Self::database_url), from sqlx connection options.
    pub fn connect_options(mut self, options: PgConnectOptions) -> Self {
        self.source = Source::Options(Box::new(options));
        self
    }

    /// Spreads the cache over several PostgreSQL servers (or databases), one URL each: every key lives on one
    /// of them, chosen by rendezvous hashing on the key and the shard's identity (adding a shard moves about
    /// 1/N of the keys to it, removing one only loses its own). Each server gets a pool of
    /// [`max_connections`](Self::max_connections).
    ///
    /// Per-key operations and memoized calls go to the key's shard; purges, sweeps, `keys`, `stats`, health
    /// checks and migrations go to every shard in parallel. A shard that is down costs only its own keys:
    /// their operations fail (memoized calls run uncached) while every other key keeps hitting, and they hit
    /// again by themselves once it is back. See docs/SCALING.md.
    ///
    /// # A shard's identity
    /// Every process that shares the shards must give each one the same identity, or the processes route
    /// keys differently: each writes where the others never read, and their invalidations miss. The
    /// identity is read from the configuration alone, never from the servers, so it is the same in a
    /// process built with [`build_lazy`](Self::build_lazy) and in one that starts while a shard is down.
    ///
    /// - **Named**: `name=postgres://...`, a name of 1 to 63 ASCII letters, digits, `.`, `_` or `-`. The
    ///   identity is the name alone: the hosts, their order, the standbys listed, the user and the
    ///   parameters may differ between processes, and the shard may move to other hosts, without moving a
    ///   key. **Name every shard whose URL lists several hosts** (a primary and its standbys), or whose
    ///   hosts may be spelled differently by different processes (`db1` and `db1.internal`).
    /// - **Unnamed**: the shard's database and the set of its `host:port` (sorted, each once; never
    ///   credentials). The order of a URL's hosts does not matter, but every process must list the same
    ///   hosts, spelled the same way: listing one more standby changes the identity. A URL with one host is
    ///   `host:port/database`. Building a cache with several shards logs a warning for each unnamed shard
    ///   that lists several hosts.
    ///
    /// The order of the list does not matter either way; [`PgCache::shard_for`] indexes it. Naming a shard
    /// (or renaming it) moves the keys that change shard once: each is a miss, then lives on its new shard,
    /// and the old copy expires by its TTL. Names must be distinct.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cache_runtime::CacheError> {
    /// let cache = cache_runtime::PgCache::builder()
    ///     .shards(["postgres://cache1/app", "postgres://cache2/app", "postgres://cache3/app"])
    ///     .build()
    ///     .await?;
    /// let shard = cache.shard_for("retrieval:rust:5"); // 0, 1 or 2
    ///
    /// // Each shard a primary and its standby: named, so that any process may list their hosts its own way.
    /// let cache = cache_runtime::PgCache::builder()
    ///     .shards([
    ///         "eu-1=postgres://cache@db1a,db1b/app?target_session_attrs=read-write",
    ///         "eu-2=postgres://cache@db2a,db2b/app?target_session_attrs=read-write",
    ///     ])
    ///     .build_lazy()?;
    /// # Ok(()) }
    /// ```
    pub fn shards<S: Into<String>>(mut self, urls: impl IntoIterator<Item = S>) -> Self {
        self.source = Source::Shards(urls.into_iter().map(Into::into).collect());
        self
    }

    /// Sends reads to hot standbys of the (one) primary whenever one of them is known to be at most `max_lag`
    /// behind; everything else, and reads when none is, go to the primary. Opt-in, for a primary whose CPU is
    /// the limit. One URL per standby; a standby that is down, lagging or promoted is skipped by itself and
    /// used again once it has caught up.
    ///
    /// Which reads: [`get`](PgCache::get), [`get_many`](PgCache::get_many) and a memoized call's lookup.
    /// Writes, deletes, purges, leases, maintenance, and the reads that must see a value just stored (a
    /// single-flight follower, a process waiting on another's lease) always use the primary.
    ///
    /// **What it costs in consistency.** A read may return a value up to `max_lag` old: a value deleted or
    /// overwritten less than `max_lag` ago, or a miss for a value written less than `max_lag` ago (its
    /// function then runs again). The lag is measured from the primary's side, never trusted from the
    /// standby: see `replicas.rs`. An invalidation is final on the primary at once, so no memoized result
    /// computed before it is stored afterwards (the stale-set guard runs on the primary, and treats a
    /// computation as starting `max_lag` earlier than its standby's clock said). LISTEN/NOTIFY works only on
    /// the primary, so the in-process tier listens there, and it keeps a value read from a standby only if it
    /// heard of no invalidation since the instant that standby is known to hold. Not available with
    /// [`shards`](Self::shards).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cache_runtime::CacheError> {
    /// use std::time::Duration;
    /// let cache = cache_runtime::PgCache::builder()
    ///     .database_url("postgres://primary.internal/app")
    ///     .read_replicas(["postgres://standby1.internal/app"], Duration::from_millis(500))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// `max_lag` must be more than zero and at most 10,000 years.
    pub fn read_replicas<S: Into<String>>(mut self, urls: impl IntoIterator<Item = S>, max_lag: Duration) -> Self {
        self.replicas = urls.into_iter().map(Into::into).collect();
        self.config.max_replica_lag = max_lag;
        self
    }

    /// The size of the cache's own pool (default 10): at least 1 and at most 262,143 (PostgreSQL's own
    /// limit on connections). Ignored with [`pool`](Self::pool), but checked all the same.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// The TTL of writes that do not give one (default one hour): more than zero and at most 10,000 years, as
    /// every TTL. `Ttl::Never` makes entries permanent.
    pub fn default_ttl(mut self, ttl: impl Into<Ttl>) -> Self {
        self.config.default_ttl = match ttl.into() {
            Ttl::Default => Config::default().default_ttl,
            other => other,
        };
        self
    }

    /// The most rows the sweeper lets the table keep (default 10,000); `None` for no limit (zero is refused,
    /// rather than read as "none" or "keep nothing"). See [`PgCache::enforce_max_entries`].
    pub fn max_entries(mut self, n: impl Into<Option<u64>>) -> Self {
        self.config.max_entries = n.into();
        self
    }

    /// Each tenant's quota (see [`tenant`](crate::tenant)): at most `max_entries` rows and `max_bytes` bytes
    /// of values as stored (`None`: no such limit; zero is refused). Default: none. The sweeper enforces it
    /// ([`PgCache::sweep`]), evicting each tenant's oldest entries first: between sweeps a tenant may hold
    /// more, so the quota is approximate, as `max_entries` is. With shards, each shard holds at most its
    /// share of each tenant's quota.
    ///
    /// ```
    /// let builder = cache_runtime::PgCache::builder().tenant_quota(1_000, Some(10 << 20));
    /// ```
    pub fn tenant_quota(mut self, max_entries: impl Into<Option<u64>>, max_bytes: impl Into<Option<u64>>) -> Self {
        self.config.tenant_quota = (max_entries.into(), max_bytes.into());
        self
    }

    /// The largest serialized value accepted, in bytes (default 1 MiB; at least 1). Larger values are refused
    /// with [`CacheError::ValueTooLarge`] before anything is sent. There is no upper bound here, but PostgreSQL
    /// refuses a `jsonb` value over 255 MiB: such a write fails with [`CacheError::Database`].
    pub fn max_value_bytes(mut self, n: usize) -> Self {
        self.config.max_value_bytes = n;
        self
    }

    /// The time limit of each get, set and delete, including waiting for a pooled connection (default 250 ms).
    /// Writes also give it to the server as their `lock_timeout`, so a write stuck behind a row lock is
    /// cancelled there rather than holding its connection.
    ///
    /// More than zero (there is no "no timeout") and at most 2,147,483,647 ms (about 24.8 days), the largest
    /// `lock_timeout` PostgreSQL accepts. The server counts whole milliseconds: less than 1 ms counts as 1 ms.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.config.op_timeout = timeout;
        self
    }

    /// The time limit of each batch of a sweep or purge, and of stats (default 30 s). With a URL, the cache's
    /// connections also take it as their `statement_timeout`.
    ///
    /// More than zero and at most 2,147,483,647 ms (about 24.8 days), the largest `statement_timeout`
    /// PostgreSQL accepts; less than 1 ms counts as 1 ms.
    pub fn maintenance_timeout(mut self, timeout: Duration) -> Self {
        self.config.maintenance_timeout = timeout;
        self
    }

    /// Whether writes wait for the WAL flush. See [`Durability`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.config.durability = durability;
        self
    }

    /// How often the background sweeper runs (default every 60 s); `None` (or zero) turns it off. At most
    /// 10,000 years.
    pub fn sweep_interval(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.config.sweep_interval = interval.into().filter(|d| !d.is_zero());
        self
    }

    /// Rows deleted per statement by sweeps, eviction and namespace purges (default 1,000; at least 1). Each
    /// statement must finish within the [`maintenance_timeout`](Self::maintenance_timeout).
    pub fn batch_size(mut self, n: u32) -> Self {
        self.config.batch_size = i64::from(n);
        self
    }

    /// Turns on the in-process tier for every key: up to `capacity` entries, each kept at most `max_age` (and
    /// never past its PostgreSQL expiry). It is off by default. Invalidations reach every process's tier
    /// through LISTEN/NOTIFY; see the crate docs, "The in-process tier", for the coherence guarantee.
    ///
    /// `capacity` must be at least 1 and `max_age` more than zero. A `max_age` over 100 years (such as
    /// `Duration::MAX`) is taken as 100 years, which means "no age limit": an entry still never outlives its
    /// PostgreSQL expiry. This one is a cap rather than an error because no other reading of it is plausible.
    pub fn local_tier(mut self, capacity: u64, max_age: Duration) -> Self {
        self.config.local_tier = Some((capacity, max_age));
        self
    }

    /// How often the event listener of the in-process tier checks that its connection still carries
    /// notifications (default every 5 s): it notifies itself, and if that has not come back by the next
    /// check, it reconnects (and the tier, cleared, serves nothing until it has). This bounds how long a
    /// half-open connection can leave the tier deaf to other processes' invalidations: two intervals.
    ///
    /// Bounds: intervals under 10 ms count as 10 ms; over a day, [`build`](Self::build) fails with
    /// [`CacheError::Config`].
    pub fn listener_heartbeat(mut self, interval: Duration) -> Self {
        self.config.listener_heartbeat = interval.max(Duration::from_millis(10));
        self
    }

    /// How long a cluster-wide single-flight lease lasts (default 30 s): if its holder crashes, hangs or
    /// overruns, other processes wait at most this long before one of them computes instead. More than zero
    /// and at most 10,000 years; less than 10 ms counts as 10 ms.
    pub fn lease_duration(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// Whether gets, memoized lookups, writes and deletes issued while others are in flight share statements
    /// (default on). Operations that arrive while every connection is busy are sent together, as one
    /// statement per kind, as soon as a connection is free; there is no timer, so a lone caller pays nothing
    /// for it. Every guarantee holds per key inside a batch, and each caller gets its own result or error.
    /// Bulk operations ([`PgCache::get_many`] and the like) are batched either way.
    pub fn coalesce(mut self, enabled: bool) -> Self {
        self.config.coalesce = enabled;
        self
    }

    /// The most keys one coalesced statement carries (default 128; at least 1; writes and deletes carry at
    /// most 400 whatever this says).
    pub fn coalesce_max_keys(mut self, n: usize) -> Self {
        self.config.coalesce_max_keys = n;
        self
    }

    /// How many statements of one kind (reads, writes, deletes) may be in flight at once, each on a pooled
    /// connection (default 4, and never more than the pool). A few callers use them all, each for its own
    /// statement; under more, operations wait and share statements, of which at most half this many
    /// (at least one) run at once. Fewer in flight means larger batches and fewer round trips; more means
    /// more of the server's cores at work. On a 2-core server 4 served the most gets at 4 to 256 callers
    /// (docs/BENCHMARKS.md); a server with many cores may want more. At least 1.
    pub fn coalesce_in_flight(mut self, n: usize) -> Self {
        self.config.coalesce_in_flight = n;
        self
    }

    /// The model that embeds texts for semantic entries: [`PgCache::set_similar`],
    /// [`PgCache::get_similar`] and functions with `#[pg_cached(similar(...))]`. Without one, the first two
    /// return [`CacheError::Config`] and the functions work by their exact key alone (with one warning each).
    /// [`semantic::embedder_from_env`](crate::semantic::embedder_from_env) finds the one a deployment
    /// configured; a `MiniLm` or `OpenAiEmbedder` can be given directly, or any implementation of
    /// [`Embedder`](crate::semantic::Embedder). Its [`model_id`](crate::semantic::Embedder::model_id) is part
    /// of every semantic entry's scope: entries embedded by another model are never compared.
    pub fn embedder(mut self, embedder: impl crate::semantic::Embedder + 'static) -> Self {
        self.config.embedder = Some(std::sync::Arc::new(embedder));
        self
    }

    /// The lowest cosine similarity at which a stored text answers an asked one (default
    /// [`DEFAULT_SIMILARITY_THRESHOLD`](crate::DEFAULT_SIMILARITY_THRESHOLD), 0.85: docs/SEMANTIC.md shows the
    /// curve it was chosen from; 0.90-0.95 for deployments that must rarely serve a wrong answer). Functions
    /// with `similar(arg, threshold = ...)` use their own. Must be in (0, 1]: checked when the cache is built
    /// ([`CacheError::Config`]).
    pub fn similarity_threshold(mut self, threshold: f32) -> Self {
        self.config.similarity_threshold = threshold;
        self
    }

    /// Makes [`PgCache::migrate`] also create the opt-in GIN index over `data`.
    pub fn gin_index(mut self, enabled: bool) -> Self {
        self.config.gin_index = enabled;
        self
    }

    /// Builds the cache. With a URL this connects (and fails if the database cannot be reached); with a pool
    /// it does no I/O. Starts the background sweeper unless it was turned off.
    ///
    /// The first connection to each server may take up to the operation timeout or 2 s, whichever is longer:
    /// it costs more round trips (TCP, authentication) than any later operation on a warm pool, and a busy or
    /// just-started server may be slow to accept it.
    ///
    /// # Errors
    /// [`CacheError::Config`] when neither a pool nor a URL was given, a URL is malformed or a setting is out
    /// of bounds; [`CacheError::Database`] when the database cannot be reached within that time.
    pub async fn build(mut self) -> Result<PgCache> {
        self.check()?;
        if matches!(self.source, Source::Pool(_) | Source::Unset) {
            return self.build_lazy();
        }
        let named = self.source.servers()?;
        self.check_replicas(named.len())?;
        warn_unnamed_host_lists(&named);
        // How long a server may take to accept its first connection (see above).
        let window = self.config.op_timeout.max(Duration::from_secs(2));
        let mut servers = Vec::new();
        for spec in named {
            let name = spec.name;
            let hosts = Hosts::new(spec.hosts.into_iter().map(|o| with_statement_timeout(&self.config, o)).collect());
            // With several hosts, start on the one that accepts writes (or the first, if none answers yet).
            let start = match hosts.find_primary(window).await {
                Some(primary) => primary.clone(),
                None => hosts.first().clone(),
            };
            let pool = self.first_connection(start, window).await?;
            servers.push((name, pool, hosts));
        }
        let replicas = self.replica_pools(servers.len())?;
        Ok(PgCache::from_parts(servers, replicas, self.config))
    }

    /// A pool of our own on `start`, with one connection open. The pool waits for a connection only as long as
    /// an operation may (its acquire timeout), so an attempt that timed out is made again until `window` ends.
    async fn first_connection(&self, start: PgConnectOptions, window: Duration) -> Result<PgPool> {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let attempt = own_pool(&self.config, self.max_connections).connect_with(start.clone());
            match tokio::time::timeout_at(deadline, attempt).await.unwrap_or(Err(sqlx::Error::PoolTimedOut)) {
                Err(sqlx::Error::PoolTimedOut) if tokio::time::Instant::now() < deadline => continue,
                connected => return connected.map_err(CacheError::db("connect")),
            }
        }
    }

    /// Checks every setting against its bounds (see the type's docs), once they are all known.
    fn check(&mut self) -> Result<()> {
        self.config = std::mem::take(&mut self.config).checked()?;
        crate::config::check_max_connections(self.max_connections)
    }

    fn check_replicas(&self, servers: usize) -> Result<()> {
        if self.replicas.is_empty() || servers == 1 {
            return Ok(());
        }
        Err(CacheError::Config(
            "read_replicas() cannot be combined with shards(): give each shard's primary only".into(),
        ))
    }

    /// A lazily connected pool per read replica (a standby that is down at start-up is only skipped).
    fn replica_pools(&self, servers: usize) -> Result<Vec<(String, PgPool)>> {
        self.check_replicas(servers)?;
        if self.replicas.is_empty() {
            return Ok(Vec::new());
        }
        let replicas = Source::Shards(self.replicas.clone()).servers()?;
        Ok(replicas
            .into_iter()
            .map(|spec| {
                let options = with_statement_timeout(&self.config, spec.hosts[0].clone());
                (spec.name, own_pool(&self.config, self.max_connections).connect_lazy_with(options))
            })
            .collect())
    }

    /// Like [`build`](Self::build), but never connects now: connections are opened on first use. The
    /// process-wide instance is built this way, so that a database that is down at start-up only means misses
    /// until it comes up. With several hosts in a URL it starts on the first and follows the primary from the
    /// first failed operation on.
    ///
    /// # Errors
    /// [`CacheError::Config`] when neither a pool nor a URL was given, a URL is malformed or a setting is out
    /// of bounds.
    pub fn build_lazy(mut self) -> Result<PgCache> {
        self.check()?;
        if let Source::Pool(pool) = &self.source {
            let options = (*pool.connect_options()).clone();
            let name = identity(std::slice::from_ref(&options));
            let replicas = self.replica_pools(1)?;
            return Ok(PgCache::from_parts(
                vec![(name, pool.clone(), Hosts::new(vec![options]))],
                replicas,
                self.config,
            ));
        }
        let named = self.source.servers()?;
        warn_unnamed_host_lists(&named);
        let servers = named
            .into_iter()
            .map(|spec| {
                let hosts =
                    Hosts::new(spec.hosts.into_iter().map(|o| with_statement_timeout(&self.config, o)).collect());
                let pool = own_pool(&self.config, self.max_connections).connect_lazy_with(hosts.first().clone());
                (spec.name, pool, hosts)
            })
            .collect::<Vec<_>>();
        let replicas = self.replica_pools(servers.len())?;
        Ok(PgCache::from_parts(servers, replicas, self.config))
    }
}

/// By hand, so that no URL shows its password (see `redact.rs`).
impl std::fmt::Debug for PgCacheBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let replicas: Vec<String> = self.replicas.iter().map(|url| redact_url(url)).collect();
        f.debug_struct("PgCacheBuilder")
            .field("source", &self.source)
            .field("replicas", &replicas)
            .field("max_connections", &self.max_connections)
            .field("config", &self.config)
            .finish()
    }
}

/// No statement of the cache's own pool runs on the server for longer than the maintenance timeout.
fn with_statement_timeout(config: &Config, options: PgConnectOptions) -> PgConnectOptions {
    let statement_timeout = config.maintenance_timeout.as_millis().to_string();
    options.options([("statement_timeout", statement_timeout.as_str())])
}

fn own_pool(config: &Config, max_connections: Option<u32>) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections.unwrap_or(10))
        .acquire_timeout(config.op_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        // sqlx's default pings every connection as it leaves the pool: a second round trip per get and set,
        // measured at up to 0.69x the rate of raw sqlx (docs/BENCHMARKS.md). A dead connection shows up on
        // use instead, and the operation is retried once on a fresh connection (see `exec.rs`).
        .test_before_acquire(false)
}

mod encryption;
#[cfg(test)]
mod tests;
