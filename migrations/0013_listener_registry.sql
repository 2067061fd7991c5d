-- Who listens on the events channel (issue 23, "notify only while some process listens").
--
-- A notification on pg_cached_events serves the processes that listen: their in-process tiers, their waits
-- for a cluster-wide computation, their drains of queued invalidations. Sending one is not free: PostgreSQL
-- lets one notifying transaction commit at a time (a cluster-wide lock from the queueing of its
-- notifications to the end of its commit), which halved a write's throughput at 4-16 writers (measured with
-- pgbench against pg_cached_write_entry with and without it: docs/BENCHMARKS.md). PostgreSQL cannot tell one
-- session who listens elsewhere, so listeners say so here, and the cache's SQL functions (pg_cached_notify in
-- functions.sql) notify only while this table has a row.
--
-- The protocol, and why no notification a listener needs is lost:
-- 1. A listener LISTENs, then registers (pg_cached_register_listener): one transaction inserts its row and
--    takes a session-level advisory lock on it, so the row is never seen without its lock held.
-- 2. Every change that notifies decides whether to send after it has changed its rows (so it holds a
--    transaction id) and reads this table with a fresh snapshot (READ COMMITTED; a transaction under
--    REPEATABLE READ or SERIALIZABLE, whose snapshot may be older than a registration, always notifies).
-- 3. After its registration committed, a listener takes a snapshot and waits for every transaction in
--    progress in it to end before its tier serves anything. A change that read no row here read before the
--    registration committed, so it is one of those transactions, or committed before the snapshot: the tier,
--    cleared when it starts serving, reads it from the table.
-- 4. A row whose lock nobody holds belongs to a session that ended: registrations and sweeps delete it. Until
--    then it only costs notifications nobody hears.
--
-- Processes of earlier releases listen without registering. A database they used gets one row standing for
-- them (held = false, which no sweep deletes), so that writes keep notifying; once every process runs this
-- release or a later one, `DELETE FROM cache_listeners WHERE NOT held` lets writes skip notifications nobody
-- hears. A new database (no functions applied yet, no entries) starts without it.

CREATE TABLE IF NOT EXISTS cache_listeners (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- false: the row stands for listeners that do not register (see above), not for a session.
    held          boolean NOT NULL DEFAULT true,
    -- For operators: when, by which backend and which cache (its sender id in notifications, hex).
    registered_at timestamptz NOT NULL DEFAULT now(),
    backend_pid   integer,
    sender        text CHECK (char_length(sender) <= 32)
);

REVOKE ALL ON cache_listeners FROM PUBLIC;

INSERT INTO cache_listeners (held)
SELECT false
WHERE (EXISTS (SELECT 1 FROM cache_schema) OR EXISTS (SELECT 1 FROM cache_entries))
  AND NOT EXISTS (SELECT 1 FROM cache_listeners WHERE NOT held);
