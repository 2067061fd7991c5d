//! Helpers: a fresh database per test, the real binary pointed at it, and a cache to fill it.
//!
//! Other suites use the same server at the same time, so every test creates its own database
//! (`pg_cached_cli_<random>`) through a maintenance connection to the server of `DATABASE_URL` (or
//! postgres://postgres@127.0.0.1:5432/postgres), and drops it when the test ends, passing or failing.

use assert_cmd::Command;
use cache_runtime::PgCache;
use sqlx::{Connection, PgConnection};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Where the test server is, when DATABASE_URL does not say.
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The path of the binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_pg-cached");

/// A database of a test's own, dropped with this value.
#[derive(Debug)]
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// A URL for it (the server of DATABASE_URL, this database).
    pub url: String,
    admin_url: String,
    runtime: tokio::runtime::Runtime,
    /// Roles created by [`TestDb::role`], dropped after the database.
    roles: std::cell::RefCell<Vec<String>>,
}

impl TestDb {
    /// Creates a fresh, empty database (not migrated).
    pub fn create() -> TestDb {
        let admin_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let name = unique_name();
        let url = with_database(&admin_url, &name);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime for the test");
        runtime.block_on(admin(&admin_url, &format!("CREATE DATABASE {name}")));
        TestDb { name, url, admin_url, runtime, roles: Default::default() }
    }

    /// Creates a fresh database and applies the cache's migrations to it (through the library).
    pub fn migrated() -> TestDb {
        let db = TestDb::create();
        let cache = db.cache();
        db.block_on(cache.migrate()).expect("migrations apply");
        db
    }

    /// Runs a future on this test's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// A cache over this database, as a service would build it (sweeper off so tests decide).
    pub fn cache(&self) -> PgCache {
        self.block_on(PgCache::builder().database_url(&self.url).sweep_interval(None).max_entries(None).build())
            .expect("the test database accepts connections")
    }

    /// Runs SQL on this database (to shape rows the API cannot: past expiries, fixed creation times).
    pub fn sql(&self, statement: &str) {
        self.block_on(async {
            let mut connection = PgConnection::connect(&self.url).await.expect("connect to the test database");
            sqlx::raw_sql(statement).execute(&mut connection).await.expect("test SQL runs");
            connection.close().await.ok();
        });
    }

    /// A count of `cache_entries` rows matching `condition`.
    pub fn count(&self, condition: &str) -> i64 {
        self.block_on(async {
            let mut connection = PgConnection::connect(&self.url).await.expect("connect to the test database");
            let query = format!("SELECT count(*) FROM cache_entries WHERE {condition}");
            sqlx::query_scalar(&query).fetch_one(&mut connection).await.expect("count")
        })
    }

    /// The one number `query` returns (`SELECT count(*) FROM ...`), for tables other than `cache_entries`.
    pub fn scalar(&self, query: &str) -> i64 {
        self.block_on(async {
            let mut connection = PgConnection::connect(&self.url).await.expect("connect to the test database");
            sqlx::query_scalar(query).fetch_one(&mut connection).await.expect("a number")
        })
    }

    /// A new LOGIN role with no right on the cache, named after this database (roles are the whole
    /// server's), dropped with it.
    pub fn role(&self, label: &str) -> String {
        let role = format!("r{}_{label}", self.name.trim_start_matches("pg_"));
        self.block_on(admin(&self.admin_url, &format!("CREATE ROLE {role} LOGIN")));
        self.roles.borrow_mut().push(role.clone());
        role
    }

    /// A cache over this database connected as `role`.
    pub fn cache_as(&self, role: &str) -> PgCache {
        let options: sqlx::postgres::PgConnectOptions = self.url.parse().expect("the test URL parses");
        self.block_on(PgCache::builder().connect_options(options.username(role)).sweep_interval(None).build())
            .expect("a cache over the test database")
    }

    /// The binary, pointed at this database, with an environment that cannot leak in from the caller.
    pub fn pg_cached(&self) -> Command {
        pg_cached_at(&self.url)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        self.runtime.block_on(admin(&self.admin_url, &statement));
        for role in self.roles.borrow().iter() {
            self.runtime.block_on(admin(&self.admin_url, &format!("DROP ROLE IF EXISTS {role}")));
        }
    }
}

/// `answer:1` tagged doc:1, `answer:2` tagged doc:1 and doc:2, `answer:3` tagged doc:3, `plain:1` untagged.
pub fn with_tagged_entries() -> TestDb {
    let db = TestDb::migrated();
    let cache = db.cache();
    db.block_on(async {
        let ttl = Some(Duration::from_secs(600));
        cache.set_tagged("answer:1", &1, ttl, &["doc:1"]).await.expect("set_tagged");
        cache.set_tagged("answer:2", &2, ttl, &["doc:2", "doc:1"]).await.expect("set_tagged");
        cache.set_tagged("answer:3", &3, ttl, &["doc:3"]).await.expect("set_tagged");
        cache.set("plain:1", &4, ttl).await.expect("set");
    });
    db
}

/// The binary pointed at `url`.
pub fn pg_cached_at(url: &str) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env("DATABASE_URL", url)
        .env("NO_COLOR", "1")
        .env_remove("CACHE_MAX_ENTRIES")
        .env_remove("PG_CACHED_KEYS")
        .env_remove("RUST_LOG")
        .timeout(Duration::from_secs(60));
    command
}

/// Runs one statement on the maintenance database.
async fn admin(admin_url: &str, statement: &str) {
    let mut connection = PgConnection::connect(admin_url).await.expect("the test server accepts connections");
    sqlx::raw_sql(statement).execute(&mut connection).await.expect("admin statement runs");
    connection.close().await.ok();
}

/// `pg_cached_cli_` and something no other test process picks at the same time.
fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("pg_cached_cli_{}_{}_{}", std::process::id(), nanos, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// `url` with its database replaced by `name` (query string kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("DATABASE_URL is a URL");
    let (rest, query) = rest.split_once('?').map_or((rest, None), |(r, q)| (r, Some(q)));
    let authority = rest.split_once('/').map_or(rest, |(authority, _)| authority);
    match query {
        Some(query) => format!("{scheme}://{authority}/{name}?{query}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}

/// The stdout of a successful run, parsed as JSON.
pub fn json_of(command: &mut Command) -> serde_json::Value {
    let output = command.assert().success().get_output().stdout.clone();
    serde_json::from_slice(&output)
        .unwrap_or_else(|e| panic!("stdout is JSON ({e}): {}", String::from_utf8_lossy(&output)))
}

/// The stdout of a successful run, as text.
pub fn text_of(command: &mut Command) -> String {
    String::from_utf8(command.assert().success().get_output().stdout.clone()).expect("UTF-8 output")
}
