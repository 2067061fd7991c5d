//! Encryption at rest with key rotation (issue 27), against a real PostgreSQL: values of encrypted namespaces
//! are stored as envelopes that hold no plaintext, round-trip through the store API, bulk operations,
//! memoized functions and streams; a wrong key, a ciphertext copied under another key, an unknown key id and
//! a plain value in an encrypted namespace are each a counted miss, never a wrong value or an error; a
//! rotation while services read and write leaves every entry under the new key, and every read during it is
//! the right value or a miss that docs/SECURITY.md explains; no `Debug` output shows key bytes.

use cache_runtime::{pg_cached, CacheError, Keyring, PgCache, PgCacheBuilder};
use futures_util::stream::{self, StreamExt};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const HOUR: Option<Duration> = Some(Duration::from_secs(3600));
/// Made-up personal data: what must never be readable in the table.
const SECRET: &str = "Jane Roe, born 1961-04-02, HbA1c 7.9%";

fn old_key() -> Keyring {
    Keyring::new("k1", [0xA1; 32]).expect("a valid id")
}

fn new_then_old() -> Keyring {
    Keyring::new("k2", [0xB2; 32]).and_then(|ring| ring.with_key("k1", [0xA1; 32])).expect("valid ids")
}

fn builder(pool: &PgPool) -> PgCacheBuilder {
    PgCache::builder().pool(pool.clone()).sweep_interval(None)
}

async fn encrypting(pool: &PgPool, keyring: Keyring) -> Result<PgCache, CacheError> {
    builder(pool).encryption(keyring).encrypt_namespaces(["secret"]).build().await
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Answer {
    text: String,
    sources: Vec<String>,
}

fn answer(text: &str) -> Answer {
    Answer { text: text.to_owned(), sources: vec!["doc-7".into(), "doc-9".into()] }
}

async fn stored(pool: &PgPool, key: &str) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT data::text FROM cache_entries WHERE cache_key = $1").bind(key).fetch_one(pool).await
}

/// Every stored value, as text, that holds `needle`.
async fn rows_holding(pool: &PgPool, needle: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM cache_entries WHERE strpos(data::text, $1) > 0")
        .bind(needle)
        .fetch_one(pool)
        .await
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn store_api_round_trips_and_stores_no_plaintext(pool: PgPool) -> TestResult {
    let cache = encrypting(&pool, old_key()).await?;
    cache.set("secret:q1", &answer(SECRET), HOUR).await?;
    assert_eq!(cache.get::<Answer>("secret:q1").await?, Some(answer(SECRET)));
    let data = stored(&pool, "secret:q1").await?;
    assert!(data.contains("\"pg_cached_enc\": 1") && data.contains("\"kid\": \"k1\""), "{data}");
    assert_eq!(rows_holding(&pool, "Jane").await?, 0, "no plaintext at rest: {data}");

    // Bulk operations too; a long value is compressed before it is encrypted, and comes back whole.
    let long = SECRET.repeat(200);
    cache.set_many(&[("secret:m1", answer(&long)), ("secret:m2", answer("two"))], HOUR).await?;
    let many = cache.get_many::<Answer>(&["secret:m1", "secret:m2", "secret:none"]).await?;
    assert_eq!(many, [Some(answer(&long)), Some(answer("two")), None]);
    assert!(stored(&pool, "secret:m1").await?.contains("\"z\": \"zstd\""));
    assert!(stored(&pool, "secret:m1").await?.len() < long.len() / 4, "compressed before encryption");
    assert_eq!(rows_holding(&pool, "Jane").await?, 0);

    // Other namespaces stay plain, and are read as before; keys and tags stay plain everywhere.
    cache.set_tagged("public:q1", &answer("open"), HOUR, &["doc:7"]).await?;
    assert!(stored(&pool, "public:q1").await?.contains("open"));
    assert_eq!(cache.get::<Answer>("public:q1").await?, Some(answer("open")));
    assert_eq!(cache.process_stats().undecryptable, 0);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn encrypt_all_covers_every_namespace_and_needs_a_keyring(pool: PgPool) -> TestResult {
    let cache = builder(&pool).encryption(old_key()).encrypt_all().build().await?;
    cache.set("anything:1", &SECRET, HOUR).await?;
    assert_eq!(cache.get::<String>("anything:1").await?.as_deref(), Some(SECRET));
    assert_eq!(rows_holding(&pool, "Jane").await?, 0);

    for refused in [builder(&pool).encrypt_all(), builder(&pool).encrypt_namespaces(["secret"])] {
        let error = refused.build().await.expect_err("no keyring");
        assert!(matches!(&error, CacheError::Config(m) if m.contains("keyring")), "{error}");
    }
    // Semantic entries would keep their text in plain form: refused in an encrypted namespace.
    let error = cache.set_similar("anything", "", SECRET, &1, None).await.expect_err("refused");
    assert!(matches!(&error, CacheError::Config(m) if m.contains("encrypted")), "{error}");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_wrong_key_an_unknown_key_id_and_a_plain_value_are_counted_misses(pool: PgPool) -> TestResult {
    let writer = encrypting(&pool, old_key()).await?;
    writer.set("secret:a", &SECRET, HOUR).await?;

    // The same id over other bytes: authentication fails.
    let wrong = encrypting(&pool, Keyring::new("k1", [0x00; 32])?).await?;
    assert_eq!(wrong.get::<String>("secret:a").await?, None);
    // A keyring without k1.
    let stranger = encrypting(&pool, Keyring::new("k9", [0xA1; 32])?).await?;
    assert_eq!(stranger.get::<String>("secret:a").await?, None);
    for reader in [&wrong, &stranger] {
        let counts = reader.process_stats();
        assert_eq!((counts.undecryptable, counts.misses, counts.errors), (1, 1, 0));
    }

    // A plain value in an encrypted namespace (written before encryption was on, or by someone else).
    let plain = builder(&pool).build().await?;
    plain.set("secret:plain", &"written in the clear", HOUR).await?;
    assert_eq!(writer.get::<String>("secret:plain").await?, None);
    assert_eq!(writer.process_stats().undecryptable, 1);
    // ...which the next write replaces with an encrypted one.
    writer.set("secret:plain", &"now sealed", HOUR).await?;
    assert_eq!(writer.get::<String>("secret:plain").await?.as_deref(), Some("now sealed"));
    // A cache without a keyring reads an envelope as a miss, not as the envelope.
    assert_eq!(plain.get::<serde_json::Value>("secret:a").await?, None);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_ciphertext_copied_under_another_key_is_a_counted_miss(pool: PgPool) -> TestResult {
    let cache = encrypting(&pool, old_key()).await?;
    cache.set("secret:alice", &"alice's answer", HOUR).await?;
    cache.set("secret:bob", &"bob's answer", HOUR).await?;
    // A DBA (or an attacker with write access) copies Alice's entry over Bob's.
    sqlx::query(
        "UPDATE cache_entries SET data = (SELECT data FROM cache_entries WHERE cache_key = 'secret:alice') \
         WHERE cache_key = 'secret:bob'",
    )
    .execute(&pool)
    .await?;
    assert_eq!(cache.get::<String>("secret:bob").await?, None, "never Alice's value");
    assert_eq!(cache.get::<String>("secret:alice").await?.as_deref(), Some("alice's answer"));
    let counts = cache.process_stats();
    assert_eq!((counts.undecryptable, counts.hits, counts.errors), (1, 1, 0));
    let stats = cache.stats().await?;
    let secret = stats.namespaces.iter().find(|ns| ns.namespace == "secret").expect("the namespace");
    assert_eq!(secret.process.undecryptable, 1, "shown in stats, per namespace");
    Ok(())
}

struct Service {
    cache: PgCache,
    runs: AtomicU64,
}

impl Service {
    #[pg_cached(cache = self.cache, namespace = "diagnosis", ttl = "1h", encrypt)]
    async fn diagnose(&self, patient: &str) -> Answer {
        self.runs.fetch_add(1, Ordering::SeqCst);
        answer(&format!("{patient}: {SECRET}"))
    }

    #[pg_cached(cache = self.cache, namespace = "dictation", ttl = "1h", stream, encrypt)]
    fn dictate(&self, patient: &str) -> impl Stream<Item = Result<String, String>> + Send + '_ {
        // Counted when polled: building a stream is not running it.
        let words = vec![Ok(patient.to_owned()), Ok(SECRET.to_owned())];
        stream::once(async move { self.runs.fetch_add(1, Ordering::SeqCst) })
            .flat_map(move |_| stream::iter(words.clone()))
    }
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn memoized_functions_and_streams_with_encrypt_round_trip(pool: PgPool) -> TestResult {
    // The cache encrypts no namespace of its own: `encrypt` on the function is enough.
    let service = Service { cache: builder(&pool).encryption(old_key()).build().await?, runs: AtomicU64::new(0) };
    let first = service.diagnose("p-17").await;
    assert_eq!(service.diagnose("p-17").await, first);
    let dictated: Vec<_> = service.dictate("p-17").collect().await;
    let replayed: Vec<_> = service.dictate("p-17").collect().await;
    assert_eq!(dictated, replayed);
    assert_eq!(service.runs.load(Ordering::SeqCst), 2, "each computed once, then served from the cache");
    let counts = service.cache.process_stats();
    assert_eq!((counts.hits, counts.undecryptable, counts.errors), (2, 0, 0));
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_entries").fetch_one(&pool).await?;
    assert_eq!(total, 2);
    assert_eq!(rows_holding(&pool, "Jane").await?, 0, "neither the value nor the stream is readable");
    assert_eq!(rows_holding(&pool, "pg_cached_enc").await?, 2);

    // Without a keyring the function still answers (a cache failure never fails it), uncached.
    let plain = Service { cache: builder(&pool).build().await?, runs: AtomicU64::new(0) };
    assert_eq!(plain.diagnose("p-17").await, first);
    assert_eq!(plain.diagnose("p-17").await, first);
    assert_eq!(plain.runs.load(Ordering::SeqCst), 2);
    Ok(())
}

#[test]
fn debug_output_shows_no_key_bytes() -> TestResult {
    let encoded = "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s="; // 32 bytes of 0xAB
    let keyring = Keyring::parse(&format!("current:{encoded}, retired:{encoded}"))?;
    let builder = PgCache::builder().database_url("postgres://u@h/db").encryption(keyring.clone()).encrypt_all();
    for shown in [format!("{keyring:?}"), format!("{keyring:#?}"), format!("{builder:?}"), format!("{builder:#?}")] {
        assert!(shown.contains("current") && shown.contains("retired"), "ids are shown: {shown}");
        for secret in [encoded, "q6ur", "171", "0xab", "0xAB", "[171"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
    Ok(())
}

/// What `key` holds in the rotation test, version `version`: readers check a value belongs to its key.
fn value_of(key: &str, version: u64) -> String {
    format!("{key}|v{version}|{SECRET}")
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn rotation_while_services_read_and_write(pool: PgPool) -> TestResult {
    const KEYS: usize = 1_200;
    let key = |i: usize| format!("secret:{i:05}");
    let before = encrypting(&pool, old_key()).await?;
    let entries: Vec<(String, String)> = (0..KEYS).map(|i| (key(i), value_of(&key(i), 0))).collect();
    for chunk in entries.chunks(200) {
        before.set_many(chunk, HOUR).await?;
    }

    // Every service now has the new keyring (new key first); one process that has not been redeployed yet
    // still has only the old key, and only reads.
    let rotated = encrypting(&pool, new_then_old()).await?;
    let stale_reader = encrypting(&pool, old_key()).await?;
    let done = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let (cache, done, wrong) = (rotated.clone(), Arc::clone(&done), Arc::clone(&wrong));
        tasks.push(tokio::spawn(async move {
            let mut reads = 0u64;
            let mut i = (task as usize * 997) % KEYS;
            while !done.load(Ordering::Relaxed) || reads < 50 {
                i = (i + 7) % KEYS;
                let k = key(i);
                match task % 4 {
                    // Writers: a new version of the key's value, or a delete.
                    0 => cache.set(&k, &value_of(&k, reads + 1), HOUR).await.map(drop)?,
                    1 if reads.is_multiple_of(5) => cache.delete(&k).await.map(drop)?,
                    // Readers: the right value, or a miss (deleted); never another key's value.
                    _ => {
                        if let Some(value) = cache.get::<String>(&k).await? {
                            if !value.starts_with(&format!("{k}|v")) {
                                wrong.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                reads += 1;
            }
            Ok::<u64, CacheError>(reads)
        }));
    }
    let stale = {
        let (cache, done, wrong) = (stale_reader.clone(), Arc::clone(&done), Arc::clone(&wrong));
        tokio::spawn(async move {
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                i = (i + 11) % KEYS;
                let k = key(i);
                if let Some(value) = cache.get::<String>(&k).await? {
                    if !value.starts_with(&format!("{k}|v")) {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok::<(), CacheError>(())
        })
    };

    let mut progress = Vec::new();
    let report = rotated.rekey(100, |so_far| progress.push(so_far.rekeyed)).await?;
    done.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    stale.await??;

    assert_eq!(wrong.load(Ordering::Relaxed), 0, "no read ever got another key's value");
    assert!(report.batches >= 2 && progress.len() as u64 == report.batches, "{report:?}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "progress only grows: {progress:?}");
    assert_eq!(report.examined, report.rekeyed + report.changed_meanwhile, "{report:?}");
    assert_eq!((report.unknown_key, report.undecryptable), (0, 0));
    assert_eq!(rotated.process_stats().undecryptable, 0, "the rotation itself caused no miss");
    // The process without the new key could not read entries under it: misses it counted, as documented.
    let stale_counts = stale_reader.process_stats();
    assert_eq!(stale_counts.errors, 0);
    assert!(stale_counts.undecryptable <= stale_counts.misses);

    // Afterwards no entry is under the retired key, and a second run has nothing to do.
    let by_id = rotated.entries_by_key_id().await?;
    assert!(by_id.iter().all(|count| count.key_id.as_deref() == Some("k2")), "{by_id:?}");
    assert!(by_id[0].entries > 0);
    let again = rotated.rekey(100, |_| {}).await?;
    assert_eq!((again.examined, again.batches), (0, 0));
    // And the new key alone reads everything.
    let new_only = encrypting(&pool, Keyring::new("k2", [0xB2; 32])?).await?;
    let sample = new_only.get_many::<String>(&(0..KEYS).map(key).collect::<Vec<_>>()).await?;
    assert!(sample.iter().flatten().count() > KEYS / 2, "most keys are still there and readable");
    assert_eq!(new_only.process_stats().undecryptable, 0);
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn rekey_leaves_what_it_cannot_open_and_needs_a_keyring(pool: PgPool) -> TestResult {
    let stranger = encrypting(&pool, Keyring::new("k0", [0x0F; 32])?).await?;
    stranger.set("secret:lost", &"under a key nobody else has", HOUR).await?;
    let old = encrypting(&pool, old_key()).await?;
    old.set("secret:a", &"a", HOUR).await?;
    old.set("secret:b", &"b", HOUR).await?;
    sqlx::query(
        "UPDATE cache_entries SET data = (SELECT data FROM cache_entries WHERE cache_key = 'secret:a') \
         WHERE cache_key = 'secret:b'",
    )
    .execute(&pool)
    .await?;
    let rotated = encrypting(&pool, new_then_old()).await?;
    let report = rotated.rekey(500, |_| {}).await?;
    assert_eq!((report.examined, report.rekeyed, report.unknown_key, report.undecryptable), (3, 1, 1, 1));
    assert_eq!(rotated.get::<String>("secret:a").await?.as_deref(), Some("a"));
    let ids: Vec<_> = rotated.entries_by_key_id().await?.into_iter().map(|c| (c.key_id, c.entries)).collect();
    assert_eq!(ids, [(Some("k0".into()), 1), (Some("k1".into()), 1), (Some("k2".into()), 1)]);

    let plain = builder(&pool).build().await?;
    assert!(matches!(plain.rekey(500, |_| {}).await, Err(CacheError::Config(_))));
    assert!(matches!(rotated.rekey(0, |_| {}).await, Err(CacheError::Config(_))));
    Ok(())
}
