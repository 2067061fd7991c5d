//! The errors of `pg-cached`, and the exit code each one maps to.
//!
//! Exit codes are part of the tool's contract (see README.md): 0 success, 1 an error (the server, the
//! database, a missing key, a failed doctor check), 2 bad usage (clap's own usage errors, and input this
//! tool refuses before any I/O). `main` prints every error as one `error: ...` line on stderr.

use cache_runtime::CacheError;
use std::time::Duration;

/// Everything that ends a command unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or its input is unusable (an empty key, a NUL, a bad namespace or tag, no database
    /// given, a purge without confirmation on a non-terminal).
    #[error("{0}")]
    Usage(String),

    /// No server could be reached in time, or it refused the connection.
    #[error("cannot connect to {server}: {reason}")]
    Connect {
        /// The server's URL, its password (wherever the URL holds one) replaced by `***`.
        server: String,
        /// What went wrong.
        reason: String,
    },

    /// An operation of cache-runtime failed. Refusals of bad input are usage errors (exit 2).
    #[error("{0}")]
    Cache(#[from] CacheError),

    /// A statement of this tool's own failed on one server.
    #[error("database error on {server}: {source}")]
    Database {
        /// The server's `host:port/database`.
        server: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// The cache's tables are missing: the database was never migrated.
    #[error("the cache_entries table does not exist on {server}; run `pg-cached migrate`")]
    NotMigrated {
        /// The server's `host:port/database`.
        server: String,
    },

    /// The cache's tables exist but lack what this pg-cached reads (a column or function of a later
    /// migration): the binary is newer than the schema.
    #[error("the cache's schema on {server} is older than this pg-cached; run `pg-cached migrate`")]
    SchemaBehind {
        /// The server's `host:port/database`.
        server: String,
    },

    /// A statement did not finish in time.
    #[error("{what} on {server} did not finish within {after:?}")]
    Timeout {
        /// What was running.
        what: &'static str,
        /// The server's `host:port/database`.
        server: String,
        /// The limit.
        after: Duration,
    },

    /// `get` of a key that has no entry.
    #[error("no entry for key {0:?}")]
    NotFound(String),

    /// `get` of a key whose entry has expired and waits for a sweep.
    #[error("the entry for key {key:?} expired {ago} ago (it waits for a sweep)")]
    Expired {
        /// The key.
        key: String,
        /// How long ago, for people.
        ago: String,
    },

    /// `doctor` found at least one check at FAIL.
    #[error("{0} doctor check(s) failed; see the FAIL lines for the fix")]
    ChecksFailed(usize),

    /// The person at the terminal did not confirm a purge.
    #[error("not confirmed; nothing was deleted")]
    NotConfirmed,

    /// Reading stdin or writing stdout failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being read or written.
        context: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    /// The process exit code for this error: 2 for bad usage or input, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Cache(error) if is_bad_input(error) => 2,
            _ => 1,
        }
    }

    /// Whether this is stdout closing under us (`pg-cached keys | head`): not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// The error of a statement on `server`, with a missing table, column or function turned into advice to
    /// migrate: the tool's own SQL names only what `migrations/` creates, so "undefined" means not migrated.
    pub fn database(server: &str, source: sqlx::Error) -> CliError {
        let code = source.as_database_error().and_then(|db| db.code());
        match code.as_deref() {
            // undefined_table
            Some("42P01") => CliError::NotMigrated { server: server.to_owned() },
            // undefined_column, undefined_function: a migration newer than the schema is missing.
            Some("42703" | "42883") => CliError::SchemaBehind { server: server.to_owned() },
            _ => CliError::Database { server: server.to_owned(), source },
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> CliError {
        move |source| CliError::Io { context, source }
    }
}

/// Input that cache-runtime refused, before any I/O or (a role that does not exist) from the database's answer.
fn is_bad_input(error: &CacheError) -> bool {
    matches!(
        error,
        CacheError::InvalidKey { .. }
            | CacheError::KeyTooLong { .. }
            | CacheError::InvalidNamespace { .. }
            | CacheError::InvalidTag { .. }
            | CacheError::InvalidTenant { .. }
            | CacheError::InvalidIdentifier { .. }
            | CacheError::InvalidTtl(_)
            | CacheError::Config(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_a_usage_error() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        let namespace = cache_runtime::validate_namespace("a b").unwrap_err();
        assert_eq!(CliError::from(namespace).exit_code(), 2);
        let tag = cache_runtime::validate_tag("").unwrap_err();
        assert_eq!(CliError::from(tag).exit_code(), 2);
        assert_eq!(CliError::SchemaBehind { server: "db".into() }.exit_code(), 1);
        assert_eq!(CliError::NotFound("k".into()).exit_code(), 1);
        assert_eq!(CliError::ChecksFailed(1).exit_code(), 1);
        let timeout = CacheError::Timeout { operation: "get", after: Duration::from_secs(1) };
        assert_eq!(CliError::from(timeout).exit_code(), 1);
    }

    #[test]
    fn broken_pipes_are_recognised() {
        let pipe = CliError::io("writing")(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(pipe.is_broken_pipe());
        assert!(!CliError::NotConfirmed.is_broken_pipe());
    }
}
