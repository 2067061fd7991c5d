//! Invalidation and expiry, against a real PostgreSQL (one fresh database per test).
//!
//! The rule: once `delete`, `delete_namespace` or a `{fn}_invalidate` companion has returned, no caller that
//! starts afterwards gets a value computed from the data it invalidated: not from the table, not from an
//! in-process flight, not from a slow computation or a `{fn}_refresh` that began before it and stores its
//! result after it, and (beyond a 250 ms notification delay) not from any process's in-process tier.
//!
//! - A Jepsen-style checker drives two caches over two pools (two processes) with many readers of a
//!   memoized function while keys' data changes and is invalidated, records the history, and counts reads
//!   that returned a version older than an invalidation completed before they started
//!   (`integration_tests::checker`). One test per single-flight mode, tier and kind of invalidation.
//! - Deterministic races: a computation, a refresh or a flight held open while an invalidation lands.
//! - In-process tiers hear about writes, deletes and refreshes of a process that has no tier, and about
//!   invalidations sent before their listener first connected.
//! - Expiry: sweeps keep rows inside their stale window, `infinity` and `-infinity` expiries are read as
//!   permanent and expired, and a tier without an age limit holds permanent entries without panicking.

use cache_runtime::{pg_cached, test_support, CacheError, PgCache, Ttl};
use integration_tests::checker::{History, Rng, Verdict};
use integration_tests::{cache_on, listening, within};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinSet;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Keys of the application data in the randomized tests.
const KEYS: usize = 8;

/// How long a value may still be served from another process's in-process tier after an invalidation.
const TIER_GRACE: Duration = Duration::from_millis(250);

/// The randomized tests load both cores: they run one at a time, so that none of them measures another.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------------------
// The application: versioned data, and memoized reads of it
// ---------------------------------------------------------------------------------------------------------

/// Holds the next computation that passes through it until the test opens it.
#[derive(Debug, Default)]
struct Gate {
    armed: AtomicBool,
    entered: Notify,
    release: Notify,
}

impl Gate {
    /// The next computation to pass will stop until [`open`](Self::open).
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    async fn pass(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
    }

    /// Waits until the held computation has read its data and stopped.
    async fn held(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.entered.notified())
            .await
            .expect("the held computation started within 10 s");
    }

    fn open(&self) {
        self.release.notify_one();
    }
}

/// The application's data: one version per key, bumped by every change.
#[derive(Debug)]
struct Data {
    versions: Vec<AtomicU64>,
    runs: AtomicU64,
    /// Computations sleep up to this long after reading their data, so that they overlap invalidations.
    jitter: Duration,
    calls: AtomicU64,
    gate: Gate,
}

impl Data {
    fn new(jitter: Duration) -> Arc<Data> {
        Arc::new(Data {
            versions: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            runs: AtomicU64::new(0),
            jitter,
            calls: AtomicU64::new(0),
            gate: Gate::default(),
        })
    }

    fn version(&self, k: usize) -> u64 {
        self.versions[k].load(Ordering::SeqCst)
    }

    /// Changes key `k`'s data; returns its new version.
    fn bump(&self, k: usize) -> u64 {
        self.versions[k].fetch_add(1, Ordering::SeqCst) + 1
    }

    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }

    /// The body of every memoized function here: reads key `k`'s version, then takes a while to return it.
    async fn compute(&self, k: usize) -> u64 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let version = self.version(k);
        self.gate.pass().await;
        if !self.jitter.is_zero() {
            let pause = Rng::new(self.calls.fetch_add(1, Ordering::Relaxed)).duration_up_to(self.jitter);
            tokio::time::sleep(pause).await;
        }
        version
    }
}

/// One process's view of the application: its cache and the shared data.
#[derive(Debug)]
struct Service {
    cache: PgCache,
    data: Arc<Data>,
}

impl Service {
    fn new(cache: &PgCache, data: &Arc<Data>) -> Arc<Service> {
        Arc::new(Service { cache: cache.clone(), data: Arc::clone(data) })
    }

    /// Single-flight per process (the default).
    #[pg_cached(cache = self.cache, namespace = "inv_process", ttl = "10m")]
    async fn read(&self, round: u64, k: usize) -> u64 {
        let _ = round;
        self.data.compute(k).await
    }

    #[pg_cached(cache = self.cache, namespace = "inv_off", ttl = "10m", single_flight = "off")]
    async fn read_uncoalesced(&self, round: u64, k: usize) -> u64 {
        let _ = round;
        self.data.compute(k).await
    }

    /// With an in-process tier of the function's own.
    #[pg_cached(cache = self.cache, namespace = "inv_local", ttl = "10m", local = "30s")]
    async fn read_local(&self, round: u64, k: usize) -> u64 {
        let _ = round;
        self.data.compute(k).await
    }

    /// Invalidated by purging its namespace.
    #[pg_cached(cache = self.cache, namespace = "inv_purged", ttl = "10m")]
    async fn read_purged(&self, round: u64, k: usize) -> u64 {
        let _ = round;
        self.data.compute(k).await
    }

    /// Reads through [`read_tagged_inner`](Self::read_tagged_inner) and inherits its tag (propagation):
    /// invalidated with `invalidate_tag`, which must remove both levels.
    #[pg_cached(cache = self.cache, namespace = "inv_tagged", ttl = "10m")]
    async fn read_tagged(&self, round: u64, k: usize) -> u64 {
        self.read_tagged_inner(round, k).await
    }

    #[pg_cached(cache = self.cache, namespace = "inv_tagged_inner", ttl = "10m")]
    async fn read_tagged_inner(&self, round: u64, k: usize) -> u64 {
        cache_runtime::tag(data_tag(round, k));
        self.data.compute(k).await
    }

    /// Expires after a second, then is served stale for ten minutes while one caller refreshes it.
    #[pg_cached(cache = self.cache, namespace = "inv_stale", ttl = "1s", stale = "10m")]
    async fn read_stale(&self, k: usize) -> u64 {
        self.data.compute(k).await
    }

    #[pg_cached(cache = self.cache, namespace = "inv_permanent", ttl = "never")]
    async fn read_permanent(&self, k: usize) -> u64 {
        self.data.compute(k).await
    }
}

// ---------------------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------------------

/// The tag of key `k`'s data in one round.
fn data_tag(round: u64, k: usize) -> String {
    format!("data:{round}:{k}")
}

/// A pool of the test's own on the test database, as another process would have.
async fn own_pool(pool: &PgPool, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new().max_connections(max_connections).connect_with((*pool.connect_options()).clone()).await
}

async fn tiered(pool: PgPool) -> Result<PgCache, CacheError> {
    PgCache::builder().pool(pool).local_tier(10_000, Duration::from_secs(60)).sweep_interval(None).build().await
}

async fn rows_with_key(pool: &PgPool, key: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM cache_entries WHERE cache_key = $1").bind(key).fetch_one(pool).await
}

// ---------------------------------------------------------------------------------------------------------
// 1. The randomized checker
// ---------------------------------------------------------------------------------------------------------

/// What one randomized test exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// `read`: single-flight per process, no tier; `read_invalidate`.
    Process,
    /// `read_uncoalesced`: single-flight off; `read_uncoalesced_invalidate`.
    Uncoalesced,
    /// `read_local`: `local = "30s"` in both processes; `read_local_invalidate`.
    FunctionTier,
    /// `read` over caches built with `local_tier` in both processes; `read_invalidate`.
    CacheTier,
    /// `read_purged`, invalidated with `delete_namespace`.
    Namespace,
    /// `read_tagged` (whose tag comes from the memoized call inside it), invalidated with `invalidate_tag`.
    Tag,
    /// `read_tagged` over caches built with `local_tier` in both processes.
    TagTier,
}

impl Variant {
    /// How long after an invalidation a read may still return an older version.
    fn grace(self) -> Duration {
        match self {
            Variant::FunctionTier | Variant::CacheTier | Variant::TagTier => TIER_GRACE,
            Variant::Process | Variant::Uncoalesced | Variant::Namespace | Variant::Tag => Duration::ZERO,
        }
    }

    /// How long a computation may take after reading its data. A namespace purge is two statements (the
    /// mark, then the batched delete), longer than a 3 ms computation: its computations take up to 12 ms, so
    /// that flights and writes still overlap it.
    fn jitter(self) -> Duration {
        match self {
            Variant::Namespace => Duration::from_millis(12),
            Variant::Process
            | Variant::Uncoalesced
            | Variant::FunctionTier
            | Variant::CacheTier
            | Variant::Tag
            | Variant::TagTier => Duration::from_millis(3),
        }
    }

    /// With a grace period, invalidations come in bursts separated by quiet spells longer than the grace: the
    /// bursts race computations, and a stale value a burst leaves behind is then read past the grace period
    /// (a key invalidated every few milliseconds never keeps a stale value that long). `None` during a burst,
    /// else how long the quiet spell has left. `elapsed`: time since the round started.
    fn quiet_spell(self, elapsed: Duration) -> Option<Duration> {
        const BURST: Duration = Duration::from_millis(150);
        const CYCLE: Duration = Duration::from_millis(450);
        if self.grace().is_zero() {
            return None;
        }
        let phase = Duration::from_micros((elapsed.as_micros() % CYCLE.as_micros()) as u64);
        (phase >= BURST).then(|| CYCLE - phase)
    }

    fn builder_tier(self) -> bool {
        matches!(self, Variant::CacheTier | Variant::TagTier)
    }
}

impl Service {
    async fn read_as(&self, variant: Variant, round: u64, k: usize) -> u64 {
        match variant {
            Variant::Process | Variant::CacheTier => self.read(round, k).await,
            Variant::Uncoalesced => self.read_uncoalesced(round, k).await,
            Variant::FunctionTier => self.read_local(round, k).await,
            Variant::Namespace => self.read_purged(round, k).await,
            Variant::Tag | Variant::TagTier => self.read_tagged(round, k).await,
        }
    }

    async fn invalidate_as(&self, variant: Variant, round: u64, k: usize) -> Result<(), CacheError> {
        match variant {
            Variant::Process | Variant::CacheTier => self.read_invalidate(round, k).await.map(drop),
            Variant::Uncoalesced => self.read_uncoalesced_invalidate(round, k).await.map(drop),
            Variant::FunctionTier => self.read_local_invalidate(round, k).await.map(drop),
            Variant::Namespace => self.cache.delete_namespace("inv_purged").await.map(drop),
            Variant::Tag | Variant::TagTier => self.cache.invalidate_tag(&data_tag(round, k)).await.map(drop),
        }
    }
}

const READERS_PER_PROCESS: u64 = 16;
const ROUND_LENGTH: Duration = Duration::from_millis(1200);
const SEEDS: [u64; 3] = [11, 23, 47];
/// Bounds on the operations of one task in one round, whatever the machine's speed.
const MAX_READS_PER_TASK: u64 = 20_000;
const MAX_INVALIDATIONS: u64 = 2_000;
/// Tasks that change data and invalidate it, each from either process at random.
const INVALIDATORS: u64 = 2;

/// Two caches over two pools on the test database: two processes.
async fn two_processes(pool: &PgPool, variant: Variant) -> Result<(PgCache, PgCache), Box<dyn std::error::Error>> {
    let mut caches = Vec::new();
    for _ in 0..2 {
        let mut builder = PgCache::builder()
            .pool(own_pool(pool, 8).await?)
            // Generous: a timed-out operation is not an anomaly, but it weakens the test.
            .op_timeout(Duration::from_secs(1))
            .sweep_interval(None);
        if variant.builder_tier() {
            builder = builder.local_tier(10_000, Duration::from_secs(30));
        }
        caches.push(builder.build().await?);
    }
    let b = caches.pop().expect("two caches");
    let a = caches.pop().expect("two caches");
    Ok((a, b))
}

/// One round: readers in both processes, and invalidators sending each invalidation from either process at
/// random (in bursts, with a grace period: see [`Variant::quiet_spell`]), for `ROUND_LENGTH`. Returns the verdict and how many invalidations failed (and so were not recorded).
async fn run_round(a: &PgCache, b: &PgCache, variant: Variant, round: u64, seed: u64) -> (Verdict, u64) {
    let data = Data::new(variant.jitter());
    let services = [Service::new(a, &data), Service::new(b, &data)];
    let history = Arc::new(History::default());
    let started = Instant::now();
    let deadline = started + ROUND_LENGTH;
    let mut readers = JoinSet::new();
    for (p, service) in services.iter().enumerate() {
        for r in 0..READERS_PER_PROCESS {
            let (service, history) = (Arc::clone(service), Arc::clone(&history));
            let mut rng = Rng::new(seed * 1_000 + p as u64 * 100 + r);
            readers.spawn(async move {
                let mut reads = 0;
                while Instant::now() < deadline && reads < MAX_READS_PER_TASK {
                    let k = rng.below(KEYS as u64) as usize;
                    let started = Instant::now();
                    let version = service.read_as(variant, round, k).await;
                    history.read(k, started, version);
                    reads += 1;
                    tokio::task::yield_now().await;
                }
            });
        }
    }
    let mut invalidators = JoinSet::new();
    for i in 0..INVALIDATORS {
        let (services, history, data) = (services.clone(), Arc::clone(&history), Arc::clone(&data));
        let mut rng = Rng::new(seed + 7_919 * (i + 1));
        invalidators.spawn(async move {
            let (mut done, mut failed) = (0, 0);
            while Instant::now() < deadline && done + failed < MAX_INVALIDATIONS {
                if let Some(rest) = variant.quiet_spell(started.elapsed()) {
                    tokio::time::sleep(rest).await;
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(1) + rng.duration_up_to(Duration::from_millis(4))).await;
                let k = rng.below(KEYS as u64) as usize;
                // The data changes first, then the application invalidates what was computed from it.
                let version = data.bump(k);
                let process = &services[rng.below(2) as usize];
                match process.invalidate_as(variant, round, k).await {
                    Ok(()) => {
                        history.invalidated(k, version);
                        done += 1;
                    }
                    Err(error) => {
                        if failed == 0 {
                            eprintln!("{variant:?}: an invalidation failed (not counted): {error}");
                        }
                        failed += 1;
                    }
                }
            }
            failed
        });
    }
    while let Some(joined) = readers.join_next().await {
        joined.expect("a reader panicked");
    }
    let mut failed = 0;
    while let Some(joined) = invalidators.join_next().await {
        failed += joined.expect("an invalidator panicked");
    }
    (history.check(variant.grace()), failed)
}

async fn check_invalidations(pool: PgPool, variant: Variant) -> TestResult {
    let _alone = HEAVY.lock().await;
    let (a, b) = two_processes(&pool, variant).await.map_err(|e| e.to_string())?;
    if variant == Variant::FunctionTier {
        // The function's tier, and its listener, start with its first call.
        let warm = Data::new(Duration::ZERO);
        Service::new(&a, &warm).read_local(0, 0).await;
        Service::new(&b, &warm).read_local(0, 0).await;
    }
    if variant.builder_tier() || variant == Variant::FunctionTier {
        listening(&a).await;
        listening(&b).await;
    }
    let (mut reads, mut invalidations, mut failed, mut anomalies) = (0, 0, 0, Vec::new());
    for (i, seed) in SEEDS.into_iter().enumerate() {
        let round = i as u64 + 1;
        let (verdict, failures) = run_round(&a, &b, variant, round, seed).await;
        println!(
            "{variant:?}, round {round} (seed {seed}), grace {:?}: {}; {failures} invalidations failed",
            variant.grace(),
            verdict.summary()
        );
        reads += verdict.reads;
        invalidations += verdict.invalidations;
        failed += failures;
        anomalies.extend(verdict.anomalies.iter().map(|a| (round, *a)));
    }
    println!(
        "{variant:?}: {reads} reads, {invalidations} invalidations ({failed} failed), {} anomalies; stats A {:?}, B {:?}",
        anomalies.len(),
        a.process_stats(),
        b.process_stats()
    );
    assert!(invalidations >= 10 && reads >= 100, "the workload ran: {reads} reads, {invalidations} invalidations");
    if let Some((round, first)) = anomalies.first() {
        panic!(
            "{variant:?}: {} of {reads} reads returned a version older than an invalidation that completed more than \
             {:?} before they started; first (round {round}): key {} read v{} {:?} after the invalidation to v{} \
             completed",
            anomalies.len(),
            variant.grace(),
            first.read.key,
            first.read.version,
            first.started_after(),
            first.invalidation.version
        );
    }
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn checker_process_single_flight_serves_nothing_invalidated(pool: PgPool) -> TestResult {
    check_invalidations(pool, Variant::Process).await
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn checker_without_single_flight_serves_nothing_invalidated(pool: PgPool) -> TestResult {
    check_invalidations(pool, Variant::Uncoalesced).await
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn checker_function_tiers_serve_nothing_invalidated_after_250ms(pool: PgPool) -> TestResult {
    check_invalidations(pool, Variant::FunctionTier).await
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn checker_cache_tiers_serve_nothing_invalidated_after_250ms(pool: PgPool) -> TestResult {
    check_invalidations(pool, Variant::CacheTier).await
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn checker_namespace_purges_leave_nothing_invalidated(pool: PgPool) -> TestResult {
    check_invalidations(pool, Variant::Namespace).await
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn checker_tag_invalidations_through_nested_calls_leave_nothing_invalidated(pool: PgPool) -> TestResult {
    check_invalidations(pool, Variant::Tag).await
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn checker_tag_invalidations_reach_cache_tiers_within_250ms(pool: PgPool) -> TestResult {
    check_invalidations(pool, Variant::TagTier).await
}

// ---------------------------------------------------------------------------------------------------------
// 2. Writes racing deletes
// ---------------------------------------------------------------------------------------------------------

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_slow_computation_that_began_before_a_delete_is_not_stored(pool: PgPool) -> TestResult {
    let data = Data::new(Duration::ZERO);
    let service = Service::new(&cache_on(pool).await, &data);
    let key = service.read_cache_key(0, 1)?;
    data.gate.arm();
    let slow = tokio::spawn({
        let service = Arc::clone(&service);
        async move { service.read(0, 1).await }
    });
    data.gate.held().await;
    let new_version = data.bump(1);
    assert!(!service.cache.delete(&key).await?, "nothing was stored yet");
    data.gate.open();
    assert_eq!(slow.await?, 0, "the slow caller gets what its body computed");
    assert_eq!(service.cache.get::<u64>(&key).await?, None, "a value computed before the delete was stored after it");
    assert_eq!(service.read(0, 1).await, new_version, "the next call recomputes");
    assert_eq!(data.runs(), 2);
    Ok(())
}

/// How the racing writer writes.
#[derive(Debug, Clone, Copy)]
enum Writer {
    /// A memoized call that misses, computes and stores.
    Memoized,
    /// `{fn}_refresh` over an entry stored before.
    Refresh,
}

/// Many rounds of: on `KEYS` fresh keys at once, a writer computes while the key's data changes and the key
/// is deleted. Once both are done, the stored value must be missing or current: a stored version older than
/// the current one was computed before the delete and stored after it. Returns (races, anomalies).
async fn race_writers_against_deletes(
    pool: PgPool,
    writer: Writer,
) -> Result<(u64, Vec<String>), Box<dyn std::error::Error + Send + Sync>> {
    let cache = PgCache::builder()
        .pool(own_pool(&pool, 20).await?)
        .op_timeout(Duration::from_secs(1))
        .sweep_interval(None)
        .build()
        .await?;
    let started = Instant::now();
    let (mut races, mut skipped, mut anomalies) = (0, 0, Vec::new());
    let mut rng = Rng::new(7);
    for round in 0..300u64 {
        if started.elapsed() > Duration::from_millis(2500) {
            break;
        }
        let data = Data::new(Duration::from_millis(3));
        let service = Service::new(&cache, &data);
        if let Writer::Refresh = writer {
            for k in 0..KEYS {
                assert_eq!(service.read(round, k).await, 0, "the entry to refresh");
            }
        }
        let mut tasks = JoinSet::new();
        for k in 0..KEYS {
            let computing = Arc::clone(&service);
            tasks.spawn(async move {
                match writer {
                    Writer::Memoized => computing.read(round, k).await,
                    Writer::Refresh => computing.read_refresh(round, k).await,
                };
                Ok(())
            });
            let (deleting, pause) = (Arc::clone(&service), rng.duration_up_to(Duration::from_millis(3)));
            tasks.spawn(async move {
                tokio::time::sleep(pause).await;
                deleting.data.bump(k);
                deleting.read_invalidate(round, k).await.map(drop)
            });
        }
        let mut failed = false;
        while let Some(joined) = tasks.join_next().await {
            failed |= joined.expect("a racing task panicked").is_err();
        }
        if failed {
            skipped += 1;
            continue;
        }
        for k in 0..KEYS {
            races += 1;
            let stored = cache.get::<u64>(&service.read_cache_key(round, k)?).await?;
            let current = data.version(k);
            if stored.is_some_and(|v| v < current) {
                anomalies.push(format!("round {round} key {k}: v{stored:?} stored, v{current} current"));
            }
        }
    }
    println!(
        "{writer:?} vs delete: {races} races, {skipped} rounds skipped (a delete failed), {} anomalies",
        anomalies.len()
    );
    Ok((races, anomalies))
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn memoized_writes_racing_deletes_never_outlive_them(pool: PgPool) -> TestResult {
    let _alone = HEAVY.lock().await;
    let (races, anomalies) = race_writers_against_deletes(pool, Writer::Memoized).await?;
    assert!(races >= KEYS as u64, "the races ran: {races}");
    assert!(
        anomalies.is_empty(),
        "{} of {races} writes computed before a delete were stored after it: {:?}",
        anomalies.len(),
        &anomalies[..anomalies.len().min(5)]
    );
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn refreshes_racing_deletes_never_outlive_them(pool: PgPool) -> TestResult {
    let _alone = HEAVY.lock().await;
    let (races, anomalies) = race_writers_against_deletes(pool, Writer::Refresh).await?;
    assert!(races >= KEYS as u64, "the races ran: {races}");
    assert!(
        anomalies.is_empty(),
        "{} of {races} refreshes computed before a delete were stored after it: {:?}",
        anomalies.len(),
        &anomalies[..anomalies.len().min(5)]
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// 3. A refresh racing an invalidation
// ---------------------------------------------------------------------------------------------------------

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_refresh_that_began_before_an_invalidation_is_not_stored(pool: PgPool) -> TestResult {
    let data = Data::new(Duration::ZERO);
    let service = Service::new(&cache_on(pool).await, &data);
    let key = service.read_cache_key(0, 1)?;
    assert_eq!(service.read(0, 1).await, 0, "stored");
    data.gate.arm();
    let refresh = tokio::spawn({
        let service = Arc::clone(&service);
        async move { service.read_refresh(0, 1).await }
    });
    data.gate.held().await; // the refresh has read version 0
    let new_version = data.bump(1);
    assert!(service.read_invalidate(0, 1).await?, "the entry was there");
    data.gate.open();
    assert_eq!(refresh.await?, 0, "the refreshing caller gets what its body computed");
    assert_eq!(
        service.cache.get::<u64>(&key).await?,
        None,
        "the refresh stored a value computed before the invalidation, after it"
    );
    assert_eq!(service.read(0, 1).await, new_version, "the next call recomputes");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// 4. In-process flights that began before an invalidation
// ---------------------------------------------------------------------------------------------------------

/// A leader computes key 1 from version 0 and is held; the data changes and is invalidated; then a new caller
/// starts. It must not get the held leader's value.
async fn check_no_late_join(pool: PgPool, purge_namespace: bool) -> TestResult {
    let data = Data::new(Duration::ZERO);
    let service = Service::new(&cache_on(pool).await, &data);
    let call = |service: Arc<Service>| async move {
        if purge_namespace {
            service.read_purged(0, 1).await
        } else {
            service.read(0, 1).await
        }
    };
    data.gate.arm();
    let leader = tokio::spawn(call(Arc::clone(&service)));
    data.gate.held().await;
    let new_version = data.bump(1);
    if purge_namespace {
        service.cache.delete_namespace("inv_purged").await?;
    } else {
        service.read_invalidate(0, 1).await?;
    }
    let mut late = tokio::spawn(call(Arc::clone(&service)));
    // A late caller that computes on its own finishes while the leader is still held; give it 2 s. One that
    // waits for the leader is answered once the leader is let go, and must then not take its value either.
    let finished_alone = tokio::time::timeout(Duration::from_secs(2), &mut late).await.ok();
    data.gate.open();
    let late = match finished_alone {
        Some(joined) => joined?,
        None => late.await?,
    };
    assert_eq!(leader.await?, 0, "the leader gets what its body computed");
    let how = if purge_namespace { "delete_namespace" } else { "read_invalidate" };
    assert_eq!(
        late, new_version,
        "a caller that started after {how} returned got the value of an in-process flight that started before it"
    );
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_caller_after_invalidate_does_not_join_an_older_flight(pool: PgPool) -> TestResult {
    check_no_late_join(pool, false).await
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_caller_after_delete_namespace_does_not_join_an_older_flight(pool: PgPool) -> TestResult {
    check_no_late_join(pool, true).await
}

// ---------------------------------------------------------------------------------------------------------
// 5. A process without a tier keeps other processes' tiers coherent
// ---------------------------------------------------------------------------------------------------------

/// Process A with an in-process tier for every key, process B with none, on the same database.
async fn tiered_and_plain(pool: &PgPool) -> Result<(PgCache, PgCache), Box<dyn std::error::Error + Send + Sync>> {
    let a = tiered(own_pool(pool, 5).await?).await?;
    let b = cache_on(own_pool(pool, 5).await?).await;
    listening(&a).await;
    Ok((a, b))
}

/// Reads `key` in A until a read is served from A's tier. B's own notification of the write that stored the
/// value may still be on its way and drop the first copy A keeps, so this retries for up to 2 s.
async fn held_in_tier(a: &PgCache, key: &str, expected: &str) {
    let held = within(Duration::from_secs(2), async || {
        let before = a.process_stats().local_hits;
        a.get::<String>(key).await.ok().flatten().as_deref() == Some(expected)
            && a.process_stats().local_hits == before + 1
    })
    .await;
    assert!(held.is_some(), "A's tier holds {key} = {expected}");
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_set_by_a_process_without_a_tier_reaches_other_tiers(pool: PgPool) -> TestResult {
    let (a, b) = tiered_and_plain(&pool).await?;
    b.set("doc:1", &"v1", None).await?;
    held_in_tier(&a, "doc:1", "v1").await;
    b.set("doc:1", &"v2", None).await?;
    let took =
        within(TIER_GRACE, async || a.get::<String>("doc:1").await.ok().flatten().as_deref() == Some("v2")).await;
    assert!(took.is_some(), "A still served v1 {TIER_GRACE:?} after B, which has no tier, wrote v2");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_delete_by_a_process_without_a_tier_reaches_other_tiers(pool: PgPool) -> TestResult {
    let (a, b) = tiered_and_plain(&pool).await?;
    b.set("doc:1", &"v1", None).await?;
    held_in_tier(&a, "doc:1", "v1").await;
    assert!(b.delete("doc:1").await?);
    let took = within(TIER_GRACE, async || a.get::<String>("doc:1").await.ok().flatten().is_none()).await;
    assert!(took.is_some(), "A still served doc:1 {TIER_GRACE:?} after B, which has no tier, deleted it");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_refresh_by_a_process_without_a_tier_reaches_other_tiers(pool: PgPool) -> TestResult {
    let (a, b) = tiered_and_plain(&pool).await?;
    let data = Data::new(Duration::ZERO);
    let (a, b) = (Service::new(&a, &data), Service::new(&b, &data));
    assert_eq!(a.read(0, 1).await, 0);
    let before = a.cache.process_stats().local_hits;
    assert_eq!(a.read(0, 1).await, 0);
    assert_eq!(a.cache.process_stats().local_hits, before + 1, "A's tier holds the value");
    let new_version = data.bump(1);
    assert_eq!(b.read_refresh(0, 1).await, new_version);
    let took = within(TIER_GRACE, async || a.read(0, 1).await == new_version).await;
    assert!(took.is_some(), "A still served v0 {TIER_GRACE:?} after B, which has no tier, refreshed the entry to v1");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// 6. Invalidations sent before a tier's listener first connects
// ---------------------------------------------------------------------------------------------------------

/// A pool whose `n` connections are already open.
async fn warm_pool(options: &PgConnectOptions, n: u32) -> Result<PgPool, sqlx::Error> {
    let pool = PgPoolOptions::new().max_connections(n).connect_with(options.clone()).await?;
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.acquire().await?);
    }
    Ok(pool)
}

/// Lets new sessions into `database`, or not (existing sessions stay). Runs from the maintenance database,
/// since PostgreSQL refuses to disallow connections to the current one.
async fn allow_connections(options: &PgConnectOptions, database: &str, allow: bool) -> Result<(), sqlx::Error> {
    let mut admin = sqlx::PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let statement = format!("ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS {allow}", database.replace('"', "\"\""));
    sqlx::raw_sql(&statement).execute(&mut admin).await?;
    admin.close().await
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn an_invalidation_sent_before_the_listener_first_connects_is_not_missed(pool: PgPool) -> TestResult {
    let options = (*pool.connect_options()).clone();
    let database: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&pool).await?;
    let (a_pool, b) = (warm_pool(&options, 3).await?, cache_on(warm_pool(&options, 3).await?).await);
    b.set("doc:1", &"v1", None).await?;

    // New sessions are refused: A's listener cannot connect, while both pools keep their open connections.
    allow_connections(&options, &database, false).await?;
    let gap = async {
        let a = tiered(a_pool).await?;
        let served = a.get::<String>("doc:1").await?;
        let before = (test_support::listener_connects(&a), test_support::local_len(&a));
        let deleted = b.delete("doc:1").await?;
        Ok::<_, CacheError>((a, served, before, deleted))
    }
    .await;
    allow_connections(&options, &database, true).await?;
    let (a, served, (connects, held), deleted) = gap?;
    assert_eq!(served.as_deref(), Some("v1"));
    assert!(deleted);
    println!("in the gap, A's tier held {held} entries");
    assert_eq!(connects, 0, "setup: A's listener had not connected when B deleted doc:1");

    within(Duration::from_secs(15), async || test_support::listener_connects(&a) > 0)
        .await
        .expect("A's listener connects once sessions are allowed again");
    tokio::time::sleep(Duration::from_millis(50)).await;
    println!("after the listener's first connect, A's tier holds {} entries", test_support::local_len(&a));
    assert_eq!(
        a.get::<String>("doc:1").await?,
        None,
        "A served, from its tier, an entry that B deleted before A's listener first connected"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// 7. Sweeps and stale windows
// ---------------------------------------------------------------------------------------------------------

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_sweep_keeps_expired_entries_inside_their_stale_window(pool: PgPool) -> TestResult {
    let data = Data::new(Duration::ZERO);
    let service = Service::new(&cache_on(pool.clone()).await, &data);
    let key = service.read_stale_cache_key(1)?;
    assert_eq!(service.read_stale(1).await, 0);
    data.bump(1);
    tokio::time::sleep(Duration::from_millis(1500)).await; // ttl = "1s": expired, inside its 10-minute window
    let report = service.cache.sweep().await?;
    let rows_after_sweep = rows_with_key(&pool, &key).await?;

    // The caller that refreshes is held: any other caller must be answered at once, with the stale value.
    data.gate.arm();
    let refresher = tokio::spawn({
        let service = Arc::clone(&service);
        async move { service.read_stale(1).await }
    });
    data.gate.held().await;
    let served = tokio::time::timeout(Duration::from_secs(2), service.read_stale(1)).await;
    data.gate.open();
    let refreshed = refresher.await?;
    println!(
        "sweep: {report:?}, rows of the stale key left: {rows_after_sweep}; served {served:?}, refreshed {refreshed}"
    );
    assert_eq!(
        served.ok(),
        Some(0),
        "while a refresh ran, the next call was not served the stale value within 2 s: the sweep (expired {}) left \
         {rows_after_sweep} row(s) of the key",
        report.expired
    );
    assert_eq!(rows_after_sweep, 1, "the sweep deleted a row inside its stale window");
    assert_eq!(refreshed, 1, "the refreshing caller gets the new value");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_sweep_deletes_expired_entries_without_a_stale_window(pool: PgPool) -> TestResult {
    let cache = cache_on(pool.clone()).await;
    cache.set("plain:short", &1, Duration::from_millis(300)).await?;
    cache.set("plain:long", &2, None).await?;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let report = cache.sweep().await?;
    assert_eq!(report.expired, 1, "{report:?}");
    assert_eq!(rows_with_key(&pool, "plain:short").await?, 0, "an expired row without a stale window is deleted");
    assert_eq!(cache.get::<i32>("plain:long").await?, Some(2));
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// 8. Infinite expiries written by hand
// ---------------------------------------------------------------------------------------------------------

async fn insert_by_hand(pool: &PgPool, key: &str, json: &str, expires_at: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cache_entries (cache_key, data, created_at, expires_at) \
         VALUES ($1, $2::jsonb, now(), $3::timestamptz) \
         ON CONFLICT (cache_key) DO UPDATE SET data = EXCLUDED.data, expires_at = EXCLUDED.expires_at",
    )
    .bind(key)
    .bind(json)
    .bind(expires_at)
    .execute(pool)
    .await
    .map(drop)
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn infinity_is_permanent_and_minus_infinity_is_expired(pool: PgPool) -> TestResult {
    insert_by_hand(&pool, "inf:forever", r#""kept""#, "infinity").await?;
    insert_by_hand(&pool, "inf:never", r#""gone""#, "-infinity").await?;
    let plain = cache_on(pool.clone()).await;
    let tier = tiered(pool.clone()).await?;
    listening(&tier).await;
    for cache in [&plain, &tier] {
        for _ in 0..2 {
            assert_eq!(cache.get::<String>("inf:forever").await?.as_deref(), Some("kept"), "'infinity' is permanent");
            assert_eq!(cache.get::<String>("inf:never").await?, None, "'-infinity' is expired");
        }
    }
    assert!(tier.process_stats().local_hits >= 1, "the permanent row was served from the tier too");

    // Memoized calls whose rows were written by hand: the hit path, the lookup of a miss, the lookup without
    // single-flight, and the lookup with a stale window.
    let data = Data::new(Duration::ZERO);
    let (service, tiered_service) = (Service::new(&plain, &data), Service::new(&tier, &data));
    let by_hand = [
        (service.read_cache_key(0, 1)?, "infinity"),
        (service.read_cache_key(0, 2)?, "-infinity"),
        (service.read_uncoalesced_cache_key(0, 1)?, "infinity"),
        (service.read_uncoalesced_cache_key(0, 2)?, "-infinity"),
        (service.read_stale_cache_key(1)?, "infinity"),
        (service.read_stale_cache_key(2)?, "-infinity"),
    ];
    for (key, expires_at) in &by_hand {
        insert_by_hand(&pool, key, "1000", expires_at).await?;
    }
    assert_eq!(service.read(0, 1).await, 1000, "memoized hit on an 'infinity' row");
    assert_eq!(tiered_service.read(0, 1).await, 1000);
    assert_eq!(tiered_service.read(0, 1).await, 1000);
    assert_eq!(service.read(0, 2).await, 0, "memoized miss on a '-infinity' row");
    assert_eq!(service.read_uncoalesced(0, 1).await, 1000);
    assert_eq!(service.read_uncoalesced(0, 2).await, 0);
    assert_eq!(service.read_stale(1).await, 1000);
    assert_eq!(service.read_stale(2).await, 0, "'-infinity' is outside any stale window");
    assert_eq!(data.runs(), 3, "only the '-infinity' rows were recomputed");
    assert_eq!(plain.process_stats().errors + tier.process_stats().errors, 0, "no cache operation failed");

    // Maintenance reads them the same way.
    let report = plain.sweep().await?;
    assert_eq!(plain.keys(Some("inf:"), 10).await?, ["inf:forever"], "after {report:?}");
    assert_eq!(rows_with_key(&pool, "inf:never").await?, 0, "the sweep deleted the '-infinity' row");
    plain.stats().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// 9. A tier without an age limit
// ---------------------------------------------------------------------------------------------------------

/// Runs `work` in a task of its own, so that a panic is reported as what it is.
async fn without_panic<T: Send + 'static>(
    what: &str,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    match tokio::spawn(work).await {
        Ok(value) => value,
        Err(error) if error.is_panic() => {
            let payload = error.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            panic!("{what} panicked: {message}")
        }
        Err(error) => panic!("{what}: {error}"),
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_tier_without_an_age_limit_holds_permanent_entries(pool: PgPool) -> TestResult {
    let cache =
        PgCache::builder().pool(pool.clone()).local_tier(100, Duration::MAX).sweep_interval(None).build().await?;
    let other = cache_on(pool).await;
    other.set("perm:other", &3, Ttl::Never).await?;
    let c = cache.clone();
    let (first, again, other_row) = without_panic("set + get of a permanent entry", async move {
        c.set("perm:1", &1, Ttl::Never).await?;
        let first = c.get::<i32>("perm:1").await?;
        let again = c.get::<i32>("perm:1").await?;
        let other_row = c.get::<i32>("perm:other").await?;
        Ok::<_, CacheError>((first, again, other_row))
    })
    .await?;
    assert_eq!((first, again, other_row), (Some(1), Some(1), Some(3)));

    let data = Data::new(Duration::ZERO);
    let service = Service::new(&cache, &data);
    let memoized = without_panic("a memoized call with ttl = \"never\"", async move {
        (service.read_permanent(1).await, service.read_permanent(1).await)
    })
    .await;
    assert_eq!(memoized, (0, 0));
    assert_eq!(data.runs(), 1);
    Ok(())
}
