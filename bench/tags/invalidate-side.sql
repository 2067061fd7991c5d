-- Invalidation of one random tag, tags in a side table (scripts/bench-tags): delete the entries found through
-- the side table, then all tag rows of those entries. Rolled back so that every transaction finds the same
-- ~30 entries per tag to delete.
\set t random(1, 10000)
BEGIN;
WITH gone AS (
    DELETE FROM cache_entries e USING cache_entry_tags t
    WHERE t.tag = 'doc:' || :t AND e.cache_key = t.cache_key
    RETURNING e.cache_key
)
DELETE FROM cache_entry_tags WHERE cache_key IN (SELECT cache_key FROM gone);
ROLLBACK;
