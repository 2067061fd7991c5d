//! `pg-cached grant ROLE [--read-only | --revoke]`: `PgCache::grant`, `grant_reader` or `revoke` on every
//! server, so that a service connected as ROLE can use the cache (nobody but its owner can by default).

use crate::cli::{ConnectionArgs, GrantArgs};
use crate::error::CliError;
use crate::output::{Output, Render, Styled};
use crate::target::{Target, Tuning};
use serde::Serialize;

/// The `grant` report; its JSON shape is documented in README.md.
#[derive(Debug, Serialize)]
pub struct GrantReport {
    role: String,
    /// `writer` (everything the cache does), `reader` (reading only) or `none` (after `--revoke`).
    access: &'static str,
    /// The servers it was done on.
    shards: Vec<String>,
}

/// Runs `grant`.
///
/// # Errors
/// A role name that names no role (exit 2), or a database error (for example when the connected role may
/// not grant on the cache's tables).
pub async fn run(connection: &ConnectionArgs, args: &GrantArgs, output: Output) -> Result<(), CliError> {
    let target = Target::connect(connection, Tuning::default()).await?;
    let access = if args.revoke {
        target.cache.revoke(&args.role).await?;
        "none"
    } else if args.read_only {
        target.cache.grant_reader(&args.role).await?;
        "reader"
    } else {
        target.cache.grant(&args.role).await?;
        "writer"
    };
    let shards = target.shards.iter().map(|shard| shard.name.clone()).collect();
    output.emit(&GrantReport { role: args.role.clone(), access, shards })
}

impl Render for GrantReport {
    fn render(&self, out: &mut Styled<'_>) -> std::io::Result<()> {
        let what = match self.access {
            "writer" => "may now do everything the cache does",
            "reader" => "may now read the cache (get, keys, stats, watch)",
            _ => "no longer has rights on the cache",
        };
        for shard in &self.shards {
            out.line(&format!("{shard}: role {:?} {what}", self.role))?;
        }
        Ok(())
    }
}
