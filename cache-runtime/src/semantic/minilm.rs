//! [`MiniLm`]: all-MiniLM-L6-v2 (or another BERT sentence-transformer of its shape) loaded from a directory
//! and run on the CPU, in this process, by a thread of its own.
//!
//! Inference is CPU work of milliseconds, so it must not run on the async runtime's worker threads. One
//! dedicated thread owns the model and takes requests from a queue; whatever has queued up while it was busy
//! is embedded as one batch, so a burst of callers costs one pass over the weights per batch rather than one
//! per caller, and the embedder never runs more than one pass at a time however many tasks call it.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;
use tokio::sync::oneshot;

use super::bert::{Bert, BertConfig};
use super::{EmbedFuture, Embedder};
use crate::CacheError;

/// Names of weights this crate knows by their SHA-256, for a readable [`Embedder::model_id`].
const KNOWN_WEIGHTS: &[(&str, &str)] =
    &[("53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", "all-MiniLM-L6-v2")];

/// A batch stops growing at this many tokens, which bounds the memory of one pass (about 6 KiB of
/// activations per token for all-MiniLM-L6-v2).
const MAX_BATCH_TOKENS: usize = 4096;

/// A sentence-embedding model (all-MiniLM-L6-v2 by default: `scripts/fetch-model` installs it) run on the
/// CPU in pure Rust.
///
/// Cheap to clone: clones share one model and one inference thread, which stops when the last clone is
/// dropped. Vectors are the mean of the last layer's token states, L2-normalized, as sentence-transformers
/// computes them; docs/SEMANTIC.md has the reference check, the latency, and how well they separate
/// paraphrases from look-alikes.
///
/// A text longer than the model's window (256 tokens for all-MiniLM-L6-v2, about 190 words) is an error,
/// not truncated: two long texts that differ only after the window would otherwise get the same vector.
#[derive(Clone)]
pub struct MiniLm {
    shared: Arc<Shared>,
}

struct Shared {
    model_id: String,
    dimensions: usize,
    max_tokens: usize,
    jobs: mpsc::Sender<Job>,
}

impl fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MiniLm")
            .field("model_id", &self.shared.model_id)
            .field("dimensions", &self.shared.dimensions)
            .field("max_tokens", &self.shared.max_tokens)
            .finish_non_exhaustive()
    }
}

/// Texts to embed and where to send their vectors.
struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, CacheError>>,
}

/// `sentence_bert_config.json`: the window sentence-transformers embeds with.
#[derive(Deserialize)]
struct SentenceConfig {
    max_seq_length: Option<usize>,
}

/// `1_Pooling/config.json`: only mean pooling is implemented, so anything else is refused.
#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

fn embedding_error(reason: impl Into<String>) -> CacheError {
    CacheError::Embedding { reason: reason.into() }
}

impl MiniLm {
    /// Loads the model in `dir`: `config.json`, `tokenizer.json` and `model.safetensors` (F32 weights of a
    /// BERT encoder), and sentence-transformers' `sentence_bert_config.json` (the window) and
    /// `1_Pooling/config.json` (must say mean pooling) when present. Reads the ~90 MB of weights and hashes
    /// them for [`Embedder::model_id`], which takes a fraction of a second: call it once, at startup, and
    /// not on an async worker thread.
    ///
    /// Errors are [`CacheError::Embedding`], saying which file is missing or what is wrong with it.
    pub fn from_dir(dir: &Path) -> Result<MiniLm, CacheError> {
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| embedding_error(format!("{}: {e}", dir.join(name).display())))
        };
        let config_bytes = read("config.json")?;
        let config = BertConfig::from_json(&config_bytes).map_err(embedding_error)?;
        check_pooling(dir)?;
        let max_tokens = window(dir)?.unwrap_or(config.max_position_embeddings).min(config.max_position_embeddings);
        let tokenizer_bytes = read("tokenizer.json")?;
        let mut tokenizer = Tokenizer::from_bytes(&tokenizer_bytes)
            .map_err(|e| embedding_error(format!("{}: {e}", dir.join("tokenizer.json").display())))?;
        // Lengths are checked, not truncated (see the type's docs); padding is not needed with packed batches.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| embedding_error(e.to_string()))?;
        let weights = read("model.safetensors")?;
        let model_id = model_id(&config, max_tokens, [&config_bytes, &tokenizer_bytes, &weights]);
        let bert = Bert::load(config, &weights).map_err(|e| embedding_error(format!("model.safetensors: {e}")))?;
        drop(weights);
        let dimensions = bert.dimensions();
        let (jobs, queue) = mpsc::channel();
        let worker = Worker { bert, tokenizer, max_tokens };
        std::thread::Builder::new()
            .name("pg-cached-embedder".into())
            .spawn(move || worker.run(queue))
            .map_err(|e| embedding_error(format!("cannot start the embedding thread: {e}")))?;
        Ok(MiniLm { shared: Arc::new(Shared { model_id, dimensions, max_tokens, jobs }) })
    }

    /// The longest text the model reads, in tokens (special tokens included).
    pub fn max_tokens(&self) -> usize {
        self.shared.max_tokens
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, CacheError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|e| embedding_error(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(embedding_error(format!("{}: {e}", path.display()))),
    }
}

fn window(dir: &Path) -> Result<Option<usize>, CacheError> {
    let config: Option<SentenceConfig> = read_json(&dir.join("sentence_bert_config.json"))?;
    Ok(config.and_then(|c| c.max_seq_length).filter(|&n| n > 0))
}

fn check_pooling(dir: &Path) -> Result<(), CacheError> {
    let path = dir.join("1_Pooling/config.json");
    match read_json::<PoolingConfig>(&path)? {
        Some(p)
            if !p.pooling_mode_mean_tokens
                || p.pooling_mode_cls_token
                || p.pooling_mode_max_tokens
                || p.pooling_mode_mean_sqrt_len_tokens =>
        {
            Err(embedding_error(format!("{}: only mean pooling is supported", path.display())))
        }
        // sentence-transformers pools by the mean when a model has no pooling configuration.
        _ => Ok(()),
    }
}

/// `<name>@<hash>`: the hash covers everything the vectors depend on (weights, tokenizer, configuration,
/// window), so a changed model never shares entries with the old one; the name is for people.
fn model_id(config: &BertConfig, max_tokens: usize, [config_json, tokenizer_json, weights]: [&[u8]; 3]) -> String {
    // The weights are hashed once (90 MB); the id hashes their digest with the small files.
    let weights_sha = hex(&Sha256::digest(weights));
    let name = KNOWN_WEIGHTS.iter().find(|(sha, _)| *sha == weights_sha).map_or_else(
        || format!("bert-L{}-H{}", config.num_hidden_layers, config.hidden_size),
        |(_, name)| (*name).to_owned(),
    );
    let mut all = Sha256::new();
    for part in [config_json, tokenizer_json, weights_sha.as_bytes()] {
        all.update((part.len() as u64).to_le_bytes());
        all.update(part);
    }
    all.update((max_tokens as u64).to_le_bytes());
    format!("{name}@{}", &hex(&all.finalize())[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Embedder for MiniLm {
    fn model_id(&self) -> &str {
        &self.shared.model_id
    }

    fn dimensions(&self) -> usize {
        self.shared.dimensions
    }

    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
        let texts: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
        Box::pin(async move {
            if texts.is_empty() {
                return Ok(Vec::new());
            }
            let (reply, answer) = oneshot::channel();
            let stopped = || embedding_error("the embedding thread has stopped");
            self.shared.jobs.send(Job { texts, reply }).map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        })
    }
}

/// The inference thread's state.
struct Worker {
    bert: Bert,
    tokenizer: Tokenizer,
    max_tokens: usize,
}

impl Worker {
    /// Serves jobs until every [`MiniLm`] clone is dropped.
    fn run(self, queue: mpsc::Receiver<Job>) {
        while let Ok(first) = queue.recv() {
            let mut jobs = vec![first];
            jobs.extend(queue.try_iter());
            self.serve(jobs);
        }
    }

    /// Tokenizes every job, embeds the well-formed ones together, and answers each.
    fn serve(&self, jobs: Vec<Job>) {
        let mut pending: Vec<(Job, Vec<Vec<u32>>)> = Vec::with_capacity(jobs.len());
        for job in jobs {
            match self.tokenize(&job.texts) {
                Ok(ids) => pending.push((job, ids)),
                Err(e) => drop(job.reply.send(Err(e))),
            }
        }
        let all: Vec<&Vec<u32>> = pending.iter().flat_map(|(_, ids)| ids).collect();
        let mut vectors = match self.embed_all(&all) {
            Ok(vectors) => vectors.into_iter(),
            Err(e) => {
                for (job, _) in pending {
                    drop(job.reply.send(Err(embedding_error(e.clone()))));
                }
                return;
            }
        };
        for (job, ids) in pending {
            // A caller that gave up has dropped its receiver: nothing to do.
            drop(job.reply.send(Ok(vectors.by_ref().take(ids.len()).collect())));
        }
    }

    fn tokenize(&self, texts: &[String]) -> Result<Vec<Vec<u32>>, CacheError> {
        texts
            .iter()
            .map(|text| {
                let encoding = self
                    .tokenizer
                    .encode(text.as_str(), true)
                    .map_err(|e| embedding_error(format!("tokenizing failed: {e}")))?;
                let ids = encoding.get_ids();
                if ids.len() > self.max_tokens {
                    return Err(embedding_error(format!(
                        "a text of {} tokens is longer than the {} tokens the model reads",
                        ids.len(),
                        self.max_tokens
                    )));
                }
                Ok(ids.to_vec())
            })
            .collect()
    }

    /// Runs the model over `sequences` in passes of at most [`MAX_BATCH_TOKENS`] tokens, the vectors in
    /// the order of `sequences`. A panic inside the model is caught and reported, so the thread lives on.
    fn embed_all(&self, sequences: &[&Vec<u32>]) -> Result<Vec<Vec<f32>>, String> {
        let mut vectors = Vec::with_capacity(sequences.len());
        let mut rest = sequences;
        while !rest.is_empty() {
            let mut tokens = 0;
            let take = rest
                .iter()
                .take_while(|ids| {
                    tokens += ids.len();
                    tokens <= MAX_BATCH_TOKENS
                })
                .count()
                .max(1);
            let (batch, tail) = rest.split_at(take);
            let pass = catch_unwind(AssertUnwindSafe(|| self.bert.embed(batch)))
                .unwrap_or_else(|_| Err("the model panicked".to_owned()))?;
            vectors.extend(pass);
            rest = tail;
        }
        Ok(vectors)
    }
}
