-- A delete's report survives its own retry (issue 22, finding 10b).
--
-- The cache runs a statement once more, on a fresh connection, when its connection fails before the answer
-- arrives; a delete that had committed would then find its row gone and report `false`. Each key's
-- invalidation mark now keeps the token of the delete statement that wrote it and the rows it deleted, so
-- that the same statement sent again (same token) answers what it did the first time instead of deleting
-- again. NULL for marks written before this migration, by namespace marks and by callers without a token.

ALTER TABLE cache_invalidations ADD COLUMN IF NOT EXISTS token text;
ALTER TABLE cache_invalidations ADD COLUMN IF NOT EXISTS deleted bigint;

-- The invalidation trigger's work moves to its transaction's COMMIT (issue 22, finding 4).
--
-- The row trigger of invalidate_on_change used to invalidate each row's tags at once: an exclusive advisory
-- lock and a mark row per tag, held until the application's transaction ended. A 20,000-row UPDATE ran out
-- of lock memory, and two transactions changing rows of matching values in opposite order deadlocked. Now
-- the trigger only notes the tags in cache_pending_invalidations, and the first note of a transaction
-- inserts its row in cache_pending_flushes, whose deferred trigger (functions.sql) invalidates every noted
-- tag at COMMIT, at once, its locks taken in one order and bounded in number. Both tables are the cache's
-- own; their rows live and die inside the noting transaction (a ROLLBACK leaves none), hence UNLOGGED.
CREATE UNLOGGED TABLE IF NOT EXISTS cache_pending_invalidations (
    xact xid8 NOT NULL,
    tag  text COLLATE "C" NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_pending_invalidations_xact_idx ON cache_pending_invalidations (xact);

CREATE UNLOGGED TABLE IF NOT EXISTS cache_pending_flushes (
    xact xid8 PRIMARY KEY
);
