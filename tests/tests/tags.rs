//! Tags (static, dynamic, propagated through nested memoized calls), invalidation by tag, triggers on a
//! source table, `stale_if_error`, `cache_if`, and compute times. Each test gets a fresh database.

use cache_runtime::{pg_cached, CacheError, PgCache};
use integration_tests::memo::second_pool;
use integration_tests::{cache_on, tiered_on, within, Calls};
use sqlx::{Connection, PgPool};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A small RAG service whose documents live in a real table: retrieval tags each result with the documents
/// it returned, answers and reports only call the layer below.
struct Rag {
    cache: PgCache,
    pool: PgPool,
    retrievals: Calls,
    answers: Calls,
    reports: Calls,
}

impl Rag {
    async fn new(pool: PgPool) -> Result<Rag, sqlx::Error> {
        sqlx::raw_sql(
            "CREATE TABLE documents (id int PRIMARY KEY, body text NOT NULL); \
             INSERT INTO documents VALUES (1, 'rust async'), (2, 'rust traits'), (3, 'python');",
        )
        .execute(&pool)
        .await?;
        Ok(Rag {
            cache: cache_on(pool.clone()).await,
            pool,
            retrievals: Calls::default(),
            answers: Calls::default(),
            reports: Calls::default(),
        })
    }

    #[pg_cached(cache = self.cache, namespace = "retrieval", ttl = "1h", tags("corpus"))]
    async fn retrieve(&self, query: String) -> Result<Vec<i32>, String> {
        self.retrievals.bump();
        let ids: Vec<i32> = sqlx::query_scalar("SELECT id FROM documents WHERE body LIKE '%' || $1 || '%' ORDER BY id")
            .bind(&query)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        cache_runtime::tags(ids.iter().map(|id| format!("doc:{id}")));
        Ok(ids)
    }

    #[pg_cached(cache = self.cache, namespace = "answer", ttl = "1h")]
    async fn answer(&self, query: String) -> Result<String, String> {
        self.answers.bump();
        let ids = self.retrieve(query.clone()).await?;
        Ok(format!("{query}: {ids:?}"))
    }

    #[pg_cached(cache = self.cache, namespace = "report", ttl = "1h")]
    async fn report(&self, a: String, b: String) -> Result<String, String> {
        self.reports.bump();
        Ok(format!("{} | {}", self.answer(a).await?, self.answer(b).await?))
    }
}

/// Every entry as (namespace, its tags), sorted.
async fn entries(pool: &PgPool) -> Vec<(String, Vec<String>)> {
    let rows: Vec<(String, Option<Vec<String>>)> =
        sqlx::query_as("SELECT split_part(cache_key, ':', 1), tags FROM cache_entries ORDER BY 1, 2")
            .fetch_all(pool)
            .await
            .expect("read the entries");
    rows.into_iter().map(|(ns, tags)| (ns, tags.unwrap_or_default())).collect()
}

fn tagged(namespace: &str, tags: &[&str]) -> (String, Vec<String>) {
    (namespace.to_owned(), tags.iter().map(|t| (*t).to_owned()).collect())
}

async fn count(pool: &PgPool, namespace: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM cache_entries WHERE cache_key LIKE $1 || ':%'")
        .bind(namespace)
        .fetch_one(pool)
        .await
        .expect("count entries")
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn tags_are_static_dynamic_and_propagated_three_levels_deep(pool: PgPool) -> TestResult {
    let rag = Rag::new(pool.clone()).await?;
    // All misses: every level computes.
    let report = rag.report("rust".into(), "python".into()).await?;
    assert_eq!(report, "rust: [1, 2] | python: [3]");
    let all = ["corpus", "doc:1", "doc:2", "doc:3"];
    assert_eq!(
        entries(&pool).await,
        vec![
            tagged("answer", &["corpus", "doc:1", "doc:2"]),
            tagged("answer", &["corpus", "doc:3"]),
            tagged("report", &all),
            tagged("retrieval", &["corpus", "doc:1", "doc:2"]),
            tagged("retrieval", &["corpus", "doc:3"]),
        ]
    );

    // Inner hits propagate too: the report recomputes over answers served from PostgreSQL.
    sqlx::query("DELETE FROM cache_entries WHERE cache_key LIKE 'report:%'").execute(&pool).await?;
    rag.report("rust".into(), "python".into()).await?;
    assert_eq!((rag.reports.get(), rag.answers.get(), rag.retrievals.get()), (2, 2, 2));
    assert!(entries(&pool).await.contains(&tagged("report", &all)), "tags inherited from hits");

    // An answer recomputed over a retrieval hit (two levels, hit).
    sqlx::query("DELETE FROM cache_entries WHERE cache_key LIKE 'answer:%'").execute(&pool).await?;
    rag.answer("python".into()).await?;
    assert_eq!(rag.retrievals.get(), 2, "the retrieval was a hit");
    assert!(entries(&pool).await.contains(&tagged("answer", &["corpus", "doc:3"])));

    // Invalidating one document removes exactly what was built on it, at every level.
    assert_eq!(rag.cache.invalidate_tag("doc:3").await?, 3);
    assert_eq!(
        entries(&pool).await,
        vec![tagged("retrieval", &["corpus", "doc:1", "doc:2"])],
        "the python retrieval, its answer and the report went; the rust retrieval stayed"
    );
    rag.report("rust".into(), "python".into()).await?;
    assert_eq!((rag.reports.get(), rag.answers.get(), rag.retrievals.get()), (3, 5, 3));

    // Several tags at once; a static tag reaches every entry of the function and those built on it.
    assert_eq!(rag.cache.invalidate_tags(&["nothing", "corpus"]).await?, 5);
    assert!(entries(&pool).await.is_empty());
    assert_eq!(rag.cache.invalidate_tags(&[] as &[&str]).await?, 0);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_computation_begun_before_a_tag_invalidation_is_not_stored(pool: PgPool) -> TestResult {
    struct Slow {
        cache: PgCache,
        started: Notify,
        release: Notify,
        calls: Calls,
    }
    impl Slow {
        #[pg_cached(cache = self.cache, namespace = "slow", ttl = "1h")]
        async fn compute(&self, x: u32) -> u32 {
            let run = self.calls.bump();
            cache_runtime::tag("doc:1");
            if run == 1 {
                self.started.notify_one();
                self.release.notified().await;
            }
            x + 100 * u32::try_from(run).unwrap_or(0)
        }
    }
    let slow = Arc::new(Slow {
        cache: cache_on(pool.clone()).await,
        started: Notify::new(),
        release: Notify::new(),
        calls: Calls::default(),
    });
    let first = tokio::spawn({
        let slow = Arc::clone(&slow);
        async move { slow.compute(1).await }
    });
    slow.started.notified().await;
    slow.cache.invalidate_tag("doc:1").await?;
    // A caller arriving after the invalidation does not wait for the computation begun before it.
    let second = slow.compute(1).await;
    assert_eq!(second, 201);
    slow.release.notify_one();
    assert_eq!(first.await?, 101, "the caller still gets its value");
    // What is stored is the value computed after the invalidation, never the older one.
    let stored: Vec<serde_json::Value> = sqlx::query_scalar("SELECT data FROM cache_entries").fetch_all(&pool).await?;
    assert_eq!(stored, vec![serde_json::json!(201)]);
    assert_eq!(slow.compute(1).await, 201);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn invalidate_tag_under_concurrent_computations(pool: PgPool) -> TestResult {
    // 200 tasks compute and read values tagged with one of 4 documents while the documents' version changes
    // and their tags are invalidated: no caller that starts after an invalidation returned may get a value
    // computed from an older version.
    struct Versions {
        cache: PgCache,
        /// The source data's version per document.
        versions: [AtomicUsize; 4],
        /// The version whose invalidation has returned: no caller starting now may get an older one.
        published: [AtomicUsize; 4],
    }
    impl Versions {
        #[pg_cached(cache = self.cache, namespace = "versioned", ttl = "1h")]
        async fn read(&self, doc: usize, variant: u32) -> (usize, u32) {
            cache_runtime::tag(format!("doc:{doc}"));
            let version = self.versions[doc].load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(u64::from(variant % 3))).await;
            (version, variant)
        }
    }
    let svc =
        Arc::new(Versions { cache: cache_on(pool).await, versions: Default::default(), published: Default::default() });
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for task in 0..200u32 {
        let (svc, stop) = (Arc::clone(&svc), Arc::clone(&stop));
        readers.push(tokio::spawn(async move {
            let mut checked = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let doc = (task as usize + checked as usize) % 4;
                let floor = svc.published[doc].load(Ordering::SeqCst);
                let (version, _) = svc.read(doc, task % 8).await;
                assert!(version >= floor, "doc {doc}: got version {version} after version {floor} was invalidated");
                checked += 1;
            }
            checked
        }));
    }
    for round in 0..40 {
        let doc = round % 4;
        // The source changes, then the cache is told: the order a trigger or an application gives.
        let version = svc.versions[doc].fetch_add(1, Ordering::SeqCst) + 1;
        svc.cache.invalidate_tag(&format!("doc:{doc}")).await?;
        svc.published[doc].store(version, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for reader in readers {
        total += reader.await?;
    }
    assert!(total >= 200, "every task checked at least one value");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_trigger_invalidates_on_commit_and_not_on_rollback(pool: PgPool) -> TestResult {
    let rag = Rag::new(pool.clone()).await?;
    rag.cache.invalidate_on_change("documents", "id", "doc:").await?;
    rag.cache.invalidate_on_change("documents", "id", "doc:").await?;
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'documents'::regclass AND NOT tgisinternal",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(triggers, 1, "installing twice leaves one trigger");

    rag.answer("rust".into()).await?;
    rag.answer("python".into()).await?;
    assert_eq!(entries(&pool).await.len(), 4);

    // Rolled back: nothing changes.
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE documents SET body = 'python 3' WHERE id = 3").execute(&mut *tx).await?;
    tx.rollback().await?;
    assert_eq!(entries(&pool).await.len(), 4);

    // Before COMMIT other sessions still see the entries; after it, exactly document 3's are gone.
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE documents SET body = 'python 3' WHERE id = 3").execute(&mut *tx).await?;
    assert_eq!(entries(&pool).await.len(), 4, "uncommitted");
    tx.commit().await?;
    assert_eq!(
        entries(&pool).await,
        vec![tagged("answer", &["corpus", "doc:1", "doc:2"]), tagged("retrieval", &["corpus", "doc:1", "doc:2"])]
    );
    assert_eq!(rag.answer("python".into()).await?, "python: [3]");
    assert_eq!(rag.retrievals.get(), 3, "recomputed");

    // A DELETE fires it too.
    sqlx::query("DELETE FROM documents WHERE id = 1").execute(&pool).await?;
    assert_eq!(count(&pool, "retrieval").await, 1, "only python's retrieval is left");
    assert_eq!(rag.answer("rust".into()).await?, "rust: [2]", "recomputed from the table as it is now");

    // An UPDATE of the column itself invalidates the old and the new value's tags.
    rag.cache.set_tagged("manual:x", &1, None, &["doc:20"]).await?;
    rag.cache.set_tagged("manual:y", &1, None, &["doc:2"]).await?;
    sqlx::query("UPDATE documents SET id = 20 WHERE id = 2").execute(&pool).await?;
    assert_eq!(count(&pool, "manual").await, 0);

    // Removed: changes no longer invalidate.
    assert_eq!(rag.cache.remove_invalidate_on_change("documents").await?, 1);
    rag.answer("python".into()).await?;
    sqlx::query("UPDATE documents SET body = 'python 4' WHERE id = 3").execute(&pool).await?;
    assert_eq!(count(&pool, "answer").await, 1, "python's answer stays");
    assert_eq!(rag.cache.remove_invalidate_on_change("documents").await?, 0);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_value_computed_before_the_changing_transaction_commits_is_not_stored(pool: PgPool) -> TestResult {
    // The trigger runs at UPDATE time, but the change becomes visible at COMMIT. A computation that began
    // in between reads the old row; its result must not be stored once the transaction commits.
    struct Reader {
        cache: PgCache,
        pool: PgPool,
        read_done: Notify,
        release: Notify,
        gate: AtomicBool,
    }
    impl Reader {
        #[pg_cached(cache = self.cache, namespace = "body", ttl = "1h")]
        async fn body(&self, id: i32) -> String {
            cache_runtime::tag(format!("doc:{id}"));
            let body: String = sqlx::query_scalar("SELECT body FROM documents WHERE id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await
                .unwrap_or_default();
            if self.gate.load(Ordering::SeqCst) {
                self.read_done.notify_one();
                self.release.notified().await;
            }
            body
        }
    }
    sqlx::raw_sql(
        "CREATE TABLE documents (id int PRIMARY KEY, body text NOT NULL); INSERT INTO documents VALUES (1, 'old');",
    )
    .execute(&pool)
    .await?;
    let reader = Arc::new(Reader {
        cache: cache_on(pool.clone()).await,
        pool: pool.clone(),
        read_done: Notify::new(),
        release: Notify::new(),
        gate: AtomicBool::new(true),
    });
    reader.cache.invalidate_on_change("documents", "id", "doc:").await?;

    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE documents SET body = 'new' WHERE id = 1").execute(&mut *tx).await?;
    let call = tokio::spawn({
        let reader = Arc::clone(&reader);
        async move { reader.body(1).await }
    });
    reader.read_done.notified().await;
    tx.commit().await?;
    reader.release.notify_one();
    assert_eq!(call.await?, "old", "the computation saw the row before the commit");
    assert_eq!(count(&pool, "body").await, 0, "and its result was not stored");
    reader.gate.store(false, Ordering::SeqCst);
    assert_eq!(reader.body(1).await, "new");
    assert_eq!(count(&pool, "body").await, 1);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn bad_identifiers_are_typed_errors_never_injection(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    sqlx::raw_sql(
        "CREATE TABLE \"it's docs\" (id int PRIMARY KEY); CREATE SCHEMA app; \
         CREATE TABLE app.documents (id int PRIMARY KEY, \"Weird \"\"col\" text); CREATE TABLE victim (x int);",
    )
    .execute(&pool)
    .await?;
    // Names that need quoting, and a schema-qualified one, work.
    cache.invalidate_on_change("\"it's docs\"", "id", "quote:").await?;
    cache.invalidate_on_change("app.documents", "Weird \"col", "weird:").await?;
    cache.set_tagged("t:1", &1, None, &["weird:a"]).await?;
    sqlx::query("INSERT INTO app.documents VALUES (1, 'a')").execute(&pool).await?;
    sqlx::query("UPDATE app.documents SET id = 2").execute(&pool).await?;
    assert_eq!(count(&pool, "t").await, 0, "the quoted column's value named the tag");

    let is_table_error =
        |r: &Result<(), CacheError>| matches!(r, Err(CacheError::InvalidIdentifier { what: "table", .. }));
    let is_column_error =
        |r: &Result<(), CacheError>| matches!(r, Err(CacheError::InvalidIdentifier { what: "column", .. }));
    for table in ["missing", "app.missing", "nope.documents", "documents; DROP TABLE victim", "\"unclosed", "", "a\0b"]
    {
        let result = cache.invalidate_on_change(table, "id", "doc:").await;
        assert!(is_table_error(&result), "{table:?}: {result:?}");
    }
    for column in ["missing", "id; DROP TABLE victim", "ID", "", "x\0"] {
        let result = cache.invalidate_on_change("\"it's docs\"", column, "doc:").await;
        assert!(is_column_error(&result), "{column:?}: {result:?}");
    }
    let result = cache.invalidate_on_change("\"it's docs\"", "id", "bad\nprefix").await;
    assert!(matches!(result, Err(CacheError::InvalidTag { .. })), "{result:?}");
    sqlx::query("CREATE VIEW doc_view AS SELECT 1 AS id").execute(&pool).await?;
    assert!(is_table_error(&cache.invalidate_on_change("doc_view", "id", "doc:").await));
    let victim: i64 = sqlx::query_scalar("SELECT count(*) FROM victim").fetch_one(&pool).await?;
    assert_eq!(victim, 0, "the victim table is still there");

    for bad in ["", "a\0b", "tab\tbed"] {
        assert!(matches!(cache.invalidate_tag(bad).await, Err(CacheError::InvalidTag { .. })), "{bad:?}");
        assert!(matches!(cache.set_tagged("t:2", &1, None, &[bad]).await, Err(CacheError::InvalidTag { .. })));
    }
    assert!(cache.invalidate_tag(&"x".repeat(cache_runtime::MAX_TAG_CHARS + 1)).await.is_err());
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn invalidations_by_tag_and_by_trigger_reach_other_processes_tiers(pool: PgPool) -> TestResult {
    let a = tiered_on(pool.clone()).await;
    let b = tiered_on(second_pool(&pool).await).await;
    sqlx::raw_sql("CREATE TABLE documents (id int PRIMARY KEY); INSERT INTO documents VALUES (7);")
        .execute(&pool)
        .await?;
    a.invalidate_on_change("documents", "id", "doc:").await?;

    for round in 0..2 {
        b.set_tagged("page:1", &round, None, &["doc:7"]).await?;
        b.set_tagged("page:2", &round, None, &["doc:8"]).await?;
        // A serves both from its tier.
        let served = within(Duration::from_secs(10), async || {
            a.get::<i32>("page:1").await.ok().flatten() == Some(round)
                && a.get::<i32>("page:2").await.ok().flatten() == Some(round)
                && a.process_stats().local_hits >= 2 * (round as u64 + 1)
        })
        .await;
        assert!(served.is_some(), "round {round}: A's tier serves the pages");
        if round == 0 {
            b.invalidate_tag("doc:7").await?;
        } else {
            sqlx::query("UPDATE documents SET id = 7 WHERE id = 7").execute(&pool).await?;
        }
        let dropped =
            within(Duration::from_secs(10), async || a.get::<i32>("page:1").await.ok().flatten().is_none()).await;
        assert!(dropped.is_some(), "round {round}: A's tier dropped the invalidated page");
        assert_eq!(a.get::<i32>("page:2").await?, Some(round), "the other page stays");
    }
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn stale_if_error_serves_a_recent_entry_only_inside_its_window(pool: PgPool) -> TestResult {
    struct Llm {
        cache: PgCache,
        failing: AtomicBool,
        calls: Calls,
    }
    impl Llm {
        #[pg_cached(cache = self.cache, namespace = "llm", ttl = "1h", stale_if_error = "1h")]
        async fn ask(&self, question: String) -> Result<String, String> {
            let run = self.calls.bump();
            if self.failing.load(Ordering::SeqCst) {
                return Err("429 Too Many Requests".into());
            }
            Ok(format!("answer {run} to {question}"))
        }

        #[pg_cached(cache = self.cache, namespace = "maybe", ttl = "1h", stale_if_error = "1h")]
        async fn maybe(&self, question: String) -> Option<String> {
            let run = self.calls.bump();
            (!self.failing.load(Ordering::SeqCst)).then(|| format!("maybe {run} {question}"))
        }
    }
    let llm = Llm { cache: cache_on(pool.clone()).await, failing: AtomicBool::new(false), calls: Calls::default() };
    assert_eq!(llm.ask("q".into()).await?, "answer 1 to q");
    let kept: f64 = sqlx::query_scalar("SELECT extract(epoch FROM sweep_at - expires_at)::float8 FROM cache_entries")
        .fetch_one(&pool)
        .await?;
    assert!((kept - 3600.0).abs() < 1.0, "the sweeper keeps the row for the window: {kept}");

    // Expired a minute ago: while the body fails, the old answer stands in.
    let expire = |ago: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(&format!("UPDATE cache_entries SET expires_at = now() - interval '{ago}'"))
                .execute(&pool)
                .await
                .map(drop)
        }
    };
    expire("1 minute").await?;
    llm.failing.store(true, Ordering::SeqCst);
    assert_eq!(llm.ask("q".into()).await?, "answer 1 to q");
    assert_eq!(llm.calls.get(), 2, "the body was tried first");
    assert_eq!(llm.cache.process_stats().stale_if_error, 1);
    // Once the body works again, its value replaces the old one.
    llm.failing.store(false, Ordering::SeqCst);
    assert_eq!(llm.ask("q".into()).await?, "answer 3 to q");

    // Outside the window the failure is returned.
    expire("2 hours").await?;
    llm.failing.store(true, Ordering::SeqCst);
    assert_eq!(llm.ask("q".into()).await, Err("429 Too Many Requests".to_owned()));

    // `None` is a failure too.
    llm.failing.store(false, Ordering::SeqCst);
    assert!(llm.maybe("m".into()).await.is_some());
    sqlx::query("UPDATE cache_entries SET expires_at = now() - interval '1 minute' WHERE cache_key LIKE 'maybe:%'")
        .execute(&pool)
        .await?;
    llm.failing.store(true, Ordering::SeqCst);
    assert!(llm.maybe("m".into()).await.is_some_and(|m| m.starts_with("maybe ")));
    assert_eq!(llm.cache.process_stats().stale_if_error, 2);
    Ok(())
}

#[allow(clippy::ptr_arg)] // cache_if takes `fn(&T) -> bool` with T the stored type, here `Vec<u32>`
fn has_results(docs: &Vec<u32>) -> bool {
    !docs.is_empty()
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn cache_if_decides_what_is_stored(pool: PgPool) -> TestResult {
    struct Search {
        cache: PgCache,
        calls: Calls,
    }
    impl Search {
        #[pg_cached(cache = self.cache, namespace = "search", ttl = "1h", cache_if = has_results)]
        async fn search(&self, query: String) -> Result<Vec<u32>, String> {
            self.calls.bump();
            Ok(if query == "none" { vec![] } else { vec![1, 2] })
        }
    }
    let search = Search { cache: cache_on(pool.clone()).await, calls: Calls::default() };
    assert_eq!(search.search("none".into()).await?, Vec::<u32>::new());
    assert_eq!(search.search("none".into()).await?, Vec::<u32>::new());
    assert_eq!(search.calls.get(), 2, "an empty result is returned but not stored");
    assert_eq!(search.search("rust".into()).await?, vec![1, 2]);
    assert_eq!(search.search("rust".into()).await?, vec![1, 2]);
    assert_eq!(search.calls.get(), 3, "a non-empty one is stored");
    assert_eq!(count(&pool, "search").await, 1);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn compute_times_are_recorded_and_hits_count_what_they_saved(pool: PgPool) -> TestResult {
    struct Slow {
        cache: PgCache,
    }
    impl Slow {
        #[pg_cached(cache = self.cache, namespace = "slow", ttl = "1h")]
        async fn compute(&self, x: u32) -> u32 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            x
        }
    }
    let slow = Slow { cache: cache_on(pool.clone()).await };
    slow.compute(1).await;
    let compute_us: i64 = sqlx::query_scalar("SELECT compute_us FROM cache_entries").fetch_one(&pool).await?;
    assert!(compute_us >= 50_000, "{compute_us}");
    assert_eq!(slow.cache.process_stats().compute_saved_us, 0, "a miss saves nothing");
    slow.compute(1).await;
    slow.compute(1).await;
    let saved = slow.cache.process_stats().compute_saved_us;
    assert_eq!(saved, 2 * compute_us.unsigned_abs(), "each hit saved the recorded compute time");
    let stats = slow.cache.stats().await?;
    let ns = stats.namespace("slow").expect("the namespace has rows");
    assert_eq!(ns.compute_held_us, compute_us.unsigned_abs());
    assert_eq!(ns.process.compute_saved(), Duration::from_micros(saved));
    // Plain sets carry no compute time.
    slow.cache.set("plain:x", &1, None).await?;
    assert_eq!(slow.cache.stats().await?.namespace("plain").map(|n| n.compute_held_us), Some(0));
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn an_invalid_dynamic_tag_leaves_the_result_unstored(pool: PgPool) -> TestResult {
    struct Bad {
        cache: PgCache,
    }
    impl Bad {
        #[pg_cached(cache = self.cache, namespace = "inner", ttl = "1h")]
        async fn inner(&self) -> u32 {
            cache_runtime::tag("bad\0tag");
            1
        }
        #[pg_cached(cache = self.cache, namespace = "outer", ttl = "1h")]
        async fn outer(&self) -> u32 {
            self.inner().await + 1
        }
    }
    let bad = Bad { cache: cache_on(pool.clone()).await };
    assert_eq!(bad.outer().await, 2, "the caller gets its value");
    assert_eq!(count(&pool, "inner").await + count(&pool, "outer").await, 0, "neither is stored");
    assert!(bad.cache.process_stats().errors >= 2);
    // `tag` outside a memoized body does nothing.
    cache_runtime::tag("anything");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn the_trigger_works_for_a_role_without_cache_rights_and_another_search_path(pool: PgPool) -> TestResult {
    // The application's role may change the source table without any right on the cache's tables, and its
    // session may use another search_path: the trigger runs as the cache's owner, with the migration's path.
    let rag = Rag::new(pool.clone()).await?;
    rag.cache.invalidate_on_change("documents", "id", "doc:").await?;
    rag.answer("python".into()).await?;
    assert_eq!(entries(&pool).await.len(), 2);

    let database: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&pool).await?;
    // Roles belong to the whole server, which other tests share: one name per test database.
    let role =
        format!("writer_{:x}", database.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
    sqlx::raw_sql(&format!(
        "CREATE ROLE {role} LOGIN; GRANT SELECT, UPDATE ON documents TO {role}; CREATE SCHEMA elsewhere;"
    ))
    .execute(&pool)
    .await?;
    let as_writer = pool.connect_options().as_ref().clone().username(&role);
    let mut writer = sqlx::PgConnection::connect_with(&as_writer).await?;
    let denied = sqlx::query("SELECT count(*) FROM public.cache_entries").execute(&mut writer).await;
    assert!(denied.is_err(), "the writer has no right on the cache table");
    sqlx::raw_sql("SET search_path = elsewhere; UPDATE public.documents SET body = 'python 3' WHERE id = 3")
        .execute(&mut writer)
        .await?;
    writer.close().await?;
    assert!(entries(&pool).await.is_empty(), "the writer's update invalidated the entries");
    sqlx::raw_sql(&format!("REVOKE ALL ON documents FROM {role}; DROP ROLE {role};")).execute(&pool).await?;
    Ok(())
}
