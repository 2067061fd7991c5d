//! Bringing a database up to this build: the migrations (tables and indexes), then the SQL functions of
//! `migrations/functions.sql`.
//!
//! Tables change by append-only migrations, which sqlx checks by checksum. Functions are defined once, in
//! one file, and replaced as a whole: the file is applied in one transaction under an advisory lock (so that
//! processes migrating at once take turns) and records its version in `cache_schema`. A process whose
//! version is older than the recorded one leaves the functions alone, and one whose migrations are older than
//! the database's leaves the tables alone: during a rolling upgrade the processes of the previous release
//! keep starting, and never put back what the new one replaced. `functions.sql` keeps the previous release's
//! calls working (see its header).

use crate::error::{CacheError, Result};
use sqlx::{Executor, PgPool};

/// The functions, as `psql` users apply them too.
pub(crate) const FUNCTIONS_SQL: &str = include_str!("../../../migrations/functions.sql");

/// The version of the cache's SQL functions (`migrations/functions.sql`) this build applies, as
/// [`PgCache::migrate`](crate::PgCache::migrate) records it in the `cache_schema` table. A database that
/// holds a higher version was migrated by a newer release, and keeps its functions.
pub const FUNCTIONS_VERSION: i32 = 6;

/// The advisory lock class under which `functions.sql` is applied (its `'schema'` lock class).
const SCHEMA_LOCK_CLASS: i32 = 1_885_430_596;

/// Applies what the database lacks of this build's schema; see the module docs.
pub(crate) async fn migrate(pool: &PgPool) -> Result<()> {
    if migrated_by_a_newer_release(pool).await? {
        tracing::info!("the database holds migrations newer than this build: its tables are left as they are");
    } else {
        crate::MIGRATOR.run(pool).await?;
    }
    apply_functions(pool).await
}

/// Whether every migration of this build is applied and some migration it does not know is too. sqlx would
/// refuse to run (an applied migration missing from the build); there is nothing to do anyway.
async fn migrated_by_a_newer_release(pool: &PgPool) -> Result<bool> {
    let tracked: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(CacheError::db("migrate"))?;
    if !tracked {
        return Ok(false);
    }
    let applied: Vec<(i64, bool)> = sqlx::query_as("SELECT version, success FROM _sqlx_migrations")
        .fetch_all(pool)
        .await
        .map_err(CacheError::db("migrate"))?;
    let ours: Vec<i64> =
        crate::MIGRATOR.iter().filter(|m| !m.migration_type.is_down_migration()).map(|m| m.version).collect();
    let all_ours_applied = ours.iter().all(|v| applied.iter().any(|(version, success)| version == v && *success));
    let some_unknown = applied.iter().any(|(version, _)| !ours.contains(version));
    Ok(all_ours_applied && some_unknown)
}

/// Applies `functions.sql` unless the database already holds this version or a newer one.
async fn apply_functions(pool: &PgPool) -> Result<()> {
    let db = || CacheError::db("migrate");
    let mut tx = pool.begin().await.map_err(db())?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)").bind(SCHEMA_LOCK_CLASS).execute(&mut *tx).await.map_err(db())?;
    // Read after the lock: a process that applied the file meanwhile has committed its version.
    let stored: Option<i32> =
        sqlx::query_scalar("SELECT functions_version FROM cache_schema").fetch_optional(&mut *tx).await.map_err(db())?;
    match stored {
        Some(version) if version > FUNCTIONS_VERSION => {
            tracing::info!(
                stored = version,
                ours = FUNCTIONS_VERSION,
                "the database holds newer SQL functions than this build: they are kept"
            );
        }
        Some(FUNCTIONS_VERSION) => {}
        _ => {
            // A query without arguments goes out as one simple-protocol message: the whole file.
            tx.execute(FUNCTIONS_SQL).await.map_err(db())?;
            tx.commit().await.map_err(db())?;
            tracing::info!(version = FUNCTIONS_VERSION, "SQL functions applied");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// SHA-256 of `functions.sql` at [`FUNCTIONS_VERSION`]. A database that holds a version skips the file, so
    /// two different files under one version would leave some databases behind: when this test fails, bump
    /// the version (here and in the file), then record the new checksum.
    const FUNCTIONS_SHA256: &str = "501f3ffbe25fd70e174a3e1de580a7e63027788d1742aaa4c9196a4166440e6a";

    #[test]
    fn the_file_is_pinned_to_its_version() {
        let digest: String = Sha256::digest(FUNCTIONS_SQL.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(digest, FUNCTIONS_SHA256, "functions.sql changed: bump FUNCTIONS_VERSION and record its checksum");
    }

    #[test]
    fn the_file_carries_the_version_and_the_lock_class() {
        let version = FUNCTIONS_VERSION;
        for needle in [
            format!("Functions version {version}."),
            format!("FROM cache_schema) > {version} THEN"),
            format!("newer than this file ({version})"),
            format!("VALUES (true, {version})"),
            format!("pg_advisory_xact_lock({SCHEMA_LOCK_CLASS}, 0)"),
            format!("WHEN 'schema' THEN {SCHEMA_LOCK_CLASS}"),
        ] {
            assert!(FUNCTIONS_SQL.contains(&needle), "functions.sql lacks {needle:?}");
        }
    }

    #[test]
    fn sqlx_does_not_take_the_file_for_a_migration() {
        assert!(crate::MIGRATOR.iter().all(|m| !m.sql.contains("CREATE OR REPLACE FUNCTION pg_cached_lock(")));
    }

    #[test]
    fn the_trigger_skips_exactly_the_tags_the_runtime_refuses() {
        assert!(FUNCTIONS_SQL.contains(&format!("char_length(t) <= {}", crate::MAX_TAG_CHARS)));
    }
}
