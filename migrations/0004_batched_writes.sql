-- Batched writes and deletes: one statement for many keys, with the guarantees of the one-key functions of
-- 0003_serialized_writes.sql held for each key.
--
-- The cache coalesces writes issued while another batch is in flight into one call of pg_cached_write_many,
-- and deletes into one call of pg_cached_delete_many. Each key is still serialized against deletes of the
-- same key by its advisory transaction lock, and each guarded write is still refused when its key or
-- namespace was invalidated after its computation began. A batch holds each key at most once (the client
-- makes sure of it: one INSERT cannot touch a row twice).
--
-- Locks are taken in the order of their lock keys, so two batches that share keys wait for each other
-- instead of deadlocking; namespaces first (shared), then keys, as the one-key functions do.

-- Writes p_keys[i] = p_data[i] for p_ttl_ms[i] ms (NULL: forever), kept p_keep_ms[i] ms more for stale
-- serving; with p_started_us[i], refused when p_keys[i] or p_namespaces[i] was invalidated since. Sends
-- p_notify once. Returns, per key in order, whether it was written.
CREATE OR REPLACE FUNCTION pg_cached_write_many(
    p_keys text[], p_data jsonb[], p_ttl_ms bigint[], p_keep_ms bigint[], p_started_us bigint[],
    p_namespaces text[], p_notify text, p_lock_timeout text, p_async_commit boolean
) RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    v_written boolean[];
BEGIN
    PERFORM set_config('lock_timeout', p_lock_timeout, true);
    IF p_async_commit THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    -- One statement per lock class (a loop of PERFORMs costs an executor start per key); the sort under
    -- the projection fixes the order in which the locks are taken.
    PERFORM pg_advisory_xact_lock_shared(1885430594, l.h)
    FROM (SELECT DISTINCT hashtext(n) AS h FROM unnest(p_namespaces) AS n ORDER BY 1) AS l;
    PERFORM pg_advisory_xact_lock(1885430593, l.h)
    FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest(p_keys) AS k ORDER BY 1) AS l;
    -- The guard reads cache_invalidations after the locks, like the one-key write.
    SELECT array_agg(
        w.started_us IS NULL OR NOT EXISTS (
            SELECT 1 FROM cache_invalidations AS inv
            WHERE ((inv.scope = w.k AND NOT inv.is_namespace) OR (inv.scope = w.ns AND inv.is_namespace))
              AND (extract(epoch FROM inv.invalidated_at) * 1000000)::bigint >= w.started_us
        ) ORDER BY w.i)
    INTO v_written
    FROM unnest(p_keys, p_namespaces, p_started_us) WITH ORDINALITY AS w(k, ns, started_us, i);
    INSERT INTO cache_entries (cache_key, data, created_at, expires_at, sweep_at)
    SELECT w.k, w.d, now(), e.expires, e.expires + coalesce(w.keep_ms, 0) * interval '1 millisecond'
    FROM unnest(p_keys, p_data, p_ttl_ms, p_keep_ms) WITH ORDINALITY AS w(k, d, ttl_ms, keep_ms, i)
    CROSS JOIN LATERAL (SELECT now() + w.ttl_ms * interval '1 millisecond' AS expires) AS e
    WHERE v_written[w.i]
    ON CONFLICT (cache_key) DO UPDATE
        SET data = EXCLUDED.data, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at,
            sweep_at = EXCLUDED.sweep_at;
    PERFORM pg_notify('pg_cached_events', p_notify);
    RETURN v_written;
END $$;

-- Deletes every key of p_keys, records each one's invalidation and sends p_notify once. Returns, per key in
-- order, the rows deleted (a key listed twice counts its row once, at its first place).
CREATE OR REPLACE FUNCTION pg_cached_delete_many(p_keys text[], p_notify text, p_lock_timeout text)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    v_deleted text[];
    v_counts bigint[];
BEGIN
    PERFORM set_config('lock_timeout', p_lock_timeout, true);
    PERFORM pg_advisory_xact_lock(1885430593, l.h)
    FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest(p_keys) AS k ORDER BY 1) AS l;
    WITH gone AS (DELETE FROM cache_entries WHERE cache_key = ANY (p_keys) RETURNING cache_key)
    SELECT coalesce(array_agg(cache_key), '{}') INTO v_deleted FROM gone;
    SELECT array_agg(
        CASE WHEN u.k = ANY (v_deleted) AND u.i = (SELECT min(j) FROM unnest(p_keys) WITH ORDINALITY AS f(fk, j)
                                                   WHERE f.fk = u.k)
             THEN 1 ELSE 0 END::bigint ORDER BY u.i)
    INTO v_counts
    FROM unnest(p_keys) WITH ORDINALITY AS u(k, i);
    INSERT INTO cache_invalidations (is_namespace, scope, invalidated_at)
    SELECT false, d.k, clock_timestamp() FROM (SELECT DISTINCT k FROM unnest(p_keys) AS k) AS d
    ON CONFLICT (scope, is_namespace) DO UPDATE SET invalidated_at = EXCLUDED.invalidated_at;
    PERFORM pg_notify('pg_cached_events', p_notify);
    RETURN v_counts;
END $$;
