-- Opt-in: a GIN index over data, for people who query cached values with jsonb operators (@>, ?, jsonb_path).
-- No cache lookup uses it, and every write pays for it (see docs/BENCHMARKS.md). Apply with
-- `psql -f migrations/optional/gin_index.sql` or `PgCache::builder().gin_index(true)` before `migrate()`.
CREATE INDEX IF NOT EXISTS cache_entries_data_gin_idx ON cache_entries USING gin (data jsonb_path_ops);
