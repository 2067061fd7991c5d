//! [`embedder_from_env`]: the embedder a deployment configured, found the way the rest of the crate finds
//! its settings (environment variables), and never a reason to fail: without a model, semantic caching is
//! off and the cache works by exact keys, as it always has.

use std::path::PathBuf;
use std::sync::Arc;

use super::Embedder;

/// The variable naming the directory of the local model (what `scripts/fetch-model` prints).
pub const MODEL_DIR_ENV: &str = "PG_CACHED_MODEL_DIR";

/// Where the local model is looked for: `$PG_CACHED_MODEL_DIR` when set, else
/// `target/models/all-MiniLM-L6-v2` under the current directory (where `scripts/fetch-model` puts it when
/// run from a checkout of this repository).
pub fn default_model_dir() -> PathBuf {
    match std::env::var_os(MODEL_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("target/models/all-MiniLM-L6-v2"),
    }
}

/// The embedder the environment asks for, or `None` (with one warning saying why) when there is none:
///
/// 1. `EMBEDDINGS_BASE_URL` set: an [`OpenAiEmbedder`](super::OpenAiEmbedder) for that endpoint (with
///    `EMBEDDINGS_API_KEY`, `EMBEDDINGS_MODEL`, `EMBEDDINGS_DIMENSIONS`, `EMBEDDINGS_TIMEOUT_SECS`,
///    `EMBEDDINGS_MODEL_ID`; see [`OpenAiEmbedderConfig`](super::OpenAiEmbedderConfig)). When
///    `EMBEDDINGS_DIMENSIONS` is unset the endpoint is asked once, so it must answer now.
/// 2. Otherwise the local [`MiniLm`](super::MiniLm) in [`default_model_dir`], loaded off the async
///    runtime's threads.
/// 3. Otherwise `None`.
///
/// A configuration that is set but unusable (a bad URL, an endpoint that does not answer, a model
/// directory that does not load) also gives `None` with a warning: semantic caching is an optimization,
/// and a service must start without it. Call the constructors themselves to get the error instead.
pub async fn embedder_from_env() -> Option<Arc<dyn Embedder>> {
    #[cfg(feature = "openai")]
    match super::OpenAiEmbedderConfig::from_env() {
        Ok(Some(config)) => {
            return match super::OpenAiEmbedder::connect(config).await {
                Ok(embedder) => Some(Arc::new(embedder)),
                Err(error) => {
                    tracing::warn!(%error, "semantic caching is off: the embeddings endpoint is not usable");
                    None
                }
            };
        }
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(%error, "semantic caching is off: EMBEDDINGS_* is misconfigured");
            return None;
        }
    }
    #[cfg(not(feature = "openai"))]
    if std::env::var_os("EMBEDDINGS_BASE_URL").is_some_and(|v| !v.is_empty()) {
        tracing::warn!("EMBEDDINGS_BASE_URL is ignored: cache-runtime was built without its `openai` feature");
    }
    local_model().await
}

#[cfg(feature = "minilm")]
async fn local_model() -> Option<Arc<dyn Embedder>> {
    let dir = default_model_dir();
    if !dir.join("model.safetensors").exists() {
        tracing::warn!(
            dir = %dir.display(),
            "semantic caching is off: no embedding model (run scripts/fetch-model, set {MODEL_DIR_ENV}, or set EMBEDDINGS_BASE_URL)"
        );
        return None;
    }
    let load = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || super::MiniLm::from_dir(&dir))
    };
    match load.await {
        Ok(Ok(model)) => Some(Arc::new(model)),
        Ok(Err(error)) => {
            tracing::warn!(%error, dir = %dir.display(), "semantic caching is off: the embedding model does not load");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "semantic caching is off: loading the embedding model panicked");
            None
        }
    }
}

#[cfg(not(feature = "minilm"))]
async fn local_model() -> Option<Arc<dyn Embedder>> {
    tracing::warn!(
        "semantic caching is off: cache-runtime was built without its `minilm` feature and EMBEDDINGS_BASE_URL is unset"
    );
    None
}
