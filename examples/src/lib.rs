//! The retrieval-augmented generation (RAG) demo of `pg_cached`: a bundled
//! corpus, hybrid BM25 + vector retrieval ([`retrieval`]), answer generation
//! behind a trait ([`generate`]), the two memoized with `#[pg_cached]`
//! ([`pipeline`]), the documents as a PostgreSQL table whose changes invalidate
//! what was built on them ([`documents`]), the demo that `scripts/demo` runs
//! ([`demo`]), and its pass of questions answered by meaning ([`semantic`]).

pub mod demo;
pub mod documents;
pub mod generate;
pub mod pipeline;
pub mod prices;
pub mod retrieval;
pub mod semantic;
mod text;

pub use generate::{
    generator_from_env, generator_from_lookup, Answer, AnswerChunk, AnswerGenerator, BoxFuture, GenerateError,
    LocalGenerator, OpenAiCompatibleGenerator, OpenAiConfig,
};
pub use pipeline::{CounterSnapshot, Lookup, Orchestrator, PipelineError, Retriever};
pub use retrieval::{Document, RetrievalEngine, RetrievalError, RetrievalResult, ScoredDocument};
