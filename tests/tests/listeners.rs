//! Notifications only while some process listens (issue 23; migration 0013 has the protocol). A write sends
//! nothing while no listener is registered, and notifies again as soon as one is; a listener's tier serves
//! nothing until the writes in progress at its registration have ended (one of them may have decided that
//! nobody listened); the rows of listeners that ended are swept; a database used by an earlier release keeps
//! notifying for its unregistered listeners; and only the cache's roles may touch the registry.

use cache_runtime::channel::{Notice, Secret};
use cache_runtime::PgCache;
use integration_tests::roles::TestRole;
use integration_tests::{cache_on, listening, tiered_on, within};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Connection, PgPool};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TTL: Option<Duration> = Some(Duration::from_secs(600));

/// Generous for anything a test waits for: these machines are slow and shared.
const PATIENCE: Duration = Duration::from_secs(20);

async fn registered(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM cache_listeners").fetch_one(pool).await
}

/// A session listening on the events channel the way an earlier release does: without registering.
struct Eavesdropper {
    listener: PgListener,
    secret: Secret,
    pool: PgPool,
}

impl Eavesdropper {
    async fn new(pool: &PgPool) -> Result<Eavesdropper, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(cache_runtime::EVENTS_CHANNEL).await?;
        let key: Vec<u8> = sqlx::query_scalar("SELECT secret FROM cache_events_secret").fetch_one(pool).await?;
        Ok(Eavesdropper { listener, secret: Secret::new(&key), pool: pool.clone() })
    }

    /// What the cache sent since the last call (heartbeats left out). Notifications arrive in commit order,
    /// so a marker sent now, after the operations of interest committed, comes after all they sent: whatever
    /// comes before it is all there is, without waiting for anything that might still come.
    async fn heard(&mut self) -> Result<Vec<Notice>, Box<dyn std::error::Error>> {
        sqlx::query("SELECT pg_notify($1, 'marker')").bind(cache_runtime::EVENTS_CHANNEL).execute(&self.pool).await?;
        let mut heard = Vec::new();
        loop {
            let notification = tokio::time::timeout(PATIENCE, self.listener.recv()).await??;
            if notification.payload() == "marker" {
                return Ok(heard);
            }
            match self.secret.open(notification.payload()) {
                Ok(Some(message)) if matches!(message.notice, Notice::Ping(_)) => {}
                Ok(Some(message)) => heard.push(message.notice),
                other => panic!("the cache sent {:?}, which does not open: {other:?}", notification.payload()),
            }
        }
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn writes_notify_only_while_a_listener_is_registered(pool: PgPool) -> TestResult {
    let plain = cache_on(pool.clone()).await;
    let mut eavesdropper = Eavesdropper::new(&pool).await?;
    assert_eq!(registered(&pool).await?, 0, "a new database has no listener");

    plain.set("ns:a", &1, TTL).await?;
    plain.set_many(&[("ns:b", 2), ("ns:c", 3)], TTL).await?;
    plain.delete("ns:a").await?;
    plain.set_tagged("ns:d", &4, TTL, &["doc:1"]).await?;
    plain.invalidate_tag("doc:1").await?;
    plain.delete_namespace("ns").await?;
    assert_eq!(eavesdropper.heard().await?, vec![], "nobody registered, nothing sent");

    let tiered = tiered_on(pool.clone()).await;
    assert_eq!(registered(&pool).await?, 1);
    plain.set("ns:a", &1, TTL).await?;
    plain.delete("ns:a").await?;
    plain.set_tagged("ns:d", &4, TTL, &["doc:1"]).await?;
    plain.invalidate_tag("doc:1").await?;
    plain.delete_namespace("ns").await?;
    let heard = eavesdropper.heard().await?;
    assert_eq!(heard.iter().filter(|notice| matches!(notice, Notice::Keys(_))).count(), 3, "{heard:?}");
    assert!(heard.iter().any(|notice| matches!(notice, Notice::Tag(_))), "{heard:?}");
    assert!(heard.iter().any(|notice| matches!(notice, Notice::Namespace(_))), "{heard:?}");

    // The tier's listener goes with its cache; its row stays until a sweep finds its lock free.
    drop(tiered);
    assert!(
        within(PATIENCE, async || {
            plain.sweep().await.is_ok() && registered(&pool).await.is_ok_and(|listeners| listeners == 0)
        })
        .await
        .is_some(),
        "the row of a listener that ended is swept"
    );
    plain.set("ns:a", &1, TTL).await?;
    plain.delete("ns:a").await?;
    assert_eq!(eavesdropper.heard().await?, vec![], "its listener gone, nothing sent");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_tier_serves_only_once_the_writes_in_flight_at_its_registration_ended(pool: PgPool) -> TestResult {
    let plain = cache_on(pool.clone()).await;
    plain.set("ns:k", &"before", TTL).await?;

    // A delete that decides, nobody being registered, not to notify, and commits only later.
    let mut writer = sqlx::PgConnection::connect_with(pool.connect_options().as_ref()).await?;
    sqlx::query("BEGIN").execute(&mut writer).await?;
    let deleted: Option<i64> = sqlx::query_scalar(
        "SELECT pg_cached_delete(p_key => 'ns:k', p_notify => '0000000000000000|k|0000000000000001', \
         p_lock_timeout => NULL)",
    )
    .fetch_one(&mut writer)
    .await?;
    assert_eq!(deleted, Some(1));

    // A tiered cache registers meanwhile and reads the key, which the delete has not removed yet.
    let tiered = PgCache::builder()
        .pool(pool.clone())
        .local_tier(1_000, Duration::from_secs(600))
        .sweep_interval(None)
        .build()
        .await?;
    assert_eq!(tiered.get::<String>("ns:k").await?.as_deref(), Some("before"));
    assert!(
        within(PATIENCE, async || registered(&pool).await.is_ok_and(|listeners| listeners == 1)).await.is_some(),
        "the listener registers"
    );
    for _ in 0..3 {
        assert_eq!(tiered.get::<String>("ns:k").await?.as_deref(), Some("before"));
    }
    assert_eq!(tiered.process_stats().local_hits, 0, "its tier serves nothing while the delete is in flight");
    assert_eq!(cache_runtime::test_support::listener_connects(&tiered), 0);

    // Had the tier kept "before", it would serve it now: the delete sent nothing.
    sqlx::query("COMMIT").execute(&mut writer).await?;
    for _ in 0..3 {
        assert_eq!(tiered.get::<String>("ns:k").await?, None, "a deleted key is gone from the tier too");
    }
    listening(&tiered).await;
    plain.set("ns:k", &"after", TTL).await?;
    assert!(
        within(PATIENCE, async || {
            tiered.get::<String>("ns:k").await.ok().flatten().as_deref() == Some("after")
                && tiered.process_stats().local_hits > 0
        })
        .await
        .is_some(),
        "once the delete ended the tier serves, and the write it was told of"
    );
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_database_an_earlier_release_used_keeps_notifying(pool: PgPool) -> TestResult {
    // Migration 0013 as it runs on a database whose functions were applied before: the registry is new, and
    // listeners of the earlier release do not register.
    sqlx::raw_sql("DROP TABLE cache_listeners; DELETE FROM _sqlx_migrations WHERE version = 13;")
        .execute(&pool)
        .await?;
    let plain = cache_on(pool.clone()).await;
    plain.migrate().await?;
    let standing: Vec<bool> = sqlx::query_scalar("SELECT held FROM cache_listeners").fetch_all(&pool).await?;
    assert_eq!(standing, vec![false], "one row stands for the listeners that do not register");

    let mut eavesdropper = Eavesdropper::new(&pool).await?;
    plain.set("ns:a", &1, TTL).await?;
    plain.sweep().await?;
    assert_eq!(registered(&pool).await?, 1, "no sweep deletes it");
    plain.delete("ns:a").await?;
    assert_eq!(eavesdropper.heard().await?.len(), 2, "both sent");

    // Once every process runs this release, the operator deletes it (the upgrade notes).
    sqlx::query("DELETE FROM cache_listeners WHERE NOT held").execute(&pool).await?;
    plain.set("ns:a", &1, TTL).await?;
    assert_eq!(eavesdropper.heard().await?, vec![]);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn only_the_caches_roles_touch_the_registry(pool: PgPool) -> TestResult {
    let owner = cache_on(pool.clone()).await;
    let (reader, stranger) = (TestRole::create(&pool, "lreader").await?, TestRole::create(&pool, "lstranger").await?);
    owner.grant_reader(&reader.name).await?;
    let reader_pool = PgPoolOptions::new().max_connections(3).connect_lazy_with(reader.options());
    let reader_cache = tiered_on(reader_pool.clone()).await;
    assert_eq!(registered(&pool).await?, 1, "a reader's listener registers");

    // Neither may remove a listener's row (writes would stop notifying it), nor read the table.
    for role in [&reader, &stranger] {
        let mut conn = role.connect().await?;
        for statement in ["DELETE FROM cache_listeners", "SELECT count(*) FROM cache_listeners"] {
            let denied = sqlx::query(statement).execute(&mut conn).await;
            assert!(
                matches!(&denied, Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501")),
                "{} ran {statement}: {denied:?}",
                role.name
            );
        }
        conn.close().await?;
    }
    let mut conn = stranger.connect().await?;
    let denied = sqlx::query("SELECT pg_cached_register_listener('0')").execute(&mut conn).await;
    assert!(
        matches!(&denied, Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501")),
        "a role the cache was not granted to registers: {denied:?}"
    );
    conn.close().await?;
    assert_eq!(registered(&pool).await?, 1);

    // The reader's tier is told of the owner's writes.
    owner.set("doc:1", &1, TTL).await?;
    assert!(within(PATIENCE, async || {
        reader_cache.get::<i64>("doc:1").await.ok().flatten() == Some(1) && reader_cache.process_stats().local_hits > 0
    })
    .await
    .is_some());
    owner.set("doc:1", &2, TTL).await?;
    assert!(
        within(PATIENCE, async || reader_cache.get::<i64>("doc:1").await.ok().flatten() == Some(2)).await.is_some(),
        "the owner's write reached the reader's tier"
    );
    drop(reader_cache);
    reader_pool.close().await;
    reader.drop_role().await?;
    stranger.drop_role().await?;
    Ok(())
}

/// The registration under load: writers that found nobody listening are still committing when a tier
/// starts, reads fill it all along, and once the writes stop every key the tier serves converges on
/// PostgreSQL's value (a write missed without a notification would stay stale). The race itself is rare
/// here (a write must read the registry just before the registration and commit after the tier read the
/// key); the test above makes it happen every time.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_tier_that_starts_under_load_converges(pool: PgPool) -> TestResult {
    const KEYS: u64 = 40;
    const WRITERS: u64 = 8;
    const ROUNDS: u64 = 60;
    let plain = cache_on(pool.clone()).await;
    let written = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (plain, written) = (plain.clone(), Arc::clone(&written));
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    for key in (writer..KEYS).step_by(WRITERS as usize) {
                        plain.set(&format!("load:{key}"), &round, TTL).await.expect("a set");
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // The tier starts once a quarter of the writes are done, and reads every key while the rest go on.
    within(PATIENCE * 3, async || written.load(Ordering::Relaxed) >= KEYS * ROUNDS / 4).await;
    let tiered = PgCache::builder()
        .pool(pool.clone())
        .local_tier(1_000, Duration::from_secs(600))
        .sweep_interval(None)
        .build()
        .await?;
    while !writers.iter().all(tokio::task::JoinHandle::is_finished) {
        for key in 0..KEYS {
            tiered.get::<u64>(&format!("load:{key}")).await?;
        }
        // A tier hit completes without waiting: let the writers run (the test's runtime has one thread).
        tokio::task::yield_now().await;
    }
    for writer in writers {
        writer.await?;
    }
    listening(&tiered).await;
    for key in 0..KEYS {
        let key = format!("load:{key}");
        assert_eq!(plain.get::<u64>(&key).await?, Some(ROUNDS - 1));
        let converged = within(PATIENCE, async || tiered.get::<u64>(&key).await.ok().flatten() == Some(ROUNDS - 1));
        assert!(converged.await.is_some(), "the tier still serves an old value of {key}");
    }
    assert!(tiered.process_stats().local_hits > 0, "the tier served");
    Ok(())
}

/// A listener that starts while its database is being migrated (tables there, functions not yet) waits for
/// the functions and registers, rather than taking the missing function for an earlier release's database
/// (whose writes notify whatever happens) and listening unregistered, unheard by every write to come.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR")]
async fn a_listener_that_starts_before_the_functions_registers_once_they_are_there(pool: PgPool) -> TestResult {
    let tiered = PgCache::builder()
        .pool(pool.clone())
        .local_tier(1_000, Duration::from_secs(600))
        .sweep_interval(None)
        .build()
        .await?;
    // Time for a listener that would not wait to connect (it would in milliseconds); one that waits never
    // does, however long this takes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cache_runtime::test_support::listener_connects(&tiered), 0, "no functions, no listener");

    cache_on(pool.clone()).await.migrate().await?;
    listening(&tiered).await;
    assert_eq!(registered(&pool).await?, 1);
    let plain = cache_on(pool.clone()).await;
    plain.set("ns:k", &1, TTL).await?;
    assert!(within(PATIENCE, async || {
        tiered.get::<i64>("ns:k").await.ok().flatten() == Some(1) && tiered.process_stats().local_hits > 0
    })
    .await
    .is_some());
    plain.set("ns:k", &2, TTL).await?;
    assert!(
        within(PATIENCE, async || tiered.get::<i64>("ns:k").await.ok().flatten() == Some(2)).await.is_some(),
        "the write reached the tier"
    );
    Ok(())
}
