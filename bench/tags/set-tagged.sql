-- Upsert of one random entry among 100k with three tags out of 10k (scripts/bench-tags; the variant comes
-- from search_path).
\set k random(1, 100000)
\set t1 random(1, 10000)
\set t2 random(1, 10000)
\set t3 random(1, 10000)
SELECT tb_set('key:' || :k, jsonb_build_object('key', :k, 'body', repeat('0123456789abcdef', 60)),
              ARRAY['doc:' || :t1, 'doc:' || :t2, 'doc:' || :t3]);
