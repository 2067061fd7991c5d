//! Tenant scoping (issue 27) on a real PostgreSQL: a tenant never reads another tenant's entry, through the
//! API, the macro or semantic hits, whatever the arguments; the tenant is stored in its own column; a
//! tenant's purge removes only its entries; quotas hold after a sweep; bad tenant ids are typed errors and
//! never reach any entry. Row-level security, with two real roles, is in `tenants_rls.rs`.

use cache_runtime::semantic::{EmbedFuture, Embedder};
use cache_runtime::{current_tenant, pg_cached, tenant, CacheError, PgCache, Ttl};
use integration_tests::{cache_on, Calls};
use sqlx::PgPool;
use std::sync::Arc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// `(tenant, count)` of the rows of `cache_entries`, by tenant (`""`: no tenant).
async fn rows_by_tenant(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT coalesce(tenant, ''), count(*) FROM cache_entries GROUP BY 1 ORDER BY 1")
        .fetch_all(pool)
        .await
        .expect("count rows by tenant")
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn the_api_never_crosses_tenants(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    cache.set("answer:q1", &"shared", Ttl::Default).await?;
    tenant("acme", cache.set("answer:q1", &"acme's", Ttl::Default)).await?;
    tenant("globex", cache.set("answer:q1", &"globex's", Ttl::Default)).await?;
    let get = |who: Option<&'static str>| {
        let cache = cache.clone();
        async move {
            match who {
                Some(id) => tenant(id, cache.get::<String>("answer:q1")).await,
                None => cache.get::<String>("answer:q1").await,
            }
        }
    };
    assert_eq!(get(None).await?.as_deref(), Some("shared"));
    assert_eq!(get(Some("acme")).await?.as_deref(), Some("acme's"));
    assert_eq!(get(Some("globex")).await?.as_deref(), Some("globex's"));
    assert_eq!(get(Some("initech")).await?, None, "a tenant with no entry finds none, not another's");
    assert_eq!(rows_by_tenant(&pool).await, [("".into(), 1), ("acme".into(), 1), ("globex".into(), 1)]);

    // acme's stored key can be read outside any scope (the owner's tools), but no write outside a tenant's
    // scope may plant a value under it, where acme's lookups would find it.
    let stored: String =
        sqlx::query_scalar("SELECT cache_key FROM cache_entries WHERE tenant = 'acme'").fetch_one(&pool).await?;
    assert!(stored.starts_with("answer:~"), "{stored}");
    assert_eq!(cache.get::<String>(&stored).await?.as_deref(), Some("acme's"));
    let planted = cache.set(&stored, &"planted", Ttl::Default).await;
    assert!(matches!(planted, Err(CacheError::InvalidKey { .. })), "{planted:?}");
    let planted = cache.set_many(&[(stored.as_str(), "planted")], Ttl::Default).await;
    assert!(matches!(planted, Err(CacheError::InvalidKey { .. })), "{planted:?}");
    assert_eq!(get(Some("acme")).await?.as_deref(), Some("acme's"));

    // Bulk operations are scoped the same way.
    tenant("acme", cache.set_many(&[("k:1", 1), ("k:2", 2)], Ttl::Default)).await?;
    let theirs: Vec<Option<i32>> = tenant("globex", cache.get_many(&["k:1", "k:2"])).await?;
    assert_eq!(theirs, [None, None]);
    let ours: Vec<Option<i32>> = tenant("acme", cache.get_many(&["k:1", "k:2"])).await?;
    assert_eq!(ours, [Some(1), Some(2)]);
    assert_eq!(tenant("globex", cache.delete_many(&["k:1", "k:2", "answer:q1"])).await?, 1);
    assert_eq!(tenant("acme", cache.get_many::<i32>(&["k:1", "k:2"])).await?, [Some(1), Some(2)]);
    assert!(!tenant("globex", cache.delete("answer:q1")).await?, "globex's entry is gone already");
    assert_eq!(get(Some("acme")).await?.as_deref(), Some("acme's"), "another tenant's delete left it");
    // Keys keep their namespace, so namespace purges still reach every tenant's entries.
    assert_eq!(cache.delete_namespace("answer").await?, 2);
    Ok(())
}

/// A service whose memoized functions say which tenant computed each value.
struct Svc {
    cache: PgCache,
    calls: Calls,
}

impl Svc {
    /// Works for the tenant of the scope it is called in.
    #[pg_cached(cache = self.cache, namespace = "scoped", ttl = "1h", local = "1m")]
    async fn answer(&self, question: &str) -> String {
        self.calls.bump();
        format!("{} for {}", question, current_tenant().unwrap_or_default())
    }

    /// Works for the tenant its argument names.
    #[pg_cached(cache = self.cache, namespace = "by_org", ttl = "1h", tenant = org, skip(org))]
    async fn for_org(&self, org: &str, question: &str) -> String {
        self.calls.bump();
        format!("{} for {} ({org})", question, current_tenant().unwrap_or_default())
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn memoized_calls_never_cross_tenants(pool: PgPool) -> TestResult {
    let svc = Svc { cache: cache_on(pool.clone()).await, calls: Calls::default() };
    for round in 0..2 {
        // Same arguments, three tenants (and none): each its own entry, computed once, read back as its own.
        assert_eq!(svc.answer("q").await, "q for ");
        assert_eq!(tenant("acme", svc.answer("q")).await, "q for acme");
        assert_eq!(tenant("globex", svc.answer("q")).await, "q for globex");
        assert_eq!(svc.for_org("acme", "q").await, "q for acme (acme)");
        assert_eq!(svc.for_org("globex", "q").await, "q for globex (globex)");
        assert_eq!(svc.calls.get(), 5, "round {round}: every value computed once, then hit");
    }
    // The attribute and a scope of the same tenant agree; of another, the call runs uncached.
    assert_eq!(tenant("acme", svc.for_org("acme", "q")).await, "q for acme (acme)");
    assert_eq!(svc.calls.get(), 5);
    assert_eq!(tenant("acme", svc.for_org("globex", "q")).await, "q for  (globex)");
    assert_eq!(tenant("acme", svc.for_org("globex", "q")).await, "q for  (globex)");
    assert_eq!(svc.calls.get(), 7, "a scope never changes tenant: refused, run uncached each time");
    assert_eq!(rows_by_tenant(&pool).await, [("".into(), 1), ("acme".into(), 2), ("globex".into(), 2)]);

    // The companions follow the attribute: the qualified key, and an invalidation of that tenant only.
    let key = svc.for_org_cache_key("acme", "q")?;
    let stored: Option<String> = sqlx::query_scalar("SELECT tenant FROM cache_entries WHERE cache_key = $1")
        .bind(&key)
        .fetch_optional(&pool)
        .await?;
    assert_eq!(stored.as_deref(), Some("acme"));
    assert!(svc.for_org_invalidate("acme", "q").await?);
    assert_eq!(svc.for_org("globex", "q").await, "q for globex (globex)", "globex's entry stays");
    assert_eq!(svc.calls.get(), 7);
    assert_eq!(svc.for_org("acme", "q").await, "q for acme (acme)");
    assert_eq!(svc.calls.get(), 8, "acme's entry was invalidated");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn many_tasks_across_tenants_each_get_their_own(pool: PgPool) -> TestResult {
    let svc = Arc::new(Svc { cache: cache_on(pool.clone()).await, calls: Calls::default() });
    let tenants = ["t0", "t1", "t2", "t3"];
    let mut tasks = Vec::new();
    for round in 0..25 {
        for id in tenants {
            let svc = Arc::clone(&svc);
            tasks.push(tokio::spawn(async move {
                let question = format!("q{}", round % 5);
                let scoped = tenant(id, svc.answer(&question)).await;
                let by_org = svc.for_org(id, &question).await;
                (id, question, scoped, by_org)
            }));
        }
    }
    for task in tasks {
        let (id, question, scoped, by_org) = task.await?;
        assert_eq!(scoped, format!("{question} for {id}"));
        assert_eq!(by_org, format!("{question} for {id} ({id})"));
    }
    // 4 tenants x 5 questions x 2 functions, each computed at most a few times (single flight per process).
    assert_eq!(rows_by_tenant(&pool).await.iter().map(|(_, n)| n).sum::<i64>(), 40);
    for id in tenants {
        assert_eq!(cache_on(pool.clone()).await.tenant_stats(id).await?.entries, 10);
    }
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn invalid_tenants_are_typed_errors_and_reach_nothing(pool: PgPool) -> TestResult {
    let svc = Svc { cache: cache_on(pool.clone()).await, calls: Calls::default() };
    let cache = &svc.cache;
    cache.set("answer:q1", &1, Ttl::Default).await?;
    let long = "x".repeat(cache_runtime::MAX_TENANT_CHARS + 1);
    for bad in ["", "a\nb", "nul\0", long.as_str()] {
        let got = tenant(bad, cache.get::<i32>("answer:q1")).await;
        assert!(matches!(got, Err(CacheError::InvalidTenant { .. })), "{bad:?}: {got:?}");
        let set = tenant(bad, cache.set("answer:q1", &2, Ttl::Default)).await;
        assert!(matches!(set, Err(CacheError::InvalidTenant { .. })), "{bad:?}: {set:?}");
        assert!(matches!(cache.delete_tenant(bad).await, Err(CacheError::InvalidTenant { .. })));
        assert!(matches!(cache.tenant_stats(bad).await, Err(CacheError::InvalidTenant { .. })));
        // A memoized call runs its body, stores nothing, and counts the error.
        let errors = cache.process_stats().errors;
        assert_eq!(tenant(bad, svc.answer("q")).await, "q for ");
        assert_eq!(svc.for_org(bad, "q").await, format!("q for  ({bad})"));
        assert_eq!(cache.process_stats().errors, errors + 2, "{bad:?}");
    }
    let nested = tenant("acme", tenant("globex", cache.get::<i32>("answer:q1"))).await;
    assert!(matches!(nested, Err(CacheError::InvalidTenant { .. })), "{nested:?}");
    assert_eq!(cache.get::<i32>("answer:q1").await?, Some(1), "the entry of no tenant is untouched");
    assert_eq!(rows_by_tenant(&pool).await, [("".into(), 1)], "nothing was written for a bad tenant");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn deleting_a_tenant_removes_only_its_entries(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    for i in 0..3 {
        tenant("acme", cache.set(&format!("k:{i}"), &i, Ttl::Default)).await?;
    }
    tenant("globex", cache.set_many(&[("k:0", 10), ("k:1", 11)], Ttl::Default)).await?;
    cache.set("k:0", &100, Ttl::Default).await?;
    assert_eq!(tenant("acme", cache.get::<i32>("k:2")).await?, Some(2));
    let before = cache.tenant_stats("acme").await?;
    assert_eq!((before.entries, before.live, before.hits), (3, 3, 1));
    assert!(before.bytes > 0);

    assert_eq!(cache.delete_tenant("acme").await?, 3);
    assert_eq!(tenant("acme", cache.get::<i32>("k:2")).await?, None);
    assert_eq!(tenant("globex", cache.get::<i32>("k:1")).await?, Some(11));
    assert_eq!(cache.get::<i32>("k:0").await?, Some(100));
    assert_eq!(rows_by_tenant(&pool).await, [("".into(), 1), ("globex".into(), 2)]);
    assert_eq!(cache.tenant_stats("acme").await?.entries, 0);
    assert_eq!(cache.delete_tenant("acme").await?, 0, "nothing left to delete");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn quotas_hold_after_a_sweep_oldest_first(pool: PgPool) -> TestResult {
    let by_count = PgCache::builder().pool(pool.clone()).sweep_interval(None).tenant_quota(5, None).build().await?;
    for i in 0..8 {
        tenant("acme", by_count.set(&format!("k:{i}"), &i, Ttl::Default)).await?;
    }
    for i in 0..2 {
        tenant("globex", by_count.set(&format!("k:{i}"), &i, Ttl::Default)).await?;
    }
    for i in 0..8 {
        by_count.set(&format!("k:{i}"), &i, Ttl::Default).await?;
    }
    let report = by_count.sweep().await?;
    assert_eq!(report.tenant_evicted, 3);
    let kept: Vec<Option<i32>> =
        tenant("acme", by_count.get_many(&(0..8).map(|i| format!("k:{i}")).collect::<Vec<_>>())).await?;
    assert_eq!(kept, [None, None, None, Some(3), Some(4), Some(5), Some(6), Some(7)], "the oldest went first");
    assert_eq!(rows_by_tenant(&pool).await, [("".into(), 8), ("acme".into(), 5), ("globex".into(), 2)]);
    assert_eq!(by_count.sweep().await?.tenant_evicted, 0, "under quota: nothing more");

    // A quota in bytes: values of about 1 KB each, at most 3 KB per tenant.
    let by_bytes =
        PgCache::builder().pool(pool.clone()).sweep_interval(None).tenant_quota(None, Some(3 * 1024)).build().await?;
    let value = "v".repeat(1000);
    for i in 0..6 {
        tenant("initech", by_bytes.set(&format!("big:{i}"), &value, Ttl::Default)).await?;
    }
    by_bytes.sweep().await?;
    let stats = by_bytes.tenant_stats("initech").await?;
    assert!(stats.bytes <= 3 * 1024 && stats.entries >= 2, "{stats:?}");
    assert_eq!(tenant("initech", by_bytes.get::<String>("big:5")).await?.as_deref(), Some(value.as_str()));
    assert_eq!(tenant("initech", by_bytes.get::<String>("big:0")).await?, None);

    // Zero is refused rather than read as "keep nothing".
    let zero = PgCache::builder().database_url("postgres://localhost/x").tenant_quota(0, None).build_lazy();
    assert!(matches!(zero, Err(CacheError::Config(m)) if m.contains("tenant_quota")));
    Ok(())
}

/// A deterministic embedder: each word (lowercased, letters only) adds to one of 64 dimensions, so texts
/// sharing most words are near. No model needed.
#[derive(Debug)]
struct Words;

impl Embedder for Words {
    fn model_id(&self) -> &str {
        "test-words@1"
    }
    fn dimensions(&self) -> usize {
        64
    }
    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
        let vectors = texts
            .iter()
            .map(|text| {
                let mut vector = vec![0.0f32; 64];
                for word in text.split_whitespace() {
                    let word: String =
                        word.chars().filter(char::is_ascii_alphabetic).collect::<String>().to_lowercase();
                    let slot = word.bytes().fold(7usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b))) % 64;
                    vector[slot] += 1.0;
                }
                cache_runtime::semantic::normalize(&mut vector);
                vector
            })
            .collect();
        Box::pin(std::future::ready(Ok(vectors)))
    }
}

/// A memoized function matched by meaning, in the tenant of its caller's scope.
struct Answers {
    cache: PgCache,
    calls: Calls,
}

impl Answers {
    #[pg_cached(cache = self.cache, namespace = "answer", ttl = "1h", similar(question))]
    async fn answer(&self, question: &str) -> String {
        self.calls.bump();
        format!("for {} ({question})", current_tenant().unwrap_or_default())
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn semantic_hits_never_cross_tenants(pool: PgPool) -> TestResult {
    let cache = PgCache::builder().pool(pool.clone()).sweep_interval(None).embedder(Words).similarity_threshold(0.8);
    let cache = cache.build().await?;
    let (stored, paraphrase) = ("How do I reset my password?", "How can I reset my password?");
    tenant("acme", cache.set_similar("faq", "s", stored, &"acme's answer", None)).await?;
    let hit = tenant("acme", cache.get_similar::<String>("faq", "s", paraphrase)).await?;
    assert_eq!(hit.map(|h| h.value).as_deref(), Some("acme's answer"), "the tenant's own paraphrase hits");
    for text in [stored, paraphrase] {
        let theirs = tenant("globex", cache.get_similar::<String>("faq", "s", text)).await?;
        assert!(theirs.is_none(), "globex / {text:?}: {theirs:?}");
        let nobody = cache.get_similar::<String>("faq", "s", text).await?;
        assert!(nobody.is_none(), "no tenant / {text:?}: {nobody:?}");
    }
    let tenants: Vec<Option<String>> = sqlx::query_scalar("SELECT tenant FROM cache_semantic").fetch_all(&pool).await?;
    assert_eq!(tenants, [Some("acme".to_owned())], "the vector's row carries the tenant too");

    // Memoized: a paraphrase hits within a tenant, never across.
    let answers = Answers { cache, calls: Calls::default() };
    assert_eq!(tenant("acme", answers.answer(stored)).await, format!("for acme ({stored})"));
    assert_eq!(tenant("acme", answers.answer(paraphrase)).await, format!("for acme ({stored})"));
    assert_eq!(answers.calls.get(), 1, "acme's paraphrase was a semantic hit");
    assert_eq!(tenant("globex", answers.answer(paraphrase)).await, format!("for globex ({paraphrase})"));
    assert_eq!(answers.answer(paraphrase).await, format!("for  ({paraphrase})"));
    assert_eq!(answers.calls.get(), 3, "neither another tenant nor no tenant got acme's entry");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn the_previous_release_calls_still_write_rows_of_no_tenant(pool: PgPool) -> TestResult {
    // Functions version 2's statements, as its sql.rs sent them (named, without p_tenant / p_tenants).
    let one: Option<bool> = sqlx::query_scalar(
        "SELECT pg_cached_write_entry(p_key => 'v2:1', p_data => '1'::jsonb, p_ttl_ms => 60000, p_keep_ms => 0, \
         p_started_us => NULL, p_namespace => 'v2', p_notify => '0000000000000000|k|1', p_lock_timeout => '1000', \
         p_async_commit => true, p_tags => NULL, p_compute_us => NULL, p_started_snapshot => NULL, \
         p_input_tokens => NULL, p_output_tokens => NULL, p_cost_micros => NULL, p_try_locks => false)",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(one, Some(true));
    let many: Vec<Option<bool>> = sqlx::query_scalar(
        "SELECT pg_cached_write_entries(p_keys => ARRAY['v2:2', 'v2:3'], p_data => ARRAY['2', '3']::jsonb[], \
         p_ttl_ms => ARRAY[60000, 60000]::bigint[], p_keep_ms => ARRAY[0, 0]::bigint[], \
         p_started_us => ARRAY[NULL, NULL]::bigint[], p_namespaces => ARRAY['v2', 'v2'], \
         p_notify => '0000000000000000|k|1', p_lock_timeout => '1000', p_async_commit => true, \
         p_tags => ARRAY[NULL, NULL]::text[], p_compute_us => ARRAY[NULL, NULL]::bigint[], \
         p_started_snapshots => ARRAY[NULL, NULL]::text[], p_input_tokens => NULL, p_output_tokens => NULL, \
         p_cost_micros => NULL, p_try_locks => false)",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(many, [Some(true), Some(true)]);
    assert_eq!(rows_by_tenant(&pool).await, [("".into(), 3)]);
    assert_eq!(cache_on(pool).await.get::<i32>("v2:3").await?, Some(3));
    Ok(())
}

/// A memoized stream: its chunks say which tenant's scope it was made in.
struct Streams {
    cache: PgCache,
}

impl Streams {
    #[pg_cached(cache = self.cache, namespace = "words", ttl = "1h", stream)]
    fn words(&self, question: String) -> impl futures_util::Stream<Item = Result<String, String>> {
        let who = current_tenant().unwrap_or_default();
        futures_util::stream::iter([Ok(question), Ok(who)])
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn memoized_streams_never_cross_tenants(pool: PgPool) -> TestResult {
    use futures_util::StreamExt;
    let streams = Streams { cache: cache_on(pool.clone()).await };
    for round in 0..2 {
        for id in ["acme", "globex"] {
            let chunks: Vec<_> = tenant(id, async { streams.words("q".into()).collect::<Vec<_>>().await }).await;
            assert_eq!(chunks, [Ok("q".to_owned()), Ok(id.to_owned())], "round {round}");
        }
        let plain: Vec<_> = streams.words("q".into()).collect().await;
        assert_eq!(plain, [Ok("q".to_owned()), Ok(String::new())]);
    }
    // A replay of another tenant's recording would say that tenant's name: each replays its own.
    assert_eq!(rows_by_tenant(&pool).await, [("".into(), 1), ("acme".into(), 1), ("globex".into(), 1)]);
    Ok(())
}
