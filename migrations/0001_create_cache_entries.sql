-- The cache table of pg_cached.
--
-- Columns are the original design's. Two deliberate choices:
-- * cache_key uses the "C" collation. Byte order lets the primary key's own index serve prefix scans
--   (namespace purges, keys(prefix)), which a linguistic collation cannot, and compares faster.
-- * No second index on cache_key (the primary key already is one) and no GIN index on data: no lookup uses
--   them and every write would pay for them. The GIN index is opt-in: see optional/gin_index.sql.
CREATE TABLE IF NOT EXISTS cache_entries (
    cache_key  VARCHAR(500) COLLATE "C" PRIMARY KEY,
    data       JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ
);

-- Expiry sweeps delete the expired rows, and max_entries eviction deletes the rows closest to expiry, both in
-- bounded batches taken from the low end of this index, so each batch costs O(batch) whatever the table size.
CREATE INDEX IF NOT EXISTS cache_entries_expires_at_idx ON cache_entries (expires_at);
