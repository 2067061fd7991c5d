-- A delete's report survives its own retry (issue 22, finding 10b).
--
-- The cache runs a statement once more, on a fresh connection, when its connection fails before the answer
-- arrives; a delete that had committed would then find its row gone and report `false`. Each key's
-- invalidation mark now keeps the token of the delete statement that wrote it and the rows it deleted, so
-- that the same statement sent again (same token) answers what it did the first time instead of deleting
-- again. NULL for marks written before this migration, by namespace marks and by callers without a token.

ALTER TABLE cache_invalidations ADD COLUMN IF NOT EXISTS token text;
ALTER TABLE cache_invalidations ADD COLUMN IF NOT EXISTS deleted bigint;
