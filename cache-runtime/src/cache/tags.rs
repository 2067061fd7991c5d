//! Invalidation by tag, from the application ([`PgCache::invalidate_tag`]) or from a trigger on the table
//! the data comes from ([`PgCache::invalidate_on_change`]). The SQL side is `migrations/functions.sql`.

use super::PgCache;
use crate::error::{CacheError, Result};
use crate::route::shards::on_every_shard;
use crate::server::sql;
use crate::tags::{stored_form, validate_tag};

impl PgCache {
    /// Deletes every entry carrying `tag` and returns how many went.
    ///
    /// The guarantees of [`delete_namespace`](Self::delete_namespace) hold: a memoized computation that began
    /// before the invalidation does not store its result (whatever process runs it), every process drops the
    /// entries from its in-process tier, and a caller that starts after this returns never receives a value
    /// computed before it. Tags come from `#[pg_cached(tags(...))]`, [`crate::tag`] inside a memoized body,
    /// inner memoized calls, and [`set_tagged`](Self::set_tagged).
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_runtime::PgCache) -> Result<(), cache_runtime::CacheError> {
    /// let removed = cache.invalidate_tag("doc:42").await?;
    /// println!("{removed} entries depended on document 42");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`CacheError::InvalidTag`] before any I/O; a timeout or database error otherwise (then nothing was
    /// invalidated on the shard that failed: the invalidation is one transaction per shard).
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64> {
        self.invalidate_tags(&[tag]).await
    }

    /// [`invalidate_tag`](Self::invalidate_tag) for several tags at once, in one transaction per shard: the
    /// entries carrying any of them. An empty slice does nothing.
    ///
    /// # Errors
    /// As [`invalidate_tag`](Self::invalidate_tag), for any of the tags.
    pub async fn invalidate_tags(&self, tags: &[impl AsRef<str>]) -> Result<u64> {
        let Some(tags) = stored_form(tags)? else { return Ok(0) };
        let tags: Vec<String> = tags.to_vec();
        self.forget_tags_locally(&tags);
        let sender = crate::channel::sender_id(self.inner.events.sender);
        let deleted =
            on_every_shard(self.shards(), |server| server.invalidate_tags(tags.clone(), sender.clone())).await;
        // A read of this process that fetched a row before the delete committed may have refilled the tier.
        self.forget_tags_locally(&tags);
        let total = deleted.into_iter().sum::<Result<u64>>()?;
        crate::observe::metrics::invalidation("", "tag");
        tracing::info!(tags = ?tags, deleted = total, "tags invalidated");
        Ok(total)
    }

    /// Drops entries carrying any of `tags` from this process's tier, and detaches every computation in
    /// flight: which tags those will carry is only known when they finish, and a caller arriving from now on
    /// must not wait for a value computed before the invalidation.
    fn forget_tags_locally(&self, tags: &[String]) {
        if let Some(tier) = self.inner.local.get() {
            for tag in tags {
                tier.remove_tag(tag);
            }
        }
        self.inner.flights.detach(|_| true);
    }

    /// Installs (idempotently) a trigger that invalidates the tag `{tag_prefix}{value of column}` whenever a
    /// row of `table` is updated or deleted, inside the changing transaction: after `COMMIT` the entries are
    /// gone and every process's in-process tier has been told; after `ROLLBACK` nothing changed. An `UPDATE`
    /// that changes the column itself invalidates the tags of the old and the new value. `TRUNCATE` does not
    /// fire it (use [`invalidate_tags`](Self::invalidate_tags) or a namespace purge).
    ///
    /// `table` is written as in SQL: `documents`, `app.documents`, or quoted where SQL needs quotes
    /// (`"Documents"`, `"it's"`). `column` is the column's exact name. The trigger calls the SQL function
    /// `pg_cached_invalidate_tags`, which a DBA can also call by hand.
    ///
    /// The column must be of a built-in scalar type: `text`, `varchar`, `char`, `name`, `smallint`,
    /// `integer`, `bigint`, `numeric`, `boolean`, `uuid`, `date`, `timestamp` or `timestamptz`. The tag
    /// text is the value as PostgreSQL prints it with `DateStyle = ISO` and `TimeZone = UTC`, whatever the
    /// changing session's settings (`2024-03-05`, `2024-03-05 06:07:08.5+00`, `12.50`, `true`). A value
    /// whose tag would be longer than [`MAX_TAG_CHARS`](crate::MAX_TAG_CHARS) names no entry and is skipped.
    /// Only a role that owns `table` (or the cache's owner) may install or remove the trigger, and a
    /// temporary table only from its own session.
    ///
    /// **The application's writes.** The trigger only notes each changed row's tags; the transaction's
    /// `COMMIT` invalidates them all at once (a deferred trigger), nothing happens on `ROLLBACK`. So it takes
    /// no lock while the transaction runs, and at `COMMIT` a bounded number of locks in one order: an UPDATE
    /// of any number of rows fits the default lock table, and transactions changing rows of matching values in
    /// any order never deadlock on the cache. A memoized write of an entry carrying a noted tag is refused
    /// or deleted, as if the invalidation had run row by row.
    ///
    /// **Under REPEATABLE READ or SERIALIZABLE** the `COMMIT` cannot delete entries: it would do so under the
    /// transaction's snapshot, failing on an entry rewritten since (40001) and missing one written since. It
    /// queues the invalidation instead (table `cache_deferred_invalidations`), which never fails the
    /// `COMMIT`. From that `COMMIT` on, the cache's reads treat every entry carrying a queued tag as absent
    /// and refuse memoized writes of such entries, so no caller gets a value the change made stale; the
    /// queue is then run under READ COMMITTED by every process that listens for events (within the
    /// notification delay) and by every [`sweep`](Self::sweep). Until it runs, calls whose entries carry the
    /// tag are misses, and an entry written with the tag meanwhile (by `set` too) is deleted with the rest.
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_runtime::PgCache) -> Result<(), cache_runtime::CacheError> {
    /// cache.invalidate_on_change("documents", "id", "doc:").await?;
    /// // From now on `UPDATE documents SET body = '...' WHERE id = 42` removes the entries tagged "doc:42".
    /// # Ok(()) }
    /// ```
    ///
    /// Only entries on the same server as the table can be invalidated by its trigger, so with
    /// [`shards`](crate::PgCacheBuilder::shards) this is a configuration error.
    ///
    /// # Errors
    /// [`CacheError::InvalidIdentifier`] for a table or column that does not exist, a malformed name, or a
    /// column of another type; [`CacheError::InvalidTag`] for a prefix that cannot start a tag;
    /// [`CacheError::Config`] with shards; a timeout or database error otherwise (for example a role that
    /// does not own the table: `42501`).
    pub async fn invalidate_on_change(&self, table: &str, column: &str, tag_prefix: &str) -> Result<()> {
        self.single_server("invalidate_on_change")?;
        check_name("table", table)?;
        check_name("column", column)?;
        if !tag_prefix.is_empty() {
            validate_tag(tag_prefix)?;
        }
        let args = vec![table.to_owned(), column.to_owned(), tag_prefix.to_owned()];
        let result =
            self.inner.shards.first().primary().manage_trigger::<String>(sql::INVALIDATE_ON_CHANGE, args).await;
        let trigger = result.map_err(|error| name_error(error, table, column))?;
        tracing::info!(table, column, tag_prefix, trigger, "invalidation trigger installed");
        Ok(())
    }

    /// Removes the triggers [`invalidate_on_change`](Self::invalidate_on_change) installed on `table`, and
    /// returns how many there were.
    ///
    /// # Errors
    /// As [`invalidate_on_change`](Self::invalidate_on_change).
    pub async fn remove_invalidate_on_change(&self, table: &str) -> Result<u64> {
        self.single_server("remove_invalidate_on_change")?;
        check_name("table", table)?;
        let args = vec![table.to_owned()];
        let result =
            self.inner.shards.first().primary().manage_trigger::<i64>(sql::REMOVE_INVALIDATE_ON_CHANGE, args).await;
        Ok(result.map_err(|error| name_error(error, table, ""))?.max(0).unsigned_abs())
    }

    fn single_server(&self, operation: &str) -> Result<()> {
        if self.shards().len() > 1 {
            return Err(CacheError::Config(format!(
                "{operation} needs a cache on one server: a trigger only reaches the entries stored next to its \
                 table; with shards, call invalidate_tag from the application"
            )));
        }
        Ok(())
    }
}

/// A name PostgreSQL could not take at all: empty, or holding NUL.
fn check_name(what: &'static str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "the name is empty"
    } else if name.contains('\0') {
        "the name contains a NUL character"
    } else {
        return Ok(());
    };
    Err(CacheError::InvalidIdentifier { what, name: name.to_owned(), reason: reason.to_owned() })
}

/// Turns PostgreSQL's "no such table / column / bad name" errors into [`CacheError::InvalidIdentifier`].
fn name_error(error: CacheError, table: &str, column: &str) -> CacheError {
    let CacheError::Database { source, .. } = &error else { return error };
    let sqlx::Error::Database(db) = source.as_ref() else { return error };
    let what = match db.code().as_deref() {
        // undefined_table, invalid_name, invalid_schema_name, wrong_object_type (a view, an index...)
        Some("42P01" | "42602" | "3F000" | "42809" | "42P16") => "table",
        // undefined_column, and datatype_mismatch: a column whose type cannot name tags.
        Some("42703" | "42804") => "column",
        _ => return error,
    };
    let name = if what == "table" { table } else { column };
    CacheError::InvalidIdentifier { what, name: name.to_owned(), reason: db.message().to_owned() }
}
