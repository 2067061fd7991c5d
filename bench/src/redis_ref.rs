//! The Redis reference, through the `redis` crate: GET and SET EX of the same JSON under the same keys.

use crate::data::Size;
use crate::setup::Rows;
use redis::aio::MultiplexedConnection;
use std::time::{Duration, Instant};

/// A reachable Redis server.
#[derive(Debug, Clone)]
pub struct RedisRef {
    client: redis::Client,
    /// `redis_version` from `INFO server`.
    pub version: String,
    /// Prepended to every key: the bench database's name, so that a shared Redis is not disturbed and two
    /// runs on different bench databases (the suite and its smoke test) never touch each other's keys.
    pub prefix: String,
    loaded: Rows,
}

impl RedisRef {
    /// The Redis key of a data-set key.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Connects (within 2 s) and reads the server version. Keys get the prefix `<database>:`.
    pub async fn connect(url: &str, database: &str) -> Result<RedisRef, String> {
        let client = redis::Client::open(url).map_err(|e| format!("bad REDIS_URL: {e}"))?;
        let mut conn = tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection())
            .await
            .map_err(|_| format!("no Redis answered at {url} within 2 s"))?
            .map_err(|e| format!("no Redis reachable at {url}: {e}"))?;
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await.map_err(|e| e.to_string())?;
        let version =
            info.lines().find_map(|line| line.strip_prefix("redis_version:")).unwrap_or("unknown").trim().to_owned();
        Ok(RedisRef { client, version, prefix: format!("{database}:"), loaded: Rows { k1: 0, k10: 0 } })
    }

    /// One connection per client.
    pub async fn connections(&self, n: usize) -> Result<Vec<MultiplexedConnection>, String> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(self.client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?);
        }
        Ok(conns)
    }

    /// Loads the data set (pipelined SET EX).
    pub async fn load(&mut self, rows: Rows) -> Result<(), String> {
        let began = Instant::now();
        let mut conn = self.client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
        for size in [Size::K1, Size::K10] {
            let n = rows.of(size);
            let mut id = 1;
            while id <= n {
                let last = (id + 999).min(n);
                let mut pipe = redis::pipe();
                for i in id..=last {
                    pipe.cmd("SET").arg(self.key(&size.key(i))).arg(size.json(i)).arg("EX").arg(86_400).ignore();
                }
                pipe.query_async::<()>(&mut conn).await.map_err(|e| format!("Redis load: {e}"))?;
                id = last + 1;
            }
        }
        self.loaded = rows;
        eprintln!("[setup] loaded the data set into Redis in {:.1} s", began.elapsed().as_secs_f64());
        Ok(())
    }

    /// Deletes what [`load`](Self::load) wrote.
    pub async fn cleanup(&self) -> Result<(), String> {
        let mut conn = self.client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
        for size in [Size::K1, Size::K10] {
            let n = self.loaded.of(size);
            let mut id = 1;
            while id <= n {
                let last = (id + 999).min(n);
                let keys: Vec<String> = (id..=last).map(|i| self.key(&size.key(i))).collect();
                redis::cmd("DEL").arg(keys).query_async::<()>(&mut conn).await.map_err(|e| e.to_string())?;
                id = last + 1;
            }
        }
        Ok(())
    }
}
