//! The suite: which comparisons run, in which order, and how each variant is driven.

use crate::data::{Answer, Payload, Retrieval, Size};
use crate::fingerprint::{self, FingerprintRow};
use crate::harness::{drive, Measurement};
use crate::pgbench::{to_pgbench, Length, Pgbench};
use crate::redis_ref::RedisRef;
use crate::setup::{self, Db, Rows, Statements, Table};
use cache_runtime::{Durability, PgCache};
use serde::Serialize;
use sqlx::postgres::PgPool;
use sqlx::Row as _;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One comparison: an operation and its references.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Group {
    /// `PgCache::get` on a hit.
    #[serde(rename = "get")]
    Get,
    /// A `#[pg_cached]` call on a hit against a direct `PgCache::get`.
    #[serde(rename = "macro")]
    Macro,
    /// `PgCache::set` with `Durability::Full` (logged table, synchronous commit).
    #[serde(rename = "set_full")]
    SetFull,
    /// `PgCache::set` with `Durability::AsyncCommit`, the default.
    #[serde(rename = "set_async")]
    SetAsync,
    /// `PgCache::set` into an UNLOGGED table.
    #[serde(rename = "set_unlogged")]
    SetUnlogged,
    /// `PgCache::get_many` of 100 keys against 100 single gets; one operation is 100 keys either way.
    #[serde(rename = "get_many")]
    GetMany,
}

impl Group {
    /// Every group, in the order they run.
    pub const ALL: [Group; 6] =
        [Group::Get, Group::Macro, Group::SetFull, Group::SetAsync, Group::SetUnlogged, Group::GetMany];

    /// Title in the report.
    pub fn title(self) -> &'static str {
        match self {
            Group::Get => "get, hit",
            Group::Macro => "#[pg_cached] call, hit",
            Group::SetFull => "set, logged, synchronous_commit = on (Durability::Full)",
            Group::SetAsync => "set, logged, synchronous_commit = off (Durability::AsyncCommit, the default)",
            Group::SetUnlogged => "set, UNLOGGED table (manual ALTER TABLE)",
            Group::GetMany => "100 keys, hit: get_many against 100 gets",
        }
    }

    /// Short name, as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Group::Get => "get",
            Group::Macro => "macro",
            Group::SetFull => "set-full",
            Group::SetAsync => "set-async",
            Group::SetUnlogged => "set-unlogged",
            Group::GetMany => "get-many",
        }
    }

    /// Parses [`name`](Self::name).
    pub fn parse(name: &str) -> Option<Group> {
        Group::ALL.into_iter().find(|g| g.name() == name)
    }

    /// The variants compared, the subject first.
    pub fn variants(self) -> &'static [Variant] {
        use Variant::*;
        match self {
            Group::Get => &[PgCache, PgCacheUncoalesced, PgCacheLeanPool, Sqlx, SqlxNoDecode, Pgbench, Redis],
            Group::Macro => &[MacroHit, DirectGet],
            Group::SetFull | Group::SetUnlogged => &[PgCache, PgCacheLeanPool, Sqlx, Pgbench],
            Group::SetAsync => &[PgCache, PgCacheUncoalesced, PgCacheLeanPool, Sqlx, Pgbench, PgCacheGin, Redis],
            Group::GetMany => &[GetMany, SingleGets],
        }
    }

    fn table(self) -> Table {
        match self {
            Group::SetUnlogged => Table::Unlogged,
            _ => Table::Logged,
        }
    }

    fn durability(self) -> Durability {
        match self {
            Group::SetFull => Durability::Full,
            _ => Durability::AsyncCommit,
        }
    }

    fn is_write(self) -> bool {
        matches!(self, Group::SetFull | Group::SetAsync | Group::SetUnlogged)
    }
}

/// One contender of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Variant {
    /// The runtime as an application builds it (`PgCache::builder().database_url(..)`: its own pool).
    #[serde(rename = "pgcache")]
    PgCache,
    /// The runtime over the reference's pool (`.pool(..)`, no ping before each use).
    #[serde(rename = "pgcache_lean_pool")]
    PgCacheLeanPool,
    /// Raw sqlx, the same statement, plus the same serde work.
    #[serde(rename = "sqlx")]
    Sqlx,
    /// Raw sqlx, the same statement, the JSON text left undecoded.
    #[serde(rename = "sqlx_no_decode")]
    SqlxNoDecode,
    /// pgbench -M prepared, the same statement.
    #[serde(rename = "pgbench")]
    Pgbench,
    /// Redis through the `redis` crate.
    #[serde(rename = "redis")]
    Redis,
    /// `PgCache::set` into the table with the GIN index.
    #[serde(rename = "pgcache_gin")]
    PgCacheGin,
    /// A `#[pg_cached]` method call on a hit.
    #[serde(rename = "macro_hit")]
    MacroHit,
    /// `PgCache::get` of the key the macro uses.
    #[serde(rename = "direct_get")]
    DirectGet,
    /// The runtime with its own default pool and `coalesce(false)`: one statement per operation.
    #[serde(rename = "pgcache_uncoalesced")]
    PgCacheUncoalesced,
    /// `PgCache::get_many` of 100 keys.
    #[serde(rename = "get_many")]
    GetMany,
    /// 100 `PgCache::get` calls, one after another.
    #[serde(rename = "single_gets")]
    SingleGets,
}

impl Variant {
    /// Every variant.
    pub const ALL: [Variant; 12] = [
        Variant::PgCache,
        Variant::PgCacheLeanPool,
        Variant::Sqlx,
        Variant::SqlxNoDecode,
        Variant::Pgbench,
        Variant::Redis,
        Variant::PgCacheGin,
        Variant::MacroHit,
        Variant::DirectGet,
        Variant::PgCacheUncoalesced,
        Variant::GetMany,
        Variant::SingleGets,
    ];

    /// Short name, as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Variant::PgCache => "pgcache",
            Variant::PgCacheLeanPool => "pgcache-lean",
            Variant::Sqlx => "sqlx",
            Variant::SqlxNoDecode => "sqlx-text",
            Variant::Pgbench => "pgbench",
            Variant::Redis => "redis",
            Variant::PgCacheGin => "pgcache-gin",
            Variant::MacroHit => "macro",
            Variant::DirectGet => "direct-get",
            Variant::PgCacheUncoalesced => "pgcache-uncoalesced",
            Variant::GetMany => "get-many",
            Variant::SingleGets => "single-gets",
        }
    }

    /// Whether this variant holds one server connection per client.
    pub fn connection_per_client(self) -> bool {
        matches!(self, Variant::PgCacheLeanPool | Variant::Sqlx | Variant::SqlxNoDecode | Variant::Pgbench)
    }

    /// Label in the report, for one group.
    pub fn label(self, group: Group) -> &'static str {
        let write = group.is_write();
        match self {
            Variant::PgCache if write => "PgCache::set",
            Variant::PgCache => "PgCache::get",
            Variant::PgCacheLeanPool if write => "PgCache::set, lean pool",
            Variant::PgCacheLeanPool => "PgCache::get, lean pool",
            Variant::Sqlx if write => "sqlx upsert + serde",
            Variant::Sqlx => "sqlx SELECT + serde",
            Variant::SqlxNoDecode => "sqlx SELECT, text only",
            Variant::Pgbench if write => "pgbench upsert",
            Variant::Pgbench => "pgbench SELECT",
            Variant::Redis if write => "Redis SET EX",
            Variant::Redis => "Redis GET",
            Variant::PgCacheGin => "PgCache::set, GIN index",
            Variant::MacroHit => "#[pg_cached] hit",
            Variant::DirectGet => "PgCache::get, same key",
            Variant::PgCacheUncoalesced if write => "PgCache::set, coalesce off",
            Variant::PgCacheUncoalesced => "PgCache::get, coalesce off",
            Variant::GetMany => "PgCache::get_many, 100 keys",
            Variant::SingleGets => "100 × PgCache::get",
        }
    }
}

/// Group, size and client count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Case {
    /// The comparison.
    pub group: Group,
    /// The value size.
    pub size: Size,
    /// Concurrent clients.
    pub clients: usize,
}

/// The figures of one variant in one case, or why it was skipped.
#[derive(Debug, Clone, Serialize)]
pub struct RowResult {
    /// Which case.
    #[serde(flatten)]
    pub case: Case,
    /// Which variant.
    pub variant: Variant,
    /// Its label.
    pub label: &'static str,
    /// Operations per second: the median over the segments.
    pub ops_per_sec: Option<f64>,
    /// Operations per second of each segment, in the order they ran.
    pub segment_rates: Vec<f64>,
    /// Mean latency.
    pub mean_us: Option<f64>,
    /// Median latency.
    pub p50_us: Option<f64>,
    /// 99th percentile latency.
    pub p99_us: Option<f64>,
    /// CPU the client spent per operation (this process for Rust clients, the pgbench process for pgbench;
    /// pgbench's is counted in 10 ms ticks).
    pub client_cpu_us: Option<f64>,
    /// Operations measured.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Of `errors`, operation timeouts.
    pub timeouts: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Seconds measured.
    pub secs: f64,
    /// Why it did not run.
    pub skipped: Option<String>,
}

impl RowResult {
    /// A failure that invalidates the row: any error that is not a timeout, or timeouts on more than 1% of
    /// the operations.
    pub fn failed(&self) -> bool {
        self.errors > self.timeouts || self.timeouts * 100 > self.ops.max(1)
    }
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server to use (the bench database is created next to DATABASE_URL's).
    pub database_url: String,
    /// The bench database's name.
    pub database: String,
    /// Redis to compare with, if any.
    pub redis_url: Option<String>,
    /// Measured time per variant and case, split over `segments`.
    pub duration: Duration,
    /// Warm-up before each segment.
    pub warmup: Duration,
    /// Segments per variant, run in A B .. B A order so that drift hits every variant alike.
    pub segments: u32,
    /// Client counts.
    pub clients: Vec<usize>,
    /// Value sizes.
    pub sizes: Vec<Size>,
    /// The data set.
    pub rows: Rows,
    /// Distinct arguments of the memoized functions.
    pub macro_keys: u64,
    /// Which comparisons run.
    pub groups: Vec<Group>,
    /// Only these variants (for profiling one of them); `None` runs all.
    pub variants: Option<Vec<Variant>>,
    /// Time per fingerprinting case (zero skips them).
    pub fingerprint_budget: Duration,
    /// Run pgbench for this many transactions per client instead of for a duration.
    pub pgbench_transactions: Option<u32>,
    /// The caches' operation timeout; `None` measures the runtime's default (250 ms), as applications get it.
    pub op_timeout: Option<Duration>,
    /// Where `BENCHMARKS.md` and `bench/` go; `None` writes nothing.
    pub out: Option<PathBuf>,
    /// The command, as the report prints it.
    pub command: String,
}

impl Options {
    /// The full suite: 100k entries of 1 KB and 10k of 10 KB, 4 s per variant and case.
    pub fn full(database_url: String) -> Options {
        Options {
            database_url,
            database: "pg_cached_bench".into(),
            redis_url: None,
            duration: Duration::from_secs(4),
            warmup: Duration::from_millis(300),
            segments: 8,
            clients: vec![1, 4, 16, 64, 256],
            sizes: vec![Size::K1, Size::K10],
            rows: Rows { k1: 100_000, k10: 10_000 },
            macro_keys: 10_000,
            groups: Group::ALL.to_vec(),
            variants: None,
            fingerprint_budget: Duration::from_secs(1),
            pgbench_transactions: None,
            op_timeout: None,
            out: None,
            command: String::new(),
        }
    }

    /// Short durations, full data set: a check that the whole suite works, with rough figures.
    pub fn quick(database_url: String) -> Options {
        Options {
            duration: Duration::from_secs(2),
            segments: 4,
            warmup: Duration::from_millis(150),
            fingerprint_budget: Duration::from_millis(250),
            ..Options::full(database_url)
        }
    }

    /// Every row for about 100 ms on a small data set, in a database of its own: the self-check.
    pub fn smoke(database_url: String) -> Options {
        Options {
            database: "pg_cached_bench_smoke".into(),
            duration: Duration::from_millis(100),
            warmup: Duration::from_millis(20),
            segments: 1,
            rows: Rows { k1: 2_000, k10: 200 },
            macro_keys: 100,
            // Every variant runs; the high client counts only make it slow.
            clients: vec![1, 4],
            fingerprint_budget: Duration::from_millis(20),
            pgbench_transactions: Some(20),
            // The self-check asks whether every row works, not how fast: on a slow or busy machine one fsync
            // can outlast the default 250 ms, and in a 100 ms window a single timeout is over the 1% a row
            // may have. Five seconds still catches a row that hangs.
            op_timeout: Some(Duration::from_secs(5)),
            ..Options::full(database_url)
        }
    }
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Every variant of every case.
    pub rows: Vec<RowResult>,
    /// Fingerprinting figures.
    pub fingerprint: Vec<FingerprintRow>,
    /// The in-process tier against a PostgreSQL hit and Redis, one task.
    pub tier: Vec<crate::tier::TierRow>,
    /// The statements the references ran.
    pub statements: Option<StatementsOut>,
    /// PostgreSQL server version.
    pub postgres_version: String,
    /// Redis server version, or why Redis was skipped.
    pub redis: Result<String, String>,
    /// pgbench version, or why it was skipped.
    pub pgbench: Result<String, String>,
    /// Wall time of the run.
    pub wall_secs: f64,
}

/// The captured statements, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct StatementsOut {
    /// `PgCache::get`.
    pub get: String,
    /// `PgCache::set`, `Durability::Full`.
    pub set_full: String,
    /// `PgCache::set`, `Durability::AsyncCommit`.
    pub set_async: String,
}

/// Shared state of a run.
struct Ctx {
    opts: Options,
    db: Db,
    statements: Statements,
    pgbench: Result<Pgbench, String>,
    redis: Result<RedisRef, String>,
    lean_pools: HashMap<(Table, usize), PgPool>,
    /// By table, durability (true: Full) and coalescing; each with the default pool of 10 connections.
    caches: HashMap<(Table, bool, bool), PgCache>,
    lean_caches: HashMap<(Table, usize, bool), PgCache>,
    redis_conns: HashMap<usize, Arc<Vec<redis::aio::MultiplexedConnection>>>,
    macros: crate::memo::Memo,
    pgbench_rates: HashMap<Case, f64>,
}

impl Ctx {
    async fn lean_pool(&mut self, table: Table, clients: usize) -> Result<PgPool, String> {
        if let Some(pool) = self.lean_pools.get(&(table, clients)) {
            return Ok(pool.clone());
        }
        let pool = self.db.lean_pool(table, clients as u32).await?;
        self.lean_pools.insert((table, clients), pool.clone());
        Ok(pool)
    }

    async fn cache(&mut self, table: Table, durability: Durability, coalesce: bool) -> Result<PgCache, String> {
        let id = (table, durability == Durability::Full, coalesce);
        if let Some(cache) = self.caches.get(&id) {
            return Ok(cache.clone());
        }
        let cache = self.db.cache(table, durability, coalesce).await?;
        self.caches.insert(id, cache.clone());
        Ok(cache)
    }

    /// Closes every pool, so that the next case's connections fit under the server's `max_connections`.
    async fn close_pools(&mut self) {
        for (_, cache) in self.caches.drain().chain(self.lean_caches.drain().map(|((t, _, f), c)| ((t, f, true), c))) {
            cache.single_pool().expect("a cache on one server").close().await;
        }
        for (_, pool) in self.lean_pools.drain() {
            pool.close().await;
        }
        self.redis_conns.clear();
    }

    async fn lean_cache(&mut self, table: Table, clients: usize, durability: Durability) -> Result<PgCache, String> {
        if let Some(cache) = self.lean_caches.get(&(table, clients, durability == Durability::Full)) {
            return Ok(cache.clone());
        }
        let pool = self.lean_pool(table, clients).await?;
        let cache = self.db.cache_over(pool, durability).await?;
        self.lean_caches.insert((table, clients, durability == Durability::Full), cache.clone());
        Ok(cache)
    }

    async fn redis_conns(&mut self, clients: usize) -> Result<Arc<Vec<redis::aio::MultiplexedConnection>>, String> {
        let redis = self.redis.as_ref().map_err(Clone::clone)?;
        if let Some(conns) = self.redis_conns.get(&clients) {
            return Ok(Arc::clone(conns));
        }
        let conns = Arc::new(redis.connections(clients).await?);
        self.redis_conns.insert(clients, Arc::clone(&conns));
        Ok(conns)
    }

    /// pgbench's `-T` takes whole seconds: a shorter segment is given as a transaction count, estimated from
    /// the rate of this case's previous pgbench segment (the first one runs for a second).
    fn pgbench_length(&self, case: Case, window: Duration) -> Length {
        if let Some(n) = self.opts.pgbench_transactions {
            return Length::Transactions(n);
        }
        let secs = window.as_secs_f64();
        if secs >= 1.0 && secs.fract() == 0.0 {
            return Length::Seconds(secs as u32);
        }
        match self.pgbench_rates.get(&case) {
            Some(&rate) if rate > 0.0 => {
                Length::Transactions(((rate * secs) / case.clients as f64).round().clamp(10.0, 1e9) as u32)
            }
            _ => Length::Seconds(1),
        }
    }

    fn set_statement(&self, group: Group) -> &str {
        match group.durability() {
            Durability::Full => &self.statements.set_full,
            Durability::AsyncCommit => &self.statements.set_async,
        }
    }
}

fn log(message: impl AsRef<str>) {
    eprintln!("{}", message.as_ref());
}

/// The most clients the get_many comparison runs with. At 256 clients each asking for 100 keys, 25,600 keys
/// are outstanding at once; at the ~75k keys/s this machine serves, the queue is ~340 ms deep, past the
/// 250 ms operation timeout, so callers rightly time out: that is overload, not a figure worth reporting.
const GET_MANY_MAX_CLIENTS: usize = 64;

/// The TTL of every write: one hour.
const TTL: Duration = Duration::from_secs(3600);

fn hit<T>(result: Result<Option<T>, cache_runtime::CacheError>, key: &str) -> Result<(), String> {
    match result {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!("unexpected miss on {key}")),
        Err(error) => Err(error.to_string()),
    }
}

/// Runs one stretch of one variant.
async fn segment<T: Payload>(
    ctx: &mut Ctx,
    case: Case,
    variant: Variant,
    window: Duration,
    warmup: Duration,
) -> Result<Measurement, String> {
    let Case { group, size, clients } = case;
    let n = ctx.opts.rows.of(size);
    let table = group.table();
    if table == Table::Unlogged {
        ctx.db.unlogged.clone()?;
    }
    let durability = group.durability();
    if variant.connection_per_client() {
        // The lean pool (sqlx references) and pgbench each hold one server connection per client, and both
        // are open within one case; the caches hold 10 each.
        let needed = 2 * clients + 30;
        if needed > ctx.db.max_connections {
            return Err(format!(
                "needs about {needed} server connections at {clients} clients; max_connections is {} \
                 (see docs/BENCHMARKS.md, Running it)",
                ctx.db.max_connections
            ));
        }
    }
    let value = Arc::new(T::sample(0));
    let json = serde_json::to_string(&*value).map_err(|e| e.to_string())?;
    let key = move |r: u64| size.key(r % n + 1);
    let measured = match (group.is_write(), variant) {
        (false, Variant::PgCache | Variant::PgCacheUncoalesced | Variant::PgCacheLeanPool) => {
            let cache = match variant {
                Variant::PgCacheLeanPool => ctx.lean_cache(table, clients, durability).await?,
                _ => ctx.cache(table, durability, variant == Variant::PgCache).await?,
            };
            drive(clients, warmup, window, move |_, r| {
                let cache = cache.clone();
                async move {
                    let key = key(r);
                    hit(cache.get::<T>(&key).await, &key)
                }
            })
            .await
        }
        (false, Variant::Sqlx | Variant::SqlxNoDecode) => {
            let pool = ctx.lean_pool(table, clients).await?;
            let statement: Arc<str> = ctx.statements.get.as_str().into();
            let decode = variant == Variant::Sqlx;
            drive(clients, warmup, window, move |_, r| {
                let (pool, statement) = (pool.clone(), Arc::clone(&statement));
                async move {
                    let key = key(r);
                    let row =
                        sqlx::query(&statement).bind(&key).fetch_optional(&pool).await.map_err(|e| e.to_string())?;
                    let row = row.ok_or_else(|| format!("unexpected miss on {key}"))?;
                    let text: String = row.try_get(0).map_err(|e| e.to_string())?;
                    if decode {
                        serde_json::from_str::<T>(&text).map_err(|e| e.to_string())?;
                    }
                    Ok(())
                }
            })
            .await
        }
        (false, Variant::Redis) => {
            let conns = ctx.redis_conns(clients).await?;
            let prefix: Arc<str> = ctx.redis.as_ref().map_err(Clone::clone)?.prefix.as_str().into();
            drive(clients, warmup, window, move |client, r| {
                let (mut conn, prefix) = (conns[client].clone(), Arc::clone(&prefix));
                async move {
                    let key = format!("{prefix}{}", key(r));
                    let bytes: Option<Vec<u8>> =
                        redis::cmd("GET").arg(&key).query_async(&mut conn).await.map_err(|e| e.to_string())?;
                    let bytes = bytes.ok_or_else(|| format!("unexpected Redis miss on {key}"))?;
                    serde_json::from_slice::<T>(&bytes).map_err(|e| e.to_string())?;
                    Ok(())
                }
            })
            .await
        }
        (true, Variant::PgCache | Variant::PgCacheUncoalesced | Variant::PgCacheLeanPool | Variant::PgCacheGin) => {
            let cache = match variant {
                Variant::PgCache => ctx.cache(table, durability, true).await?,
                Variant::PgCacheUncoalesced => ctx.cache(table, durability, false).await?,
                Variant::PgCacheLeanPool => ctx.lean_cache(table, clients, durability).await?,
                _ => {
                    ctx.db.gin.clone()?;
                    ctx.cache(Table::Gin, durability, true).await?
                }
            };
            drive(clients, warmup, window, move |_, r| {
                let (cache, value) = (cache.clone(), Arc::clone(&value));
                async move { cache.set(&key(r), &*value, TTL).await.map_err(|e| e.to_string()) }
            })
            .await
        }
        (true, Variant::Sqlx) => {
            let pool = ctx.lean_pool(table, clients).await?;
            let statement: Arc<str> = ctx.set_statement(group).into();
            let params = max_parameter(&statement);
            if params != 3 {
                return Err(format!("the runtime's SET statement takes {params} parameters; this reference binds 3"));
            }
            drive(clients, warmup, window, move |_, r| {
                let (pool, statement, value) = (pool.clone(), Arc::clone(&statement), Arc::clone(&value));
                async move {
                    let json = serde_json::to_string(&*value).map_err(|e| e.to_string())?;
                    sqlx::query(&statement)
                        .bind(key(r))
                        .bind(json)
                        .bind(TTL.as_millis() as i64)
                        .execute(&pool)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(())
                }
            })
            .await
        }
        (true, Variant::Redis) => {
            let conns = ctx.redis_conns(clients).await?;
            let prefix: Arc<str> = ctx.redis.as_ref().map_err(Clone::clone)?.prefix.as_str().into();
            drive(clients, warmup, window, move |client, r| {
                let (mut conn, value, prefix) = (conns[client].clone(), Arc::clone(&value), Arc::clone(&prefix));
                async move {
                    let json = serde_json::to_string(&*value).map_err(|e| e.to_string())?;
                    redis::cmd("SET")
                        .arg(format!("{prefix}{}", key(r)))
                        .arg(json)
                        .arg("EX")
                        .arg(TTL.as_secs())
                        .query_async::<()>(&mut conn)
                        .await
                        .map_err(|e| e.to_string())
                }
            })
            .await
        }
        (write, Variant::Pgbench) => {
            let pgbench = ctx.pgbench.clone()?;
            let (statement, defines) = if write {
                let statement = to_pgbench(ctx.set_statement(group), &["k", "val", "ttl"])?;
                (statement, vec![("val", json), ("ttl", TTL.as_millis().to_string())])
            } else {
                (to_pgbench(&ctx.statements.get, &["k"])?, Vec::new())
            };
            let script = format!("\\set k {} + random(1, {n})\n{statement};\n", size.pgbench_key_base());
            let url = ctx.db.url_for(table);
            let length = ctx.pgbench_length(case, window);
            let measured = tokio::task::spawn_blocking(move || pgbench.run(&url, &script, &defines, clients, length))
                .await
                .map_err(|e| e.to_string())??;
            ctx.pgbench_rates.insert(case, measured.rate());
            measured
        }
        (false, Variant::GetMany | Variant::SingleGets) => {
            let cache = ctx.cache(table, durability, true).await?;
            let many = variant == Variant::GetMany;
            drive(clients, warmup, window, move |_, r| {
                let cache = cache.clone();
                async move {
                    // 100 keys spread over the data set, derived from this operation's random number.
                    let keys: Vec<String> = (0..100u64).map(|i| key(r.wrapping_add(i.wrapping_mul(7_919)))).collect();
                    if many {
                        let values = cache.get_many::<T>(&keys).await.map_err(|e| e.to_string())?;
                        if let Some(i) = values.iter().position(Option::is_none) {
                            return Err(format!("unexpected miss on {}", keys[i]));
                        }
                        return Ok(());
                    }
                    for key in &keys {
                        hit(cache.get::<T>(key).await, key)?;
                    }
                    Ok(())
                }
            })
            .await
        }
        (false, Variant::MacroHit | Variant::DirectGet) => {
            let cache = ctx.cache(table, durability, true).await?;
            ctx.macros.drive::<T>(cache, size, clients, variant == Variant::MacroHit, warmup, window).await?
        }
        (write, variant) => return Err(format!("no such variant: {variant:?} (write: {write})")),
    };
    Ok(measured)
}

/// The highest `$n` in a statement.
fn max_parameter(statement: &str) -> usize {
    let bytes = statement.as_bytes();
    let mut max = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let start = i + 1;
            let mut end = start;
            while end < bytes.len() && bytes[end].is_ascii_digit() {
                end += 1;
            }
            if let Ok(n) = statement[start..end].parse::<usize>() {
                max = max.max(n);
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    max
}

async fn run_case(ctx: &mut Ctx, case: Case) -> Vec<RowResult> {
    let variants: Vec<Variant> = case
        .group
        .variants()
        .iter()
        .copied()
        .filter(|v| ctx.opts.variants.as_ref().is_none_or(|only| only.contains(v)))
        .collect();
    if variants.is_empty() {
        return Vec::new();
    }
    let segments = ctx.opts.segments.max(1);
    let window = ctx.opts.duration / segments;
    let mut results: Vec<Result<Measurement, String>> = vec![Ok(Measurement::default()); variants.len()];
    for s in 0..segments {
        let order: Vec<usize> =
            if s % 2 == 0 { (0..variants.len()).collect() } else { (0..variants.len()).rev().collect() };
        for index in order {
            if results[index].is_err() {
                continue;
            }
            // Connections and caches are warm after the first segment: later ones need only a short warm-up.
            let warmup = if s == 0 { ctx.opts.warmup } else { ctx.opts.warmup.min(Duration::from_millis(50)) };
            let measured = match case.size {
                Size::K1 => segment::<Retrieval>(ctx, case, variants[index], window, warmup).await,
                Size::K10 => segment::<Answer>(ctx, case, variants[index], window, warmup).await,
            };
            match measured {
                Ok(m) => {
                    if let Ok(total) = &mut results[index] {
                        total.absorb(m);
                    }
                }
                Err(reason) => results[index] = Err(reason),
            }
        }
    }
    let rows: Vec<RowResult> = variants
        .iter()
        .zip(results)
        .map(|(&variant, result)| {
            let label = variant.label(case.group);
            match result {
                Ok(m) => RowResult {
                    case,
                    variant,
                    label,
                    ops_per_sec: Some(m.median_rate()),
                    segment_rates: m.segment_rates.clone(),
                    client_cpu_us: m.client_cpu_us_per_op(),
                    mean_us: m.mean_us(),
                    p50_us: m.quantile_us(0.5),
                    p99_us: m.quantile_us(0.99),
                    ops: m.ops,
                    errors: m.errors,
                    timeouts: m.timeouts,
                    first_error: m.first_error,
                    secs: m.secs,
                    skipped: None,
                },
                Err(reason) => RowResult {
                    case,
                    variant,
                    label,
                    ops_per_sec: None,
                    segment_rates: Vec::new(),
                    client_cpu_us: None,
                    mean_us: None,
                    p50_us: None,
                    p99_us: None,
                    ops: 0,
                    errors: 0,
                    timeouts: 0,
                    first_error: None,
                    secs: 0.0,
                    skipped: Some(reason),
                },
            }
        })
        .collect();
    log(format!("== {} | {} | {} client(s)", case.group.title(), case.size.label(), case.clients));
    let subject = rows.first().and_then(|r| r.ops_per_sec);
    for row in &rows {
        match (row.ops_per_sec, &row.skipped) {
            (Some(rate), _) => {
                let ratio = match subject {
                    Some(s) if row.variant != variants[0] && rate > 0.0 => format!("  subject/this = {:.2}", s / rate),
                    _ => String::new(),
                };
                let errors = if row.errors > 0 {
                    format!("  ERRORS: {} ({})", row.errors, row.first_error.as_deref().unwrap_or(""))
                } else {
                    String::new()
                };
                log(format!(
                    "   {:<28} {:>10.0} ops/s  mean {:>8.1} µs  client cpu {:>6.1} µs/op{ratio}{errors}",
                    row.label,
                    rate,
                    row.mean_us.unwrap_or(f64::NAN),
                    row.client_cpu_us.unwrap_or(f64::NAN)
                ));
            }
            (None, Some(reason)) => log(format!("   {:<28} skipped: {reason}", row.label)),
            (None, None) => {}
        }
    }
    rows
}

/// Runs the suite.
pub async fn run(opts: Options) -> Result<Outcome, String> {
    let started = Instant::now();
    let fingerprint =
        if opts.fingerprint_budget.is_zero() { Vec::new() } else { fingerprint::measure(opts.fingerprint_budget) };

    let lock = setup::lock(&opts.database_url, &opts.database).await?;
    let db = setup::prepare(&opts.database_url, &opts.database, opts.rows, opts.op_timeout).await?;
    let statements = setup::reference_statements();
    log(format!("[setup] GET statement: {}", statements.get));
    log(format!("[setup] SET statement (Full): {}", statements.set_full));
    log(format!("[setup] SET statement (AsyncCommit): {}", statements.set_async));
    let pgbench = Pgbench::find();
    match &pgbench {
        Ok(p) => log(format!("[setup] {}", p.version)),
        Err(reason) => log(format!("[setup] pgbench rows skipped: {reason}")),
    }
    let redis = match &opts.redis_url {
        None => Err("no REDIS_URL given".to_owned()),
        Some(url) => match RedisRef::connect(url, &opts.database).await {
            Ok(mut redis) => match redis.load(opts.rows).await {
                Ok(()) => Ok(redis),
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        },
    };
    if let Err(reason) = &redis {
        log(format!("[setup] Redis rows skipped: {reason}"));
    }
    let macros = crate::memo::Memo::new(opts.macro_keys);
    let mut ctx = Ctx {
        db,
        statements,
        pgbench,
        redis,
        lean_pools: HashMap::new(),
        caches: HashMap::new(),
        lean_caches: HashMap::new(),
        redis_conns: HashMap::new(),
        macros,
        pgbench_rates: HashMap::new(),
        opts,
    };
    let mut rows = Vec::new();
    for group in ctx.opts.groups.clone() {
        for size in ctx.opts.sizes.clone() {
            for clients in ctx.opts.clients.clone() {
                if group == Group::GetMany && clients > GET_MANY_MAX_CLIENTS {
                    continue;
                }
                // Only one case's connections are open at a time: pgbench and the references need one server
                // connection per client.
                ctx.close_pools().await;
                rows.extend(run_case(&mut ctx, Case { group, size, clients }).await);
            }
        }
    }
    let tier = if ctx.opts.fingerprint_budget.is_zero() {
        Vec::new()
    } else {
        match ctx.cache(Table::Logged, Durability::AsyncCommit, true).await {
            Ok(cache) => {
                let budget = ctx.opts.fingerprint_budget * 2;
                crate::tier::measure(cache, ctx.redis.as_ref().ok(), 1000, budget).await
            }
            Err(reason) => {
                log(format!("[tier] skipped: {reason}"));
                Vec::new()
            }
        }
    };
    if let Ok(redis) = &ctx.redis {
        if let Err(error) = redis.cleanup().await {
            log(format!("[cleanup] Redis keys not deleted: {error}"));
        }
    }
    for pool in ctx.lean_pools.values() {
        pool.close().await;
    }
    sqlx::Connection::close(lock).await.ok();
    Ok(Outcome {
        rows,
        fingerprint,
        tier,
        statements: Some(StatementsOut {
            get: ctx.statements.get.clone(),
            set_full: ctx.statements.set_full.clone(),
            set_async: ctx.statements.set_async.clone(),
        }),
        postgres_version: ctx.db.server_version.clone(),
        redis: ctx.redis.as_ref().map(|r| r.version.clone()).map_err(Clone::clone),
        pgbench: ctx.pgbench.as_ref().map(|p| p.version.clone()).map_err(Clone::clone),
        wall_secs: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_counted() {
        assert_eq!(max_parameter("SELECT $1, $2::jsonb, $3::bigint"), 3);
        assert_eq!(max_parameter("SELECT 1"), 0);
        assert_eq!(max_parameter("SELECT $12 + $3"), 12);
    }
}
