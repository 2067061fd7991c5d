//! A shard's identity, what rendezvous hashing scores keys against (issue 22, finding 10a): processes
//! that describe the same shards differently must still route every key to the same shard, or each writes
//! where the other never reads and invalidations miss.
//!
//! The routing tests build caches lazily (no I/O) over hosts that need not exist and compare
//! `PgCache::shard_for`. The end-to-end test writes through one cache and reads through another over two
//! databases of the test server, whose hosts each cache lists in its own order (`127.0.0.1` and
//! `localhost` are two names of the same server).

use cache_runtime::{PgCache, Ttl};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A cache over `shards` that never connects (routing needs no I/O).
fn lazy(shards: &[&str]) -> PgCache {
    PgCache::builder().shards(shards.iter().copied()).sweep_interval(None).build_lazy().expect("well-formed shards")
}

/// The shard of each of 10,000 keys.
fn routes(cache: &PgCache) -> Vec<usize> {
    (0..10_000).map(|i| cache.shard_for(&format!("retrieval:{i:05}"))).collect()
}

/// The keys (of the 10,000) that the two caches route differently.
fn disagreements(a: &PgCache, b: &PgCache) -> usize {
    routes(a).iter().zip(routes(b)).filter(|(x, y)| **x != *y).count()
}

#[tokio::test]
async fn the_order_of_a_shards_hosts_does_not_move_keys() {
    let one = lazy(&[
        "postgres://cache@p1.invalid:5432,s1.invalid:5432/app",
        "postgres://cache@p2.invalid:5432,s2.invalid:5433/app",
        "postgres://cache@p3.invalid/app",
    ]);
    let other = lazy(&[
        "postgres://cache@s1.invalid:5432,p1.invalid:5432/app",
        "postgres://cache@s2.invalid:5433,p2.invalid:5432,s2.invalid:5433/app",
        "postgres://cache@p3.invalid/app",
    ]);
    let spread = routes(&one);
    for shard in 0..3 {
        assert!(spread.iter().filter(|s| **s == shard).count() > 2_000, "shard {shard} holds too few keys");
    }
    assert_eq!(disagreements(&one, &other), 0, "reordered hosts moved keys");
}

/// The test server's host and port, and an admin connection's options.
fn server() -> Result<(u16, PgConnectOptions), Box<dyn std::error::Error + Send + Sync>> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL must be set (run through scripts/test)")?;
    let options = PgConnectOptions::from_str(&url)?;
    Ok((options.get_port(), options))
}

/// Two fresh databases for this test run, dropped by [`drop_databases`].
async fn create_databases(admin: &PgConnectOptions, names: &[String]) -> TestResult {
    let mut conn = admin.connect().await?;
    for name in names {
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut conn).await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).await?;
    }
    conn.close().await?;
    Ok(())
}

async fn drop_databases(admin: &PgConnectOptions, names: &[String]) -> TestResult {
    let mut conn = admin.connect().await?;
    for name in names {
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut conn).await?;
    }
    conn.close().await?;
    Ok(())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Writes 200 keys (`prefix:NNN`) through `a`, and checks that `b` reads every one back and that its deletes
/// remove what `a` wrote. Errors rather than panics, so that the caller drops its databases whatever happens.
async fn share_every_entry(a: &PgCache, b: &PgCache, prefix: &str) -> Result<(), BoxError> {
    let keys: Vec<String> = (0..200).map(|i| format!("{prefix}:{i:03}")).collect();
    for (i, key) in keys.iter().enumerate() {
        a.set(key, &i, Ttl::Never).await?;
    }
    let mut missed = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        if b.get::<usize>(key).await? != Some(i) {
            missed.push(key.clone());
        }
    }
    if !missed.is_empty() {
        return Err(format!("{} of 200 keys written by A are not found by B: {missed:?}", missed.len()).into());
    }
    for key in &keys[..50] {
        if !b.delete(key).await? {
            return Err(format!("B's delete of {key} found nothing").into());
        }
        if a.get::<usize>(key).await?.is_some() {
            return Err(format!("{key} survived B's delete").into());
        }
    }
    Ok(())
}

fn lazy_over(specs: Vec<String>) -> Result<PgCache, cache_runtime::CacheError> {
    PgCache::builder().shards(specs).sweep_interval(None).build_lazy()
}

/// Two shards (two databases of the test server). Unnamed, process A lists each shard's hosts as
/// `127.0.0.1,localhost` and process B as `localhost,127.0.0.1`. Named, B also lists the shards in the other
/// order and a standby that is down (`127.0.0.1:1`), and A only one host per shard. Either way every key A
/// writes, B reads back, and B's deletes remove what A wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_listing_hosts_differently_share_every_entry() -> TestResult {
    let (port, admin) = server()?;
    let dbs: Vec<String> =
        ["a", "b"].iter().map(|s| format!("pg_cached_identity_{}_{s}", std::process::id())).collect();
    create_databases(&admin, &dbs).await?;
    let url = |hosts: &str, db: &str| format!("postgres://postgres@{hosts}/{db}");
    let (forward, backward) =
        (format!("127.0.0.1:{port},localhost:{port}"), format!("localhost:{port},127.0.0.1:{port}"));
    let result = async {
        let a = lazy_over(dbs.iter().map(|db| url(&forward, db)).collect())?;
        let b = lazy_over(dbs.iter().map(|db| url(&backward, db)).collect())?;
        a.migrate().await?;
        share_every_entry(&a, &b, "unnamed").await?;

        let a = lazy_over(dbs.iter().map(|db| format!("s-{db}={}", url(&format!("127.0.0.1:{port}"), db))).collect())?;
        let standby_down = format!("localhost:{port},127.0.0.1:1");
        let b = lazy_over(dbs.iter().rev().map(|db| format!("s-{db}={}", url(&standby_down, db))).collect())?;
        share_every_entry(&a, &b, "named").await
    }
    .await;
    drop_databases(&admin, &dbs).await?;
    result
}

/// Named shards route by name alone: another order of the list, of a shard's hosts, extra standbys, another
/// user, and hosts that cannot be reached (a lazily built cache never connects to route) move no key.
#[tokio::test]
async fn named_shards_route_by_name_alone() {
    let one = lazy(&[
        "eu-1=postgres://cache@p1.invalid,s1.invalid/app",
        "eu-2=postgres://cache@p2.invalid/app",
        "eu-3=postgres://cache@p3.invalid:5433/app",
    ]);
    let other = lazy(&[
        "eu-3=postgres://admin@s3.invalid,p3.invalid:5433/app?sslmode=disable",
        "eu-1=postgres://cache@s1b.invalid,s1.invalid,p1.invalid/app",
        "eu-2=postgres://cache@p2.invalid,s2.invalid/app",
    ]);
    // Index in `one`'s list of each of `other`'s shards.
    let same = [2, 0, 1];
    let (first, second) = (routes(&one), routes(&other));
    let moved = first.iter().zip(&second).filter(|(x, y)| **x != same[**y]).count();
    assert_eq!(moved, 0, "keys moved between named shards");
    for shard in 0..3 {
        assert!(first.iter().filter(|s| **s == shard).count() > 2_000, "shard {shard} holds too few keys");
    }
}
