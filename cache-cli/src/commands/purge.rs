//! `pg-cached purge --namespace NS | --expired`: deletes many entries, after a confirmation.
//!
//! A namespace purge goes through `PgCache::delete_namespace`, so it is also an invalidation of the
//! namespace in every running service; an expired purge goes through `PgCache::clear_expired`, the
//! sweeper's own deletion. The count asked about is taken just before; entries written meanwhile may be
//! purged too, and the report says how many went.

use crate::cli::{ConnectionArgs, PurgeArgs, PurgeScopeArgs};
use crate::error::CliError;
use crate::input::{self, Confirmation};
use crate::output::{Output, Render, Styled};
use crate::sql;
use crate::target::{Target, Tuning};
use crate::units;
use serde::Serialize;

/// What a purge deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// Every entry whose key starts with `NS:`.
    Namespace(String),
    /// Every entry past its expiry and stale window.
    Expired,
    // Reserved: `Tag(String)`, every entry carrying a tag, once cache-runtime has tags. It takes a
    // `--tag TAG` in cli.rs (`PurgeScopeArgs`), a count, a question and the library's purge call below.
}

impl Scope {
    fn from_args(args: &PurgeScopeArgs) -> Result<Scope, CliError> {
        match (&args.namespace, args.expired) {
            (Some(namespace), false) => {
                input::check_namespace(namespace)?;
                Ok(Scope::Namespace(namespace.clone()))
            }
            (None, true) => Ok(Scope::Expired),
            // clap's group already enforces exactly one; this keeps the function total.
            _ => Err(CliError::Usage("give exactly one of --namespace NS and --expired".into())),
        }
    }

    /// How many entries it covers now, on every server.
    async fn count(&self, target: &Target) -> Result<u64, CliError> {
        let counts = target
            .on_every_shard("counting entries", |shard| async move {
                let query = match self {
                    Scope::Namespace(namespace) => sqlx::query_scalar(sql::COUNT_NAMESPACE).bind(namespace.as_str()),
                    Scope::Expired => sqlx::query_scalar(sql::COUNT_SWEEPABLE),
                };
                let count: i64 = query.fetch_one(&shard.pool).await.map_err(shard.error())?;
                Ok(count.unsigned_abs())
            })
            .await?;
        Ok(counts.into_iter().sum())
    }

    fn question(&self, count: u64) -> String {
        match self {
            Scope::Namespace(namespace) => format!("Delete {} entries in namespace {namespace}?", units::count(count)),
            Scope::Expired => format!("Delete {} expired entries?", units::count(count)),
        }
    }

    async fn purge(&self, target: &Target) -> Result<u64, CliError> {
        Ok(match self {
            Scope::Namespace(namespace) => target.cache.delete_namespace(namespace).await?,
            Scope::Expired => target.cache.clear_expired().await?,
        })
    }
}

/// The `purge` report; its JSON shape is documented in README.md.
#[derive(Debug, Serialize)]
pub struct PurgeReport {
    /// `"namespace"` or `"expired"`.
    scope: &'static str,
    /// The namespace purged; `null` for `--expired`.
    namespace: Option<String>,
    /// How many entries were deleted.
    removed: u64,
}

/// Runs `purge`.
///
/// # Errors
/// [`CliError::Usage`] for a bad namespace, or without `--yes` when stdin is not a terminal;
/// [`CliError::NotConfirmed`]; a database error.
pub async fn run(connection: &ConnectionArgs, args: &PurgeArgs, output: Output) -> Result<(), CliError> {
    let scope = Scope::from_args(&args.scope)?;
    let confirmation = input::confirmation(args.yes, "purge")?;
    let target = Target::connect(connection, Tuning::default()).await?;
    if confirmation == Confirmation::Ask {
        let count = scope.count(&target).await?;
        input::ask(scope.question(count)).await?;
    }
    let removed = scope.purge(&target).await?;
    let (scope, namespace) = match scope {
        Scope::Namespace(namespace) => ("namespace", Some(namespace)),
        Scope::Expired => ("expired", None),
    };
    output.emit(&PurgeReport { scope, namespace, removed })
}

impl Render for PurgeReport {
    fn render(&self, out: &mut Styled<'_>) -> std::io::Result<()> {
        let removed = units::count(self.removed);
        match &self.namespace {
            Some(namespace) => out.line(&format!("deleted {removed} entries in namespace {namespace}")),
            None => out.line(&format!("deleted {removed} expired entries")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_name_what_goes() {
        let namespace = Scope::from_args(&PurgeScopeArgs { namespace: Some("retrieval".into()), expired: false });
        assert_eq!(
            namespace.ok().map(|s| s.question(1200)).as_deref(),
            Some("Delete 1,200 entries in namespace retrieval?")
        );
        let bad = Scope::from_args(&PurgeScopeArgs { namespace: Some("a:b".into()), expired: false });
        assert_eq!(bad.map_err(|e| e.exit_code()), Err(2));
        assert_eq!(Scope::Expired.question(3), "Delete 3 expired entries?");
    }
}
