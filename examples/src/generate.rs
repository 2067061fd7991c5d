//! Answer generation behind a dyn-compatible trait.
//!
//! * [`LocalGenerator`] (default): deterministic, extractive stand-in. It
//!   quotes the top document's sentence that best matches the question plus
//!   a neighbouring sentence, then adds sentences from the other documents
//!   that cover query terms not covered yet; each sentence cites its
//!   document id. It sleeps a deterministic 400-900 ms to mimic a model
//!   call, and labels its output ([`STAND_IN_PREFIX`], [`LOCAL_MODEL`],
//!   `generated_by_stand_in = true`).
//! * [`OpenAiCompatibleGenerator`]: `POST {LLM_BASE_URL}/chat/completions`
//!   with a bearer `LLM_API_KEY`, model `LLM_MODEL`, and a timeout.
//!
//! [`generator_from_env`] picks the real client when `LLM_BASE_URL` is set
//! and the stand-in otherwise. Both are used as `Arc<dyn AnswerGenerator>`.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::retrieval::Document;
use crate::text::{self, TermAnalyzer};
use futures_util::stream::BoxStream;

mod stream;
pub use stream::AnswerChunk;

/// A boxed, `Send` future borrowing for `'a` (what trait-object methods return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Prefix of every answer produced by [`LocalGenerator`].
pub const STAND_IN_PREFIX: &str = "[stand-in generator]";

/// Model name reported by [`LocalGenerator`].
pub const LOCAL_MODEL: &str = "local-extractive-stand-in";

/// Model used by [`OpenAiCompatibleGenerator`] when `LLM_MODEL` is unset.
pub const DEFAULT_LLM_MODEL: &str = "gpt-4o-mini";

/// Request timeout used when `LLM_TIMEOUT_SECS` is unset.
pub const DEFAULT_LLM_TIMEOUT: Duration = Duration::from_secs(30);

/// At most this many context documents are used to build an answer.
pub const MAX_CONTEXT_DOCUMENTS: usize = 5;

/// A generated answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The question as asked.
    pub question: String,
    /// The answer text (prefixed with [`STAND_IN_PREFIX`] for the stand-in).
    pub text: String,
    /// Model that produced the text.
    pub model: String,
    /// Ids of the documents the answer draws on, in order of first use.
    pub sources: Vec<String>,
    /// True when produced by the local stand-in rather than a language model.
    pub generated_by_stand_in: bool,
    /// How long generation took (simulated for the stand-in), in milliseconds.
    pub generation_ms: u64,
    /// The tokens generation used: as the endpoint reported them, or the stand-in's own estimate
    /// ([`TokenUsage::estimated`]); `None` when an endpoint reported none. Absent from answers cached before
    /// it existed.
    #[serde(default)]
    pub usage: Option<TokenUsage>,
}

/// Tokens one generation used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt tokens (`usage.prompt_tokens`).
    pub input_tokens: u64,
    /// Completion tokens (`usage.completion_tokens`).
    pub output_tokens: u64,
    /// True when counted by the local stand-in (about four characters a token), not by a model's tokenizer.
    pub estimated: bool,
}

impl TokenUsage {
    /// The stand-in's estimate: about four characters a token, at least one token for non-empty text.
    pub fn estimate(prompt: &str, completion: &str) -> TokenUsage {
        let tokens = |text: &str| (text.chars().count() as u64).div_ceil(4);
        TokenUsage { input_tokens: tokens(prompt), output_tokens: tokens(completion), estimated: true }
    }

    /// The `usage` object of a chat completion, or of the last chunk of a streamed one (sent when the request
    /// asks for it with `"stream_options": {"include_usage": true}`): `None` when `json` has none. A streamed
    /// response's other chunks carry `"usage": null`, so feed each chunk's JSON (the `data:` line of the
    /// server-sent event) and keep the last `Some`.
    pub fn from_response_json(json: &str) -> Option<TokenUsage> {
        let parsed: UsageEnvelope = serde_json::from_str(json).ok()?;
        parsed.usage.map(|u| TokenUsage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
            estimated: false,
        })
    }
}

#[derive(Debug, Deserialize)]
struct UsageEnvelope {
    #[serde(default)]
    usage: Option<ChatUsage>,
}

#[derive(Debug, Deserialize)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// Generation failures. `Result`-returning cached functions never store these.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The question was blank.
    #[error("question must not be empty")]
    EmptyQuestion,
    /// Bad configuration (URL, environment variable, client construction).
    #[error("invalid generator configuration: {0}")]
    Config(String),
    /// The request did not complete within the configured timeout.
    #[error("LLM request timed out after {0:?}")]
    Timeout(Duration),
    /// Connection or protocol failure.
    #[error("LLM request failed: {0}")]
    Transport(#[source] reqwest::Error),
    /// The endpoint answered with a non-success status.
    #[error("LLM endpoint returned HTTP {status}: {body}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// Start of the response body.
        body: String,
    },
    /// The response was not a usable chat completion.
    #[error("unusable LLM response: {0}")]
    InvalidResponse(String),
}

/// Something that turns a question plus retrieved documents into an [`Answer`].
///
/// Dyn-compatible: use it as `Arc<dyn AnswerGenerator>`.
pub trait AnswerGenerator: fmt::Debug + Send + Sync {
    /// Model name that will appear in [`Answer::model`] (useful in cache keys).
    fn model(&self) -> &str;

    /// True for the local stand-in.
    fn is_stand_in(&self) -> bool;

    /// Answers `question` from `context` (best document first; at most
    /// [`MAX_CONTEXT_DOCUMENTS`] are used).
    fn generate<'a>(
        &'a self,
        question: &'a str,
        context: &'a [Document],
    ) -> BoxFuture<'a, Result<Answer, GenerateError>>;

    /// The answer of [`generate`](Self::generate) as it is produced: text chunks, then one
    /// [`AnswerChunk::End`]; an error ends the stream. The stream owns what it needs (`'static`), so that a
    /// memoized stream can hold it.
    fn generate_stream(
        &self,
        question: &str,
        context: &[Document],
    ) -> BoxStream<'static, Result<AnswerChunk, GenerateError>>;
}

// ---------------------------------------------------------------------------
// Local, deterministic stand-in
// ---------------------------------------------------------------------------

/// Deterministic extractive stand-in for a language model. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalGenerator {
    min_latency: Duration,
    max_latency: Duration,
    max_sentences: usize,
}

impl Default for LocalGenerator {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalGenerator {
    /// Stand-in with a simulated latency of 400-900 ms and up to 3 sentences.
    pub fn new() -> Self {
        Self { min_latency: Duration::from_millis(400), max_latency: Duration::from_millis(900), max_sentences: 3 }
    }

    /// Sets the simulated latency range (inclusive; `max` below `min` is raised to `min`).
    #[must_use]
    pub fn with_latency_range(mut self, min: Duration, max: Duration) -> Self {
        self.min_latency = min;
        self.max_latency = max.max(min);
        self
    }

    /// Disables the simulated latency.
    #[must_use]
    pub fn without_latency(self) -> Self {
        self.with_latency_range(Duration::ZERO, Duration::ZERO)
    }

    /// Sets how many sentences an answer may contain (at least 1).
    #[must_use]
    pub fn with_max_sentences(mut self, max_sentences: usize) -> Self {
        self.max_sentences = max_sentences.max(1);
        self
    }

    /// The latency this generator simulates for `question`: a stable hash
    /// of the trimmed question mapped into the configured range.
    pub fn simulated_latency(&self, question: &str) -> Duration {
        let min = self.min_latency.as_millis() as u64;
        let span = (self.max_latency.as_millis() as u64).saturating_sub(min) + 1;
        Duration::from_millis(min + text::fnv1a64(question.trim().as_bytes()) % span)
    }

    /// Builds the answer without sleeping (the synchronous core of `generate`).
    pub fn compose(&self, question: &str, context: &[Document]) -> Result<Answer, GenerateError> {
        let question = question.trim();
        if question.is_empty() {
            return Err(GenerateError::EmptyQuestion);
        }
        let analyzer = TermAnalyzer::default();
        let query_terms = analyzer.term_set(question);
        let context = &context[..context.len().min(MAX_CONTEXT_DOCUMENTS)];

        // Lead with the top document: its sentence sharing the most terms with
        // the question (the first one on ties or when none does) plus a
        // neighbouring sentence for context.
        let mut picked: Vec<Pick<'_>> = Vec::new();
        if let Some(top) = context.first() {
            let sentences = text::split_sentences(&top.body);
            let best = (0..sentences.len())
                .max_by_key(|&pos| {
                    let overlap = overlap(&analyzer, sentences[pos], &query_terms);
                    (overlap, std::cmp::Reverse(pos))
                })
                .unwrap_or(0);
            // A two-sentence window holding `best`: it and the next sentence,
            // or the previous one when `best` is the last.
            let start = best.min(sentences.len().saturating_sub(2));
            for (pos, sentence) in sentences.iter().enumerate().skip(start).take(2) {
                picked.push(Pick { rank: 0, pos, sentence, id: &top.id });
            }
        }
        picked.truncate(self.max_sentences);

        // Fill the remaining slots from the other documents, greedily taking
        // the sentence that covers the most query terms not covered yet
        // (then the most terms overall, then the better-ranked document);
        // sentences sharing a single term with the question are too weak.
        let mut covered: BTreeSet<String> =
            picked.iter().flat_map(|p| analyzer.term_set(p.sentence)).filter(|t| query_terms.contains(t)).collect();
        let mut pool: Vec<(Pick<'_>, BTreeSet<String>)> = context
            .iter()
            .enumerate()
            .skip(1)
            .flat_map(|(rank, doc)| {
                text::split_sentences(&doc.body).into_iter().enumerate().map(move |(pos, sentence)| Pick {
                    rank,
                    pos,
                    sentence,
                    id: &doc.id,
                })
            })
            .map(|p| {
                let terms: BTreeSet<String> =
                    analyzer.term_set(p.sentence).intersection(&query_terms).cloned().collect();
                (p, terms)
            })
            .collect();
        while picked.len() < self.max_sentences {
            let best = pool
                .iter()
                .enumerate()
                .map(|(i, (p, terms))| {
                    let gain = terms.difference(&covered).count();
                    (gain, terms.len(), std::cmp::Reverse((p.rank, p.pos)), i)
                })
                .max();
            let Some((gain, shared, _, i)) = best else {
                break;
            };
            if gain == 0 || shared < MIN_SHARED_TERMS_FOR_ADDITION {
                break;
            }
            let (pick, terms) = pool.swap_remove(i);
            covered.extend(terms);
            picked.push(pick);
        }
        // Document order, then sentence order (the lead has rank 0).
        picked.sort_by_key(|p| (p.rank, p.pos));

        let (body, sources) = if picked.is_empty() {
            ("None of the retrieved documents answer this question.".to_string(), Vec::new())
        } else {
            let mut sources: Vec<String> = Vec::new();
            let mut parts = Vec::with_capacity(picked.len());
            for Pick { sentence, id, .. } in &picked {
                parts.push(format!("{sentence} [{id}]"));
                if !sources.iter().any(|s| s == id) {
                    sources.push((*id).to_string());
                }
            }
            (parts.join(" "), sources)
        };

        // What a model would have been sent: the question and the context passages.
        let prompt: String = std::iter::once(question).chain(context.iter().map(|d| d.body.as_str())).collect();
        let text = format!("{STAND_IN_PREFIX} {body}");
        let usage = Some(TokenUsage::estimate(&prompt, &text));
        Ok(Answer {
            question: question.to_string(),
            text,
            model: LOCAL_MODEL.to_string(),
            sources,
            generated_by_stand_in: true,
            generation_ms: self.simulated_latency(question).as_millis() as u64,
            usage,
        })
    }
}

/// Sentences from documents other than the top one must share at least this
/// many terms with the question to be added to an answer.
const MIN_SHARED_TERMS_FOR_ADDITION: usize = 2;

/// A sentence chosen for an extractive answer.
#[derive(Debug, Clone, Copy)]
struct Pick<'a> {
    rank: usize,
    pos: usize,
    sentence: &'a str,
    id: &'a str,
}

fn overlap(analyzer: &TermAnalyzer, sentence: &str, query_terms: &BTreeSet<String>) -> usize {
    analyzer.term_set(sentence).intersection(query_terms).count()
}

impl AnswerGenerator for LocalGenerator {
    fn model(&self) -> &str {
        LOCAL_MODEL
    }

    fn is_stand_in(&self) -> bool {
        true
    }

    fn generate<'a>(
        &'a self,
        question: &'a str,
        context: &'a [Document],
    ) -> BoxFuture<'a, Result<Answer, GenerateError>> {
        Box::pin(async move {
            let answer = self.compose(question, context)?;
            let latency = Duration::from_millis(answer.generation_ms);
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            Ok(answer)
        })
    }

    fn generate_stream(
        &self,
        question: &str,
        context: &[Document],
    ) -> BoxStream<'static, Result<AnswerChunk, GenerateError>> {
        self.stream(question, context)
    }
}

// ---------------------------------------------------------------------------
// OpenAI-compatible HTTP client
// ---------------------------------------------------------------------------

/// Settings for [`OpenAiCompatibleGenerator`].
#[derive(Clone, PartialEq)]
pub struct OpenAiConfig {
    /// Base URL up to (not including) `/chat/completions`, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer ...` when present.
    pub api_key: Option<String>,
    /// Model name sent in the request.
    pub model: String,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Sampling temperature (0 for reproducible answers).
    pub temperature: f32,
    /// Upper bound on generated tokens.
    pub max_tokens: u32,
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("temperature", &self.temperature)
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

impl OpenAiConfig {
    /// Defaults for everything but the base URL.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            model: DEFAULT_LLM_MODEL.to_string(),
            timeout: DEFAULT_LLM_TIMEOUT,
            temperature: 0.0,
            max_tokens: 512,
        }
    }

    /// Reads `LLM_BASE_URL`, `LLM_API_KEY`, `LLM_MODEL` and `LLM_TIMEOUT_SECS`.
    /// `Ok(None)` when `LLM_BASE_URL` is unset or blank.
    pub fn from_env() -> Result<Option<Self>, GenerateError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`OpenAiConfig::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, GenerateError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let Some(base_url) = get("LLM_BASE_URL") else {
            return Ok(None);
        };
        let mut config = Self::new(base_url);
        config.api_key = get("LLM_API_KEY");
        if let Some(model) = get("LLM_MODEL") {
            config.model = model;
        }
        if let Some(secs) = get("LLM_TIMEOUT_SECS") {
            let secs: f64 = secs
                .parse()
                .map_err(|_| GenerateError::Config(format!("LLM_TIMEOUT_SECS is not a number: {secs:?}")))?;
            if !(secs.is_finite() && secs > 0.0) {
                return Err(GenerateError::Config(format!("LLM_TIMEOUT_SECS must be positive, got {secs}")));
            }
            config.timeout = Duration::from_secs_f64(secs);
        }
        Ok(Some(config))
    }
}

/// Client for any `POST /chat/completions` endpoint shaped like OpenAI's.
#[derive(Debug, Clone)]
pub struct OpenAiCompatibleGenerator {
    config: OpenAiConfig,
    endpoint: reqwest::Url,
    client: reqwest::Client,
}

impl OpenAiCompatibleGenerator {
    /// Validates the configuration and builds the HTTP client (rustls, no
    /// OpenSSL). Loopback base URLs bypass any configured proxy.
    pub fn new(config: OpenAiConfig) -> Result<Self, GenerateError> {
        let endpoint = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
        let endpoint = reqwest::Url::parse(&endpoint)
            .map_err(|e| GenerateError::Config(format!("bad LLM_BASE_URL {:?}: {e}", config.base_url)))?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(GenerateError::Config(format!(
                "LLM_BASE_URL must be http or https, got {:?}",
                config.base_url
            )));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)));
        if endpoint.host_str().is_some_and(is_loopback_host) {
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(|e| GenerateError::Config(format!("cannot build HTTP client: {e}")))?;
        Ok(Self { config, endpoint, client })
    }

    /// The configuration in use.
    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// The full chat-completions URL.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    fn request_body(&self, question: &str, context: &[Document]) -> ChatRequest<'_> {
        let mut user = String::from("Context passages:\n");
        for doc in context {
            user.push_str(&format!("[{}] {}: {}\n", doc.id, doc.title, doc.body));
        }
        user.push_str(&format!("\nQuestion: {question}"));
        ChatRequest {
            model: &self.config.model,
            messages: vec![
                ChatMessage { role: "system", content: SYSTEM_PROMPT.to_string() },
                ChatMessage { role: "user", content: user },
            ],
            temperature: self.config.temperature,
            max_tokens: self.config.max_tokens,
        }
    }

    async fn call(&self, question: &str, context: &[Document]) -> Result<Answer, GenerateError> {
        let question = question.trim();
        if question.is_empty() {
            return Err(GenerateError::EmptyQuestion);
        }
        let context = &context[..context.len().min(MAX_CONTEXT_DOCUMENTS)];
        let started = Instant::now();

        let mut request = self.client.post(self.endpoint.clone()).json(&self.request_body(question, context));
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let timeout = self.config.timeout;
        let map_err = |e: reqwest::Error| {
            if e.is_timeout() {
                GenerateError::Timeout(timeout)
            } else {
                GenerateError::Transport(e)
            }
        };
        let response = request.send().await.map_err(map_err)?;
        let status = response.status();
        let body = response.text().await.map_err(map_err)?;
        if !status.is_success() {
            tracing::warn!(status = status.as_u16(), endpoint = %self.endpoint, "LLM endpoint returned an error");
            return Err(GenerateError::Status {
                status: status.as_u16(),
                body: text::truncate_chars(body.trim(), 500),
            });
        }

        let parsed: ChatResponse = serde_json::from_str(&body)
            .map_err(|e| GenerateError::InvalidResponse(format!("not a chat completion: {e}")))?;
        let content = parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| GenerateError::InvalidResponse("no message content in choices".into()))?;

        // Cite what the model cited; fall back to everything it was shown.
        let cited: Vec<String> =
            context.iter().filter(|d| content.contains(&format!("[{}]", d.id))).map(|d| d.id.clone()).collect();
        let sources = if cited.is_empty() { context.iter().map(|d| d.id.clone()).collect() } else { cited };

        let generation_ms = started.elapsed().as_millis() as u64;
        tracing::debug!(model = %self.config.model, generation_ms, sources = sources.len(), "LLM answer received");
        Ok(Answer {
            question: question.to_string(),
            text: content,
            model: parsed.model.filter(|m| !m.is_empty()).unwrap_or_else(|| self.config.model.clone()),
            sources,
            generated_by_stand_in: false,
            generation_ms,
            usage: TokenUsage::from_response_json(&body),
        })
    }
}

impl AnswerGenerator for OpenAiCompatibleGenerator {
    fn model(&self) -> &str {
        &self.config.model
    }

    fn is_stand_in(&self) -> bool {
        false
    }

    fn generate<'a>(
        &'a self,
        question: &'a str,
        context: &'a [Document],
    ) -> BoxFuture<'a, Result<Answer, GenerateError>> {
        Box::pin(self.call(question, context))
    }

    fn generate_stream(
        &self,
        question: &str,
        context: &[Document],
    ) -> BoxStream<'static, Result<AnswerChunk, GenerateError>> {
        self.stream(question, context)
    }
}

const SYSTEM_PROMPT: &str = "You answer questions using only the context passages provided. \
Cite the passages you rely on by their id in square brackets, for example [pg-002]. \
If the passages do not contain the answer, say that you cannot answer from the given context.";

#[derive(Debug, Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<ChatMessage>,
    temperature: f32,
    max_tokens: u32,
}

#[derive(Debug, Serialize)]
struct ChatMessage {
    role: &'static str,
    content: String,
}

#[derive(Debug, Deserialize)]
struct ChatResponse {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<ChatChoice>,
}

#[derive(Debug, Deserialize)]
struct ChatChoice {
    message: ChatChoiceMessage,
}

#[derive(Debug, Deserialize)]
struct ChatChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

// ---------------------------------------------------------------------------
// Selection
// ---------------------------------------------------------------------------

/// The real client when `LLM_BASE_URL` is set, the [`LocalGenerator`] otherwise.
pub fn generator_from_env() -> Result<Arc<dyn AnswerGenerator>, GenerateError> {
    generator_from_lookup(|name| std::env::var(name).ok())
}

/// Like [`generator_from_env`], reading variables through `lookup`.
pub fn generator_from_lookup(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Arc<dyn AnswerGenerator>, GenerateError> {
    match OpenAiConfig::from_lookup(lookup)? {
        Some(config) => Ok(Arc::new(OpenAiCompatibleGenerator::new(config)?)),
        None => Ok(Arc::new(LocalGenerator::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_comes_from_a_completion_or_the_last_chunk_of_a_stream() {
        let completion = r#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":812,"completion_tokens":64,"total_tokens":876}}"#;
        let expected = TokenUsage { input_tokens: 812, output_tokens: 64, estimated: false };
        assert_eq!(TokenUsage::from_response_json(completion), Some(expected));
        // A stream asked with "stream_options": {"include_usage": true}: chunks carry "usage": null, the last
        // one (with no choices) the totals.
        let chunks = [
            r#"{"object":"chat.completion.chunk","choices":[{"delta":{"content":"hi"}}],"usage":null}"#,
            r#"{"object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":812,"completion_tokens":64}}"#,
        ];
        let last = chunks.iter().rev().find_map(|chunk| TokenUsage::from_response_json(chunk));
        assert_eq!(last, Some(expected));
        assert_eq!(TokenUsage::from_response_json(r#"{"choices":[]}"#), None, "an endpoint that reports none");
    }

    #[test]
    fn the_stand_in_estimates_its_tokens_and_says_so() {
        let docs = crate::retrieval::RetrievalEngine::from_bundled_corpus();
        let found = docs.search("How does MVCC work?", 3).unwrap();
        let context = docs.documents_for(&found);
        let answer = LocalGenerator::new().without_latency().compose("How does MVCC work?", &context).unwrap();
        let usage = answer.usage.expect("the stand-in reports its tokens");
        assert!(usage.estimated);
        assert!(usage.input_tokens > usage.output_tokens && usage.output_tokens > 0, "{usage:?}");
        assert_eq!(usage.output_tokens, (answer.text.chars().count() as u64).div_ceil(4));
    }
    use crate::retrieval::RetrievalEngine;
    use std::collections::HashMap;
    use std::sync::OnceLock;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    fn engine() -> &'static RetrievalEngine {
        static ENGINE: OnceLock<RetrievalEngine> = OnceLock::new();
        ENGINE.get_or_init(RetrievalEngine::from_bundled_corpus)
    }

    pub(super) fn context_for(question: &str) -> Vec<Document> {
        engine().documents_for(&engine().search(question, 3).unwrap())
    }

    // -- local stand-in -----------------------------------------------------

    #[tokio::test(start_paused = true)]
    async fn local_answers_are_labelled_and_extractive() {
        let question = "How does VACUUM reclaim space from dead tuples?";
        let context = context_for(question);
        let generator: Arc<dyn AnswerGenerator> = Arc::new(LocalGenerator::new());
        let answer = generator.generate(question, &context).await.unwrap();

        assert!(answer.text.starts_with(STAND_IN_PREFIX), "{}", answer.text);
        assert_eq!(answer.model, LOCAL_MODEL);
        assert!(answer.generated_by_stand_in);
        assert!(generator.is_stand_in());
        assert_eq!(generator.model(), LOCAL_MODEL);
        assert_eq!(answer.question, question);
        assert!(answer.text.to_lowercase().contains("vacuum"));

        // Every cited source is a context document, and every quoted sentence
        // is copied verbatim from its cited document.
        assert!(!answer.sources.is_empty());
        let by_id: HashMap<&str, &Document> = context.iter().map(|d| (d.id.as_str(), d)).collect();
        for id in &answer.sources {
            assert!(by_id.contains_key(id.as_str()), "unknown source {id}");
        }
        let pieces: Vec<String> = context
            .iter()
            .flat_map(|d| text::split_sentences(&d.body).into_iter().map(move |s| format!("{s} [{}]", d.id)))
            .collect();
        let mut rest = answer.text.strip_prefix(STAND_IN_PREFIX).unwrap().trim_start();
        while !rest.is_empty() {
            let piece = pieces
                .iter()
                .find(|p| rest.starts_with(p.as_str()))
                .unwrap_or_else(|| panic!("not a cited context sentence: {rest:?}"));
            rest = rest[piece.len()..].trim_start();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn local_generator_is_deterministic_and_takes_its_simulated_time() {
        let question = "what is a cache stampede";
        let context = context_for(question);
        let generator = LocalGenerator::new();

        let start = tokio::time::Instant::now();
        let first = generator.generate(question, &context).await.unwrap();
        let elapsed = start.elapsed();
        let second = generator.generate(question, &context).await.unwrap();

        assert_eq!(first, second);
        assert_eq!(serde_json::to_string(&first).unwrap(), serde_json::to_string(&second).unwrap());
        let expected = generator.simulated_latency(question);
        assert_eq!(first.generation_ms, expected.as_millis() as u64);
        assert!(elapsed >= expected, "{elapsed:?} < {expected:?}");
        assert!((400..=900).contains(&first.generation_ms));
    }

    #[test]
    fn simulated_latency_is_stable_and_varies_by_question() {
        let generator = LocalGenerator::new();
        let questions = ["a", "b", "how do indexes work", "what is MVCC", "tokio select"];
        let latencies: Vec<Duration> = questions.iter().map(|q| generator.simulated_latency(q)).collect();
        for (q, l) in questions.iter().zip(&latencies) {
            assert_eq!(generator.simulated_latency(q), *l);
            assert!((400..=900).contains(&(l.as_millis() as u64)));
        }
        assert!(latencies.iter().collect::<BTreeSet<_>>().len() > 1);
        // Surrounding whitespace does not change the latency.
        assert_eq!(generator.simulated_latency(" a "), latencies[0]);
        let fixed = LocalGenerator::new().without_latency();
        assert_eq!(fixed.simulated_latency("anything"), Duration::ZERO);
    }

    #[tokio::test]
    async fn local_generator_handles_empty_inputs() {
        let generator = LocalGenerator::new().without_latency();
        let answer = generator.generate("what is MVCC", &[]).await.unwrap();
        assert!(answer.text.starts_with(STAND_IN_PREFIX));
        assert!(answer.sources.is_empty());

        let context = context_for("MVCC snapshots");
        assert!(matches!(generator.generate("   ", &context).await, Err(GenerateError::EmptyQuestion)));

        // No sentence shares a term: fall back to the top document's first sentence.
        let answer = generator.generate("zzzz", &context).await.unwrap();
        assert_eq!(answer.sources, vec![context[0].id.clone()]);
    }

    #[test]
    fn max_sentences_bounds_the_answer() {
        let question = "postgresql index types";
        let context = context_for(question);
        let one = LocalGenerator::new().with_max_sentences(1).compose(question, &context).unwrap();
        assert_eq!(one.text.matches(" [").count(), 1, "{}", one.text);
        assert_eq!(one.sources.len(), 1);
    }

    #[test]
    fn generate_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let generator: Arc<dyn AnswerGenerator> = Arc::new(LocalGenerator::new());
        let future = generator.generate("q", &[]);
        assert_send(&future);
    }

    // -- OpenAI-compatible client against a loopback server -------------------

    /// Serves exactly one HTTP/1.1 exchange on 127.0.0.1 and returns the raw
    /// request it received. With `status == None` it reads the request and
    /// then never answers (for timeout tests).
    pub(super) async fn one_shot_server(status: Option<&'static str>, body: String) -> (String, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed before sending a full request");
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw).to_string();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let content_length = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if raw.len() >= head_end + 4 + content_length {
                        break;
                    }
                }
            }
            let request = String::from_utf8_lossy(&raw).to_string();
            match status {
                Some(status) => {
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    socket.write_all(response.as_bytes()).await.unwrap();
                    socket.shutdown().await.unwrap();
                }
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
            request
        });
        (format!("http://{addr}/v1"), handle)
    }

    pub(super) fn client(base_url: &str, timeout: Duration) -> OpenAiCompatibleGenerator {
        let mut config = OpenAiConfig::new(base_url);
        config.api_key = Some("sk-test-123".into());
        config.model = "test-model".into();
        config.timeout = timeout;
        OpenAiCompatibleGenerator::new(config).unwrap()
    }

    #[tokio::test]
    async fn openai_client_posts_chat_completion_and_parses_answer() {
        let canned = serde_json::json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "test-model-2024",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": " VACUUM marks dead tuples as reusable [pg-002]. "},
                "finish_reason": "stop"
            }]
        });
        let (base, server) = one_shot_server(Some("200 OK"), canned.to_string()).await;
        let generator: Arc<dyn AnswerGenerator> = Arc::new(client(&base, Duration::from_secs(5)));
        assert!(!generator.is_stand_in());
        assert_eq!(generator.model(), "test-model");

        let question = "How does VACUUM reclaim space?";
        let context = context_for(question);
        assert!(context.iter().any(|d| d.id == "pg-002"));
        let answer = generator.generate(question, &context).await.unwrap();

        assert_eq!(answer.text, "VACUUM marks dead tuples as reusable [pg-002].");
        assert_eq!(answer.model, "test-model-2024");
        assert_eq!(answer.sources, vec!["pg-002".to_string()]);
        assert!(!answer.generated_by_stand_in);
        assert_eq!(answer.question, question);

        let request = server.await.unwrap();
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /v1/chat/completions HTTP/1.1"), "{head}");
        let head_lower = head.to_lowercase();
        assert!(head_lower.contains("authorization: bearer sk-test-123"), "{head}");
        assert!(head_lower.contains("content-type: application/json"), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][1]["role"], "user");
        let user = body["messages"][1]["content"].as_str().unwrap();
        assert!(user.contains(question) && user.contains("[pg-002]"), "{user}");
    }

    #[tokio::test]
    async fn openai_client_without_citations_cites_all_context() {
        let canned = r#"{"choices":[{"message":{"role":"assistant","content":"It depends."}}]}"#;
        let (base, server) = one_shot_server(Some("200 OK"), canned.into()).await;
        let generator = client(&base, Duration::from_secs(5));
        let context = context_for("connection pool size");
        let answer = generator.generate("pool size?", &context).await.unwrap();
        assert_eq!(answer.model, "test-model");
        let ids: Vec<String> = context.iter().map(|d| d.id.clone()).collect();
        assert_eq!(answer.sources, ids);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn openai_client_reports_http_errors() {
        let (base, server) = one_shot_server(Some("503 Service Unavailable"), r#"{"error":"overloaded"}"#.into()).await;
        let err = client(&base, Duration::from_secs(5)).generate("q", &[]).await.unwrap_err();
        match err {
            GenerateError::Status { status, body } => {
                assert_eq!(status, 503);
                assert!(body.contains("overloaded"));
            }
            other => panic!("unexpected {other:?}"),
        }
        server.await.unwrap();
    }

    #[tokio::test]
    async fn openai_client_rejects_malformed_responses() {
        for canned in ["not json", r#"{"choices": []}"#, r#"{"choices":[{"message":{"content":""}}]}"#] {
            let (base, server) = one_shot_server(Some("200 OK"), canned.into()).await;
            let err = client(&base, Duration::from_secs(5)).generate("q", &[]).await.unwrap_err();
            assert!(matches!(err, GenerateError::InvalidResponse(_)), "{canned}: {err:?}");
            server.await.unwrap();
        }
    }

    #[tokio::test]
    async fn openai_client_times_out() {
        let (base, server) = one_shot_server(None, String::new()).await;
        let timeout = Duration::from_millis(300);
        let err = client(&base, timeout).generate("q", &[]).await.unwrap_err();
        assert!(matches!(err, GenerateError::Timeout(t) if t == timeout), "{err:?}");
        server.abort();
    }

    #[tokio::test]
    async fn openai_client_reports_connection_failures() {
        // Bind then drop a listener so the port is (very likely) closed.
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let err = client(&format!("http://{addr}/v1"), Duration::from_secs(5)).generate("q", &[]).await.unwrap_err();
        assert!(matches!(err, GenerateError::Transport(_)), "{err:?}");
    }

    #[tokio::test]
    async fn openai_client_validates_question_before_calling() {
        // Nothing listens here; an empty question must fail before any I/O.
        let generator = client("http://127.0.0.1:9/v1", Duration::from_secs(5));
        assert!(matches!(generator.generate(" ", &[]).await, Err(GenerateError::EmptyQuestion)));
    }

    // -- configuration --------------------------------------------------------

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn configuration_comes_from_environment_variables() {
        assert_eq!(OpenAiConfig::from_lookup(lookup(&[])).unwrap(), None);
        assert_eq!(OpenAiConfig::from_lookup(lookup(&[("LLM_BASE_URL", "  ")])).unwrap(), None);

        let config =
            OpenAiConfig::from_lookup(lookup(&[("LLM_BASE_URL", "http://localhost:8080/v1")])).unwrap().unwrap();
        assert_eq!(config, OpenAiConfig::new("http://localhost:8080/v1"));
        assert_eq!(config.model, DEFAULT_LLM_MODEL);
        assert_eq!(config.timeout, DEFAULT_LLM_TIMEOUT);
        assert_eq!(config.api_key, None);

        let config = OpenAiConfig::from_lookup(lookup(&[
            ("LLM_BASE_URL", "https://llm.example.invalid/v1/"),
            ("LLM_API_KEY", "secret-key"),
            ("LLM_MODEL", "my-model"),
            ("LLM_TIMEOUT_SECS", "2.5"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(config.api_key.as_deref(), Some("secret-key"));
        assert_eq!(config.model, "my-model");
        assert_eq!(config.timeout, Duration::from_millis(2500));
        let debug = format!("{config:?}");
        assert!(!debug.contains("secret-key") && debug.contains("<redacted>"), "{debug}");

        let generator = OpenAiCompatibleGenerator::new(config).unwrap();
        assert_eq!(generator.endpoint(), "https://llm.example.invalid/v1/chat/completions");

        for bad in ["abc", "0", "-1"] {
            let err = OpenAiConfig::from_lookup(lookup(&[
                ("LLM_BASE_URL", "http://localhost/v1"),
                ("LLM_TIMEOUT_SECS", bad),
            ]))
            .unwrap_err();
            assert!(matches!(err, GenerateError::Config(_)), "{bad}: {err:?}");
        }
    }

    #[test]
    fn invalid_base_urls_are_rejected() {
        for bad in ["not a url", "ftp://host/v1"] {
            let err = OpenAiCompatibleGenerator::new(OpenAiConfig::new(bad)).unwrap_err();
            assert!(matches!(err, GenerateError::Config(_)), "{bad}: {err:?}");
        }
    }

    #[test]
    fn generator_selection_follows_llm_base_url() {
        let local = generator_from_lookup(lookup(&[])).unwrap();
        assert!(local.is_stand_in());
        assert_eq!(local.model(), LOCAL_MODEL);

        let remote = generator_from_lookup(lookup(&[
            ("LLM_BASE_URL", "http://127.0.0.1:1/v1"),
            ("LLM_MODEL", "qwen2.5-7b-instruct"),
        ]))
        .unwrap();
        assert!(!remote.is_stand_in());
        assert_eq!(remote.model(), "qwen2.5-7b-instruct");
    }

    #[test]
    fn loopback_detection() {
        for host in ["localhost", "LOCALHOST", "127.0.0.1", "127.8.9.10", "[::1]", "::1"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["example.invalid", "10.0.0.1", "[2001:db8::1]"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
