//! Every SQL statement the cache sends, in one place.
//!
//! Conventions:
//! - Every statement names its columns (never `SELECT *`), so a column added by a DBA cannot break a
//!   prepared statement's result type.
//! - Writes and invalidations call the SQL functions of `migrations/functions.sql`, with named arguments:
//!   one round trip each. They set `lock_timeout` (and, by default, `synchronous_commit = off`) for their own
//!   transaction, so a write stuck behind a lock is cancelled by the server instead of holding its
//!   connection, and the session is untouched.
//! - Remaining lifetimes are computed only for finite expiries: a row whose `expires_at` is `infinity` (written
//!   by hand or by another tool) is permanent, one at `-infinity` is expired, and neither makes a read fail.
//! - Notifications go through `pg_notify` inside the statement that changed the data, on
//!   [`crate::channel::CHANNEL`].

/// The migrations that create the cache's tables and indexes, embedded at compile time.
///
/// They do not create the cache's SQL functions, which live in `migrations/functions.sql` and are applied
/// after them: [`PgCache::migrate`](crate::PgCache::migrate) does both. With
/// `#[sqlx::test(migrator = "cache_runtime::MIGRATOR")]`, call `migrate()` on the test's cache as well.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Milliseconds until `expires_at`, NULL for an entry that never expires.
macro_rules! remaining_ms {
    ($col:literal) => {
        concat!("CASE WHEN isfinite(", $col, ") THEN (extract(epoch FROM ", $col, " - now()) * 1000)::bigint END")
    };
}

/// Sends the payload body $param, signed (`pg_cached_sign`, see `channel.rs`), while some process listens
/// (`pg_cached_notify`, migration 0013). It returns void: a scalar sub-query turns it into a plain integer
/// column.
macro_rules! notify {
    ($param:literal) => {
        concat!("(SELECT 1 FROM (SELECT pg_cached_notify(", $param, ")) AS n)")
    };
}

/// The join condition that hides entry `e` while an invalidation of one of its tags is queued (an
/// application transaction under REPEATABLE READ or SERIALIZABLE changed a row under `invalidate_on_change`:
/// see migration 0012 and `pg_cached_drain_invalidations`). The queue is empty but for the moment between
/// such a commit and its drain, so this costs an empty scan per tagged row, nothing for an untagged one.
macro_rules! not_queued_for_invalidation {
    () => {
        "(e.tags IS NULL OR NOT EXISTS (SELECT 1 FROM cache_deferred_invalidations AS d WHERE d.tags && e.tags))"
    };
}

/// What every read of an entry returns (see `LookupRow` in `reads.rs`): the entry `e`'s JSON, the
/// milliseconds left, whether it is fresh, the database's clock, its tags, compute time and usage.
macro_rules! entry_columns {
    () => {
        concat!(
            "e.data::text AS json, ",
            remaining_ms!("e.expires_at"),
            " AS remaining_ms, (e.expires_at IS NULL OR e.expires_at > now()) AS fresh, \
             (extract(epoch FROM now()) * 1000000)::bigint AS now_us, e.tags, e.compute_us, \
             e.input_tokens, e.output_tokens, e.cost_micros"
        )
    };
}

/// The read of one key $1: a live entry or one expired less than $2 ms ago, its `entry_columns!` and the
/// columns `$more`. Always one row, so that the clock comes back on a miss too.
macro_rules! lookup_of_one {
    ($more:literal) => {
        concat!(
            "SELECT ",
            entry_columns!(),
            $more,
            " FROM (SELECT 1) AS one LEFT JOIN cache_entries AS e ON e.cache_key = $1 \
             AND (e.expires_at IS NULL OR e.expires_at > now() - $2::bigint * interval '1 millisecond') AND ",
            not_queued_for_invalidation!()
        )
    };
}

/// A memoized call's lookup (`lookup_of_one!`) with the statement's snapshot (see `pg_cached_write_refused`
/// in `migrations/functions.sql`: a write is refused for a tag invalidated by a transaction this snapshot did
/// not see).
pub(crate) const LOOKUP: &str = lookup_of_one!(", pg_current_snapshot()::text AS snapshot");

/// A plain get's read (`lookup_of_one!`, $2 = 0): [`LOOKUP`] without the snapshot, which only a memoized
/// call's write guard needs. A lone get is a statement of its own, so what it leaves out is server time saved
/// on every call (docs/BENCHMARKS.md, "A plain get's own statement").
pub(crate) const LOOKUP_LIVE: &str = lookup_of_one!("");

/// Coalesced reads: for each key $1[i], with stale window $2[i] ms, what [`LOOKUP`] returns, as rows
/// `(i, json, remaining ms, fresh, database clock µs, tags, compute µs, usage, snapshot)` in no particular
/// order; the snapshot, the statement's, only in row `i = 1`. A response holds at most `coalesce_max_keys`
/// values of at most `max_value_bytes` each (it had a byte budget of its own until issue 26 measured it:
/// docs/BENCHMARKS.md, "The restructure, and the read byte budget").
pub(crate) const READ_MANY: &str = concat!(
    "SELECT k.i, ",
    entry_columns!(),
    ", CASE WHEN k.i = 1 THEN pg_current_snapshot()::text END AS snapshot \
     FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS k(key, stale_ms, i) \
     LEFT JOIN cache_entries AS e ON e.cache_key = k.key \
     AND (e.expires_at IS NULL OR e.expires_at > now() - k.stale_ms * interval '1 millisecond') AND ",
    not_queued_for_invalidation!()
);

/// Coalesced writes: [`WRITE`] for each key of $1 (distinct), with arrays for the per-key arguments (tags as
/// one string per key, joined by U+001F) and one notification $7 for all; $13-$15 the usage (NULL: none);
/// $16: try each key's locks. Returns whether each was written, NULL for a key whose lock was held.
pub(crate) const WRITE_MANY: &str = "SELECT pg_cached_write_entries(p_keys => $1::text[], \
     p_data => $2::text[]::jsonb[], p_ttl_ms => $3::bigint[], p_keep_ms => $4::bigint[], \
     p_started_us => $5::bigint[], p_namespaces => $6::text[], p_notify => $7, p_lock_timeout => $8, \
     p_async_commit => $9, p_tags => $10::text[], p_compute_us => $11::bigint[], p_started_snapshots => $12::text[], \
     p_input_tokens => $13::bigint[], p_output_tokens => $14::bigint[], p_cost_micros => $15::bigint[], \
     p_try_locks => $16, p_tenants => $17::text[])";

/// Coalesced deletes: [`DELETE`] for each key of $1 (distinct), one notification $2 for all; $3 is the lock
/// timeout in ms. Returns the rows deleted per key.
pub(crate) const DELETE_MANY: &str =
    "SELECT pg_cached_delete_many(p_keys => $1::text[], p_notify => $2, p_lock_timeout => $3, p_try_locks => $4, \
     p_token => $5)";

/// Writes $1 = $2 for $3 ms (NULL: forever), kept $4 ms more for stale serving, with tags $10, compute
/// time $11 µs and usage $13-$15 (tokens in, out, cost in micro-USD); with $5 (µs of the database clock when
/// a memoized computation began) and $12 (the snapshot of its lookup), refused if key $1, namespace $6 or one
/// of the tags was invalidated since; sends $7; $8 is the lock timeout in ms, $9 whether to commit without
/// waiting for the WAL flush. Returns whether it wrote; with $16 (try the locks), NULL when a lock is held
/// (see `coalesce::Locking`).
/// Writes and invalidations of one key (and of one tag) take turns under advisory transaction locks.
pub(crate) const WRITE: &str = "SELECT pg_cached_write_entry(p_key => $1, p_data => $2::jsonb, p_ttl_ms => $3, \
     p_keep_ms => $4, p_started_us => $5, p_namespace => $6, p_notify => $7, p_lock_timeout => $8, \
     p_async_commit => $9, p_tags => $10::text[], p_compute_us => $11, p_started_snapshot => $12, \
     p_input_tokens => $13, p_output_tokens => $14, p_cost_micros => $15, p_try_locks => $16, p_tenant => $17)";

/// Deletes every entry carrying one of the tags $1, records their invalidation and tells every process
/// (sender $2); $3 is the lock timeout in ms. Returns the entries deleted.
pub(crate) const INVALIDATE_TAGS: &str =
    "SELECT pg_cached_invalidate_tags(p_tags => $1::text[], p_sender => $2, p_lock_timeout => $3)";

/// Runs up to $2 queued tag invalidations (see migration 0012), with lock timeout $1 ms; returns the queue rows
/// drained ($2 means more may wait).
pub(crate) const DRAIN_INVALIDATIONS: &str =
    "SELECT pg_cached_drain_invalidations(p_lock_timeout => $1, p_limit => $2)::bigint";

/// Queue rows drained per statement.
pub(crate) const DRAIN_BATCH: i32 = 100;

/// Installs the trigger that invalidates tag `$3 || <column $2>` on changes to table $1 (a regclass).
pub(crate) const INVALIDATE_ON_CHANGE: &str =
    "SELECT pg_cached_invalidate_on_change(p_table => $1::regclass, p_column => $2, p_tag_prefix => $3)";

/// Removes those triggers from table $1; returns how many.
pub(crate) const REMOVE_INVALIDATE_ON_CHANGE: &str =
    "SELECT pg_cached_remove_invalidate_on_change(p_table => $1::regclass)::bigint";

/// Encryption at rest: a batch of encrypted entries not under key id $2, after key $1 in key order, at most
/// $3 (an envelope is an object with the `pg_cached_enc` field, see `crypt/envelope.rs`).
pub(crate) const ENCRYPTED_NOT_UNDER: &str = "SELECT cache_key, data::text FROM cache_entries \
    WHERE cache_key > $1 AND jsonb_typeof(data) = 'object' AND data ? 'pg_cached_enc' \
    AND data->>'kid' IS DISTINCT FROM $2 ORDER BY cache_key LIMIT $3";

/// Replaces each key's ($1) data by its new form ($3) only if it still holds the old one ($2): a value that a
/// concurrent write replaced is left as that write made it. Returns the rows replaced.
pub(crate) const REPLACE_UNCHANGED: &str = "UPDATE cache_entries e SET data = u.new::jsonb \
    FROM unnest($1::text[], $2::text[], $3::text[]) AS u(key, old, new) \
    WHERE e.cache_key = u.key AND e.data = u.old::jsonb";

/// Encrypted entries per key id.
pub(crate) const ENTRIES_BY_KEY_ID: &str = "SELECT data->>'kid', count(*) FROM cache_entries \
    WHERE jsonb_typeof(data) = 'object' AND data ? 'pg_cached_enc' GROUP BY 1 ORDER BY 1";

/// Sends the body $1 on the events channel, signed, while some process listens.
pub(crate) const NOTIFY: &str = concat!("SELECT ", notify!("$1"));

/// Deletes key $1, records its invalidation and sends $2; $3 is the lock timeout in ms, $4 whether to try the
/// lock (NULL when it is held), $5 the statement's token (the same statement sent again after it committed
/// answers what it did). Returns the rows deleted.
pub(crate) const DELETE: &str =
    "SELECT pg_cached_delete(p_key => $1, p_notify => $2, p_lock_timeout => $3, p_try_locks => $4, p_token => $5)";

/// Records the invalidation of namespace $1 and sends $2; $3 is the lock timeout in ms.
pub(crate) const MARK_NAMESPACE: &str =
    "SELECT pg_cached_mark_namespace(p_namespace => $1, p_notify => $2, p_lock_timeout => $3)::text";

/// Lets role $1 use the cache: everything it does when $2 is true, reading only otherwise.
pub(crate) const GRANT: &str = "SELECT pg_cached_grant(p_role => $1, p_writer => $2)::text";

/// Takes back what [`GRANT`] gave role $1.
pub(crate) const REVOKE: &str = "SELECT pg_cached_revoke(p_role => $1)::text";

/// Invalidation marks older than a day, leases long past their deadline and the listener rows of sessions
/// that ended (migration 0013) are no longer needed.
pub(crate) const SWEEP_BOOKKEEPING: &str = "WITH old AS (DELETE FROM cache_invalidations \
     WHERE invalidated_at < now() - interval '1 day' RETURNING 1), \
     old_tags AS (DELETE FROM cache_tag_invalidations WHERE invalidated_at < now() - interval '1 day' \
                  RETURNING 1), \
     dead AS (DELETE FROM cache_leases WHERE deadline < now() - interval '1 minute' RETURNING 1) \
     SELECT (SELECT count(*) FROM old) + (SELECT count(*) FROM old_tags) + (SELECT count(*) FROM dead) \
         + pg_cached_forget_listeners()";

/// Deletes up to $2 rows whose key matches the `LIKE` pattern $1.
pub(crate) const DELETE_PREFIX_BATCH: &str = "DELETE FROM cache_entries WHERE cache_key IN \
     (SELECT cache_key FROM cache_entries WHERE cache_key LIKE $1 LIMIT $2)";

/// Deletes up to $1 rows past their `sweep_at` (their expiry plus any stale window), soonest first, and up to
/// $1 rows written without one (by hand, by another tool) past their expiry, skipping rows another sweep
/// holds. Both halves walk an index.
pub(crate) const DELETE_EXPIRED_BATCH: &str = "WITH \
     swept AS (SELECT cache_key FROM cache_entries WHERE sweep_at <= now() \
               ORDER BY sweep_at LIMIT $1 FOR UPDATE SKIP LOCKED), \
     unswept AS (SELECT cache_key FROM cache_entries WHERE sweep_at IS NULL AND expires_at <= now() \
                 LIMIT $1 FOR UPDATE SKIP LOCKED) \
     DELETE FROM cache_entries WHERE cache_key IN \
     (SELECT cache_key FROM swept UNION ALL SELECT cache_key FROM unswept)";

/// Rows beyond the first $1 in keep order (latest `sweep_at` first, permanent entries kept longest).
pub(crate) const COUNT_EXCESS: &str = "SELECT count(*) FROM \
     (SELECT 1 FROM cache_entries ORDER BY sweep_at DESC NULLS FIRST OFFSET $1) AS excess";

/// Evicts the $1 rows closest to being swept.
pub(crate) const EVICT_BATCH: &str = "DELETE FROM cache_entries WHERE cache_key IN \
     (SELECT cache_key FROM cache_entries ORDER BY sweep_at ASC NULLS LAST LIMIT $1 FOR UPDATE SKIP LOCKED)";

/// Up to $2 live keys matching the `LIKE` pattern $1, in byte order.
pub(crate) const KEYS: &str = "SELECT cache_key FROM cache_entries \
     WHERE cache_key LIKE $1 AND (expires_at IS NULL OR expires_at > now()) ORDER BY cache_key LIMIT $2";

/// Rows, live rows, and the compute time (µs) and usage (tokens in, out, cost in micro-USD) held in live
/// rows, per namespace. Keys without a `:` count under the namespace "" (see `stats::namespace_of`).
pub(crate) const NAMESPACE_COUNTS: &str = "SELECT CASE WHEN strpos(cache_key, ':') > 0 \
     THEN split_part(cache_key, ':', 1) ELSE '' END, count(*), \
     count(*) FILTER (WHERE expires_at IS NULL OR expires_at > now()), \
     coalesce(sum(compute_us) FILTER (WHERE expires_at IS NULL OR expires_at > now()), 0)::bigint, \
     coalesce(sum(input_tokens) FILTER (WHERE expires_at IS NULL OR expires_at > now()), 0)::bigint, \
     coalesce(sum(output_tokens) FILTER (WHERE expires_at IS NULL OR expires_at > now()), 0)::bigint, \
     coalesce(sum(cost_micros) FILTER (WHERE expires_at IS NULL OR expires_at > now()), 0)::bigint \
     FROM cache_entries GROUP BY 1";

pub(crate) const TABLE_SIZE: &str = "SELECT pg_total_relation_size('cache_entries')";

pub(crate) const PING: &str = "SELECT 1";

pub(crate) const COUNT_ALL: &str = "SELECT count(*) FROM cache_entries";

// Leases (see `lease.rs`).

/// Takes the lease on $1 for owner $2 for $3 ms, if nobody holds a live one. A cache may also take over a
/// lease of its own (owner prefix $4) that it failed to release: in-process single-flight already allows one
/// leader per key, and a release only deletes its own owner's row.
pub(crate) const LEASE_ACQUIRE: &str = "INSERT INTO cache_leases (cache_key, owner, deadline) \
     VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond') \
     ON CONFLICT (cache_key) DO UPDATE SET owner = EXCLUDED.owner, deadline = EXCLUDED.deadline \
     WHERE cache_leases.deadline <= now() OR starts_with(cache_leases.owner, $4) RETURNING 1";

/// Gives up owner $2's lease on $1 and sends $3.
pub(crate) const LEASE_RELEASE: &str = concat!(
    "WITH gone AS (DELETE FROM cache_leases WHERE cache_key = $1 AND owner = $2 RETURNING 1) \
     SELECT (SELECT count(*) FROM gone), ",
    notify!("$3")
);

/// Whether someone holds a live lease on $1.
pub(crate) const LEASE_IS_LIVE: &str =
    "SELECT EXISTS (SELECT 1 FROM cache_leases WHERE cache_key = $1 AND deadline > now())";

pub(crate) const GIN_INDEX: &str = include_str!("../../../migrations/optional/gin_index.sql");

/// Stores the semantic row of entry $1 (scope hash $2, model id $3, text $4, embedding $5, and the entry's
/// tenant) if the entry is
/// there; a row already there is replaced, with this transaction as its writer. Returns whether it wrote. The
/// foreign key makes an entry deleted meanwhile fail the insert (23503), which the caller treats as "not
/// stored", as the guarded write of the entry itself would have been.
pub(crate) const WRITE_SEMANTIC: &str = "WITH ins AS (\
     INSERT INTO cache_semantic (cache_key, scope_hash, model_id, text, embedding, tenant) \
     SELECT $1, $2, $3, $4, $5, e.tenant FROM cache_entries AS e WHERE e.cache_key = $1 \
     ON CONFLICT (cache_key) DO UPDATE SET scope_hash = EXCLUDED.scope_hash, model_id = EXCLUDED.model_id, \
         text = EXCLUDED.text, embedding = EXCLUDED.embedding, xact = pg_current_xact_id(), \
         tenant = EXCLUDED.tenant \
     RETURNING 1) SELECT count(*) FROM ins";

/// The semantic rows of scope $1 and model $2 written by transactions at or after xid $3 (text; `0` for
/// all), and the xmin of this statement's snapshot, the next call's $3. Always at least one row: the xmin,
/// with NULLs when nothing is new.
pub(crate) const SEMANTIC_SINCE: &str = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, \
         s.cache_key::text, s.text, s.embedding \
     FROM (SELECT 1) AS one \
     LEFT JOIN cache_semantic AS s ON s.scope_hash = $1 AND s.model_id = $2 AND s.xact >= $3::xid8";

/// Up to $2 keys of tenant $1 (the partial index on `tenant` serves it).
pub(crate) const TENANT_KEYS: &str = "SELECT cache_key FROM cache_entries WHERE tenant = $1 LIMIT $2";

/// Of tenant $1: rows, live rows, and the bytes their values take as stored (`pg_column_size`, after any
/// compression).
pub(crate) const TENANT_COUNTS: &str = "SELECT count(*), \
     count(*) FILTER (WHERE expires_at IS NULL OR expires_at > now()), \
     coalesce(sum(pg_column_size(data)), 0)::bigint \
     FROM cache_entries WHERE tenant = $1";

/// The tenants holding more than $1 rows or $2 bytes of values (NULL: no such limit).
pub(crate) const TENANTS_OVER_QUOTA: &str = "SELECT tenant FROM cache_entries WHERE tenant IS NOT NULL \
     GROUP BY tenant \
     HAVING count(*) > coalesce($1, 'Infinity'::float8) OR sum(pg_column_size(data)) > coalesce($2, 'Infinity'::float8)";

/// Up to $4 keys of tenant $1 beyond its quota, oldest first: the newest rows are kept while they number at
/// most $2 and their values take at most $3 bytes (NULL: no such limit).
pub(crate) const TENANT_EXCESS: &str = "SELECT cache_key FROM \
     (SELECT cache_key, created_at, \
             row_number() OVER newest AS n, sum(pg_column_size(data)) OVER newest AS bytes \
      FROM cache_entries WHERE tenant = $1 \
      WINDOW newest AS (ORDER BY created_at DESC, cache_key DESC)) AS ranked \
     WHERE n > coalesce($2, 'Infinity'::float8) OR bytes > coalesce($3, 'Infinity'::float8) \
     ORDER BY created_at, cache_key LIMIT $4";

/// Installs row-level security by tenant (see `pg_cached_enable_tenant_isolation` in `functions.sql`).
pub(crate) const ENABLE_TENANT_ISOLATION: &str = "SELECT pg_cached_enable_tenant_isolation()";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_use_the_events_channel() {
        assert!(NOTIFY.contains("pg_cached_notify($1)") && LEASE_RELEASE.contains("pg_cached_notify($3)"));
        // The one pg_notify is pg_cached_notify's. Every function that notifies goes through pg_cached_notify: two writes, two deletes, the namespace
        // mark, the tags' invalidation (pg_cached_notify_tags) and the queued invalidation's request to drain.
        let functions = super::super::schema::FUNCTIONS_SQL;
        assert_eq!(functions.matches(&format!("pg_notify('{}'", crate::channel::CHANNEL)).count(), 1);
        assert_eq!(functions.matches("pg_notify(").count(), 1);
        assert_eq!(functions.matches("PERFORM pg_cached_notify(").count(), 7);
    }
}
