-- Tenants (issue 27): the tenant whose scope wrote an entry, NULL for an entry of no tenant.
--
-- 1. The key is already qualified by the tenant (cache-runtime/src/tenant.rs), so no lookup of one tenant can
--    find another's entry; the column is what per-tenant purges, stats, quotas and row-level security
--    (pg_cached_enable_tenant_isolation in functions.sql) read. cache_semantic gets it too, copied from its
--    entry when the vector is written, so that row-level security covers the texts and vectors as well.
-- 2. A partial index on (tenant, created_at): rows of no tenant, the common case of a cache without tenants,
--    cost it nothing; a tenant's purge, stats and quota (oldest first) read only that tenant's rows.
-- 3. Adding a nullable column without a default rewrites nothing: instant on a large table.

ALTER TABLE cache_entries ADD COLUMN IF NOT EXISTS tenant text;
ALTER TABLE cache_semantic ADD COLUMN IF NOT EXISTS tenant text;

CREATE INDEX IF NOT EXISTS cache_entries_tenant_idx ON cache_entries (tenant, created_at) WHERE tenant IS NOT NULL;
