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
//! so the scan reads each vector's int4 copy (`quant.rs`, an eighth of the bytes) with a bound on its error,
//! and scores exactly only the vectors whose bound leaves them a chance. The measurements are in
//! docs/SEMANTIC.md.

use super::quant::{pack, quantize, score_and_bound, Bounds, Quantized};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// The vectors, one after the other in `data`, with their keys and texts at the same index, and their int4
/// copies one after the other in `packed` (`packed_len` bytes each; what their bound needs at the same index).
#[derive(Debug, Default)]
struct Rows {
    dims: usize,
    keys: Vec<Arc<str>>,
    texts: Vec<Arc<str>>,
    data: Vec<f32>,
    packed_len: usize,
    packed: Vec<u8>,
    bounds: Vec<Bounds>,
    slots: HashMap<Arc<str>, usize>,
}

impl ScopeVectors {
    pub(crate) fn new(shards: usize) -> ScopeVectors {
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
            rows.packed_len = cache_kernels::packed_i4_len(vector.len());
        }
        if vector.len() != rows.dims || vector.is_empty() {
            return;
        }
        let (dims, packed_len) = (rows.dims, rows.packed_len);
        let copy = pack(vector);
        if let Some(&slot) = rows.slots.get(key) {
            rows.data[slot * dims..(slot + 1) * dims].copy_from_slice(vector);
            rows.packed[slot * packed_len..(slot + 1) * packed_len].copy_from_slice(&copy.bytes);
            rows.bounds[slot] = copy.bounds;
            rows.texts[slot] = Arc::from(text);
            return;
        }
        let key: Arc<str> = Arc::from(key);
        let slot = rows.keys.len();
        rows.keys.push(Arc::clone(&key));
        rows.texts.push(Arc::from(text));
        rows.data.extend_from_slice(vector);
        rows.packed.extend_from_slice(&copy.bytes);
        rows.bounds.push(copy.bounds);
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
        let (dims, packed_len, last) = (rows.dims, rows.packed_len, rows.keys.len() - 1);
        if slot != last {
            let moved = Arc::clone(&rows.keys[last]);
            rows.data.copy_within(last * dims..(last + 1) * dims, slot * dims);
            rows.packed.copy_within(last * packed_len..(last + 1) * packed_len, slot * packed_len);
            rows.slots.insert(Arc::clone(&moved), slot);
            rows.keys.swap(slot, last);
            rows.texts.swap(slot, last);
            rows.bounds.swap(slot, last);
        }
        rows.keys.pop();
        rows.texts.pop();
        rows.bounds.pop();
        rows.data.truncate(last * dims);
        rows.packed.truncate(last * packed_len);
    }

    /// How many vectors the first pass leaves to the exact pass when `query` asks for the `n` best at or
    /// above `threshold` (for measuring the first pass on real vectors).
    #[cfg(feature = "test-support")]
    pub(crate) fn exact_pass_size(&self, query: &[f32], threshold: f32, n: usize) -> usize {
        let rows = self.rows.read().unwrap_or_else(|e| e.into_inner());
        if !rows.can_search(query, n) {
            return 0;
        }
        let passes = rows.first_passes(1, &quantize(query), threshold, n);
        let floor = floor(&passes, threshold, n);
        passes.iter().flat_map(|pass| pass.maybe.iter()).filter(|(high, _)| *high >= floor).count()
    }

    /// The (at most) `n` stored texts most like `query` scoring at least `threshold`, best first: the same
    /// as scoring every vector exactly, in two passes (see the module docs).
    pub(crate) fn nearest(&self, query: &[f32], threshold: f32, n: usize) -> Vec<Candidate> {
        let rows = self.rows.read().unwrap_or_else(|e| e.into_inner());
        rows.nearest(scan_threads(rows.keys.len()), query, threshold, n)
    }
}

impl Rows {
    /// Whether a search for the `n` best of `query` can run here: something is stored, the query has its
    /// dimensions, and it asks for something. Checked before the passes, which rely on all three
    /// (`exact_pass` reads the `n`-th best).
    fn can_search(&self, query: &[f32], n: usize) -> bool {
        self.dims != 0 && query.len() == self.dims && n != 0
    }

    /// [`ScopeVectors::nearest`], the first pass on (at most) `threads` threads at once.
    fn nearest(&self, threads: usize, query: &[f32], threshold: f32, n: usize) -> Vec<Candidate> {
        if !self.can_search(query, n) {
            return Vec::new();
        }
        let quantized = quantize(query);
        let passes = self.first_passes(threads, &quantized, threshold, n);
        self.exact_pass(&passes, query, threshold, n)
    }

    /// The first pass: the int4 copies against the query's int8 one, a block at a time, on (at most)
    /// `threads` threads (see `scan_threads`). Each thread claims the next block not yet taken rather than a
    /// fixed share: a thread that starts late, or loses its core to the server for a while, leaves its blocks
    /// to the others instead of holding the lookup back.
    fn first_passes(&self, threads: usize, query: &Quantized, threshold: f32, n: usize) -> Vec<FirstPass> {
        let count = self.keys.len();
        let blocks = count.div_ceil(SCAN_BLOCK);
        let next = AtomicUsize::new(0);
        in_parallel(threads.min(blocks), &|_| {
            let mut pass = FirstPass::new(threshold, n);
            loop {
                let block = next.fetch_add(1, Ordering::Relaxed);
                if block >= blocks {
                    return pass;
                }
                let slots = block * SCAN_BLOCK..((block + 1) * SCAN_BLOCK).min(count);
                if pass.scan(query, self, slots).is_err() {
                    // Rows of `dims` values by construction: a mismatch is a bug, and no match is the safe answer.
                    return FirstPass::new(threshold, n);
                }
            }
        })
    }

    /// The second pass, exact, over what the first passes kept: the n best at or above `threshold`.
    fn exact_pass(&self, passes: &[FirstPass], query: &[f32], threshold: f32, n: usize) -> Vec<Candidate> {
        let dims = self.dims;
        let floor = floor(passes, threshold, n);
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

/// The score below which no vector can be among the n best at or above `threshold`: the n-th best lower
/// bound of all passes (each pass kept at least what it lets through).
fn floor(passes: &[FirstPass], threshold: f32, n: usize) -> f32 {
    let mut lows: Vec<f32> = passes.iter().flat_map(|pass| pass.lows.iter().copied()).collect();
    lows.sort_unstable_by(|a, b| b.total_cmp(a));
    if lows.len() >= n {
        threshold.max(lows[n - 1])
    } else {
        threshold
    }
}

/// What the int4 pass over some of a scope's vectors (one thread's blocks) leaves for the exact pass.
#[derive(Debug)]
struct FirstPass {
    /// The vectors whose exact score may reach the threshold and the n best: (upper bound, slot).
    maybe: Vec<(f32, usize)>,
    /// The n largest lower bounds of exact scores seen, largest first.
    lows: Vec<f32>,
    /// The threshold, or the n-th largest lower bound once there are n.
    floor: f32,
    threshold: f32,
    /// How many candidates the search wants.
    n: usize,
    /// The kernel's dot products of one block: 16 KiB, kept in the L1 cache (a buffer for the whole scope,
    /// 400 KB at 100k, cost page faults on every lookup).
    dots: Vec<i32>,
}

impl FirstPass {
    fn new(threshold: f32, n: usize) -> FirstPass {
        FirstPass {
            maybe: Vec::new(),
            lows: Vec::with_capacity(n + 1),
            floor: threshold,
            threshold,
            n,
            dots: Vec::new(),
        }
    }

    /// Scans the vectors at `slots` (at most [`SCAN_BLOCK`]): keeps each vector whose exact score may reach
    /// both the threshold and the n-th largest lower bound seen so far. One thread sees fewer vectors than
    /// the whole scope, so its floor is at most the scope's: what it keeps is a superset of what the scope
    /// needs. `Err` when the rows and the query disagree on the dimensions.
    fn scan(&mut self, query: &Quantized, rows: &Rows, slots: Range<usize>) -> Result<(), ()> {
        let (packed_len, n) = (rows.packed_len, self.n);
        self.dots.resize(slots.len(), 0);
        let packed = &rows.packed[slots.start * packed_len..slots.end * packed_len];
        cache_kernels::dot_i8_i4_rows(&query.values, packed, &mut self.dots).map_err(drop)?;
        for (slot, &values_dot) in slots.zip(self.dots.iter()) {
            let (approx, bound) = score_and_bound(query, values_dot, rows.bounds[slot]);
            let high = approx + bound;
            if high < self.floor {
                continue;
            }
            self.maybe.push((high, slot));
            let low = approx - bound;
            if low > self.floor || self.lows.len() < n {
                let at = self.lows.partition_point(|&l| l >= low);
                self.lows.insert(at, low);
                self.lows.truncate(n);
                if self.lows.len() == n {
                    self.floor = self.threshold.max(self.lows[n - 1]);
                }
            }
        }
        Ok(())
    }
}

/// Vectors per call of the int4 kernel, and per block a scanning thread claims.
const SCAN_BLOCK: usize = 4096;

/// Vectors per scanning thread at least: below twice this the calling thread scans alone, since starting a
/// thread (some 50 µs) would cost more than it saves (16,384 int4 copies of 384 dimensions take ~0.2 ms).
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
mod tests;
