//! The builder's checks and its `Debug`: settings out of bounds are refused at build, and no URL, builder,
//! cache or error shows a password.

use super::*;

/// The two halves of the password every URL here carries; neither may ever be shown.
const HALVES: [&str; 2] = ["Pw1", "Xy9"];

/// URLs that parse, with the password `Pw1Xy9` (or `Pw1Xy9/@?#`, encoded) in each place a URL can hold it.
const VALID: &[&str] = &[
    "postgres://app:Pw1Xy9@127.0.0.1:1/cache",
    "postgres://app:Pw1Xy9@127.0.0.1:1,127.0.0.2:2/cache?target_session_attrs=read-write",
    "postgres://app@127.0.0.1:1/cache?password=Pw1Xy9",
    "postgres://app@127.0.0.1:1/cache?sslmode=disable&password=Pw1Xy9",
    "postgres://app@127.0.0.1:1/cache?pass%77ord=Pw1Xy9",
    "postgres://app:Pw1Xy9%2F%40%3F%23@127.0.0.1:1/cache",
];

/// Connection strings that do not parse or are refused, each holding the password.
const MALFORMED: &[&str] = &[
    "postgres://app:Pw1/Xy9@db/cache",
    "postgres://app:Pw1#Xy9@db/cache",
    "postgres://app:Pw1?Xy9@db/cache",
    "postgres://app:Pw1@Xy9@db:notaport/cache",
    "postgres://app:Pw1Xy9@db/cache?target_session_attrs=read-only",
    "postgres://app:Pw1Xy9@db/cache?sslmode=bogus",
    "postgres://db/cache?PASSWORD=Pw1Xy9",
    "postgres://db/cache?sslpassword=Pw1Xy9",
    "postgres:/app:Pw1Xy9@db/cache",
    "host=db user=app password=Pw1Xy9 dbname=cache",
    "host=db password='Pw1 Xy9'",
];

fn assert_hidden(what: &str, shown: &str) {
    for half in HALVES {
        assert!(!shown.contains(half), "{what} shows the password: {shown}");
    }
}

/// The ways a URL reaches a builder: one server, a shard among others, a read replica (and, for a URL that
/// sqlx parses, options parsed from it).
fn builders(url: &str) -> Vec<(&'static str, PgCacheBuilder)> {
    let quick = |builder: PgCacheBuilder| builder.sweep_interval(None);
    let builders = vec![
        ("database_url", quick(PgCache::builder().database_url(url))),
        ("shards", quick(PgCache::builder().shards([url, "postgres://app@127.0.0.3:3/other"]))),
        (
            "read_replicas",
            quick(PgCache::builder().database_url("postgres://app@127.0.0.3:3/cache"))
                .read_replicas([url], Duration::from_secs(1)),
        ),
    ];
    builders
}

#[tokio::test]
async fn no_builder_or_cache_shows_a_password() {
    for url in VALID {
        let mut builders = builders(url);
        if let Ok(options) = url.parse::<PgConnectOptions>() {
            builders.push(("connect_options", PgCache::builder().connect_options(options).sweep_interval(None)));
        }
        for (how, builder) in builders {
            assert_hidden(&format!("the builder ({how}, {url})"), &format!("{builder:?}"));
            let cache = builder.build_lazy().unwrap_or_else(|e| panic!("{how} {url}: {e}"));
            let shown = format!("{cache:?}");
            assert_hidden(&format!("the cache ({how}, {url})"), &shown);
            assert!(shown.contains("127.0.0.1:1"), "the cache still says where it connects: {shown}");
        }
    }
}

#[tokio::test]
async fn no_error_shows_a_password() {
    for url in MALFORMED {
        for (how, builder) in builders(url) {
            let error = builder.build_lazy().expect_err(url);
            assert!(matches!(error, CacheError::Config(_)), "{how} {url}: {error:?}");
            assert_hidden(&format!("the error ({how}, {url})"), &format!("{error} / {error:?}"));
        }
    }
}

/// Bounds are checked before anything is built, whatever the source.
#[tokio::test]
async fn settings_out_of_bounds_are_refused_at_build() {
    let url = "postgres://app@127.0.0.1:1/cache";
    let refused = [
        ("op_timeout", PgCache::builder().database_url(url).op_timeout(Duration::MAX)),
        ("maintenance_timeout", PgCache::builder().database_url(url).maintenance_timeout(Duration::ZERO)),
        ("max_lag", PgCache::builder().database_url(url).read_replicas([url], Duration::MAX)),
        ("max_connections", PgCache::builder().database_url(url).max_connections(0)),
        ("max_connections", PgCache::builder().shards([url]).max_connections(u32::MAX)),
        ("default_ttl", PgCache::builder().database_url(url).default_ttl(Duration::MAX)),
    ];
    for (setting, builder) in refused {
        match builder.build_lazy() {
            Err(CacheError::Config(message)) => assert!(message.contains(setting), "{message}"),
            other => panic!("{setting}: {other:?}"),
        }
    }
    let error = PgCache::builder().database_url(url).lease_duration(Duration::MAX).build().await.expect_err("refused");
    assert!(matches!(&error, CacheError::Config(message) if message.contains("lease_duration")), "{error}");
}
