//! Database roles for the privilege tests: created by the test, dropped at its end.
//!
//! Roles belong to the whole server, which other tests share, so each name carries a hash of the test's own
//! database. A new role has only what PostgreSQL gives PUBLIC: CONNECT and TEMP on databases and USAGE on
//! schema `public` (no CREATE there since PostgreSQL 15), and none of the cache's rights.

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection, PgConnection};

/// A LOGIN role of one test.
#[derive(Debug)]
pub struct TestRole {
    /// Its name.
    pub name: String,
    owner: PgPool,
}

impl TestRole {
    /// Creates the role `pgc_<label>_<hash of the database's name>` (after dropping one left by an earlier
    /// run) through `owner`, a pool connected as a superuser.
    pub async fn create(owner: &PgPool, label: &str) -> Result<TestRole, sqlx::Error> {
        let database: String = sqlx::query_scalar("SELECT current_database()").fetch_one(owner).await?;
        let hash = database.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let name = format!("pgc_{label}_{hash:x}");
        sqlx::raw_sql(&format!("DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN")).execute(owner).await?;
        Ok(TestRole { name, owner: owner.clone() })
    }

    /// Connection options for this role on the owner's database.
    pub fn options(&self) -> PgConnectOptions {
        self.owner.connect_options().as_ref().clone().username(&self.name)
    }

    /// A connection as this role.
    pub async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect_with(&self.options()).await
    }

    /// Ends the role's sessions, takes back what it was granted and drops what it owns in this database,
    /// then drops the role.
    ///
    /// It waits (up to a minute) for each session to end: a session drops its temporary objects as it exits,
    /// and `DROP OWNED` run before that meets them and fails on their dependents (a temporary cast, say).
    pub async fn drop_role(self) -> Result<(), sqlx::Error> {
        let name = &self.name;
        sqlx::query("SELECT pg_terminate_backend(pid, 60000) FROM pg_stat_activity WHERE usename = $1")
            .bind(name)
            .execute(&self.owner)
            .await?;
        sqlx::raw_sql(&format!("DROP OWNED BY {name}; DROP ROLE {name}")).execute(&self.owner).await?;
        Ok(())
    }
}
