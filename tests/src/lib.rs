//! Helpers shared by the integration tests.

pub mod canned_http;
pub mod checker;
pub mod memo;
pub mod model;
pub mod pg_cluster;
pub mod roles;

use cache_runtime::PgCache;
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A memoized function whose runs are counted, so that a hit shows: the fixture of the tests that move the
/// server under the cache (failover, replicas, pg_auto_failover, connections).
#[derive(Debug)]
pub struct Squares {
    cache: PgCache,
    runs: AtomicU64,
}

impl Squares {
    /// Squares memoized in `cache`.
    pub fn new(cache: &PgCache) -> Squares {
        Squares { cache: cache.clone(), runs: AtomicU64::new(0) }
    }

    /// `x * x`, memoized.
    #[cache_runtime::pg_cached(cache = self.cache, namespace = "squares", ttl = "1h")]
    pub async fn square(&self, x: u64) -> u64 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        x * x
    }

    /// How many times the body ran.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }
}

/// A cache on `url` (a multi-host URL, as the failover tests give it) with a 1 s operation timeout and no
/// sweeper, migrated, and [`Squares`] memoized in it for `0..keys`, each computed once.
pub async fn failover_squares(
    url: &str,
    keys: u64,
) -> Result<(PgCache, std::sync::Arc<Squares>), Box<dyn std::error::Error + Send + Sync>> {
    let cache =
        PgCache::builder().database_url(url).op_timeout(Duration::from_secs(1)).sweep_interval(None).build().await?;
    cache.migrate().await?;
    let squares = std::sync::Arc::new(Squares::new(&cache));
    for x in 0..keys {
        assert_eq!(squares.square(x).await, x * x);
    }
    assert_eq!(squares.runs(), keys);
    Ok((cache, squares))
}

/// Counts how many times a memoized body ran.
#[derive(Debug, Default)]
pub struct Calls(AtomicUsize);

impl Calls {
    /// Records one run; returns how many runs there have been, this one included.
    pub fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// How many runs there have been.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Polls `check` every 5 ms until it is true or `limit` passes; returns how long it took.
pub async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Waits until the cache's event listener is connected (its LISTEN done): until then an in-process tier
/// serves and keeps nothing, so a test must not race the listener's start-up.
pub async fn listening(cache: &PgCache) {
    within(Duration::from_secs(10), async || cache_runtime::test_support::listener_connects(cache) > 0)
        .await
        .expect("the event listener connects within 10 s");
}

/// The operation timeout of the tests' caches that are not about timeouts.
pub const GENEROUS_OP_TIMEOUT: Duration = Duration::from_secs(5);

/// A cache over a test's own database, with the background sweeper off so tests control sweeps.
pub async fn cache_on(pool: PgPool) -> PgCache {
    PgCache::builder()
        .pool(pool)
        // Generous: these tests check what the cache does, not how fast, and must pass on a loaded machine
        // (the default 250 ms timed a first connection out under CI load). Tests of timeouts set their own.
        .op_timeout(GENEROUS_OP_TIMEOUT)
        .sweep_interval(None)
        .build()
        .await
        .expect("building a cache over an existing pool does no I/O")
}

/// A cache over `pool` with an in-process tier for every key (10,000 entries, 10 minutes) and the sweeper
/// off, returned once its event listener is connected (its tier serves from then on).
pub async fn tiered_on(pool: PgPool) -> PgCache {
    let cache = PgCache::builder()
        .pool(pool)
        .local_tier(10_000, Duration::from_secs(600))
        .sweep_interval(None)
        .build()
        .await
        .expect("building a cache over an existing pool does no I/O");
    listening(&cache).await;
    cache
}

/// A local TCP port whose first `unanswered` connections are accepted and never answered (a server that says
/// nothing, or a connection attempt lost to a busy one); later ones are passed through to `upstream`
/// (`host:port`), if one is given, else held unanswered too.
pub async fn port_answering_after(unanswered: usize, upstream: Option<String>) -> std::io::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut client, _)) = listener.accept().await {
            let Some(upstream) = upstream.clone().filter(|_| held.len() >= unanswered) else {
                held.push(client);
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    Ok(port)
}

/// A cache whose database never answers: a local TCP port that accepts connections and says nothing.
/// Every operation must then end with a timeout, never hang.
pub async fn cache_on_silent_server(op_timeout: Duration) -> PgCache {
    let port = port_answering_after(usize::MAX, None).await.expect("bind a loopback port");
    PgCache::builder()
        .database_url(format!("postgres://postgres@127.0.0.1:{port}/silent"))
        .op_timeout(op_timeout)
        .sweep_interval(None)
        .build_lazy()
        .expect("a well-formed URL")
}

/// A cache whose database refuses connections (nothing listens on the port).
pub fn cache_on_closed_port() -> PgCache {
    PgCache::builder()
        .database_url("postgres://postgres@127.0.0.1:1/nothing")
        .op_timeout(Duration::from_millis(200))
        .sweep_interval(None)
        .build_lazy()
        .expect("a well-formed URL")
}

/// Installs a tracing subscriber once, so failing tests show the library's warnings.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("cache_runtime=debug,warn").try_init();
}
