//! [`PgCache`]: the store itself, its builder, and the SQL it runs.

use crate::codec;
use crate::error::{CacheError, Result};
use crate::events::Events;
use crate::flight::Flights;
use crate::local::{key_hash, LocalTier};
use crate::stats::{namespace_of, CacheStats, Counters, Event, HealthReport, HealthStatus};
use crate::ttl::Ttl;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::future::Future;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The longest key the `cache_key VARCHAR(500)` column holds, in characters.
pub const MAX_KEY_CHARS: usize = 500;

/// The migrations that create the cache table, embedded at compile time.
///
/// Usable with `#[sqlx::test(migrator = "cache_runtime::MIGRATOR")]`, or through [`PgCache::migrate`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

const GIN_INDEX_SQL: &str = include_str!("../../migrations/optional/gin_index.sql");

/// How cache writes meet the write-ahead log.
///
/// A cache can always be rebuilt, so by default writes do not wait for the WAL to reach disk: each write
/// turns `synchronous_commit` off for its own transaction only (it never touches the session or other
/// writes). A crash can then lose the last few hundred milliseconds of cache writes, which only means a few
/// extra misses; in exchange a write costs about a third as much (see `docs/BENCHMARKS.md`). The entries
/// that survive are never torn or corrupted either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Commit without waiting for the WAL flush (`synchronous_commit = off` for the write's transaction).
    #[default]
    AsyncCommit,
    /// Wait for the WAL flush, as ordinary writes do.
    Full,
}

/// Settings of a [`PgCache`]. Built by [`PgCacheBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) default_ttl: Ttl,
    pub(crate) max_entries: Option<u64>,
    pub(crate) max_value_bytes: usize,
    pub(crate) op_timeout: Duration,
    pub(crate) maintenance_timeout: Duration,
    pub(crate) durability: Durability,
    pub(crate) sweep_interval: Option<Duration>,
    pub(crate) batch_size: i64,
    pub(crate) gin_index: bool,
    pub(crate) lease: Duration,
    pub(crate) local_tier: Option<(u64, Duration)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_ttl: Ttl::After(Duration::from_secs(60 * 60)),
            max_entries: Some(10_000),
            max_value_bytes: 1024 * 1024,
            op_timeout: Duration::from_millis(250),
            maintenance_timeout: Duration::from_secs(30),
            durability: Durability::AsyncCommit,
            sweep_interval: Some(Duration::from_secs(60)),
            batch_size: 1000,
            gin_index: false,
            lease: Duration::from_secs(30),
            local_tier: None,
        }
    }
}

/// A PostgreSQL-backed cache of JSON values.
///
/// Cheap to clone (an `Arc`), `Send + Sync`, and meant to be built once and shared.
///
/// ```no_run
/// # async fn demo() -> Result<(), cache_runtime::CacheError> {
/// use cache_runtime::PgCache;
/// use std::time::Duration;
///
/// let cache = PgCache::connect("postgres://postgres@127.0.0.1/app").await?;
/// cache.migrate().await?;
/// cache.set("retrieval:python:5", &vec!["doc-1", "doc-2"], Some(Duration::from_secs(1800))).await?;
/// let docs: Option<Vec<String>> = cache.get("retrieval:python:5").await?;
/// assert_eq!(docs.as_deref(), Some(&["doc-1".to_string(), "doc-2".to_string()][..]));
/// # Ok(()) }
/// ```
///
/// # Expiry
/// An expired entry is never returned: every read compares `expires_at` with the database's clock. Expired
/// rows are deleted later, by [`clear_expired`](Self::clear_expired) or by the background sweeper.
///
/// # Failures and timeouts
/// Every operation is bounded by the operation timeout (250 ms by default,
/// [`PgCacheBuilder::op_timeout`]); a database that hangs gives [`CacheError::Timeout`], not a hung caller.
/// Maintenance operations (sweeps, namespace purges, stats) are bounded per batch by the maintenance timeout.
#[derive(Clone, Debug)]
pub struct PgCache {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) config: Config,
    pub(crate) counters: Counters,
    pub(crate) flights: Flights,
    /// The in-process tier, created by the builder or on first use by a function with `local = "..."`.
    pub(crate) local: Arc<OnceLock<LocalTier>>,
    pub(crate) events: Arc<Events>,
    pub(crate) statements: Statements,
    sweeper: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(handle) = self.sweeper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            handle.abort();
        }
    }
}

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
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until .build() is awaited"]
pub struct PgCacheBuilder {
    pool: Option<PgPool>,
    database_url: Option<String>,
    max_connections: Option<u32>,
    config: Config,
}

impl PgCacheBuilder {
    /// Uses an existing pool. Its settings are left alone; note that sqlx's default acquire timeout is 30 s,
    /// which the operation timeout bounds anyway.
    pub fn pool(mut self, pool: PgPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Connects to this URL with a pool of the cache's own (acquire timeout = operation timeout).
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// The size of the cache's own pool (default 10). Ignored with [`pool`](Self::pool).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// The TTL of writes that do not give one (default one hour). `Ttl::Never` makes entries permanent.
    pub fn default_ttl(mut self, ttl: impl Into<Ttl>) -> Self {
        self.config.default_ttl = match ttl.into() {
            Ttl::Default => Config::default().default_ttl,
            other => other,
        };
        self
    }

    /// The most rows the sweeper lets the table keep (default 10,000). See [`PgCache::enforce_max_entries`].
    pub fn max_entries(mut self, n: u64) -> Self {
        self.config.max_entries = Some(n);
        self
    }

    /// No limit on the number of rows.
    pub fn unlimited_entries(mut self) -> Self {
        self.config.max_entries = None;
        self
    }

    /// The largest serialized value accepted, in bytes (default 1 MiB). Larger values are refused with
    /// [`CacheError::ValueTooLarge`] before anything is sent.
    pub fn max_value_bytes(mut self, n: usize) -> Self {
        self.config.max_value_bytes = n;
        self
    }

    /// The time limit of each get, set and delete, including waiting for a pooled connection (default 250 ms).
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.config.op_timeout = timeout;
        self
    }

    /// The time limit of each batch of a sweep or purge, and of stats (default 30 s).
    pub fn maintenance_timeout(mut self, timeout: Duration) -> Self {
        self.config.maintenance_timeout = timeout;
        self
    }

    /// Whether writes wait for the WAL flush. See [`Durability`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.config.durability = durability;
        self
    }

    /// How often the background sweeper runs (default every 60 s); `None` turns it off.
    pub fn sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.config.sweep_interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// Rows deleted per statement by sweeps, eviction and namespace purges (default 1,000).
    pub fn batch_size(mut self, n: u32) -> Self {
        self.config.batch_size = i64::from(n.max(1));
        self
    }

    /// Turns on the in-process tier for every key: up to `capacity` entries, each kept at most `max_age` (and
    /// never past its PostgreSQL expiry). Invalidations reach every process's tier through LISTEN/NOTIFY; see
    /// the crate docs, "The in-process tier", for the coherence guarantee.
    pub fn local_tier(mut self, capacity: u64, max_age: Duration) -> Self {
        self.config.local_tier = Some((capacity.max(1), max_age));
        self
    }

    /// How long a cluster-wide single-flight lease lasts (default 30 s): if its holder crashes, hangs or
    /// overruns, other processes wait at most this long before one of them computes instead.
    pub fn lease_duration(mut self, lease: Duration) -> Self {
        self.config.lease = lease.max(Duration::from_millis(10));
        self
    }

    /// Makes [`PgCache::migrate`] also create the opt-in GIN index over `data`.
    pub fn gin_index(mut self, enabled: bool) -> Self {
        self.config.gin_index = enabled;
        self
    }

    /// Builds the cache. With a URL this connects (and fails if the database cannot be reached); with a pool
    /// it does no I/O. Starts the background sweeper unless it was turned off.
    pub async fn build(self) -> Result<PgCache> {
        let pool = match (self.pool, self.database_url) {
            (Some(pool), _) => pool,
            (None, Some(url)) => {
                own_pool(&self.config, self.max_connections).connect(&url).await.map_err(CacheError::db("connect"))?
            }
            (None, None) => {
                return Err(CacheError::Config("PgCache::builder() needs .pool() or .database_url()".into()))
            }
        };
        Ok(PgCache::from_parts(pool, self.config))
    }

    /// Like [`build`](Self::build), but never connects now: connections are opened on first use. Fails only
    /// on a malformed URL. The process-wide instance is built this way, so that a database that is down at
    /// start-up only means misses until it comes up.
    pub fn build_lazy(self) -> Result<PgCache> {
        let pool = match (self.pool, self.database_url) {
            (Some(pool), _) => pool,
            (None, Some(url)) => own_pool(&self.config, self.max_connections)
                .connect_lazy(&url)
                .map_err(|e| CacheError::Config(format!("invalid database URL: {e}")))?,
            (None, None) => {
                return Err(CacheError::Config("PgCache::builder() needs .pool() or .database_url()".into()))
            }
        };
        Ok(PgCache::from_parts(pool, self.config))
    }
}

fn own_pool(config: &Config, max_connections: Option<u32>) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections.unwrap_or(10))
        .acquire_timeout(config.op_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        // sqlx's default pings every connection as it leaves the pool: a second round trip per get and set,
        // measured at up to 0.69x the rate of raw sqlx (docs/BENCHMARKS.md). A dead connection shows up
        // on use instead, as an error the caller already survives (it runs uncached).
        .test_before_acquire(false)
}

/// Escapes `%`, `_` and `\` for a `LIKE` pattern.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Checks a key before any I/O: no NUL (PostgreSQL text cannot hold it), not empty, at most 500 characters
/// (longer keys would fail or, with a cast, be truncated into collisions).
pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(CacheError::InvalidKey { reason: "the key is empty".into() });
    }
    if key.contains('\0') {
        return Err(CacheError::InvalidKey { reason: "the key contains a NUL character".into() });
    }
    // Byte length bounds character count from above: only count characters when it could matter.
    if key.len() > MAX_KEY_CHARS {
        let chars = key.chars().count();
        if chars > MAX_KEY_CHARS {
            return Err(CacheError::KeyTooLong { chars, max: MAX_KEY_CHARS });
        }
    }
    Ok(())
}

/// The write statements, chosen once for the cache's durability.
#[derive(Debug)]
pub(crate) struct Statements {
    set: String,
    set_guarded: String,
}

impl Statements {
    fn new(durability: Durability) -> Statements {
        // The sub-select turns synchronous_commit off for this statement's own transaction: one round trip,
        // and the session's setting is untouched.
        let source = match durability {
            Durability::AsyncCommit => "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed",
            Durability::Full => "",
        };
        let insert = "INSERT INTO cache_entries (cache_key, data, created_at, expires_at) \
                      SELECT $1, $2::jsonb, now(), now() + $3::bigint * interval '1 millisecond'";
        let upsert = "ON CONFLICT (cache_key) DO UPDATE \
                      SET data = EXCLUDED.data, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at";
        // A memoized result is written only if neither its key nor its namespace was invalidated after the
        // computation started ($4, in microseconds of the database's clock): no stale set.
        let guard = "WHERE NOT EXISTS (SELECT 1 FROM cache_invalidations \
                      WHERE ((scope = $1 AND NOT is_namespace) OR (scope = $5 AND is_namespace)) \
                      AND (extract(epoch FROM invalidated_at) * 1000000)::bigint >= $4)";
        Statements {
            set: format!("{insert} {source} {upsert}"),
            set_guarded: format!("{insert} {source} {guard} {upsert}"),
        }
    }
}

/// JSON text from the store or from the in-process tier.
#[derive(Debug, Clone)]
pub(crate) enum Json {
    Owned(String),
    Shared(Arc<str>),
}

impl std::ops::Deref for Json {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Json::Owned(s) => s,
            Json::Shared(s) => s,
        }
    }
}

impl From<Json> for Arc<str> {
    fn from(json: Json) -> Arc<str> {
        match json {
            Json::Owned(s) => s.into(),
            Json::Shared(s) => s,
        }
    }
}

/// What a memoized call's lookup found.
#[derive(Debug)]
pub(crate) struct Lookup {
    /// The entry's JSON, if there is a live one or, within the stale window, an expired one.
    pub(crate) json: Option<String>,
    /// Milliseconds until expiry, `None` for an entry that never expires.
    pub(crate) remaining_ms: Option<i64>,
    /// False for an expired entry served from the stale window.
    pub(crate) fresh: bool,
    /// The database's clock when the lookup ran, in microseconds since the epoch.
    pub(crate) db_now_us: i64,
}

/// Converts the milliseconds left before expiry into a duration for the in-process tier.
pub(crate) fn remaining(remaining_ms: Option<i64>) -> Option<Duration> {
    remaining_ms.map(|ms| Duration::from_millis(ms.max(0).unsigned_abs()))
}

mod sql {
    pub(super) const GET: &str = "SELECT data::text, \
         (extract(epoch FROM expires_at - now()) * 1000)::bigint FROM cache_entries \
         WHERE cache_key = $1 AND (expires_at IS NULL OR expires_at > now())";

    /// Always one row, so that the database's clock comes back on a miss too.
    pub(super) const LOOKUP: &str = "SELECT e.data::text, \
         (extract(epoch FROM e.expires_at - now()) * 1000)::bigint, \
         (e.expires_at IS NULL OR e.expires_at > now()), \
         (extract(epoch FROM now()) * 1000000)::bigint \
         FROM (SELECT 1) AS one LEFT JOIN cache_entries AS e ON e.cache_key = $1 \
         AND (e.expires_at IS NULL OR e.expires_at > now() - $2::bigint * interval '1 millisecond')";

    // pg_notify returns void; wrapping it in a scalar sub-query gives a plain integer column instead.
    pub(super) const NOTIFY: &str = "SELECT (SELECT 1 FROM (SELECT pg_notify('pg_cached_events', $1)) AS n)";

    pub(super) const DELETE_AND_MARK: &str =
        "WITH gone AS (DELETE FROM cache_entries WHERE cache_key = $1 RETURNING 1), \
         mark AS (INSERT INTO cache_invalidations (is_namespace, scope, invalidated_at) VALUES (false, $1, now()) \
                  ON CONFLICT (scope, is_namespace) DO UPDATE SET invalidated_at = now()) \
         SELECT (SELECT count(*) FROM gone), (SELECT 1 FROM (SELECT pg_notify('pg_cached_events', $2)) AS n)";

    pub(super) const MARK_NAMESPACE: &str = "WITH marked AS (INSERT INTO cache_invalidations \
         (is_namespace, scope, invalidated_at) VALUES (true, $1, now()) \
         ON CONFLICT (scope, is_namespace) DO UPDATE SET invalidated_at = now() RETURNING 1) \
         SELECT (SELECT count(*) FROM marked), (SELECT 1 FROM (SELECT pg_notify('pg_cached_events', $2)) AS n)";

    pub(super) const SWEEP_BOOKKEEPING: &str = "WITH old AS (DELETE FROM cache_invalidations \
         WHERE invalidated_at < now() - interval '1 day' RETURNING 1), \
         dead AS (DELETE FROM cache_leases WHERE deadline < now() - interval '1 minute' RETURNING 1) \
         SELECT (SELECT count(*) FROM old) + (SELECT count(*) FROM dead)";

    pub(super) const DELETE_PREFIX_BATCH: &str = "DELETE FROM cache_entries WHERE cache_key IN \
         (SELECT cache_key FROM cache_entries WHERE cache_key LIKE $1 LIMIT $2)";

    pub(super) const DELETE_EXPIRED_BATCH: &str = "DELETE FROM cache_entries WHERE cache_key IN \
         (SELECT cache_key FROM cache_entries WHERE expires_at <= now() \
          ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)";

    /// Rows beyond the first $1 in keep order (latest expiry first, permanent entries kept longest).
    pub(super) const COUNT_EXCESS: &str = "SELECT count(*) FROM \
         (SELECT 1 FROM cache_entries ORDER BY expires_at DESC NULLS FIRST OFFSET $1) AS excess";

    /// Evicts the $1 rows closest to expiry.
    pub(super) const EVICT_BATCH: &str = "DELETE FROM cache_entries WHERE cache_key IN \
         (SELECT cache_key FROM cache_entries ORDER BY expires_at ASC NULLS LAST LIMIT $1 FOR UPDATE SKIP LOCKED)";

    pub(super) const KEYS: &str = "SELECT cache_key FROM cache_entries \
         WHERE cache_key LIKE $1 AND (expires_at IS NULL OR expires_at > now()) ORDER BY cache_key LIMIT $2";

    /// Keys without a `:` count under the namespace "" (see `stats::namespace_of`).
    pub(super) const NAMESPACE_COUNTS: &str = "SELECT CASE WHEN strpos(cache_key, ':') > 0 \
         THEN split_part(cache_key, ':', 1) ELSE '' END, count(*), \
         count(*) FILTER (WHERE expires_at IS NULL OR expires_at > now()) \
         FROM cache_entries GROUP BY 1";

    pub(super) const TABLE_SIZE: &str = "SELECT pg_total_relation_size('cache_entries')";

    pub(super) const COUNT_ALL: &str = "SELECT count(*) FROM cache_entries";
}

impl PgCache {
    /// Connects with default settings (see [`PgCacheBuilder`]).
    pub async fn connect(database_url: &str) -> Result<PgCache> {
        PgCache::builder().database_url(database_url).build().await
    }

    /// Connects with settings from the environment:
    /// - `DATABASE_URL` (required),
    /// - `CACHE_DEFAULT_TTL_MINUTES` (default 60; `0` means entries never expire),
    /// - `CACHE_MAX_ENTRIES` (default 10000; `0` means no limit).
    pub async fn from_env() -> Result<PgCache> {
        PgCache::builder_from_env()?.build().await
    }

    /// A builder preset from the environment, as [`from_env`](Self::from_env) reads it.
    pub fn builder_from_env() -> Result<PgCacheBuilder> {
        let url = std::env::var("DATABASE_URL").map_err(|_| CacheError::Config("DATABASE_URL is not set".into()))?;
        let mut builder = PgCache::builder().database_url(url);
        if let Some(minutes) = env_number("CACHE_DEFAULT_TTL_MINUTES")? {
            builder = match minutes {
                0 => builder.default_ttl(Ttl::Never),
                m => builder.default_ttl(Duration::from_secs(m.saturating_mul(60))),
            };
        }
        if let Some(n) = env_number("CACHE_MAX_ENTRIES")? {
            builder = match n {
                0 => builder.unlimited_entries(),
                n => builder.max_entries(n),
            };
        }
        Ok(builder)
    }

    /// Starts a [`PgCacheBuilder`].
    pub fn builder() -> PgCacheBuilder {
        PgCacheBuilder::default()
    }

    fn from_parts(pool: PgPool, config: Config) -> PgCache {
        let sweep_interval = config.sweep_interval;
        let local = Arc::new(OnceLock::new());
        if let Some((capacity, max_age)) = config.local_tier {
            let _ = local.set(LocalTier::new(capacity, max_age, true));
        }
        let cache = PgCache {
            inner: Arc::new(Inner {
                pool,
                statements: Statements::new(config.durability),
                config,
                counters: Counters::default(),
                flights: Flights::default(),
                local,
                events: Arc::new(Events::default()),
                sweeper: std::sync::Mutex::new(None),
            }),
        };
        if cache.inner.local.get().is_some() {
            cache.listen_for_events();
        }
        if let Some(interval) = sweep_interval {
            // The sweeper holds only a Weak: it ends when the last PgCache clone is dropped.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let handle = runtime.spawn(sweep_loop(Arc::downgrade(&cache.inner), interval));
                *cache.inner.sweeper.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
            }
        }
        cache
    }

    /// The pool the cache uses.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Creates or updates the cache table (idempotent; safe to run from several processes at once).
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.inner.pool).await?;
        if self.inner.config.gin_index {
            sqlx::raw_sql(GIN_INDEX_SQL).execute(&self.inner.pool).await.map_err(CacheError::db("migrate"))?;
        }
        Ok(())
    }

    pub(crate) async fn bounded<T, F>(&self, operation: &'static str, timeout: Duration, fut: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => Err(CacheError::Timeout { operation, after: timeout }),
            Ok(Err(source)) => Err(CacheError::Database { operation, source }),
        }
    }

    /// Stores `value` under `key`. `ttl`: `None` for the default, `Some(duration)`, or [`Ttl::Never`].
    ///
    /// Refused before any I/O, with a typed error: keys that are empty, hold NUL or exceed 500 characters;
    /// values holding NaN, infinities or U+0000; values larger than the size limit. Concurrent writers of
    /// one key never fail: the last write wins, whole.
    pub async fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T, ttl: impl Into<Ttl>) -> Result<()> {
        check_key(key)?;
        let ttl = ttl.into().resolve(self.inner.config.default_ttl)?;
        let json = codec::encode(value, self.inner.config.max_value_bytes)?;
        self.set_json(key, &json, ttl).await
    }

    pub(crate) async fn set_json(&self, key: &str, json: &str, ttl: Option<Duration>) -> Result<()> {
        let query = sqlx::query(&self.inner.statements.set).bind(key).bind(json).bind(Ttl::millis(ttl));
        let result = self.bounded("set", self.inner.config.op_timeout, query.execute(&self.inner.pool)).await;
        self.note_failure(key, "set", &result);
        result?;
        self.after_write(key, json, ttl, None).await;
        Ok(())
    }

    /// Writes a memoized result unless its key or namespace was invalidated at or after `started_us` (the
    /// database clock when the computation began). Returns whether the row was written.
    pub(crate) async fn set_json_guarded(
        &self,
        key: &str,
        json: &str,
        ttl: Option<Duration>,
        started_us: i64,
        local_max_age: Option<Duration>,
    ) -> Result<bool> {
        let query = sqlx::query(&self.inner.statements.set_guarded)
            .bind(key)
            .bind(json)
            .bind(Ttl::millis(ttl))
            .bind(started_us)
            .bind(namespace_of(key));
        let result = self.bounded("set", self.inner.config.op_timeout, query.execute(&self.inner.pool)).await;
        self.note_failure(key, "set", &result);
        let written = result?.rows_affected() > 0;
        if written {
            self.after_write(key, json, ttl, local_max_age).await;
        } else {
            tracing::debug!(namespace = namespace_of(key), key, "result computed before an invalidation; not stored");
        }
        Ok(written)
    }

    /// Keeps the in-process tiers coherent after a write: this process's holds the new value, the others
    /// drop the key.
    async fn after_write(&self, key: &str, json: &str, ttl: Option<Duration>, local_max_age: Option<Duration>) {
        let Some(tier) = self.inner.local.get() else { return };
        if tier.for_all_keys || local_max_age.is_some() {
            tier.put(key, json.into(), ttl, local_max_age);
        } else {
            tier.remove(key);
        }
        let payload = self.inner.events.keys_payload(&[key_hash(key)]);
        self.notify(&payload).await;
    }

    /// Sends one event to every process (best effort: a lost notification is bounded by the tier's max age).
    async fn notify(&self, payload: &str) {
        let query = sqlx::query(sql::NOTIFY).bind(payload);
        if let Err(error) = self.bounded("notify", self.inner.config.op_timeout, query.execute(&self.inner.pool)).await
        {
            tracing::warn!(%error, "could not notify other processes; their in-process tiers expire by max age");
        }
    }

    /// Starts listening for other processes' invalidations and lease releases (once).
    pub(crate) fn listen_for_events(&self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.inner.events.ensure_listening(&self.inner.pool, Arc::downgrade(&self.inner.local));
        }
    }

    /// The in-process tier when the builder turned it on for every key (`local_tier`).
    pub(crate) fn local_tier_for_all_keys(&self) -> Option<&LocalTier> {
        self.inner.local.get().filter(|tier| tier.for_all_keys)
    }

    /// The in-process tier, created on first use by a function with `local = "..."` when the builder did not.
    pub(crate) fn local_tier_for(&self, max_age: Duration) -> &LocalTier {
        let tier = self.inner.local.get_or_init(|| {
            LocalTier::new(crate::local::DEFAULT_CAPACITY, max_age.max(Duration::from_secs(3600)), false)
        });
        self.listen_for_events();
        tier
    }

    /// Looks a memoized call's key up: a live entry, or an expired one within `stale_window`.
    pub(crate) async fn lookup(&self, key: &str, stale_window: Option<Duration>) -> Result<Lookup> {
        check_key(key)?;
        let window_ms = Ttl::millis(stale_window).unwrap_or(0);
        let query = sqlx::query_as::<_, (Option<String>, Option<i64>, Option<bool>, i64)>(sql::LOOKUP)
            .bind(key)
            .bind(window_ms);
        let result = self.bounded("get", self.inner.config.op_timeout, query.fetch_one(&self.inner.pool)).await;
        self.note_failure(key, "get", &result);
        let (json, remaining_ms, fresh, db_now_us) = result?;
        Ok(Lookup { json, remaining_ms, fresh: fresh.unwrap_or(false), db_now_us })
    }

    /// Reads `key`. `None` when it is missing, expired, or stored in a shape that no longer deserializes
    /// into `T` (a changed type is a miss, not an error that sticks; the next `set` replaces the entry).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let namespace = namespace_of(key);
        let Some(json) = self.get_json(key).await? else {
            self.record(namespace, Event::Miss);
            tracing::debug!(namespace, key, "cache miss");
            return Ok(None);
        };
        match codec::decode(&json) {
            Ok(value) => {
                // A hit in the in-process tier was counted there.
                if matches!(json, Json::Owned(_)) {
                    self.record(namespace, Event::Hit);
                }
                tracing::debug!(namespace, key, "cache hit");
                Ok(Some(value))
            }
            Err(error) => {
                self.record(namespace, Event::Miss);
                tracing::warn!(namespace, key, %error, "stored value does not match the requested type; treated as a miss");
                Ok(None)
            }
        }
    }

    /// The stored JSON text of a live entry, from the in-process tier when it is on for every key.
    pub(crate) async fn get_json(&self, key: &str) -> Result<Option<Json>> {
        check_key(key)?;
        let tier = self.local_tier_for_all_keys();
        if let Some(tier) = tier {
            if let Some(entry) = tier.get(key) {
                self.record(namespace_of(key), Event::LocalHit);
                return Ok(Some(Json::Shared(Arc::clone(&entry.json))));
            }
            self.record(namespace_of(key), Event::LocalMiss);
        }
        let Some((json, remaining_ms)) = self.get_live(key).await? else { return Ok(None) };
        if let Some(tier) = tier {
            let entry = tier.put(key, json.into(), remaining(remaining_ms), None);
            return Ok(Some(Json::Shared(Arc::clone(&entry.json))));
        }
        Ok(Some(Json::Owned(json)))
    }

    /// The JSON of a live entry and the milliseconds it has left, straight from PostgreSQL: the statement of
    /// [`get`](Self::get), also the fast path of a memoized hit.
    pub(crate) async fn get_live(&self, key: &str) -> Result<Option<(String, Option<i64>)>> {
        check_key(key)?;
        let query = sqlx::query_as::<_, (String, Option<i64>)>(sql::GET).bind(key);
        let result = self.bounded("get", self.inner.config.op_timeout, query.fetch_optional(&self.inner.pool)).await;
        self.note_failure(key, "get", &result);
        result
    }

    /// Deletes `key`; `true` if a row was there (expired or not).
    ///
    /// It is also an invalidation: a memoized computation of this key that started before the delete will not
    /// store its result, and every process drops the key from its in-process tier.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        check_key(key)?;
        if let Some(tier) = self.inner.local.get() {
            tier.remove(key);
        }
        let payload = self.inner.events.keys_payload(&[key_hash(key)]);
        let query = sqlx::query_as::<_, (i64, Option<i32>)>(sql::DELETE_AND_MARK).bind(key).bind(payload);
        let result = self.bounded("delete", self.inner.config.op_timeout, query.fetch_one(&self.inner.pool)).await;
        self.note_failure(key, "delete", &result);
        Ok(result?.0 > 0)
    }

    /// Deletes every entry whose key starts with `namespace:`, in batches, and returns how many went.
    ///
    /// Each batch is its own short transaction, so purging a million rows never holds a long lock. Entries
    /// written while the purge runs may survive it.
    pub async fn delete_namespace(&self, namespace: &str) -> Result<u64> {
        crate::key::validate_namespace(namespace)?;
        // First the invalidation mark and the notification, so that nothing computed before the purge is
        // stored after it, and other processes drop the namespace from their in-process tiers.
        if let Some(tier) = self.inner.local.get() {
            tier.remove_namespace(namespace);
        }
        let payload = self.inner.events.namespace_payload(namespace);
        let mark = sqlx::query_as::<_, (i64, Option<i32>)>(sql::MARK_NAMESPACE).bind(namespace).bind(payload);
        self.bounded("delete_namespace", self.inner.config.op_timeout, mark.fetch_one(&self.inner.pool)).await?;
        let pattern = like_prefix(&format!("{namespace}:"));
        let mut total = 0;
        loop {
            let query = sqlx::query(sql::DELETE_PREFIX_BATCH).bind(&pattern).bind(self.inner.config.batch_size);
            let deleted = self
                .bounded("delete_namespace", self.inner.config.maintenance_timeout, query.execute(&self.inner.pool))
                .await?
                .rows_affected();
            total += deleted;
            if deleted < self.batch_size_u64() {
                break;
            }
        }
        tracing::info!(namespace, deleted = total, "namespace purged");
        Ok(total)
    }

    fn batch_size_u64(&self) -> u64 {
        self.inner.config.batch_size.unsigned_abs()
    }

    /// Deletes expired rows in batches (soonest-expired first) and returns how many went. Each batch is its
    /// own transaction; rows locked by a concurrent sweep in another process are skipped, not waited for.
    pub async fn clear_expired(&self) -> Result<u64> {
        let mut total = 0;
        loop {
            let query = sqlx::query(sql::DELETE_EXPIRED_BATCH).bind(self.inner.config.batch_size);
            let deleted = self
                .bounded("clear_expired", self.inner.config.maintenance_timeout, query.execute(&self.inner.pool))
                .await?
                .rows_affected();
            total += deleted;
            if deleted < self.batch_size_u64() {
                break;
            }
        }
        Ok(total)
    }

    /// Brings the table back to `max_entries` rows and returns how many were evicted (0 without a limit).
    ///
    /// **Eviction order:** the entries closest to expiry go first; entries that never expire go last; the
    /// next write of an evicted key simply re-creates it. Finding the excess walks the `expires_at` index once
    /// (`max_entries` + excess entries, never the rows themselves); each eviction batch then costs O(batch).
    pub async fn enforce_max_entries(&self) -> Result<u64> {
        let Some(max) = self.inner.config.max_entries else {
            return Ok(0);
        };
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let timeout = self.inner.config.maintenance_timeout;
        let count = sqlx::query_scalar::<_, i64>(sql::COUNT_EXCESS).bind(max);
        let mut excess = self.bounded("enforce_max_entries", timeout, count.fetch_one(&self.inner.pool)).await?;
        let mut total = 0;
        while excess > 0 {
            let batch = excess.min(self.inner.config.batch_size);
            let query = sqlx::query(sql::EVICT_BATCH).bind(batch);
            let deleted =
                self.bounded("enforce_max_entries", timeout, query.execute(&self.inner.pool)).await?.rows_affected();
            if deleted == 0 {
                break;
            }
            total += deleted;
            excess -= i64::try_from(deleted).unwrap_or(i64::MAX);
        }
        if total > 0 {
            tracing::info!(evicted = total, max_entries = max, "evicted entries over the limit");
        }
        Ok(total)
    }

    /// One sweep: [`clear_expired`](Self::clear_expired), then
    /// [`enforce_max_entries`](Self::enforce_max_entries). Returns the rows deleted by each.
    pub async fn sweep(&self) -> Result<(u64, u64)> {
        let expired = self.clear_expired().await?;
        let evicted = self.enforce_max_entries().await?;
        // Invalidation marks older than a day and leases long past their deadline are no longer needed.
        let bookkeeping = sqlx::query_scalar::<_, i64>(sql::SWEEP_BOOKKEEPING);
        self.bounded("sweep", self.inner.config.maintenance_timeout, bookkeeping.fetch_one(&self.inner.pool)).await?;
        Ok((expired, evicted))
    }

    /// How many entries this process's in-process tier holds (0 when it is off).
    pub fn local_len(&self) -> u64 {
        self.inner.local.get().map_or(0, LocalTier::len)
    }

    /// How many times this cache's event listener has connected; every connection after the first clears the
    /// in-process tier, since notifications sent while it was away are lost.
    pub fn listener_connects(&self) -> u64 {
        self.inner.events.connects.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Up to `limit` live keys, in byte order, that start with `prefix` (all keys with `None`).
    pub async fn keys(&self, prefix: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let pattern = like_prefix(prefix.unwrap_or(""));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let query = sqlx::query_scalar::<_, String>(sql::KEYS).bind(pattern).bind(limit);
        self.bounded("keys", self.inner.config.maintenance_timeout, query.fetch_all(&self.inner.pool)).await
    }

    /// Counts of the table per namespace, its size on disk, and this process's hit and miss counters.
    pub async fn stats(&self) -> Result<CacheStats> {
        let timeout = self.inner.config.maintenance_timeout;
        let counts = sqlx::query_as::<_, (String, i64, i64)>(sql::NAMESPACE_COUNTS).fetch_all(&self.inner.pool);
        let counts = self.bounded("stats", timeout, counts).await?;
        let size = sqlx::query_scalar::<_, i64>(sql::TABLE_SIZE).fetch_one(&self.inner.pool);
        let size = self.bounded("stats", timeout, size).await?;
        let table =
            counts.into_iter().map(|(ns, total, active)| (ns, total.unsigned_abs(), active.unsigned_abs())).collect();
        Ok(CacheStats::assemble(table, size.unsigned_abs(), self.inner.counters.snapshot()))
    }

    /// This process's counters only: no I/O.
    pub fn process_stats(&self) -> crate::ProcessCounts {
        let mut all = crate::ProcessCounts::default();
        for counts in self.inner.counters.snapshot().values() {
            all += counts;
        }
        all
    }

    /// Checks the database: a round trip, then a count of the table. Never fails and never panics; problems
    /// are in the report.
    pub async fn health_check(&self) -> HealthReport {
        let timeout = self.inner.config.op_timeout.max(Duration::from_secs(1));
        let started = Instant::now();
        let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.inner.pool);
        if let Err(error) = self.bounded("health_check", timeout, ping).await {
            return HealthReport {
                status: HealthStatus::Unhealthy,
                total_entries: None,
                latency_ms: None,
                error: Some(error.to_string()),
            };
        }
        let latency_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        let count = sqlx::query_scalar::<_, i64>(sql::COUNT_ALL).fetch_one(&self.inner.pool);
        match self.bounded("health_check", timeout, count).await {
            Ok(n) => HealthReport {
                status: HealthStatus::Healthy,
                total_entries: Some(n.unsigned_abs()),
                latency_ms,
                error: None,
            },
            Err(error) => HealthReport {
                status: HealthStatus::Degraded,
                total_entries: None,
                latency_ms,
                error: Some(error.to_string()),
            },
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn record(&self, namespace: &str, event: Event) {
        self.inner.counters.record(namespace, event);
    }

    fn note_failure<T>(&self, key: &str, operation: &'static str, result: &Result<T>) {
        if let Err(error) = result {
            let namespace = namespace_of(key);
            self.inner.counters.record(namespace, Event::Error);
            if is_undefined_table(error) {
                tracing::warn!(namespace, operation, "the cache_entries table does not exist: call PgCache::migrate()");
            } else {
                tracing::warn!(namespace, operation, %error, "cache operation failed");
            }
        }
    }
}

fn is_undefined_table(error: &CacheError) -> bool {
    match error {
        CacheError::Database { source: sqlx::Error::Database(db), .. } => db.code().as_deref() == Some("42P01"),
        _ => false,
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

async fn sweep_loop(inner: Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let cache = PgCache { inner };
        match cache.sweep().await {
            Ok((expired, evicted)) => tracing::debug!(expired, evicted, "cache sweep done"),
            Err(error) => {
                tracing::warn!(%error, "cache sweep failed; retrying at the next interval")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_before_io() {
        assert!(check_key(&"k".repeat(500)).is_ok());
        assert!(matches!(check_key(&"k".repeat(501)), Err(CacheError::KeyTooLong { chars: 501, max: 500 })));
        // 500 characters of 2 bytes each is still 500 characters.
        assert!(check_key(&"é".repeat(500)).is_ok());
        assert!(matches!(check_key("a\0b"), Err(CacheError::InvalidKey { .. })));
        assert!(matches!(check_key(""), Err(CacheError::InvalidKey { .. })));
    }

    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(like_prefix("a_b:"), "a\\_b:%");
        assert_eq!(like_prefix("50%\\"), "50\\%\\\\%");
    }
}
