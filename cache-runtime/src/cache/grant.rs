//! Letting other database roles use the cache: [`PgCache::grant`], [`PgCache::grant_reader`] and
//! [`PgCache::revoke`].
//!
//! Nobody but the cache's owner (the role that ran [`PgCache::migrate`]) may run the cache's SQL functions
//! or touch its tables until it is granted: PostgreSQL's default `EXECUTE` grant to `PUBLIC` is withdrawn
//! (see `migrations/functions.sql`). The SQL side is `pg_cached_grant` / `pg_cached_revoke`, which a DBA can
//! call by hand; here the role name is checked first, and PostgreSQL's errors become typed ones.

use super::PgCache;
use crate::error::{CacheError, Result};
use crate::route::shards::on_every_shard;
use crate::server::sql;

/// The longest role name PostgreSQL keeps whole (`NAMEDATALEN - 1` bytes); it truncates longer ones, so a
/// grant to a longer name could reach another role.
const MAX_ROLE_BYTES: usize = 63;

impl PgCache {
    /// Lets `role` do everything this cache does: read, write, delete, purge namespaces, invalidate tags,
    /// take cluster leases, sweep, listen for events, and install [invalidation
    /// triggers](Self::invalidate_on_change) on tables it owns. It gets `SELECT`, `INSERT`, `UPDATE` and
    /// `DELETE` on the cache's tables, `EXECUTE` on its SQL functions (but the ones that grant), and `USAGE`
    /// on their schema; not the right to migrate, to grant, or to change the tables' definitions. Idempotent;
    /// applies to every shard. Run it from a cache connected as the owner of the cache's tables (or a role
    /// allowed to grant on them).
    ///
    /// ```no_run
    /// # async fn demo(owner: cache_runtime::PgCache) -> Result<(), cache_runtime::CacheError> {
    /// owner.migrate().await?;
    /// owner.grant("app").await?; // services connected as `app` can now use the cache
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`CacheError::InvalidIdentifier`] (`what` = `"role"`) for a name that is empty, holds NUL, is longer
    /// than 63 bytes, is `public`, or names no role; a database error otherwise (for example when this cache's
    /// role may not grant on the tables).
    pub async fn grant(&self, role: &str) -> Result<()> {
        self.run_grant(role, sql::GRANT, Some(true)).await?;
        tracing::info!(role, "role granted the cache (writer)");
        Ok(())
    }

    /// Lets `role` read the cache only: [`get`](Self::get), [`get_many`](Self::get_many),
    /// [`keys`](Self::keys), [`stats`](Self::stats), [`health_check`](Self::health_check) and listening for
    /// events. It gets `SELECT` on `cache_entries` and `USAGE` on its schema, and loses what an earlier
    /// [`grant`](Self::grant) gave it beyond that. A memoized function run by a
    /// reader is served its hits; its misses run the function and fail to store the result (counted as
    /// errors), and its sweeps fail: build a reader's cache with
    /// [`sweep_interval(None)`](crate::PgCacheBuilder::sweep_interval).
    ///
    /// # Errors
    /// As [`grant`](Self::grant).
    pub async fn grant_reader(&self, role: &str) -> Result<()> {
        self.run_grant(role, sql::GRANT, Some(false)).await?;
        tracing::info!(role, "role granted the cache (reader)");
        Ok(())
    }

    /// Takes back what [`grant`](Self::grant) or [`grant_reader`](Self::grant_reader) gave `role` (but
    /// `USAGE` on the schema, which it may need for other things). Idempotent.
    ///
    /// # Errors
    /// As [`grant`](Self::grant).
    pub async fn revoke(&self, role: &str) -> Result<()> {
        self.run_grant(role, sql::REVOKE, None).await?;
        tracing::info!(role, "role's rights on the cache revoked");
        Ok(())
    }

    async fn run_grant(&self, role: &str, statement: &'static str, writer: Option<bool>) -> Result<()> {
        check_role(role)?;
        let results = on_every_shard(self.shards(), |server| async move {
            let mut query = sqlx::query(statement).bind(role);
            if let Some(writer) = writer {
                query = query.bind(writer);
            }
            query.execute(server.pool()).await.map_err(CacheError::db("grant"))
        })
        .await;
        for result in results {
            result.map_err(|error| role_error(error, role))?;
        }
        Ok(())
    }
}

/// A role name that can be granted: PostgreSQL quotes it (`format('%I')`), so any text is safe to pass,
/// but some would not name the role meant.
fn check_role(role: &str) -> Result<()> {
    let reason = if role.is_empty() {
        "the name is empty"
    } else if role.contains('\0') {
        "the name contains a NUL character"
    } else if role.len() > MAX_ROLE_BYTES {
        "the name is longer than 63 bytes, which PostgreSQL would truncate"
    } else if role == "public" {
        "PUBLIC is every role: grant to the roles that use the cache"
    } else {
        return Ok(());
    };
    Err(CacheError::InvalidIdentifier { what: "role", name: role.to_owned(), reason: reason.to_owned() })
}

/// "No such role" (42704, raised by `pg_cached_grant`) becomes [`CacheError::InvalidIdentifier`].
fn role_error(error: CacheError, role: &str) -> CacheError {
    if error.sqlstate() != Some("42704") {
        return error;
    }
    let CacheError::Database { source, .. } = &error else { return error };
    let reason = source.as_database_error().map_or_else(|| source.to_string(), |db| db.message().to_owned());
    CacheError::InvalidIdentifier { what: "role", name: role.to_owned(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_that_would_grant_the_wrong_role_are_refused() {
        for bad in ["", "a\0b", "public", &"r".repeat(64), &"é".repeat(32)] {
            let Err(CacheError::InvalidIdentifier { what: "role", .. }) = check_role(bad) else {
                panic!("{bad:?} was accepted");
            };
        }
        for good in ["app", "App", "PUBLIC", "it's", "a b", "\"quoted\"", &"r".repeat(63), "pg_read_all_data"] {
            assert!(check_role(good).is_ok(), "{good:?}");
        }
    }
}
