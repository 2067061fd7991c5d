//! Components of the retrieval-augmented generation (RAG) demo for
//! `pg_cached`: a bundled corpus, hybrid BM25 + vector retrieval
//! ([`retrieval`]) and answer generation behind a trait ([`generate`]).

pub mod generate;
pub mod retrieval;
mod text;

pub use generate::{
    generator_from_env, generator_from_lookup, Answer, AnswerGenerator, BoxFuture, GenerateError, LocalGenerator,
    OpenAiCompatibleGenerator, OpenAiConfig,
};
pub use retrieval::{Document, RetrievalEngine, RetrievalError, RetrievalResult, ScoredDocument};
