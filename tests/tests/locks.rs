//! The cache's advisory locks against what else holds them: one blocked key or tag costs only its own
//! operation (issue 22, finding 3). Each test gets a fresh database.

use cache_runtime::{CacheError, PgCache};
use sqlx::{Connection, PgConnection, PgPool};
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Long enough for 200 sets on a slow machine, many times over; on the old code a batch waited this long
/// on the held lock before failing.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

async fn cache(pool: PgPool) -> Result<PgCache, CacheError> {
    PgCache::builder().pool(pool).sweep_interval(None).op_timeout(OP_TIMEOUT).build().await
}

/// A connection holding, in an open transaction, the lock of `class` on `name` as the cache takes it
/// (`pg_cached_lock`, exclusive).
async fn hold_lock(pool: &PgPool, class: &str, name: &str) -> Result<PgConnection, sqlx::Error> {
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    sqlx::raw_sql("BEGIN").execute(&mut conn).await?;
    sqlx::query("SELECT pg_cached_lock($1, $2)::text").bind(class).bind(name).execute(&mut conn).await?;
    Ok(conn)
}

/// While `blocked` (a set that needs the held lock) waits, 200 concurrent sets of other keys, half of them
/// tagged, all succeed; once the lock is released, the blocked set succeeds too (or times out, alone).
/// The blocked set starts among the others, so that it shares a coalesced batch with some of them.
async fn unrelated_sets_succeed(cache: PgCache, mut holder: PgConnection, blocked_tags: &[&str]) -> TestResult {
    let spawn_set = |i: i32| {
        let cache = cache.clone();
        tokio::spawn(async move {
            let tags = if i % 2 == 0 { vec![format!("other:{i}")] } else { Vec::new() };
            cache.set_tagged(&format!("doc:k{i}"), &i, None, &tags).await
        })
    };
    let mut sets: Vec<_> = (0..100).map(spawn_set).collect();
    tokio::task::yield_now().await; // the first ones are under way: the queue is busy
    let blocked = {
        let (cache, tags) = (cache.clone(), blocked_tags.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>());
        tokio::spawn(async move { cache.set_tagged("doc:blocked", &"v", None, &tags).await })
    };
    sets.extend((100..200).map(spawn_set));
    let mut failed = Vec::new();
    for (i, set) in sets.into_iter().enumerate() {
        if let Err(error) = set.await? {
            failed.push((i, error.to_string()));
        }
    }
    assert!(failed.is_empty(), "{} of 200 unrelated sets failed: {:?}", failed.len(), &failed[..failed.len().min(3)]);
    for i in 0..200 {
        assert_eq!(cache.get::<i32>(&format!("doc:k{i}")).await?, Some(i), "doc:k{i}");
    }
    sqlx::raw_sql("COMMIT").execute(&mut holder).await?;
    match blocked.await? {
        Ok(()) => assert_eq!(cache.get::<String>("doc:blocked").await?.as_deref(), Some("v")),
        Err(CacheError::Timeout { .. }) => {}
        Err(other) => return Err(format!("the blocked set failed with {other}, not a timeout").into()),
    }
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_held_key_lock_costs_only_that_keys_set(pool: PgPool) -> TestResult {
    let holder = hold_lock(&pool, "key", "doc:blocked").await?;
    unrelated_sets_succeed(cache(pool).await?, holder, &[]).await
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_held_tag_lock_costs_only_the_sets_carrying_it(pool: PgPool) -> TestResult {
    let holder = hold_lock(&pool, "tag", "doc:1").await?;
    unrelated_sets_succeed(cache(pool).await?, holder, &["doc:1"]).await
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_held_namespace_lock_costs_only_that_namespace(pool: PgPool) -> TestResult {
    // A write takes its namespace's lock shared: an exclusive holder (a purge, or any role) blocks the
    // namespace's writes, and nothing else.
    let cache = cache(pool.clone()).await?;
    let holder = hold_lock(&pool, "namespace", "held").await?;
    let spawn_set = |i: i32| {
        let cache = cache.clone();
        tokio::spawn(async move { cache.set(&format!("doc:k{i}"), &i, None).await })
    };
    let mut sets: Vec<_> = (0..100).map(spawn_set).collect();
    tokio::task::yield_now().await;
    let blocked = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.set("held:k", &"v", None).await })
    };
    sets.extend((100..200).map(spawn_set));
    let mut failures = 0;
    for set in sets {
        failures += usize::from(set.await?.is_err());
    }
    assert_eq!(failures, 0, "unrelated sets failed");
    drop(holder); // closing the connection ends its transaction
    assert!(matches!(blocked.await?, Ok(()) | Err(CacheError::Timeout { .. })));
    Ok(())
}

/// Issue 22, finding 10b: a delete whose connection dies after its commit runs once more on a fresh
/// connection; that retry finds the row gone, and must still report that the delete removed it.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_delete_retried_after_its_commit_still_reports_the_row(pool: PgPool) -> TestResult {
    let cache = cache(pool).await?;
    use cache_runtime::test_support::lose_next_delete_answer;
    cache.set("retry:one", &1, None).await?;
    lose_next_delete_answer("retry:one");
    assert!(cache.delete("retry:one").await?, "the row was there, and the delete removed it");
    assert_eq!(cache.get::<i32>("retry:one").await?, None);
    assert!(!cache.delete("retry:one").await?, "nothing left to delete");

    cache.set_many(&[("retry:a", 1), ("retry:b", 2)], None).await?;
    lose_next_delete_answer("retry:a");
    assert_eq!(cache.delete_many(&["retry:a", "retry:b", "retry:none"]).await?, 2);
    assert_eq!(cache.get_many::<i32>(&["retry:a", "retry:b"]).await?, [None, None]);

    Ok(())
}

/// Issue 22, finding 4 (writes): an entry carries at most `MAX_TAGS_PER_ENTRY` distinct tags; past it the
/// write is refused with a typed error before any I/O (an entry of 20,000 tags ran out of lock memory).
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn an_entry_carries_at_most_the_tag_cap(pool: PgPool) -> TestResult {
    let cache = cache(pool).await?;
    let max = cache_runtime::MAX_TAGS_PER_ENTRY;
    let at_cap: Vec<String> = (0..max).map(|i| format!("t:{i}")).collect();
    cache.set_tagged("cap:ok", &1, None, &at_cap).await?;
    let past: Vec<String> = (0..20_000).map(|i| format!("t:{i}")).collect();
    match cache.set_tagged("cap:past", &1, None, &past).await {
        Err(CacheError::TooManyTags { count: 20_000, max: m }) if m == max => {}
        other => return Err(format!("expected TooManyTags, got {other:?}").into()),
    }
    // Many callers' writes near the cap share batches whose tags stay bounded, and all land.
    let sets: Vec<_> = (0..40)
        .map(|i| {
            let (cache, tags) = (cache.clone(), at_cap.clone());
            tokio::spawn(async move { cache.set_tagged(&format!("cap:{i}"), &i, None, &tags).await })
        })
        .collect();
    for set in sets {
        set.await??;
    }
    assert_eq!(cache.invalidate_tag("t:7").await?, 41);
    Ok(())
}
