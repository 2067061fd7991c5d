//! The `#[pg_cached]` rows: a memoized method called on a hit, against `PgCache::get` of the same key.
//!
//! The difference is what the macro adds to a lookup: fingerprinting the arguments, its bookkeeping
//! (single-flight, counters) and decoding the stored value into the return type.

use crate::data::{Answer, Payload, Retrieval, Size};
use crate::harness::{drive, Measurement};
use cache_runtime::{pg_cached, PgCache};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A service with two memoized methods, as an application writes them.
#[derive(Debug, Clone)]
pub struct Service {
    cache: PgCache,
}

impl Service {
    /// Wraps a cache.
    pub fn new(cache: PgCache) -> Service {
        Service { cache }
    }

    /// A retrieval: a query and a result count in, five documents (~1 KB) out.
    #[pg_cached(cache = self.cache, namespace = "bench_retrieval", ttl = "1d")]
    pub async fn retrieve(&self, query: &str, max_results: u32) -> Result<Retrieval, Infallible> {
        let id = query.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let mut result = Retrieval::sample(id);
        result.documents.truncate(max_results as usize);
        Ok(result)
    }

    /// An answer: a question and a model in, ~10 KB out.
    #[pg_cached(cache = self.cache, namespace = "bench_answer", ttl = "1d")]
    pub async fn answer(&self, question: &str, model: &str) -> Result<Answer, Infallible> {
        let id = question.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let mut answer = Answer::sample(id);
        model.clone_into(&mut answer.model);
        Ok(answer)
    }

    async fn call(&self, size: Size, argument: &str) -> Result<(), String> {
        match size {
            Size::K1 => self.retrieve(argument, 5).await.map(drop),
            Size::K10 => self.answer(argument, "example-model-2025").await.map(drop),
        }
        .map_err(|never| match never {})
    }

    fn key(&self, size: Size, argument: &str) -> Result<String, String> {
        match size {
            Size::K1 => self.retrieve_cache_key(argument, 5),
            Size::K10 => self.answer_cache_key(argument, "example-model-2025"),
        }
        .map_err(|e| e.to_string())
    }
}

/// The arguments of the memoized calls, and the keys they map to.
#[derive(Debug)]
struct Prepared {
    arguments: Arc<Vec<String>>,
    keys: Arc<Vec<String>>,
}

/// State of the macro rows.
#[derive(Debug)]
pub struct Memo {
    count: u64,
    prepared: HashMap<Size, Prepared>,
}

impl Memo {
    /// Memoized functions called with `count` distinct arguments.
    pub fn new(count: u64) -> Memo {
        Memo { count: count.max(1), prepared: HashMap::new() }
    }

    /// Calls each argument once (misses that store the results), then reads back the keys.
    async fn prepare(&mut self, cache: &PgCache, size: Size) -> Result<&Prepared, String> {
        if !self.prepared.contains_key(&size) {
            let began = Instant::now();
            let service = Service::new(cache.clone());
            let prefix = match size {
                Size::K1 => "what is the fastest cache for query",
                Size::K10 => "explain write-ahead logging for question",
            };
            let arguments: Vec<String> = (1..=self.count).map(|i| format!("{prefix} {i}")).collect();
            let mut keys = Vec::with_capacity(arguments.len());
            for argument in &arguments {
                service.call(size, argument).await?;
                keys.push(service.key(size, argument)?);
            }
            // Every key must now be a hit.
            for key in keys.iter().step_by((keys.len() / 50).max(1)) {
                let found = match size {
                    Size::K1 => cache.get::<Retrieval>(key).await.map(|v| v.is_some()),
                    Size::K10 => cache.get::<Answer>(key).await.map(|v| v.is_some()),
                };
                if !found.map_err(|e| e.to_string())? {
                    return Err(format!("#[pg_cached] did not store {key}"));
                }
            }
            eprintln!(
                "[setup] {} memoized calls of {} stored in {:.1} s",
                arguments.len(),
                size.label(),
                began.elapsed().as_secs_f64()
            );
            self.prepared.insert(size, Prepared { arguments: Arc::new(arguments), keys: Arc::new(keys) });
        }
        self.prepared.get(&size).ok_or_else(|| "not prepared".to_owned())
    }

    /// Drives the macro hit (`macro_hit`) or the direct get of the same keys, with `cache`.
    pub async fn drive<T: Payload>(
        &mut self,
        cache: PgCache,
        size: Size,
        clients: usize,
        macro_hit: bool,
        warmup: Duration,
        window: Duration,
    ) -> Result<Measurement, String> {
        let prepared = self.prepare(&cache, size).await?;
        let n = prepared.keys.len() as u64;
        let stats = cache.clone();
        let executions_before = stats.process_stats().executions;
        let mut measured = if macro_hit {
            let service = Service::new(cache);
            let arguments = Arc::clone(&prepared.arguments);
            drive(clients, warmup, window, move |_, r| {
                let (service, arguments) = (service.clone(), Arc::clone(&arguments));
                async move { service.call(size, &arguments[(r % n) as usize]).await }
            })
            .await
        } else {
            let keys = Arc::clone(&prepared.keys);
            drive(clients, warmup, window, move |_, r| {
                let (cache, keys) = (cache.clone(), Arc::clone(&keys));
                async move {
                    let key = &keys[(r % n) as usize];
                    match cache.get::<T>(key).await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err(format!("unexpected miss on {key}")),
                        Err(error) => Err(error.to_string()),
                    }
                }
            })
            .await
        };
        // A memoized call that ran its body was a miss: the row would not measure the hit path.
        let ran = stats.process_stats().executions.saturating_sub(executions_before);
        if ran > 0 {
            measured.errors += ran;
            measured.first_error.get_or_insert_with(|| format!("{ran} memoized calls missed and ran their body"));
        }
        Ok(measured)
    }
}
