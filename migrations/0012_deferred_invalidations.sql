-- Tag invalidations queued by application transactions under REPEATABLE READ or SERIALIZABLE (issue 22).
--
-- invalidate_on_change invalidates a transaction's tags at its COMMIT, inside it. Under READ COMMITTED that
-- deletes the tagged entries there and then. Under a snapshot isolation level it cannot: the deletion would
-- run under the application's snapshot, so an entry rewritten after that snapshot fails the application's
-- COMMIT with 40001, and an entry written after it is invisible and survives. Such a transaction instead
-- inserts one row here with its tags (an insert conflicts with nothing, whatever the snapshot):
--
-- 1. From its COMMIT on, the cache's reads treat every entry carrying one of the row's tags as absent, and
--    its guarded writes of such entries are refused: no caller gets a value the change made stale.
-- 2. pg_cached_drain_invalidations, run under READ COMMITTED by the listeners the queue's notification
--    reaches and by every sweep, invalidates the tags as the trigger does under READ COMMITTED and deletes
--    the row, in one transaction.
--
-- The table is empty but for the moment between such a COMMIT and its drain; the reads' check of it costs an
-- empty scan per tagged row.

CREATE TABLE IF NOT EXISTS cache_deferred_invalidations (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tags text[] NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
