-- Semantic entries (issue 24): the text and embedding of an entry that a paraphrase may hit.
--
-- 1. One row per semantic entry, beside its cache_entries row and removed with it: the foreign key cascades,
--    so every way an entry goes (delete by key, namespace purge, tag or trigger invalidation, expiry sweep,
--    max_entries eviction) takes its vector too, in the same statement. A vector is never served on its own:
--    a semantic hit reads the entry by its key, which checks expiry like any other read.
-- 2. scope_hash: 64 bits of SHA-256 over the namespace, the exact part of the scope (the arguments that are
--    not matched by meaning) and model_id. Vectors are compared only inside one scope, so a vector of another
--    model, or of another version of one, is never compared with a new one; model_id is kept, and checked on
--    every read, so that a collision of scope hashes still never mixes two models.
-- 3. embedding: the unit vector as little-endian f32 (384 dimensions: 1,536 bytes, stored out of line by
--    TOAST, uncompressed: floats do not compress).
-- 4. xact: the transaction that wrote the row. Each process keeps the vectors of the scopes it searches in
--    memory and catches up with the rows written since its last look: every row whose transaction was not
--    visible then has an xid at or above that snapshot's xmin, so "xact >= the last xmin" misses no commit,
--    whatever order concurrent writers commit in. The index serves exactly that range scan.
--
-- Requires PostgreSQL 13 or later (xid8); the tags migration already requires 14.

CREATE TABLE IF NOT EXISTS cache_semantic (
    cache_key  VARCHAR(500) COLLATE "C" PRIMARY KEY REFERENCES cache_entries (cache_key) ON DELETE CASCADE,
    scope_hash bigint NOT NULL,
    model_id   text NOT NULL,
    text       text NOT NULL,
    embedding  bytea NOT NULL,
    xact       xid8 NOT NULL DEFAULT pg_current_xact_id()
);

ALTER TABLE cache_semantic ALTER COLUMN embedding SET STORAGE EXTERNAL;

CREATE INDEX IF NOT EXISTS cache_semantic_scope_idx ON cache_semantic (scope_hash, xact);
