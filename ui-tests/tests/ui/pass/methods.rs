//! Inherent methods: `&self`, `&mut self`, a typed receiver, associated functions, `cache = self.cache`.
use cache_runtime::{pg_cached, PgCache};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Serialize, Deserialize)]
pub struct Settings {
    calls: u32,
}

pub struct Service {
    cache: Option<PgCache>,
    calls: u32,
}

impl Service {
    #[pg_cached(cache = self.cache, ttl = "5m")]
    pub async fn shared(&self, x: u32) -> u32 {
        x + 1
    }

    #[pg_cached(cache = self.cache)]
    pub async fn exclusive(&mut self, x: u32) -> u32 {
        self.calls += 1;
        x + self.calls
    }

    #[pg_cached(cache = &self.cache)]
    async fn explicit<'a>(&'a self, x: &'a str) -> String {
        x.to_uppercase()
    }

    #[pg_cached(cache = self.cache)]
    async fn arc(self: Arc<Self>, x: u32) -> u32 {
        x * 3
    }

    // Without a receiver or `Self` in the signature, the attribute cannot tell this from a free function.
    #[pg_cached(namespace = "service.associated", companions = false)]
    async fn associated(calls: u32) -> u32 {
        calls
    }
}

impl Settings {
    // `Self` in the signature: the key includes the type, and the companions call `Self::load`.
    #[pg_cached]
    async fn load(calls: u32) -> Option<Self> {
        Some(Settings { calls })
    }
}

#[tokio::main]
async fn main() {
    let mut service = Service { cache: None, calls: 0 };
    assert_eq!(service.shared(1).await, 2);
    assert_eq!(service.exclusive(1).await, 2);
    assert_eq!(service.exclusive(1).await, 3);
    assert_eq!(service.explicit("a").await, "A");
    assert_eq!(Service::associated(7).await, 7);
    assert_eq!(Settings::load(4).await.map(|s| s.calls), Some(4));
    assert_eq!(Settings::load_refresh(5).await.map(|s| s.calls), Some(5));
    assert_eq!(Arc::new(service).arc(2).await, 6);
}
