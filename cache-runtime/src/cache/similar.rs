//! Semantic entries: values found by the meaning of a text, not only by its exact key (issue 24).
//!
//! A semantic entry is an ordinary entry (its key derives from the namespace, the scope and the exact text,
//! so the exact text is an ordinary hit) plus a row of `cache_semantic` beside it: the text, its vector, and
//! the hash of its scope. The scope is everything that must match exactly (for a memoized function: every
//! argument but the one matched by meaning) and the embedder's model id, so vectors of two models, or of two
//! scopes, are never compared. The row goes with its entry (a cascading foreign key), so every invalidation
//! of the entry removes it too.
//!
//! A lookup embeds the asked text, catches the scope's in-process vectors up with the database
//! (`tier/vectors.rs`), scores every vector of the scope, and reads the best candidate's entry by its key,
//! which is where expiry and invalidation are enforced. The lexical guard (`semantic::guard`) must accept
//! the pair first: a refusal is a miss, and the next candidate is not tried (it is less alike still).

use super::PgCache;
use crate::error::{CacheError, Result};
use crate::key::validate_namespace;
use crate::semantic::{guard, Embedder};
use crate::server::semantic::SemanticWrite;
use crate::tier::vectors::{self, Candidate, ScopeVectors};
use crate::ttl::Ttl;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// How many candidates a lookup reads at most when the best ones turn out to be gone (expired, invalidated).
const CANDIDATES: usize = 4;

/// What [`PgCache::get_similar`] found: the value of the stored text that matched, the cosine similarity
/// of the two texts (1.0 for the exact text), and the stored text itself.
#[derive(Debug, Clone, PartialEq)]
pub struct SimilarHit<T> {
    /// The cached value.
    pub value: T,
    /// The cosine similarity of the asked and the stored text's vectors, at least the threshold.
    pub score: f32,
    /// The stored text that matched (the asked text itself on an exact hit).
    pub text: String,
}

/// Which vectors a text is compared with: one namespace, one exact scope, one model.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub(crate) hash: i64,
    pub(crate) model_id: Arc<str>,
}

impl Scope {
    /// The scope of `namespace` and `scope` (the exact part) for the model `model_id`.
    pub(crate) fn new(namespace: &str, scope: &str, model_id: &str) -> Scope {
        let digest = hashed(&["pg_cached semantic scope v1", namespace, scope, model_id]);
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Scope { hash: i64::from_le_bytes(first), model_id: Arc::from(model_id) }
    }
}

/// SHA-256 of `parts`, each prefixed with its length (so that no two lists of parts hash alike).
fn hashed(parts: &[&str]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// The exact key of `text` in `scope` of `namespace`, as [`PgCache::set_similar`] stores it:
/// `<namespace>:similar:<64 hex digits>`.
pub(crate) fn similar_key(namespace: &str, scope: &str, text: &str) -> String {
    let digest = hashed(&["pg_cached similar key v1", scope, text]);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{namespace}:similar:{hex}")
}

/// The key of `text` in `scope` of `namespace`, the tenant, and the scope, as the tenant scope this task runs
/// in has them (see `tenant.rs`): inside a tenant's scope both the key and the scope are qualified by the
/// tenant, so that its vectors are never compared with another tenant's.
fn tenant_scoped(namespace: &str, scope: &str, text: &str) -> Result<(String, Option<Arc<str>>, String)> {
    let (key, tenant) = crate::tenant::scoped_key(&similar_key(namespace, scope, text))?;
    let scope = match &tenant {
        Some(tenant) => crate::tenant::qualify(tenant, scope),
        None => scope.to_owned(),
    };
    Ok((key, tenant, scope))
}

impl PgCache {
    /// Stores `value` for `text` in `scope` of `namespace`, so that [`get_similar`](Self::get_similar) of
    /// the same text or of one that means the same (in the same namespace and scope) finds it. `scope` is
    /// matched exactly: what must be equal for the value to apply (a model name, a user, a `top_k`), or `""`.
    /// `ttl`: `None` for the default. The entry is an ordinary entry otherwise: deleting it, purging its
    /// namespace or its expiry removes the text and its vector too.
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_runtime::PgCache) -> Result<(), cache_runtime::CacheError> {
    /// cache.set_similar("answer", "gpt-4o", "How do I reset my password?", &"Settings → Security", None).await?;
    /// let hit = cache.get_similar::<String>("answer", "gpt-4o", "how can I change my password").await?;
    /// if let Some(hit) = hit {
    ///     println!("{} (matched {:?} at {:.2})", hit.value, hit.text, hit.score);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`CacheError::Config`] when the cache has no [`embedder`](crate::PgCacheBuilder::embedder);
    /// [`CacheError::InvalidNamespace`] for a bad namespace; [`CacheError::Embedding`] when the text cannot
    /// be embedded (nothing is written then); otherwise those of [`set`](Self::set). When the entry was
    /// written but its vector could not be, the error is returned and the entry answers its exact text only.
    pub async fn set_similar<T: Serialize + ?Sized>(
        &self,
        namespace: &str,
        scope: &str,
        text: &str,
        value: &T,
        ttl: Option<Ttl>,
    ) -> Result<()> {
        validate_namespace(namespace)?;
        self.refuse_if_sealed(namespace)?;
        let embedder = self.embedder()?;
        let (key, tenant, scope) = tenant_scoped(namespace, scope, text)?;
        let vector = self.embed(text).await?;
        self.set_scoped(&key, tenant, value, ttl.unwrap_or_default(), &[] as &[&str]).await?;
        let scope = Scope::new(namespace, &scope, embedder.model_id());
        self.store_vector(&key, &scope, text, &vector).await.map(drop)
    }

    /// The value stored by [`set_similar`](Self::set_similar) for `text`, or for the stored text of the same
    /// namespace and scope nearest to it in meaning, if that scores at least the cache's
    /// [`similarity_threshold`](crate::PgCacheBuilder::similarity_threshold) and the lexical guard
    /// ([`semantic::guard`](crate::semantic::guard)) accepts the pair. `None` otherwise, and when the value
    /// does not deserialize into `T`.
    ///
    /// # Errors
    /// [`CacheError::Config`] when the cache has no [`embedder`](crate::PgCacheBuilder::embedder);
    /// [`CacheError::InvalidNamespace`]; [`CacheError::Embedding`] when the text cannot be embedded;
    /// [`CacheError::Timeout`] or [`CacheError::Database`] when the database cannot answer.
    pub async fn get_similar<T: DeserializeOwned>(
        &self,
        namespace: &str,
        scope: &str,
        text: &str,
    ) -> Result<Option<SimilarHit<T>>> {
        validate_namespace(namespace)?;
        let embedder = self.embedder()?;
        let (key, _, scope) = tenant_scoped(namespace, scope, text)?;
        if let Some(value) = self.get_scoped::<T>(&key).await? {
            return Ok(Some(SimilarHit { value, score: 1.0, text: text.to_owned() }));
        }
        let vector = self.embed(text).await?;
        let scope = Scope::new(namespace, &scope, embedder.model_id());
        let threshold = self.config().similarity_threshold;
        let found =
            self.read_nearest(&scope, text, &vector, threshold, |key| async move { self.get_scoped::<T>(&key).await });
        Ok(found.await?.map(|(value, hit)| SimilarHit { value, score: hit.score, text: hit.text.to_string() }))
    }

    /// The cache's [`similarity_threshold`](crate::PgCacheBuilder::similarity_threshold).
    pub(crate) fn config_threshold(&self) -> f32 {
        self.config().similarity_threshold
    }

    /// The embedder, or the error that says there is none.
    pub(crate) fn embedder(&self) -> Result<&Arc<dyn Embedder>> {
        self.config().embedder.as_ref().ok_or_else(|| {
            CacheError::Config("no embedder configured: semantic entries need PgCacheBuilder::embedder".into())
        })
    }

    /// The unit vector of `text`.
    pub(crate) async fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let embedder = self.embedder()?;
        let vectors = embedder.embed(&[text]).await?;
        vectors
            .into_iter()
            .next()
            .ok_or_else(|| CacheError::Embedding { reason: "the embedder returned no vector".into() })
    }

    /// Stores the text and vector of the entry `key` beside it, and in this process's vectors of the scope
    /// (so that its next lookup here finds it without reading it back). `false`: the entry is gone.
    pub(crate) async fn store_vector(&self, key: &str, scope: &Scope, text: &str, vector: &[f32]) -> Result<bool> {
        self.refuse_if_sealed(crate::key::namespace_of(key))?;
        let write = SemanticWrite {
            key: key.to_owned(),
            scope_hash: scope.hash,
            model_id: scope.model_id.to_string(),
            text: text.to_owned(),
            embedding: vectors::encode(vector),
        };
        let written = self.server_for(key).write_semantic(write).await?;
        if written {
            if let Some(held) = self.inner.vectors.held(scope.hash) {
                held.upsert(key, text, vector);
            }
        }
        Ok(written)
    }

    /// Finds the stored text of `scope` nearest to `asked` (whose vector is `vector`) at or above `threshold`
    /// and reads its entry with `read`; candidates whose entry is gone are dropped and the next is tried. The
    /// guard is asked first: a refusal ends the search (a miss).
    pub(crate) async fn read_nearest<V, F, Fut>(
        &self,
        scope: &Scope,
        asked: &str,
        vector: &[f32],
        threshold: f32,
        mut read: F,
    ) -> Result<Option<(V, Candidate)>>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<Option<V>>>,
    {
        let vectors = self.inner.vectors.scope(scope.hash, self.shards().len());
        self.catch_up(scope, &vectors).await?;
        for candidate in vectors.nearest(vector, threshold, CANDIDATES) {
            if let Err(refusal) = guard::check(asked, &candidate.text) {
                tracing::debug!(asked, stored = &*candidate.text, score = candidate.score, %refusal, "semantic match refused");
                return Ok(None);
            }
            match read(candidate.key.to_string()).await? {
                Some(value) => return Ok(Some((value, candidate))),
                None => vectors.remove(&candidate.key),
            }
        }
        Ok(None)
    }

    /// Reads the rows of the scope written since this process last looked, on every shard. Callers of one
    /// scope take turns; one that asked before the last catch-up began has nothing left to read.
    async fn catch_up(&self, scope: &Scope, vectors: &ScopeVectors) -> Result<()> {
        let asked = Instant::now();
        let mut catchup = vectors.catchup.lock().await;
        if catchup.began.is_some_and(|began| began >= asked) {
            return Ok(());
        }
        let began = Instant::now();
        for (shard, node) in self.shards().all().iter().enumerate() {
            let since = node.primary().semantic_since(scope.hash, &scope.model_id, &catchup.since[shard]).await?;
            for row in &since.rows {
                vectors.upsert_bytes(&row.key, &row.text, &row.embedding);
            }
            catchup.since[shard] = since.next;
        }
        catchup.began = Some(began);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_differ_by_namespace_scope_and_model() {
        let base = Scope::new("answer", "gpt|5", "minilm@1").hash;
        assert_eq!(base, Scope::new("answer", "gpt|5", "minilm@1").hash);
        assert_ne!(base, Scope::new("answer", "gpt|6", "minilm@1").hash);
        assert_ne!(base, Scope::new("answer", "gpt|5", "minilm@2").hash);
        assert_ne!(base, Scope::new("answers", "gpt|5", "minilm@1").hash);
        // Lengths are part of the hash: moving a character from one part to the next changes it.
        assert_ne!(Scope::new("ab", "c", "m").hash, Scope::new("a", "bc", "m").hash);
    }

    #[test]
    fn similar_keys_are_valid_keys_of_their_namespace() {
        let key = similar_key("answer", "scope", &"x".repeat(10_000));
        crate::key::check_key(&key).unwrap();
        assert!(key.starts_with("answer:similar:"));
        assert_ne!(key, similar_key("answer", "scope2", &"x".repeat(10_000)));
        assert_ne!(similar_key("answer", "a", "bc"), similar_key("answer", "ab", "c"));
    }
}
