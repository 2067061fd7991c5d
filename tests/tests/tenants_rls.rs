//! Row-level security by tenant (`PgCache::enable_tenant_isolation`) with real roles: a role whose
//! `pg_cached.tenant` names one tenant reads, writes and deletes only that tenant's rows, through the cache's
//! functions as through plain SQL, even when it asks for another tenant's exact key; a role without the
//! setting sees only rows of no tenant; the owner keeps seeing and purging everything.

use cache_runtime::{tenant, CacheError, PgCache, Ttl};
use integration_tests::cache_on;
use integration_tests::roles::TestRole;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A cache used as `role`.
async fn cache_as(role: &TestRole) -> Result<PgCache, Box<dyn std::error::Error>> {
    let pool = PgPoolOptions::new().max_connections(2).connect_with(role.options()).await?;
    Ok(PgCache::builder().pool(pool).sweep_interval(None).build().await?)
}

/// The rows of `cache_entries` that `role` sees.
async fn visible(role: &TestRole) -> Result<i64, sqlx::Error> {
    let mut conn = role.connect().await?;
    sqlx::query_scalar("SELECT count(*) FROM cache_entries").fetch_one(&mut conn).await
}

/// Whether `result` is PostgreSQL's refusal of a row by a policy (42501).
fn refused<T: std::fmt::Debug>(result: Result<T, CacheError>) -> bool {
    match result {
        Err(error) => error.sqlstate() == Some("42501"),
        Ok(value) => panic!("expected a refusal by row-level security, got {value:?}"),
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn each_role_reads_and_writes_only_its_tenant(pool: PgPool) -> TestResult {
    let owner = cache_on(pool.clone()).await;
    owner.enable_tenant_isolation().await?;
    owner.enable_tenant_isolation().await?; // it can be run again
    let (acme, globex, plain) = (
        TestRole::create(&pool, "acme").await?,
        TestRole::create(&pool, "globex").await?,
        TestRole::create(&pool, "plain").await?,
    );
    for (role, id) in [(&acme, Some("acme")), (&globex, Some("globex")), (&plain, None)] {
        owner.grant(&role.name).await?;
        if let Some(id) = id {
            sqlx::raw_sql(&format!("ALTER ROLE {} SET pg_cached.tenant = '{id}'", role.name)).execute(&pool).await?;
        }
    }
    let (as_acme, as_globex, as_plain) = (cache_as(&acme).await?, cache_as(&globex).await?, cache_as(&plain).await?);

    tenant("acme", as_acme.set("answer:q1", &"acme's", Ttl::Default)).await?;
    tenant("globex", as_globex.set("answer:q1", &"globex's", Ttl::Default)).await?;
    owner.set("answer:q1", &"shared", Ttl::Default).await?;
    assert_eq!(tenant("acme", as_acme.get::<String>("answer:q1")).await?.as_deref(), Some("acme's"));

    // globex's role asks for acme's exact key (in acme's scope): the policy hides the row.
    assert_eq!(tenant("acme", as_globex.get::<String>("answer:q1")).await?, None);
    assert!(!tenant("acme", as_globex.delete("answer:q1")).await?, "it cannot delete what it cannot see");
    assert!(refused(tenant("acme", as_globex.set("answer:q2", &"forged", Ttl::Default)).await));
    assert!(refused(as_globex.set("answer:q3", &"no tenant", Ttl::Default).await), "nor write rows of no tenant");
    assert_eq!(as_globex.get::<String>("answer:q1").await?, None, "nor read them");
    assert_eq!(tenant("acme", as_acme.get::<String>("answer:q1")).await?.as_deref(), Some("acme's"));

    // Plain SQL sees the same: each role its tenant's row; a role without the setting, rows of no tenant.
    assert_eq!((visible(&acme).await?, visible(&globex).await?, visible(&plain).await?), (1, 1, 1));
    assert_eq!(as_plain.get::<String>("answer:q1").await?.as_deref(), Some("shared"));
    assert_eq!(tenant("acme", as_plain.get::<String>("answer:q1")).await?, None);

    // The owner is not subject to the policies: it sees and purges every tenant.
    let policies: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_policies WHERE policyname = 'pg_cached_tenant'")
        .fetch_one(&pool)
        .await?;
    assert_eq!(policies, 2, "cache_entries and cache_semantic");
    assert_eq!(tenant("globex", owner.get::<String>("answer:q1")).await?.as_deref(), Some("globex's"));
    assert_eq!(owner.delete_tenant("acme").await?, 1);
    assert_eq!(visible(&acme).await?, 0);
    assert_eq!(visible(&globex).await?, 1);

    drop((as_acme, as_globex, as_plain));
    for role in [acme, globex, plain] {
        role.drop_role().await?;
    }
    Ok(())
}
