-- The SQL functions leave the migrations, and nobody but the cache's owner may run them by default.
--
-- 1. From here on every pg_cached_* function is defined once, in migrations/functions.sql, which
--    PgCache::migrate applies after the migrations (psql users: run it after them, see its header). The
--    functions that migrations 0003-0005 created stay until functions.sql replaces or drops them.
-- 2. cache_schema: one row recording which version of functions.sql the database holds, so that a process of
--    an older release never puts back older functions over newer ones (functions.sql refuses to, and the
--    runtime does not try).
-- 3. PostgreSQL grants EXECUTE on every new function to PUBLIC: any role that can connect could call the
--    cache's functions (and, through the trigger function, run code as the owner). The grant is withdrawn
--    here for the functions that exist; functions.sql does the same for each function it creates. Roles that
--    use the cache get what they need from pg_cached_grant (PgCache::grant, `pg-cached grant`).

CREATE TABLE IF NOT EXISTS cache_schema (
    singleton         boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    functions_version integer NOT NULL,
    applied_at        timestamptz NOT NULL DEFAULT now()
);

DO $$
DECLARE
    v_function regprocedure;
BEGIN
    FOR v_function IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = 'cache_entries'::regclass)
          AND p.proname LIKE 'pg\_cached\_%'
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', v_function);
    END LOOP;
END $$;
