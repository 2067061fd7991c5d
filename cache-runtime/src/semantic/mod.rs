//! Semantic matching: turning a text into a vector whose direction carries its meaning, so that a
//! paraphrased question can be recognised as one already answered.
//!
//! This module is the model side of semantic caching, kept apart from storage and lookup so that either can
//! change alone:
//!
//! - [`Embedder`], the trait every embedding model implements (async, batched, and naming its model and
//!   version so that vectors of two models are never compared);
//! - [`MiniLm`], all-MiniLM-L6-v2 run on the CPU in this process (feature `minilm`, on by default);
//! - [`OpenAiEmbedder`], any `POST /embeddings` endpoint shaped like OpenAI's (feature `openai`, on by
//!   default);
//! - [`embedder_from_env`], which picks one of them from the environment;
//! - [`guard`], the lexical second check that refuses a match between texts that name different numbers,
//!   negations or entities, where the model's score alone cannot be trusted;
//! - [`cosine`], [`normalize`] and [`check_vectors`], the vector arithmetic they share.
//!
//! docs/SEMANTIC.md measures the model and the guard on paraphrase data and explains the default threshold.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::CacheError;

#[cfg(feature = "minilm")]
mod bert;
mod env;
pub mod guard;
#[cfg(feature = "minilm")]
mod minilm;
#[cfg(feature = "openai")]
mod openai;
mod vector;

pub use env::{default_model_dir, embedder_from_env, MODEL_DIR_ENV};
#[cfg(feature = "minilm")]
pub use minilm::MiniLm;
#[cfg(feature = "openai")]
pub use openai::{OpenAiEmbedder, OpenAiEmbedderConfig, DEFAULT_EMBEDDINGS_MODEL, DEFAULT_EMBEDDINGS_TIMEOUT};
pub use vector::{check_vectors, cosine, normalize};

/// What [`Embedder::embed`] returns: a boxed future, so that the trait can be used as `dyn Embedder`.
pub type EmbedFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<Vec<f32>>, CacheError>> + Send + 'a>>;

/// A sentence-embedding model: texts in, one vector per text out.
///
/// # Contract
/// An implementation's [`embed`](Embedder::embed) returns, for `n` texts, exactly `n` vectors in the order
/// of the texts, each of [`dimensions`](Embedder::dimensions) finite numbers and **L2-normalized** (unit
/// length, up to rounding), so that the cosine similarity of two vectors is their dot product
/// ([`cosine`]). A text the model cannot read whole (longer than its window) is an error, never silently
/// truncated: two long texts differing only past the window would otherwise look identical. Errors are
/// [`CacheError::Embedding`] or [`CacheError::Timeout`]; a caching caller treats them as "no semantic
/// match" and carries on with the exact key.
///
/// [`model_id`](Embedder::model_id) names the model *and its version*: vectors are comparable only when
/// their model ids are equal, and a cache keeps the model id with every vector it stores.
///
/// The trait is object safe: use `Arc<dyn Embedder>` (which implements it too) to choose a model at run
/// time. Implementations should batch: one call with many texts costs far less than many calls.
pub trait Embedder: fmt::Debug + Send + Sync {
    /// The model and its version, e.g. `all-MiniLM-L6-v2@1f0c2b7a9d3e4c55`: equal ids, comparable vectors.
    fn model_id(&self) -> &str;

    /// The length of every vector this embedder returns.
    fn dimensions(&self) -> usize;

    /// The unit vectors of `texts`, in order (see the trait's contract). An empty slice gives an empty
    /// vector without any work.
    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a>;
}

impl<E: Embedder + ?Sized> Embedder for Arc<E> {
    fn model_id(&self) -> &str {
        (**self).model_id()
    }

    fn dimensions(&self) -> usize {
        (**self).dimensions()
    }

    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
        (**self).embed(texts)
    }
}
