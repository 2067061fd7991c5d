\set k random(1, 10000)
SELECT data::text, CASE WHEN isfinite(expires_at) THEN (extract(epoch FROM expires_at - now()) * 1000)::bigint END FROM cache_entries WHERE cache_key = 'bench:' || :k AND (expires_at IS NULL OR expires_at > now());
