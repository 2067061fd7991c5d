//! `pg-cached purge --namespace NS | --tag TAG... | --expired | --tenant ID`: deletes many entries, after a
//! confirmation.
//!
//! A namespace purge goes through `PgCache::delete_namespace`, so it is also an invalidation of the
//! namespace in every running service; a tag purge goes through `PgCache::invalidate_tags`, which records
//! the tags' invalidation (a computation already running does not store its result) and tells every
//! service; an expired purge goes through `PgCache::clear_expired`, the sweeper's own deletion; a tenant
//! purge goes through `PgCache::delete_tenant`, which deletes the tenant's entries by key (each an
//! invalidation every service hears of). The count
//! asked about is taken just before; entries written meanwhile may be purged too, and the report says how
//! many went.

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
    /// Every entry carrying any of these tags (distinct, in the order given; never empty).
    Tags(Vec<String>),
    /// Every entry past its expiry and stale window.
    Expired,
    /// Every entry of this tenant.
    Tenant(String),
}

impl Scope {
    /// The scope of the command line, its input checked before any I/O.
    fn from_args(args: &PurgeScopeArgs) -> Result<Scope, CliError> {
        if let Some(tenant) = &args.tenant {
            if args.namespace.is_some() || !args.tags.is_empty() || args.expired {
                return Err(CliError::Usage("give exactly one of --namespace, --tag, --expired and --tenant".into()));
            }
            input::check_tenant(tenant)?;
            return Ok(Scope::Tenant(tenant.clone()));
        }
        match (&args.namespace, args.tags.as_slice(), args.expired) {
            (Some(namespace), [], false) => {
                input::check_namespace(namespace)?;
                Ok(Scope::Namespace(namespace.clone()))
            }
            (None, [_, ..], false) => {
                let mut tags: Vec<String> = Vec::with_capacity(args.tags.len());
                for tag in &args.tags {
                    input::check_tag(tag)?;
                    if !tags.contains(tag) {
                        tags.push(tag.clone());
                    }
                }
                Ok(Scope::Tags(tags))
            }
            (None, [], true) => Ok(Scope::Expired),
            // clap's group already enforces exactly one; this keeps the function total.
            _ => {
                Err(CliError::Usage("give exactly one of --namespace NS, --tag TAG, --expired and --tenant ID".into()))
            }
        }
    }

    /// Checks that every server can do this purge before any of them does it: a tag purge on a server
    /// without migration 5 would fail there after the others had already deleted.
    ///
    /// # Errors
    /// [`CliError::SchemaBehind`] naming the first such server; a database error.
    async fn check_schema(&self, target: &Target) -> Result<(), CliError> {
        let check = match self {
            Scope::Tags(_) => sql::HAS_TAGS,
            Scope::Tenant(_) => sql::HAS_TENANTS,
            Scope::Namespace(_) | Scope::Expired => return Ok(()),
        };
        let ready = target
            .on_every_shard("checking the schema", |shard| async move {
                let has_tags: bool = sqlx::query_scalar(check).fetch_one(&shard.pool).await.map_err(shard.error())?;
                Ok((shard, has_tags))
            })
            .await?;
        match ready.into_iter().find(|(_, has_tags)| !has_tags) {
            Some((shard, _)) => Err(CliError::SchemaBehind { server: shard.name.clone() }),
            None => Ok(()),
        }
    }

    /// How many entries it covers now, on every server.
    async fn count(&self, target: &Target) -> Result<u64, CliError> {
        let counts = target
            .on_every_shard("counting entries", |shard| async move {
                let query = match self {
                    Scope::Namespace(namespace) => sqlx::query_scalar(sql::COUNT_NAMESPACE).bind(namespace.as_str()),
                    Scope::Tags(tags) => sqlx::query_scalar(sql::COUNT_TAGGED).bind(tags.as_slice()),
                    Scope::Expired => sqlx::query_scalar(sql::COUNT_SWEEPABLE),
                    Scope::Tenant(tenant) => sqlx::query_scalar(sql::COUNT_TENANT).bind(tenant.as_str()),
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
            Scope::Tags(tags) => format!("Delete {} entries {}?", units::count(count), tagged(tags)),
            Scope::Expired => format!("Delete {} expired entries?", units::count(count)),
            Scope::Tenant(tenant) => format!("Delete {} entries of tenant {tenant}?", units::count(count)),
        }
    }

    async fn purge(&self, target: &Target) -> Result<u64, CliError> {
        Ok(match self {
            Scope::Namespace(namespace) => target.cache.delete_namespace(namespace).await?,
            Scope::Tags(tags) => target.cache.invalidate_tags(tags).await?,
            Scope::Expired => target.cache.clear_expired().await?,
            Scope::Tenant(tenant) => target.cache.delete_tenant(tenant).await?,
        })
    }
}

/// "tagged doc:42", or "tagged any of doc:1, doc:2".
fn tagged(tags: &[String]) -> String {
    match tags {
        [tag] => format!("tagged {tag}"),
        _ => format!("tagged any of {}", tags.join(", ")),
    }
}

/// The `purge` report; its JSON shape is documented in README.md.
#[derive(Debug, Serialize)]
pub struct PurgeReport {
    /// `"namespace"`, `"tag"`, `"expired"` or `"tenant"`.
    scope: &'static str,
    /// The namespace purged; `null` for the other scopes.
    namespace: Option<String>,
    /// The tags purged (distinct, in the order given); `null` for the other scopes.
    tags: Option<Vec<String>>,
    /// The tenant purged; `null` for the other scopes.
    tenant: Option<String>,
    /// How many entries were deleted.
    removed: u64,
}

/// Runs `purge`.
///
/// # Errors
/// [`CliError::Usage`] for a bad namespace, or without `--yes` when stdin is not a terminal; a bad tag
/// ([`CliError::Cache`], exit 2); [`CliError::NotConfirmed`]; [`CliError::SchemaBehind`] for a tag purge on a
/// server without migration 5; a database error.
pub async fn run(connection: &ConnectionArgs, args: &PurgeArgs, output: Output) -> Result<(), CliError> {
    let scope = Scope::from_args(&args.scope)?;
    let confirmation = input::confirmation(args.yes, "purge")?;
    let target = Target::connect(connection, Tuning::default()).await?;
    scope.check_schema(&target).await?;
    if confirmation == Confirmation::Ask {
        let count = scope.count(&target).await?;
        input::ask(scope.question(count)).await?;
    }
    let removed = scope.purge(&target).await?;
    let (scope, namespace, tags, tenant) = match scope {
        Scope::Namespace(namespace) => ("namespace", Some(namespace), None, None),
        Scope::Tags(tags) => ("tag", None, Some(tags), None),
        Scope::Expired => ("expired", None, None, None),
        Scope::Tenant(tenant) => ("tenant", None, None, Some(tenant)),
    };
    output.emit(&PurgeReport { scope, namespace, tags, tenant, removed })
}

impl Render for PurgeReport {
    fn render(&self, out: &mut Styled<'_>) -> std::io::Result<()> {
        let removed = units::count(self.removed);
        match (&self.namespace, &self.tags, &self.tenant) {
            (Some(namespace), _, _) => out.line(&format!("deleted {removed} entries in namespace {namespace}")),
            (None, Some(tags), _) => out.line(&format!("deleted {removed} entries {}", tagged(tags))),
            (None, None, Some(tenant)) => out.line(&format!("deleted {removed} entries of tenant {tenant}")),
            (None, None, None) => out.line(&format!("deleted {removed} expired entries")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(namespace: Option<&str>, tags: &[&str], expired: bool) -> PurgeScopeArgs {
        PurgeScopeArgs {
            namespace: namespace.map(str::to_owned),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            expired,
            tenant: None,
        }
    }

    #[test]
    fn a_tenant_is_checked_before_any_io() {
        let tenant = |id: &str| PurgeScopeArgs { tenant: Some(id.to_owned()), ..args(None, &[], false) };
        let good = Scope::from_args(&tenant("acme"));
        assert_eq!(good.ok().map(|s| s.question(3)).as_deref(), Some("Delete 3 entries of tenant acme?"));
        for bad in [
            "", "a
b",
        ] {
            assert_eq!(Scope::from_args(&tenant(bad)).map_err(|e| e.exit_code()), Err(2), "{bad:?}");
        }
    }

    #[test]
    fn questions_name_what_goes() {
        let namespace = Scope::from_args(&args(Some("retrieval"), &[], false));
        assert_eq!(
            namespace.ok().map(|s| s.question(1200)).as_deref(),
            Some("Delete 1,200 entries in namespace retrieval?")
        );
        let bad = Scope::from_args(&args(Some("a:b"), &[], false));
        assert_eq!(bad.map_err(|e| e.exit_code()), Err(2));
        assert_eq!(Scope::Expired.question(3), "Delete 3 expired entries?");
        let one = Scope::from_args(&args(None, &["doc:42"], false));
        assert_eq!(one.ok().map(|s| s.question(2)).as_deref(), Some("Delete 2 entries tagged doc:42?"));
        let two = Scope::from_args(&args(None, &["doc:1", "doc:2", "doc:1"], false));
        assert_eq!(two.ok().map(|s| s.question(0)).as_deref(), Some("Delete 0 entries tagged any of doc:1, doc:2?"));
    }

    #[test]
    fn every_tag_is_checked_before_any_io() {
        let long = "t".repeat(cache_runtime::MAX_TAG_CHARS + 1);
        for tags in [vec!["doc:1", ""], vec!["ok", "tab\there"], vec![long.as_str()]] {
            let scope = Scope::from_args(&args(None, &tags, false));
            assert_eq!(scope.map_err(|e| e.exit_code()), Err(2), "{tags:?}");
        }
    }
}
