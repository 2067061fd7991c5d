//! `pg-cached stats --tenant ID`: what the cache holds of one tenant (entries, live entries, bytes), through
//! `PgCache::tenant_stats`, summed over every server. Hits are counted by each service process for the
//! tenants it serves (`TenantStats::hits`); this tool serves none, so it does not report them.

use crate::cli::ConnectionArgs;
use crate::error::CliError;
use crate::input;
use crate::output::{Output, Render, Styled};
use crate::target::{Target, Tuning};
use crate::units;
use serde::Serialize;

/// The `stats --tenant` report; its JSON shape is documented in README.md.
#[derive(Debug, Serialize)]
pub struct TenantReport {
    tenant: String,
    /// Rows of the tenant, expired ones not yet swept included.
    entries: u64,
    /// Rows of the tenant that have not expired.
    live: u64,
    /// The bytes its values take as stored (after compression).
    bytes: u64,
}

/// Runs `stats --tenant`.
///
/// # Errors
/// A bad tenant id ([`CliError::Cache`], exit 2) before any I/O; a database error.
pub async fn run(connection: &ConnectionArgs, tenant: &str, output: Output) -> Result<(), CliError> {
    input::check_tenant(tenant)?;
    let target = Target::connect(connection, Tuning::default()).await?;
    let stats = target.cache.tenant_stats(tenant).await?;
    output.emit(&TenantReport {
        tenant: tenant.to_owned(),
        entries: stats.entries,
        live: stats.live,
        bytes: stats.bytes,
    })
}

impl Render for TenantReport {
    fn render(&self, out: &mut Styled<'_>) -> std::io::Result<()> {
        out.line(&format!(
            "tenant {}: {} entries ({} live), {}",
            self.tenant,
            units::count(self.entries),
            units::count(self.live),
            units::bytes(self.bytes)
        ))
    }
}
