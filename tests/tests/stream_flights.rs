//! Concurrent callers of a cold memoized stream (issue 25): they attach to the one running computation in
//! this process and receive the chunks already produced, then the live ones. When that computation ends
//! early, a caller that had received some chunks is told (`StreamInterrupted`, through the stream's error
//! type), and one that had received none computes its own. A stream whose error type cannot report an
//! interruption makes its followers wait for the whole stream, then replay it.
//!
//! The leader's stream is gated by a semaphore (one permit per chunk), so what each test asserts does not
//! depend on how fast the machine is.

use cache_runtime::{pg_cached, PgCache, StreamInterrupted};
use futures_util::stream::{self, StreamExt};
use futures_util::Stream;
use integration_tests::cache_on;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Far longer than anything here takes on a loaded machine: only a hang reaches it.
const HANG: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Token(String);

#[derive(Debug, Clone, PartialEq)]
enum LlmError {
    Interrupted,
}

impl From<StreamInterrupted> for LlmError {
    fn from(_: StreamInterrupted) -> Self {
        LlmError::Interrupted
    }
}

/// An error type that cannot say "interrupted".
#[derive(Debug, Clone, PartialEq)]
struct Opaque;

const WORDS: [&str; 5] = ["one", "two", "three", "four", "five"];

fn tokens<E>() -> Vec<Result<Token, E>> {
    WORDS.iter().map(|word| Ok(Token((*word).to_owned()))).collect()
}

struct Llm {
    cache: PgCache,
    runs: AtomicU64,
    /// One permit per chunk the leader's stream may produce.
    gate: Arc<Semaphore>,
}

/// The answer's tokens, each produced when the gate gives a permit; a run counted on the first poll.
fn gated<'a, E: Send + 'a>(llm: &'a Llm) -> impl Stream<Item = Result<Token, E>> + Send + 'a {
    let gate = Arc::clone(&llm.gate);
    stream::once(async move {
        llm.runs.fetch_add(1, Ordering::SeqCst);
    })
    .flat_map(|()| stream::iter(tokens::<E>()))
    .then(move |item| {
        let gate = Arc::clone(&gate);
        async move {
            gate.acquire().await.expect("the gate stays open").forget();
            item
        }
    })
}

impl Llm {
    fn new(cache: PgCache, permits: usize) -> Llm {
        Llm { cache, runs: AtomicU64::new(0), gate: Arc::new(Semaphore::new(permits)) }
    }

    #[pg_cached(cache = self.cache, namespace = "live_answer", ttl = "1h", stream)]
    fn live(&self, question: &str) -> impl Stream<Item = Result<Token, LlmError>> + Send + '_ {
        gated(self)
    }

    #[pg_cached(cache = self.cache, namespace = "whole_answer", ttl = "1h", stream)]
    fn whole(&self, question: &str) -> impl Stream<Item = Result<Token, Opaque>> + Send + '_ {
        gated(self)
    }

    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }
}

async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    tokio::time::timeout(HANG, stream.next()).await.expect("the stream moves on")
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_follower_receives_the_chunks_already_produced_then_the_live_ones(pool: PgPool) -> TestResult {
    let llm = Llm::new(cache_on(pool).await, 2);
    let mut leader = Box::pin(llm.live("q"));
    assert_eq!(next(&mut leader).await, Some(Ok(Token("one".into()))));
    assert_eq!(next(&mut leader).await, Some(Ok(Token("two".into()))));
    // The leader now waits for its third token: the follower reads the two produced so far at once.
    let mut follower = Box::pin(llm.live("q"));
    assert_eq!(next(&mut follower).await, Some(Ok(Token("one".into()))));
    assert_eq!(next(&mut follower).await, Some(Ok(Token("two".into()))));
    // The next token reaches both as soon as the leader produces it.
    llm.gate.add_permits(1);
    assert_eq!(next(&mut leader).await, Some(Ok(Token("three".into()))));
    assert_eq!(next(&mut follower).await, Some(Ok(Token("three".into()))));
    llm.gate.add_permits(WORDS.len());
    let (rest_leader, rest_follower) = tokio::join!(leader.collect::<Vec<_>>(), follower.collect::<Vec<_>>());
    assert_eq!(rest_leader, tokens::<LlmError>()[3..]);
    assert_eq!(rest_follower, tokens::<LlmError>()[3..]);
    assert_eq!(llm.runs(), 1, "one computation");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_hundred_concurrent_callers_each_receive_every_chunk_in_order(pool: PgPool) -> TestResult {
    let llm = Arc::new(Llm::new(cache_on(pool).await, 0));
    let live: Vec<_> = (0..100)
        .map(|_| {
            let llm = Arc::clone(&llm);
            tokio::spawn(async move { llm.live("cold").collect::<Vec<_>>().await })
        })
        .collect();
    let whole: Vec<_> = (0..100)
        .map(|_| {
            let llm = Arc::clone(&llm);
            tokio::spawn(async move { llm.whole("cold").collect::<Vec<_>>().await })
        })
        .collect();
    // The leaders produce their tokens only now, whoever joined by then.
    llm.gate.add_permits(2 * WORDS.len());
    for caller in live {
        assert_eq!(tokio::time::timeout(HANG, caller).await??, tokens::<LlmError>());
    }
    for caller in whole {
        assert_eq!(tokio::time::timeout(HANG, caller).await??, tokens::<Opaque>());
    }
    assert_eq!(llm.runs(), 2, "one computation per function");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_leader_dropped_half_way_interrupts_its_live_followers(pool: PgPool) -> TestResult {
    let llm = Llm::new(cache_on(pool.clone()).await, 1);
    let mut leader = Box::pin(llm.live("dropped"));
    assert_eq!(next(&mut leader).await, Some(Ok(Token("one".into()))));
    let mut follower = Box::pin(llm.live("dropped"));
    assert_eq!(next(&mut follower).await, Some(Ok(Token("one".into()))));
    drop(leader);
    assert_eq!(next(&mut follower).await, Some(Err(LlmError::Interrupted)), "told, not cut short silently");
    assert_eq!(next(&mut follower).await, None);
    // Nothing was stored; the next caller computes the answer whole.
    llm.gate.add_permits(WORDS.len());
    assert_eq!(llm.live("dropped").collect::<Vec<_>>().await, tokens::<LlmError>());
    assert_eq!(llm.runs(), 2);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_entries").fetch_one(&pool).await?;
    assert_eq!(rows, 1, "only the complete answer");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn followers_that_received_nothing_compute_their_own_when_the_leader_gives_up(pool: PgPool) -> TestResult {
    let llm = Arc::new(Llm::new(cache_on(pool).await, 0));
    // The leaders start (their streams are polled) but produce nothing: the gate has no permit.
    let mut leaders = (Box::pin(llm.live("abandoned")), Box::pin(llm.whole("abandoned")));
    let live_started = tokio::time::timeout(Duration::from_millis(200), leaders.0.next()).await;
    let whole_started = tokio::time::timeout(Duration::from_millis(200), leaders.1.next()).await;
    assert!(live_started.is_err() && whole_started.is_err(), "nothing is produced without a permit");
    let followers = {
        let (a, b) = (Arc::clone(&llm), Arc::clone(&llm));
        (
            tokio::spawn(async move { a.live("abandoned").collect::<Vec<_>>().await }),
            tokio::spawn(async move { b.whole("abandoned").collect::<Vec<_>>().await }),
        )
    };
    drop(leaders);
    llm.gate.add_permits(4 * WORDS.len());
    assert_eq!(tokio::time::timeout(HANG, followers.0).await??, tokens::<LlmError>());
    assert_eq!(tokio::time::timeout(HANG, followers.1).await??, tokens::<Opaque>());
    Ok(())
}
