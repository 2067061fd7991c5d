-- Cluster-wide single-flight and protection against stale sets.
--
-- cache_leases: one row while some process computes a key under `single_flight = "cluster"`. The owner
-- deletes it when done; a crashed or cancelled owner's row simply stops counting at its deadline, so it never
-- blocks anyone for longer than the lease. UNLOGGED: after a server crash the leases are gone, which only
-- lets waiting callers compute themselves; no WAL is written for this short-lived bookkeeping.
CREATE UNLOGGED TABLE IF NOT EXISTS cache_leases (
    cache_key VARCHAR(500) COLLATE "C" PRIMARY KEY,
    owner     TEXT NOT NULL,
    deadline  TIMESTAMPTZ NOT NULL
);

-- cache_invalidations: when a key or a whole namespace was last invalidated. A memoized result is written
-- only if no invalidation of its key or namespace happened after its computation started, so a slow
-- computation that began before an invalidation can never put its stale value back. Rows older than a day
-- are swept (no computation outlives its lease by that much).
CREATE TABLE IF NOT EXISTS cache_invalidations (
    is_namespace   BOOLEAN NOT NULL,
    scope          VARCHAR(500) COLLATE "C" NOT NULL,
    invalidated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (scope, is_namespace)
);
