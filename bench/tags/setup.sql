-- One variant of the tag-storage benchmark (scripts/bench-tags), in its own schema of the tagbench database:
--
--     psql -v schema=NAME -v kind=base|column|side -v tagged=on|off -f bench/tags/setup.sql tagbench
--
-- Creates cache_entries (and for kind=side cache_entry_tags), fills it with 100k entries of about 1 KB, each
-- carrying three tags from public.prefill_tags when tagged=on and none otherwise, and defines
-- tb_set(key, data, tags), the upsert the pgbench scripts call. Every variant's upsert is a plpgsql function,
-- so that the side table's two extra statements are the only difference, not the function call itself.
-- The pgbench scripts name no schema: they pick a variant with PGOPTIONS='-c search_path=NAME'.
\set ON_ERROR_STOP on
SELECT :'kind' = 'column' AS is_column, :'kind' = 'side' AS is_side, :'tagged'::boolean AS is_tagged \gset

CREATE SCHEMA :"schema";
SET search_path = :"schema";

CREATE TABLE cache_entries (
    cache_key VARCHAR(500) COLLATE "C" PRIMARY KEY,
    data JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ,
    sweep_at TIMESTAMPTZ
);

\if :is_column
ALTER TABLE cache_entries ADD COLUMN tags text[];
\endif

\if :is_side
CREATE TABLE cache_entry_tags (
    tag text COLLATE "C",
    cache_key varchar(500) COLLATE "C",
    PRIMARY KEY (tag, cache_key)
);
\endif

-- 100k entries, the same 1 KB value shape the pgbench scripts write.
\if :is_column
INSERT INTO cache_entries (cache_key, data, created_at, expires_at, sweep_at, tags)
SELECT 'key:' || p.n, jsonb_build_object('key', p.n, 'body', repeat('0123456789abcdef', 60)),
       now(), now() + interval '1 hour', now() + interval '1 hour', CASE WHEN :'tagged'::boolean THEN p.tags END
FROM public.prefill_tags p;
\else
INSERT INTO cache_entries (cache_key, data, created_at, expires_at, sweep_at)
SELECT 'key:' || n, jsonb_build_object('key', n, 'body', repeat('0123456789abcdef', 60)),
       now(), now() + interval '1 hour', now() + interval '1 hour'
FROM generate_series(1, 100000) AS n;
\endif

\if :is_column
CREATE INDEX cache_entries_tags_idx ON cache_entries USING gin (tags) WHERE tags IS NOT NULL;
\endif

\if :is_side
\if :is_tagged
INSERT INTO cache_entry_tags (tag, cache_key)
SELECT DISTINCT t, 'key:' || p.n FROM public.prefill_tags p, unnest(p.tags) AS t;
\endif
CREATE INDEX cache_entry_tags_cache_key_idx ON cache_entry_tags (cache_key);
\endif

CREATE INDEX cache_entries_sweep_at_idx ON cache_entries (sweep_at);

\if :is_column
CREATE FUNCTION tb_set(p_key text, p_data jsonb, p_tags text[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cache_entries (cache_key, data, created_at, expires_at, sweep_at, tags)
    VALUES (p_key, p_data, now(), now() + interval '1 hour', now() + interval '1 hour', p_tags)
    ON CONFLICT (cache_key) DO UPDATE
        SET data = EXCLUDED.data, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at,
            sweep_at = EXCLUDED.sweep_at, tags = EXCLUDED.tags;
END $$;
\elif :is_side
-- The entry's row lock (taken by the upsert) orders concurrent writers of one key, so the delete sees the
-- tag rows of the writer that went before; DISTINCT and DO NOTHING absorb a tag given twice.
CREATE FUNCTION tb_set(p_key text, p_data jsonb, p_tags text[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cache_entries (cache_key, data, created_at, expires_at, sweep_at)
    VALUES (p_key, p_data, now(), now() + interval '1 hour', now() + interval '1 hour')
    ON CONFLICT (cache_key) DO UPDATE
        SET data = EXCLUDED.data, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at,
            sweep_at = EXCLUDED.sweep_at;
    DELETE FROM cache_entry_tags WHERE cache_key = p_key;
    IF p_tags IS NOT NULL THEN
        INSERT INTO cache_entry_tags (tag, cache_key)
        SELECT DISTINCT t, p_key FROM unnest(p_tags) AS t
        ON CONFLICT DO NOTHING;
    END IF;
END $$;
\else
-- The baseline has nowhere to put tags and ignores them.
CREATE FUNCTION tb_set(p_key text, p_data jsonb, p_tags text[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cache_entries (cache_key, data, created_at, expires_at, sweep_at)
    VALUES (p_key, p_data, now(), now() + interval '1 hour', now() + interval '1 hour')
    ON CONFLICT (cache_key) DO UPDATE
        SET data = EXCLUDED.data, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at,
            sweep_at = EXCLUDED.sweep_at;
END $$;
\endif

VACUUM (ANALYZE) cache_entries;
\if :is_side
VACUUM (ANALYZE) cache_entry_tags;
\endif
