//! The bench database: created on the server of `DATABASE_URL`, with three schemas that each hold a
//! `cache_entries` table made by the runtime's own migrations and loaded with the same rows:
//!
//! - `bench_logged`: the table as the runtime creates it;
//! - `bench_gin`: the same, plus the opt-in GIN index (`PgCache::builder().gin_index(true)`);
//! - `bench_unlogged`: the same table after `ALTER TABLE cache_entries SET UNLOGGED`, a manual choice the
//!   runtime does not make for you.
//!
//! Clients pick a table with `search_path` (the runtime's SQL names `cache_entries` unqualified), so the
//! variants of one comparison can alternate without rebuilding anything.

use crate::data::Size;
use cache_runtime::{Durability, PgCache};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// One of the three tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// As the runtime creates it.
    Logged,
    /// With the opt-in GIN index.
    Gin,
    /// UNLOGGED.
    Unlogged,
}

impl Table {
    /// Its schema.
    pub fn schema(self) -> &'static str {
        match self {
            Table::Logged => "bench_logged",
            Table::Gin => "bench_gin",
            Table::Unlogged => "bench_unlogged",
        }
    }
}

/// Replaces the database name of a `postgres://` URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (rest, None),
    };
    let authority = before_query.split_once('/').map_or(before_query, |(authority, _)| authority);
    let mut out = format!("{scheme}://{authority}/{database}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Adds `-c search_path=<schema>` to a URL (understood by sqlx and libpq alike).
pub fn with_search_path(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

/// The prepared bench database.
#[derive(Debug, Clone)]
pub struct Db {
    /// URL of the bench database.
    pub url: String,
    /// Server version, e.g. `15.20`.
    pub server_version: String,
    /// The server's `max_connections`.
    pub max_connections: usize,
    /// Why the UNLOGGED table is unavailable, if it is.
    pub unlogged: Result<(), String>,
    /// Why the GIN table is unavailable, if it is.
    pub gin: Result<(), String>,
    /// The caches' operation timeout; `None` keeps the runtime's default, as an application gets it.
    pub op_timeout: Option<Duration>,
}

impl Db {
    /// The URL of one table's schema.
    pub fn url_for(&self, table: Table) -> String {
        with_search_path(&self.url, table.schema())
    }

    /// A pool of `n` connections to one table, configured as a hand-written sqlx service would be for speed:
    /// no liveness ping before each use (`test_before_acquire(false)`).
    pub async fn lean_pool(&self, table: Table, n: u32) -> Result<PgPool, String> {
        let options = PgConnectOptions::from_str(&self.url_for(table)).map_err(|e| e.to_string())?;
        PgPoolOptions::new()
            .max_connections(n)
            .min_connections(n)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|e| format!("connect: {e}"))
    }

    /// A `PgCache` as an application builds it: its own default pool (10 connections), default settings,
    /// except that the background sweeper and the row limit are off (they would delete the data set).
    /// Retried for a few seconds: right after a case with hundreds of clients closed its pools, the server may
    /// still be busy ending those sessions.
    pub async fn cache(&self, table: Table, durability: Durability, coalesce: bool) -> Result<PgCache, String> {
        let mut attempts = 0;
        loop {
            let built = self
                .tuned(PgCache::builder().database_url(self.url_for(table)).coalesce(coalesce), durability)
                .build()
                .await;
            match built {
                Ok(cache) => return Ok(cache),
                Err(error) if attempts < 5 => {
                    attempts += 1;
                    log(format!("[setup] PgCache::build failed ({error}); retrying"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(error) => return Err(format!("PgCache::build: {error}")),
            }
        }
    }

    /// A `PgCache` over a pool given with `.pool()`.
    pub async fn cache_over(&self, pool: PgPool, durability: Durability) -> Result<PgCache, String> {
        self.tuned(PgCache::builder().pool(pool), durability).build().await.map_err(|e| format!("PgCache::build: {e}"))
    }

    fn tuned(&self, builder: cache_runtime::PgCacheBuilder, durability: Durability) -> cache_runtime::PgCacheBuilder {
        let builder = builder
            .durability(durability)
            .sweep_interval(None)
            .max_entries(None)
            .default_ttl(Duration::from_secs(3600));
        match self.op_timeout {
            Some(timeout) => builder.op_timeout(timeout),
            None => builder,
        }
    }
}

/// Sizes of the data set.
#[derive(Debug, Clone, Copy)]
pub struct Rows {
    /// Entries of about 1 KB.
    pub k1: u64,
    /// Entries of about 10 KB.
    pub k10: u64,
}

impl Rows {
    /// Entries of this size.
    pub fn of(self, size: Size) -> u64 {
        match size {
            Size::K1 => self.k1,
            Size::K10 => self.k10,
        }
    }
}

fn log(message: impl AsRef<str>) {
    eprintln!("[setup] {}", message.as_ref());
}

/// Takes a session lock named after the bench database on `admin_url`'s database, so that two runs on the
/// same bench database (two `cargo test` at once, say) take turns instead of dropping each other's tables.
/// The lock lasts as long as the returned connection.
pub async fn lock(admin_url: &str, database: &str) -> Result<PgConnection, String> {
    let mut conn =
        PgConnection::connect(admin_url).await.map_err(|e| format!("cannot connect to DATABASE_URL: {e}"))?;
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
        .bind(format!("pg_cached_bench/{database}"))
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    if !free {
        log(format!("another run is using {database}: waiting for it to finish"));
        sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
            .bind(format!("pg_cached_bench/{database}"))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(conn)
}

/// Creates (if needed) and loads the bench database `database` on the server of `admin_url`.
pub async fn prepare(admin_url: &str, database: &str, rows: Rows, op_timeout: Option<Duration>) -> Result<Db, String> {
    let started = Instant::now();
    let mut admin =
        PgConnection::connect(admin_url).await.map_err(|e| format!("cannot connect to DATABASE_URL: {e}"))?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(database)
        .fetch_optional(&mut admin)
        .await
        .map_err(|e| e.to_string())?;
    if exists.is_none() {
        log(format!("creating database {database}"));
        let created = admin.execute(format!("CREATE DATABASE \"{database}\"").as_str()).await;
        // Another process may have created it meanwhile.
        if let Err(error) = created {
            if !error.to_string().contains("already exists") {
                return Err(format!(
                    "CREATE DATABASE {database}: {error} (the bench needs a role that may create databases)"
                ));
            }
        }
    }
    admin.close().await.ok();

    let url = with_database(admin_url, database);
    let mut conn = PgConnection::connect(&url).await.map_err(|e| format!("connect to {database}: {e}"))?;
    let server_version: String =
        sqlx::query_scalar("SHOW server_version").fetch_one(&mut conn).await.map_err(|e| e.to_string())?;
    for table in [Table::Logged, Table::Gin, Table::Unlogged] {
        let schema = table.schema();
        conn.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}").as_str())
            .await
            .map_err(|e| format!("schema {schema}: {e}"))?;
    }
    let max_connections: String =
        sqlx::query_scalar("SHOW max_connections").fetch_one(&mut conn).await.map_err(|e| e.to_string())?;
    let max_connections = max_connections.parse().unwrap_or(100);
    let mut db = Db { url, server_version, max_connections, unlogged: Ok(()), gin: Ok(()), op_timeout };

    // The tables, through the runtime's own migrations.
    for table in [Table::Logged, Table::Gin, Table::Unlogged] {
        let pool = db.lean_pool(table, 1).await?;
        let cache = db.cache_over(pool.clone(), Durability::AsyncCommit).await?;
        cache.migrate().await.map_err(|e| format!("migrate {}: {e}", table.schema()))?;
        pool.close().await;
    }
    // cache_semantic references cache_entries, and PostgreSQL links the two tables' persistence: its foreign
    // key goes while both change, then comes back.
    let unlogged = "ALTER TABLE bench_unlogged.cache_semantic DROP CONSTRAINT IF EXISTS cache_semantic_cache_key_fkey; \
         ALTER TABLE bench_unlogged.cache_semantic SET UNLOGGED; \
         ALTER TABLE bench_unlogged.cache_entries SET UNLOGGED; \
         ALTER TABLE bench_unlogged.cache_semantic ADD CONSTRAINT cache_semantic_cache_key_fkey FOREIGN KEY (cache_key) \
         REFERENCES bench_unlogged.cache_entries (cache_key) ON DELETE CASCADE";
    if let Err(error) = sqlx::raw_sql(unlogged).execute(&mut conn).await {
        log(format!("UNLOGGED rows will be skipped: {error}"));
        db.unlogged = Err(format!("ALTER TABLE ... SET UNLOGGED failed: {error}"));
    }

    // The data set, into the logged table.
    for size in [Size::K1, Size::K10] {
        let n = rows.of(size);
        let batch = match size {
            Size::K1 => 2_000,
            Size::K10 => 200,
        };
        let began = Instant::now();
        let mut id = 1;
        while id <= n {
            let last = (id + batch - 1).min(n);
            // Each entry twice: under its key, and under pgbench's mirror key.
            let keys: Vec<String> = (id..=last).flat_map(|i| [size.key(i), size.pgbench_key(i)]).collect();
            let values: Vec<String> = (id..=last)
                .flat_map(|i| {
                    let json = size.json(i);
                    [json.clone(), json]
                })
                .collect();
            sqlx::query(
                "INSERT INTO bench_logged.cache_entries (cache_key, data, created_at, expires_at) \
                 SELECT k, d::jsonb, now(), now() + interval '1 day' FROM unnest($1::text[], $2::text[]) AS t(k, d)",
            )
            .bind(keys)
            .bind(values)
            .execute(&mut conn)
            .await
            .map_err(|e| format!("load: {e}"))?;
            id = last + 1;
        }
        log(format!(
            "loaded {n} entries of {} (and their pgbench mirror) in {:.1} s",
            size.label(),
            began.elapsed().as_secs_f64()
        ));
    }
    for table in [Table::Gin, Table::Unlogged] {
        if table == Table::Unlogged && db.unlogged.is_err() {
            continue;
        }
        let began = Instant::now();
        conn.execute(
            format!("INSERT INTO {}.cache_entries SELECT * FROM bench_logged.cache_entries", table.schema()).as_str(),
        )
        .await
        .map_err(|e| format!("copy into {}: {e}", table.schema()))?;
        log(format!("copied the data set into {} in {:.1} s", table.schema(), began.elapsed().as_secs_f64()));
    }
    // The GIN index, through the runtime's own option.
    let began = Instant::now();
    let gin_pool = db.lean_pool(Table::Gin, 1).await?;
    let gin_cache =
        db.tuned(PgCache::builder().pool(gin_pool.clone()).gin_index(true), Durability::AsyncCommit).build().await;
    match gin_cache {
        Ok(cache) => match cache.migrate().await {
            Ok(()) => log(format!("built the GIN index in {:.1} s", began.elapsed().as_secs_f64())),
            Err(error) => db.gin = Err(format!("gin_index(true).migrate() failed: {error}")),
        },
        Err(error) => db.gin = Err(error.to_string()),
    }
    gin_pool.close().await;
    let gin_indexes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'bench_gin' AND indexdef ILIKE '%USING gin%'",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| e.to_string())?;
    if db.gin.is_ok() && gin_indexes == 0 {
        db.gin = Err("gin_index(true).migrate() created no GIN index".into());
    }

    for table in [Table::Logged, Table::Gin, Table::Unlogged] {
        conn.execute(format!("VACUUM (ANALYZE) {}.cache_entries", table.schema()).as_str())
            .await
            .map_err(|e| format!("vacuum: {e}"))?;
    }
    if let Err(error) = conn.execute("CHECKPOINT").await {
        log(format!("CHECKPOINT skipped: {error}"));
    }
    conn.close().await.ok();
    log(format!("bench database {database} ready in {:.1} s", started.elapsed().as_secs_f64()));
    Ok(db)
}

/// The statements the sqlx and pgbench references run: the plain single-key read and upsert a user of raw
/// sqlx would write (see [`reference_statements`]).
#[derive(Debug, Clone)]
pub struct Statements {
    /// The reference read.
    pub get: String,
    /// The reference write, `synchronous_commit` on.
    pub set_full: String,
    /// The reference write, `synchronous_commit` off.
    pub set_async: String,
}

/// The reference read: the single-key SELECT a user of raw sqlx would write ($1 key), returning the JSON
/// text and the milliseconds left, as the runtime reads them. The runtime's own read is a lookup that also
/// returns the database clock (for the invalidation guard) and, under load, a coalesced `= ANY` of many
/// keys; set against this, the ratio is the price of the first and the gain of the second.
fn reference_get() -> String {
    "SELECT data::text, CASE WHEN isfinite(expires_at) THEN (extract(epoch FROM expires_at - now()) * 1000)::bigint \
     END FROM cache_entries WHERE cache_key = $1 AND (expires_at IS NULL OR expires_at > now())"
        .to_owned()
}

/// The reference write: the plain parameterized upsert ($1 key, $2 JSON, $3 TTL in ms) that a user of raw
/// sqlx would write, with the same commit mode as the runtime. The runtime's own write does more (it takes
/// turns with invalidations of the key, notifies other processes, records the sweep time) through
/// `pg_cached_write_entry`; set against this, the ratio is the price of those guarantees.
fn reference_upsert(durability: Durability) -> String {
    let relaxed = match durability {
        Durability::AsyncCommit => " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed",
        Durability::Full => "",
    };
    format!(
        "INSERT INTO cache_entries (cache_key, data, created_at, expires_at, sweep_at) \
         SELECT $1, $2::jsonb, now(), now() + $3::bigint * interval '1 millisecond', \
         now() + $3::bigint * interval '1 millisecond'{relaxed} \
         ON CONFLICT (cache_key) DO UPDATE SET data = EXCLUDED.data, created_at = EXCLUDED.created_at, \
         expires_at = EXCLUDED.expires_at, sweep_at = EXCLUDED.sweep_at"
    )
}

/// The statements the references run: [`reference_get`] and [`reference_upsert`].
pub fn reference_statements() -> Statements {
    Statements {
        get: reference_get(),
        set_full: reference_upsert(Durability::Full),
        set_async: reference_upsert(Durability::AsyncCommit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/pg_cached", "pg_cached_bench"),
            "postgres://postgres@127.0.0.1:5432/pg_cached_bench"
        );
        assert_eq!(with_database("postgres://u:p@h/db?sslmode=disable", "b"), "postgres://u:p@h/b?sslmode=disable");
        assert_eq!(with_database("postgres://h:5432", "b"), "postgres://h:5432/b");
        assert_eq!(
            with_database("postgresql:///db?host=/var/run/postgresql", "b"),
            "postgresql:///b?host=/var/run/postgresql"
        );
        assert_eq!(with_search_path("postgres://h/b", "s"), "postgres://h/b?options=-c%20search_path%3Ds");
        assert_eq!(with_search_path("postgres://h/b?x=1", "s"), "postgres://h/b?x=1&options=-c%20search_path%3Ds");
    }
}
