//! The RAG pipeline memoized with `#[pg_cached]`: a [`Retriever`] whose searches are cached in the
//! `retrieval` namespace, and an [`Orchestrator`] whose answers are cached in the `answer` namespace.
//!
//! ```text
//! Orchestrator::process_query(query)            namespace "answer",    ttl 2h, key (query, model)
//!   -> Retriever::retrieve(query, 5)             namespace "retrieval", ttl 30m, key (query, max_results)
//!        -> RetrievalEngine::search_with_latency (BM25 + vector, simulated index latency)
//!   -> AnswerGenerator::generate(query, documents)  (local stand-in, or an OpenAI-compatible endpoint)
//! ```
//!
//! Both take their cache explicitly (`cache = self.cache`), so two pipelines over two [`PgCache`]s (a
//! process before and after a restart, or a test's own database) never share in-process state.
//!
//! Each retrieval tags its entry with the documents it returned (`doc:<id>`), and the answer built on it
//! inherits those tags: [`PgCache::invalidate_tag`] or a trigger on the `documents` table (see
//! [`crate::documents`]) removes exactly the entries that cited a document.
//!
//! [`Orchestrator::stream_answer`] is the streamed form: `#[pg_cached(stream)]` in the `answer_stream`
//! namespace hands the generator's chunks to the caller as they come and records them; a later call replays
//! them from PostgreSQL.
//!
//! Only `Ok` results are stored: a failed search or a failed generation is returned to the caller and runs
//! again on the next call. [`CounterSnapshot`] and [`Lookup`] tell, from the cache's own counters, whether a
//! call was served from the cache or computed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::prices::PriceTable;
use cache_runtime::{pg_cached, CacheError, PgCache, ProcessCounts, Usage};
use sqlx::PgPool;

use crate::documents::{self, document_tag};
use crate::generate::{Answer, AnswerChunk, AnswerGenerator, GenerateError, MAX_CONTEXT_DOCUMENTS};
use crate::retrieval::{RetrievalEngine, RetrievalError, RetrievalResult};
use futures_util::stream::{self, BoxStream, StreamExt};

/// The namespace of [`Retriever::retrieve`]'s entries.
pub const RETRIEVAL_NAMESPACE: &str = "retrieval";

/// The namespace of [`Orchestrator::process_query`]'s entries.
pub const ANSWER_NAMESPACE: &str = "answer";

/// The namespace of [`Orchestrator::stream_answer`]'s entries.
pub const ANSWER_STREAM_NAMESPACE: &str = "answer_stream";

/// How many documents the orchestrator retrieves and hands to the generator.
pub const CONTEXT_DOCUMENTS: usize = MAX_CONTEXT_DOCUMENTS;

/// Hybrid search over a [`RetrievalEngine`], memoized in PostgreSQL.
///
/// The key is the query and `max_results`; the engine is not part of it (`self` never is). A retriever
/// over another corpus must use another database, or bump the attribute's `version`.
#[derive(Debug, Clone)]
pub struct Retriever {
    engine: Arc<RetrievalEngine>,
    cache: PgCache,
}

impl Retriever {
    /// A retriever searching `engine` and caching in `cache`.
    pub fn new(engine: Arc<RetrievalEngine>, cache: PgCache) -> Self {
        Self { engine, cache }
    }

    /// The engine searched on a miss.
    pub fn engine(&self) -> &Arc<RetrievalEngine> {
        &self.engine
    }

    /// The cache the results are stored in.
    pub fn cache(&self) -> &PgCache {
        &self.cache
    }

    /// The top `max_results` documents for `query`, and how many matched (`total_found`).
    ///
    /// A miss runs [`RetrievalEngine::search_with_latency`] (the engine's simulated index latency, then the
    /// search) and stores the result for 30 minutes; the stored JSONB is
    /// `{"results": [{"id", "title", "snippet", "score", "bm25", "vector"}, ...], "total_found": n}`.
    /// Errors (an empty query, `max_results == 0`) are returned and not stored. The entry is tagged with
    /// each document it returned, `doc:<id>`.
    #[pg_cached(namespace = "retrieval", ttl = "30m", cache = self.cache)]
    pub async fn retrieve(&self, query: &str, max_results: usize) -> Result<RetrievalResult, RetrievalError> {
        let result = self.engine.search_with_latency(query, max_results).await?;
        cache_runtime::tags(result.results.iter().map(|hit| document_tag(&hit.id)));
        Ok(result)
    }
}

/// Why [`Orchestrator::process_query`] failed. Never stored in the cache.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The search failed (for instance an empty query).
    #[error("retrieval failed: {0}")]
    Retrieval(#[from] RetrievalError),
    /// The generator failed (for instance the LLM endpoint timed out).
    #[error("answer generation failed: {0}")]
    Generate(#[from] GenerateError),
    /// Reading the documents' text from the `documents` table failed.
    #[error("reading the documents failed: {0}")]
    Documents(String),
    /// A streamed answer this call was following (another caller's, in this process) ended early.
    #[error("{0}")]
    Interrupted(#[from] cache_runtime::StreamInterrupted),
}

/// Answers questions: retrieves context with a [`Retriever`], then asks an [`AnswerGenerator`].
#[derive(Debug, Clone)]
pub struct Orchestrator {
    retriever: Retriever,
    generator: Arc<dyn AnswerGenerator>,
    cache: PgCache,
    /// Where the documents' text is read from: the `documents` table, or the search engine's copy.
    documents: Option<PgPool>,
    /// What the generator's tokens cost, per model.
    prices: PriceTable,
}

impl Orchestrator {
    /// An orchestrator caching its answers in `cache` (usually the retriever's cache).
    pub fn new(retriever: Retriever, generator: Arc<dyn AnswerGenerator>, cache: PgCache) -> Self {
        Self { retriever, generator, cache, documents: None, prices: PriceTable::example() }
    }

    /// Prices the generator's tokens with `prices` (default: [`PriceTable::example`], example prices only).
    /// Each answer's usage (tokens, and their cost when its model has a price) is recorded with its cache
    /// entry, and counted as saved by each hit.
    pub fn with_prices(mut self, prices: PriceTable) -> Self {
        self.prices = prices;
        self
    }

    /// Reads the text of the retrieved documents from the `documents` table of `pool` (see
    /// [`crate::documents`]) instead of the search engine's copy, so that answers follow changes to it.
    pub fn with_document_table(mut self, pool: PgPool) -> Self {
        self.documents = Some(pool);
        self
    }

    /// The retriever used on an answer miss.
    pub fn retriever(&self) -> &Retriever {
        &self.retriever
    }

    /// The generator used on an answer miss.
    pub fn generator(&self) -> &Arc<dyn AnswerGenerator> {
        &self.generator
    }

    /// The cache the answers are stored in.
    pub fn cache(&self) -> &PgCache {
        &self.cache
    }

    /// Answers `query`, memoized in PostgreSQL: `#[pg_cached(namespace = "answer", ttl = "2h")]`.
    ///
    /// The entry is keyed by the query **and the generator's model** ([`AnswerGenerator::model`]), so
    /// switching from the local stand-in to a real model, or between models, never serves another model's
    /// answer. (The attribute sits on the private `answer_with(query, model)`, which this calls with
    /// `self.generator.model()`: `self` is not part of a key, so the model has to be an argument.)
    ///
    /// On a miss: [`Retriever::retrieve`] (itself memoized, so a retrieval hit saves the search even when the
    /// answer must be generated again), then the generator over the retrieved documents. On a hit neither runs.
    /// Errors are returned and not stored: the next call tries again.
    pub async fn process_query(&self, query: &str) -> Result<Answer, PipelineError> {
        self.answer_with(query, self.generator.model()).await
    }

    /// The `cache_key` of `query`'s answer row (for this generator's model).
    pub fn process_query_cache_key(&self, query: &str) -> Result<String, CacheError> {
        self.answer_with_cache_key(query, self.generator.model())
    }

    /// Deletes `query`'s cached answer (for this generator's model); `Ok(true)` if there was one. The
    /// retrieval entry it was built from stays.
    pub async fn process_query_invalidate(&self, query: &str) -> Result<bool, CacheError> {
        self.answer_with_invalidate(query, self.generator.model()).await
    }

    /// Generates `query`'s answer now, without looking the cache up, and stores it over the old one (an error
    /// leaves the old entry in place). Retrieval still goes through its own cache.
    pub async fn process_query_refresh(&self, query: &str) -> Result<Answer, PipelineError> {
        self.answer_with_refresh(query, self.generator.model()).await
    }

    /// Answers `query` as a stream of chunks, memoized in PostgreSQL:
    /// `#[pg_cached(namespace = "answer_stream", ttl = "2h", stream)]`, keyed like
    /// [`process_query`](Self::process_query) by the query and the generator's model.
    ///
    /// On a miss the generator's chunks reach the caller as they are produced (the stand-in lets its words
    /// out over its simulated latency; an endpoint streams its completion) and are recorded; when the stream
    /// ends with its [`AnswerChunk::End`], the chunks are stored, tagged with the documents retrieved, with
    /// the answer's usage. On a hit they are replayed from the cache. A stream that fails, or that the caller
    /// drops before its end, stores nothing.
    pub fn stream_answer(&self, query: &str) -> BoxStream<'_, Result<AnswerChunk, PipelineError>> {
        self.answer_stream_with(query, self.generator.model()).boxed()
    }

    /// The memoized body of [`Orchestrator::stream_answer`]: retrieval (memoized on its own), the
    /// documents, then the generator's stream, whose end chunk records the answer's usage.
    #[pg_cached(namespace = "answer_stream", ttl = "2h", cache = self.cache, stream, cache_if = ends)]
    fn answer_stream_with(&self, query: &str, model: &str) -> BoxStream<'_, Result<AnswerChunk, PipelineError>> {
        debug_assert_eq!(model, self.generator.model());
        let query = query.to_owned();
        stream::once(async move {
            let context = self.context_for(&query).await?;
            Ok::<_, PipelineError>(self.generator.generate_stream(&query, &context))
        })
        .flat_map(move |generated| match generated {
            Ok(chunks) => chunks
                .map(move |chunk| {
                    if let Ok(AnswerChunk::End { model, usage: Some(tokens), .. }) = &chunk {
                        cache_runtime::usage(Usage {
                            input_tokens: tokens.input_tokens,
                            output_tokens: tokens.output_tokens,
                            cost_micros_usd: self.prices.cost(model, tokens).unwrap_or(0),
                        });
                    }
                    chunk.map_err(PipelineError::from)
                })
                .boxed(),
            Err(error) => stream::once(async move { Err(error) }).boxed(),
        })
        .boxed()
    }

    /// The documents an answer to `query` is built from: retrieved (memoized), then read from the
    /// `documents` table or the search engine's copy.
    async fn context_for(&self, query: &str) -> Result<Vec<crate::retrieval::Document>, PipelineError> {
        let retrieved = self.retriever.retrieve(query, CONTEXT_DOCUMENTS).await?;
        match &self.documents {
            Some(pool) => {
                let ids: Vec<&str> = retrieved.results.iter().map(|hit| hit.id.as_str()).collect();
                documents::fetch(pool, &ids).await.map_err(|e| PipelineError::Documents(e.to_string()))
            }
            None => Ok(self.retriever.engine().documents_for(&retrieved)),
        }
    }

    /// The memoized body of [`Orchestrator::process_query`]. `model` is `self.generator.model()`: it is here
    /// only to be part of the key.
    #[pg_cached(namespace = "answer", ttl = "2h", cache = self.cache)]
    async fn answer_with(&self, query: &str, model: &str) -> Result<Answer, PipelineError> {
        debug_assert_eq!(model, self.generator.model());
        // The retrieval's tags (`doc:<id>` of each document) become this answer's: no code needed here.
        let context = self.context_for(query).await?;
        let answer = self.generator.generate(query, &context).await?;
        // What generating it consumed, stored with the entry: each hit counts it as saved.
        if let Some(tokens) = answer.usage {
            cache_runtime::usage(Usage {
                input_tokens: tokens.input_tokens,
                output_tokens: tokens.output_tokens,
                cost_micros_usd: self.prices.cost(&answer.model, &tokens).unwrap_or(0),
            });
        }
        Ok(answer)
    }
}

/// Whether recorded chunks make a whole answer (they end with [`AnswerChunk::End`]): the `cache_if` of
/// [`Orchestrator::stream_answer`], so that a stream cut short by its generator is never stored.
fn ends(chunks: &[AnswerChunk]) -> bool {
    matches!(chunks.last(), Some(AnswerChunk::End { .. }))
}

/// What the cache did for one namespace during one call, read from the cache's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Served from the cache (PostgreSQL, the in-process tier, or a concurrent caller's computation).
    Hit,
    /// Not in the cache: the function ran (and its `Ok` result was stored).
    Miss,
    /// A cache operation failed, so the function ran uncached.
    Error,
    /// The namespace was not consulted (e.g. retrieval when the answer was a hit).
    NotConsulted,
}

impl Lookup {
    /// Classifies the change of one namespace's counters from `before` to `after`.
    pub fn between(before: &ProcessCounts, after: &ProcessCounts) -> Lookup {
        let delta = |f: fn(&ProcessCounts) -> u64| f(after).saturating_sub(f(before));
        if delta(|c| c.errors) > 0 {
            Lookup::Error
        } else if delta(|c| c.misses) > 0 || delta(|c| c.executions) > 0 {
            Lookup::Miss
        } else if delta(|c| c.hits + c.local_hits + c.coalesced + c.stale_served) > 0 {
            Lookup::Hit
        } else {
            Lookup::NotConsulted
        }
    }

    /// `hit`, `miss`, `error` or `-`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Error => "error",
            Lookup::NotConsulted => "-",
        }
    }
}

impl fmt::Display for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A cache's per-namespace counters at one moment (from [`PgCache::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    by_namespace: BTreeMap<String, ProcessCounts>,
}

impl CounterSnapshot {
    /// Reads `cache`'s counters (one short query for the table's per-namespace counts comes with them).
    pub async fn take(cache: &PgCache) -> Result<CounterSnapshot, CacheError> {
        let stats = cache.stats().await?;
        Ok(CounterSnapshot {
            by_namespace: stats.namespaces.into_iter().map(|ns| (ns.namespace, ns.process)).collect(),
        })
    }

    /// The counters of `namespace` (zero when it was never used).
    pub fn namespace(&self, namespace: &str) -> ProcessCounts {
        self.by_namespace.get(namespace).copied().unwrap_or_default()
    }

    /// What happened in `namespace` between `earlier` and this snapshot.
    pub fn lookup_since(&self, earlier: &CounterSnapshot, namespace: &str) -> Lookup {
        Lookup::between(&earlier.namespace(namespace), &self.namespace(namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(hits: u64, misses: u64, errors: u64, executions: u64) -> ProcessCounts {
        // ProcessCounts is #[non_exhaustive]: built field by field, as a user of the crate must.
        let mut c = ProcessCounts::default();
        (c.hits, c.misses, c.errors, c.executions) = (hits, misses, errors, executions);
        c
    }

    #[test]
    fn lookup_is_read_from_counter_deltas() {
        let before = counts(3, 2, 0, 2);
        assert_eq!(Lookup::between(&before, &counts(4, 2, 0, 2)), Lookup::Hit);
        assert_eq!(Lookup::between(&before, &counts(3, 3, 0, 3)), Lookup::Miss);
        assert_eq!(Lookup::between(&before, &counts(3, 2, 1, 3)), Lookup::Error);
        assert_eq!(Lookup::between(&before, &before), Lookup::NotConsulted);
        let mut coalesced = before;
        coalesced.coalesced = 1;
        assert_eq!(Lookup::between(&before, &coalesced), Lookup::Hit);
    }

    #[test]
    fn lookup_pads_like_a_str() {
        assert_eq!(format!("[{:<5}]", Lookup::Hit), "[hit  ]");
        assert_eq!(format!("[{:>4}]", Lookup::NotConsulted), "[   -]");
    }

    #[test]
    fn snapshots_default_to_zero_for_unused_namespaces() {
        let snapshot = CounterSnapshot::default();
        assert_eq!(snapshot.namespace("answer"), ProcessCounts::default());
        assert_eq!(snapshot.lookup_since(&CounterSnapshot::default(), "answer"), Lookup::NotConsulted);
    }
}
