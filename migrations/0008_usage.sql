-- Usage: what an entry's computation consumed from a metered service (issue 25, "Usage and savings").
--
-- A memoized body reports the tokens it sent and received and what they cost (cache_runtime::usage); the
-- write stores the sums here, and every hit of the entry counts them as saved. NULL: nothing was reported,
-- a value stored with set, or an entry written before this migration (a hit on it saves nothing countable).
-- Cost is in millionths of a US dollar. No index: the columns are read with the row, and summed by stats.

ALTER TABLE cache_entries ADD COLUMN IF NOT EXISTS input_tokens bigint;
ALTER TABLE cache_entries ADD COLUMN IF NOT EXISTS output_tokens bigint;
ALTER TABLE cache_entries ADD COLUMN IF NOT EXISTS cost_micros bigint;
