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

/// Process A lists each shard's hosts as `127.0.0.1,localhost`, process B as `localhost,127.0.0.1`: every
/// key A writes, B reads back (and B's delete removes what A wrote).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_listing_hosts_differently_share_every_entry() -> TestResult {
    let (port, admin) = server()?;
    let names: Vec<String> =
        ["a", "b"].iter().map(|s| format!("pg_cached_identity_{}_{s}", std::process::id())).collect();
    create_databases(&admin, &names).await?;
    let url = |hosts: &str, db: &str| format!("postgres://postgres@{hosts}/{db}");
    let forward = format!("127.0.0.1:{port},localhost:{port}");
    let backward = format!("localhost:{port},127.0.0.1:{port}");
    let build = |hosts: &str| {
        PgCache::builder().shards(names.iter().map(|db| url(hosts, db))).sweep_interval(None).build_lazy()
    };
    let (a, b) = (build(&forward)?, build(&backward)?);
    let result = async {
        a.migrate().await?;
        let keys: Vec<String> = (0..200).map(|i| format!("docs:{i:03}")).collect();
        for (i, key) in keys.iter().enumerate() {
            a.set(key, &i, Ttl::Never).await?;
        }
        // Errors rather than panics, so that the databases are dropped whatever happens.
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
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    drop((a, b));
    drop_databases(&admin, &names).await?;
    result
}
