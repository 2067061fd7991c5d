//! Tenants as a whole (see [`tenant`](crate::tenant) for the scope that qualifies keys): a tenant's purge,
//! its stats, the quotas the sweeper enforces, and row-level security by tenant.
//!
//! Rows are found by the `tenant` column (migration 0011) and deleted through the ordinary deletes, by key:
//! each deletion is an invalidation that every process hears of (its tier drops the key, a computation of
//! the key begun before is not stored).

use super::PgCache;
use crate::error::Result;
use crate::route::shards::on_every_shard;
use crate::server::Server;
use crate::tenant::validate_tenant;
use serde::Serialize;

/// What the cache holds of one tenant ([`PgCache::tenant_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TenantStats {
    /// Rows of the tenant, expired ones not yet swept included.
    pub entries: u64,
    /// Rows of the tenant that have not expired.
    pub live: u64,
    /// The bytes its values take as stored (`pg_column_size`: after PostgreSQL's compression).
    pub bytes: u64,
    /// Hits served to this tenant's scope by this process since it started (in-process, PostgreSQL,
    /// coalesced and stale hits; counted for at most [`MAX_COUNTED_TENANTS`](crate::MAX_COUNTED_TENANTS)
    /// tenants).
    pub hits: u64,
}

impl PgCache {
    /// Deletes every entry of tenant `id` and returns how many went. Each deletion is an invalidation of its
    /// key, as [`delete`](Self::delete) is: every process drops it from its in-process tier, and a
    /// computation of the key that began before is not stored.
    ///
    /// The tenant's keys are read and deleted in batches, each its own short transaction; an entry the
    /// tenant writes while the purge runs may survive it.
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_runtime::PgCache) -> Result<(), cache_runtime::CacheError> {
    /// let deleted = cache.delete_tenant("acme").await?;
    /// println!("{deleted} entries of acme deleted");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`CacheError::InvalidTenant`](crate::CacheError::InvalidTenant) before any I/O; a timeout or database
    /// error when a batch fails (the batches done so far stay done).
    pub async fn delete_tenant(&self, id: &str) -> Result<u64> {
        validate_tenant(id)?;
        let mut total = 0;
        for server in self.shards().all().iter().map(|node| node.primary()) {
            total += self.delete_tenant_on(server, id).await?;
        }
        tracing::info!(tenant = id, deleted = total, "tenant purged");
        Ok(total)
    }

    async fn delete_tenant_on(&self, server: &Server, id: &str) -> Result<u64> {
        let mut total = 0;
        loop {
            let keys = server.tenant_keys(id, server.batch_size()).await?;
            if keys.is_empty() {
                return Ok(total);
            }
            let deleted = self.delete_scoped(&keys).await?;
            total += deleted;
            // Every key read was gone already (another delete came first): nothing is left to make progress on.
            if deleted == 0 {
                return Ok(total);
            }
        }
    }

    /// What the cache holds of tenant `id` (on every shard), and the hits this process served it.
    ///
    /// # Errors
    /// [`CacheError::InvalidTenant`](crate::CacheError::InvalidTenant) before any I/O; a timeout or database
    /// error.
    pub async fn tenant_stats(&self, id: &str) -> Result<TenantStats> {
        validate_tenant(id)?;
        let mut stats = TenantStats { hits: self.inner.tenant_hits.get(id), ..TenantStats::default() };
        for counts in on_every_shard(self.shards(), |server| server.tenant_counts(id)).await {
            let counts = counts?;
            stats.entries += counts.entries.unsigned_abs();
            stats.live += counts.live.unsigned_abs();
            stats.bytes += counts.bytes.unsigned_abs();
        }
        Ok(stats)
    }

    /// Brings every tenant back under the [quota](crate::PgCacheBuilder::tenant_quota), evicting its oldest
    /// entries first; the entries evicted (0 without a quota). Part of [`sweep`](Self::sweep).
    ///
    /// # Errors
    /// A timeout or database error.
    pub async fn enforce_tenant_quotas(&self) -> Result<u64> {
        let (max_entries, max_bytes) = self.config().tenant_quota;
        if max_entries.is_none() && max_bytes.is_none() {
            return Ok(0);
        }
        // With shards, each holds its share of a tenant's quota (keys spread evenly).
        let shards = u64::try_from(self.shards().len()).unwrap_or(1).max(1);
        let share = |max: Option<u64>| max.map(|max| i64::try_from(max.div_ceil(shards)).unwrap_or(i64::MAX));
        let (max_entries, max_bytes) = (share(max_entries), share(max_bytes));
        let mut evicted = 0;
        for server in self.shards().all().iter().map(|node| node.primary()) {
            for tenant in server.tenants_over_quota(max_entries, max_bytes).await? {
                loop {
                    let keys = server.tenant_excess(&tenant, max_entries, max_bytes).await?;
                    let deleted = if keys.is_empty() { 0 } else { self.delete_scoped(&keys).await? };
                    evicted += deleted;
                    if deleted == 0 {
                        break;
                    }
                }
            }
        }
        if evicted > 0 {
            tracing::info!(evicted, "evicted tenants' entries over their quota");
        }
        Ok(evicted)
    }

    /// Installs row-level security by tenant on every shard: a database role other than the tables' owner
    /// then reads, writes and deletes only the rows of the tenant named by its setting `pg_cached.tenant`
    /// (`ALTER ROLE acme_service SET pg_cached.tenant = 'acme'`), and, without the setting, only rows of no
    /// tenant. For services that give each tenant a role of its own. Run it as the owner of the cache's
    /// tables (the role that migrates); it can be run again.
    ///
    /// The role can change the setting itself (`SET pg_cached.tenant = ...`): this guards against a service
    /// that asks for the wrong rows, not against one running an attacker's SQL. See docs/TENANTS.md.
    ///
    /// # Errors
    /// A timeout or database error (for a role that does not own the tables, PostgreSQL's refusal).
    pub async fn enable_tenant_isolation(&self) -> Result<()> {
        on_every_shard(self.shards(), Server::enable_tenant_isolation).await.into_iter().collect()
    }
}
