//! No way in through the cache (issue 22, "High"): a role that may only connect can run none of the cache's
//! functions and gets nothing done as the cache's owner; a granted role can do everything the cache does
//! (a reader, only read); the invalidation trigger evaluates nothing the table's owner could choose, and
//! makes the same tags in every session. Each test gets a fresh database and creates its own roles.

use cache_runtime::{pg_cached, CacheError, HealthStatus, PgCache, PgCacheBuilder};
use integration_tests::roles::TestRole;
use integration_tests::{cache_on, listening, within, Calls, GENEROUS_OP_TIMEOUT};
use sqlx::{PgConnection, PgPool};
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TTL: Option<Duration> = Some(Duration::from_secs(600));

/// Whether `result` failed with PostgreSQL's "permission denied" (42501).
fn denied<T: std::fmt::Debug>(result: Result<T, sqlx::Error>) -> bool {
    match result {
        Err(sqlx::Error::Database(db)) => db.code().as_deref() == Some("42501"),
        other => panic!("expected permission denied, got {other:?}"),
    }
}

/// The SQLSTATE of a failed cache operation.
fn sqlstate(result: Result<impl std::fmt::Debug, CacheError>) -> String {
    match result {
        Err(error) if error.sqlstate().is_some() => error.sqlstate().unwrap_or_default().to_owned(),
        other => panic!("expected a database error, got {other:?}"),
    }
}

/// A cache connected as `role`, without a sweeper, patient with a loaded machine.
fn connected_as(role: &TestRole) -> PgCacheBuilder {
    PgCache::builder().connect_options(role.options()).op_timeout(GENEROUS_OP_TIMEOUT).sweep_interval(None)
}

async fn run(connection: &mut PgConnection, statements: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(statements).execute(connection).await.map(drop)
}

/// The attacker's tools of issue 22: a composite type in pg_temp whose cast to text is the attacker's own
/// function, which records who it ran as (and, run as a superuser, would have made the attacker one).
async fn arm_the_cast(connection: &mut PgConnection, attacker: &str) -> Result<(), sqlx::Error> {
    run(
        connection,
        &format!(
            "CREATE TYPE pg_temp.evil AS (a int); \
             CREATE FUNCTION pg_temp.evil_text(pg_temp.evil) RETURNS text LANGUAGE plpgsql AS $$ BEGIN \
               PERFORM set_config('pgc.ran_as', current_user, false); \
               IF current_user <> '{attacker}' THEN EXECUTE 'ALTER ROLE {attacker} SUPERUSER'; END IF; \
               RETURN 'x'; END $$; \
             CREATE CAST (pg_temp.evil AS text) WITH FUNCTION pg_temp.evil_text(pg_temp.evil);"
        ),
    )
    .await
}

/// Who the attacker's cast function ran as in this session ("" if it never ran), and whether the attacker
/// is a superuser now.
async fn escalation(connection: &mut PgConnection, attacker: &str) -> Result<(String, bool), sqlx::Error> {
    sqlx::query_as(
        "SELECT coalesce(current_setting('pgc.ran_as', true), ''), rolsuper FROM pg_roles WHERE rolname = $1",
    )
    .bind(attacker)
    .fetch_one(connection)
    .await
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_role_that_may_only_connect_can_run_no_cache_function(pool: PgPool) -> TestResult {
    let owner = cache_on(pool.clone()).await;
    owner.set_tagged("other:1", &1, TTL, &["doc:7"]).await?;
    let outsider = TestRole::create(&pool, "outsider").await?;
    let executable: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc AS p \
         WHERE p.proname LIKE 'pg\\_cached\\_%' AND has_function_privilege($1, p.oid, 'EXECUTE')",
    )
    .bind(&outsider.name)
    .fetch_all(&pool)
    .await?;
    assert_eq!(executable, Vec::<String>::new());
    let functions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_proc WHERE proname LIKE 'pg\\_cached\\_%' AND has_function_privilege(oid, 'EXECUTE')",
    )
    .fetch_one(&pool)
    .await?;
    assert!(functions >= 15, "the owner keeps every function ({functions})");

    // Neither directly, nor through a trigger of its own, nor through the tables: other namespaces' entries stay.
    let mut conn = outsider.connect().await?;
    assert!(denied(run(&mut conn, "SELECT pg_cached_invalidate_tags(ARRAY['doc:7'])").await));
    assert!(denied(run(&mut conn, "SELECT pg_cached_delete('other:1', 'x', '100')").await));
    assert!(denied(run(&mut conn, "SELECT pg_cached_mark_namespace('other', 'x', '100')").await));
    assert!(denied(run(&mut conn, "DELETE FROM cache_entries").await));
    assert!(denied(run(&mut conn, "SELECT count(*) FROM cache_entries").await));
    // The snapshot-isolation queue (migration 0012, functions v5): neither its functions nor its table, nor
    // the notes the trigger's deferred flush reads (which would let it queue or flush tags of its choosing).
    assert!(denied(run(&mut conn, "SELECT pg_cached_queue_invalidation(ARRAY['doc:7'])").await));
    assert!(denied(run(&mut conn, "SELECT pg_cached_drain_invalidations()").await));
    assert!(denied(run(&mut conn, "SELECT pg_cached_notify_tags(ARRAY['doc:7'], NULL)").await));
    assert!(denied(run(&mut conn, "INSERT INTO cache_deferred_invalidations (tags) VALUES ('{doc:7}')").await));
    assert!(denied(run(&mut conn, "SELECT count(*) FROM cache_deferred_invalidations").await));
    assert!(denied(
        run(&mut conn, "INSERT INTO cache_pending_invalidations (xact, tag) VALUES (pg_current_xact_id(), 'doc:7')")
            .await
    ));
    assert!(denied(run(&mut conn, "INSERT INTO cache_pending_flushes (xact) VALUES (pg_current_xact_id())").await));
    run(&mut conn, "CREATE TEMP TABLE t (id int, k text); INSERT INTO t VALUES (1, '7')").await?;
    assert!(denied(run(&mut conn, "SELECT pg_cached_invalidate_on_change('pg_temp.t', 'k', 'doc:')").await));
    assert!(denied(
        run(
            &mut conn,
            "CREATE TRIGGER by_hand AFTER UPDATE OR DELETE ON t FOR EACH ROW \
             EXECUTE FUNCTION pg_cached_invalidation_trigger('k', 'doc:')"
        )
        .await
    ));
    run(&mut conn, "DELETE FROM t").await?;
    drop(conn);
    assert_eq!(owner.get::<i32>("other:1").await?, Some(1));
    outsider.drop_role().await?;
    Ok(())
}

/// The attack of issue 22, as written there. On the code before this change it made the attacker a
/// superuser (reproduced by hand: `pg-cached` migrations 1-5, a role with CONNECT and TEMP, then these
/// statements; `rolsuper` was true after the UPDATE). Now the first step is refused.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn the_composite_cast_attack_runs_nothing_as_the_owner(pool: PgPool) -> TestResult {
    let owner = cache_on(pool.clone()).await;
    let attacker = TestRole::create(&pool, "attacker").await?;
    let mut conn = attacker.connect().await?;
    arm_the_cast(&mut conn, &attacker.name).await?;
    run(&mut conn, "CREATE TEMP TABLE t (id int, b pg_temp.evil); INSERT INTO t VALUES (1, ROW(1))").await?;
    assert!(denied(run(&mut conn, "SELECT pg_cached_invalidate_on_change('pg_temp.t', 'b', 'doc:')").await));
    run(&mut conn, "UPDATE t SET id = 2").await?;
    assert_eq!(escalation(&mut conn, &attacker.name).await?, (String::new(), false));

    // The cache's owner cannot be talked into installing the trigger on the attacker's table either: a
    // temporary table of another session is refused whatever its column.
    let temp_schema: String =
        sqlx::query_scalar("SELECT pg_my_temp_schema()::regnamespace::text").fetch_one(&mut conn).await?;
    let refused = owner.invalidate_on_change(&format!("{temp_schema}.t"), "id", "doc:").await;
    assert_eq!(sqlstate(refused), "42501");
    drop(conn);
    attacker.drop_role().await?;
    Ok(())
}

/// A granted writer may install the trigger on its own table; changing the column's type afterwards, or
/// attaching the trigger by hand to a column of its own type, only makes the change fail: the cast never
/// runs as the owner.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_writer_cannot_make_the_trigger_run_its_code(pool: PgPool) -> TestResult {
    let owner = cache_on(pool.clone()).await;
    let writer = TestRole::create(&pool, "writer").await?;
    owner.grant(&writer.name).await?;
    let mut conn = writer.connect().await?;
    arm_the_cast(&mut conn, &writer.name).await?;
    run(&mut conn, "CREATE TEMP TABLE t (id int, b int); INSERT INTO t VALUES (1, 7)").await?;
    run(&mut conn, "SELECT pg_cached_invalidate_on_change('pg_temp.t', 'b', 'doc:')").await?;
    run(&mut conn, "UPDATE t SET id = 2").await?;
    run(&mut conn, "ALTER TABLE t ALTER COLUMN b TYPE pg_temp.evil USING ROW(b)").await?;
    let changed = run(&mut conn, "UPDATE t SET id = 3").await;
    assert!(changed.is_err_and(|e| e.to_string().contains("cannot name cache tags")));
    run(&mut conn, "SELECT pg_cached_remove_invalidate_on_change('pg_temp.t')").await?;
    run(
        &mut conn,
        "CREATE TRIGGER by_hand AFTER UPDATE ON t FOR EACH ROW EXECUTE FUNCTION pg_cached_invalidation_trigger('b', 'x:')",
    )
    .await?;
    assert!(run(&mut conn, "UPDATE t SET id = 4").await.is_err());
    assert_eq!(escalation(&mut conn, &writer.name).await?, (String::new(), false));
    // And it cannot grant itself (or anyone) more.
    assert!(denied(run(&mut conn, &format!("SELECT pg_cached_grant('{}')", writer.name)).await));
    drop(conn);
    writer.drop_role().await?;
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn only_columns_of_safe_built_in_types_can_name_tags(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    sqlx::raw_sql(
        "CREATE DOMAIN positive AS int CHECK (VALUE > 0); CREATE TYPE mood AS ENUM ('ok'); \
         CREATE TYPE pair AS (a int, b int); \
         CREATE TABLE typed (t text, v varchar(9), c char(3), n name, i2 smallint, i4 integer, i8 bigint, \
           num numeric(9, 2), b boolean, u uuid, d date, ts timestamp, tz timestamptz, \
           f8 double precision, f4 real, j jsonb, arr int[], dom positive, e mood, p pair, iv interval, \
           tt timetz, m money, by bytea)",
    )
    .execute(&pool)
    .await?;
    for column in ["t", "v", "c", "n", "i2", "i4", "i8", "num", "b", "u", "d", "ts", "tz"] {
        cache.invalidate_on_change("typed", column, &format!("{column}:")).await?;
    }
    for column in ["f8", "f4", "j", "arr", "dom", "e", "p", "iv", "tt", "m", "by"] {
        match cache.invalidate_on_change("typed", column, "x:").await {
            Err(CacheError::InvalidIdentifier { what: "column", name, reason }) => {
                assert_eq!(name, column);
                assert!(reason.contains("cannot name cache tags"), "{reason}");
            }
            other => panic!("column {column}: {other:?}"),
        }
    }
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn trigger_tags_are_the_same_whatever_the_session_settings(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    sqlx::raw_sql(
        "CREATE TABLE events (id int, day date, at timestamptz, local timestamp, price numeric, done boolean); \
         INSERT INTO events VALUES (1, '2024-03-05', '2024-03-05 06:07:08.5+00', '2024-03-05 06:07:08', 12.50, true)",
    )
    .execute(&pool)
    .await?;
    let tags =
        ["day:2024-03-05", "at:2024-03-05 06:07:08.5+00", "local:2024-03-05 06:07:08", "price:12.50", "done:true"];
    for (column, prefix) in
        [("day", "day:"), ("at", "at:"), ("local", "local:"), ("price", "price:"), ("done", "done:")]
    {
        cache.invalidate_on_change("events", column, prefix).await?;
    }
    for (i, tag) in tags.iter().enumerate() {
        cache.set_tagged(&format!("e:{i}"), &i, TTL, &[*tag]).await?;
    }
    let mut session = integration_tests::memo::second_pool(&pool).await.acquire().await?.detach();
    run(
        &mut session,
        "SET DateStyle = 'SQL, DMY'; SET TimeZone = 'America/New_York'; SET IntervalStyle = 'sql_standard'; \
         SET extra_float_digits = -15",
    )
    .await?;
    let seen_here: String = sqlx::query_scalar("SELECT at::text FROM events").fetch_one(&mut session).await?;
    assert_ne!(seen_here, "2024-03-05 06:07:08.5+00", "the session itself prints it differently");
    run(&mut session, "UPDATE events SET id = 2").await?;
    for (i, tag) in tags.iter().enumerate() {
        assert_eq!(cache.get::<usize>(&format!("e:{i}")).await?, None, "tag {tag}");
    }
    Ok(())
}

/// Finding 4 of issue 22, its long-value part: a value too long to make a tag the runtime accepts (which
/// the trigger used to reject with an error) no longer blocks the change.
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_value_too_long_for_a_tag_does_not_block_the_change(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    sqlx::raw_sql(
        "CREATE TABLE notes (id int, title text); INSERT INTO notes VALUES (1, 'short'), (2, repeat('é', 990))",
    )
    .execute(&pool)
    .await?;
    cache.invalidate_on_change("notes", "title", "title:").await?;
    cache.set_tagged("n:short", &1, TTL, &["title:short"]).await?;
    sqlx::query("UPDATE notes SET id = id + 10").execute(&pool).await?;
    assert_eq!(cache.get::<i32>("n:short").await?, None, "the short value's tag is still invalidated");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn only_the_table_owner_or_the_cache_owner_manages_its_triggers(pool: PgPool) -> TestResult {
    let owner = cache_on(pool.clone()).await;
    let writer = TestRole::create(&pool, "trigwriter").await?;
    let table_owner = TestRole::create(&pool, "tableowner").await?;
    owner.grant(&writer.name).await?;
    sqlx::raw_sql(&format!(
        "CREATE TABLE docs (id int); ALTER TABLE docs OWNER TO {t}; GRANT TRIGGER ON docs TO {w}",
        t = table_owner.name,
        w = writer.name
    ))
    .execute(&pool)
    .await?;
    // The writer may create triggers on docs as far as PostgreSQL goes, but does not own it.
    let mut conn = writer.connect().await?;
    assert!(denied(run(&mut conn, "SELECT pg_cached_invalidate_on_change('docs', 'id', 'doc:')").await));
    // The cache's owner may.
    owner.invalidate_on_change("docs", "id", "doc:").await?;
    assert!(denied(run(&mut conn, "SELECT pg_cached_remove_invalidate_on_change('docs')").await));
    assert_eq!(owner.remove_invalidate_on_change("docs").await?, 1);
    drop(conn);
    writer.drop_role().await?;
    table_owner.drop_role().await?;
    Ok(())
}

/// A service's memoized functions, run by a cache connected as the granted role.
struct App {
    cache: PgCache,
    runs: Calls,
}

impl App {
    #[pg_cached(cache = self.cache, namespace = "app", ttl = "1h", tags("corpus"))]
    async fn square(&self, x: u64) -> u64 {
        self.runs.bump();
        x * x
    }

    #[pg_cached(cache = self.cache, namespace = "leased", ttl = "1h", single_flight = "cluster")]
    async fn leased(&self, x: u64) -> u64 {
        self.runs.bump();
        x + 1
    }
}

#[sqlx::test(migrations = false)]
async fn a_granted_role_can_do_everything_the_cache_does(pool: PgPool) -> TestResult {
    let owner = cache_on(pool.clone()).await;
    owner.migrate().await?;
    let role = TestRole::create(&pool, "app").await?;
    let cache = connected_as(&role).local_tier(1_000, Duration::from_secs(60)).build().await?;
    assert_eq!(sqlstate(cache.set("plain:1", &1, TTL).await), "42501", "nothing before the grant");
    owner.grant(&role.name).await?;

    cache.set("plain:1", &1, TTL).await?;
    assert_eq!(cache.get::<i32>("plain:1").await?, Some(1));
    cache.set_many(&[("plain:2", 2), ("plain:3", 3)], TTL).await?;
    assert_eq!(cache.get_many::<i32>(&["plain:2", "plain:3"]).await?, [Some(2), Some(3)]);
    assert!(cache.delete("plain:1").await?);
    assert_eq!(cache.delete_many(&["plain:2"]).await?, 1);

    let errors = cache.process_stats().errors; // the refused set above counted one
    let app = App { cache: cache.clone(), runs: Calls::default() };
    assert_eq!((app.square(3).await, app.square(3).await, app.runs.get()), (9, 9, 1), "memoized");
    assert_eq!(cache.invalidate_tag("corpus").await?, 1);
    assert_eq!((app.leased(1).await, app.leased(1).await, app.runs.get()), (2, 2, 2), "cluster lease");
    assert_eq!(cache.process_stats().errors, errors, "no lookup, lease or write failed");
    assert_eq!(cache.delete_namespace("leased").await?, 1);
    assert_eq!(cache.keys(Some("plain:"), 10).await?, ["plain:3"]);
    cache.stats().await?;
    assert_eq!(cache.health_check().await.status, HealthStatus::Healthy);
    cache.sweep().await?;

    // Listening: another process's write reaches this one's in-process tier.
    listening(&cache).await;
    assert_eq!(cache.get::<i32>("plain:3").await?, Some(3));
    owner.set("plain:3", &33, TTL).await?;
    let heard =
        within(Duration::from_secs(10), async || cache.get::<i32>("plain:3").await.ok() == Some(Some(33))).await;
    assert!(heard.is_some(), "the tier dropped the key when told");

    // A trigger on a table of its own.
    sqlx::raw_sql(&format!("CREATE SCHEMA mine AUTHORIZATION {}", role.name)).execute(&pool).await?;
    let mut conn = role.connect().await?;
    run(&mut conn, "CREATE TABLE mine.docs (id int, body text); INSERT INTO mine.docs VALUES (1, 'a')").await?;
    cache.invalidate_on_change("mine.docs", "id", "doc:").await?;
    cache.set_tagged("answer:1", &1, TTL, &["doc:1"]).await?;
    run(&mut conn, "UPDATE mine.docs SET body = 'b'").await?;
    assert_eq!(owner.get::<i32>("answer:1").await?, None, "the row is gone");
    let dropped = within(Duration::from_secs(10), async || cache.get::<i32>("answer:1").await.ok() == Some(None)).await;
    assert!(dropped.is_some(), "and the tier was told");
    assert_eq!(cache.remove_invalidate_on_change("mine.docs").await?, 1);
    drop((conn, app, cache));
    role.drop_role().await?;
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_reader_reads_and_writes_nothing(pool: PgPool) -> TestResult {
    let owner = cache_on(pool.clone()).await;
    owner.set("plain:1", &1, TTL).await?;
    let role = TestRole::create(&pool, "reader").await?;
    owner.grant(&role.name).await?;
    owner.grant_reader(&role.name).await?; // a writer made a reader
    let cache = connected_as(&role).build().await?;
    assert_eq!(cache.get::<i32>("plain:1").await?, Some(1));
    assert_eq!(cache.keys(Some("plain:"), 10).await?, ["plain:1"]);
    assert_eq!(sqlstate(cache.set("plain:2", &2, TTL).await), "42501");
    assert_eq!(sqlstate(cache.delete("plain:1").await), "42501");
    assert_eq!(sqlstate(cache.invalidate_tag("doc:1").await), "42501");
    // Revoked, it reads nothing either.
    owner.revoke(&role.name).await?;
    assert_eq!(sqlstate(cache.get::<i32>("plain:1").await), "42501");
    drop(cache);
    role.drop_role().await?;
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn grants_name_one_existing_role(pool: PgPool) -> TestResult {
    let owner = cache_on(pool.clone()).await;
    for role in ["", "a\0b", "public", &"r".repeat(64), "pgc_no_such_role"] {
        match owner.grant(role).await {
            Err(CacheError::InvalidIdentifier { what: "role", name, .. }) => assert_eq!(name, role),
            other => panic!("{role:?}: {other:?}"),
        }
    }
    let public: bool = sqlx::query_scalar(
        "SELECT has_table_privilege('public', 'cache_entries', 'SELECT') \
             OR has_function_privilege('public', 'pg_cached_delete(text, text, text, boolean, text)', 'EXECUTE')",
    )
    .fetch_one(&pool)
    .await?;
    assert!(!public);
    Ok(())
}

/// A writer granted under one version of the functions keeps its rights on the functions a later version
/// adds (new functions start with no grant).
#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn writers_keep_their_rights_over_a_new_functions_version(pool: PgPool) -> TestResult {
    let owner = cache_on(pool.clone()).await;
    let writer = TestRole::create(&pool, "keeper").await?;
    owner.grant(&writer.name).await?;
    // As if pg_cached_lock_many were new in this version.
    sqlx::raw_sql(
        "DROP FUNCTION pg_cached_lock_many(text, text[], boolean) CASCADE; UPDATE cache_schema SET functions_version = 0",
    )
    .execute(&pool)
    .await?;
    owner.migrate().await?;
    let cache = connected_as(&writer).build().await?;
    cache.set("plain:1", &1, TTL).await?;
    assert_eq!(cache.get::<i32>("plain:1").await?, Some(1));
    drop(cache);
    writer.drop_role().await?;
    Ok(())
}
