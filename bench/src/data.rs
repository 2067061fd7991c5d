//! The data set: cached values shaped like what services cache (a retrieval result of five documents, about
//! 1 KB of JSON; an LLM answer with citations, about 10 KB), their keys, and a small deterministic PRNG.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// SplitMix64: fast, deterministic, good enough to pick keys and words.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A number in `[0, 1)`, with at most 4 decimals (JSONB stores numbers as `numeric`).
    fn unit(&mut self) -> f64 {
        self.below(10_000) as f64 / 10_000.0
    }
}

const WORDS: &[&str] = &[
    "postgres",
    "cache",
    "index",
    "vacuum",
    "tuple",
    "query",
    "planner",
    "async",
    "runtime",
    "latency",
    "replica",
    "snapshot",
    "isolation",
    "commit",
    "durable",
    "buffer",
    "page",
    "heap",
    "btree",
    "jsonb",
    "retrieval",
    "vector",
    "embedding",
    "ranking",
    "fusion",
    "document",
    "token",
    "answer",
    "model",
    "context",
    "window",
    "throughput",
    "memory",
    "network",
    "socket",
    "thread",
    "future",
    "executor",
    "lock",
    "contention",
    "write",
    "read",
    "merge",
    "segment",
    "shard",
    "partition",
    "schema",
    "column",
    "row",
    "table",
    "statement",
    "prepared",
    "protocol",
    "result",
    "stream",
    "batch",
    "pipeline",
    "timeout",
    "retry",
    "expiry",
    "eviction",
];

fn words(rng: &mut Rng, min_chars: usize) -> String {
    let mut text = String::with_capacity(min_chars + 16);
    while text.len() < min_chars {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    text
}

/// A value type of the data set.
pub trait Payload: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The deterministic value of entry `id`.
    fn sample(id: u64) -> Self;
}

/// One ranked document of a retrieval result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredDocument {
    /// Document id.
    pub id: String,
    /// Title.
    pub title: String,
    /// The best-matching sentence.
    pub snippet: String,
    /// Fused score.
    pub score: f64,
    /// BM25 score.
    pub bm25: f64,
    /// Cosine similarity.
    pub vector: f64,
}

/// A retrieval result with five documents: about 1 KB of JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retrieval {
    /// The query.
    pub query: String,
    /// How many documents matched.
    pub total_found: u32,
    /// Search time.
    pub took_ms: f64,
    /// The top five.
    pub documents: Vec<ScoredDocument>,
}

impl Payload for Retrieval {
    fn sample(id: u64) -> Retrieval {
        let mut rng = Rng::new(id ^ 0x5EED_0001);
        let documents = (0..5)
            .map(|rank| ScoredDocument {
                id: format!("doc-{:06}", rng.below(1_000_000)),
                title: words(&mut rng, 22),
                snippet: words(&mut rng, 64),
                score: 0.5 / f64::from(rank + 1) + rng.unit() / 100.0,
                bm25: 1.0 + rng.unit() * 9.0,
                vector: rng.unit(),
            })
            .collect();
        Retrieval {
            query: words(&mut rng, 24),
            total_found: 5 + rng.below(500) as u32,
            took_ms: rng.unit() * 40.0,
            documents,
        }
    }
}

/// A citation of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Citation {
    /// Document id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Where it is.
    pub url: String,
}

/// Token counts of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Completion tokens.
    pub completion_tokens: u32,
}

/// An LLM answer with citations: about 10 KB of JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The question.
    pub question: String,
    /// The model that answered.
    pub model: String,
    /// The answer text.
    pub answer: String,
    /// Sources.
    pub citations: Vec<Citation>,
    /// Token counts.
    pub usage: Usage,
}

impl Payload for Answer {
    fn sample(id: u64) -> Answer {
        let mut rng = Rng::new(id ^ 0x5EED_0002);
        let citations = (0..5)
            .map(|_| {
                let doc = rng.below(1_000_000);
                Citation {
                    id: format!("doc-{doc:06}"),
                    title: words(&mut rng, 32),
                    url: format!("https://docs.example.invalid/d/{doc:06}"),
                }
            })
            .collect();
        Answer {
            question: words(&mut rng, 60),
            model: "example-model-2025".to_owned(),
            answer: words(&mut rng, 9_350),
            citations,
            usage: Usage {
                prompt_tokens: 1_000 + rng.below(3_000) as u32,
                completion_tokens: 2_000 + rng.below(500) as u32,
            },
        }
    }
}

/// Length of every key of the data set.
pub const KEY_CHARS: usize = 19;

/// The two value sizes measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Size {
    /// [`Retrieval`], about 1 KB.
    #[serde(rename = "1KB")]
    K1,
    /// [`Answer`], about 10 KB.
    #[serde(rename = "10KB")]
    K10,
}

impl Size {
    /// Short label.
    pub fn label(self) -> &'static str {
        match self {
            Size::K1 => "1KB",
            Size::K10 => "10KB",
        }
    }

    /// The namespace of this size's keys.
    pub fn namespace(self) -> &'static str {
        match self {
            Size::K1 => "retrieval",
            Size::K10 => "answer",
        }
    }

    /// The key of entry `id`, as the Rust clients (PgCache, sqlx, Redis) use it: `namespace:` and the id,
    /// zero-padded to 19 characters in all.
    pub fn key(self, id: u64) -> String {
        let ns = self.namespace();
        format!("{ns}:{id:0width$}", width = KEY_CHARS - ns.len() - 1)
    }

    /// pgbench's keys are `base + id`: 19 decimal digits, the same length as [`key`](Self::key).
    ///
    /// pgbench variables are numbers, so it cannot build `namespace:id` itself; it reads and writes a mirror
    /// of the data set under these keys (same values, same table), through the very statement the runtime
    /// prepares (`\set k <base> + random(1, n)`).
    pub fn pgbench_key_base(self) -> u64 {
        match self {
            Size::K1 => 1_000_000_000_000_000_000,
            Size::K10 => 2_000_000_000_000_000_000,
        }
    }

    /// The pgbench mirror key of entry `id`.
    pub fn pgbench_key(self, id: u64) -> String {
        (self.pgbench_key_base() + id).to_string()
    }

    /// The JSON of entry `id`, as the runtime's codec writes it.
    pub fn json(self, id: u64) -> String {
        let json = match self {
            Size::K1 => serde_json::to_string(&Retrieval::sample(id)),
            Size::K10 => serde_json::to_string(&Answer::sample(id)),
        };
        json.expect("sample values serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_as_advertised() {
        for id in [1, 2, 99_999] {
            let small = Size::K1.json(id).len();
            let large = Size::K10.json(id).len();
            assert!((900..=1100).contains(&small), "1 KB value is {small} bytes");
            assert!((9_800..=10_600).contains(&large), "10 KB value is {large} bytes");
        }
        assert_eq!(Retrieval::sample(7), Retrieval::sample(7));
        assert_ne!(Retrieval::sample(7), Retrieval::sample(8));
        assert_eq!(Size::K1.key(12), "retrieval:000000012");
        assert_eq!(Size::K10.key(10_000), "answer:000000010000");
        assert_eq!(Size::K1.pgbench_key(12).len(), KEY_CHARS);
        assert_eq!(Size::K10.pgbench_key(10_000).len(), KEY_CHARS);
    }
}
