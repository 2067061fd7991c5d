-- Upsert of one random entry among 100k with no tags (scripts/bench-tags; the variant comes from search_path).
\set k random(1, 100000)
SELECT tb_set('key:' || :k, jsonb_build_object('key', :k, 'body', repeat('0123456789abcdef', 60)), NULL);
