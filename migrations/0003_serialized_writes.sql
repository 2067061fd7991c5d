-- Invalidations that hold under concurrency, and expiry that respects stale windows.
--
-- 1. Writes and invalidations of one key take turns. A write and a delete of the same key used to be two
--    independent statements: a write whose guard ran on a snapshot taken before a concurrent delete committed
--    could store a value computed before that delete, after it. Now every write, delete and namespace mark
--    goes through one of the functions below, which first take a transaction-scoped advisory lock (per key,
--    and per namespace: shared for writes, exclusive for a namespace mark), then check and change the rows
--    with statements that take their snapshot after the lock. The locks end with the transaction; nothing
--    can leak through a pool.
--
-- 2. Every write and delete notifies (pg_cached_events) from inside its own transaction, so that processes
--    with an in-process tier hear about writes made by processes without one (admin jobs, backfills).
--
-- 3. sweep_at: when the sweeper may delete a row. It is expires_at plus the longest window in which the
--    row can still be served (stale-while-revalidate), NULL for a row that never expires. Sweeps and
--    eviction walk its index instead of expires_at's, so a `stale = "10m"` entry lives ten minutes past its
--    expiry whatever the sweep interval.
--
-- Advisory lock classes (the first argument of the two-key form): 1885430593 for keys, 1885430594 for
-- namespaces ('pg_c' + 1, + 2 as 32-bit integers). A hash collision only makes two keys take turns.

ALTER TABLE cache_entries ADD COLUMN IF NOT EXISTS sweep_at TIMESTAMPTZ;
UPDATE cache_entries SET sweep_at = expires_at WHERE sweep_at IS NULL AND expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS cache_entries_sweep_at_idx ON cache_entries (sweep_at);
-- Rows written without sweep_at (by hand, by another tool) are swept by their expiry. Only such rows enter
-- this partial index, so the cache's own writes never pay for it.
CREATE INDEX IF NOT EXISTS cache_entries_unswept_idx ON cache_entries (expires_at) WHERE sweep_at IS NULL;
DROP INDEX IF EXISTS cache_entries_expires_at_idx;

-- Stores p_data under p_key for p_ttl_ms (NULL: forever), kept p_keep_ms past its expiry for stale serving.
-- With p_started_us (microseconds of the database clock when a memoized computation began), the write is
-- refused if the key or p_namespace was invalidated since then; the result says whether it was written.
CREATE OR REPLACE FUNCTION pg_cached_write(
    p_key text, p_data jsonb, p_ttl_ms bigint, p_keep_ms bigint, p_started_us bigint, p_namespace text,
    p_notify text, p_lock_timeout text, p_async_commit boolean
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_expires timestamptz := now() + p_ttl_ms * interval '1 millisecond';
BEGIN
    PERFORM set_config('lock_timeout', p_lock_timeout, true);
    IF p_async_commit THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    PERFORM pg_advisory_xact_lock_shared(1885430594, hashtext(p_namespace));
    PERFORM pg_advisory_xact_lock(1885430593, hashtext(p_key));
    IF p_started_us IS NOT NULL AND EXISTS (
        SELECT 1 FROM cache_invalidations
        WHERE ((scope = p_key AND NOT is_namespace) OR (scope = p_namespace AND is_namespace))
          AND (extract(epoch FROM invalidated_at) * 1000000)::bigint >= p_started_us
    ) THEN
        RETURN false;
    END IF;
    INSERT INTO cache_entries (cache_key, data, created_at, expires_at, sweep_at)
    VALUES (p_key, p_data, now(), v_expires, v_expires + coalesce(p_keep_ms, 0) * interval '1 millisecond')
    ON CONFLICT (cache_key) DO UPDATE
        SET data = EXCLUDED.data, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at,
            sweep_at = EXCLUDED.sweep_at;
    PERFORM pg_notify('pg_cached_events', p_notify);
    RETURN true;
END $$;

-- Deletes p_key, records its invalidation (so that computations that began earlier are not stored), and
-- notifies. Returns the number of rows deleted.
CREATE OR REPLACE FUNCTION pg_cached_delete(p_key text, p_notify text, p_lock_timeout text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_deleted bigint;
BEGIN
    PERFORM set_config('lock_timeout', p_lock_timeout, true);
    PERFORM pg_advisory_xact_lock(1885430593, hashtext(p_key));
    DELETE FROM cache_entries WHERE cache_key = p_key;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    INSERT INTO cache_invalidations (is_namespace, scope, invalidated_at) VALUES (false, p_key, clock_timestamp())
    ON CONFLICT (scope, is_namespace) DO UPDATE SET invalidated_at = EXCLUDED.invalidated_at;
    PERFORM pg_notify('pg_cached_events', p_notify);
    RETURN v_deleted;
END $$;

-- Records the invalidation of a whole namespace and notifies. It waits for the namespace's writes in progress
-- (they hold its lock shared), so that each of them either committed before the mark (and the purge that
-- follows deletes its row) or sees the mark and is refused.
CREATE OR REPLACE FUNCTION pg_cached_mark_namespace(p_namespace text, p_notify text, p_lock_timeout text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('lock_timeout', p_lock_timeout, true);
    PERFORM pg_advisory_xact_lock(1885430594, hashtext(p_namespace));
    INSERT INTO cache_invalidations (is_namespace, scope, invalidated_at) VALUES (true, p_namespace, clock_timestamp())
    ON CONFLICT (scope, is_namespace) DO UPDATE SET invalidated_at = EXCLUDED.invalidated_at;
    PERFORM pg_notify('pg_cached_events', p_notify);
END $$;
