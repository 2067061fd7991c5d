//! Every SQL statement of the tool's own, in one place. All of them only read.
//!
//! They read what cache-runtime's API does not expose: per-entry metadata, table and index sizes, vacuum
//! statistics, server settings. The schema they read is the public one of `migrations/` (`cache_entries`,
//! `_sqlx_migrations`). Conventions, as in cache-runtime's `sql.rs`:
//! - columns are named, never `SELECT *`;
//! - timestamps travel as microseconds since the epoch, NULL when absent or infinite, so no date type (and
//!   no extra sqlx feature) is needed, and a row written by hand with `infinity` cannot make a read fail;
//! - times left and ages are computed on the server's clock, the one the library's expiry uses;
//! - a key's namespace is the part before the first `:` ("" when there is none), as in the library.

/// Microseconds since the epoch of a `timestamptz` expression, NULL when it is NULL or infinite.
macro_rules! epoch_us {
    ($e:literal) => {
        concat!("CASE WHEN isfinite(", $e, ") THEN (extract(epoch FROM ", $e, ") * 1000000)::bigint END")
    };
}

/// Milliseconds from now until a `timestamptz` expression (negative when past), NULL when NULL or infinite.
macro_rules! ms_until {
    ($e:literal) => {
        concat!("CASE WHEN isfinite(", $e, ") THEN (extract(epoch FROM ", $e, " - now()) * 1000)::bigint END")
    };
}

/// The namespace of `cache_key`.
macro_rules! namespace {
    () => {
        "CASE WHEN strpos(cache_key, ':') > 0 THEN split_part(cache_key, ':', 1) ELSE '' END"
    };
}

/// The sum of a `bigint` column over the live rows (0 for none).
macro_rules! live_sum {
    ($col:literal) => {
        concat!("coalesce(sum(", $col, ") FILTER (WHERE expires_at IS NULL OR expires_at > now()), 0)::bigint")
    };
}

/// Per namespace: entries, expired entries, stored bytes (`pg_column_size`, after compression, cheap: it
/// does not detoast), oldest and newest `created_at` (µs), the compute time held in live entries (µs; the
/// same sum as cache-runtime's `PgCache::stats`), and the usage held in live entries (input tokens, output
/// tokens, cost in micro-USD; the same sums as `NamespaceStats::usage_held`).
/// A database migrated before usage was recorded (migration 0008) lacks those columns: the statement fails,
/// and the tool asks for `pg-cached migrate`, as for any older schema.
pub const NAMESPACE_STATS: &str = concat!(
    "SELECT ",
    namespace!(),
    " AS namespace, count(*), count(*) FILTER (WHERE expires_at <= now()), \
     coalesce(sum(pg_column_size(data)), 0)::bigint, ",
    epoch_us!("min(created_at)"),
    ", ",
    epoch_us!("max(created_at)"),
    ", ",
    live_sum!("compute_us"),
    ", ",
    live_sum!("input_tokens"),
    ", ",
    live_sum!("output_tokens"),
    ", ",
    live_sum!("cost_micros"),
    " FROM cache_entries GROUP BY 1 ORDER BY 1"
);

/// Per namespace: entries (what `watch` shows each tick).
pub const NAMESPACE_COUNTS: &str =
    concat!("SELECT ", namespace!(), " AS namespace, count(*) FROM cache_entries GROUP BY 1 ORDER BY 1");

/// `cache_entries`: heap size (TOAST included), index size, live and dead tuples, last (auto)vacuum (µs).
/// No row when the table does not exist.
pub const TABLE_STATS: &str = concat!(
    "SELECT pg_table_size(c.oid), pg_indexes_size(c.oid), pg_total_relation_size(c.oid), \
     coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0), ",
    epoch_us!("s.last_autovacuum"),
    ", ",
    epoch_us!("s.last_vacuum"),
    " FROM pg_class AS c LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid \
     WHERE c.oid = to_regclass('cache_entries')"
);

/// Up to $2 live entries whose key starts with $1, newest first: key, stored bytes, ms left, created (µs),
/// expires (µs).
pub const KEYS: &str = concat!(
    "SELECT cache_key, pg_column_size(data), ",
    ms_until!("expires_at"),
    ", ",
    epoch_us!("created_at"),
    ", ",
    epoch_us!("expires_at"),
    " FROM cache_entries WHERE starts_with(cache_key, $1) AND (expires_at IS NULL OR expires_at > now()) \
     ORDER BY created_at DESC, cache_key LIMIT $2"
);

/// Entry $1: JSON text, stored bytes, ms left, created (µs), expires (µs), whether it is live, its tags
/// (NULL for none) and how long its computation took (µs, NULL when not recorded).
pub const ENTRY: &str = concat!(
    "SELECT data::text, pg_column_size(data), ",
    ms_until!("expires_at"),
    ", ",
    epoch_us!("created_at"),
    ", ",
    epoch_us!("expires_at"),
    ", (expires_at IS NULL OR expires_at > now()), tags, compute_us FROM cache_entries WHERE cache_key = $1"
);

/// Encrypted entries per key id (an envelope of cache-runtime's encryption at rest: an object with the
/// `pg_cached_enc` field), expired ones included.
pub const ENTRIES_BY_KEY_ID: &str = "SELECT data->>'kid', count(*) FROM cache_entries \
     WHERE jsonb_typeof(data) = 'object' AND data ? 'pg_cached_enc' GROUP BY 1 ORDER BY 1";

/// Entries in namespace $1 (what `purge --namespace` would delete).
pub const COUNT_NAMESPACE: &str = "SELECT count(*) FROM cache_entries WHERE starts_with(cache_key, $1 || ':')";

/// Entries carrying any of the tags $1 (what `purge --tag` would delete; `&&` is what the partial GIN index
/// `cache_entries_tags_idx` serves, and what `pg_cached_invalidate_tags` deletes by).
pub const COUNT_TAGGED: &str = "SELECT count(*) FROM cache_entries WHERE tags && $1::text[]";

/// Entries of tenant $1 (what `purge --tenant` deletes; the partial index `cache_entries_tenant_idx` serves it).
pub const COUNT_TENANT: &str = "SELECT count(*) FROM cache_entries WHERE tenant = $1";

/// Whether the server has migration 11's `tenant` column, which `PgCache::delete_tenant` reads.
pub const HAS_TENANTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute \
     WHERE attrelid = 'cache_entries'::regclass AND attname = 'tenant' AND NOT attisdropped)";

/// Whether the server has migration 5's `pg_cached_invalidate_tags`, which `PgCache::invalidate_tags` calls.
pub const HAS_TAGS: &str = "SELECT to_regprocedure('pg_cached_invalidate_tags(text[], text, text)') IS NOT NULL";

/// Entries a sweep would delete now: past their `sweep_at` (expiry plus stale window), or, when written
/// without one, past their expiry (the same rows as cache-runtime's expiry sweep).
pub const COUNT_SWEEPABLE: &str = "SELECT count(*) FROM cache_entries \
     WHERE sweep_at <= now() OR (sweep_at IS NULL AND expires_at <= now())";

/// Migrations recorded as applied: version, whether it succeeded, checksum. Fails when sqlx's table does
/// not exist (see [`HAS_MIGRATIONS_TABLE`]).
pub const APPLIED_MIGRATIONS: &str = "SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version";

/// The version of the SQL functions `PgCache::migrate` applied (`migrations/functions.sql`); no row when they
/// never were.
pub const FUNCTIONS_VERSION: &str = "SELECT functions_version FROM cache_schema";

/// Whether the registry of listeners (migration 0013) exists.
pub const HAS_LISTENER_REGISTRY: &str = "SELECT to_regclass('cache_listeners') IS NOT NULL";

/// Rows of `cache_listeners`: sessions registered (some may have ended, until a sweep), and rows standing for
/// an earlier release's listeners.
pub const LISTENERS: &str =
    "SELECT count(*) FILTER (WHERE held), count(*) FILTER (WHERE NOT held) FROM cache_listeners";

/// Whether sqlx's migrations table exists.
pub const HAS_MIGRATIONS_TABLE: &str = "SELECT to_regclass('_sqlx_migrations') IS NOT NULL";

/// Indexes of the cache's tables: table, index, whether it is valid (a failed concurrent build is not).
pub const INDEXES: &str = "SELECT t.relname::text, i.relname::text, x.indisvalid FROM pg_index AS x \
     JOIN pg_class AS i ON i.oid = x.indexrelid JOIN pg_class AS t ON t.oid = x.indrelid \
     WHERE t.oid IN (to_regclass('cache_entries'), to_regclass('cache_leases'), to_regclass('cache_invalidations'), \
     to_regclass('cache_tag_invalidations'), to_regclass('cache_pending_invalidations'), \
     to_regclass('cache_semantic'))";

/// Autovacuum settings: the global switch and scale factor, and `cache_entries`' own options (`key=value`),
/// NULL when the table has none or does not exist.
pub const AUTOVACUUM: &str = "SELECT current_setting('autovacuum'), \
     current_setting('autovacuum_vacuum_scale_factor')::float8, \
     (SELECT c.reloptions FROM pg_class AS c WHERE c.oid = to_regclass('cache_entries'))";

/// `synchronous_commit` as this role and database see it.
pub const SYNCHRONOUS_COMMIT: &str = "SELECT current_setting('synchronous_commit')";

/// `max_connections`, connections reserved for superusers (and, from PostgreSQL 16, for `pg_use_reserved_
/// connections`), and client connections open now.
pub const CONNECTIONS: &str = "SELECT current_setting('max_connections')::bigint, \
     current_setting('superuser_reserved_connections')::bigint \
     + coalesce(nullif(current_setting('reserved_connections', true), '')::bigint, 0), \
     (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')";

/// The server's clock (µs) and version.
pub const CLOCK_AND_VERSION: &str =
    "SELECT (extract(epoch FROM now()) * 1000000)::bigint, current_setting('server_version')";

/// `cache_entries`' cumulative row counters: read by sequential scans, fetched by index scans, inserted,
/// updated, deleted. No row when the table does not exist.
pub const ROW_COUNTERS: &str = "SELECT coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0), n_tup_ins, \
     n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relid = to_regclass('cache_entries')";

/// Makes the namespace count of `watch` a sequential scan, so that the rows it reads itself are exactly
/// the rows it counts and can be taken out of the next tick's "rows read" (see `commands/watch.rs`).
/// For the current transaction only.
pub const SEQUENTIAL_ONLY: &str = "SELECT set_config('enable_indexscan', 'off', true), \
     set_config('enable_indexonlyscan', 'off', true), set_config('enable_bitmapscan', 'off', true)";

/// Asks the server to publish this session's table statistics as soon as it is idle (PostgreSQL 15+).
pub const FLUSH_OWN_STATS: &str = "SELECT pg_stat_force_next_flush()";

/// Whether [`FLUSH_OWN_STATS`] exists here and may be called.
pub const CAN_FLUSH_OWN_STATS: &str =
    "SELECT coalesce(has_function_privilege(to_regprocedure('pg_stat_force_next_flush()'), 'execute'), false)";
