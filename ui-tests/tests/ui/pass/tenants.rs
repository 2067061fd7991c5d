//! `tenant = <expr>` on free functions and methods, from an argument (kept in the key or skipped), a field
//! of `self`, or a call; companions included. Without a cache the bodies simply run, in the tenant's scope.
use cache_runtime::{current_tenant, pg_cached, tenant};
use std::sync::Arc;

#[pg_cached(namespace = "answer", tenant = org, skip(org))]
async fn by_arg(org: &str, question: &str) -> String {
    format!("{question} for {}", current_tenant().unwrap_or_default())
}

#[pg_cached(namespace = "answer", tenant = org, ttl = "1h")]
async fn owned_arg(org: String, question: String) -> Result<String, String> {
    Ok(format!("{question} for {org}"))
}

struct User {
    org: Arc<str>,
}

struct Service {
    tenant: String,
}

impl Service {
    #[pg_cached(namespace = "answer", tenant = self.tenant, local = "10s")]
    async fn by_field(&self, question: &str) -> String {
        format!("{question} for {}", current_tenant().unwrap_or_default())
    }

    #[pg_cached(namespace = "answer", tenant = user.org.clone(), skip(user))]
    async fn by_call(&self, user: &User, question: &str) -> Option<String> {
        Some(format!("{question} for {}", user.org))
    }
}

#[tokio::main]
async fn main() {
    assert_eq!(by_arg("acme", "q").await, "q for acme");
    assert_eq!(tenant("acme", by_arg("acme", "q")).await, "q for acme");
    assert_eq!(owned_arg("acme".into(), "q".into()).await.as_deref(), Ok("q for acme"));
    let service = Service { tenant: "globex".into() };
    assert_eq!(service.by_field("q").await, "q for globex");
    let user = User { org: Arc::from("initech") };
    assert_eq!(service.by_call(&user, "q").await.as_deref(), Some("q for initech"));
    assert!(by_arg_cache_key("acme", "q").is_ok_and(|key| key.starts_with("answer:")));
    assert_eq!(by_arg_refresh("acme", "q").await, "q for acme");
}
