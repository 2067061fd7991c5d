//! The store's contract, against a real PostgreSQL: one fresh database per test.

use cache_runtime::{CacheError, Durability, HealthStatus, PgCache, Ttl};
use integration_tests::{cache_on, cache_on_closed_port, cache_on_silent_server, port_answering_after};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Retrieval {
    results: Vec<String>,
    total_found: usize,
}

fn sample() -> Retrieval {
    Retrieval { results: vec!["doc-1".into(), "doc-2".into()], total_found: 2 }
}

async fn row_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM cache_entries").fetch_one(pool).await.expect("count")
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn set_get_delete_round_trip(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    assert_eq!(cache.get::<Retrieval>("retrieval:python:5").await?, None);
    cache.set("retrieval:python:5", &sample(), Some(Duration::from_secs(1800))).await?;
    assert_eq!(cache.get::<Retrieval>("retrieval:python:5").await?, Some(sample()));

    // The JSONB is readable and queryable.
    let total: i64 =
        sqlx::query_scalar("SELECT (data->>'total_found')::bigint FROM cache_entries WHERE cache_key = $1")
            .bind("retrieval:python:5")
            .fetch_one(&pool)
            .await?;
    assert_eq!(total, 2);

    // Overwrite: last write wins, whole.
    let other = Retrieval { results: vec![], total_found: 0 };
    cache.set("retrieval:python:5", &other, None).await?;
    assert_eq!(cache.get::<Retrieval>("retrieval:python:5").await?, Some(other));
    assert_eq!(row_count(&pool).await, 1);

    assert!(cache.delete("retrieval:python:5").await?);
    assert!(!cache.delete("retrieval:python:5").await?);
    assert_eq!(cache.get::<Retrieval>("retrieval:python:5").await?, None);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn both_durability_modes_write(pool: PgPool) -> TestResult {
    for durability in [Durability::AsyncCommit, Durability::Full] {
        let cache = PgCache::builder().pool(pool.clone()).durability(durability).sweep_interval(None).build().await?;
        let key = format!("d:{durability:?}");
        cache.set(&key, &42, None).await?;
        assert_eq!(cache.get::<i32>(&key).await?, Some(42));
    }
    // The relaxed write changes nothing for the session: later statements still commit synchronously.
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&pool).await?;
    assert_eq!(setting, "on");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn expired_entries_are_never_returned(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    cache.set("t:short", &1, Duration::from_millis(300)).await?;
    cache.set("t:never", &2, Ttl::Never).await?;
    cache.set("t:default", &3, None).await?;
    assert_eq!(cache.get::<i32>("t:short").await?, Some(1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(cache.get::<i32>("t:short").await?, None, "expired but not yet swept: still never returned");
    assert_eq!(cache.keys(Some("t:"), 10).await?, vec!["t:default".to_string(), "t:never".to_string()]);

    let (never, default): (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT (SELECT extract(epoch FROM expires_at - created_at)::float8 FROM cache_entries WHERE cache_key = 't:never'), \
                (SELECT extract(epoch FROM expires_at - created_at)::float8 FROM cache_entries WHERE cache_key = 't:default')",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(never, None, "Ttl::Never stores NULL");
    assert_eq!(default, Some(3600.0), "the default TTL is one hour");

    assert_eq!(cache.clear_expired().await?, 1);
    assert_eq!(row_count(&pool).await, 2);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn ttl_bounds_are_checked(pool: PgPool) -> TestResult {
    let cache = cache_on(pool).await;
    assert!(matches!(cache.set("t:zero", &1, Duration::ZERO).await, Err(CacheError::InvalidTtl(_))));
    let huge = Duration::from_secs(u64::MAX);
    assert!(matches!(cache.set("t:huge", &1, huge).await, Err(CacheError::InvalidTtl(_))));
    let never_default = PgCache::builder()
        .pool(cache.single_pool().expect("a cache on one server").clone())
        .default_ttl(Ttl::Never)
        .build()
        .await?;
    never_default.set("t:perm", &1, None).await?;
    let expires: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at)::float8 FROM cache_entries WHERE cache_key = 't:perm'",
    )
    .fetch_one(cache.single_pool().expect("a cache on one server"))
    .await?;
    assert_eq!(expires, None);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn clear_expired_works_in_batches(pool: PgPool) -> TestResult {
    let cache = PgCache::builder().pool(pool.clone()).batch_size(400).sweep_interval(None).build().await?;
    sqlx::query(
        "INSERT INTO cache_entries (cache_key, data, expires_at) \
         SELECT 'old:' || i, '{}'::jsonb, now() - interval '1 minute' FROM generate_series(1, 2500) i",
    )
    .execute(&pool)
    .await?;
    cache.set("live:1", &1, None).await?;
    assert_eq!(cache.clear_expired().await?, 2500);
    assert_eq!(row_count(&pool).await, 1);
    assert_eq!(cache.clear_expired().await?, 0);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn one_sweep_enforces_max_entries(pool: PgPool) -> TestResult {
    let max = 500u64;
    let cache =
        PgCache::builder().pool(pool.clone()).max_entries(max).batch_size(200).sweep_interval(None).build().await?;
    // A few permanent entries, which are evicted last.
    for i in 0..10 {
        cache.set(&format!("perm:{i}"), &i, Ttl::Never).await?;
    }
    // Three times the limit, with increasing TTLs: the soonest to expire must go first.
    for i in 0..(3 * max) {
        cache.set(&format!("e:{i:05}"), &i, Duration::from_secs(3600 + i)).await?;
    }
    let evicted = cache.sweep().await?.evicted;
    let left = row_count(&pool).await;
    assert!(left as f64 <= max as f64 * 1.1, "{left} rows left after one sweep, limit {max}");
    assert_eq!(evicted, 3 * max + 10 - left as u64);
    for i in 0..10 {
        assert_eq!(cache.get::<u64>(&format!("perm:{i}")).await?, Some(i), "permanent entries go last");
    }
    assert_eq!(cache.get::<u64>("e:00000").await?, None, "the soonest to expire went first");
    assert_eq!(cache.get::<u64>(&format!("e:{:05}", 3 * max - 1)).await?, Some(3 * max - 1));
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn namespaces_are_purged_exactly(pool: PgPool) -> TestResult {
    let cache = PgCache::builder().pool(pool.clone()).batch_size(100).sweep_interval(None).build().await?;
    for i in 0..250 {
        cache.set(&format!("a_b:{i}"), &i, None).await?;
    }
    // `_` is a LIKE wildcard: `a_b` must not match `axb`, nor `a_bc`.
    cache.set("axb:1", &1, None).await?;
    cache.set("a_bc:1", &1, None).await?;
    assert_eq!(cache.delete_namespace("a_b").await?, 250);
    assert_eq!(row_count(&pool).await, 2);
    assert!(matches!(cache.delete_namespace("bad ns;--").await, Err(CacheError::InvalidNamespace { .. })));
    assert!(matches!(cache.delete_namespace("").await, Err(CacheError::InvalidNamespace { .. })));
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn keys_lists_live_keys_by_prefix(pool: PgPool) -> TestResult {
    let cache = cache_on(pool).await;
    for k in ["retrieval:b", "retrieval:a", "retrieval:c", "answer:a", "50%_off:x"] {
        cache.set(k, &1, None).await?;
    }
    cache.set("retrieval:expired", &1, Duration::from_millis(1)).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(cache.keys(Some("retrieval:"), 2).await?, vec!["retrieval:a", "retrieval:b"]);
    assert_eq!(cache.keys(Some("retrieval:"), 10).await?.len(), 3);
    assert_eq!(cache.keys(None, 100).await?.len(), 5);
    assert_eq!(cache.keys(Some("50%_"), 10).await?, vec!["50%_off:x"]);
    assert_eq!(cache.keys(Some("5%"), 10).await?, Vec::<String>::new(), "% is literal");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn stats_count_table_and_process(pool: PgPool) -> TestResult {
    let cache = cache_on(pool).await;
    cache.set("retrieval:1", &1, None).await?;
    cache.set("retrieval:2", &2, None).await?;
    cache.set("answer:1", &1, None).await?;
    cache.set("answer:old", &1, Duration::from_millis(1)).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let _: Option<i32> = cache.get("retrieval:1").await?;
    let _: Option<i32> = cache.get("retrieval:1").await?;
    let _: Option<i32> = cache.get("retrieval:404").await?;

    let stats = cache.stats().await?;
    assert_eq!((stats.total_entries, stats.active_entries, stats.expired_entries), (4, 3, 1));
    assert!(stats.bytes_on_disk > 0);
    let retrieval = stats.namespace("retrieval").ok_or("retrieval stats")?;
    assert_eq!((retrieval.entries, retrieval.active), (2, 2));
    assert_eq!((retrieval.process.hits, retrieval.process.misses), (2, 1));
    let answer = stats.namespace("answer").ok_or("answer stats")?;
    assert_eq!((answer.entries, answer.active), (2, 1));
    assert_eq!(stats.process.hit_ratio(), Some(2.0 / 3.0));

    let json = serde_json::to_value(&stats)?;
    assert_eq!(json["total_entries"], 4);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn health_check_reports_without_failing(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    cache.set("h:1", &1, None).await?;
    let report = cache.health_check().await;
    assert_eq!(report.status, HealthStatus::Healthy);
    assert_eq!(report.total_entries, Some(1));
    assert!(report.latency_ms.is_some() && report.error.is_none());
    assert_eq!(serde_json::to_value(&report)?["status"], "healthy");

    sqlx::query("DROP TABLE cache_entries CASCADE").execute(&pool).await?;
    let report = cache.health_check().await;
    assert_eq!(report.status, HealthStatus::Degraded);
    assert!(report.error.is_some());

    let report = cache_on_closed_port().health_check().await;
    assert_eq!(report.status, HealthStatus::Unhealthy);
    assert!(report.error.is_some() && report.latency_ms.is_none());
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn migrate_is_idempotent_and_gin_is_opt_in(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    cache.migrate().await?;
    let indexes: Vec<String> =
        sqlx::query_scalar("SELECT indexname::text FROM pg_indexes WHERE tablename = 'cache_entries' ORDER BY 1")
            .fetch_all(&pool)
            .await?;
    assert_eq!(
        indexes,
        vec![
            "cache_entries_pkey",
            "cache_entries_sweep_at_idx",
            "cache_entries_tags_idx",
            "cache_entries_tenant_idx",
            "cache_entries_unswept_idx"
        ],
        "no duplicate key index, no GIN on data (the tags and tenant indexes are partial: rows without are not in them)"
    );
    let with_gin = PgCache::builder().pool(pool.clone()).gin_index(true).sweep_interval(None).build().await?;
    with_gin.migrate().await?;
    with_gin.migrate().await?;
    let gin: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_indexes WHERE indexname = 'cache_entries_data_gin_idx'")
        .fetch_one(&pool)
        .await?;
    assert_eq!(gin, 1);
    Ok(())
}

// ---- Bad input: typed errors, never a panic, never a wrong value (FAILURE-MODES 1-5, 18) ----

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn nul_characters_are_refused(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    assert!(matches!(cache.set("k:a\0b", &1, None).await, Err(CacheError::InvalidKey { .. })));
    assert!(matches!(cache.get::<i32>("k:a\0b").await, Err(CacheError::InvalidKey { .. })));
    assert!(matches!(cache.delete("k:a\0b").await, Err(CacheError::InvalidKey { .. })));
    assert!(matches!(cache.set("k:v", "nul\0inside", None).await, Err(CacheError::UnsupportedValue { .. })));
    assert!(matches!(
        cache.set("k:v", &vec![("fine", "x"), ("bad\0key", "y")], None).await,
        Err(CacheError::UnsupportedValue { .. })
    ));
    assert_eq!(row_count(&pool).await, 0);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn non_finite_floats_are_refused_not_mangled(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(matches!(cache.set("f:x", &bad, None).await, Err(CacheError::UnsupportedValue { .. })));
        assert!(matches!(cache.set("f:x", &Some(bad), None).await, Err(CacheError::UnsupportedValue { .. })));
        assert!(matches!(cache.set("f:x", &(bad as f32), None).await, Err(CacheError::UnsupportedValue { .. })));
    }
    // Nothing was stored, so nothing (such as a None for a Some(NaN)) can ever be read back.
    assert_eq!(cache.get::<Option<f64>>("f:x").await?, None);
    assert_eq!(row_count(&pool).await, 0);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn numbers_round_trip_bit_exact(pool: PgPool) -> TestResult {
    let cache = cache_on(pool).await;
    let ints = (i64::MIN, i64::MAX, u64::MAX, (1u64 << 53) + 1, -((1i64 << 53) + 1));
    cache.set("n:ints", &ints, None).await?;
    assert_eq!(cache.get("n:ints").await?, Some(ints));
    let floats = [0.1, 5e-324, 1.7976931348623157e308, 0.0, 2.0, 1e21, 1.0 / 3.0, f64::MIN_POSITIVE, -2.5e-308];
    cache.set("n:floats", &floats, None).await?;
    let back: [f64; 9] = cache.get("n:floats").await?.ok_or("stored")?;
    for (a, b) in floats.iter().zip(back.iter()) {
        assert_eq!(a.to_bits(), b.to_bits(), "{a} came back as {b}");
    }
    // -0.0 cannot come back from jsonb (numeric has no negative zero): refused, not turned into 0.0.
    assert!(matches!(cache.set("n:negzero", &-0.0f64, None).await, Err(CacheError::UnsupportedValue { .. })));
    let f32s = [0.1f32, f32::MAX, f32::MIN_POSITIVE, 1e-45];
    cache.set("n:f32", &f32s, None).await?;
    let back: [f32; 4] = cache.get("n:f32").await?.ok_or("stored")?;
    assert_eq!(f32s.map(f32::to_bits), back.map(f32::to_bits));
    Ok(())
}

#[tokio::test]
async fn oversized_values_are_refused_before_any_io() -> TestResult {
    // The database never answers: a refusal that is not a timeout proves nothing was sent.
    let cache = PgCache::builder()
        .database_url("postgres://postgres@127.0.0.1:1/nothing")
        .max_value_bytes(64 * 1024)
        .op_timeout(Duration::from_millis(100))
        .sweep_interval(None)
        .build_lazy()?;
    let big = vec!["x".repeat(1024); 100];
    let started = Instant::now();
    assert!(matches!(cache.set("big:1", &big, None).await, Err(CacheError::ValueTooLarge { limit: 65536 })));
    assert!(started.elapsed() < Duration::from_millis(100), "refused without waiting for the database");
    assert!(matches!(cache.set(&"k".repeat(501), &1, None).await, Err(CacheError::KeyTooLong { .. })));
    assert!(matches!(cache.set("nan:1", &f64::NAN, None).await, Err(CacheError::UnsupportedValue { .. })));
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn default_size_limit_is_one_mebibyte(pool: PgPool) -> TestResult {
    let cache = cache_on(pool).await;
    let just_under = "y".repeat(1024 * 1024 - 2); // plus two quotes
    cache.set("big:ok", &just_under, None).await?;
    assert_eq!(cache.get::<String>("big:ok").await?.map(|s| s.len()), Some(just_under.len()));
    let over = "y".repeat(1024 * 1024);
    assert!(matches!(cache.set("big:no", &over, None).await, Err(CacheError::ValueTooLarge { .. })));
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn long_keys_never_collide(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    let base = "L".repeat(500);
    for len in [499usize, 500] {
        let key = &base[..len];
        cache.set(key, &len, None).await?;
        assert_eq!(cache.get::<usize>(key).await?, Some(len));
    }
    // Keys that differ only after character 500 are refused, never truncated into one row.
    for len in [501usize, 10_000] {
        let a = format!("{base}{}", "a".repeat(len - 500));
        let b = format!("{base}{}", "b".repeat(len - 500));
        assert!(matches!(cache.set(&a, &1, None).await, Err(CacheError::KeyTooLong { .. })));
        assert!(matches!(cache.get::<i32>(&b).await, Err(CacheError::KeyTooLong { .. })));
    }
    assert_eq!(cache.get::<usize>(&base).await?, Some(500), "the 500-character entry is untouched");
    // Multi-byte characters count as characters, as VARCHAR(500) does.
    let wide = "é".repeat(500);
    cache.set(&wide, &"wide", None).await?;
    assert_eq!(cache.get::<String>(&wide).await?.as_deref(), Some("wide"));
    assert_eq!(row_count(&pool).await, 3);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn hostile_text_round_trips_exactly(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    let nasty = [
        "'; DROP TABLE cache_entries; --",
        "\"quoted\" \\backslash\\ \\\\double",
        "\\u0000 is text here, not a NUL",
        "semi;colon $1 $$dollar$$ %_ wildcards",
        "unicode: 日本語 🦀 \u{202e}rtl",
        "newlines\r\n\ttabs",
    ];
    for (i, text) in nasty.iter().enumerate() {
        let key = format!("x:{text}");
        cache.set(&key, text, None).await?;
        assert_eq!(cache.get::<String>(&key).await?.as_deref(), Some(*text), "value {i}");
        assert_eq!(cache.keys(Some(&key), 10).await?, vec![key.clone()], "key {i}");
    }
    assert_eq!(row_count(&pool).await, nasty.len() as i64, "the table is still there");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_changed_shape_is_a_miss(pool: PgPool) -> TestResult {
    let cache = cache_on(pool).await;
    cache.set("shape:1", &sample(), None).await?;
    assert_eq!(cache.get::<Vec<u32>>("shape:1").await?, None, "wrong type reads as a miss");
    assert_eq!(cache.get::<Retrieval>("shape:1").await?, Some(sample()), "and the entry is intact");
    Ok(())
}

// ---- Failures: bounded by the timeout (FAILURE-MODES 8-9) ----

#[tokio::test]
async fn a_silent_server_gives_timeouts_not_hangs() -> TestResult {
    let cache = cache_on_silent_server(Duration::from_millis(150)).await;
    let started = Instant::now();
    let err = cache.get::<i32>("k:1").await.expect_err("no answer");
    assert!(matches!(err, CacheError::Timeout { operation: "get", .. }), "{err}");
    assert!(err.is_unavailable());
    assert!(matches!(cache.set("k:1", &1, None).await, Err(CacheError::Timeout { .. })));
    assert!(matches!(cache.delete("k:1").await, Err(CacheError::Timeout { .. })));
    // Generous bound: the point is "not sqlx's 30 s default", not a speed measurement.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(cache.process_stats().errors, 3);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn build_outlasts_a_first_connection_that_goes_unanswered(pool: PgPool) -> TestResult {
    // The first (the probe for a primary) and the second (the pool's first attempt) go unanswered. Before,
    // `build` gave up after one attempt within the operation timeout; it now tries again within 2 s.
    let server = pool.connect_options();
    let port = port_answering_after(2, Some(format!("{}:{}", server.get_host(), server.get_port()))).await?;
    let options = (*server).clone().host("127.0.0.1").port(port);
    let cache = PgCache::builder()
        .connect_options(options)
        .op_timeout(Duration::from_millis(100))
        .sweep_interval(None)
        .build()
        .await?;
    cache.set("first:1", &1, None).await?;
    assert_eq!(cache.get::<i32>("first:1").await?, Some(1));
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_locked_table_gives_a_timeout(pool: PgPool) -> TestResult {
    let cache = PgCache::builder()
        .pool(pool.clone())
        .op_timeout(Duration::from_millis(150))
        .sweep_interval(None)
        .build()
        .await?;
    cache.set("lock:1", &1, None).await?;
    let mut locker = pool.begin().await?;
    sqlx::query("LOCK TABLE cache_entries IN ACCESS EXCLUSIVE MODE").execute(&mut *locker).await?;
    let err = cache.get::<i32>("lock:1").await.expect_err("the table is locked");
    assert!(matches!(err, CacheError::Timeout { .. }), "{err}");
    locker.rollback().await?;
    // Once the lock is gone the pool works again.
    let mut value = None;
    for _ in 0..20 {
        match cache.get::<i32>("lock:1").await {
            Ok(v) => {
                value = v;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(value, Some(1));
    Ok(())
}

// ---- Concurrency (FAILURE-MODES 16) ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stamp {
    writer: u32,
    copies: Vec<u32>,
    text: String,
}

impl Stamp {
    fn new(writer: u32) -> Stamp {
        Stamp { writer, copies: vec![writer; 200], text: format!("writer-{writer}-").repeat(50) }
    }
    fn is_whole(&self) -> bool {
        *self == Stamp::new(self.writer)
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn sixty_four_writers_and_readers_on_one_key(pool: PgPool) -> TestResult {
    let cache = PgCache::builder().pool(pool).op_timeout(Duration::from_secs(10)).sweep_interval(None).build().await?;
    let mut tasks = Vec::new();
    for writer in 0..64u32 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = 0;
            for round in 0..10 {
                cache.set("race:one", &Stamp::new(writer), None).await?;
                if let Some(stamp) = cache.get::<Stamp>("race:one").await? {
                    assert!(stamp.is_whole(), "writer {writer} round {round} read a torn value");
                    seen += 1;
                }
            }
            Ok::<_, CacheError>(seen)
        }));
    }
    let mut reads = 0;
    for task in tasks {
        reads += task.await??;
    }
    assert_eq!(reads, 640, "every read after a write finds a whole value");
    assert_eq!(cache.process_stats().errors, 0);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn clones_share_one_store_and_counters(pool: PgPool) -> TestResult {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<PgCache>();
    let cache = cache_on(pool).await;
    let clone = cache.clone();
    clone.set("c:1", &1, None).await?;
    assert_eq!(cache.get::<i32>("c:1").await?, Some(1));
    assert_eq!(clone.process_stats().hits, 1);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn the_background_sweeper_expires_and_evicts(pool: PgPool) -> TestResult {
    let cache = PgCache::builder()
        .pool(pool.clone())
        .max_entries(50)
        .sweep_interval(Some(Duration::from_millis(200)))
        .build()
        .await?;
    for i in 0..150 {
        cache.set(&format!("sw:{i}"), &i, Duration::from_secs(3600 + i)).await?;
    }
    cache.set("sw:gone", &1, Duration::from_millis(10)).await?;
    let started = Instant::now();
    while row_count(&pool).await > 50 {
        assert!(started.elapsed() < Duration::from_secs(10), "the sweeper never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cache.get::<i32>("sw:gone").await?, None);
    assert_eq!(cache.get::<u64>("sw:149").await?, Some(149), "the latest-expiring entries stay");
    drop(cache);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn keys_without_a_namespace_share_one_bucket(pool: PgPool) -> TestResult {
    let cache = cache_on(pool).await;
    for i in 0..20 {
        cache.set(&format!("plain-{i}"), &i, None).await?;
        let _: Option<i32> = cache.get(&format!("plain-{i}")).await?;
    }
    let stats = cache.stats().await?;
    assert_eq!(stats.namespaces.len(), 1, "one bucket, not one per key: {:?}", stats.namespaces);
    let plain = stats.namespace("").ok_or("the \"\" namespace")?;
    assert_eq!((plain.entries, plain.process.hits), (20, 20));
    Ok(())
}
