//! The vectors of semantic entries, held in this process per scope, so that finding the nearest stored text
//! costs a scan of memory rather than of the table.
//!
//! PostgreSQL stays the source of truth (`cache_semantic`, migration 0009); this is only where candidates
//! come from. Two things keep it honest:
//!
//! - **Nothing added elsewhere is missed for long.** Before each search the scope catches up with the rows
//!   written since its last look (by transaction id: see the migration), so a vector another process stored
//!   is found by the next lookup here. Callers waiting on one scope share one catch-up (see [`Catchup`]).
//! - **Nothing removed is served.** A candidate is only a key: the caller reads the entry by that key, which
//!   checks expiry and sees every invalidation, and drops the vector here when the entry is gone. Vectors of
//!   entries removed that never come up as candidates stay until the scope is dropped: a scope unused for
//!   [`SCOPE_IDLE`] is, and so is one held for [`SCOPE_MAX_AGE`], and its next lookup reloads it.
//!
//! The search is exact: every vector of the scope is scored (a dot product: they are unit vectors). At
//! 100,000 vectors of 384 dimensions that is 38 M multiply-adds over 154 MB, which memory bandwidth bounds;
//! so the scan reads each vector's int8 copy (`quant.rs`, a quarter of the bytes) with a bound on its error,
//! and scores exactly only the vectors whose bound leaves them a chance. The measurements are in
//! docs/SEMANTIC.md.

use super::quant::{quantize, score_and_bound, Quantized};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A scope nobody searched for this long is dropped from memory.
pub(crate) const SCOPE_IDLE: Duration = Duration::from_secs(10 * 60);
/// A scope is reloaded from the database after this long, which bounds how long the vectors of removed
/// entries are kept.
pub(crate) const SCOPE_MAX_AGE: Duration = Duration::from_secs(60 * 60);
/// At most this many scopes are held; the least recently used go first.
const MAX_SCOPES: u64 = 256;

/// Every scope this process searches.
pub(crate) struct Vectors {
    scopes: moka::sync::Cache<i64, Arc<ScopeVectors>>,
}

impl std::fmt::Debug for Vectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vectors").field("scopes", &self.scopes.entry_count()).finish()
    }
}

impl Default for Vectors {
    fn default() -> Self {
        let scopes = moka::sync::Cache::builder()
            .max_capacity(MAX_SCOPES)
            .time_to_idle(SCOPE_IDLE)
            .time_to_live(SCOPE_MAX_AGE)
            .build();
        Vectors { scopes }
    }
}

impl Vectors {
    /// The scope `hash`, created empty (to be caught up with from the start) if it is not held.
    pub(crate) fn scope(&self, hash: i64, shards: usize) -> Arc<ScopeVectors> {
        self.scopes.get_with(hash, || Arc::new(ScopeVectors::new(shards)))
    }

    /// The scope `hash` if it is held: a write adds its vector there, so this process finds it at once.
    pub(crate) fn held(&self, hash: i64) -> Option<Arc<ScopeVectors>> {
        self.scopes.get(&hash)
    }
}

/// Where one scope's catch-up stands: per shard, the transaction id from which rows are still to be read.
#[derive(Debug)]
pub(crate) struct Catchup {
    /// Per shard, the next catch-up's lower bound (an `xid8` as text; `"0"` before the first).
    pub(crate) since: Vec<String>,
    /// When the last complete catch-up began: a caller that asked before that has nothing left to read.
    pub(crate) began: Option<Instant>,
}

/// One scope's vectors.
#[derive(Debug)]
pub(crate) struct ScopeVectors {
    /// Held during a catch-up, so that callers of one scope take turns and share the reads.
    pub(crate) catchup: tokio::sync::Mutex<Catchup>,
    rows: RwLock<Rows>,
}

/// A stored text near the asked one: its entry's key, the text, and the cosine of the two.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) key: Arc<str>,
    pub(crate) text: Arc<str>,
    pub(crate) score: f32,
}

/// The vectors, one after the other in `data`, with their keys and texts at the same index, and their int8
/// copies one after the other in `quant` (scale and L1 norm at the same index).
#[derive(Debug, Default)]
struct Rows {
    dims: usize,
    keys: Vec<Arc<str>>,
    texts: Vec<Arc<str>>,
    data: Vec<f32>,
    quant: Vec<i8>,
    scales: Vec<f32>,
    l1s: Vec<f32>,
    slots: HashMap<Arc<str>, usize>,
}

impl ScopeVectors {
    fn new(shards: usize) -> ScopeVectors {
        ScopeVectors {
            catchup: tokio::sync::Mutex::new(Catchup { since: vec!["0".to_owned(); shards], began: None }),
            rows: RwLock::default(),
        }
    }

    /// How many vectors the scope holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rows.read().unwrap_or_else(|e| e.into_inner()).keys.len()
    }

    /// Adds or replaces the vector of `key`. A vector of another length than the scope's is ignored (one
    /// scope is one model, so this does not happen but by a bug or a corrupted row).
    pub(crate) fn upsert(&self, key: &str, text: &str, vector: &[f32]) {
        let mut rows = self.rows.write().unwrap_or_else(|e| e.into_inner());
        if rows.keys.is_empty() {
            rows.dims = vector.len();
        }
        if vector.len() != rows.dims || vector.is_empty() {
            return;
        }
        let dims = rows.dims;
        let quantized = quantize(vector);
        if let Some(&slot) = rows.slots.get(key) {
            rows.data[slot * dims..(slot + 1) * dims].copy_from_slice(vector);
            rows.quant[slot * dims..(slot + 1) * dims].copy_from_slice(&quantized.values);
            (rows.scales[slot], rows.l1s[slot]) = (quantized.scale, quantized.l1);
            rows.texts[slot] = Arc::from(text);
            return;
        }
        let key: Arc<str> = Arc::from(key);
        let slot = rows.keys.len();
        rows.keys.push(Arc::clone(&key));
        rows.texts.push(Arc::from(text));
        rows.data.extend_from_slice(vector);
        rows.quant.extend_from_slice(&quantized.values);
        rows.scales.push(quantized.scale);
        rows.l1s.push(quantized.l1);
        rows.slots.insert(key, slot);
    }

    /// Adds a row as the database stores it (little-endian f32); a row that does not decode is skipped.
    pub(crate) fn upsert_bytes(&self, key: &str, text: &str, embedding: &[u8]) {
        if let Some(vector) = decode(embedding) {
            self.upsert(key, text, &vector);
        }
    }

    /// Drops the vector of `key` (its entry is gone).
    pub(crate) fn remove(&self, key: &str) {
        let mut rows = self.rows.write().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = rows.slots.remove(key) else { return };
        let (dims, last) = (rows.dims, rows.keys.len() - 1);
        if slot != last {
            let moved = Arc::clone(&rows.keys[last]);
            rows.data.copy_within(last * dims..(last + 1) * dims, slot * dims);
            rows.quant.copy_within(last * dims..(last + 1) * dims, slot * dims);
            rows.slots.insert(Arc::clone(&moved), slot);
            rows.keys.swap(slot, last);
            rows.texts.swap(slot, last);
            rows.scales.swap(slot, last);
            rows.l1s.swap(slot, last);
        }
        rows.keys.pop();
        rows.texts.pop();
        rows.scales.pop();
        rows.l1s.pop();
        rows.data.truncate(last * dims);
        rows.quant.truncate(last * dims);
    }

    /// The (at most) `n` stored texts most like `query` scoring at least `threshold`, best first: the same
    /// as scoring every vector exactly, in two passes (see the module docs).
    pub(crate) fn nearest(&self, query: &[f32], threshold: f32, n: usize) -> Vec<Candidate> {
        let rows = self.rows.read().unwrap_or_else(|e| e.into_inner());
        rows.nearest(scan_threads(rows.keys.len()), query, threshold, n)
    }
}

impl Rows {
    /// [`ScopeVectors::nearest`], the first pass split into (at most) `parts` parts scanned at once.
    fn nearest(&self, parts: usize, query: &[f32], threshold: f32, n: usize) -> Vec<Candidate> {
        if self.dims == 0 || query.len() != self.dims || n == 0 {
            return Vec::new();
        }
        let dims = self.dims;
        let quantized = quantize(query);
        // First pass, int8, over contiguous parts of the scope at once (see `scan_threads`).
        let count = self.keys.len();
        let per_part = count.div_ceil(parts.max(1)).max(1);
        let passes = in_parallel(count.div_ceil(per_part), &|part| {
            let slots = part * per_part..((part + 1) * per_part).min(count);
            first_pass(&quantized, self, slots, threshold, n)
        });
        // The n best lower bounds of all parts give the floor; each part kept at least what it lets through.
        let mut lows: Vec<f32> = passes.iter().flat_map(|pass| pass.lows.iter().copied()).collect();
        lows.sort_unstable_by(|a, b| b.total_cmp(a));
        let floor = if lows.len() >= n { threshold.max(lows[n - 1]) } else { threshold };
        // Second pass, exact, over the vectors that may still make it.
        let mut best: Vec<(f32, usize)> = Vec::with_capacity(n + 1);
        for &(high, slot) in passes.iter().flat_map(|pass| pass.maybe.iter()) {
            if high < floor {
                continue;
            }
            let score = dot(query, &self.data[slot * dims..(slot + 1) * dims]);
            if score < threshold || (best.len() == n && score <= best[n - 1].0) {
                continue;
            }
            let at = best.partition_point(|&(s, _)| s >= score);
            best.insert(at, (score, slot));
            best.truncate(n);
        }
        best.into_iter()
            .map(|(score, slot)| Candidate {
                key: Arc::clone(&self.keys[slot]),
                text: Arc::clone(&self.texts[slot]),
                score,
            })
            .collect()
    }
}

/// What the int8 pass over some of a scope's vectors leaves for the exact pass.
#[derive(Debug, Default)]
struct FirstPass {
    /// The vectors whose exact score may reach the threshold and the n best: (upper bound, slot).
    maybe: Vec<(f32, usize)>,
    /// The n largest lower bounds of exact scores seen, largest first.
    lows: Vec<f32>,
}

/// The int8 pass over the vectors at `slots`: keeps each vector whose exact score may reach both the
/// threshold and the n-th largest lower bound seen so far (`floor`). A part sees fewer vectors than the
/// whole scope, so its floor is at most the scope's: what it keeps is a superset of what the scope needs.
fn first_pass(query: &Quantized, rows: &Rows, slots: Range<usize>, threshold: f32, n: usize) -> FirstPass {
    let dims = rows.dims;
    let mut pass = FirstPass { maybe: Vec::new(), lows: Vec::with_capacity(n + 1) };
    let mut floor = threshold;
    // The dot products come a block at a time, one call of the SIMD kernel per block, into a buffer that
    // stays in the L1 cache (a buffer for the whole scope, 400 KB at 100k, cost page faults on every lookup).
    let mut dots = vec![0i32; SCAN_BLOCK.min(slots.len())];
    for block_start in slots.clone().step_by(SCAN_BLOCK) {
        let block = block_start..(block_start + SCAN_BLOCK).min(slots.end);
        let dots = &mut dots[..block.len()];
        if cache_kernels::dot_i8_rows(&query.values, &rows.quant[block.start * dims..block.end * dims], dots).is_err() {
            // Rows of `dims` values by construction: a mismatch is a bug, and no match is the safe answer.
            return FirstPass::default();
        }
        for (slot, &values_dot) in block.zip(dots.iter()) {
            let (approx, bound) = score_and_bound(query, values_dot, rows.scales[slot], rows.l1s[slot]);
            let high = approx + bound;
            if high < floor {
                continue;
            }
            pass.maybe.push((high, slot));
            let low = approx - bound;
            if low > floor || pass.lows.len() < n {
                let at = pass.lows.partition_point(|&l| l >= low);
                pass.lows.insert(at, low);
                pass.lows.truncate(n);
                if pass.lows.len() == n {
                    floor = floor.max(pass.lows[n - 1]);
                }
            }
        }
    }
    pass
}

/// Vectors per call of the int8 kernel in the first pass: their dot products (16 KiB) stay in the L1 cache.
const SCAN_BLOCK: usize = 4096;

/// Vectors per scanning thread at least: below twice this the calling thread scans alone, since starting a
/// thread (some 50 µs) would cost more than it saves (16,384 vectors of 384 dimensions take ~0.7 ms).
const VECTORS_PER_THREAD: usize = 16 * 1024;
/// At most this many threads scan one scope: more add no memory bandwidth on the machines measured.
const MAX_SCAN_THREADS: usize = 4;

/// How many threads scan a scope of `count` vectors: a lookup at 100,000 vectors is bound by how fast one
/// core reads memory, and a second core reads its half at the same time.
fn scan_threads(count: usize) -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    (count / VECTORS_PER_THREAD).clamp(1, cores.clamp(1, MAX_SCAN_THREADS))
}

/// `work(0)` to `work(parts - 1)`, in that order: the first on the calling thread, each other on a thread
/// of its own, or on the calling thread when its thread cannot be started (the process is out of threads).
fn in_parallel<T: Send>(parts: usize, work: &(dyn Fn(usize) -> T + Sync)) -> Vec<T> {
    if parts <= 1 {
        return (0..parts).map(work).collect();
    }
    std::thread::scope(|scope| {
        let started: Vec<_> = (1..parts)
            .map(|part| {
                let spawned = std::thread::Builder::new()
                    .name("pg_cached-scan".to_owned())
                    .spawn_scoped(scope, move || work(part));
                (part, spawned)
            })
            .collect();
        let mut results = Vec::with_capacity(parts);
        results.push(work(0));
        for (part, spawned) in started {
            results.push(match spawned {
                // A part that panicked panics here too, as it would have on the calling thread.
                Ok(handle) => handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => work(part),
            });
        }
        results
    })
}

/// The dot product, with eight partial sums so that the compiler can keep them in vector registers (a
/// single running sum must be added in order, one element at a time).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            sums[i] += x[i] * y[i];
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// A vector as the database stores it: little-endian f32.
pub(crate) fn encode(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The vector of [`encode`]'s bytes, or `None` when they are not whole finite f32s.
pub(crate) fn decode(bytes: &[u8]) -> Option<Vec<f32>> {
    if bytes.is_empty() || bytes.len() % 4 != 0 {
        return None;
    }
    let vector: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    vector.iter().all(|x| x.is_finite()).then_some(vector)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic generator (xorshift) of values in [-0.5, 0.5).
    fn values(mut state: u64) -> impl FnMut() -> f32 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        }
    }

    fn unit(v: &[f32]) -> Vec<f32> {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / norm).collect()
    }

    #[test]
    fn nearest_ranks_by_score_and_respects_the_threshold() {
        let scope = ScopeVectors::new(1);
        scope.upsert("a", "A", &unit(&[1.0, 0.0, 0.0]));
        scope.upsert("b", "B", &unit(&[1.0, 1.0, 0.0]));
        scope.upsert("c", "C", &unit(&[0.0, 0.0, 1.0]));
        let found = scope.nearest(&unit(&[1.0, 0.2, 0.0]), 0.5, 4);
        let keys: Vec<&str> = found.iter().map(|c| &*c.key).collect();
        assert_eq!(keys, ["a", "b"]);
        assert!(found[0].score > found[1].score);
        assert_eq!(scope.nearest(&unit(&[1.0, 0.2, 0.0]), 0.5, 1).len(), 1);
        assert!(scope.nearest(&unit(&[0.0, 1.0, -1.0]), 0.99, 4).is_empty());
    }

    #[test]
    fn upsert_replaces_and_remove_keeps_the_others_intact() {
        let scope = ScopeVectors::new(1);
        for (i, key) in ["a", "b", "c", "d"].iter().enumerate() {
            let mut v = vec![0.0; 4];
            v[i] = 1.0;
            scope.upsert(key, key, &v);
        }
        scope.upsert("a", "A2", &[0.0, 0.0, 0.0, 1.0]);
        assert_eq!(scope.len(), 4);
        scope.remove("b");
        scope.remove("missing");
        assert_eq!(scope.len(), 3);
        // "d" moved into b's slot: its vector and text moved with it.
        let found = scope.nearest(&[0.0, 0.0, 0.0, 1.0], 0.9, 4);
        let keys: Vec<(&str, &str)> = found.iter().map(|c| (&*c.key, &*c.text)).collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&("a", "A2")) && keys.contains(&("d", "d")));
        assert_eq!(&*scope.nearest(&[0.0, 0.0, 1.0, 0.0], 0.9, 4)[0].key, "c");
        // Another length than the scope's is ignored.
        scope.upsert("e", "e", &[1.0, 0.0]);
        assert_eq!(scope.len(), 3);
    }

    /// The two-pass search finds exactly what scoring every vector gives, on many random scopes with
    /// near-duplicates (where the int8 bounds overlap most).
    #[test]
    fn the_two_passes_find_exactly_the_exact_nearest() {
        let mut next = values(0x9E37_79B9_7F4A_7C15_u64);
        for round in 0..20 {
            let dims = if round % 2 == 0 { 384 } else { 24 };
            let scope = ScopeVectors::new(1);
            let base: Vec<f32> = (0..dims).map(|_| next()).collect();
            let mut all = Vec::new();
            for i in 0..400 {
                // Half near `base`, half anywhere.
                let spread = if i % 2 == 0 { 0.05 } else { 5.0 };
                let v = unit(&base.iter().map(|b| b + spread * next()).collect::<Vec<f32>>());
                scope.upsert(&format!("k{i}"), "t", &v);
                all.push((format!("k{i}"), v));
            }
            let query = unit(&base.iter().map(|b| b + 0.05 * next()).collect::<Vec<f32>>());
            for (threshold, n) in [(0.5, 1), (0.9, 5), (-1.0, 10), (0.99, 3)] {
                let mut exact: Vec<(f32, &str)> =
                    all.iter().map(|(k, v)| (dot(&query, v), k.as_str())).filter(|(s, _)| *s >= threshold).collect();
                exact.sort_by(|a, b| b.0.total_cmp(&a.0));
                exact.truncate(n);
                let found: Vec<(f32, String)> =
                    scope.nearest(&query, threshold, n).into_iter().map(|c| (c.score, c.key.to_string())).collect();
                let want: Vec<(f32, String)> = exact.into_iter().map(|(s, k)| (s, k.to_owned())).collect();
                assert_eq!(found, want, "round {round}, threshold {threshold}, n {n}");
            }
        }
    }

    /// Whatever the number of parts the scope is scanned in, the search finds what one part finds, and
    /// every part runs once, in order.
    #[test]
    fn a_scope_scanned_in_parts_finds_what_one_part_finds() {
        for parts in [0, 1, 2, 3, 7] {
            let ran = std::sync::Mutex::new(Vec::new());
            let results = in_parallel(parts, &|part| {
                ran.lock().unwrap().push(part);
                part * 10
            });
            assert_eq!(results, (0..parts).map(|p| p * 10).collect::<Vec<_>>());
            let mut ran = ran.into_inner().unwrap();
            ran.sort_unstable();
            assert_eq!(ran, (0..parts).collect::<Vec<_>>());
        }
        // Near-duplicates of one vector in every part, so that each part's floor differs from the scope's.
        let dims = 24;
        let scope = ScopeVectors::new(1);
        let mut next = values(0x2545_F491_4F6C_DD1D_u64);
        let base: Vec<f32> = (0..dims).map(|_| next()).collect();
        let count = 10_007;
        let mut all = Vec::with_capacity(count);
        for i in 0..count {
            // Every thousandth a little further from `base` than the one before: scores spread wider than
            // the int8 bounds, so that a floor set too high would drop some of the n best.
            let spread = if i % 1000 == 0 { 0.03 * (1 + i / 1000) as f32 } else { 5.0 };
            let v = unit(&base.iter().map(|b| b + spread * next()).collect::<Vec<f32>>());
            scope.upsert(&format!("k{i}"), "t", &v);
            all.push(v);
        }
        let query = unit(&base.iter().map(|b| b + 0.05 * next()).collect::<Vec<f32>>());
        for (threshold, n) in [(0.5, 1), (0.9, 5), (-1.0, 10)] {
            let mut exact: Vec<(f32, usize)> =
                all.iter().enumerate().map(|(i, v)| (dot(&query, v), i)).filter(|(s, _)| *s >= threshold).collect();
            exact.sort_by(|a, b| b.0.total_cmp(&a.0));
            exact.truncate(n);
            let want: Vec<(f32, String)> = exact.into_iter().map(|(s, i)| (s, format!("k{i}"))).collect();
            for parts in [1, 2, 3, 4] {
                let found = scope.rows.read().unwrap().nearest(parts, &query, threshold, n);
                let found: Vec<(f32, String)> = found.into_iter().map(|c| (c.score, c.key.to_string())).collect();
                assert_eq!(found, want, "{parts} parts, threshold {threshold}, n {n}");
            }
        }
    }

    #[test]
    fn dot_matches_the_plain_sum_and_bytes_round_trip() {
        let a: Vec<f32> = (0..21).map(|i| i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..21).map(|i| 1.0 - i as f32 * 0.05).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-4);
        assert_eq!(decode(&encode(&a)), Some(a));
        assert_eq!(decode(&[0, 0, 0]), None);
        assert_eq!(decode(&f32::NAN.to_le_bytes()), None);
    }
}
