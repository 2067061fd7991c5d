//! The command-line tree (clap derive). Only parsing lives here; each command's work is in `commands/`.
//!
//! Names of commands, options and their defaults are a contract with scripts: see README.md.

use clap::{Args, Parser, Subcommand};
use std::time::Duration;

/// Inspect and operate a pg_cached cache: stats, keys, entries, purges, sweeps, migrations, diagnostics
/// and a live view.
#[derive(Debug, Parser)]
#[command(name = "pg-cached", version, propagate_version = true, max_term_width = 110)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Print one JSON document on stdout instead of text (watch: one JSON object per line).
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// Where the cache lives.
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// The cache's PostgreSQL database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// A sharded cache: every shard's URL, comma-separated, as the services give them to
    /// `PgCacheBuilder::shards`, names included (`eu-1=postgres://...`). A URL may list several hosts
    /// (`postgres://db1a,db1b/app`): a comma starts a new shard only before `postgres://` or `NAME=postgres://`.
    /// Takes the place of --database-url.
    #[arg(long, global = true, value_name = "URL,URL,...")]
    pub shards: Vec<String>,

    /// How long to wait for a connection and for each cache operation, in seconds.
    #[arg(long, default_value = "5", global = true, value_name = "SECS", value_parser = parse_seconds)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Entries, bytes and expiry per namespace; the table's size, dead tuples and vacuums. With
    /// `--tenant ID`, one tenant's entries and bytes instead.
    Stats(StatsArgs),
    /// Live keys, newest first, with the time they have left and their size.
    Keys(KeysArgs),
    /// One entry: its JSON, when it was written, when it expires, and its size.
    Get(GetArgs),
    /// Delete keys; running services drop them from their in-process tiers too.
    Delete(DeleteArgs),
    /// Delete a whole namespace, every entry carrying a tag, or every expired entry.
    Purge(PurgeArgs),
    /// Create or update the cache's tables (the migrations embedded in cache-runtime).
    Migrate,
    /// Delete expired entries now, as the services' background sweeper does.
    Sweep(SweepArgs),
    /// Let a database role use the cache (run as the cache's owner): everything, or reading only.
    Grant(GrantArgs),
    /// Check schema, indexes, vacuum, settings, connections and clocks; say how to fix what is off.
    Doctor(DoctorArgs),
    /// A live view: operations per second, entries per namespace, invalidation events.
    Watch(WatchArgs),
    /// Re-encrypt entries under the first key of PG_CACHED_KEYS, in batches, while services run.
    Rekey(RekeyArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Only keys that start with this (for a namespace: `retrieval:`).
    pub prefix: Option<String>,

    /// At most this many keys.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// One tenant's entries, live entries and bytes (PgCache::tenant_stats) instead of the whole table.
    #[arg(long, value_name = "ID")]
    pub tenant: Option<String>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The entry's full key.
    pub key: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The keys to delete.
    #[arg(required_unless_present = "stdin", value_name = "KEY")]
    pub keys: Vec<String>,

    /// Read the keys from stdin, one per line, instead (for keys piped from `keys --json | jq`).
    #[arg(long, conflicts_with = "keys")]
    pub stdin: bool,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub scope: PurgeScopeArgs,

    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// What a purge deletes: exactly one of these (`--tag` may be repeated: it is still one of them).
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct PurgeScopeArgs {
    /// Every entry of this namespace (the part of keys before the first ':').
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,

    /// Every entry carrying this tag, in every service too (PgCache::invalidate_tags). Repeat it for
    /// entries carrying any of several tags.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,

    /// Every entry past its expiry (and past any stale-while-revalidate window).
    #[arg(long)]
    pub expired: bool,

    /// Every entry of this tenant (written inside `cache_runtime::tenant(ID, ...)` or by a function with
    /// `#[pg_cached(tenant = ...)]`), in every service too (PgCache::delete_tenant).
    #[arg(long, value_name = "ID")]
    pub tenant: Option<String>,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Also evict entries, soonest-expiring first, until at most N remain (0: no limit). Without it (and
    /// without CACHE_MAX_ENTRIES) a sweep evicts nothing: the services' own limit is not known here.
    #[arg(long, env = "CACHE_MAX_ENTRIES", value_name = "N")]
    pub max_entries: Option<u64>,
}

#[derive(Debug, Args)]
pub struct GrantArgs {
    /// The role, as PostgreSQL spells it (case matters, no quotes).
    pub role: String,

    /// Reading only (get, keys, stats, watch), instead of everything the cache does.
    #[arg(long, conflicts_with = "revoke")]
    pub read_only: bool,

    /// Take back what an earlier grant gave the role, instead.
    #[arg(long)]
    pub revoke: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The connection pool size of each service process, for the connection headroom check.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub pool_size: u32,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Seconds between two refreshes.
    #[arg(long, default_value = "1", value_name = "SECS", value_parser = parse_seconds)]
    pub interval: Duration,

    /// Stop after this many refreshes (the first one is shown at once) instead of at Ctrl-C.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct RekeyArgs {
    /// Entries per batch: each batch is one read and one update, short enough to run beside the services.
    #[arg(long, default_value_t = 500, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

/// A positive number of seconds, fractions allowed, at most a day.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.trim().parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!("{text} must be more than 0 and at most 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn seconds_are_positive_and_bounded() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("1e9").is_err());
    }

    #[test]
    fn purge_takes_exactly_one_scope() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["pg-cached", "purge"], args].concat());
        assert!(parse(&["--namespace", "a"]).is_ok());
        assert!(parse(&["--expired"]).is_ok());
        assert!(parse(&["--tag", "doc:1"]).is_ok());
        let tags = parse(&["--tag", "doc:1", "--tag", "doc:2"]).map(|cli| match cli.command {
            Command::Purge(purge) => purge.scope.tags,
            _ => Vec::new(),
        });
        assert_eq!(tags.ok(), Some(vec!["doc:1".to_owned(), "doc:2".to_owned()]), "repeating --tag is one scope");
        assert!(parse(&[]).is_err());
        assert!(parse(&["--namespace", "a", "--expired"]).is_err());
        assert!(parse(&["--tag", "t", "--namespace", "a"]).is_err());
        assert!(parse(&["--tag", "t", "--expired"]).is_err());
    }
}
