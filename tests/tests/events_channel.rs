//! The events channel under attack (issue 22, "The events channel"): any role may LISTEN and NOTIFY on
//! `pg_cached_events`. A role that may only connect reads no key, namespace or tag text there, and its
//! notifications (forged, oversized, in bursts, not UTF-8) change nothing: the tier keeps serving, its entries
//! stay, the listener keeps its connection, and each one is counted. The SQL and Rust sides sign alike.

use cache_runtime::channel::{name_hash, Notice, Secret};
use cache_runtime::{test_support, PgCache};
use integration_tests::roles::TestRole;
use integration_tests::{listening, tiered_on, within};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TTL: Option<Duration> = Some(Duration::from_secs(600));

/// The database's events secret, read as the owner.
async fn secret(pool: &PgPool) -> Result<Secret, sqlx::Error> {
    let key: Vec<u8> = sqlx::query_scalar("SELECT secret FROM cache_events_secret").fetch_one(pool).await?;
    Ok(Secret::new(&key))
}

/// The 64-bit FNV-1a hash by which payloads name a key.
fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Reads the tier until `key` is served from it (a write's own notification may drop it once).
async fn served_from_tier(cache: &PgCache, key: &str) -> bool {
    let before = cache.process_stats().local_hits;
    within(Duration::from_secs(5), async || {
        cache.get::<i64>(key).await.ok().flatten().is_some() && cache.process_stats().local_hits > before
    })
    .await
    .is_some()
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_connect_only_role_reads_no_text_on_the_channel(pool: PgPool) -> TestResult {
    let owner = tiered_on(pool.clone()).await;
    let outsider = TestRole::create(&pool, "listener").await?;
    let outsider_pool = PgPoolOptions::new().max_connections(2).connect_with(outsider.options()).await?;
    let read = sqlx::query("SELECT secret FROM cache_events_secret").fetch_one(&outsider_pool).await;
    assert!(matches!(&read, Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501")), "{read:?}");
    let mut listener = PgListener::connect_with(&outsider_pool).await?;
    listener.listen(cache_runtime::EVENTS_CHANNEL).await?;

    owner.set_tagged("secretns:k1", &1, TTL, &["doc:d1-topsecret"]).await?;
    owner.invalidate_tag("doc:d1-topsecret").await?;
    owner.set("secretns:k2", &2, TTL).await?;
    owner.delete("secretns:k2").await?;
    owner.delete_namespace("secretns").await?;

    let secret = secret(&pool).await?;
    let mut heard = Vec::new();
    // Two writes, a tag, a delete, the namespace twice; the owner's heartbeats may come in between.
    while heard.len() < 6 {
        let Ok(Some(notification)) = tokio::time::timeout(Duration::from_secs(10), listener.try_recv()).await? else {
            break;
        };
        let payload = notification.payload().to_owned();
        match secret.open(&payload) {
            Ok(Some(message)) if matches!(message.notice, Notice::Ping(_)) => {}
            Ok(Some(message)) => heard.push((payload, message.notice)),
            other => panic!("the cache sent {payload:?}, which does not open: {other:?}"),
        }
    }
    assert_eq!(heard.len(), 6, "{heard:?}");
    for (payload, _) in &heard {
        for text in ["secretns", "k1", "k2", "doc", "topsecret", "secret"] {
            assert!(!payload.contains(text), "{payload:?} shows {text:?}");
        }
    }
    let notices: Vec<&Notice> = heard.iter().map(|(_, notice)| notice).collect();
    assert!(notices.contains(&&Notice::Tag(name_hash("doc:d1-topsecret"))), "{notices:?}");
    assert!(notices.contains(&&Notice::Namespace(name_hash("secretns"))), "{notices:?}");
    assert!(notices.contains(&&Notice::Keys(vec![key_hash("secretns:k2")])), "{notices:?}");
    drop(listener);
    outsider_pool.close().await;
    outsider.drop_role().await?;
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn forged_notifications_change_nothing(pool: PgPool) -> TestResult {
    let owner = tiered_on(pool.clone()).await;
    owner.set_tagged("doc:1", &1, TTL, &["doc:7"]).await?;
    owner.set("ns:x", &2, TTL).await?;
    assert!(served_from_tier(&owner, "doc:1").await && served_from_tier(&owner, "ns:x").await);
    let held = test_support::local_len(&owner);
    assert_eq!(held, 2);

    let outsider = TestRole::create(&pool, "forger").await?;
    let mut forger = outsider.connect().await?;
    let mac = "0123456789abcdef0123456789abcdef";
    let forged = [
        // Today's payloads without a mac, as the previous release sent them.
        "0000000000000000|t|doc:7".to_owned(),
        "0000000000000000|n|ns".to_owned(),
        format!("0000000000000000|k|{:016x}", key_hash("doc:1")),
        // The right format, a wrong mac: keys, namespace and tag by their hashes.
        format!("{mac}|0000000000000000|k|{:016x},{:016x}", key_hash("doc:1"), key_hash("ns:x")),
        format!("{mac}|0000000000000000|n|{:016x}", name_hash("ns")),
        format!("{mac}|0000000000000000|t|{:016x}", name_hash("doc:7")),
        // A replayed heartbeat body under a made-up mac, and a payload with control characters.
        format!("{mac}|0000000000000000|p|0000000000000001"),
        "\u{1b}[2J\r\u{7}".to_owned(),
    ];
    for payload in &forged {
        sqlx::query("SELECT pg_notify('pg_cached_events', $1)").bind(payload).execute(&mut forger).await?;
    }
    let counted =
        within(Duration::from_secs(10), async || owner.process_stats().forged_events >= forged.len() as u64).await;
    assert!(counted.is_some(), "forged: {}", owner.process_stats().forged_events);
    assert_eq!(owner.process_stats().forged_events, forged.len() as u64);
    assert_eq!(test_support::local_len(&owner), held, "the tier kept every entry");
    assert!(served_from_tier(&owner, "doc:1").await && served_from_tier(&owner, "ns:x").await);
    assert_eq!(test_support::listener_connects(&owner), 1, "the listener kept its connection");
    drop(forger);
    outsider.drop_role().await?;
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn sql_and_rust_sign_and_hash_alike(pool: PgPool) -> TestResult {
    // RFC 4231, test cases 1, 2 and 6 (a key longer than the block), in SQL.
    for (key, message, mac) in [
        ("0b".repeat(20), "Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (
            hex(b"Jefe"),
            "what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        (
            "aa".repeat(131),
            "Test Using Larger Than Block-Size Key - Hash Key First",
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
    ] {
        let sql: String =
            sqlx::query_scalar("SELECT encode(pg_cached_hmac(decode($1, 'hex'), convert_to($2, 'UTF8')), 'hex')")
                .bind(&key)
                .bind(message)
                .fetch_one(&pool)
                .await?;
        assert_eq!(sql, mac, "{message:?}");
    }
    // The stored pads sign as the runtime does with the stored secret, and as the generic function does.
    let secret = secret(&pool).await?;
    for body in ["0000000000000000|t|aa818245c677a1df", "00000000000000ff|k|", "é|日本|\u{1f}"] {
        let (sql, generic): (String, String) = sqlx::query_as(
            "SELECT pg_cached_sign($1), \
                    encode(substr(pg_cached_hmac(secret, convert_to($1, 'UTF8')), 1, 16), 'hex') || '|' || $1 \
             FROM cache_events_secret",
        )
        .bind(body)
        .fetch_one(&pool)
        .await?;
        assert_eq!(sql, secret.sign(body), "{body:?}");
        assert_eq!(generic, sql, "{body:?}");
    }
    for name in ["doc:7", "", "é日本", "a|b", &"x".repeat(1000)] {
        let sql: String = sqlx::query_scalar("SELECT pg_cached_name_hash($1)").bind(name).fetch_one(&pool).await?;
        assert_eq!(sql, format!("{:016x}", name_hash(name)), "{name:?}");
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn granted_roles_listen_and_others_get_no_tier(pool: PgPool) -> TestResult {
    let owner = PgCache::builder().pool(pool.clone()).sweep_interval(None).build().await?;
    let (reader, stranger) = (TestRole::create(&pool, "reader").await?, TestRole::create(&pool, "stranger").await?);
    owner.grant_reader(&reader.name).await?;
    let as_role = |role: &TestRole| PgPoolOptions::new().max_connections(2).connect_lazy_with(role.options());
    let reader_cache = tiered_on(as_role(&reader)).await;
    owner.set("doc:1", &1, TTL).await?;
    assert!(served_from_tier(&reader_cache, "doc:1").await, "a reader's tier serves");

    let stranger_cache = PgCache::builder()
        .pool(as_role(&stranger))
        .local_tier(100, Duration::from_secs(600))
        .sweep_interval(None)
        .build()
        .await?;
    let _ = stranger_cache.get::<i64>("doc:1").await; // starts its listener, which cannot read the secret
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(test_support::listener_connects(&stranger_cache), 0, "no secret, no listener, no tier");
    drop((reader_cache, stranger_cache));
    reader.drop_role().await?;
    stranger.drop_role().await?;
    Ok(())
}

/// Issue 22's burst: 20,000 forged payloads of 7.9 KB (they once took a tiered process from 35 MB to 180 MB
/// and its tier reads from 3.9 ms to 6.1 s). Each is dropped by its receiver before it is copied: the tier
/// keeps its entries and serves every read during the burst, and the listener stays connected.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_burst_of_forged_payloads_costs_nothing_kept(pool: PgPool) -> TestResult {
    const FORGED: u64 = 20_000;
    let owner = tiered_on(pool.clone()).await;
    for i in 0..200_i64 {
        owner.set_tagged(&format!("doc:{i}"), &i, TTL, &[format!("t:{i}")]).await?;
    }
    for i in 0..200_i64 {
        assert!(served_from_tier(&owner, &format!("doc:{i}")).await);
    }
    let outsider = TestRole::create(&pool, "burst").await?;
    let mut forger = outsider.connect().await?;
    let sending = tokio::spawn(async move {
        // Distinct payloads (PostgreSQL folds duplicates within a transaction), of the right alphabet and just
        // under the size limit, so that each costs its receiver a full HMAC.
        for batch in 0..(FORGED / 1_000) {
            sqlx::query(
                "SELECT pg_notify('pg_cached_events', lpad(($1 * 1000 + i)::text, 32, '0') \
                 || '|0000000000000000|t|' || repeat('ab', 3950)) FROM generate_series(0, 999) AS i",
            )
            .bind(i64::try_from(batch).unwrap_or_default())
            .execute(&mut forger)
            .await?;
        }
        Ok::<_, sqlx::Error>(forger)
    });
    // Reads during the burst: every one answered, from the tier.
    let hits_before = owner.process_stats().local_hits;
    let mut reads = 0_u64;
    while owner.process_stats().forged_events < FORGED && reads < 200_000 {
        let i = i64::try_from(reads % 200).unwrap_or_default();
        assert_eq!(owner.get::<i64>(&format!("doc:{i}")).await?, Some(i));
        reads += 1;
        if reads.is_multiple_of(100) {
            tokio::task::yield_now().await;
        }
    }
    let forger = sending.await??;
    let counted = within(Duration::from_secs(120), async || owner.process_stats().forged_events >= FORGED).await;
    assert!(counted.is_some(), "forged events counted: {}", owner.process_stats().forged_events);
    assert_eq!(owner.process_stats().forged_events, FORGED);
    assert_eq!(owner.process_stats().local_hits - hits_before, reads, "every read during the burst hit the tier");
    assert_eq!(test_support::local_len(&owner), 200, "no entry was dropped");
    assert_eq!(test_support::listener_connects(&owner), 1, "the listener kept its connection");
    drop(forger);
    outsider.drop_role().await?;
    Ok(())
}

/// In a SQL_ASCII database a NOTIFY may carry bytes that are not UTF-8, which sqlx cannot hand over as a
/// `&str` (it panics). Such a payload is dropped and counted; the listener neither reconnects nor clears the
/// tier.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_payload_that_is_not_utf8_is_dropped_and_counted(pool: PgPool) -> TestResult {
    let name: String =
        sqlx::query_scalar("SELECT 'pgc_ascii_' || left(md5(current_database()), 16)").fetch_one(&pool).await?;
    // Two statements: neither may run inside a transaction block.
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&pool).await?;
    let create = format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'");
    sqlx::raw_sql(&create).execute(&pool).await?;
    let ascii = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(pool.connect_options().as_ref().clone().database(&name))
        .await?;
    let owner = PgCache::builder()
        .pool(ascii.clone())
        .local_tier(100, Duration::from_secs(600))
        .sweep_interval(None)
        .build()
        .await?;
    owner.migrate().await.map_err(|e| format!("migrate: {e}"))?;
    listening(&owner).await;
    owner.set("doc:1", &1, TTL).await?;
    assert!(served_from_tier(&owner, "doc:1").await);

    // Sent as the bytes they are (a client in UTF8 could not send them).
    let mut sender = ascii.acquire().await?;
    for bytes in ["\\xff", "\\xc3\\x28", "0\\x80|"] {
        sqlx::raw_sql(&format!("SELECT pg_notify('pg_cached_events', E'{bytes}')"))
            .execute(&mut *sender)
            .await
            .map_err(|e| format!("notify {bytes}: {e}"))?;
    }
    sender.detach();
    let counted = within(Duration::from_secs(10), async || owner.process_stats().forged_events >= 3).await;
    assert!(counted.is_some(), "forged: {}", owner.process_stats().forged_events);
    assert_eq!(test_support::listener_connects(&owner), 1, "the listener kept its connection");
    assert_eq!(test_support::local_len(&owner), 1, "the tier was not cleared");
    assert!(served_from_tier(&owner, "doc:1").await);
    // Signed notifications still arrive: another process's delete reaches the tier.
    let other = PgCache::builder().pool(ascii.clone()).sweep_interval(None).build().await?;
    other.delete("doc:1").await?;
    let gone = within(Duration::from_secs(5), async || test_support::local_len(&owner) == 0).await;
    assert!(gone.is_some(), "the delete reached the tier");
    drop((owner, other));
    ascii.close().await;
    sqlx::raw_sql(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&pool).await?;
    Ok(())
}
