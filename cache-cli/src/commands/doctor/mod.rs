//! `pg-cached doctor`: checks a cache's database and says how to fix what is off.
//!
//! Each check gives one line, `OK`, `WARN` or `FAIL`, and every WARN and FAIL carries its fix. FAIL means the
//! cache is broken or will break (tables or indexes missing, no room for connections); WARN means it works
//! but costs more than it should (autovacuum off or late, bloat, a stray index), or something else on the
//! server deserves a look. The command exits 1
//! when any check FAILs, so it can gate a deployment.
//!
//! A check that cannot run (a permission, a statement error) is a WARN saying so: doctor reports every
//! check it can instead of stopping at the first problem. With shards, every check runs on every server.
//! The `encryption` check reads `PG_CACHED_KEYS` when it is set, to judge the key ids of encrypted entries.

mod encryption;
mod listeners;
mod server;
mod tables;

use crate::cli::{ConnectionArgs, DoctorArgs};
use crate::error::CliError;
use crate::output::{Output, Paint, Render, Styled};
use crate::target::{self, Shard, Target, Tuning};
use cache_runtime::HealthReport;
use futures_util::future::join_all;
use serde::Serialize;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Works, but should be fixed.
    Warn,
    /// Broken, or about to be.
    Fail,
}

/// One check on one server.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked (`schema`, `indexes`, ...).
    name: &'static str,
    /// The server, `host:port/database`.
    shard: String,
    status: Status,
    /// What was found.
    message: String,
    /// How to fix it; `null` for OK.
    fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, message: impl Into<String>) -> Check {
        Check { name, shard: String::new(), status: Status::Ok, message: message.into(), fix: None }
    }

    fn warn(name: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name, shard: String::new(), status: Status::Warn, message: message.into(), fix: Some(fix.into()) }
    }

    fn fail(name: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name, shard: String::new(), status: Status::Fail, message: message.into(), fix: Some(fix.into()) }
    }

    /// A check that could not run: inconclusive, so a WARN.
    fn could_not_run(name: &'static str, error: &CliError) -> Check {
        Check::warn(name, format!("could not check: {error}"), "check the role's privileges and the server's log")
    }
}

/// The `doctor` report; its JSON shape is documented in README.md.
#[derive(Debug, Serialize)]
pub struct DoctorReport {
    /// True when no check FAILed.
    ok: bool,
    checks: Vec<Check>,
    /// Whether to name the server on each line (more than one).
    #[serde(skip)]
    sharded: bool,
}

/// Runs `doctor`.
///
/// # Errors
/// [`CliError::ChecksFailed`] when a check FAILs (after the report is printed); connection errors.
pub async fn run(connection: &ConnectionArgs, args: &DoctorArgs, output: Output) -> Result<(), CliError> {
    let target = Target::connect(connection, Tuning::default()).await?;
    let mut health = health_by_shard(&target).await.into_iter();
    let runs = target.shards.iter().map(|shard| {
        let health = health.next();
        target::bounded(shard, "doctor", async move { Ok(shard_checks(shard, health, args.pool_size).await) })
    });
    let per_shard: Vec<Vec<Check>> = join_all(runs).await.into_iter().collect::<Result<_, _>>()?;
    let checks: Vec<Check> = per_shard.into_iter().flatten().collect();
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    output.emit(&DoctorReport { ok: failed == 0, checks, sharded: target.shards.len() > 1 })?;
    if failed > 0 {
        return Err(CliError::ChecksFailed(failed));
    }
    Ok(())
}

/// The library's health check, one report per server in server order.
async fn health_by_shard(target: &Target) -> Vec<HealthReport> {
    let report = target.cache.health_check().await;
    if report.shards.is_empty() {
        vec![report]
    } else {
        report.shards.into_iter().map(|shard| shard.report).collect()
    }
}

/// Every check on one server, in the order they are shown.
async fn shard_checks(shard: &Shard, health: Option<HealthReport>, pool_size: u32) -> Vec<Check> {
    let probe = server::probe(shard).await;
    let mut checks = vec![
        server::connection(health.as_ref(), probe.as_ref()),
        tables::schema(shard).await.unwrap_or_else(|e| Check::could_not_run("schema", &e)),
        tables::indexes(shard).await.unwrap_or_else(|e| Check::could_not_run("indexes", &e)),
        tables::dead_tuples(shard).await.unwrap_or_else(|e| Check::could_not_run("dead_tuples", &e)),
        tables::autovacuum(shard).await.unwrap_or_else(|e| Check::could_not_run("autovacuum", &e)),
        server::synchronous_commit(shard).await.unwrap_or_else(|e| Check::could_not_run("synchronous_commit", &e)),
        server::headroom(shard, pool_size).await.unwrap_or_else(|e| Check::could_not_run("connections", &e)),
        server::clock(probe.as_ref()),
        encryption::key_ids(shard).await.unwrap_or_else(|e| Check::could_not_run("encryption", &e)),
        listeners::notifications(shard).await.unwrap_or_else(|e| Check::could_not_run("notifications", &e)),
    ];
    for check in &mut checks {
        check.shard.clone_from(&shard.name);
    }
    checks
}

impl Render for DoctorReport {
    fn render(&self, out: &mut Styled<'_>) -> std::io::Result<()> {
        for check in &self.checks {
            let (label, paint) = match check.status {
                Status::Ok => ("OK  ", Paint::Good),
                Status::Warn => ("WARN", Paint::Warn),
                Status::Fail => ("FAIL", Paint::Bad),
            };
            out.paint(paint, label)?;
            let on = if self.sharded { format!(" [{}]", check.shard) } else { String::new() };
            out.text(&format!("  {}{on}: {}", check.name, check.message))?;
            if let Some(fix) = &check.fix {
                out.text(" ")?;
                out.paint(Paint::Heading, "Fix:")?;
                out.text(&format!(" {fix}"))?;
            }
            out.line("")?;
        }
        let count = |status| self.checks.iter().filter(|c| c.status == status).count();
        out.line(&format!("{} OK, {} WARN, {} FAIL", count(Status::Ok), count(Status::Warn), count(Status::Fail)))
    }
}
