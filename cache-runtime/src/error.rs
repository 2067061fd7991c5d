//! The one error type of the crate.

use std::sync::Arc;
use std::time::Duration;

/// Everything that can go wrong in a cache operation.
///
/// Every variant is a value the caller can match on; none of them is ever turned into a panic. Memoized
/// functions never see these errors: `#[pg_cached]` logs them and runs the function instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The namespace is empty, too long, or uses characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid cache namespace {namespace:?}: {reason}")]
    InvalidNamespace {
        /// The namespace as given.
        namespace: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The key cannot be stored: it is empty, contains a NUL character, or is longer than the column allows.
    #[error("invalid cache key: {reason}")]
    InvalidKey {
        /// What is wrong with it.
        reason: String,
    },

    /// The key is longer than the `cache_key` column (`VARCHAR(500)`). Keys are never truncated, since two
    /// truncated keys could collide; use [`cache_key!`](crate::cache_key) to get a short hashed key.
    #[error("cache key is {chars} characters long; the limit is {max}")]
    KeyTooLong {
        /// The key's length in characters.
        chars: usize,
        /// The column's limit.
        max: usize,
    },

    /// The value contains something PostgreSQL's `jsonb` cannot hold exactly.
    #[error("value cannot be stored as JSONB: {reason}")]
    UnsupportedValue {
        /// What was found (a NaN, an infinity, a NUL character) and where.
        reason: String,
    },

    /// The serialized value is larger than the configured limit. Nothing was sent to the database.
    #[error("serialized value exceeds the size limit of {limit} bytes")]
    ValueTooLarge {
        /// The configured limit ([`PgCacheBuilder::max_value_bytes`](crate::PgCacheBuilder::max_value_bytes)).
        limit: usize,
    },

    /// The value's `Serialize` implementation failed.
    #[error("serializing the value failed: {0}")]
    Serialize(#[source] serde_json::Error),

    /// A time-to-live that cannot be represented: zero, or longer than 10,000 years.
    #[error("invalid ttl {0:?}: it must be more than zero and at most 10,000 years")]
    InvalidTtl(Duration),

    /// A tag is empty, longer than [`MAX_TAG_CHARS`](crate::MAX_TAG_CHARS) characters, or holds a control
    /// character.
    #[error("invalid cache tag {tag:?}: {reason}")]
    InvalidTag {
        /// The tag as given (its first 64 characters).
        tag: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An entry was given more than [`MAX_TAGS_PER_ENTRY`](crate::MAX_TAGS_PER_ENTRY) distinct tags (by
    /// `set_tagged`, or gathered by a memoized call). Nothing was written.
    #[error("an entry carries {count} distinct tags; at most {max} are allowed")]
    TooManyTags {
        /// The distinct tags given.
        count: usize,
        /// The cap.
        max: usize,
    },

    /// A table or column named to [`PgCache::invalidate_on_change`](crate::PgCache::invalidate_on_change)
    /// does not exist, is not a table, is not a valid SQL name, or (a column) is of a type that cannot name
    /// tags; or a role named to [`PgCache::grant`](crate::PgCache::grant) is not one.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidIdentifier {
        /// `"table"`, `"column"` or `"role"`.
        what: &'static str,
        /// The name as given.
        name: String,
        /// What PostgreSQL said about it.
        reason: String,
    },

    /// A tenant id given to [`tenant`](crate::tenant) or `#[pg_cached(tenant = ...)]` is empty, longer than
    /// [`MAX_TENANT_CHARS`](crate::MAX_TENANT_CHARS) characters or holds a control character; or a scope
    /// names a tenant other than the one of the scope around it. Inside such a scope, operations of a
    /// [`PgCache`](crate::PgCache) fail with it and memoized calls run uncached.
    #[error("invalid tenant {tenant:?}: {reason}")]
    InvalidTenant {
        /// The tenant id as given (its first 64 characters).
        tenant: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The database did not answer within the operation timeout.
    #[error("cache operation `{operation}` timed out after {after:?}")]
    Timeout {
        /// Which operation timed out.
        operation: &'static str,
        /// The configured timeout.
        after: Duration,
    },

    /// The database returned an error, or could not be reached. [`sqlstate`](Self::sqlstate) gives the
    /// database's error code, if it sent one.
    #[error("database error during `{operation}`: {source}")]
    Database {
        /// Which operation failed.
        operation: &'static str,
        /// The driver's error. Shared: every caller whose operation went out in the same coalesced statement
        /// gets this same error.
        #[source]
        source: Arc<sqlx::Error>,
    },

    /// Applying the embedded migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// A setting is missing or malformed (for example `DATABASE_URL`), or an operation needs something the
    /// cache was not configured with.
    #[error("configuration error: {0}")]
    Config(String),

    /// The cache's own machinery failed to answer: a background task it relies on ended early (for instance
    /// because its tokio runtime shut down). Not a problem with the database or with what was asked.
    #[error("internal cache error: {0}")]
    Internal(String),

    /// An [`Embedder`](crate::semantic::Embedder) could not embed a text: the model does not load, a text
    /// is longer than it reads, or an embeddings endpoint failed or answered something unusable.
    #[error("embedding failed: {reason}")]
    Embedding {
        /// What went wrong, and where.
        reason: String,
    },
}

impl CacheError {
    /// A short, stable name of the variant, as metrics label errors: `invalid_namespace`, `invalid_key`,
    /// `key_too_long`, `unsupported_value`, `value_too_large`, `serialize`, `invalid_ttl`, `invalid_tag`,
    /// `invalid_identifier`, `invalid_tenant`, `timeout`, `database`, `migrate`, `config`, `internal`, `embedding`.
    pub fn kind(&self) -> &'static str {
        match self {
            CacheError::InvalidNamespace { .. } => "invalid_namespace",
            CacheError::InvalidKey { .. } => "invalid_key",
            CacheError::KeyTooLong { .. } => "key_too_long",
            CacheError::UnsupportedValue { .. } => "unsupported_value",
            CacheError::ValueTooLarge { .. } => "value_too_large",
            CacheError::Serialize(_) => "serialize",
            CacheError::InvalidTtl(_) => "invalid_ttl",
            CacheError::InvalidTag { .. } => "invalid_tag",
            CacheError::TooManyTags { .. } => "too_many_tags",
            CacheError::InvalidIdentifier { .. } => "invalid_identifier",
            CacheError::InvalidTenant { .. } => "invalid_tenant",
            CacheError::Timeout { .. } => "timeout",
            CacheError::Database { .. } => "database",
            CacheError::Migrate(_) => "migrate",
            CacheError::Config(_) => "config",
            CacheError::Internal(_) => "internal",
            CacheError::Embedding { .. } => "embedding",
        }
    }

    pub(crate) fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> CacheError {
        move |source| CacheError::Database { operation, source: Arc::new(source) }
    }

    /// The SQLSTATE code of a [`Database`](Self::Database) error that the server sent (`"42P01"`: the table
    /// does not exist, and so on); `None` for other errors.
    ///
    /// ```
    /// # let error = cache_runtime::CacheError::Config("x".into());
    /// if error.sqlstate() == Some("42P01") { /* run PgCache::migrate() */ }
    /// ```
    pub fn sqlstate(&self) -> Option<&str> {
        let CacheError::Database { source, .. } = self else { return None };
        let sqlx::Error::Database(db) = source.as_ref() else { return None };
        db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().map(sqlx::postgres::PgDatabaseError::code)
    }

    /// True when the error says the database could not be used (unreachable, timed out, failed), as opposed
    /// to a problem with the key or value given.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CacheError::Timeout { .. } | CacheError::Database { .. })
    }
}

/// `Result` with [`CacheError`].
pub type Result<T, E = CacheError> = std::result::Result<T, E>;
