-- Invalidation of one random tag, tags in a column with a partial GIN index (scripts/bench-tags). Rolled
-- back so that every transaction finds the same ~30 entries per tag to delete.
\set t random(1, 10000)
BEGIN;
DELETE FROM cache_entries WHERE tags && ARRAY['doc:' || :t];
ROLLBACK;
