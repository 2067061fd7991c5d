-- The measurement behind docs/TENANTS.md ("Upgrading"): is the partial index on (tenant, created_at) worth it?
-- Run in a scratch database: psql -h 127.0.0.1 -U postgres DB -f docs/bench/tenant_index.sql
-- Part 1: a tenant's purge batch and its stats, without and with the index, on 200,000 rows.
\timing on
DROP TABLE IF EXISTS m_entries;
CREATE TABLE m_entries (cache_key varchar(500) COLLATE "C" PRIMARY KEY, data jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), expires_at timestamptz, tenant text);
INSERT INTO m_entries SELECT 'answer:' || md5(i::text), '{"v": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}', now() - (i || ' s')::interval, now() + interval '1 h', CASE WHEN i % 2 = 0 THEN 't' || (i % 200) END FROM generate_series(1, 200000) AS i;
ANALYZE m_entries;
-- without the index
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) SELECT cache_key FROM m_entries WHERE tenant = 't42' LIMIT 1000;
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) SELECT count(*), coalesce(sum(pg_column_size(data)), 0) FROM m_entries WHERE tenant = 't42';
CREATE INDEX m_entries_tenant_idx ON m_entries (tenant, created_at) WHERE tenant IS NOT NULL;
ANALYZE m_entries;
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) SELECT cache_key FROM m_entries WHERE tenant = 't42' LIMIT 1000;
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) SELECT count(*), coalesce(sum(pg_column_size(data)), 0) FROM m_entries WHERE tenant = 't42';
SELECT pg_size_pretty(pg_relation_size('m_entries_tenant_idx')) AS index_size, pg_size_pretty(pg_relation_size('m_entries')) AS table_size;
DROP TABLE m_entries;

-- Part 2: bulk inserts with and without the index, rows of no tenant and rows of a tenant.
DROP TABLE IF EXISTS m_a; DROP TABLE IF EXISTS m_b;
CREATE TABLE m_a (cache_key varchar(500) COLLATE "C" PRIMARY KEY, data jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), expires_at timestamptz, tenant text);
CREATE INDEX ON m_a (expires_at);
CREATE TABLE m_b (LIKE m_a INCLUDING ALL);
CREATE INDEX m_b_tenant_idx ON m_b (tenant, created_at) WHERE tenant IS NOT NULL;
\echo untenanted without / with
INSERT INTO m_a SELECT 'u:' || i, '1', now(), now(), NULL FROM generate_series(1, 100000) AS i;
INSERT INTO m_b SELECT 'u:' || i, '1', now(), now(), NULL FROM generate_series(1, 100000) AS i;
\echo tenanted without / with
INSERT INTO m_a SELECT 't:' || i, '1', now(), now(), 't' || (i % 100) FROM generate_series(1, 100000) AS i;
INSERT INTO m_b SELECT 't:' || i, '1', now(), now(), 't' || (i % 100) FROM generate_series(1, 100000) AS i;
\echo again, reversed order
TRUNCATE m_a; TRUNCATE m_b;
INSERT INTO m_b SELECT 'u:' || i, '1', now(), now(), NULL FROM generate_series(1, 100000) AS i;
INSERT INTO m_a SELECT 'u:' || i, '1', now(), now(), NULL FROM generate_series(1, 100000) AS i;
INSERT INTO m_b SELECT 't:' || i, '1', now(), now(), 't' || (i % 100) FROM generate_series(1, 100000) AS i;
INSERT INTO m_a SELECT 't:' || i, '1', now(), now(), 't' || (i % 100) FROM generate_series(1, 100000) AS i;
DROP TABLE m_a; DROP TABLE m_b;
