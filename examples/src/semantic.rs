//! The demo's semantic pass: answers found by the meaning of a question, not its exact words.
//!
//! The demo's questions are answered once more through [`PgCache::get_similar`] / [`PgCache::set_similar`]
//! (namespace `answer_by_meaning`, scope: the generator's model), then asked again in other words: each
//! paraphrase is served the stored answer, with the cosine similarity of the two questions and the question
//! it matched. Then questions that look alike but need another answer (a negation flipped, another command,
//! another strategy) are asked: the threshold or the lexical guard turns each into a miss, so each gets an
//! answer of its own. Last, one look-alike that all-MiniLM-L6-v2 cannot tell from its original
//! (`tokio::join!` for `tokio::select!`) is asked and reported as it goes: docs/SEMANTIC.md says where the
//! model errs.
//!
//! A function would write the same with `#[pg_cached(similar(question))]`; the API is used here because it
//! returns the score and the matched question, which the demo prints.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::{CacheError, PgCache};

use crate::demo::{fmt_latency, DemoError, DEFAULT_QUERIES};
use crate::generate::{Answer, AnswerGenerator};
use crate::pipeline::{Orchestrator, Retriever};
use crate::retrieval::RetrievalEngine;

/// The namespace of the semantic pass's entries.
pub const SEMANTIC_NAMESPACE: &str = "answer_by_meaning";

/// The demo's questions in other words: (paraphrase, index of the question in [`DEFAULT_QUERIES`]).
pub const PARAPHRASES: &[(&str, usize)] = &[
    ("How does VACUUM free the space held by dead tuples?", 0),
    ("What is a cache stampede, and how does single flight stop one?", 1),
    ("Why shouldn't a cached function store its errors?", 2),
    ("How does reciprocal rank fusion merge BM25 and vector rankings?", 3),
    ("When is SKIP LOCKED the right choice for a job queue?", 4),
    ("What does it mean for tokio::select! to be cancellation safe?", 5),
    ("How does exponential backoff on retries avoid overloading a service?", 6),
];

/// Questions that look like one of [`DEFAULT_QUERIES`] but need another answer.
pub const LOOK_ALIKES: &[&str] = &[
    "Why should a cached function store errors?",
    "When should a job queue not use SKIP LOCKED?",
    "How does ANALYZE reclaim space from dead tuples?",
    "How do retries with linear backoff avoid overload?",
    "What is a cache stampede and how does a CDN prevent it?",
];

/// A look-alike the model scores above the default threshold and the guard cannot refuse (no number, name
/// or negation differs): a known limit, shown as it is.
pub const KNOWN_CONFUSION: &str = "What does cancellation safety mean for tokio::join!?";

/// What one question of the pass got.
#[derive(Debug, Clone)]
pub struct SemanticCall {
    /// The question asked.
    pub question: String,
    /// `Some((score, stored question))` when the answer was served by meaning; `None` when it was computed.
    pub matched: Option<(f32, String)>,
    /// Wall-clock time of the call.
    pub latency: Duration,
}

/// Everything the semantic pass measured.
#[derive(Debug, Clone)]
pub struct SemanticReport {
    /// The demo's questions, stored (misses unless an earlier run left them).
    pub stored: Vec<SemanticCall>,
    /// The paraphrases, in the order of [`PARAPHRASES`].
    pub paraphrases: Vec<SemanticCall>,
    /// The look-alikes, in the order of [`LOOK_ALIKES`].
    pub look_alikes: Vec<SemanticCall>,
    /// [`KNOWN_CONFUSION`].
    pub known_confusion: SemanticCall,
}

/// Runs the pass on `cache`, which must have an embedder, with the demo's engine and generator.
pub async fn run(
    cache: &PgCache,
    engine: Arc<RetrievalEngine>,
    generator: Arc<dyn AnswerGenerator>,
    out: &mut (dyn Write + Send),
) -> Result<SemanticReport, DemoError> {
    let pool = cache.single_pool().ok_or_else(|| {
        DemoError::Cache(CacheError::Config("the demo runs on one server (its documents table is there)".into()))
    })?;
    let pool = pool.clone();
    let retriever = Retriever::new(engine, cache.clone());
    let pipeline = Orchestrator::new(retriever, generator, cache.clone()).with_document_table(pool);
    cache.delete_namespace(SEMANTIC_NAMESPACE).await?;
    writeln!(
        out,
        "\nSemantic pass: answers found by meaning (get_similar / set_similar, namespace {SEMANTIC_NAMESPACE:?})"
    )?;
    let mut stored = Vec::new();
    for question in DEFAULT_QUERIES {
        stored.push(ask(&pipeline, question).await?);
    }
    writeln!(out, "  stored the answers of the {} demo questions with their embeddings", stored.len())?;

    writeln!(out, "\n  Paraphrases (each should be served the stored answer):")?;
    let mut paraphrases = Vec::new();
    for (question, _) in PARAPHRASES {
        let call = ask(&pipeline, question).await?;
        write_call(out, &call)?;
        paraphrases.push(call);
    }
    writeln!(out, "\n  Look-alikes that need another answer (each should miss and compute its own):")?;
    let mut look_alikes = Vec::new();
    for question in LOOK_ALIKES {
        let call = ask(&pipeline, question).await?;
        write_call(out, &call)?;
        look_alikes.push(call);
    }
    let hits = paraphrases.iter().filter(|c| c.matched.is_some()).count();
    let missed = look_alikes.iter().filter(|c| c.matched.is_none()).count();
    writeln!(
        out,
        "\n  {hits} of {} paraphrases were semantic hits; {missed} of {} look-alikes missed",
        paraphrases.len(),
        look_alikes.len()
    )?;
    writeln!(out, "\n  A look-alike this model cannot tell apart (no number, name or negation differs):")?;
    let known_confusion = ask(&pipeline, KNOWN_CONFUSION).await?;
    write_call(out, &known_confusion)?;
    if known_confusion.matched.is_some() {
        writeln!(
            out,
            "  (a wrong answer served: a stricter threshold, or a cross-encoder, is needed; docs/SEMANTIC.md)"
        )?;
    }
    Ok(SemanticReport { stored, paraphrases, look_alikes, known_confusion })
}

/// Answers `question` by meaning if a stored question is near enough, else computes and stores it.
async fn ask(pipeline: &Orchestrator, question: &str) -> Result<SemanticCall, DemoError> {
    let cache = pipeline.cache();
    let model = pipeline.generator().model().to_owned();
    let started = Instant::now();
    if let Some(hit) = cache.get_similar::<Answer>(SEMANTIC_NAMESPACE, &model, question).await? {
        return Ok(SemanticCall {
            question: question.to_owned(),
            matched: Some((hit.score, hit.text)),
            latency: started.elapsed(),
        });
    }
    // A failed computation is shown as a miss with no answer stored, as the rest of the demo does.
    if let Ok(answer) = pipeline.process_query(question).await {
        cache.set_similar(SEMANTIC_NAMESPACE, &model, question, &answer, None).await?;
    }
    Ok(SemanticCall { question: question.to_owned(), matched: None, latency: started.elapsed() })
}

fn write_call(out: &mut (dyn Write + Send), call: &SemanticCall) -> std::io::Result<()> {
    match &call.matched {
        Some((score, stored)) => writeln!(
            out,
            "    hit  {score:.3}  {:>9}  {:?}\n                           matched {:?}",
            fmt_latency(call.latency),
            call.question,
            stored
        ),
        None => writeln!(out, "    miss        {:>9}  {:?} (computed)", fmt_latency(call.latency), call.question),
    }
}
