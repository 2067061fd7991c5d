//! `#[pg_cached]` against a real PostgreSQL: what is cached, for how long, and under which key.
//! Each test gets a fresh database.

use cache_runtime::{pg_cached, PgCache};
use integration_tests::{cache_on, Calls};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::marker::PhantomData;
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM cache_entries").fetch_one(pool).await.expect("count rows")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    id: u32,
    name: String,
}

struct Svc {
    cache: PgCache,
    calls: Calls,
}

impl Svc {
    async fn new(pool: PgPool) -> Svc {
        Svc { cache: cache_on(pool).await, calls: Calls::default() }
    }

    #[pg_cached(cache = self.cache, ttl = "1h")]
    async fn square(&self, x: u64) -> u64 {
        self.calls.bump();
        x * x
    }

    /// Returns which run produced the value, so a recomputation is visible.
    #[pg_cached(cache = self.cache, ttl = "1s")]
    async fn short_lived(&self, x: u64) -> String {
        format!("run {} for {x}", self.calls.bump())
    }

    #[pg_cached(cache = self.cache)]
    async fn fallible(&self, x: i64) -> Result<i64, String> {
        self.calls.bump();
        if x < 0 {
            Err(format!("{x} is negative"))
        } else {
            Ok(x * 2)
        }
    }

    #[pg_cached(cache = self.cache)]
    async fn maybe(&self, x: u32) -> Option<u32> {
        self.calls.bump();
        (x > 0).then_some(x)
    }

    #[pg_cached(cache = self.cache, cache_none = true)]
    async fn maybe_with_none(&self, x: u32) -> Option<u32> {
        self.calls.bump();
        (x > 0).then_some(x)
    }

    #[pg_cached(cache = self.cache, skip(trace_id))]
    async fn traced(&self, query: &str, trace_id: u64) -> String {
        self.calls.bump();
        let _ = trace_id;
        query.to_uppercase()
    }

    #[pg_cached(cache = self.cache)]
    async fn describe<T>(&self, x: u32) -> String {
        self.calls.bump();
        format!("{}:{x}", std::any::type_name::<T>())
    }

    #[pg_cached(cache = self.cache)]
    async fn nan(&self) -> Option<f64> {
        self.calls.bump();
        Some(f64::NAN)
    }

    #[pg_cached(cache = self.cache, cache_none = true)]
    async fn nan_with_none(&self) -> Option<f64> {
        self.calls.bump();
        Some(f64::NAN)
    }

    #[pg_cached(cache = self.cache)]
    async fn record(&self, id: u32) -> Record {
        self.calls.bump();
        Record { id, name: format!("record {id}") }
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn hit_after_miss(pool: PgPool) -> TestResult {
    let svc = Svc::new(pool.clone()).await;
    assert_eq!(svc.square(7).await, 49);
    assert_eq!(svc.calls.get(), 1);
    assert_eq!(rows(&pool).await, 1);
    for _ in 0..3 {
        assert_eq!(svc.square(7).await, 49);
    }
    assert_eq!(svc.calls.get(), 1, "hits do not run the body");
    assert_eq!(svc.square(8).await, 64);
    assert_eq!(svc.calls.get(), 2, "other arguments are another entry");
    assert_eq!(rows(&pool).await, 2);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn entries_expire_after_their_ttl(pool: PgPool) -> TestResult {
    let svc = Svc::new(pool).await;
    assert_eq!(svc.short_lived(1).await, "run 1 for 1");
    assert_eq!(svc.short_lived(1).await, "run 1 for 1");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(svc.short_lived(1).await, "run 2 for 1", "an expired entry is recomputed");
    assert_eq!(svc.short_lived(1).await, "run 2 for 1");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn ok_is_cached_err_is_not(pool: PgPool) -> TestResult {
    let svc = Svc::new(pool.clone()).await;
    assert_eq!(svc.fallible(2).await, Ok(4));
    assert_eq!(svc.fallible(2).await, Ok(4));
    assert_eq!(svc.calls.get(), 1);
    assert_eq!(svc.fallible(-1).await, Err("-1 is negative".to_owned()));
    assert_eq!(svc.fallible(-1).await, Err("-1 is negative".to_owned()));
    assert_eq!(svc.calls.get(), 3, "an Err runs the body every time");
    assert_eq!(rows(&pool).await, 1);
    // Only the Ok value is stored, not the Result around it.
    let data: serde_json::Value = sqlx::query_scalar("SELECT data FROM cache_entries").fetch_one(&pool).await?;
    assert_eq!(data, serde_json::json!(4));
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn some_is_cached_none_only_with_cache_none(pool: PgPool) -> TestResult {
    let svc = Svc::new(pool.clone()).await;
    assert_eq!(svc.maybe(3).await, Some(3));
    assert_eq!(svc.maybe(3).await, Some(3));
    assert_eq!(svc.calls.get(), 1);
    assert_eq!(svc.maybe(0).await, None);
    assert_eq!(svc.maybe(0).await, None);
    assert_eq!(svc.calls.get(), 3, "None is not cached by default");

    assert_eq!(svc.maybe_with_none(0).await, None);
    assert_eq!(svc.maybe_with_none(0).await, None);
    assert_eq!(svc.calls.get(), 4, "cache_none = true caches None");
    assert_eq!(svc.maybe_with_none(5).await, Some(5));
    assert_eq!(svc.maybe_with_none(5).await, Some(5));
    assert_eq!(svc.calls.get(), 5);
    assert_eq!(rows(&pool).await, 3);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn skipped_arguments_are_not_in_the_key(pool: PgPool) -> TestResult {
    let svc = Svc::new(pool).await;
    assert_eq!(svc.traced("q", 1).await, "Q");
    assert_eq!(svc.traced("q", 2).await, "Q");
    assert_eq!(svc.calls.get(), 1, "a different skipped value still hits");
    assert_eq!(svc.traced_cache_key("q")?, svc.traced_cache_key("q")?);
    assert_eq!(svc.traced("r", 1).await, "R");
    assert_eq!(svc.calls.get(), 2);
    Ok(())
}

/// Two functions declared in two function bodies of one module have the same path and name; only the version
/// (or the namespace) tells them apart. That is what a version bump between two builds looks like.
mod isolation {
    use super::Calls;
    use cache_runtime::{pg_cached, CacheError, PgCache};

    pub async fn version_1(cache: &PgCache, calls: &Calls, x: u32) -> Result<(String, String), CacheError> {
        #[pg_cached(namespace = "versioned", version = 1, skip(cache, calls), cache = cache)]
        async fn lookup(cache: &PgCache, calls: &Calls, x: u32) -> String {
            calls.bump();
            format!("v1 {x}")
        }
        Ok((lookup(cache, calls, x).await, lookup_cache_key(x)?))
    }

    pub async fn version_2(cache: &PgCache, calls: &Calls, x: u32) -> Result<(String, String), CacheError> {
        #[pg_cached(namespace = "versioned", version = 2, skip(cache, calls), cache = cache)]
        async fn lookup(cache: &PgCache, calls: &Calls, x: u32) -> String {
            calls.bump();
            format!("v2 {x}")
        }
        Ok((lookup(cache, calls, x).await, lookup_cache_key(x)?))
    }

    pub async fn namespace_a(cache: &PgCache, calls: &Calls, x: u32) -> String {
        #[pg_cached(namespace = "ns-a", skip(cache, calls), cache = cache)]
        async fn lookup(cache: &PgCache, calls: &Calls, x: u32) -> String {
            calls.bump();
            format!("a {x}")
        }
        lookup(cache, calls, x).await
    }

    pub async fn namespace_b(cache: &PgCache, calls: &Calls, x: u32) -> String {
        #[pg_cached(namespace = "ns-b", skip(cache, calls), cache = cache)]
        async fn lookup(cache: &PgCache, calls: &Calls, x: u32) -> String {
            calls.bump();
            format!("b {x}")
        }
        lookup(cache, calls, x).await
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn versions_never_share(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    let calls = Calls::default();
    let (v1, key1) = isolation::version_1(&cache, &calls, 1).await?;
    let (v2, key2) = isolation::version_2(&cache, &calls, 1).await?;
    assert_eq!((v1.as_str(), v2.as_str()), ("v1 1", "v2 1"));
    assert_ne!(key1, key2);
    assert!(key1.starts_with("versioned:") && key2.starts_with("versioned:"));
    assert_eq!(calls.get(), 2);
    // Both entries live side by side; each version reads its own.
    assert_eq!(isolation::version_1(&cache, &calls, 1).await?.0, "v1 1");
    assert_eq!(isolation::version_2(&cache, &calls, 1).await?.0, "v2 1");
    assert_eq!(calls.get(), 2);
    assert_eq!(rows(&pool).await, 2);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn namespaces_never_share(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    let calls = Calls::default();
    assert_eq!(isolation::namespace_a(&cache, &calls, 1).await, "a 1");
    assert_eq!(isolation::namespace_b(&cache, &calls, 1).await, "b 1");
    assert_eq!(isolation::namespace_a(&cache, &calls, 1).await, "a 1");
    assert_eq!(isolation::namespace_b(&cache, &calls, 1).await, "b 1");
    assert_eq!(calls.get(), 2);
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT cache_key FROM cache_entries ORDER BY cache_key").fetch_all(&pool).await?;
    let namespaces: Vec<&str> = keys.iter().filter_map(|k| k.split_once(':')).map(|(ns, _)| ns).collect();
    assert_eq!(namespaces, ["ns-a", "ns-b"]);
    Ok(())
}

struct Left {
    cache: PgCache,
    calls: Calls,
}

struct Right {
    cache: PgCache,
    calls: Calls,
}

impl Left {
    #[pg_cached(cache = self.cache, namespace = "side")]
    async fn side(&self, x: u32) -> String {
        self.calls.bump();
        format!("left {x}")
    }
}

impl Right {
    #[pg_cached(cache = self.cache, namespace = "side")]
    async fn side(&self, x: u32) -> String {
        self.calls.bump();
        format!("right {x}")
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn same_method_name_in_two_impls_never_shares(pool: PgPool) -> TestResult {
    let left = Left { cache: cache_on(pool.clone()).await, calls: Calls::default() };
    let right = Right { cache: left.cache.clone(), calls: Calls::default() };
    assert_eq!(left.side(1).await, "left 1");
    assert_eq!(right.side(1).await, "right 1");
    assert_eq!(left.side(1).await, "left 1");
    assert_eq!(right.side(1).await, "right 1");
    assert_eq!((left.calls.get(), right.calls.get()), (1, 1));
    assert_ne!(left.side_cache_key(1)?, right.side_cache_key(1)?);
    Ok(())
}

struct Typed<T> {
    cache: PgCache,
    calls: Calls,
    _t: PhantomData<fn() -> T>,
}

impl<T> Typed<T> {
    #[pg_cached(cache = self.cache)]
    async fn name(&self) -> String {
        self.calls.bump();
        std::any::type_name::<T>().to_owned()
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn generic_instantiations_never_share(pool: PgPool) -> TestResult {
    let svc = Svc::new(pool.clone()).await;
    assert_eq!(svc.describe::<u8>(1).await, "u8:1");
    assert_eq!(svc.describe::<u16>(1).await, "u16:1");
    assert_eq!(svc.describe::<String>(1).await, "alloc::string::String:1");
    assert_eq!(svc.describe::<u8>(1).await, "u8:1");
    assert_eq!(svc.describe::<u16>(1).await, "u16:1");
    assert_eq!(svc.calls.get(), 3);

    // A generic impl: `Self` differs.
    let a = Typed::<u8> { cache: svc.cache.clone(), calls: Calls::default(), _t: PhantomData };
    let b = Typed::<i64> { cache: svc.cache.clone(), calls: Calls::default(), _t: PhantomData };
    assert_eq!(a.name().await, "u8");
    assert_eq!(b.name().await, "i64");
    assert_eq!(a.name().await, "u8");
    assert_eq!((a.calls.get(), b.calls.get()), (1, 1));
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn nan_is_never_turned_into_none(pool: PgPool) -> TestResult {
    let svc = Svc::new(pool).await;
    for _ in 0..3 {
        assert!(svc.nan().await.is_some_and(f64::is_nan));
        assert!(svc.nan_with_none().await.is_some_and(f64::is_nan));
    }
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_stored_value_of_the_wrong_shape_is_recomputed(pool: PgPool) -> TestResult {
    let svc = Svc::new(pool.clone()).await;
    let expected = Record { id: 4, name: "record 4".into() };
    assert_eq!(svc.record(4).await, expected);
    let key = svc.record_cache_key(4)?;
    for wrong in [r#"{"id": "four"}"#, r#""a string""#, "null", "[1, 2]"] {
        let updated = sqlx::query("UPDATE cache_entries SET data = $2::jsonb WHERE cache_key = $1")
            .bind(&key)
            .bind(wrong)
            .execute(&pool)
            .await?;
        assert_eq!(updated.rows_affected(), 1, "the entry is there before the update to {wrong}");
        let before = svc.calls.get();
        assert_eq!(svc.record(4).await, expected, "after storing {wrong}");
        assert_eq!(svc.calls.get(), before + 1, "the body ran after storing {wrong}");
    }
    // The recomputed value replaced the bad one.
    let before = svc.calls.get();
    assert_eq!(svc.record(4).await, expected);
    assert_eq!(svc.calls.get(), before);
    Ok(())
}
