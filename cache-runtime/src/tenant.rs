//! Tenants: [`tenant`] runs a future in a task-local tenant scope, and every key computed inside it (by a
//! memoized call or by a [`PgCache`](crate::PgCache) operation) is qualified by the tenant, so that no
//! lookup made for one tenant can ever find another tenant's entry, whatever the arguments.
//!
//! A qualified key keeps its namespace (purges and counters by namespace still work) and replaces the rest
//! with `~` and the SHA-256 of the tenant and the whole key: `answer:~<64 hex digits>`. That form is
//! reserved: outside any tenant scope a write of a key of that form is refused, so that no write made for
//! no tenant can plant an entry where a tenant's lookup would find it. The tenant itself is written to the
//! row's `tenant` column, which per-tenant purges, stats, quotas and row-level security read.
//!
//! A leaf module: the scope, the id rules, the qualification of keys, and the per-tenant hit counters.

use crate::error::CacheError;
use crate::key::namespace_of;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// The longest tenant id, in characters.
pub const MAX_TENANT_CHARS: usize = 128;

/// How many tenants one process counts hits for; the hits of tenants past this many are not counted by
/// tenant (they are still counted by namespace), so that the counters stay bounded.
pub const MAX_COUNTED_TENANTS: usize = 1024;

/// Where the qualification of keys changes incompatibly, this changes.
const TENANT_KEY_FORMAT: &str = "pg_cached/tenant-key/v1";

tokio::task_local! {
    /// The tenant of the computation running in this task, set by [`tenant`] or `#[pg_cached(tenant = ...)]`.
    static TENANT: Scope;
}

/// A tenant scope: a checked tenant id, or why the id given was refused.
#[derive(Debug, Clone)]
pub(crate) enum Scope {
    Valid(Arc<str>),
    Invalid { tenant: String, reason: String },
}

impl Scope {
    /// The scope for `id` inside `outer`: `id` must be valid, and equal to the outer scope's tenant if any.
    fn new(id: &str, outer: Option<Scope>) -> Scope {
        if let Err(CacheError::InvalidTenant { tenant, reason }) = validate_tenant(id) {
            return Scope::Invalid { tenant, reason };
        }
        match outer {
            None => Scope::Valid(Arc::from(id)),
            Some(Scope::Valid(outer)) if &*outer == id => Scope::Valid(outer),
            Some(Scope::Valid(outer)) => Scope::Invalid {
                tenant: shorten(id),
                reason: format!("inside the scope of tenant {:?}: a scope never changes tenant", shorten(&outer)),
            },
            Some(invalid @ Scope::Invalid { .. }) => invalid,
        }
    }

    /// The tenant, or the error that refused it.
    pub(crate) fn id(&self) -> Result<&Arc<str>, CacheError> {
        match self {
            Scope::Valid(id) => Ok(id),
            Scope::Invalid { tenant, reason } => {
                Err(CacheError::InvalidTenant { tenant: tenant.clone(), reason: reason.clone() })
            }
        }
    }
}

/// Runs `future` as work of the tenant `id`: every cache key computed inside it, by a memoized call or by a
/// [`PgCache`](crate::PgCache) operation (`get`, `set`, `delete`, the bulk and semantic ones), is qualified
/// by the tenant, and every entry written inside it carries the tenant in its `tenant` column. A lookup
/// inside the scope of one tenant never finds an entry of another tenant, nor one written outside any scope.
///
/// The scope is task-local, like [`tag`](crate::tag): a task the future spawns is outside it (enter the
/// scope again there). Background refreshes the cache starts itself run in the scope of the call that
/// started them.
///
/// **Nesting.** A scope inside another must name the same tenant; one that names another is refused (a
/// scope never changes tenant, so a tenant's work cannot reach another tenant's entries by nesting). The
/// same rule holds for `#[pg_cached(tenant = ...)]` inside a scope.
///
/// **Invalid ids.** An id that is empty, longer than [`MAX_TENANT_CHARS`] characters or holds a control
/// character (see [`validate_tenant`]), or a nested scope that changes tenant, gives a scope in which every
/// `PgCache` operation fails with [`CacheError::InvalidTenant`] and every memoized call runs its body
/// uncached (the error is logged and counted): a bad id never reaches another tenant's entries, nor the
/// entries of no tenant.
///
/// ```no_run
/// # async fn demo(cache: cache_runtime::PgCache) -> Result<(), cache_runtime::CacheError> {
/// use cache_runtime::{tenant, Ttl};
/// tenant("acme", cache.set("answer:q1", &"for acme", Ttl::Default)).await?;
/// let theirs: Option<String> = tenant("globex", cache.get("answer:q1")).await?;
/// assert_eq!(theirs, None); // same key, another tenant: never acme's entry
/// # Ok(()) }
/// ```
pub fn tenant<F: Future>(id: impl AsRef<str>, future: F) -> impl Future<Output = F::Output> {
    let id = id.as_ref().to_owned();
    // The scope is resolved when the future first runs, inside whatever scope it runs in (not where it was
    // made: `tenant("a", tenant("b", f))` makes the inner one first).
    async move {
        let scope = Scope::new(&id, current());
        TENANT.scope(scope, future).await
    }
}

/// The tenant of the scope this task runs in: `None` outside any [`tenant`] scope, and in a scope whose id
/// was refused.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert_eq!(cache_runtime::current_tenant(), None);
/// let inside = cache_runtime::tenant("acme", async { cache_runtime::current_tenant() }).await;
/// assert_eq!(inside.as_deref(), Some("acme"));
/// # }
/// ```
pub fn current_tenant() -> Option<String> {
    match current()? {
        Scope::Valid(id) => Some(id.to_string()),
        Scope::Invalid { .. } => None,
    }
}

/// Checks a tenant id: 1 to [`MAX_TENANT_CHARS`] characters, no control character (they would corrupt
/// logs and the CLI's output, and U+0000 cannot be stored).
///
/// ```
/// assert!(cache_runtime::validate_tenant("acme-42").is_ok());
/// assert!(cache_runtime::validate_tenant("").is_err());
/// assert!(cache_runtime::validate_tenant("a\nb").is_err());
/// ```
///
/// # Errors
/// [`CacheError::InvalidTenant`].
pub fn validate_tenant(id: &str) -> Result<(), CacheError> {
    let refuse = |reason: &str| Err(CacheError::InvalidTenant { tenant: shorten(id), reason: reason.to_owned() });
    if id.is_empty() {
        return refuse("the tenant id is empty");
    }
    if id.len() > MAX_TENANT_CHARS && id.chars().count() > MAX_TENANT_CHARS {
        return refuse(&format!("the tenant id is longer than {MAX_TENANT_CHARS} characters"));
    }
    if id.chars().any(char::is_control) {
        return refuse("the tenant id holds a control character");
    }
    Ok(())
}

/// The first 64 characters of `id`, for error messages.
fn shorten(id: &str) -> String {
    id.chars().take(64).collect()
}

/// The scope this task runs in, if any.
pub(crate) fn current() -> Option<Scope> {
    TENANT.try_with(Scope::clone).ok()
}

/// The tenant this task works for: `None` outside any scope, the error of a refused scope.
pub(crate) fn current_id() -> Result<Option<Arc<str>>, CacheError> {
    current().map(|scope| scope.id().cloned()).transpose()
}

/// Runs `future` in `scope` (the scope captured where a background task was started), or as it is.
pub(crate) async fn within<F: Future>(scope: Option<Scope>, future: F) -> F::Output {
    match scope {
        Some(scope) => TENANT.scope(scope, future).await,
        None => future.await,
    }
}

/// Runs `future` in the scope of `id` inside the current one (see [`tenant`]), for
/// `#[pg_cached(tenant = ...)]`: `make` builds the future inside the scope, so that everything the memoized
/// call computes when it is made (its key, its in-process hit) sees the tenant.
pub(crate) async fn enter<F: Future>(id: &str, make: impl FnOnce() -> F) -> F::Output {
    let scope = Scope::new(id, current());
    TENANT.scope(scope, async move { make().await }).await
}

/// `key` qualified by `tenant`: its namespace, `:~`, and the SHA-256 of the tenant and the whole key.
pub(crate) fn qualify(tenant: &str, key: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [TENANT_KEY_FORMAT, tenant, key] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let namespace = namespace_of(key);
    let mut qualified = String::with_capacity(namespace.len() + 66);
    qualified.push_str(namespace);
    qualified.push_str(":~");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for byte in hasher.finalize() {
        qualified.push(char::from(HEX[usize::from(byte >> 4)]));
        qualified.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    qualified
}

/// `key` as this task's scope has it: qualified by its tenant, unchanged outside any scope, or the error of
/// a refused scope. Also the tenant, for the row's column.
pub(crate) fn scoped_key(key: &str) -> Result<(String, Option<Arc<str>>), CacheError> {
    Ok(match current_id()? {
        Some(tenant) => (qualify(&tenant, key), Some(tenant)),
        None => (key.to_owned(), None),
    })
}

/// Whether `key` has the form of a tenant's qualified key, `<namespace>:~<64 hex digits>`.
fn is_reserved(key: &str) -> bool {
    let Some((_, rest)) = key.split_once(':') else { return false };
    rest.strip_prefix('~').is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// [`scoped_key`] for a write: outside any tenant scope, a key of the reserved form is refused (it could be
/// a tenant's, which that tenant's lookups would then find).
pub(crate) fn scoped_write_key(key: &str) -> Result<(String, Option<Arc<str>>), CacheError> {
    let scoped = scoped_key(key)?;
    if scoped.1.is_none() && is_reserved(key) {
        return Err(reserved());
    }
    Ok(scoped)
}

fn reserved() -> CacheError {
    let reason = "keys of the form `<namespace>:~<64 hex digits>` are tenants' keys: write them inside the tenant's scope (cache_runtime::tenant)";
    CacheError::InvalidKey { reason: reason.into() }
}

/// [`scoped_key`] of an owned key: outside any scope, the key itself, with no copy (a memoized call's hot
/// path allocates nothing here).
pub(crate) fn scoped_owned(key: String) -> Result<(String, Option<Arc<str>>), CacheError> {
    Ok(match current_id()? {
        Some(tenant) => (qualify(&tenant, &key), Some(tenant)),
        None => (key, None),
    })
}

/// [`scoped_key`] for each of `keys`, and the tenant.
pub(crate) fn scoped_keys<'k>(
    keys: impl Iterator<Item = &'k str>,
) -> Result<(Vec<String>, Option<Arc<str>>), CacheError> {
    let tenant = current_id()?;
    let keys = keys.map(|key| tenant.as_deref().map_or_else(|| key.to_owned(), |tenant| qualify(tenant, key)));
    Ok((keys.collect(), tenant))
}

/// [`scoped_keys`] for writes (see [`scoped_write_key`]).
pub(crate) fn scoped_write_keys<'k>(
    keys: impl Iterator<Item = &'k str> + Clone,
) -> Result<(Vec<String>, Option<Arc<str>>), CacheError> {
    let scoped = scoped_keys(keys.clone())?;
    if scoped.1.is_none() && keys.into_iter().any(is_reserved) {
        return Err(reserved());
    }
    Ok(scoped)
}

/// Hits counted per tenant in this process (bounded by [`MAX_COUNTED_TENANTS`]).
#[derive(Debug, Default)]
pub(crate) struct TenantHits {
    hits: Mutex<HashMap<Arc<str>, u64>>,
}

impl TenantHits {
    /// Counts a hit for `tenant`.
    pub(crate) fn hit(&self, tenant: &Arc<str>) {
        let mut hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = hits.get_mut(tenant) {
            *count += 1;
        } else if hits.len() < MAX_COUNTED_TENANTS {
            hits.insert(Arc::clone(tenant), 1);
        }
    }

    /// Counts a hit for the tenant of the scope this task runs in, if any.
    pub(crate) fn hit_here(&self) {
        let _ = TENANT.try_with(|scope| {
            if let Scope::Valid(tenant) = scope {
                self.hit(tenant);
            }
        });
    }

    /// The hits counted for `tenant`.
    pub(crate) fn get(&self, tenant: &str) -> u64 {
        self.hits.lock().unwrap_or_else(|e| e.into_inner()).get(tenant).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(validate_tenant("acme").is_ok());
        assert!(validate_tenant(&"é".repeat(MAX_TENANT_CHARS)).is_ok());
        for bad in ["", "a\0b", "a\tb", "\u{7f}"] {
            assert!(matches!(validate_tenant(bad), Err(CacheError::InvalidTenant { .. })), "{bad:?}");
        }
        let long = "x".repeat(MAX_TENANT_CHARS + 1);
        assert!(matches!(validate_tenant(&long), Err(CacheError::InvalidTenant { tenant, .. }) if tenant.len() == 64));
    }

    #[test]
    fn qualified_keys_keep_the_namespace_and_differ_by_tenant() {
        let a = qualify("acme", "answer:q1");
        assert!(a.starts_with("answer:~") && a.len() == "answer:~".len() + 64);
        assert!(is_reserved(&a) && !is_reserved("answer:q1") && !is_reserved(&format!("answer:{}", &a[8..])));
        assert_ne!(a, qualify("globex", "answer:q1"));
        assert_ne!(a, qualify("acme", "answer:q2"));
        // Length-prefixed: moving a character from the tenant to the key changes the key.
        assert_ne!(qualify("ab", "c:d"), qualify("a", "bc:d"));
        assert!(qualify("acme", "plain").starts_with(":~"));
        crate::key::check_key(&qualify(&"t".repeat(128), &"k".repeat(500))).unwrap();
    }

    #[tokio::test]
    async fn scopes_nest_only_for_the_same_tenant() {
        assert!(scoped_key("k:1").unwrap().1.is_none());
        let same = tenant("a", tenant("a", async { scoped_key("k:1") })).await.unwrap();
        assert_eq!(same, (qualify("a", "k:1"), Some(Arc::from("a"))));
        let other = tenant("a", tenant("b", async { scoped_key("k:1") })).await;
        assert!(matches!(other, Err(CacheError::InvalidTenant { .. })));
        let inner_of_bad = tenant("", tenant("a", async { current_tenant() })).await;
        assert_eq!(inner_of_bad, None, "a refused scope stays refused inside");
        let reserved = qualify("a", "k:1");
        assert!(
            matches!(scoped_write_key(&reserved), Err(CacheError::InvalidKey { .. })),
            "no tenant may not write it"
        );
        assert!(scoped_key(&reserved).is_ok(), "but may read it (the owner's tools)");
        assert!(
            tenant("b", async { scoped_write_key(&reserved) }).await.is_ok(),
            "a tenant's own key is qualified again"
        );
        let entered = tenant("a", enter("a", || async { current_tenant() })).await;
        assert_eq!(entered.as_deref(), Some("a"));
    }
}
