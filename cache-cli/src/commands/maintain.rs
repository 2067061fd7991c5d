//! `pg-cached migrate` and `pg-cached sweep`: the library's own maintenance, run on demand.

use crate::cli::{ConnectionArgs, SweepArgs};
use crate::commands::schema;
use crate::error::CliError;
use crate::output::{Output, Render, Styled};
use crate::target::{Target, Tuning};
use crate::units;
use serde::Serialize;

/// The `migrate` report; its JSON shape is documented in README.md.
#[derive(Debug, Serialize)]
pub struct MigrateReport {
    /// The latest migration this build of pg-cached embeds; every server is now at it.
    schema_version: i64,
    shards: Vec<ShardMigration>,
}

/// What one server got.
#[derive(Debug, Serialize)]
struct ShardMigration {
    shard: String,
    /// Versions applied by this run (empty when the server was up to date).
    newly_applied: Vec<i64>,
}

/// Runs `migrate`: `PgCache::migrate` on every server, reporting which migrations it applied.
///
/// # Errors
/// A database or migration error.
pub async fn migrate(connection: &ConnectionArgs, output: Output) -> Result<(), CliError> {
    let target = Target::connect(connection, Tuning::default()).await?;
    let before = target.on_every_shard("reading applied migrations", schema::applied).await?;
    target.cache.migrate().await?;
    let after = target.on_every_shard("reading applied migrations", schema::applied).await?;
    let shards = target
        .shards
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(shard, (before, after))| ShardMigration {
            shard: shard.name.clone(),
            newly_applied: after
                .iter()
                .map(|m| m.version)
                .filter(|v| !before.iter().any(|b| b.version == *v))
                .collect(),
        })
        .collect();
    output.emit(&MigrateReport { schema_version: schema::latest(), shards })
}

impl Render for MigrateReport {
    fn render(&self, out: &mut Styled<'_>) -> std::io::Result<()> {
        for shard in &self.shards {
            let done = match shard.newly_applied.as_slice() {
                [] => "already up to date".to_owned(),
                versions => {
                    let list: Vec<String> = versions.iter().map(i64::to_string).collect();
                    format!("applied migration(s) {}", list.join(", "))
                }
            };
            out.line(&format!("{}: {done}; schema at version {}", shard.shard, self.schema_version))?;
        }
        Ok(())
    }
}

/// The `sweep` report; its JSON shape is documented in README.md.
#[derive(Debug, Serialize)]
pub struct SweepReport {
    /// Expired entries deleted.
    expired: u64,
    /// Live entries evicted to honour `max_entries`.
    evicted: u64,
    /// The limit enforced, `null` when none was given.
    max_entries: Option<u64>,
}

/// Runs `sweep`: `PgCache::sweep` (expired rows, the row limit if one is given, old bookkeeping rows).
///
/// # Errors
/// A database error.
pub async fn sweep(connection: &ConnectionArgs, args: &SweepArgs, output: Output) -> Result<(), CliError> {
    // 0 means no limit, as CACHE_MAX_ENTRIES does for the services.
    let max_entries = args.max_entries.filter(|n| *n > 0);
    let target = Target::connect(connection, Tuning { max_entries, ..Tuning::default() }).await?;
    let report = target.cache.sweep().await?;
    output.emit(&SweepReport { expired: report.expired, evicted: report.evicted, max_entries })
}

impl Render for SweepReport {
    fn render(&self, out: &mut Styled<'_>) -> std::io::Result<()> {
        let limit = self.max_entries.map_or_else(|| "no row limit given".to_owned(), |n| format!("limit {n}"));
        out.line(&format!(
            "swept: {} expired entries deleted, {} evicted ({limit})",
            units::count(self.expired),
            units::count(self.evicted)
        ))
    }
}
