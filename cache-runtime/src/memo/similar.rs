//! `#[pg_cached(similar(arg))]`: a memoized call whose exact key misses may be answered by the entry of a
//! call that asked the same in other words.
//!
//! Generated code hands the engine a [`Similar`]: the key of the call's *scope* (every argument in the key
//! but the text) and the text. After the exact lookup misses, the engine embeds the text and looks for the
//! nearest stored text of the same scope and model (`cache/similar.rs`); a hit is served like any hit. A miss
//! goes on as before (single flight, the body, the guarded write), and the write stores the text and its
//! vector beside the entry, so later paraphrases find it. Without an embedder, or when embedding fails, the
//! call works by its exact key alone: semantic matching is an optimization and never fails a call.

// Items of the hidden `__private` contract, re-exported there: not part of the documented API.
#![allow(missing_docs)]

use super::site::Site;
use crate::cache::{PgCache, Scope};
use crate::error::CacheError;
use std::sync::atomic::Ordering;

/// What generated code knows of a `similar(arg)` call: the key of its scope (the call's key without the
/// text) and the text.
#[derive(Debug)]
pub struct Similar {
    scope: Result<String, CacheError>,
    text: String,
}

impl Similar {
    pub fn new(scope: Result<String, CacheError>, text: String) -> Similar {
        Similar { scope, text }
    }

    /// This call's scope qualified by the tenant of the scope it runs in (see `tenant.rs`), so that its
    /// vectors are only ever compared with its own tenant's.
    pub(crate) fn in_tenant_scope(self) -> Similar {
        let scope = self.scope.and_then(|scope| crate::tenant::scoped_owned(scope).map(|(scope, _)| scope));
        Similar { scope, text: self.text }
    }
}

/// The text of a `similar(arg)` argument: `&str`, `String`, `&String` and `Cow<str>` all give one.
#[diagnostic::on_unimplemented(
    message = "`similar(...)` matches a text argument by meaning: `{Self}` is not text",
    label = "this argument is matched by meaning",
    note = "use `&str`, `String`, `&String` or `Cow<str>`"
)]
pub trait SimilarText {
    fn similar_text(&self) -> String;
}

impl<T: AsRef<str> + ?Sized> SimilarText for T {
    fn similar_text(&self) -> String {
        self.as_ref().to_owned()
    }
}

/// A `similar(arg)` call, ready to search and to store: its scope, its text and the text's vector.
#[derive(Debug)]
pub(crate) struct Query {
    pub(crate) scope: Scope,
    pub(crate) text: String,
    pub(crate) vector: Vec<f32>,
    pub(crate) threshold: f32,
}

/// Embeds the call's text, or says why the call goes on by its exact key alone (`None`).
pub(crate) async fn prepare(site: &Site, cache: &PgCache, similar: Similar) -> Option<Query> {
    let function_threshold = site.similar?;
    let Ok(embedder) = cache.embedder() else {
        if !site.similar_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                namespace = site.namespace,
                function = site.function,
                "similar(...) needs an embedder (PgCacheBuilder::embedder): this function is cached by its exact key only"
            );
        }
        return None;
    };
    let scope = similar.scope.ok()?;
    let vector = match cache.embed(&similar.text).await {
        Ok(vector) => vector,
        Err(error) => {
            cache.memo().record_error(site.namespace, &error);
            tracing::warn!(namespace = site.namespace, function = site.function, %error, "cannot embed the text; exact key only");
            return None;
        }
    };
    let threshold = function_threshold.unwrap_or(cache.config_threshold());
    let scope = Scope::new(site.namespace, &scope, embedder.model_id());
    Some(Query { scope, text: similar.text, vector, threshold })
}
