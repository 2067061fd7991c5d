//! The RAG demo: retrieval and answers memoized with `#[pg_cached]`, misses turning into hits.
//!
//! ```sh
//! scripts/demo                                  # finds or starts PostgreSQL, then runs this
//! scripts/demo "What is MVCC?" "Why VACUUM?"    # your own questions
//! scripts/demo --metrics                        # also print the Prometheus scrape of the cache's metrics
//! DATABASE_URL=postgres://... cargo run --release -p examples --example rag_demo
//! ```
//!
//! Answers come from a local, clearly labelled stand-in generator unless `LLM_BASE_URL` is set (then from an
//! OpenAI-compatible endpoint; see `examples::generate`). What the demo does is described in `examples::demo`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use cache_runtime::PgCache;
use examples::demo::{self, DemoOptions, DEMO_RETRIEVAL_LATENCY};
use examples::prices::PriceTable;
use examples::{AnswerGenerator, LocalGenerator, OpenAiCompatibleGenerator, OpenAiConfig, RetrievalEngine};

const USAGE: &str = "\
usage: rag_demo [--no-progress] [--metrics] [QUESTION ...]

Answers each QUESTION (or seven built-in ones) three times through a retrieval engine and an answer
generator memoized in PostgreSQL, then shows invalidation and the cache's stats; last, with an embedding
model, asks paraphrases and look-alikes of the built-in questions and shows which were answered by
meaning. --metrics prints, at the end, what a Prometheus server would scrape (cache-runtime's `metrics`
feature, rendered by metrics-exporter-prometheus).

environment:
  DATABASE_URL    the PostgreSQL to cache in (scripts/demo sets it)
  LLM_BASE_URL    use an OpenAI-compatible endpoint instead of the local stand-in generator;
                  with LLM_API_KEY, LLM_MODEL, LLM_TIMEOUT_SECS
  PG_CACHED_MODEL_DIR  the embedding model of the semantic pass (default: target/models/all-MiniLM-L6-v2,
                  where scripts/fetch-model puts it); EMBEDDINGS_BASE_URL for an embeddings endpoint
  RUST_LOG        log filter (default: warn)";

#[tokio::main]
async fn main() -> ExitCode {
    let mut progress = true;
    let mut metrics = false;
    let mut queries = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--no-progress" => progress = false,
            "--metrics" => metrics = true,
            flag if flag.starts_with('-') && flag.len() > 1 => {
                eprintln!("unknown option {flag:?}\n\n{USAGE}");
                return ExitCode::from(2);
            }
            query => queries.push(query.to_string()),
        }
    }

    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();

    let (generator, generator_endpoint): (Arc<dyn AnswerGenerator>, Option<String>) = match OpenAiConfig::from_env() {
        Ok(None) => (Arc::new(LocalGenerator::new()), None),
        Ok(Some(config)) => match OpenAiCompatibleGenerator::new(config) {
            Ok(generator) => {
                let endpoint = generator.endpoint().to_string();
                (Arc::new(generator), Some(endpoint))
            }
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        },
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };

    let engine = Arc::new(RetrievalEngine::from_bundled_corpus().with_latency(DEMO_RETRIEVAL_LATENCY));
    let mut options = DemoOptions::new(engine, generator);
    options.generator_endpoint = generator_endpoint;
    if !queries.is_empty() {
        options.queries = queries;
    }
    options.progress = progress;
    match PriceTable::from_env() {
        Ok((prices, example)) => (options.prices, options.example_prices) = (prices, example),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    }
    options.colors = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();

    // A service would serve this on /metrics (the exporter's `http-listener` feature); the demo prints it.
    let scrape = if metrics {
        match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(error) => {
                eprintln!("error: cannot install the Prometheus recorder: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };

    let mut stdout = std::io::stdout();
    let (engine, generator) = (Arc::clone(&options.engine), Arc::clone(&options.generator));
    match demo::run(options, PgCache::from_env, &mut stdout).await {
        Ok(_) => {
            if let Err(error) = semantic_pass(engine, generator, &mut stdout).await {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
            if let Some(handle) = scrape {
                println!("\n# The Prometheus scrape of this run (cache-runtime feature `metrics`):\n");
                print!("{}", handle.render());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            if matches!(error, demo::DemoError::Cache(_)) {
                eprintln!("(is DATABASE_URL set to a reachable PostgreSQL? scripts/demo finds or starts one for you)");
            }
            ExitCode::FAILURE
        }
    }
}

/// The semantic pass (`examples::semantic`), with the embedder the environment gives
/// (`scripts/fetch-model`'s model, or `EMBEDDINGS_BASE_URL`), or a line saying why it is skipped.
async fn semantic_pass(
    engine: Arc<RetrievalEngine>,
    generator: Arc<dyn AnswerGenerator>,
    out: &mut std::io::Stdout,
) -> Result<(), demo::DemoError> {
    let Some(embedder) = cache_runtime::semantic::embedder_from_env().await else {
        println!("\nSemantic pass skipped: no embedding model (run scripts/fetch-model, or set EMBEDDINGS_BASE_URL)");
        return Ok(());
    };
    let cache = PgCache::builder_from_env()?.embedder(embedder).build().await?;
    examples::semantic::run(&cache, engine, generator, out).await.map(drop)
}
