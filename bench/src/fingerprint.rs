//! Fingerprinting alone: `cache_key!` on small and 1 KB arguments, in nanoseconds per call.

use crate::data::{Payload, Retrieval};
use crate::harness::ns_per_call;
use cache_runtime::cache_key;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::hint::black_box;
use std::time::Duration;

/// One fingerprinting figure.
#[derive(Debug, Clone, Serialize)]
pub struct FingerprintRow {
    /// What was fingerprinted.
    pub case: &'static str,
    /// Bytes of argument data.
    pub argument_bytes: usize,
    /// Median nanoseconds per call.
    pub ns_per_call: f64,
}

/// Measures every case for about `budget` each.
pub fn measure(budget: Duration) -> Vec<FingerprintRow> {
    let rounds = 5;
    let query = String::from("rust async runtime");
    let text_1k: String = "lorem ipsum dolor sit amet ".repeat(40).chars().take(1024).collect();
    let retrieval = Retrieval::sample(1);
    let retrieval_bytes = serde_json::to_string(&retrieval).map(|s| s.len()).unwrap_or(0);
    let mut rows = Vec::new();
    let mut row = |case, argument_bytes, ns| {
        eprintln!("[fingerprint] {case}: {ns:.0} ns/call");
        rows.push(FingerprintRow { case, argument_bytes, ns_per_call: ns });
    };

    let ns = ns_per_call(budget, rounds, || {
        black_box(cache_key!("retrieval", black_box(query.as_str()), black_box(5u32)));
    });
    row("cache_key!(\"retrieval\", short &str, u32)", query.len() + 4, ns);

    let ns = ns_per_call(budget, rounds, || {
        black_box(cache_key!("retrieval", black_box(&retrieval)));
    });
    row("cache_key!(\"retrieval\", 1 KB struct: 5 documents)", retrieval_bytes, ns);

    let ns = ns_per_call(budget, rounds, || {
        black_box(cache_key!("retrieval", black_box(text_1k.as_str())));
    });
    row("cache_key!(\"retrieval\", 1 KB &str)", text_1k.len(), ns);

    // The floor: SHA-256 alone over the same number of bytes.
    let ns = ns_per_call(budget, rounds, || {
        black_box(Sha256::digest(black_box(text_1k.as_bytes())));
    });
    row("reference: SHA-256 of 1 KB, no encoding", text_1k.len(), ns);
    rows
}
