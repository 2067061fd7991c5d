-- Every SQL function of pg_cached, defined once. Functions version 6.
--
-- How it is applied. The tables come from the numbered migrations beside this file; the functions from here
-- only. PgCache::migrate (and `pg-cached migrate`) runs the migrations, then this file, in one transaction
-- under the advisory lock below, so several processes may migrate at once. It records its version in
-- cache_schema, and a process whose version is older than the recorded one leaves the functions as they are:
-- an older release never downgrades them. By hand, in this order and each file in one transaction:
--
--     for f in migrations/0*.sql; do psql -1 -v ON_ERROR_STOP=1 -f "$f"; done
--     psql -1 -v ON_ERROR_STOP=1 -f migrations/functions.sql
--
-- Changing this file: bump the version (here, in the guard below, in the INSERT at the end, and
-- FUNCTIONS_VERSION in cache-runtime/src/schema.rs; a unit test pins the file's checksum to its version).
-- Keep the previous release working: never change an existing parameter's name, type or place; give a new
-- parameter a default and add it last; when a signature changes, drop the old one here. The cache calls the
-- functions with named arguments.
--
-- Callers this version keeps working: the release before it (functions from migrations 0003-0005), which
-- calls pg_cached_write_entry, pg_cached_write_entries, pg_cached_delete, pg_cached_delete_many,
-- pg_cached_mark_namespace, pg_cached_invalidate_tags, pg_cached_invalidate_on_change and
-- pg_cached_remove_invalidate_on_change with positional arguments: the same arguments still mean the same
-- (version 2 adds p_try_locks, defaulted, last, to the writes and deletes). Gone: pg_cached_write and
-- pg_cached_write_many, the wrappers kept for releases from before tags.
--
-- Version 2: notifications are signed (pg_cached_sign, the secret of migration 0010) and name namespaces and
-- tags by hash; the trigger notes tags and a deferred trigger invalidates them at commit (migration 0007);
-- pg_cached_grant and pg_cached_revoke cover cache_semantic (migration 0009) and cache_events_secret.
-- Usage (migration 0008): pg_cached_write_entry and pg_cached_write_entries take the entry's usage
-- as three new last parameters with defaults (p_input_tokens, p_output_tokens, p_cost_micros; arrays for the
-- batch), so the calls of version 1's processes, named or positional, still resolve (and store no usage).
-- Their old signatures are dropped: a call would otherwise match both. Writers granted earlier get EXECUTE on
-- the new ones at the end of this file.
--
-- Version 3: tenants (migration 0011). pg_cached_write_entry takes p_tenant and pg_cached_write_entries
-- p_tenants (one per key), defaulted to NULL (no tenant) and last, so the calls of version 2's processes,
-- named or positional, still resolve and write rows of no tenant; the version 2 signatures are dropped. New:
-- pg_cached_enable_tenant_isolation (row-level security by tenant, see "Tenants").
--
-- Version 4: pg_cached_sign and pg_cached_try_lock_write, called by every write, are PL/pgSQL (same
-- signatures and results): as SQL functions that cannot be inlined they were planned again on every call.
--
-- Version 5: an application transaction under REPEATABLE READ or SERIALIZABLE queues its trigger's tag
-- invalidations (cache_deferred_invalidations, migration 0012) instead of deleting under its snapshot;
-- pg_cached_write_refused refuses a guarded write carrying a queued tag; pg_cached_drain_invalidations runs
-- the queue. The cache's reads check the queue, so roles granted earlier get SELECT on it (end of file).
--
-- Version 6: notifications only while some process listens (migration 0013). Every function that notified
-- calls pg_cached_notify, which sends nothing while cache_listeners is empty; listeners register with
-- pg_cached_register_listener, the one function a reader may run (as the owner: it only ever adds its
-- caller's row and deletes rows of sessions that ended). Writers get every right on cache_listeners.
--
-- Privileges. PostgreSQL lets PUBLIC execute a new function; the end of this file takes that back from every
-- function of the cache. The owner (the role that applies this file) keeps every right. pg_cached_grant gives
-- an application role what it needs. Every function runs with its caller's rights except
-- pg_cached_invalidation_trigger, which runs as the owner and so evaluates no expression, cast or function
-- the table's owner could have chosen (see it below).

DO $$
BEGIN
    PERFORM pg_advisory_xact_lock(1885430596, 0); -- the 'schema' lock class below: appliers take turns
    -- Every schema-wide loop below (privileges, the trigger's search_path) works on the schema of the tables.
    IF current_schema() IS DISTINCT FROM (SELECT n.nspname FROM pg_catalog.pg_class AS c
                                          JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
                                          WHERE c.oid = 'cache_entries'::regclass) THEN
        RAISE EXCEPTION 'apply functions.sql in the schema of cache_entries (the search_path the migrations ran with)'
            USING ERRCODE = 'invalid_schema_name';
    END IF;
    IF (SELECT functions_version FROM cache_schema) > 6 THEN
        RAISE EXCEPTION 'the database holds version % of the cache''s SQL functions, newer than this file (6)',
            (SELECT functions_version FROM cache_schema)
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'keep them: they serve older processes too';
    END IF;
END $$;

DROP FUNCTION IF EXISTS pg_cached_write(text, jsonb, bigint, bigint, bigint, text, text, text, boolean);
DROP FUNCTION IF EXISTS pg_cached_write_many(text[], jsonb[], bigint[], bigint[], bigint[], text[], text, text,
                                             boolean);
-- Version 2 adds the usage parameters and p_try_locks to the writes (see "Locks"), and p_try_locks and p_token
-- to the deletes: the old signatures go, so that a positional call of the previous release finds exactly one
-- function (its arguments, the new ones' defaults).
DROP FUNCTION IF EXISTS pg_cached_write_entry(text, jsonb, bigint, bigint, bigint, text, text, text, boolean, text[],
                                              bigint, text);
DROP FUNCTION IF EXISTS pg_cached_write_entries(text[], jsonb[], bigint[], bigint[], bigint[], text[], text, text,
                                                boolean, text[], bigint[], text[]);
-- Version 3 adds p_tenant (p_tenants) to the writes: their version 2 signatures go, for the same reason.
DROP FUNCTION IF EXISTS pg_cached_write_entry(text, jsonb, bigint, bigint, bigint, text, text, text, boolean, text[],
                                              bigint, text, bigint, bigint, bigint, boolean);
DROP FUNCTION IF EXISTS pg_cached_write_entries(text[], jsonb[], bigint[], bigint[], bigint[], text[], text, text,
                                                boolean, text[], bigint[], text[], bigint[], bigint[], bigint[],
                                                boolean);
DROP FUNCTION IF EXISTS pg_cached_delete(text, text, text);
DROP FUNCTION IF EXISTS pg_cached_delete_many(text[], text, text);
DROP FUNCTION IF EXISTS pg_cached_delete(text, text, text, boolean);
DROP FUNCTION IF EXISTS pg_cached_delete_many(text[], text, text, boolean);

-- ## Locks
--
-- Writes and invalidations take turns under transaction-scoped advisory locks, released at COMMIT or ROLLBACK
-- (nothing leaks through a pool). The lock classes are the first key of pg_advisory_xact_lock(int, int):
-- 'pg_c' as a 32-bit integer (1885430592) plus one per class. The second key is hashtext() of the name; a
-- collision only makes two names take turns. Callers that lock several classes take them in the order
-- namespace, key, tag, and the names of one class in the order of their lock keys (pg_cached_lock_many), so
-- that two callers locking overlapping names wait for each other instead of deadlocking.
--
-- pg_cached_lock_class, pg_cached_lock and pg_cached_begin are single SQL expressions: the planner inlines
-- them into their callers' statements, so that they cost what the built-in calls they wrap cost.
CREATE OR REPLACE FUNCTION pg_cached_lock_class(p_class text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE p_class
        WHEN 'key' THEN 1885430593       -- one cache key: writes and deletes, exclusive
        WHEN 'namespace' THEN 1885430594 -- writes shared, a namespace mark exclusive
        WHEN 'tag' THEN 1885430595       -- writes of tagged entries shared, tag invalidations exclusive
        WHEN 'schema' THEN 1885430596    -- applying this file
        WHEN 'tag_bucket' THEN 1885430597 -- one of 1024 buckets of tags (pg_cached_lock_tags)
        WHEN 'listener' THEN 1885430598   -- a row of cache_listeners, held by its session while it listens
        ELSE ('unknown lock class: ' || p_class)::integer -- raises
    END
$$;

-- Takes the lock of class p_class on p_name (none for NULL), shared or exclusive.
CREATE OR REPLACE FUNCTION pg_cached_lock(p_class text, p_name text, p_shared boolean DEFAULT false)
RETURNS void LANGUAGE sql AS $$
    SELECT CASE WHEN p_shared THEN pg_advisory_xact_lock_shared(pg_cached_lock_class(p_class), hashtext(p_name))
                ELSE pg_advisory_xact_lock(pg_cached_lock_class(p_class), hashtext(p_name)) END
$$;

-- Takes the locks of class p_class on each of p_names (NULLs skipped), shared or exclusive, in the order of
-- their lock keys.
CREATE OR REPLACE FUNCTION pg_cached_lock_many(p_class text, p_names text[], p_shared boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_class integer := pg_cached_lock_class(p_class);
BEGIN
    -- One statement per call (a loop of PERFORMs costs an executor start per name); the sort under the
    -- projection fixes the order in which the locks are taken.
    IF p_shared THEN
        PERFORM pg_advisory_xact_lock_shared(v_class, l.h)
        FROM (SELECT DISTINCT hashtext(n) AS h FROM unnest(p_names) AS n WHERE n IS NOT NULL ORDER BY 1) AS l;
    ELSE
        PERFORM pg_advisory_xact_lock(v_class, l.h)
        FROM (SELECT DISTINCT hashtext(n) AS h FROM unnest(p_names) AS n WHERE n IS NOT NULL ORDER BY 1) AS l;
    END IF;
END $$;

-- The bucket of tag p_tag, as the name whose lock pg_cached_lock_tags takes ('0' to '1023').
CREATE OR REPLACE FUNCTION pg_cached_tag_bucket(p_tag text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (hashtext(p_tag) & 1023)::text
$$;

-- Tries to take, without waiting, the locks one write of p_key takes (its namespace's shared, its key's
-- exclusive, each of p_tags' and their buckets' shared, see pg_cached_lock_tags); whether it got them all. A batch of many callers' writes (or deletes:
-- NULL p_namespace and p_tags) tries each job's locks this way, so that a lock someone else holds costs only
-- the jobs that need it: those are answered NULL and sent again alone, waiting for the lock within their own
-- callers' deadlines. Locks a job got before one it did not stay held until the batch commits (a
-- transaction-scoped advisory lock cannot be given back early); never waiting, a batch never deadlocks.
CREATE OR REPLACE FUNCTION pg_cached_try_lock_write(p_namespace text, p_key text, p_tags text[])
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF p_namespace IS NOT NULL
       AND NOT pg_try_advisory_xact_lock_shared(pg_cached_lock_class('namespace'), hashtext(p_namespace)) THEN
        RETURN false;
    END IF;
    IF NOT pg_try_advisory_xact_lock(pg_cached_lock_class('key'), hashtext(p_key)) THEN
        RETURN false;
    END IF;
    RETURN coalesce((SELECT bool_and(
                         pg_try_advisory_xact_lock_shared(pg_cached_lock_class('tag_bucket'),
                                                          hashtext(pg_cached_tag_bucket(t)))
                         AND pg_try_advisory_xact_lock_shared(pg_cached_lock_class('tag'), hashtext(t)))
                     FROM unnest(p_tags) AS t WHERE t IS NOT NULL), true);
END $$;

-- Takes the locks on tags p_tags (NULLs skipped): shared for a write of entries carrying them, exclusive for
-- their invalidation. The locks one statement takes are bounded: a write takes, shared, each tag's bucket
-- (hashtext() modulo 1024) and then each tag's own lock (at most 2 x 64 tags, MAX_TAGS_PER_ENTRY); an
-- invalidation of at most 64 distinct tags takes each tag's lock, one of more takes the tags' buckets
-- instead, at most 1024 locks for any number of tags (a 20,000-row UPDATE under invalidate_on_change). Either
-- way a write and an invalidation of a common tag conflict. Each kind is taken in the order of its lock keys,
-- buckets before tags, so that callers wait for each other instead of deadlocking.
CREATE OR REPLACE FUNCTION pg_cached_lock_tags(p_tags text[], p_shared boolean)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_shared THEN
        PERFORM pg_cached_lock_many('tag_bucket', ARRAY(SELECT pg_cached_tag_bucket(t) FROM unnest(p_tags) AS t),
                                    true);
        PERFORM pg_cached_lock_many('tag', p_tags, true);
    ELSIF (SELECT count(DISTINCT t) FROM unnest(p_tags) AS t) <= 64 THEN
        PERFORM pg_cached_lock_many('tag', p_tags);
    ELSE
        PERFORM pg_cached_lock_many('tag_bucket', ARRAY(SELECT pg_cached_tag_bucket(t) FROM unnest(p_tags) AS t));
    END IF;
END $$;

-- What every write and invalidation does first, for its own transaction only: give up waiting for a lock
-- after p_lock_timeout ms (so that a statement stuck behind a lock is cancelled by the server instead of
-- holding its connection), and with p_async_commit, commit without waiting for the WAL flush. NULL
-- p_lock_timeout keeps the session's setting (a trigger inside the application's transaction). Both settings
-- go through one concat(), evaluated left to right, to keep the body one expression.
CREATE OR REPLACE FUNCTION pg_cached_begin(p_lock_timeout text, p_async_commit boolean DEFAULT false)
RETURNS void LANGUAGE sql AS $$
    SELECT CASE WHEN concat(
        CASE WHEN p_lock_timeout IS NOT NULL THEN set_config('lock_timeout', p_lock_timeout, true) END,
        CASE WHEN p_async_commit THEN set_config('synchronous_commit', 'off', true) END) IS NOT NULL
    THEN NULL::void END
$$;

-- ## The events channel
--
-- Every notification the cache sends on pg_cached_events is `<mac>|<sender>|<kind>|<data>` (the format:
-- cache-runtime/src/channel.rs). Its data holds no key, namespace or tag text, only 64-bit hashes of them:
-- any role may LISTEN. The mac is the first 16 bytes, in hex, of HMAC-SHA256 (RFC 2104) of the rest under the
-- secret of cache_events_secret (migration 0010): any role may NOTIFY, and listeners drop what does not
-- verify. Built on sha256() alone, so that no extension (pgcrypto) is needed.

-- The hash of a namespace or tag as payloads carry it: the first 8 bytes of SHA-256 of its UTF-8 text, in hex.
CREATE OR REPLACE FUNCTION pg_cached_name_hash(p_name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT encode(substr(sha256(convert_to(p_name, 'UTF8')), 1, 8), 'hex')
$$;

-- HMAC-SHA256 of p_message under p_key (RFC 2104; a key longer than the 64-byte block is hashed first). The
-- cache signs with the pads stored beside its secret (pg_cached_sign); this one is the definition they follow,
-- checked against RFC 4231's test vectors and the runtime's implementation, and what a DBA rotating the
-- secret would use.
CREATE OR REPLACE FUNCTION pg_cached_hmac(p_key bytea, p_message bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT sha256(k.outer_pad || sha256(k.inner_pad || p_message))
    FROM (SELECT (SELECT decode(string_agg(lpad(to_hex(get_byte(b.padded, i) # 54), 2, '0'), '' ORDER BY i), 'hex')
                  FROM generate_series(0, 63) AS i) AS inner_pad,
                 (SELECT decode(string_agg(lpad(to_hex(get_byte(b.padded, i) # 92), 2, '0'), '' ORDER BY i), 'hex')
                  FROM generate_series(0, 63) AS i) AS outer_pad
          FROM (SELECT a.k || decode(repeat('00', 64 - octet_length(a.k)), 'hex') AS padded
                FROM (SELECT CASE WHEN octet_length(p_key) > 64 THEN sha256(p_key) ELSE p_key END AS k) AS a) AS b
         ) AS k
$$;

-- p_payload signed for the events channel: `<mac>|<p_payload>`, the mac as described above. Reads the secret
-- with the caller's rights (the trigger's are the owner's); a role that may not read it gets an error.
CREATE OR REPLACE FUNCTION pg_cached_sign(p_payload text) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_inner bytea;
    v_outer bytea;
BEGIN
    SELECT s.inner_pad, s.outer_pad INTO v_inner, v_outer FROM cache_events_secret AS s;
    RETURN encode(substr(sha256(v_outer || sha256(v_inner || convert_to(p_payload, 'UTF8'))), 1, 16), 'hex')
           || '|' || p_payload;
END $$;

-- Sends p_payload, signed, on the events channel, unless nobody can hear it: no row in cache_listeners
-- (migration 0013 has the protocol). Called after the change it reports, so that the transaction holds an
-- id a registering listener waits for; the table is read with this statement's snapshot, fresh under READ
-- COMMITTED. Under REPEATABLE READ or SERIALIZABLE the snapshot may predate a registration: it always sends.
-- Skipping spares the signature and PostgreSQL's one-notifying-commit-at-a-time lock.
CREATE OR REPLACE FUNCTION pg_cached_notify(p_payload text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM cache_listeners) OR current_setting('transaction_isolation') <> 'read committed' THEN
        PERFORM pg_notify('pg_cached_events', pg_cached_sign(p_payload));
    END IF;
END $$;

-- Registers the calling session as a listener of the events channel (migration 0013): deletes the rows of
-- sessions that ended, inserts the caller's row with its cache's sender id p_sender (hex, for operators) and
-- takes the row's session-level lock, which the session holds until it ends. Returns the row's id. The
-- caller LISTENs first, and trusts what it hears only once the transactions in progress after this one
-- committed have ended (the listener does: tier/events.rs).
-- Runs as the owner (SECURITY DEFINER), so that a reader's listener may register without any right on the
-- table; it evaluates nothing of the caller's but p_sender, stored as text, and its search_path is fixed (end
-- of this file).
CREATE OR REPLACE FUNCTION pg_cached_register_listener(p_sender text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id bigint;
BEGIN
    PERFORM pg_cached_forget_listeners();
    INSERT INTO cache_listeners (backend_pid, sender) VALUES (pg_backend_pid(), left(p_sender, 32))
    RETURNING id INTO v_id;
    -- Nobody can hold it but a role that took it at random: then fail, and the row goes with the rollback.
    IF NOT pg_try_advisory_lock(pg_cached_lock_class('listener'), (v_id % 2147483647)::integer) THEN
        RAISE EXCEPTION 'the lock of listener row % is held by another session', v_id
            USING ERRCODE = 'lock_not_available';
    END IF;
    RETURN v_id;
END $$;

-- Deletes the rows of cache_listeners whose session ended (their lock is free), but those standing for
-- listeners of earlier releases (held = false). Returns how many. Run by registrations and by sweeps.
CREATE OR REPLACE FUNCTION pg_cached_forget_listeners() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_deleted bigint;
BEGIN
    -- The try takes a transaction-level lock, given back at this transaction's end; a live session's
    -- session-level lock on the same row makes it fail.
    DELETE FROM cache_listeners AS l
    WHERE l.held AND pg_try_advisory_xact_lock(pg_cached_lock_class('listener'), (l.id % 2147483647)::integer);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END $$;

-- ## Writes
--
-- A write of a memoized result carries p_started_us (µs of the database clock when its computation began)
-- and p_started_snapshot (the snapshot of its lookup), and is refused if its key, its namespace or one of its
-- tags was invalidated since. Tag marks are judged by transaction too: an invalidation made by a trigger
-- inside an application's transaction takes effect at that COMMIT, which may come long after the trigger ran,
-- so a write is also refused for a mark whose transaction its computation's snapshot did not see. Every
-- write notifies (pg_cached_events) from its own transaction while some process listens (pg_cached_notify),
-- so processes with an in-process tier hear about writes from processes without one.

-- Whether a guarded write of p_key (namespace p_namespace, tags p_tags) must be refused, per the rule above.
-- NULL p_started_us: an unguarded write, never refused. Its callers read the marks after taking their locks.
-- PL/pgSQL rather than SQL: a SQL function that cannot be inlined is planned again in every transaction that
-- calls it (measured: two thirds of a write's time on the server), PL/pgSQL keeps its plan for the session.
CREATE OR REPLACE FUNCTION pg_cached_write_refused(
    p_key text, p_namespace text, p_tags text[], p_started_us bigint, p_snapshot text
) RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_started_us IS NULL THEN
        RETURN false;
    END IF;
    RETURN EXISTS (
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
        -- A tag whose invalidation is queued (see pg_cached_drain_invalidations): the drain would delete it.
        OR (p_tags IS NOT NULL AND EXISTS (
            SELECT 1 FROM cache_deferred_invalidations AS d WHERE d.tags && p_tags
        ));
END $$;

-- Stores p_data under p_key for p_ttl_ms (NULL: forever), kept p_keep_ms more for stale serving, with its
-- tags, compute time (µs), usage (tokens in and out, cost in micro-USD; NULL: none reported) and tenant
-- (NULL: none); guarded as above; sends p_notify. Returns whether it wrote. With p_try_locks, it waits for no lock
-- (pg_cached_try_lock_write), and returns NULL, having done nothing, if one is held.
CREATE OR REPLACE FUNCTION pg_cached_write_entry(
    p_key text, p_data jsonb, p_ttl_ms bigint, p_keep_ms bigint, p_started_us bigint, p_namespace text,
    p_notify text, p_lock_timeout text, p_async_commit boolean, p_tags text[], p_compute_us bigint,
    p_started_snapshot text, p_input_tokens bigint DEFAULT NULL, p_output_tokens bigint DEFAULT NULL,
    p_cost_micros bigint DEFAULT NULL, p_try_locks boolean DEFAULT false, p_tenant text DEFAULT NULL
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_expires timestamptz := now() + p_ttl_ms * interval '1 millisecond';
BEGIN
    PERFORM pg_cached_begin(p_lock_timeout, p_async_commit);
    IF p_try_locks THEN
        IF NOT pg_cached_try_lock_write(p_namespace, p_key, p_tags) THEN
            RETURN NULL;
        END IF;
    ELSE
        PERFORM pg_cached_lock('namespace', p_namespace, true);
        PERFORM pg_cached_lock('key', p_key);
        IF p_tags IS NOT NULL THEN
            PERFORM pg_cached_lock_tags(p_tags, true);
        END IF;
    END IF;
    IF pg_cached_write_refused(p_key, p_namespace, p_tags, p_started_us, p_started_snapshot) THEN
        RETURN false;
    END IF;
    INSERT INTO cache_entries (cache_key, data, created_at, expires_at, sweep_at, tags, compute_us, input_tokens,
                               output_tokens, cost_micros, tenant)
    VALUES (p_key, p_data, now(), v_expires, v_expires + coalesce(p_keep_ms, 0) * interval '1 millisecond',
            p_tags, p_compute_us, p_input_tokens, p_output_tokens, p_cost_micros, p_tenant)
    ON CONFLICT (cache_key) DO UPDATE
        SET data = EXCLUDED.data, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at,
            sweep_at = EXCLUDED.sweep_at, tags = EXCLUDED.tags, compute_us = EXCLUDED.compute_us,
            input_tokens = EXCLUDED.input_tokens, output_tokens = EXCLUDED.output_tokens,
            cost_micros = EXCLUDED.cost_micros, tenant = EXCLUDED.tenant;
    PERFORM pg_cached_notify(p_notify);
    RETURN true;
END $$;

-- pg_cached_write_entry for many distinct keys in one statement, each under its own guard; one notification
-- p_notify for all. p_tags[i] holds key i's tags joined by the unit separator (U+001F, which tags never
-- contain), or NULL: SQL arrays of arrays must be rectangular. The usage and tenant arrays, when given, have
-- one element per key. Returns, per key in order, whether it wrote. With p_try_locks, each key's locks are tried
-- (pg_cached_try_lock_write): a key that did not get them all is not written, and answered NULL; the others
-- are written as usual.
CREATE OR REPLACE FUNCTION pg_cached_write_entries(
    p_keys text[], p_data jsonb[], p_ttl_ms bigint[], p_keep_ms bigint[], p_started_us bigint[],
    p_namespaces text[], p_notify text, p_lock_timeout text, p_async_commit boolean, p_tags text[],
    p_compute_us bigint[], p_started_snapshots text[], p_input_tokens bigint[] DEFAULT NULL,
    p_output_tokens bigint[] DEFAULT NULL, p_cost_micros bigint[] DEFAULT NULL, p_try_locks boolean DEFAULT false,
    p_tenants text[] DEFAULT NULL
) RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    v_locked boolean[];
    v_written boolean[];
BEGIN
    PERFORM pg_cached_begin(p_lock_timeout, p_async_commit);
    IF p_try_locks THEN
        -- An untagged key's two locks inline, without a PL/pgSQL call per key (see docs/BENCHMARKS.md).
        SELECT array_agg(CASE WHEN w.tags IS NULL
                              THEN pg_try_advisory_xact_lock_shared(pg_cached_lock_class('namespace'), hashtext(w.ns))
                                   AND pg_try_advisory_xact_lock(pg_cached_lock_class('key'), hashtext(w.k))
                              ELSE pg_cached_try_lock_write(w.ns, w.k, string_to_array(w.tags, E'\x1f')) END
                         ORDER BY w.i)
        INTO v_locked
        FROM unnest(p_keys, p_namespaces, p_tags) WITH ORDINALITY AS w(k, ns, tags, i);
    ELSE
        PERFORM pg_cached_lock_many('namespace', p_namespaces, true);
        PERFORM pg_cached_lock_many('key', p_keys);
        IF cardinality(array_remove(p_tags, NULL)) > 0 THEN
            PERFORM pg_cached_lock_tags(
                ARRAY(SELECT t FROM unnest(p_tags) AS j, unnest(string_to_array(j, E'\x1f')) AS t), true);
        END IF;
    END IF;
    -- NULL for a key whose locks were not all free. The guards are read by a statement of their own, after
    -- every lock is taken: its snapshot sees what committed before (a statement's snapshot predates what it
    -- does, and pg_cached_write_refused, STABLE, reads with its caller's).
    SELECT array_agg(
        CASE WHEN p_try_locks AND NOT v_locked[w.i] THEN NULL
             WHEN w.started_us IS NULL THEN true -- unguarded (a plain set): no call
             ELSE NOT pg_cached_write_refused(w.k, w.ns, string_to_array(w.tags, E'\x1f'), w.started_us, w.snap)
        END ORDER BY w.i)
    INTO v_written
    FROM unnest(p_keys, p_namespaces, p_started_us, p_tags, p_started_snapshots)
        WITH ORDINALITY AS w(k, ns, started_us, tags, snap, i);
    INSERT INTO cache_entries (cache_key, data, created_at, expires_at, sweep_at, tags, compute_us, input_tokens,
                               output_tokens, cost_micros, tenant)
    SELECT w.k, w.d, now(), e.expires, e.expires + coalesce(w.keep_ms, 0) * interval '1 millisecond',
           string_to_array(w.tags, E'\x1f'), w.compute_us, p_input_tokens[w.i], p_output_tokens[w.i],
           p_cost_micros[w.i], p_tenants[w.i]
    FROM unnest(p_keys, p_data, p_ttl_ms, p_keep_ms, p_tags, p_compute_us)
        WITH ORDINALITY AS w(k, d, ttl_ms, keep_ms, tags, compute_us, i)
    CROSS JOIN LATERAL (SELECT now() + w.ttl_ms * interval '1 millisecond' AS expires) AS e
    WHERE v_written[w.i] -- NULL (not locked) writes nothing, as false does
    ON CONFLICT (cache_key) DO UPDATE
        SET data = EXCLUDED.data, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at,
            sweep_at = EXCLUDED.sweep_at, tags = EXCLUDED.tags, compute_us = EXCLUDED.compute_us,
            input_tokens = EXCLUDED.input_tokens, output_tokens = EXCLUDED.output_tokens,
            cost_micros = EXCLUDED.cost_micros, tenant = EXCLUDED.tenant;
    PERFORM pg_cached_notify(p_notify);
    RETURN v_written;
END $$;

-- ## Deletes and invalidations
--
-- Each records when it happened (cache_invalidations, cache_tag_invalidations), so that computations that
-- began earlier are not stored, and notifies every process.
--
-- A delete's report survives its retry. The cache sends a statement again, on a fresh connection, when its
-- connection failed before the answer came back; a delete that had committed would then find its row gone
-- and report 0. So a delete given p_token (unique to the statement, the same in its retry) records it, and the
-- rows it deleted, in each key's mark; the same token sent again finds them and answers the same, without
-- deleting again. (Should another delete of the key have replaced the mark in between, the retry runs as a
-- new delete: the report is then that one's.)

-- Deletes p_key and records its invalidation; sends p_notify. Returns the rows deleted. With p_try_locks,
-- returns NULL, having done nothing, if the key's lock is held.
CREATE OR REPLACE FUNCTION pg_cached_delete(p_key text, p_notify text, p_lock_timeout text,
                                            p_try_locks boolean DEFAULT false, p_token text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_deleted bigint;
BEGIN
    IF p_token IS NOT NULL THEN
        SELECT inv.deleted INTO v_deleted FROM cache_invalidations AS inv
        WHERE inv.scope = p_key AND NOT inv.is_namespace AND inv.token = p_token;
        IF FOUND THEN
            RETURN v_deleted; -- this very statement committed before: its answer was lost on the way
        END IF;
    END IF;
    PERFORM pg_cached_begin(p_lock_timeout);
    IF NOT p_try_locks THEN
        PERFORM pg_cached_lock('key', p_key);
    ELSIF NOT pg_cached_try_lock_write(NULL, p_key, NULL) THEN
        RETURN NULL;
    END IF;
    DELETE FROM cache_entries WHERE cache_key = p_key;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    INSERT INTO cache_invalidations (is_namespace, scope, invalidated_at, token, deleted)
    VALUES (false, p_key, clock_timestamp(), p_token, v_deleted)
    ON CONFLICT (scope, is_namespace) DO UPDATE
        SET invalidated_at = EXCLUDED.invalidated_at, token = EXCLUDED.token, deleted = EXCLUDED.deleted;
    PERFORM pg_cached_notify(p_notify);
    RETURN v_deleted;
END $$;

-- pg_cached_delete for every key of p_keys, one notification p_notify for all. Returns, per key in order, the
-- rows deleted (a key listed twice counts its row once, at its first place). With p_try_locks, a key whose
-- lock is held is left alone and answered NULL. Sent again with the same p_token after it committed, it answers
-- what it did (NULL for a key whose mark no longer carries the token).
CREATE OR REPLACE FUNCTION pg_cached_delete_many(p_keys text[], p_notify text, p_lock_timeout text,
                                                 p_try_locks boolean DEFAULT false, p_token text DEFAULT NULL)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    v_keys text[] := p_keys; -- the keys this call deletes
    v_deleted text[];
    v_counts bigint[];
BEGIN
    IF p_token IS NOT NULL AND EXISTS (SELECT 1 FROM cache_invalidations AS inv
                                       WHERE inv.scope = ANY (p_keys) AND NOT inv.is_namespace
                                         AND inv.token = p_token) THEN
        SELECT array_agg(
            CASE WHEN inv.token IS DISTINCT FROM p_token THEN NULL
                 WHEN u.i = (SELECT min(j) FROM unnest(p_keys) WITH ORDINALITY AS f(fk, j) WHERE f.fk = u.k)
                 THEN inv.deleted ELSE 0 END ORDER BY u.i)
        INTO v_counts
        FROM unnest(p_keys) WITH ORDINALITY AS u(k, i)
        LEFT JOIN cache_invalidations AS inv ON inv.scope = u.k AND NOT inv.is_namespace;
        RETURN v_counts;
    END IF;
    PERFORM pg_cached_begin(p_lock_timeout);
    IF p_try_locks THEN
        SELECT coalesce(array_agg(u.k ORDER BY u.i) FILTER (WHERE pg_cached_try_lock_write(NULL, u.k, NULL)), '{}')
        INTO v_keys
        FROM unnest(p_keys) WITH ORDINALITY AS u(k, i);
    ELSE
        PERFORM pg_cached_lock_many('key', p_keys);
    END IF;
    WITH gone AS (DELETE FROM cache_entries WHERE cache_key = ANY (v_keys) RETURNING cache_key)
    SELECT coalesce(array_agg(cache_key), '{}') INTO v_deleted FROM gone;
    SELECT array_agg(
        CASE WHEN NOT u.k = ANY (v_keys) THEN NULL
             WHEN u.k = ANY (v_deleted) AND u.i = (SELECT min(j) FROM unnest(p_keys) WITH ORDINALITY AS f(fk, j)
                                                   WHERE f.fk = u.k)
             THEN 1 ELSE 0 END::bigint ORDER BY u.i)
    INTO v_counts
    FROM unnest(p_keys) WITH ORDINALITY AS u(k, i);
    INSERT INTO cache_invalidations (is_namespace, scope, invalidated_at, token, deleted)
    SELECT false, d.k, clock_timestamp(), p_token, (d.k = ANY (v_deleted))::integer
    FROM (SELECT DISTINCT k FROM unnest(v_keys) AS k) AS d
    ON CONFLICT (scope, is_namespace) DO UPDATE
        SET invalidated_at = EXCLUDED.invalidated_at, token = EXCLUDED.token, deleted = EXCLUDED.deleted;
    PERFORM pg_cached_notify(p_notify);
    RETURN v_counts;
END $$;

-- Records the invalidation of a whole namespace and sends p_notify. It waits for the namespace's writes in
-- progress (they hold its lock shared), so that each of them either committed before the mark (and the purge
-- that follows deletes its row) or sees the mark and is refused.
CREATE OR REPLACE FUNCTION pg_cached_mark_namespace(p_namespace text, p_notify text, p_lock_timeout text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_cached_begin(p_lock_timeout);
    PERFORM pg_cached_lock('namespace', p_namespace);
    INSERT INTO cache_invalidations (is_namespace, scope, invalidated_at) VALUES (true, p_namespace, clock_timestamp())
    ON CONFLICT (scope, is_namespace) DO UPDATE SET invalidated_at = EXCLUDED.invalidated_at;
    PERFORM pg_cached_notify(p_notify);
END $$;

-- Tells every process's in-process tier that the entries carrying p_tags were invalidated: one signed
-- notification per tag, `<p_sender>|t|<hash of the tag>` (sender 0000000000000000 when NULL).
CREATE OR REPLACE FUNCTION pg_cached_notify_tags(p_tags text[], p_sender text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_cached_notify(coalesce(p_sender, '0000000000000000') || '|t|' || pg_cached_name_hash(t))
    FROM unnest(p_tags) AS t;
END $$;

-- Deletes every entry carrying any of p_tags, records the tags' invalidation, and tells every process's
-- in-process tier, one signed notification per tag (`<sender>|t|<hash of the tag>`). Returns the number of
-- entries deleted.
-- Inside a larger transaction (a trigger), all of it takes effect at COMMIT and none of it after ROLLBACK, and
-- writes of entries carrying one of the tags wait for that end. p_lock_timeout, when given, bounds the wait
-- for writes in progress (and applies to the rest of the transaction: the cache passes it only for its own).
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
    PERFORM pg_cached_begin(p_lock_timeout);
    PERFORM pg_cached_lock_tags(v_tags, false);
    INSERT INTO cache_tag_invalidations (tag, invalidated_at, xact)
    SELECT t, clock_timestamp(), pg_current_xact_id() FROM unnest(v_tags) AS t
    ON CONFLICT (tag) DO UPDATE SET invalidated_at = EXCLUDED.invalidated_at, xact = EXCLUDED.xact;
    DELETE FROM cache_entries WHERE tags && v_tags;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    PERFORM pg_cached_notify_tags(v_tags, p_sender);
    RETURN v_deleted;
END $$;

-- ## Triggers on the application's tables (invalidate_on_change)

-- The type of p_column of p_table, if the trigger can make tags of its values safely; raises otherwise
-- (undefined_column, or datatype_mismatch for a type it refuses). Accepted: built-in scalar types whose text
-- form is the same in every session once the trigger's own settings are fixed (DateStyle ISO, TimeZone UTC).
-- Refused: every other type, domains, enums, composites and arrays included. The trigger runs as the cache's
-- owner, and turning a value of a type the table's owner chose into text could run that owner's code (a cast
-- of their own) with the cache owner's rights; a float's text depends on extra_float_digits, and equality
-- on floats makes poor tags anyway.
CREATE OR REPLACE FUNCTION pg_cached_tag_column_type(p_table regclass, p_column text)
RETURNS regtype LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_type regtype;
BEGIN
    SELECT a.atttypid INTO v_type FROM pg_catalog.pg_attribute AS a
    WHERE a.attrelid = p_table AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', p_column, p_table USING ERRCODE = 'undefined_column';
    END IF;
    IF v_type NOT IN ('pg_catalog.text'::pg_catalog.regtype, 'pg_catalog.varchar'::pg_catalog.regtype,
                      'pg_catalog.bpchar'::pg_catalog.regtype, 'pg_catalog.name'::pg_catalog.regtype,
                      'pg_catalog.int2'::pg_catalog.regtype, 'pg_catalog.int4'::pg_catalog.regtype,
                      'pg_catalog.int8'::pg_catalog.regtype, 'pg_catalog.numeric'::pg_catalog.regtype,
                      'pg_catalog.bool'::pg_catalog.regtype, 'pg_catalog.uuid'::pg_catalog.regtype,
                      'pg_catalog.date'::pg_catalog.regtype, 'pg_catalog.timestamp'::pg_catalog.regtype,
                      'pg_catalog.timestamptz'::pg_catalog.regtype) THEN
        RAISE EXCEPTION 'column "%" of relation % has type %, which cannot name cache tags', p_column, p_table, v_type
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'use a column of type text, varchar, char, name, smallint, integer, bigint, numeric, '
                         'boolean, uuid, date, timestamp or timestamptz';
    END IF;
    RETURN v_type;
END $$;

-- Raises unless the current role may manage the cache's triggers on p_table: a member of the table owner's
-- role, or of the cache owner's (who owns these functions); a temporary table only from its own session.
CREATE OR REPLACE FUNCTION pg_cached_check_trigger_table(p_table regclass)
RETURNS void LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_table pg_catalog.pg_class;
    v_cache_owner oid := (SELECT proowner FROM pg_catalog.pg_proc
                          WHERE oid = 'pg_cached_invalidation_trigger()'::pg_catalog.regprocedure);
BEGIN
    SELECT * INTO v_table FROM pg_catalog.pg_class WHERE oid = p_table;
    IF v_table.relpersistence = 't' AND v_table.relnamespace IS DISTINCT FROM pg_catalog.pg_my_temp_schema() THEN
        RAISE EXCEPTION '% is a temporary table of another session', p_table USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT (pg_catalog.pg_has_role(v_table.relowner, 'USAGE')
            OR (v_table.relpersistence <> 't' AND pg_catalog.pg_has_role(v_cache_owner, 'USAGE'))) THEN
        RAISE EXCEPTION 'only the owner of % (or of the cache) may manage its cache triggers', p_table
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END $$;

-- The trigger installed by pg_cached_invalidate_on_change, after each UPDATE or DELETE of a row: notes the
-- tag TG_ARGV[1] || <the row's value of column TG_ARGV[0]>, old and new, for invalidation when the
-- transaction commits (pg_cached_flush_invalidations, below). Tags longer than the runtime accepts (200
-- characters, MAX_TAG_CHARS) cannot be on any entry: they are skipped, and the change goes on.
--
-- Why at COMMIT. An invalidation holds each tag's lock exclusive until its transaction ends, so that a write
-- of an entry carrying the tag waits for the end and then reads the mark. Taken row by row, those locks were
-- one per tag (a 20,000-row UPDATE ran out of lock memory) and in the order of the rows (two transactions
-- changing rows of matching values in opposite order deadlocked, and so did their mark rows). Taken at
-- COMMIT, all of a transaction's tags are invalidated at once: the locks in one order, bounded in number
-- (pg_cached_lock_tags), held only while the transaction commits. A write that commits in between is deleted
-- by the invalidation (it runs after the write's lock is given back); one that comes later waits for the
-- COMMIT and finds the mark. ROLLBACK (of the transaction or of a savepoint) drops the notes with the
-- changes. An application that runs SET CONSTRAINTS ALL IMMEDIATE gets its notes invalidated at that point.
--
-- It runs as the cache's owner (SECURITY DEFINER), so that a role allowed to change the table needs no right
-- on the cache's tables. That is only safe because nothing it evaluates can be chosen by the table's owner:
-- - the column's type is checked on every call (pg_cached_tag_column_type: it may have changed since the
--   trigger was installed), and only built-in types are turned into text, by built-in casts;
-- - its search_path is pg_catalog, the cache's schema (set at the end of this file), then pg_temp, so no
--   function, operator, type or table of the caller's choosing is found first;
-- - DateStyle and TimeZone are fixed, so that a date or timestamp gives the same tag in every session.
-- If the invalidation cannot run, the change fails with it (as a foreign key check would): entries built on
-- data that changed are never silently kept.
CREATE OR REPLACE FUNCTION pg_cached_invalidation_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET "DateStyle" = 'ISO, YMD' SET "TimeZone" = 'UTC' AS $$
DECLARE
    v_old text;
    v_new text;
BEGIN
    PERFORM pg_cached_tag_column_type(TG_RELID, TG_ARGV[0]);
    EXECUTE format('SELECT ($1).%I::pg_catalog.text', TG_ARGV[0]) USING OLD INTO v_old;
    IF TG_OP = 'UPDATE' THEN
        EXECUTE format('SELECT ($1).%I::pg_catalog.text', TG_ARGV[0]) USING NEW INTO v_new;
    END IF;
    -- A NULL value names no tag (prefix || NULL is NULL, and NULLs are skipped).
    INSERT INTO cache_pending_invalidations (xact, tag)
    SELECT DISTINCT pg_current_xact_id(), t FROM unnest(ARRAY[TG_ARGV[1] || v_old, TG_ARGV[1] || v_new]) AS t
    WHERE char_length(t) <= 200;
    IF FOUND THEN
        -- The transaction's first note queues its flush at COMMIT; later ones find it queued.
        INSERT INTO cache_pending_flushes (xact) VALUES (pg_current_xact_id()) ON CONFLICT (xact) DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

-- The deferred trigger on cache_pending_flushes: at COMMIT of a transaction that noted tags (above),
-- invalidates them all at once (pg_cached_invalidate_tags: locks in one order and bounded in number, marks,
-- deletes, notifications), and removes the notes. Runs as the cache's owner, like the trigger above, and
-- evaluates nothing but the cache's own functions over the noted text.
--
-- Under REPEATABLE READ or SERIALIZABLE the deletion would run under the application's snapshot: an entry
-- rewritten since would fail the application's COMMIT (40001), one written since would be invisible and
-- survive. There the tags are queued instead (pg_cached_queue_invalidation), which conflicts with nothing.
CREATE OR REPLACE FUNCTION pg_cached_flush_invalidations() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_xact xid8 := pg_current_xact_id();
    v_tags text[];
BEGIN
    DELETE FROM cache_pending_flushes WHERE xact = v_xact;
    WITH noted AS (DELETE FROM cache_pending_invalidations WHERE xact = v_xact RETURNING tag)
    SELECT array_agg(DISTINCT tag) INTO v_tags FROM noted;
    IF current_setting('transaction_isolation') = 'read committed' THEN
        PERFORM pg_cached_invalidate_tags(v_tags);
    ELSE
        PERFORM pg_cached_queue_invalidation(v_tags);
    END IF;
    RETURN NULL;
END $$;

-- Queues the invalidation of p_tags (cache_deferred_invalidations, migration 0012), for a transaction whose
-- snapshot must not decide which entries it deletes. From its COMMIT on, reads treat the entries carrying
-- them as absent and guarded writes of them are refused; it notifies every process's tier
-- (pg_cached_notify_tags, as pg_cached_invalidate_tags does) and asks listeners to drain the queue (a `q` event with the row's
-- id). Takes no lock: a write of such an entry that commits first, or after, is deleted by the drain, which
-- waits for it.
CREATE OR REPLACE FUNCTION pg_cached_queue_invalidation(p_tags text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_tags text[];
    v_id bigint;
BEGIN
    SELECT array_agg(DISTINCT t ORDER BY t) INTO v_tags FROM unnest(p_tags) AS t WHERE t IS NOT NULL;
    IF v_tags IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO cache_deferred_invalidations (tags) VALUES (v_tags) RETURNING id INTO v_id;
    PERFORM pg_cached_notify_tags(v_tags, NULL);
    PERFORM pg_cached_notify('0000000000000000|q|' || lpad(to_hex(v_id), 16, '0'));
END $$;

-- Runs queued tag invalidations (pg_cached_queue_invalidation): up to p_limit rows, oldest first, skipping
-- rows another drain holds; invalidates their tags as pg_cached_invalidate_tags does and deletes the rows, in
-- this transaction, so the entries stay hidden until they are gone. Must run under READ COMMITTED (the
-- point is a snapshot newer than the queuing transaction's). Returns the rows drained: p_limit means more
-- may be waiting.
CREATE OR REPLACE FUNCTION pg_cached_drain_invalidations(p_lock_timeout text DEFAULT NULL,
                                                         p_limit integer DEFAULT 100)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_rows integer;
    v_tags text[];
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'pg_cached_drain_invalidations must run under READ COMMITTED, not %',
            current_setting('transaction_isolation') USING ERRCODE = 'invalid_transaction_state';
    END IF;
    WITH drained AS (
        DELETE FROM cache_deferred_invalidations
        WHERE id IN (SELECT d.id FROM cache_deferred_invalidations AS d ORDER BY d.id LIMIT p_limit
                     FOR UPDATE SKIP LOCKED)
        RETURNING tags
    )
    SELECT count(*), (SELECT array_agg(DISTINCT t) FROM drained AS r, unnest(r.tags) AS t)
    INTO v_rows, v_tags FROM drained;
    PERFORM pg_cached_invalidate_tags(v_tags, '0000000000000000', p_lock_timeout);
    RETURN v_rows;
END $$;

DROP TRIGGER IF EXISTS pg_cached_flush ON cache_pending_flushes;
CREATE CONSTRAINT TRIGGER pg_cached_flush AFTER INSERT ON cache_pending_flushes
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pg_cached_flush_invalidations();

-- Installs (or replaces) the trigger that invalidates `<p_tag_prefix><p_column>` whenever a row of p_table is
-- updated or deleted. Idempotent: one trigger per (column, prefix) pair, named after a hash of the pair.
-- Returns the trigger's name. p_table is a regclass: schema-qualified or not, quoted as in SQL; a missing
-- table fails with undefined_table (42P01), a missing column with undefined_column (42703), a column of a
-- type it cannot use with datatype_mismatch (42804), a table the caller may not manage with
-- insufficient_privilege (42501).
CREATE OR REPLACE FUNCTION pg_cached_invalidate_on_change(p_table regclass, p_column text, p_tag_prefix text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_trigger text := 'pg_cached_' || left(md5(p_column || E'\x1f' || p_tag_prefix), 16);
BEGIN
    PERFORM pg_cached_check_trigger_table(p_table);
    PERFORM pg_cached_tag_column_type(p_table, p_column);
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
    PERFORM pg_cached_check_trigger_table(p_table);
    FOR v_trigger IN
        SELECT t.tgname FROM pg_trigger AS t JOIN pg_proc AS p ON p.oid = t.tgfoid
        WHERE t.tgrelid = p_table AND p.proname = 'pg_cached_invalidation_trigger' AND NOT t.tgisinternal
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', v_trigger, p_table);
        v_removed := v_removed + 1;
    END LOOP;
    RETURN v_removed;
END $$;

-- ## Tenants
--
-- Row-level security by tenant, for services that give each tenant a database role of its own. Once enabled,
-- a role other than the tables' owner reads, writes and deletes only the rows of cache_entries and
-- cache_semantic whose tenant is its setting pg_cached.tenant (set it for the role: ALTER ROLE r SET
-- pg_cached.tenant = 'acme'); a role that has not set it sees only rows of no tenant. The owner (the role that
-- migrates, and that runs sweeps and purges) is not subject to the policies. The write functions run with
-- their caller's rights, so the policies hold for writes through them too. pg_cached.tenant is a setting the
-- role may change itself (SET pg_cached.tenant = ...): the isolation holds against a service that sends the
-- wrong key, not against one that runs SQL of an attacker's choosing. Idempotent; returns nothing.
CREATE OR REPLACE FUNCTION pg_cached_enable_tenant_isolation()
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_table text;
    v_rule text := $rule$tenant IS NOT DISTINCT FROM nullif(current_setting('pg_cached.tenant', true), '')$rule$;
BEGIN
    FOREACH v_table IN ARRAY ARRAY['cache_entries', 'cache_semantic'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', v_table);
        EXECUTE format('DROP POLICY IF EXISTS pg_cached_tenant ON %I', v_table);
        EXECUTE format('CREATE POLICY pg_cached_tenant ON %I USING (%s) WITH CHECK (%s)', v_table, v_rule, v_rule);
    END LOOP;
END $$;

-- ## Roles

-- Every function of the cache: the pg_cached_* functions in its schema (the one of cache_entries).
CREATE OR REPLACE FUNCTION pg_cached_functions() RETURNS SETOF regprocedure LANGUAGE sql STABLE AS $$
    SELECT p.oid::regprocedure FROM pg_catalog.pg_proc AS p
    WHERE p.pronamespace = (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = 'cache_entries'::regclass)
      AND p.proname LIKE 'pg\_cached\_%'
    ORDER BY p.oid
$$;

-- Lets p_role use the cache. A writer (p_writer, the default) may do everything a PgCache does: read, write,
-- delete, purge namespaces, invalidate tags, take leases, sweep, and manage invalidation triggers on tables it
-- owns; it gets SELECT, INSERT, UPDATE and DELETE on the cache's tables and EXECUTE on its functions but
-- pg_cached_grant and pg_cached_revoke. A reader gets SELECT on cache_entries and cache_semantic only: get,
-- get_similar, keys, stats; a writer made a reader loses the rest. Both may read cache_events_secret, which
-- their listeners verify the events channel's notifications with (and which lets a writer's SQL functions sign
-- what they send), and run pg_cached_register_listener, which their listeners register with. Both get USAGE on
-- the cache's schema. Run it as the cache's owner. A role that does not
-- exist fails with undefined_object (42704); so does PUBLIC, which is no role: granting it would undo the point.
CREATE OR REPLACE FUNCTION pg_cached_grant(p_role text, p_writer boolean DEFAULT true)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_function regprocedure;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = p_role) THEN
        RAISE EXCEPTION 'role "%" does not exist', p_role USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT p_writer THEN
        PERFORM pg_cached_revoke(p_role);
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I',
                   (SELECT n.nspname FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n
                    ON n.oid = c.relnamespace WHERE c.oid = 'cache_entries'::regclass), p_role);
    EXECUTE format('GRANT SELECT ON cache_entries, cache_semantic, cache_events_secret, '
                   'cache_deferred_invalidations TO %I', p_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION pg_cached_register_listener(text) TO %I', p_role);
    IF p_writer THEN
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON cache_entries, cache_leases, cache_invalidations, '
                       'cache_tag_invalidations, cache_semantic, cache_deferred_invalidations, cache_listeners '
                       'TO %I', p_role);
        FOR v_function IN
            SELECT f FROM pg_cached_functions() AS f
            WHERE f NOT IN ('pg_cached_grant(text, boolean)'::regprocedure, 'pg_cached_revoke(text)'::regprocedure)
        LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', v_function, p_role);
        END LOOP;
    END IF;
END $$;

-- Takes back what pg_cached_grant gave p_role (but the schema's USAGE, which the role may need for other
-- things).
CREATE OR REPLACE FUNCTION pg_cached_revoke(p_role text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_function regprocedure;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = p_role) THEN
        RAISE EXCEPTION 'role "%" does not exist', p_role USING ERRCODE = 'undefined_object';
    END IF;
    EXECUTE format('REVOKE ALL ON cache_entries, cache_leases, cache_invalidations, cache_tag_invalidations, '
                   'cache_semantic, cache_events_secret, cache_deferred_invalidations, cache_listeners FROM %I',
                   p_role);
    FOR v_function IN SELECT f FROM pg_cached_functions() AS f LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %I', v_function, p_role);
    END LOOP;
END $$;

-- ## Privileges, last: they cover every function above.

DO $$
DECLARE
    v_function regprocedure;
    v_writer text;
BEGIN
    -- PUBLIC may run none of them (CREATE FUNCTION granted it; CREATE OR REPLACE keeps what was revoked).
    FOR v_function IN SELECT f FROM pg_cached_functions() AS f LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_function);
    END LOOP;
    -- Writers granted under an earlier version get the functions this one adds: a writer is a role that may
    -- insert into cache_entries (table rights outlive function versions).
    FOR v_writer IN
        SELECT DISTINCT r.rolname FROM pg_catalog.pg_class AS c, aclexplode(c.relacl) AS a
        JOIN pg_catalog.pg_roles AS r ON r.oid = a.grantee
        WHERE c.oid = 'cache_entries'::regclass AND a.privilege_type = 'INSERT' AND a.grantee <> c.relowner
    LOOP
        PERFORM pg_cached_grant(v_writer, true);
    END LOOP;
    -- Readers granted under version 1 may read the events channel's secret too (version 2 added it), and those
    -- of versions 1-4 the queue of deferred invalidations, which reads check (version 5).
    FOR v_writer IN
        SELECT DISTINCT r.rolname FROM pg_catalog.pg_class AS c, aclexplode(c.relacl) AS a
        JOIN pg_catalog.pg_roles AS r ON r.oid = a.grantee
        WHERE c.oid = 'cache_entries'::regclass AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT SELECT ON cache_events_secret, cache_deferred_invalidations TO %I', v_writer);
        -- and, from version 6, register their listeners.
        EXECUTE format('GRANT EXECUTE ON FUNCTION pg_cached_register_listener(text) TO %I', v_writer);
    END LOOP;
    -- The trigger's search_path names the cache's schema, which only this file's caller knows.
    EXECUTE format('ALTER FUNCTION pg_cached_invalidation_trigger() SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION pg_cached_flush_invalidations() SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION pg_cached_register_listener(text) SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
END $$;

INSERT INTO cache_schema (singleton, functions_version) VALUES (true, 6)
ON CONFLICT (singleton) DO UPDATE SET functions_version = EXCLUDED.functions_version, applied_at = now();
