//! [`OpenAiEmbedder`]: embeddings from any HTTP endpoint shaped like OpenAI's `POST /embeddings`
//! (OpenAI itself, Azure, vLLM, llama.cpp's server, Ollama, text-embeddings-inference, LiteLLM), for users
//! who already run an embedding model as a service.
//!
//! The endpoint is outside this process and may answer anything, so every answer is checked against the
//! [`Embedder`] contract (count, order, length, finite numbers) and normalized before it is returned.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{check_vectors, EmbedFuture, Embedder};
use crate::CacheError;

/// Model requested when `EMBEDDINGS_MODEL` is unset.
pub const DEFAULT_EMBEDDINGS_MODEL: &str = "text-embedding-3-small";

/// Request timeout when `EMBEDDINGS_TIMEOUT_SECS` is unset.
pub const DEFAULT_EMBEDDINGS_TIMEOUT: Duration = Duration::from_secs(10);

/// Texts sent in one request at most; longer batches are split (OpenAI accepts 2,048).
const MAX_INPUTS_PER_REQUEST: usize = 256;

/// Settings of an [`OpenAiEmbedder`].
#[derive(Clone, PartialEq, Eq)]
pub struct OpenAiEmbedderConfig {
    /// Base URL up to, not including, `/embeddings`, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer ...` when present.
    pub api_key: Option<String>,
    /// The `model` of the request.
    pub model: String,
    /// The length of the vectors the endpoint returns; `None` to learn it with
    /// [`OpenAiEmbedder::connect`]. It is checked against every answer, not sent.
    pub dimensions: Option<usize>,
    /// Timeout of one whole request.
    pub timeout: Duration,
    /// The [`Embedder::model_id`] to report, when the default (model, dimensions and endpoint) does not
    /// fit: processes that reach the same model through different URLs must report the same id to share
    /// entries.
    pub model_id: Option<String>,
}

impl fmt::Debug for OpenAiEmbedderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiEmbedderConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("dimensions", &self.dimensions)
            .field("timeout", &self.timeout)
            .field("model_id", &self.model_id)
            .finish()
    }
}

impl OpenAiEmbedderConfig {
    /// The defaults for everything but the base URL.
    pub fn new(base_url: impl Into<String>) -> OpenAiEmbedderConfig {
        OpenAiEmbedderConfig {
            base_url: base_url.into(),
            api_key: None,
            model: DEFAULT_EMBEDDINGS_MODEL.to_owned(),
            dimensions: None,
            timeout: DEFAULT_EMBEDDINGS_TIMEOUT,
            model_id: None,
        }
    }

    /// Reads `EMBEDDINGS_BASE_URL`, `EMBEDDINGS_API_KEY`, `EMBEDDINGS_MODEL`, `EMBEDDINGS_DIMENSIONS`,
    /// `EMBEDDINGS_TIMEOUT_SECS` and `EMBEDDINGS_MODEL_ID`; `Ok(None)` when `EMBEDDINGS_BASE_URL` is unset or
    /// blank, [`CacheError::Config`] when a number does not parse.
    pub fn from_env() -> Result<Option<OpenAiEmbedderConfig>, CacheError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`OpenAiEmbedderConfig::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<OpenAiEmbedderConfig>, CacheError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let Some(base_url) = get("EMBEDDINGS_BASE_URL") else {
            return Ok(None);
        };
        let mut config = OpenAiEmbedderConfig::new(base_url);
        config.api_key = get("EMBEDDINGS_API_KEY");
        config.model = get("EMBEDDINGS_MODEL").unwrap_or(config.model);
        config.model_id = get("EMBEDDINGS_MODEL_ID");
        if let Some(dims) = get("EMBEDDINGS_DIMENSIONS") {
            match dims.parse::<usize>() {
                Ok(n) if n > 0 => config.dimensions = Some(n),
                _ => {
                    return Err(CacheError::Config(format!(
                        "EMBEDDINGS_DIMENSIONS must be a positive integer, not {dims:?}"
                    )))
                }
            }
        }
        if let Some(secs) = get("EMBEDDINGS_TIMEOUT_SECS") {
            match secs.parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => config.timeout = Duration::from_secs_f64(s),
                _ => {
                    return Err(CacheError::Config(format!(
                        "EMBEDDINGS_TIMEOUT_SECS must be a number of seconds in (0, 3600], not {secs:?}"
                    )))
                }
            }
        }
        Ok(Some(config))
    }
}

/// An [`Embedder`] calling `POST {base_url}/embeddings` with `{"model": ..., "input": [...]}`.
///
/// Every answer is checked: one vector per text (placed by the answer's `index`), each of the configured
/// length and finite, then normalized. A request that takes longer than the timeout is
/// [`CacheError::Timeout`] (operation `"embed"`); a refused connection, an HTTP error status or a malformed
/// answer is [`CacheError::Embedding`] with the endpoint's status and the start of its body.
#[derive(Debug, Clone)]
pub struct OpenAiEmbedder {
    config: OpenAiEmbedderConfig,
    endpoint: reqwest::Url,
    client: reqwest::Client,
    dimensions: usize,
    model_id: String,
}

impl OpenAiEmbedder {
    /// Builds the client (rustls; loopback URLs bypass any proxy). The configuration must give
    /// `dimensions`; [`OpenAiEmbedder::connect`] asks the endpoint instead.
    pub fn new(config: OpenAiEmbedderConfig) -> Result<OpenAiEmbedder, CacheError> {
        let Some(dimensions) = config.dimensions else {
            return Err(CacheError::Config(
                "the embeddings endpoint's vector length is unknown: set EMBEDDINGS_DIMENSIONS, or use \
                 OpenAiEmbedder::connect, which asks the endpoint"
                    .into(),
            ));
        };
        let mut embedder = Self::unchecked(config)?;
        embedder.set_dimensions(dimensions);
        Ok(embedder)
    }

    /// Like [`OpenAiEmbedder::new`], but when the configuration does not give `dimensions`, embeds one
    /// short text to learn them (the endpoint must then be reachable).
    pub async fn connect(config: OpenAiEmbedderConfig) -> Result<OpenAiEmbedder, CacheError> {
        if config.dimensions.is_some() {
            return Self::new(config);
        }
        let mut embedder = Self::unchecked(config)?;
        let probe = embedder.request(&["dimensions"]).await?;
        let dimensions = probe.first().map_or(0, Vec::len);
        if dimensions == 0 {
            return Err(CacheError::Embedding { reason: format!("{} returned an empty vector", embedder.endpoint) });
        }
        embedder.set_dimensions(dimensions);
        Ok(embedder)
    }

    fn unchecked(config: OpenAiEmbedderConfig) -> Result<OpenAiEmbedder, CacheError> {
        let bad = |why: String| CacheError::Config(format!("EMBEDDINGS_BASE_URL {:?}: {why}", config.base_url));
        let endpoint = reqwest::Url::parse(&format!("{}/embeddings", config.base_url.trim_end_matches('/')))
            .map_err(|e| bad(e.to_string()))?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
            return Err(bad("not an http or https URL".into()));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)));
        if endpoint.host_str().is_some_and(is_loopback) {
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(|e| CacheError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(OpenAiEmbedder { config, endpoint, client, dimensions: 0, model_id: String::new() })
    }

    fn set_dimensions(&mut self, dimensions: usize) {
        self.dimensions = dimensions;
        self.model_id = self.config.model_id.clone().unwrap_or_else(|| {
            // Host and path only: never the user name, password or query of the URL.
            let port = self.endpoint.port().map(|p| format!(":{p}")).unwrap_or_default();
            let host = self.endpoint.host_str().unwrap_or_default();
            let path = self.endpoint.path().trim_end_matches("/embeddings");
            format!("{}/{dimensions}@{host}{port}{path}", self.config.model)
        });
    }

    /// The configuration in use.
    pub fn config(&self) -> &OpenAiEmbedderConfig {
        &self.config
    }

    /// The full URL requests go to.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// One request for `texts`, the vectors checked against the number of texts only (their length is
    /// checked by the caller, which knows it).
    async fn request(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, CacheError> {
        let fail = |reason: String| CacheError::Embedding { reason: format!("{}: {reason}", self.endpoint) };
        let timeout = self.config.timeout;
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                CacheError::Timeout { operation: "embed", after: timeout }
            } else {
                fail(format!("request failed: {e}"))
            }
        };
        let mut request =
            self.client.post(self.endpoint.clone()).json(&Request { model: &self.config.model, input: texts });
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let body = response.text().await.map_err(transport)?;
        if !status.is_success() {
            let start: String = body.trim().chars().take(300).collect();
            return Err(fail(format!("HTTP {}: {start}", status.as_u16())));
        }
        let parsed: Response =
            serde_json::from_str(&body).map_err(|e| fail(format!("not an embeddings response: {e}")))?;
        place_by_index(parsed.data, texts.len()).map_err(fail)
    }
}

/// Puts each returned vector at its `index` (answers may come in any order), refusing gaps and repeats.
fn place_by_index(data: Vec<Item>, texts: usize) -> Result<Vec<Vec<f32>>, String> {
    if data.len() != texts {
        return Err(format!("{} vectors for {texts} texts", data.len()));
    }
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; texts];
    for (position, item) in data.into_iter().enumerate() {
        let index = item.index.unwrap_or(position);
        match slots.get_mut(index) {
            Some(slot @ None) => *slot = Some(item.embedding),
            _ => return Err(format!("index {index} is out of range or repeated")),
        }
    }
    Ok(slots.into_iter().flatten().collect())
}

impl Embedder for OpenAiEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
        Box::pin(async move {
            let mut vectors = Vec::with_capacity(texts.len());
            for chunk in texts.chunks(MAX_INPUTS_PER_REQUEST) {
                vectors.extend(self.request(chunk).await?);
            }
            check_vectors(vectors, texts.len(), self.dimensions)
        })
    }
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: &'a [&'a str],
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    embedding: Vec<f32>,
    #[serde(default)]
    index: Option<usize>,
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
