-- Tags: invalidation by what an entry was computed from (issue 12).
--
-- 1. cache_entries.tags: the tags of an entry (NULL for none), and a GIN index over them for invalidation by
--    tag. The index is partial: untagged writes, the common case, never touch it. (docs/bench/tags.md has
--    the measurements against a side table of (tag, key) rows.)
-- 2. cache_entries.compute_us: how long the entry's computation took, so that stats can say what hits saved.
-- 3. cache_tag_invalidations: when, and by which transaction, a tag was last invalidated. A memoized write
--    whose tags include one invalidated since its computation began is refused, as for keys and namespaces.
--    "Since" is judged by transaction, not only by clock: an invalidation made by a trigger inside a user's
--    transaction takes effect at that transaction's COMMIT, which may come long after the trigger ran, and a
--    computation that read the source table before the COMMIT saw the old row. So each mark keeps its
--    transaction id, each memoized lookup returns its snapshot (pg_current_snapshot()), and a write is
--    refused when a mark's transaction was not visible in that snapshot: the computation, which read its
--    data after the lookup, may not have seen the change.
-- 4. Writes take each tag's advisory lock shared (class 1885430595, 'pg_c' + 3), invalidations take it
--    exclusive: a write and an invalidation of a tag take turns, as writes and namespace marks do. A trigger's
--    invalidation holds the lock until its transaction ends, so a write of an entry carrying the tag waits
--    for that COMMIT or ROLLBACK (bounded by the cache's lock_timeout, after which it is simply not stored).
-- 5. invalidate_on_change: a row trigger that invalidates the tag `<prefix><old value of a column>` (and the
--    new value's, when an UPDATE changes it) inside the changing transaction. Installed and removed by the
--    functions at the end, which a DBA can call from plain SQL too.
--
-- Requires PostgreSQL 14 or later (CREATE OR REPLACE TRIGGER, xid8).

ALTER TABLE cache_entries ADD COLUMN IF NOT EXISTS tags text[];
ALTER TABLE cache_entries ADD COLUMN IF NOT EXISTS compute_us bigint;
CREATE INDEX IF NOT EXISTS cache_entries_tags_idx ON cache_entries USING gin (tags) WHERE tags IS NOT NULL;

CREATE TABLE IF NOT EXISTS cache_tag_invalidations (
    tag            text COLLATE "C" PRIMARY KEY,
    invalidated_at timestamptz NOT NULL,
    xact           xid8 NOT NULL
);

-- Whether a guarded write of p_key (namespace p_namespace, tags p_tags) must be refused: the key or its
-- namespace was invalidated at or after p_started_us (database clock, µs, when its computation began), or one
-- of its tags was, or was invalidated by a transaction that the computation's snapshot p_snapshot
-- (pg_snapshot as text) did not see. NULL p_started_us: an unguarded write, never refused. The one guard of
-- both write functions below; it reads the marks after their caller took the advisory locks.
CREATE OR REPLACE FUNCTION pg_cached_write_refused(
    p_key text, p_namespace text, p_tags text[], p_started_us bigint, p_snapshot text
) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT p_started_us IS NOT NULL AND (
        EXISTS (
            SELECT 1 FROM cache_invalidations AS inv
            WHERE ((inv.scope = p_key AND NOT inv.is_namespace) OR (inv.scope = p_namespace AND inv.is_namespace))
              AND (extract(epoch FROM inv.invalidated_at) * 1000000)::bigint >= p_started_us
        )
        OR (p_tags IS NOT NULL AND EXISTS (
            SELECT 1 FROM cache_tag_invalidations AS inv
            WHERE inv.tag = ANY (p_tags)
              AND ((extract(epoch FROM inv.invalidated_at) * 1000000)::bigint >= p_started_us
                   OR (p_snapshot IS NOT NULL AND NOT pg_visible_in_snapshot(inv.xact, p_snapshot::pg_snapshot)))
        ))
    )
$$;

-- pg_cached_write (0003) with tags and a compute time, and the snapshot of the computation's lookup for the
-- tag guard. Returns whether it wrote.
CREATE OR REPLACE FUNCTION pg_cached_write_entry(
    p_key text, p_data jsonb, p_ttl_ms bigint, p_keep_ms bigint, p_started_us bigint, p_namespace text,
    p_notify text, p_lock_timeout text, p_async_commit boolean, p_tags text[], p_compute_us bigint,
    p_started_snapshot text
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
    IF p_tags IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock_shared(1885430595, l.h)
        FROM (SELECT DISTINCT hashtext(t) AS h FROM unnest(p_tags) AS t ORDER BY 1) AS l;
    END IF;
    IF pg_cached_write_refused(p_key, p_namespace, p_tags, p_started_us, p_started_snapshot) THEN
        RETURN false;
    END IF;
    INSERT INTO cache_entries (cache_key, data, created_at, expires_at, sweep_at, tags, compute_us)
    VALUES (p_key, p_data, now(), v_expires, v_expires + coalesce(p_keep_ms, 0) * interval '1 millisecond',
            p_tags, p_compute_us)
    ON CONFLICT (cache_key) DO UPDATE
        SET data = EXCLUDED.data, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at,
            sweep_at = EXCLUDED.sweep_at, tags = EXCLUDED.tags, compute_us = EXCLUDED.compute_us;
    PERFORM pg_notify('pg_cached_events', p_notify);
    RETURN true;
END $$;

-- pg_cached_write_many (0004) with tags, compute times and snapshots. p_tags[i] holds key i's tags joined by
-- the unit separator (U+001F, which tags never contain), or NULL: SQL arrays of arrays must be rectangular.
CREATE OR REPLACE FUNCTION pg_cached_write_entries(
    p_keys text[], p_data jsonb[], p_ttl_ms bigint[], p_keep_ms bigint[], p_started_us bigint[],
    p_namespaces text[], p_notify text, p_lock_timeout text, p_async_commit boolean, p_tags text[],
    p_compute_us bigint[], p_started_snapshots text[]
) RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    v_written boolean[];
BEGIN
    PERFORM set_config('lock_timeout', p_lock_timeout, true);
    IF p_async_commit THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    PERFORM pg_advisory_xact_lock_shared(1885430594, l.h)
    FROM (SELECT DISTINCT hashtext(n) AS h FROM unnest(p_namespaces) AS n ORDER BY 1) AS l;
    PERFORM pg_advisory_xact_lock(1885430593, l.h)
    FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest(p_keys) AS k ORDER BY 1) AS l;
    IF cardinality(array_remove(p_tags, NULL)) > 0 THEN
        PERFORM pg_advisory_xact_lock_shared(1885430595, l.h)
        FROM (SELECT DISTINCT hashtext(t) AS h
              FROM unnest(p_tags) AS j, unnest(string_to_array(j, E'\x1f')) AS t ORDER BY 1) AS l;
    END IF;
    SELECT array_agg(
        NOT pg_cached_write_refused(w.k, w.ns, string_to_array(w.tags, E'\x1f'), w.started_us, w.snap) ORDER BY w.i)
    INTO v_written
    FROM unnest(p_keys, p_namespaces, p_started_us, p_tags, p_started_snapshots)
        WITH ORDINALITY AS w(k, ns, started_us, tags, snap, i);
    INSERT INTO cache_entries (cache_key, data, created_at, expires_at, sweep_at, tags, compute_us)
    SELECT w.k, w.d, now(), e.expires, e.expires + coalesce(w.keep_ms, 0) * interval '1 millisecond',
           string_to_array(w.tags, E'\x1f'), w.compute_us
    FROM unnest(p_keys, p_data, p_ttl_ms, p_keep_ms, p_tags, p_compute_us)
        WITH ORDINALITY AS w(k, d, ttl_ms, keep_ms, tags, compute_us, i)
    CROSS JOIN LATERAL (SELECT now() + w.ttl_ms * interval '1 millisecond' AS expires) AS e
    WHERE v_written[w.i]
    ON CONFLICT (cache_key) DO UPDATE
        SET data = EXCLUDED.data, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at,
            sweep_at = EXCLUDED.sweep_at, tags = EXCLUDED.tags, compute_us = EXCLUDED.compute_us;
    PERFORM pg_notify('pg_cached_events', p_notify);
    RETURN v_written;
END $$;

-- The functions of 0003 and 0004, for processes still running an older version during a rolling upgrade:
-- their writes now also clear the tags and compute time of the entry they replace.
CREATE OR REPLACE FUNCTION pg_cached_write(
    p_key text, p_data jsonb, p_ttl_ms bigint, p_keep_ms bigint, p_started_us bigint, p_namespace text,
    p_notify text, p_lock_timeout text, p_async_commit boolean
) RETURNS boolean LANGUAGE sql AS $$
    SELECT pg_cached_write_entry(p_key, p_data, p_ttl_ms, p_keep_ms, p_started_us, p_namespace, p_notify,
                                 p_lock_timeout, p_async_commit, NULL, NULL, NULL)
$$;

CREATE OR REPLACE FUNCTION pg_cached_write_many(
    p_keys text[], p_data jsonb[], p_ttl_ms bigint[], p_keep_ms bigint[], p_started_us bigint[],
    p_namespaces text[], p_notify text, p_lock_timeout text, p_async_commit boolean
) RETURNS boolean[] LANGUAGE sql AS $$
    SELECT pg_cached_write_entries(p_keys, p_data, p_ttl_ms, p_keep_ms, p_started_us, p_namespaces, p_notify,
                                   p_lock_timeout, p_async_commit, array_fill(NULL::text, ARRAY[cardinality(p_keys)]),
                                   array_fill(NULL::bigint, ARRAY[cardinality(p_keys)]),
                                   array_fill(NULL::text, ARRAY[cardinality(p_keys)]))
$$;

-- Deletes every entry carrying any of p_tags, records the tags' invalidation (so that computations that
-- began earlier are not stored), and tells every process's in-process tier, one notification per tag
-- (`<sender>|t|<tag>`). Returns the number of entries deleted. Inside a larger transaction (a trigger), all of
-- it takes effect at COMMIT and none of it after ROLLBACK. p_lock_timeout, when given, bounds the wait for
-- writes in progress (and applies to the rest of the transaction: the cache passes it only for its own).
CREATE OR REPLACE FUNCTION pg_cached_invalidate_tags(
    p_tags text[], p_sender text DEFAULT '0000000000000000', p_lock_timeout text DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_tags text[];
    v_deleted bigint;
BEGIN
    SELECT array_agg(DISTINCT t ORDER BY t) INTO v_tags FROM unnest(p_tags) AS t WHERE t IS NOT NULL;
    IF v_tags IS NULL THEN
        RETURN 0;
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(v_tags) AS t WHERE octet_length(t) > 1000) THEN
        RAISE EXCEPTION 'a cache tag is longer than 1000 bytes' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_lock_timeout IS NOT NULL THEN
        PERFORM set_config('lock_timeout', p_lock_timeout, true);
    END IF;
    PERFORM pg_advisory_xact_lock(1885430595, l.h)
    FROM (SELECT DISTINCT hashtext(t) AS h FROM unnest(v_tags) AS t ORDER BY 1) AS l;
    INSERT INTO cache_tag_invalidations (tag, invalidated_at, xact)
    SELECT t, clock_timestamp(), pg_current_xact_id() FROM unnest(v_tags) AS t
    ON CONFLICT (tag) DO UPDATE SET invalidated_at = EXCLUDED.invalidated_at, xact = EXCLUDED.xact;
    DELETE FROM cache_entries WHERE tags && v_tags;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    PERFORM pg_notify('pg_cached_events', coalesce(p_sender, '0000000000000000') || '|t|' || t)
    FROM unnest(v_tags) AS t;
    RETURN v_deleted;
END $$;

-- The row trigger installed by pg_cached_invalidate_on_change. TG_ARGV[0]: the column, TG_ARGV[1]: the tag
-- prefix. The column is read by name through format('%I'), never spliced into SQL unquoted.
--
-- It runs inside the application's transaction, under the application's role and search_path: it runs as
-- the owner of the cache's objects (SECURITY DEFINER), with the search_path this migration ran with, so that
-- a role allowed to change the source table needs no rights on the cache tables, and a session with another
-- search_path still finds them. If the invalidation cannot run, the change fails with it (as a foreign key
-- check would): entries built on data that changed are never silently kept.
CREATE OR REPLACE FUNCTION pg_cached_invalidation_trigger() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    v_old text;
    v_new text;
BEGIN
    EXECUTE format('SELECT ($1).%I::text', TG_ARGV[0]) USING OLD INTO v_old;
    IF TG_OP = 'UPDATE' THEN
        EXECUTE format('SELECT ($1).%I::text', TG_ARGV[0]) USING NEW INTO v_new;
    END IF;
    -- A NULL value names no tag (prefix || NULL is NULL, and NULLs are skipped).
    PERFORM pg_cached_invalidate_tags(ARRAY[TG_ARGV[1] || v_old, TG_ARGV[1] || v_new]);
    RETURN NULL;
END $$;

-- Installs (or replaces) the trigger that invalidates `<p_tag_prefix><p_column>` whenever a row of p_table is
-- updated or deleted. Idempotent: one trigger per (column, prefix) pair, named after a hash of the pair.
-- Returns the trigger's name. p_table is a regclass: schema-qualified or not, quoted as in SQL; a missing
-- table fails with undefined_table (42P01), a missing column with undefined_column (42703).
CREATE OR REPLACE FUNCTION pg_cached_invalidate_on_change(p_table regclass, p_column text, p_tag_prefix text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_trigger text := 'pg_cached_' || left(md5(p_column || E'\x1f' || p_tag_prefix), 16);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = p_table AND attname = p_column AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', p_column, p_table
            USING ERRCODE = 'undefined_column';
    END IF;
    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER UPDATE OR DELETE ON %s FOR EACH ROW '
                   'EXECUTE FUNCTION pg_cached_invalidation_trigger(%L, %L)',
                   v_trigger, p_table, p_column, p_tag_prefix);
    RETURN v_trigger;
END $$;

-- Removes every trigger pg_cached_invalidate_on_change installed on p_table; returns how many.
CREATE OR REPLACE FUNCTION pg_cached_remove_invalidate_on_change(p_table regclass)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_trigger text;
    v_removed integer := 0;
BEGIN
    FOR v_trigger IN
        SELECT t.tgname FROM pg_trigger AS t JOIN pg_proc AS p ON p.oid = t.tgfoid
        WHERE t.tgrelid = p_table AND p.proname = 'pg_cached_invalidation_trigger' AND NOT t.tgisinternal
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', v_trigger, p_table);
        v_removed := v_removed + 1;
    END LOOP;
    RETURN v_removed;
END $$;
