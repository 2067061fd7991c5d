//! Background refreshes (`stale`, `refresh_ahead`): signatures the attribute can call again from a task of
//! their own, and signatures it refreshes in the caller instead; all of them compile.
use cache_runtime::{pg_cached, PgCache};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

#[derive(Clone, Serialize, Deserialize)]
pub struct Query {
    text: String,
}

#[derive(Clone)]
pub struct Service {
    cache: Option<PgCache>,
}

impl Service {
    // Every argument kind that is copied: `&str`, `&[T]`, `Cow<str>`, `&T`, `T`.
    #[pg_cached(cache = self.cache, ttl = "1m", stale = "10m", refresh_ahead = "10%")]
    pub async fn everything(&self, text: &str, ids: &[u64], label: Cow<'_, str>, query: &Query, k: usize) -> String {
        format!("{text}{ids:?}{label}{}{k}", query.text)
    }

    #[pg_cached(cache = self.cache, ttl = "1m", stale = "10m")]
    pub async fn arc_receiver(self: &Arc<Self>, text: String) -> usize {
        text.len()
    }

    // Refreshed in the caller: `&mut self` cannot be copied.
    #[pg_cached(cache = self.cache, ttl = "1m", stale = "10m")]
    pub async fn exclusive(&mut self, x: u32) -> u32 {
        x
    }

    // Refreshed in the caller: a generic function.
    #[pg_cached(cache = self.cache, ttl = "1m", stale = "10m")]
    pub async fn generic<T: Serialize + Send + Sync>(&self, x: T) -> u32 {
        let _ = x;
        1
    }

    // Turned off.
    #[pg_cached(cache = self.cache, ttl = "1m", stale = "10m", background_refresh = false)]
    pub async fn inline(&self, x: u32) -> u32 {
        x
    }
}

/// Not `Clone`: its stale entries are refreshed in the caller (the copy gives up at run time).
pub struct Fixed {
    cache: Option<PgCache>,
}

impl Fixed {
    #[pg_cached(cache = self.cache, ttl = "1m", stale = "10m")]
    pub async fn value(&self, x: u32) -> u32 {
        x
    }
}

#[pg_cached(ttl = "1m", stale = "10m", refresh_ahead = "25%")]
async fn free(question: &str, top_k: usize) -> Vec<String> {
    vec![question.repeat(top_k)]
}

#[pg_cached(ttl = "1m", stale = "10m")]
async fn destructured((a, b): (u32, u32)) -> u32 {
    a + b
}

fn main() {
    let service = Service { cache: None };
    let _ = service.everything("q", &[1], Cow::Borrowed("l"), &Query { text: "t".into() }, 3);
    let _ = Arc::new(service.clone()).arc_receiver("x".into());
    let _ = service.generic(1u8);
    let _ = service.inline(1);
    let _ = Fixed { cache: None }.value(1);
    let _ = free("q", 2);
    let _ = destructured((1, 2));
}
