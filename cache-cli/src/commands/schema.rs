//! What the cache's schema should be, from the migrations embedded in cache-runtime, and what a server has.
//! Shared by `migrate` (what it applied) and `doctor` (what is missing).

use crate::error::CliError;
use crate::sql;
use crate::target::Shard;

/// An index the migrations leave in place, and the statement that (re)creates it.
#[derive(Debug)]
pub struct ExpectedIndex {
    /// The table it belongs to.
    pub table: &'static str,
    /// Its name.
    pub name: &'static str,
    /// How to recreate it if it is missing (verbatim from the migration, for the secondary indexes).
    pub create: &'static str,
}

/// Every index the migrations leave on the cache's tables, primary keys included. A unit test checks this
/// list against the embedded migrations, so a new migration that adds or drops an index fails the build's
/// tests until it is listed here.
pub const EXPECTED_INDEXES: &[ExpectedIndex] = &[
    ExpectedIndex {
        table: "cache_entries",
        name: "cache_entries_pkey",
        create: "ALTER TABLE cache_entries ADD PRIMARY KEY (cache_key)",
    },
    ExpectedIndex {
        table: "cache_entries",
        name: "cache_entries_sweep_at_idx",
        create: "CREATE INDEX IF NOT EXISTS cache_entries_sweep_at_idx ON cache_entries (sweep_at)",
    },
    ExpectedIndex {
        table: "cache_entries",
        name: "cache_entries_unswept_idx",
        create:
            "CREATE INDEX IF NOT EXISTS cache_entries_unswept_idx ON cache_entries (expires_at) WHERE sweep_at IS NULL",
    },
    ExpectedIndex {
        table: "cache_entries",
        name: "cache_entries_tags_idx",
        create:
            "CREATE INDEX IF NOT EXISTS cache_entries_tags_idx ON cache_entries USING gin (tags) WHERE tags IS NOT NULL",
    },
    ExpectedIndex {
        table: "cache_entries",
        name: "cache_entries_tenant_idx",
        create: "CREATE INDEX IF NOT EXISTS cache_entries_tenant_idx ON cache_entries (tenant, created_at) WHERE tenant IS NOT NULL",
    },
    ExpectedIndex {
        table: "cache_leases",
        name: "cache_leases_pkey",
        create: "ALTER TABLE cache_leases ADD PRIMARY KEY (cache_key)",
    },
    ExpectedIndex {
        table: "cache_invalidations",
        name: "cache_invalidations_pkey",
        create: "ALTER TABLE cache_invalidations ADD PRIMARY KEY (scope, is_namespace)",
    },
    ExpectedIndex {
        table: "cache_tag_invalidations",
        name: "cache_tag_invalidations_pkey",
        create: "ALTER TABLE cache_tag_invalidations ADD PRIMARY KEY (tag)",
    },
    ExpectedIndex {
        table: "cache_pending_invalidations",
        name: "cache_pending_invalidations_xact_idx",
        create: "CREATE INDEX IF NOT EXISTS cache_pending_invalidations_xact_idx ON cache_pending_invalidations (xact)",
    },
    ExpectedIndex {
        table: "cache_semantic",
        name: "cache_semantic_pkey",
        create: "ALTER TABLE cache_semantic ADD PRIMARY KEY (cache_key)",
    },
    ExpectedIndex {
        table: "cache_semantic",
        name: "cache_semantic_scope_idx",
        create: "CREATE INDEX IF NOT EXISTS cache_semantic_scope_idx ON cache_semantic (scope_hash, xact)",
    },
];

/// Indexes that an early migration created and a later one dropped: left behind, they only slow writes.
pub const DROPPED_INDEXES: &[&str] = &["cache_entries_expires_at_idx"];

/// Indexes a deployment may add on purpose (`PgCacheBuilder::gin_index`, `migrations/optional/`).
pub const OPTIONAL_INDEXES: &[&str] = &["cache_entries_data_gin_idx"];

/// A migration recorded in `_sqlx_migrations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Its version (the number its file name starts with).
    pub version: i64,
    /// False when it failed partway and left the schema dirty.
    pub success: bool,
    /// SHA-384 of its SQL when it was applied.
    pub checksum: Vec<u8>,
}

/// The migrations a server has recorded, oldest first (none when sqlx's table does not exist).
///
/// # Errors
/// A database error.
pub async fn applied(shard: &Shard) -> Result<Vec<Applied>, CliError> {
    let exists: bool =
        sqlx::query_scalar(sql::HAS_MIGRATIONS_TABLE).fetch_one(&shard.pool).await.map_err(shard.error())?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, bool, Vec<u8>)> =
        sqlx::query_as(sql::APPLIED_MIGRATIONS).fetch_all(&shard.pool).await.map_err(shard.error())?;
    Ok(rows.into_iter().map(|(version, success, checksum)| Applied { version, success, checksum }).collect())
}

/// The version of the SQL functions recorded on a server (`None` when they were never applied).
///
/// # Errors
/// A database error (`cache_schema` missing: migration 6 is not applied).
pub async fn functions_version(shard: &Shard) -> Result<Option<i32>, CliError> {
    sqlx::query_scalar(sql::FUNCTIONS_VERSION).fetch_optional(&shard.pool).await.map_err(shard.error())
}

/// The migrations embedded in cache-runtime (forward ones only): version and checksum.
pub fn embedded() -> Vec<(i64, &'static [u8])> {
    cache_runtime::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, m.checksum.as_ref()))
        .collect()
}

/// The latest embedded version (0 when there is none).
pub fn latest() -> i64 {
    embedded().iter().map(|(version, _)| *version).max().unwrap_or(0)
}

/// The indexes on the cache's tables: (table, index, valid).
///
/// # Errors
/// A database error.
pub async fn indexes(shard: &Shard) -> Result<Vec<(String, String, bool)>, CliError> {
    sqlx::query_as(sql::INDEXES).fetch_all(&shard.pool).await.map_err(shard.error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The word after `phrase` in `sql`, wherever it occurs (index names after CREATE/DROP INDEX).
    fn names_after(sql: &str, phrase: &str) -> Vec<String> {
        sql.match_indices(phrase)
            .filter_map(|(at, _)| sql[at + phrase.len()..].split_whitespace().next())
            .map(|word| word.trim_end_matches(';').to_owned())
            .collect()
    }

    #[test]
    fn expected_indexes_match_the_embedded_migrations() {
        let mut left: BTreeSet<String> = BTreeSet::new();
        let mut dropped: BTreeSet<String> = BTreeSet::new();
        for migration in cache_runtime::MIGRATOR.iter().filter(|m| !m.migration_type.is_down_migration()) {
            for name in names_after(&migration.sql, "CREATE INDEX IF NOT EXISTS ") {
                left.insert(name);
            }
            for name in names_after(&migration.sql, "DROP INDEX IF EXISTS ") {
                left.remove(&name);
                dropped.insert(name);
            }
        }
        let secondary: BTreeSet<String> =
            EXPECTED_INDEXES.iter().filter(|i| !i.name.ends_with("_pkey")).map(|i| i.name.to_owned()).collect();
        assert_eq!(left, secondary, "EXPECTED_INDEXES is out of date with the migrations");
        assert_eq!(dropped, DROPPED_INDEXES.iter().map(|s| (*s).to_owned()).collect(), "DROPPED_INDEXES");
        let all_sql: String = cache_runtime::MIGRATOR.iter().map(|m| m.sql.as_ref()).collect();
        for index in EXPECTED_INDEXES {
            if index.name.ends_with("_pkey") {
                assert!(all_sql.contains(&format!("TABLE IF NOT EXISTS {} (", index.table)), "{}", index.table);
            } else {
                assert!(all_sql.contains(index.create), "{} is not verbatim in the migrations", index.create);
            }
        }
    }

    #[test]
    fn embedded_migrations_are_found() {
        assert!(embedded().len() >= 5, "migration 5 (tags) is embedded");
        assert_eq!(latest(), embedded().iter().map(|m| m.0).max().unwrap_or(0));
    }
}
