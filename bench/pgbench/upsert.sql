\set k random(1, 100000)
INSERT INTO cache_entries (cache_key, data, expires_at) VALUES ('one:' || :k, jsonb_build_object('v', repeat('x', 1000)), now() + interval '1 hour') ON CONFLICT (cache_key) DO UPDATE SET data = EXCLUDED.data, expires_at = EXCLUDED.expires_at;
