//! The RAG demo that `scripts/demo` runs (`examples/rag_demo.rs` is its command line).
//!
//! It answers a set of queries three times with the memoized pipeline of [`crate::pipeline`]: twice in one
//! process, then with a fresh [`PgCache`] (a new connection pool and zeroed counters, as after a restart)
//! over the same table. Between the second and third pass a document changes in the `documents` table, in a
//! transaction rolled back and then in one committed: the trigger installed with
//! [`PgCache::invalidate_on_change`] removes, at the COMMIT only, the retrieval and answer entries that cited
//! it, so the third pass recomputes exactly those. Then it invalidates one answer and purges the `retrieval`
//! namespace, reads two rows back with SQL, and prints the cache's stats with the compute time hits saved.
//!
//! The first query's answer is also streamed ([`Orchestrator::stream_answer`], `#[pg_cached(stream)]`): in
//! pass 1 its words appear as the generator produces them, in pass 2 they are replayed from the cache.
//!
//! Everything printed is measured: hit or miss comes from the cache's counters before and after each call
//! ([`CounterSnapshot`]), latencies from a clock around each call, entries and TTLs from the table. The
//! structured [`DemoReport`] returned by [`run`] is what the integration tests check.

use std::fmt::Write as _;
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::{CacheError, PgCache, ProcessCounts};
use console::Style;
use indicatif::{ProgressBar, ProgressStyle};

use crate::documents::{self, DOCUMENTS_TABLE, DOCUMENT_TAG_PREFIX};
use crate::generate::{Answer, AnswerGenerator};
use crate::pipeline::{
    CounterSnapshot, Lookup, Orchestrator, Retriever, ANSWER_NAMESPACE, ANSWER_STREAM_NAMESPACE, CONTEXT_DOCUMENTS,
    RETRIEVAL_NAMESPACE,
};
use crate::prices::PriceTable;
use crate::retrieval::RetrievalEngine;

mod stream;
pub use stream::StreamRecord;

/// The queries the demo asks when none are given on the command line.
pub const DEFAULT_QUERIES: &[&str] = &[
    "How does VACUUM reclaim space from dead tuples?",
    "What is a cache stampede and how does single-flight prevent it?",
    "Why should a cached function not store errors?",
    "How does reciprocal rank fusion combine BM25 and vector rankings?",
    "When should a job queue use SKIP LOCKED?",
    "What does cancellation safety mean for tokio::select!?",
    "How do retries with exponential backoff avoid overload?",
];

/// The simulated latency of the demo's search index (a remote vector store or search service).
pub const DEMO_RETRIEVAL_LATENCY: Duration = Duration::from_millis(200);

/// Width of the query column.
const QUERY_WIDTH: usize = 44;

/// What the demo runs with.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The questions, asked in order in every pass.
    pub queries: Vec<String>,
    /// The search engine (its latency is the simulated index latency).
    pub engine: Arc<RetrievalEngine>,
    /// The answer generator.
    pub generator: Arc<dyn AnswerGenerator>,
    /// Where a real generator sends its requests, for the header.
    pub generator_endpoint: Option<String>,
    /// Draw a progress bar on stderr during the slow first pass (indicatif hides it when stderr is not a
    /// terminal).
    pub progress: bool,
    /// Colour hits and misses.
    pub colors: bool,
    /// What the generator's tokens cost (see [`PriceTable`]).
    pub prices: PriceTable,
    /// `prices` is the example table, not the user's: the header says so.
    pub example_prices: bool,
}

impl DemoOptions {
    /// The default queries, no progress bar, no colours.
    pub fn new(engine: Arc<RetrievalEngine>, generator: Arc<dyn AnswerGenerator>) -> Self {
        Self {
            queries: DEFAULT_QUERIES.iter().map(|q| (*q).to_string()).collect(),
            engine,
            generator,
            generator_endpoint: None,
            progress: false,
            colors: false,
            prices: PriceTable::example(),
            example_prices: true,
        }
    }
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The demo needs at least one query.
    #[error("no queries to run")]
    NoQueries,
    /// Every query of the first pass failed, so there is nothing to cache.
    #[error(
        "every query failed, so no answer was cached (first error: {0}); check LLM_BASE_URL and LLM_API_KEY, \
         or unset LLM_BASE_URL to use the local stand-in generator"
    )]
    AllFailed(String),
    /// A cache operation the demo itself makes (connect, migrate, stats, invalidate) failed.
    #[error("cache: {0}")]
    Cache(#[from] CacheError),
    /// Reading the table back failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Writing the output failed.
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
}

/// One measured call.
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// The query.
    pub query: String,
    /// What the `retrieval` namespace did during the call.
    pub retrieval: Lookup,
    /// What the `answer` namespace did during the call.
    pub answer: Lookup,
    /// Wall-clock time of the call.
    pub latency: Duration,
    /// The same query's latency in pass 1, when there is one.
    pub baseline: Option<Duration>,
    /// The answer, or the error's message (retrieval-only calls have neither).
    pub outcome: Option<Result<Answer, String>>,
}

impl CallRecord {
    /// `baseline / latency`, when there is a baseline and the call succeeded.
    pub fn speedup(&self) -> Option<f64> {
        if matches!(self.outcome, Some(Err(_))) {
            return None;
        }
        let baseline = self.baseline?;
        Some(baseline.as_secs_f64() / self.latency.as_secs_f64().max(1e-9))
    }
}

/// One pass over the queries.
#[derive(Debug, Clone)]
pub struct PassReport {
    /// The pass's heading.
    pub title: String,
    /// One record per query, in order.
    pub calls: Vec<CallRecord>,
}

/// The invalidation steps.
#[derive(Debug, Clone)]
pub struct InvalidationReport {
    /// `process_query_invalidate(first query)`: whether an entry was removed.
    pub answer_removed: bool,
    /// `process_query(first query)` right after.
    pub after_invalidate: CallRecord,
    /// `delete_namespace("retrieval")`: how many entries went.
    pub retrieval_purged: u64,
    /// `retrieve(second query)` after the purge.
    pub retrieve_after_purge: CallRecord,
    /// `process_query(second query)` after the purge.
    pub answer_after_purge: CallRecord,
}

/// One row of the final stats.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceSummary {
    /// The namespace.
    pub namespace: String,
    /// Hits and misses of both `PgCache` instances of the run, added up.
    pub counts: ProcessCounts,
    /// Rows of the namespace that have not expired.
    pub active_entries: u64,
}

/// The change to the `documents` table between passes 2 and 3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceChangeReport {
    /// The document edited: the first query's top hit.
    pub document: String,
    /// The queries (indexes) whose retrieval cited it, read from the entries' tags before the change.
    pub citing: Vec<usize>,
    /// Cache entries removed by the update that was rolled back.
    pub removed_on_rollback: u64,
    /// Cache entries removed by the update that was committed.
    pub removed_on_commit: u64,
}

/// Everything the demo measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Entries removed by the clean start: (retrieval, answer).
    pub cleared: (u64, u64),
    /// The three passes: cold, warm, after the restart.
    pub passes: Vec<PassReport>,
    /// The first query's streamed answer in pass 1 (generated) and pass 2 (replayed).
    pub streams: Vec<StreamRecord>,
    /// The document changed before pass 3; `None` when the first query had no result to edit.
    pub source_change: Option<SourceChangeReport>,
    /// The invalidation steps.
    pub invalidation: InvalidationReport,
    /// The final stats: `retrieval`, `answer`, then `answer_stream`.
    pub namespaces: Vec<NamespaceSummary>,
}

/// Runs the demo, writing a report for people to `out` and returning the measurements.
///
/// `connect` is called twice: for the first cache and for the "restarted" one. It should build a new
/// `PgCache` (and connection pool) each time, e.g. `PgCache::from_env`.
pub async fn run<C, F>(
    options: DemoOptions,
    mut connect: C,
    out: &mut (dyn Write + Send),
) -> Result<DemoReport, DemoError>
where
    C: FnMut() -> F,
    F: Future<Output = Result<PgCache, CacheError>>,
{
    if options.queries.is_empty() {
        return Err(DemoError::NoQueries);
    }
    let paint = Paint::new(options.colors);
    let queries = &options.queries;

    let cache = connect().await?;
    cache.migrate().await?;
    write_header(out, &paint, &options, &cache)?;
    // The documents live in a table; a trigger on it invalidates what cites a document when it changes.
    documents::load(demo_pool(&cache)?, options.engine.documents()).await?;
    cache.invalidate_on_change(DOCUMENTS_TABLE, "id", DOCUMENT_TAG_PREFIX).await?;
    writeln!(
        out,
        "  {:<12}{} documents in the `{DOCUMENTS_TABLE}` table; invalidate_on_change({DOCUMENTS_TABLE:?}, \"id\", \
         {DOCUMENT_TAG_PREFIX:?}) installed its trigger",
        "documents",
        options.engine.len()
    )?;

    // A clean slate, so that the first pass misses whatever earlier runs stored.
    let cleared = (cache.delete_namespace(RETRIEVAL_NAMESPACE).await?, cache.delete_namespace(ANSWER_NAMESPACE).await?);
    let streams_cleared = cache.delete_namespace(ANSWER_STREAM_NAMESPACE).await?;
    writeln!(
        out,
        "  {:<12}deleted {} retrieval, {} answer and {streams_cleared} streamed-answer entries left by earlier runs, \
         so pass 1 starts cold",
        "clean start", cleared.0, cleared.1
    )?;

    let pipeline = orchestrator(&options, &cache)?;
    let cold = run_pass(
        out,
        &paint,
        &pipeline,
        "Pass 1 of 3: cold cache, every query searches and generates",
        queries,
        None,
        options.progress,
    )
    .await?;
    let errors: Vec<&String> = cold
        .calls
        .iter()
        .filter_map(|c| match &c.outcome {
            Some(Err(error)) => Some(error),
            _ => None,
        })
        .collect();
    if errors.len() == cold.calls.len() {
        return Err(DemoError::AllFailed(errors[0].clone()));
    }
    if let Some(Some(Ok(answer))) = cold.calls.first().map(|c| c.outcome.clone()) {
        write_sample(out, &paint, answer)?;
    }
    let generated = stream::run_stream(out, &paint, &pipeline, &queries[0], None).await?;
    let baseline: Vec<Duration> = cold.calls.iter().map(|c| c.latency).collect();
    let warm =
        run_pass(out, &paint, &pipeline, "Pass 2 of 3: same process, same queries", queries, Some(&baseline), false)
            .await?;
    let replayed = stream::run_stream(out, &paint, &pipeline, &queries[0], Some(&generated)).await?;

    let source_change = run_source_change(out, &paint, &pipeline, queries).await?;

    // The "restart": drop every handle on the first cache and close its pool; the next cache has its own
    // pool and counters, and only the table is shared.
    let before_restart = CounterSnapshot::take(&cache).await?;
    drop(pipeline);
    demo_pool(&cache)?.close().await;
    drop(cache);
    let cache = connect().await?;
    cache.migrate().await?;
    let pipeline = orchestrator(&options, &cache)?;
    let restarted = run_pass(
        out,
        &paint,
        &pipeline,
        "Pass 3 of 3: after the edit and a restart (a fresh PgCache: new connection pool, counters at zero, same \
         table)",
        queries,
        Some(&baseline),
        false,
    )
    .await?;
    if let Some(change) = &source_change {
        let recomputed: Vec<usize> =
            restarted.calls.iter().enumerate().filter(|(_, c)| c.answer == Lookup::Miss).map(|(i, _)| i).collect();
        let verdict = if recomputed == change.citing { "exactly those that cite" } else { "not those that cite" };
        writeln!(
            out,
            "  recomputed: {} ({verdict} {}); every other answer came from the cache",
            list_queries(&recomputed),
            change.document
        )?;
    }

    let invalidation = run_invalidation(out, &paint, &pipeline, queries, &baseline).await?;
    let peek_query = queries.get(1).unwrap_or(&queries[0]);
    write_stored_rows(out, &paint, &pipeline, peek_query).await?;

    let stats = cache.stats().await?;
    let namespaces: Vec<NamespaceSummary> = [RETRIEVAL_NAMESPACE, ANSWER_NAMESPACE, ANSWER_STREAM_NAMESPACE]
        .iter()
        .map(|&ns| {
            let mut counts = before_restart.namespace(ns);
            if let Some(now) = stats.namespace(ns) {
                counts += &now.process;
            }
            NamespaceSummary {
                namespace: ns.to_string(),
                counts,
                active_entries: stats.namespace(ns).map_or(0, |n| n.active),
            }
        })
        .collect();
    let basis =
        SavingsBasis { estimated_tokens: options.generator.is_stand_in(), example_prices: options.example_prices };
    write_stats(out, &paint, &namespaces, &basis)?;

    Ok(DemoReport {
        cleared,
        passes: vec![cold, warm, restarted],
        streams: vec![generated, replayed],
        source_change,
        invalidation,
        namespaces,
    })
}

fn orchestrator(options: &DemoOptions, cache: &PgCache) -> Result<Orchestrator, DemoError> {
    let retriever = Retriever::new(Arc::clone(&options.engine), cache.clone());
    let orchestrator =
        Orchestrator::new(retriever, Arc::clone(&options.generator), cache.clone()).with_prices(options.prices.clone());
    Ok(orchestrator.with_document_table(demo_pool(cache)?.clone()))
}

/// The pool of the demo's cache, which runs on one server: the documents table lives next to it.
fn demo_pool(cache: &PgCache) -> Result<&sqlx::PgPool, DemoError> {
    cache
        .single_pool()
        .ok_or_else(|| CacheError::Config("the demo needs a cache on one server, not shards".into()).into())
}

/// "1, 3 and 4": 1-based query numbers.
fn list_queries(indexes: &[usize]) -> String {
    let numbers: Vec<String> = indexes.iter().map(|i| (i + 1).to_string()).collect();
    match numbers.split_last() {
        None => "no query".to_string(),
        Some((last, [])) => format!("query {last}"),
        Some((last, rest)) => format!("queries {} and {last}", rest.join(", ")),
    }
}

/// Edits the first query's top document in the `documents` table: once in a transaction that is rolled back,
/// once in one that commits, counting the cache entries each removed.
async fn run_source_change(
    out: &mut (dyn Write + Send),
    paint: &Paint,
    pipeline: &Orchestrator,
    queries: &[String],
) -> Result<Option<SourceChangeReport>, DemoError> {
    let pool = demo_pool(pipeline.cache())?;
    let mut keys = Vec::with_capacity(queries.len());
    for query in queries {
        keys.push(pipeline.retriever().retrieve_cache_key(query, CONTEXT_DOCUMENTS)?);
    }
    // The document cited by the most queries but not by all of them, so that the next pass shows both
    // sides: read from the retrieval entries' tags.
    let tag: Option<String> = sqlx::query_scalar(
        "SELECT t FROM cache_entries, unnest(tags) AS t WHERE cache_key = ANY ($1) AND starts_with(t, $2) \
         GROUP BY t HAVING count(*) < $3 OR $3 = 1 ORDER BY count(*) DESC, t LIMIT 1",
    )
    .bind(&keys)
    .bind(DOCUMENT_TAG_PREFIX)
    .bind(i64::try_from(queries.len()).unwrap_or(i64::MAX))
    .fetch_optional(pool)
    .await?;
    let Some(tag) = tag else { return Ok(None) };
    let document = tag[DOCUMENT_TAG_PREFIX.len()..].to_string();
    let mut citing = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let cites: Option<bool> =
            sqlx::query_scalar("SELECT $2 = ANY (coalesce(tags, '{}')) FROM cache_entries WHERE cache_key = $1")
                .bind(key)
                .bind(&tag)
                .fetch_optional(pool)
                .await?;
        if cites == Some(true) {
            citing.push(i);
        }
    }
    let entries = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM cache_entries WHERE cache_key LIKE 'retrieval:%' OR cache_key LIKE 'answer:%'",
        )
        .fetch_one(pool)
        .await
    };
    let edit = "UPDATE documents SET body = body || ' (Revised.)' WHERE id = $1";
    let shown = edit.replace("$1", &format!("'{document}'"));

    writeln!(out)?;
    writeln!(out, "{}", paint.heading.apply_to(format!("The source changes: document {document} is edited in SQL")))?;
    writeln!(
        out,
        "  it is cited by {}: the tag {tag:?} is on their retrieval entries, and on the answers built on them",
        list_queries(&citing)
    )?;
    let before = entries().await?;
    let mut tx = pool.begin().await?;
    sqlx::query(edit).bind(&document).execute(&mut *tx).await?;
    tx.rollback().await?;
    let after_rollback = entries().await?;
    let removed_on_rollback = (before - after_rollback).unsigned_abs();
    writeln!(out, "  BEGIN; {shown}; ROLLBACK  ->  {removed_on_rollback} cache entries removed")?;
    let mut tx = pool.begin().await?;
    sqlx::query(edit).bind(&document).execute(&mut *tx).await?;
    tx.commit().await?;
    let removed_on_commit = (after_rollback - entries().await?).unsigned_abs();
    writeln!(
        out,
        "  BEGIN; {shown}; COMMIT    ->  {removed_on_commit} removed, by the trigger, in the edit's transaction"
    )?;
    Ok(Some(SourceChangeReport { document, citing, removed_on_rollback, removed_on_commit }))
}

/// Calls `process_query` and reads what each namespace did from the counters around it.
async fn measured_answer(pipeline: &Orchestrator, query: &str) -> Result<CallRecord, DemoError> {
    let call = async { Some(pipeline.process_query(query).await.map_err(|e| e.to_string())) };
    measured(pipeline, query, call).await
}

/// Calls `retrieve` alone, measured like [`measured_answer`].
async fn measured_retrieval(pipeline: &Orchestrator, query: &str) -> Result<CallRecord, DemoError> {
    let call =
        async { pipeline.retriever().retrieve(query, CONTEXT_DOCUMENTS).await.err().map(|e| Err(e.to_string())) };
    measured(pipeline, query, call).await
}

/// Times `call` and reads what each namespace did from the cache's counters around it.
async fn measured(
    pipeline: &Orchestrator,
    query: &str,
    call: impl Future<Output = Option<Result<Answer, String>>>,
) -> Result<CallRecord, DemoError> {
    let before = CounterSnapshot::take(pipeline.cache()).await?;
    let started = Instant::now();
    let outcome = call.await;
    let latency = started.elapsed();
    let after = CounterSnapshot::take(pipeline.cache()).await?;
    Ok(CallRecord {
        query: query.to_string(),
        retrieval: after.lookup_since(&before, RETRIEVAL_NAMESPACE),
        answer: after.lookup_since(&before, ANSWER_NAMESPACE),
        latency,
        baseline: None,
        outcome,
    })
}

async fn run_pass(
    out: &mut (dyn Write + Send),
    paint: &Paint,
    pipeline: &Orchestrator,
    title: &str,
    queries: &[String],
    baseline: Option<&[Duration]>,
    progress: bool,
) -> Result<PassReport, DemoError> {
    writeln!(out)?;
    writeln!(out, "{}", paint.heading.apply_to(title))?;
    write_table_header(out)?;

    let bar = if progress { ProgressBar::new(queries.len() as u64) } else { ProgressBar::hidden() };
    let style =
        ProgressStyle::with_template("  {spinner:.cyan} [{bar:24.cyan/blue}] {pos}/{len} {elapsed:>3}  {wide_msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(80));

    let mut calls = Vec::with_capacity(queries.len());
    for (i, query) in queries.iter().enumerate() {
        bar.set_message(format!("searching and generating: {}", truncate(query, 60)));
        let mut call = measured_answer(pipeline, query).await?;
        call.baseline = baseline.and_then(|b| b.get(i).copied());
        bar.suspend(|| write_row(out, paint, &(i + 1).to_string(), &call))?;
        bar.inc(1);
        calls.push(call);
    }
    bar.finish_and_clear();

    let from_cache = calls.iter().filter(|c| c.answer == Lookup::Hit).count();
    let mut summary = format!(
        "  {} of {} answers from the cache, {} computed; {} in process_query",
        from_cache,
        calls.len(),
        calls.iter().filter(|c| c.answer == Lookup::Miss).count(),
        fmt_latency(calls.iter().map(|c| c.latency).sum()),
    );
    if let Some(baseline) = baseline {
        let before: Duration = baseline.iter().sum();
        let _ = write!(summary, " (pass 1: {})", fmt_latency(before));
    }
    writeln!(out, "{summary}")?;
    for call in &calls {
        if let Some(Err(error)) = &call.outcome {
            let failed = paint.miss.apply_to("failed");
            writeln!(out, "  {failed} {:?}: {error} (not cached; the next call tries again)", call.query)?;
        }
    }
    if calls.iter().any(|c| c.retrieval == Lookup::NotConsulted && c.answer == Lookup::Hit) {
        writeln!(
            out,
            "  {}",
            paint.dim.apply_to("retrieval \"-\": not consulted, because the answer itself came from the cache")
        )?;
    }
    Ok(PassReport { title: title.to_string(), calls })
}

async fn run_invalidation(
    out: &mut (dyn Write + Send),
    paint: &Paint,
    pipeline: &Orchestrator,
    queries: &[String],
    baseline: &[Duration],
) -> Result<InvalidationReport, DemoError> {
    let first = &queries[0];
    let (second, second_index) = match queries.get(1) {
        Some(q) => (q, 1),
        None => (first, 0),
    };

    writeln!(out)?;
    writeln!(out, "{}", paint.heading.apply_to("Invalidation"))?;
    let answer_removed = pipeline.process_query_invalidate(first).await?;
    writeln!(
        out,
        "  process_query_invalidate({:?}): {}",
        truncate(first, QUERY_WIDTH),
        if answer_removed { "removed its answer entry" } else { "there was no answer entry" }
    )?;
    write_table_header(out)?;
    let mut after_invalidate = measured_answer(pipeline, first).await?;
    after_invalidate.baseline = baseline.first().copied();
    write_row(out, paint, "a", &after_invalidate)?;
    writeln!(out, "     {}", explain(&after_invalidate))?;

    let retrieval_purged = pipeline.cache().delete_namespace(RETRIEVAL_NAMESPACE).await?;
    writeln!(out, "  delete_namespace(\"retrieval\"): removed {retrieval_purged} entries")?;
    write_table_header(out)?;
    let retrieve_after_purge = measured_retrieval(pipeline, second).await?;
    write_row(out, paint, "b", &retrieve_after_purge)?;
    writeln!(
        out,
        "     retrieve({:?}, {CONTEXT_DOCUMENTS}): {}",
        truncate(second, 30),
        explain(&retrieve_after_purge)
    )?;
    let mut answer_after_purge = measured_answer(pipeline, second).await?;
    answer_after_purge.baseline = baseline.get(second_index).copied();
    write_row(out, paint, "c", &answer_after_purge)?;
    writeln!(out, "     process_query: {}", explain(&answer_after_purge))?;
    if answer_after_purge.answer == Lookup::Hit {
        writeln!(
            out,
            "     (answers are entries of their own: after re-indexing, purge \"answer\" as well as \"retrieval\")"
        )?;
    }

    Ok(InvalidationReport {
        answer_removed,
        after_invalidate,
        retrieval_purged,
        retrieve_after_purge,
        answer_after_purge,
    })
}

/// What ran during a call, from its lookups.
fn explain(call: &CallRecord) -> String {
    let ran = match (call.retrieval, call.answer) {
        (_, Lookup::Hit) => "the answer came from the cache; nothing ran",
        (Lookup::Hit, Lookup::Miss) => "the search came from the cache; only the generator ran",
        (Lookup::Miss, Lookup::Miss) => "searched and generated",
        (Lookup::Miss, Lookup::NotConsulted) => "the search ran again (its entry was purged) and was stored",
        (Lookup::Hit, Lookup::NotConsulted) => "the search came from the cache",
        (Lookup::Error, _) | (_, Lookup::Error) => "the cache failed; the call ran uncached",
        _ => "nothing was looked up",
    };
    match &call.outcome {
        Some(Err(error)) => format!("{ran}; failed: {error}"),
        _ => ran.to_string(),
    }
}

fn write_header(
    out: &mut (dyn Write + Send),
    paint: &Paint,
    options: &DemoOptions,
    cache: &PgCache,
) -> Result<(), DemoError> {
    let connect = demo_pool(cache)?.connect_options();
    let server = match connect.get_socket() {
        Some(socket) => format!("socket in {}", socket.display()),
        None => format!("{}:{}", connect.get_host(), connect.get_port()),
    };
    let database = format!(
        "{} as {} on {server} (password not shown)",
        connect.get_database().unwrap_or("(default database)"),
        connect.get_username()
    );
    let generator = &options.generator;
    writeln!(out, "{}", paint.title.apply_to("pg_cached RAG demo: retrieval and answers memoized in PostgreSQL"))?;
    writeln!(out, "  {:<12}{database}", "database")?;
    writeln!(
        out,
        "  {:<12}{} bundled documents, hybrid BM25 + vector search, simulated index latency {}",
        "corpus",
        options.engine.len(),
        fmt_latency(options.engine.latency())
    )?;
    if generator.is_stand_in() {
        writeln!(
            out,
            "  {:<12}{} = {}",
            "generator",
            generator.model(),
            paint.warn.apply_to("LOCAL STAND-IN, not a language model")
        )?;
        writeln!(out, "  {:<12}deterministic extractive answers with a simulated model latency;", "")?;
        writeln!(
            out,
            "  {:<12}set LLM_BASE_URL (and LLM_API_KEY, LLM_MODEL) to call an OpenAI-compatible endpoint",
            ""
        )?;
    } else {
        writeln!(
            out,
            "  {:<12}{} via {} (OpenAI-compatible)",
            "generator",
            generator.model(),
            options.generator_endpoint.as_deref().unwrap_or("an OpenAI-compatible endpoint")
        )?;
    }
    let tokens = if generator.is_stand_in() { "estimated by the stand-in" } else { "as the endpoint reports them" };
    let prices = if options.example_prices {
        "example prices (examples/prices.example.json; set LLM_PRICES to your own)"
    } else {
        "prices from LLM_PRICES"
    };
    writeln!(out, "  {:<12}tokens {tokens}, {prices}", "usage")?;
    writeln!(
        out,
        "  {:<12}#[pg_cached] namespaces \"{RETRIEVAL_NAMESPACE}\" (Retriever::retrieve) and \"{ANSWER_NAMESPACE}\" (Orchestrator::process_query)",
        "cache"
    )?;
    Ok(())
}

fn write_sample(out: &mut (dyn Write + Send), paint: &Paint, answer: Answer) -> Result<(), DemoError> {
    writeln!(out, "  {} {:?}", paint.dim.apply_to("sample answer to"), answer.question)?;
    for line in wrap(&answer.text, 96) {
        writeln!(out, "    {line}")?;
    }
    writeln!(
        out,
        "    {}",
        paint.dim.apply_to(format!(
            "model {}, sources {}, generated in {} ms",
            answer.model,
            answer.sources.join(", "),
            answer.generation_ms
        ))
    )?;
    Ok(())
}

fn write_table_header(out: &mut (dyn Write + Send)) -> std::io::Result<()> {
    writeln!(
        out,
        "  {:>2}  {:<QUERY_WIDTH$}  {:<9}  {:<6}  {:>9}  {:>8}",
        "#", "query", "retrieval", "answer", "latency", "speed-up"
    )
}

fn write_row(out: &mut (dyn Write + Send), paint: &Paint, label: &str, call: &CallRecord) -> std::io::Result<()> {
    let speedup = match call.speedup() {
        Some(x) if x >= 10.0 => format!("{x:.0}x"),
        Some(x) => format!("{x:.1}x"),
        None => "-".to_string(),
    };
    writeln!(
        out,
        "  {:>2}  {:<QUERY_WIDTH$}  {}  {}  {:>9}  {:>8}",
        label,
        truncate(&call.query, QUERY_WIDTH),
        paint.lookup(call.retrieval, 9),
        paint.lookup(call.answer, 6),
        fmt_latency(call.latency),
        speedup
    )
}

async fn write_stored_rows(
    out: &mut (dyn Write + Send),
    paint: &Paint,
    pipeline: &Orchestrator,
    query: &str,
) -> Result<(), DemoError> {
    let keys =
        [pipeline.retriever().retrieve_cache_key(query, CONTEXT_DOCUMENTS)?, pipeline.process_query_cache_key(query)?];
    writeln!(out)?;
    writeln!(out, "{}", paint.heading.apply_to("What PostgreSQL holds"))?;
    writeln!(out, "  SELECT ... FROM cache_entries WHERE cache_key = <the key of {:?}>", truncate(query, 40))?;
    for key in keys {
        let row: Option<StoredRow> = sqlx::query_as(
            "SELECT ARRAY(SELECT k FROM jsonb_object_keys(data) AS k ORDER BY k) AS fields, \
                    data->>'total_found' AS total_found, \
                    CASE WHEN jsonb_typeof(data->'results') = 'array' \
                         THEN jsonb_array_length(data->'results') END AS results, \
                    EXTRACT(EPOCH FROM expires_at - created_at)::float8 AS ttl, \
                    pg_column_size(data) AS bytes, \
                    data->>'model' AS model \
             FROM cache_entries WHERE cache_key = $1",
        )
        .bind(&key)
        .fetch_optional(demo_pool(pipeline.cache())?)
        .await?;
        let short_key = match key.split_once(':') {
            Some((ns, hash)) => format!("{ns}:{}...", &hash[..hash.len().min(12)]),
            None => key.clone(),
        };
        match row {
            None => writeln!(out, "  {short_key:<26} (no row)")?,
            Some(StoredRow { fields, total_found, results, ttl, bytes, model }) => {
                let ttl = ttl.map_or_else(|| "never".to_string(), |s| fmt_ttl(s.round() as u64));
                writeln!(out, "  {short_key:<26} ttl {ttl:<4} {bytes:>5} bytes  data keys: {}", fields.join(", "))?;
                if let (Some(total_found), Some(results)) = (total_found, results) {
                    writeln!(out, "  {:<26} results: {results} documents, total_found: {total_found}", "")?;
                }
                if let Some(model) = model {
                    writeln!(out, "  {:<26} model: {model}", "")?;
                }
            }
        }
    }
    Ok(())
}

/// What [`write_stored_rows`] reads back from one row of `cache_entries`.
#[derive(Debug, sqlx::FromRow)]
struct StoredRow {
    /// The top-level keys of `data`, sorted.
    fields: Vec<String>,
    total_found: Option<String>,
    results: Option<i32>,
    /// `expires_at - created_at`, in seconds.
    ttl: Option<f64>,
    /// `pg_column_size(data)`.
    bytes: i32,
    model: Option<String>,
}

/// What the summary says about where the savings' numbers come from.
struct SavingsBasis {
    /// The stand-in counted its own tokens (an estimate), not a model's tokenizer.
    estimated_tokens: bool,
    /// The prices are the example table's, not the user's.
    example_prices: bool,
}

fn write_stats(
    out: &mut (dyn Write + Send),
    paint: &Paint,
    namespaces: &[NamespaceSummary],
    basis: &SavingsBasis,
) -> Result<(), DemoError> {
    writeln!(out)?;
    writeln!(out, "{}", paint.heading.apply_to("Cache stats"))?;
    writeln!(
        out,
        "  {:<13}  {:>5}  {:>6}  {:>9}  {:>10}  {:>12}  {:>10}  {:>14}",
        "namespace", "hits", "misses", "hit ratio", "time saved", "tokens saved", "$ saved", "active entries"
    )?;
    let mut total = ProcessCounts::default();
    let mut active = 0;
    let line = |name: &str, counts: &ProcessCounts, active: u64| {
        let ratio = counts.hit_ratio().map_or_else(|| "-".to_string(), |r| format!("{:.1} %", r * 100.0));
        format!(
            "  {:<13}  {:>5}  {:>6}  {:>9}  {:>10}  {:>12}  {:>10}  {:>14}",
            name,
            counts.hits + counts.local_hits + counts.coalesced + counts.stale_served,
            counts.misses,
            ratio,
            fmt_latency(counts.compute_saved()),
            counts.tokens_saved,
            fmt_usd(counts.cost_saved),
            active
        )
    };
    for ns in namespaces {
        writeln!(out, "{}", line(&ns.namespace, &ns.counts, ns.active_entries))?;
        total += &ns.counts;
        active += ns.active_entries;
    }
    writeln!(out, "{}", line("total", &total, active))?;
    writeln!(
        out,
        "  saved by the cache: {} of compute, {} tokens, {}{}",
        fmt_latency(total.compute_saved()),
        total.tokens_saved,
        fmt_usd(total.cost_saved),
        match (basis.estimated_tokens, basis.example_prices) {
            (true, true) => " (tokens estimated by the stand-in, example prices)",
            (true, false) => " (tokens estimated by the stand-in)",
            (false, true) => " (example prices: set LLM_PRICES to a table of your own)",
            (false, false) => "",
        }
    )?;
    writeln!(
        out,
        "  hits and misses: counted in this process by both PgCache instances (before and after the restart);"
    )?;
    writeln!(out, "  retrieval is looked up only when an answer has to be computed")?;
    writeln!(out, "  time saved: the compute time recorded with each entry, added up over the hits that served it")?;
    writeln!(
        out,
        "  tokens and $ saved: the usage recorded with each answer (cache_runtime::usage), added up over its hits"
    )?;
    writeln!(out, "  active entries: rows of cache_entries in the namespace that have not expired")?;
    Ok(())
}

/// Micro-USD as dollars: four decimals below a dollar, cents above.
fn fmt_usd(micros: u64) -> String {
    if micros < 1_000_000 {
        format!("${:.4}", micros as f64 / 1e6)
    } else {
        format!("${:.2}", micros as f64 / 1e6)
    }
}

/// Styles, on or off.
#[derive(Debug)]
struct Paint {
    title: Style,
    heading: Style,
    dim: Style,
    warn: Style,
    hit: Style,
    miss: Style,
}

impl Paint {
    fn new(colors: bool) -> Self {
        let style = || Style::new().force_styling(colors);
        Self {
            title: style().bold(),
            heading: style().bold().underlined(),
            dim: style().dim(),
            warn: style().yellow().bold(),
            hit: style().green(),
            miss: style().yellow(),
        }
    }

    /// `lookup` padded to `width`, then coloured (padding first, so escapes do not break the columns).
    fn lookup(&self, lookup: Lookup, width: usize) -> String {
        let text = format!("{lookup:<width$}");
        match lookup {
            Lookup::Hit => self.hit.apply_to(text).to_string(),
            Lookup::Miss | Lookup::Error => self.miss.apply_to(text).to_string(),
            Lookup::NotConsulted => self.dim.apply_to(text).to_string(),
        }
    }
}

/// `812 ms`, `2.41 ms`, `6.02 s`.
pub fn fmt_latency(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// `30m`, `2h`, `1h30m`, `45s`.
fn fmt_ttl(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if value > 0 {
            let _ = write!(out, "{value}{unit}");
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// At most `max` characters, with `...` when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(3)).collect();
        cut.push_str("...");
        cut
    }
}

/// Greedy word wrap at `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_are_readable() {
        assert_eq!(fmt_latency(Duration::from_micros(2410)), "2.41 ms");
        assert_eq!(fmt_latency(Duration::from_millis(812)), "812 ms");
        assert_eq!(fmt_latency(Duration::from_millis(6020)), "6.02 s");
        assert_eq!(fmt_latency(Duration::from_secs(12)), "12.0 s");
    }

    #[test]
    fn ttls_are_compact() {
        assert_eq!(fmt_ttl(1800), "30m");
        assert_eq!(fmt_ttl(7200), "2h");
        assert_eq!(fmt_ttl(5400), "1h30m");
        assert_eq!(fmt_ttl(0), "0s");
    }

    #[test]
    fn truncate_and_wrap() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a longer question", 10), "a longe...");
        assert_eq!(wrap("one two three four", 9), vec!["one two", "three", "four"]);
        assert!(wrap("", 9).is_empty());
    }

    #[test]
    fn speedup_is_baseline_over_latency() {
        let call = CallRecord {
            query: "q".into(),
            retrieval: Lookup::NotConsulted,
            answer: Lookup::Hit,
            latency: Duration::from_millis(2),
            baseline: Some(Duration::from_millis(800)),
            outcome: None,
        };
        assert_eq!(call.speedup(), Some(400.0));
        assert_eq!(CallRecord { baseline: None, ..call }.speedup(), None);
    }

    #[test]
    fn uncoloured_lookups_keep_their_width() {
        let paint = Paint::new(false);
        assert_eq!(paint.lookup(Lookup::Hit, 6), "hit   ");
        assert_eq!(paint.lookup(Lookup::NotConsulted, 9), "-        ");
    }
}
