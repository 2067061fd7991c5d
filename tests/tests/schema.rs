//! The schema as `PgCache::migrate` leaves it: the migrations' tables, and exactly the SQL functions of
//! `migrations/functions.sql`, applied under a stored version that an older build never goes back on.
//! Each test gets a fresh database.

use cache_runtime::{PgCache, FUNCTIONS_VERSION};
use integration_tests::cache_on;
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use std::borrow::Cow;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const FUNCTIONS_SQL: &str = include_str!("../../migrations/functions.sql");

/// A function as it is defined: its name, its arguments as `pg_get_function_identity_arguments` prints them,
/// and its body.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Function {
    name: String,
    arguments: String,
    body: String,
}

/// The functions `functions.sql` defines, read from its `CREATE OR REPLACE FUNCTION` statements (each body
/// between `AS $$` and `$$`; parameter types spelled as PostgreSQL prints them).
fn defined_in_file() -> Vec<Function> {
    let mut functions: Vec<Function> = FUNCTIONS_SQL
        .split("\nCREATE OR REPLACE FUNCTION ")
        .skip(1)
        .map(|statement| {
            let open = statement.find('(').expect("a parameter list");
            let close = open + closing_paren(&statement[open..]);
            let arguments: Vec<String> = top_level_items(&statement[open + 1..close])
                .iter()
                .map(|parameter| {
                    let words: Vec<&str> = parameter.split_whitespace().take_while(|w| *w != "DEFAULT").collect();
                    words.join(" ")
                })
                .collect();
            let body_start = statement.find("AS $$").expect("a $$ body") + "AS $$".len();
            let body_end = body_start + statement[body_start..].find("$$").expect("the end of the body");
            Function {
                name: statement[..open].trim().to_owned(),
                arguments: arguments.join(", "),
                body: statement[body_start..body_end].to_owned(),
            }
        })
        .collect();
    functions.sort();
    functions
}

/// The offset of the `)` that closes the `(` at the start of `text`.
fn closing_paren(text: &str) -> usize {
    let mut depth = 0;
    for (at, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 1 => return at,
            ')' => depth -= 1,
            _ => {}
        }
    }
    panic!("unbalanced parentheses in {text:?}")
}

/// `text` split at the commas outside parentheses.
fn top_level_items(text: &str) -> Vec<String> {
    let (mut items, mut current, mut depth) = (Vec::new(), String::new(), 0);
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items.into_iter().map(|item| item.trim().to_owned()).filter(|item| !item.is_empty()).collect()
}

/// The cache's functions in the database (every `pg_cached_*` function of the schema of `cache_entries`).
async fn in_database(pool: &PgPool) -> Result<Vec<Function>, sqlx::Error> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT p.proname::text, pg_get_function_identity_arguments(p.oid), p.prosrc FROM pg_proc AS p \
         WHERE p.pronamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'cache_entries'::regclass) \
           AND p.proname LIKE 'pg\\_cached\\_%' ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    let mut functions: Vec<Function> =
        rows.into_iter().map(|(name, arguments, body)| Function { name, arguments, body }).collect();
    functions.sort();
    Ok(functions)
}

/// How the database's functions differ from the file's, one line per difference (none: they match).
/// Privileges too: PUBLIC may execute none of them, and only the trigger functions and the listeners'
/// registration run as their owner.
async fn drift(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let file = defined_in_file();
    let database = in_database(pool).await?;
    let signature = |f: &Function| format!("{}({})", f.name, f.arguments);
    let mut differences = Vec::new();
    for function in &file {
        match database.iter().find(|d| signature(d) == signature(function)) {
            None => differences.push(format!("missing from the database: {}", signature(function))),
            Some(found) if found.body != function.body => {
                differences.push(format!("body differs from functions.sql: {}", signature(function)));
            }
            Some(_) => {}
        }
    }
    for function in &database {
        if !file.iter().any(|f| signature(f) == signature(function)) {
            differences.push(format!("not in functions.sql (left behind?): {}", signature(function)));
        }
    }
    let loose: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc AS p \
         WHERE p.proname LIKE 'pg\\_cached\\_%' AND (p.proacl IS NULL OR EXISTS \
           (SELECT 1 FROM aclexplode(p.proacl) AS a WHERE a.grantee = 0) \
           OR p.prosecdef <> (p.proname IN ('pg_cached_invalidation_trigger', 'pg_cached_flush_invalidations', \
                                             'pg_cached_register_listener'))) ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    differences.extend(loose.into_iter().map(|f| format!("executable by PUBLIC, or SECURITY DEFINER amiss: {f}")));
    Ok(differences)
}

async fn stored_version(pool: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT functions_version FROM cache_schema").fetch_one(pool).await
}

#[test]
fn the_file_is_read_as_postgresql_prints_it() {
    let functions = defined_in_file();
    assert_eq!(functions.len(), FUNCTIONS_SQL.matches("\nCREATE OR REPLACE FUNCTION ").count());
    let lock = functions.iter().find(|f| f.name == "pg_cached_lock_many").expect("the lock helper");
    assert_eq!(lock.arguments, "p_class text, p_names text[], p_shared boolean");
    assert!(lock.body.starts_with("\nDECLARE") && lock.body.ends_with("END "), "{:?}", lock.body);
}

#[sqlx::test(migrations = false)]
async fn a_migrated_database_holds_exactly_the_functions_of_functions_sql(pool: PgPool) -> TestResult {
    cache_on(pool.clone()).await.migrate().await?;
    assert_eq!(drift(&pool).await?, Vec::<String>::new());
    assert_eq!(stored_version(&pool).await?, FUNCTIONS_VERSION);
    // Idempotent: a second run changes nothing.
    cache_on(pool.clone()).await.migrate().await?;
    assert_eq!(drift(&pool).await?, Vec::<String>::new());
    Ok(())
}

#[sqlx::test(migrations = false)]
async fn a_function_edited_in_the_database_or_left_behind_is_caught(pool: PgPool) -> TestResult {
    cache_on(pool.clone()).await.migrate().await?;
    sqlx::raw_sql(
        "CREATE OR REPLACE FUNCTION pg_cached_lock_class(p_class text) RETURNS integer \
         LANGUAGE sql IMMUTABLE AS $$ SELECT 0 $$; \
         CREATE FUNCTION pg_cached_stray() RETURNS void LANGUAGE sql AS $$ SELECT $$; \
         REVOKE EXECUTE ON FUNCTION pg_cached_stray() FROM PUBLIC; \
         GRANT EXECUTE ON FUNCTION pg_cached_delete(text, text, text, boolean, text) TO PUBLIC;",
    )
    .execute(&pool)
    .await?;
    assert_eq!(
        drift(&pool).await?,
        [
            "body differs from functions.sql: pg_cached_lock_class(p_class text)",
            "not in functions.sql (left behind?): pg_cached_stray()",
            "executable by PUBLIC, or SECURITY DEFINER amiss: pg_cached_delete(text,text,text,boolean,text)",
        ]
    );
    Ok(())
}

/// Migrations up to `version` only, as a database of an earlier release holds them.
fn migrator_up_to(version: i64) -> Migrator {
    let migrations: Vec<_> = cache_runtime::MIGRATOR.iter().filter(|m| m.version <= version).cloned().collect();
    Migrator { migrations: Cow::Owned(migrations), ..Migrator::DEFAULT }
}

#[sqlx::test(migrations = false)]
async fn a_database_of_the_previous_release_upgrades_and_its_calls_keep_working(pool: PgPool) -> TestResult {
    // The previous release: migrations 1-5, which defined the functions (and the wrappers of the release
    // before it), each executable by PUBLIC.
    migrator_up_to(5).run(&pool).await?;
    cache_on(pool.clone()).await.migrate().await?;
    assert_eq!(drift(&pool).await?, Vec::<String>::new(), "superseded functions are dropped, none is left behind");

    // The previous release's statements, positional, as its sql.rs sent them.
    let written: bool = sqlx::query_scalar(
        "SELECT pg_cached_write_entry($1, $2::jsonb, $3, $4, $5, $6, $7, $8, $9, $10::text[], $11, $12)",
    )
    .bind("old:1")
    .bind("1")
    .bind(60_000_i64)
    .bind(0_i64)
    .bind(None::<i64>)
    .bind("old")
    .bind("0000000000000000|k|1")
    .bind("1000")
    .bind(true)
    .bind(vec!["doc:1".to_owned()])
    .bind(Some(5_i64))
    .bind(None::<String>)
    .fetch_one(&pool)
    .await?;
    assert!(written);
    let many: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_cached_write_entries($1::text[], $2::text[]::jsonb[], $3::bigint[], $4::bigint[], \
         $5::bigint[], $6::text[], $7, $8, $9, $10::text[], $11::bigint[], $12::text[])",
    )
    .bind(vec!["old:2", "old:3"])
    .bind(vec!["2", "3"])
    .bind(vec![Some(60_000_i64), None])
    .bind(vec![0_i64, 0])
    .bind(vec![None::<i64>, None])
    .bind(vec!["old", "old"])
    .bind("0000000000000000|k|2")
    .bind("1000")
    .bind(false)
    .bind(vec![None::<String>, Some("doc:1".to_owned())])
    .bind(vec![None::<i64>, None])
    .bind(vec![None::<String>, None])
    .fetch_one(&pool)
    .await?;
    assert_eq!(many, [true, true]);
    let tagged: i64 = sqlx::query_scalar("SELECT pg_cached_invalidate_tags($1::text[], $2, $3)")
        .bind(vec!["doc:1"])
        .bind("0000000000000000")
        .bind("1000")
        .fetch_one(&pool)
        .await?;
    assert_eq!(tagged, 2);
    let deleted: i64 = sqlx::query_scalar("SELECT pg_cached_delete($1, $2, $3)")
        .bind("old:2")
        .bind("x")
        .bind("1000")
        .fetch_one(&pool)
        .await?;
    let deleted_many: Vec<i64> = sqlx::query_scalar("SELECT pg_cached_delete_many($1::text[], $2, $3)")
        .bind(vec!["old:9"])
        .bind("x")
        .bind("1000")
        .fetch_one(&pool)
        .await?;
    sqlx::query("SELECT pg_cached_mark_namespace($1, $2, $3)::text")
        .bind("old")
        .bind("x")
        .bind("1000")
        .execute(&pool)
        .await?;
    assert_eq!((deleted, deleted_many), (1, vec![0]));
    Ok(())
}

#[sqlx::test(migrations = false)]
async fn an_older_build_never_replaces_newer_functions(pool: PgPool) -> TestResult {
    cache_on(pool.clone()).await.migrate().await?;
    // What a newer release would have left: a later version, and a body this build does not know.
    let newer = FUNCTIONS_VERSION + 1;
    sqlx::raw_sql(&format!(
        "UPDATE cache_schema SET functions_version = {newer}; \
         CREATE OR REPLACE FUNCTION pg_cached_lock_class(p_class text) RETURNS integer \
         LANGUAGE sql IMMUTABLE AS $$ SELECT 1885430593 + 0 $$;"
    ))
    .execute(&pool)
    .await?;
    cache_on(pool.clone()).await.migrate().await?;
    let body: String = sqlx::query_scalar("SELECT prosrc FROM pg_proc WHERE proname = 'pg_cached_lock_class'")
        .fetch_one(&pool)
        .await?;
    assert_eq!(body.trim(), "SELECT 1885430593 + 0", "the newer body stays");
    assert_eq!(stored_version(&pool).await?, newer);

    // By hand (psql), the file refuses, and changes nothing.
    let refused = sqlx::raw_sql(FUNCTIONS_SQL).execute(&pool).await.expect_err("functions.sql refuses to downgrade");
    assert!(refused.to_string().contains("newer than this file"), "{refused}");
    assert_eq!(stored_version(&pool).await?, newer);
    Ok(())
}

#[sqlx::test(migrations = false)]
async fn migrations_of_a_newer_release_do_not_stop_an_older_build(pool: PgPool) -> TestResult {
    cache_on(pool.clone()).await.migrate().await?;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', true, '\\x00', 1)",
    )
    .execute(&pool)
    .await?;
    cache_on(pool.clone()).await.migrate().await?;
    assert_eq!(drift(&pool).await?, Vec::<String>::new());
    Ok(())
}

#[sqlx::test(migrations = false)]
async fn several_processes_may_migrate_at_once(pool: PgPool) -> TestResult {
    let mut caches = Vec::new();
    for _ in 0..6 {
        let own_pool = integration_tests::memo::second_pool(&pool).await;
        caches.push(PgCache::builder().pool(own_pool).sweep_interval(None).build().await?);
    }
    let mut migrations = tokio::task::JoinSet::new();
    for cache in caches {
        migrations.spawn(async move { cache.migrate().await });
    }
    while let Some(migrated) = migrations.join_next().await {
        migrated??;
    }
    assert_eq!(drift(&pool).await?, Vec::<String>::new());
    assert_eq!(stored_version(&pool).await?, FUNCTIONS_VERSION);
    Ok(())
}
