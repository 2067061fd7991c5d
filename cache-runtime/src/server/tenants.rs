//! The per-tenant statements of one server: a tenant's keys, its counts, the keys past its quota, and the
//! row-level security policies. Deleting the keys found is the caller's (`cache/tenants.rs`), through the
//! ordinary coalesced deletes, so that each is an invalidation that every process hears of.

use super::{sql, Server};
use crate::error::Result;

/// What one server holds of one tenant.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TenantCounts {
    pub(crate) entries: i64,
    pub(crate) live: i64,
    pub(crate) bytes: i64,
}

impl Server {
    /// Up to `limit` keys of `tenant`.
    pub(crate) async fn tenant_keys(&self, tenant: &str, limit: i64) -> Result<Vec<String>> {
        let tenant = tenant.to_owned();
        self.maintenance("delete_tenant", move |conn| {
            Box::pin(sqlx::query_scalar::<_, String>(sql::TENANT_KEYS).bind(tenant.clone()).bind(limit).fetch_all(conn))
        })
        .await
    }

    /// The rows of `tenant`, its live rows, and the bytes of their values.
    pub(crate) async fn tenant_counts(&self, tenant: &str) -> Result<TenantCounts> {
        let tenant = tenant.to_owned();
        let (entries, live, bytes) = self
            .maintenance("tenant_stats", move |conn| {
                Box::pin(sqlx::query_as::<_, (i64, i64, i64)>(sql::TENANT_COUNTS).bind(tenant.clone()).fetch_one(conn))
            })
            .await?;
        Ok(TenantCounts { entries, live, bytes })
    }

    /// The tenants over `max_entries` rows or `max_bytes` bytes on this server.
    pub(crate) async fn tenants_over_quota(
        &self,
        max_entries: Option<i64>,
        max_bytes: Option<i64>,
    ) -> Result<Vec<String>> {
        self.maintenance("sweep", move |conn| {
            let query = sqlx::query_scalar::<_, String>(sql::TENANTS_OVER_QUOTA).bind(max_entries).bind(max_bytes);
            Box::pin(query.fetch_all(conn))
        })
        .await
    }

    /// Up to a batch of the keys of `tenant` past its quota, oldest first.
    pub(crate) async fn tenant_excess(
        &self,
        tenant: &str,
        max_entries: Option<i64>,
        max_bytes: Option<i64>,
    ) -> Result<Vec<String>> {
        let (tenant, limit) = (tenant.to_owned(), self.batch_size);
        self.maintenance("sweep", move |conn| {
            let query = sqlx::query_scalar::<_, String>(sql::TENANT_EXCESS)
                .bind(tenant.clone())
                .bind(max_entries)
                .bind(max_bytes)
                .bind(limit);
            Box::pin(query.fetch_all(conn))
        })
        .await
    }

    /// Installs the row-level security policies by tenant.
    pub(crate) async fn enable_tenant_isolation(&self) -> Result<()> {
        self.maintenance("enable_tenant_isolation", |conn| {
            Box::pin(async move { sqlx::query(sql::ENABLE_TENANT_ISOLATION).execute(conn).await.map(drop) })
        })
        .await
    }

    /// The batch size of maintenance statements.
    pub(crate) fn batch_size(&self) -> i64 {
        self.batch_size
    }
}
