//! `semantic_eval`: how often a semantic cache built on an embedding model serves the right answer to a
//! paraphrased question, and how often a wrong one, at every threshold from 0.50 to 0.99: the measurement
//! behind the default threshold and the guard (docs/SEMANTIC.md).
//!
//! Two data sets (../shared/data/semantic):
//! - `gptcache-paraphrase-pairs.json`: every `stored` text is cached, every `asked` text looked up; the
//!   right answer is its own pair's, any other pair's is wrong.
//! - `qqp-dev-pairs.json` (Quora, human labels, half of them hard negatives): the same, and a hit on a pair
//!   labelled `duplicate: false` is a wrong answer too.
//!
//! A lookup is an exact cosine search over all cached texts (this is about the model and the threshold, not
//! the index): the best-scoring cached text is served if it scores at or above the threshold and, with the
//! guard, if the guard accepts it (a refusal is a miss: the next candidate is less alike still). A cached
//! text identical to the asked one is always right (a real cache serves it by its exact key). Quora is also
//! scored pair by pair (each asked text against its own stored text only), as its labels were made.
//!
//! ```sh
//! scripts/fetch-model
//! cargo run --release -p bench --bin semantic_eval -- --csv docs/semantic/curve.csv --examples 0.80
//! ```

use cache_runtime::semantic::{cosine, default_model_dir, guard, Embedder, MiniLm};
use cache_runtime::test_support::ScopeProbe;
use clap::Parser;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Hit and wrong-hit rates over thresholds, with and without the guard.
#[derive(Debug, Parser)]
#[command(name = "semantic_eval")]
struct Cli {
    /// The model directory (default: $PG_CACHED_MODEL_DIR, else target/models/all-MiniLM-L6-v2).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// The directory of the two data sets.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/semantic"))]
    data: PathBuf,
    /// Writes every threshold's figures here as CSV (for the plot).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Prints the wrong hits (and the guard's refusals) at this threshold.
    #[arg(long)]
    examples: Option<f32>,
    /// Thresholds printed in the tables (the CSV has every step of 0.01).
    #[arg(long, value_delimiter = ',', default_value = "0.60,0.70,0.75,0.78,0.80,0.82,0.85,0.88,0.90,0.95")]
    show: Vec<f32>,
}

#[derive(Debug, Deserialize)]
struct Pair {
    stored: String,
    asked: String,
    #[serde(default = "yes")]
    duplicate: bool,
}

fn yes() -> bool {
    true
}

/// One asked question and the cached texts it scores highest against, best first.
#[derive(Debug)]
struct Query {
    asked: String,
    /// The entry (index into the unique stored texts) whose answer is right, if any.
    right: Option<usize>,
    /// The pair's own stored text and its score, whatever the label.
    own: (usize, f32),
    candidates: Vec<(usize, f32)>,
}

/// What a data set's lookups give at one threshold.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    asked: usize,
    /// Pairs whose own answer is the right one (every pair but Quora's non-duplicates).
    answerable: usize,
    right: usize,
    wrong: usize,
}

impl Tally {
    fn hit_rate(&self) -> f64 {
        pct(self.right, self.answerable)
    }
    fn wrong_of_asked(&self) -> f64 {
        pct(self.wrong, self.asked)
    }
    fn wrong_of_hits(&self) -> f64 {
        pct(self.wrong, self.right + self.wrong)
    }
}

fn pct(n: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

/// A way of counting right and wrong hits at a threshold, with or without the guard.
type Tallier = fn(&[Query], &[String], f32, bool) -> Tally;

/// Candidates kept per query (for the examples).
const CANDIDATES: usize = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("semantic_eval: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let dir = cli.model_dir.clone().unwrap_or_else(default_model_dir);
    let model = MiniLm::from_dir(&dir)?;
    println!("model: {} ({})", model.model_id(), dir.display());
    let thresholds: Vec<f32> = (50..=99).map(|t| t as f32 / 100.0).collect();
    let mut csv = String::from("dataset,threshold,guard,hit_rate,wrong_of_asked,wrong_of_hits,right,wrong,asked\n");
    for name in ["gptcache-paraphrase-pairs.json", "qqp-dev-pairs.json"] {
        let pairs: Vec<Pair> = serde_json::from_str(&std::fs::read_to_string(cli.data.join(name))?)?;
        let (entries, queries) = search(&model, &pairs).await?;
        let mut modes: Vec<(&str, Tallier)> = vec![("all cached texts", tally)];
        if name.starts_with("qqp") {
            modes.push(("pair by pair", tally_pairwise));
        }
        for (mode, count) in modes {
            println!("\n## {name}, {mode}: {} pairs, {} distinct cached texts", pairs.len(), entries.len());
            println!("| threshold | hits | wrong (of asked) | wrong (of hits) | hits, guard | wrong (of asked), guard | wrong (of hits), guard |");
            println!("|---|---|---|---|---|---|---|");
            for &t in &thresholds {
                let plain = count(&queries, &entries, t, false);
                let guarded = count(&queries, &entries, t, true);
                for (label, r) in [("off", plain), ("on", guarded)] {
                    writeln!(
                        csv,
                        "{name} ({mode}),{t:.2},{label},{:.3},{:.3},{:.3},{},{},{}",
                        r.hit_rate(),
                        r.wrong_of_asked(),
                        r.wrong_of_hits(),
                        r.right,
                        r.wrong,
                        r.asked
                    )?;
                }
                if cli.show.iter().any(|s| (s - t).abs() < 1e-4) {
                    println!(
                        "| {t:.2} | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {:.1} % |",
                        plain.hit_rate(),
                        plain.wrong_of_asked(),
                        plain.wrong_of_hits(),
                        guarded.hit_rate(),
                        guarded.wrong_of_asked(),
                        guarded.wrong_of_hits()
                    );
                }
            }
        }
        if let Some(t) = cli.examples {
            print_examples(&queries, &entries, t);
        }
    }
    if let Some(path) = &cli.csv {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, csv)?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

/// Embeds the data set and finds each asked text's best candidates among the distinct stored texts.
async fn search(model: &MiniLm, pairs: &[Pair]) -> Result<(Vec<String>, Vec<Query>), Box<dyn std::error::Error>> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut entries: Vec<String> = Vec::new();
    for pair in pairs {
        index.entry(pair.stored.as_str()).or_insert_with(|| {
            entries.push(pair.stored.clone());
            entries.len() - 1
        });
    }
    let stored = embed_all(model, &entries).await;
    let asked_texts: Vec<String> = pairs.iter().map(|p| p.asked.clone()).collect();
    let asked = embed_all(model, &asked_texts).await;
    let too_long = stored.iter().chain(&asked).filter(|v| v.is_none()).count();
    if too_long > 0 {
        println!("{too_long} texts are longer than the model's window: never matched by meaning");
    }
    report_first_pass(&stored, &asked);
    let queries = pairs
        .iter()
        .zip(&asked)
        .map(|(pair, vector)| {
            let score = |s: &Option<Vec<f32>>| match (vector, s) {
                (Some(a), Some(b)) => cosine(a, b),
                _ => -1.0,
            };
            let mut scored: Vec<(usize, f32)> = stored.iter().enumerate().map(|(i, s)| (i, score(s))).collect();
            let own = index[pair.stored.as_str()];
            let own = (own, scored[own].1);
            scored.sort_by(|a, b| b.1.total_cmp(&a.1));
            scored.truncate(CANDIDATES);
            Query { asked: pair.asked.clone(), right: pair.duplicate.then_some(own.0), own, candidates: scored }
        })
        .collect();
    Ok((entries, queries))
}

/// How much of a scope of these texts the semantic search's int4 first pass leaves to be scored exactly, at
/// the default threshold: the cost of its error bound on the model's own vectors.
fn report_first_pass(stored: &[Option<Vec<f32>>], asked: &[Option<Vec<f32>>]) {
    let stored: Vec<Vec<f32>> = stored.iter().flatten().cloned().collect();
    let probe = ScopeProbe::new(&stored);
    let threshold = cache_runtime::DEFAULT_SIMILARITY_THRESHOLD;
    let kept: Vec<usize> = asked.iter().flatten().map(|query| probe.exact_pass_size(query, threshold)).collect();
    let (total, most) = (kept.iter().sum::<usize>(), kept.iter().copied().max().unwrap_or(0));
    let mean = total as f64 / kept.len().max(1) as f64;
    println!(
        "first pass at threshold {threshold}: {mean:.1} of {} stored vectors scored exactly per lookup ({:.2} %), \
         at most {most}",
        stored.len(),
        pct(total, kept.len() * stored.len())
    );
}

/// The vectors of `texts`; `None` for a text longer than the model's window, which a cache cannot match by
/// meaning (it is neither stored with a vector nor looked up by one).
async fn embed_all(model: &MiniLm, texts: &[String]) -> Vec<Option<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        match model.embed(&refs).await {
            Ok(vectors) => out.extend(vectors.into_iter().map(Some)),
            // One text of the batch is too long: embed them one by one.
            Err(_) => {
                for text in &refs {
                    out.push(model.embed(&[text]).await.ok().map(|mut v| v.remove(0)));
                }
            }
        }
    }
    out
}

/// The entry served for `query` at threshold `t`: the best candidate if it scores `t` or more and (with the
/// guard) the guard accepts it.
fn served(query: &Query, entries: &[String], t: f32, use_guard: bool) -> Option<usize> {
    let &(entry, score) = query.candidates.first()?;
    (score >= t && (!use_guard || guard::accepts(&query.asked, &entries[entry]))).then_some(entry)
}

/// Pair by pair: each asked text against its own stored text only; a hit is right if the pair is labelled
/// a duplicate.
fn tally_pairwise(queries: &[Query], entries: &[String], t: f32, use_guard: bool) -> Tally {
    let mut tally = Tally { asked: queries.len(), ..Tally::default() };
    for query in queries {
        tally.answerable += usize::from(query.right.is_some());
        let (entry, score) = query.own;
        if score >= t && (!use_guard || guard::accepts(&query.asked, &entries[entry])) {
            if query.right.is_some() {
                tally.right += 1;
            } else {
                tally.wrong += 1;
            }
        }
    }
    tally
}

fn tally(queries: &[Query], entries: &[String], t: f32, use_guard: bool) -> Tally {
    let mut tally = Tally { asked: queries.len(), ..Tally::default() };
    for query in queries {
        tally.answerable += usize::from(query.right.is_some());
        if let Some(entry) = served(query, entries, t, use_guard) {
            if Some(entry) == query.right || entries[entry] == query.asked {
                tally.right += 1;
            } else {
                tally.wrong += 1;
            }
        }
    }
    tally
}

fn print_examples(queries: &[Query], entries: &[String], t: f32) {
    println!("\nwrong hits at {t:.2} (score, asked -> served; [guard: ...] when the guard refuses it):");
    for query in queries {
        let Some(entry) = served(query, entries, t, false) else { continue };
        if Some(entry) == query.right || entries[entry] == query.asked {
            continue;
        }
        let score = query.candidates.iter().find(|c| c.0 == entry).map_or(0.0, |c| c.1);
        let verdict = match guard::check(&query.asked, &entries[entry]) {
            Ok(()) => String::new(),
            Err(why) => format!(" [guard: {why}]"),
        };
        println!("- {score:.3} {:?} -> {:?}{verdict}", query.asked, entries[entry]);
    }
    println!("\nright hits the guard refuses at {t:.2}:");
    for query in queries {
        let Some(entry) = served(query, entries, t, false) else { continue };
        if Some(entry) != query.right {
            continue;
        }
        let score = query.candidates.iter().find(|c| c.0 == entry).map_or(0.0, |c| c.1);
        if let Err(why) = guard::check(&query.asked, &entries[entry]) {
            println!("- {score:.3} {:?} -> {:?} [guard: {why}]", query.asked, entries[entry]);
        }
    }
}
