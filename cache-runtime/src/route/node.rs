//! One shard: its primary [`Server`], and the standbys that may answer its reads.
//!
//! Reads of values (`get`, `get_many`, a memoized call's first lookup) go to a standby known to be within
//! the lag bound, if there is one, and to the primary otherwise or when the standby fails; everything else
//! goes to the primary (see `replicas.rs`).

use super::replicas::{Replica, Replicas};
use crate::entry::{LiveEntry, Lookup, ReadFrom};
use crate::error::{CacheError, Result};
use crate::server::reads::ReadJob;
use crate::server::Server;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug)]
pub(crate) struct Node {
    primary: Server,
    /// Standbys that may answer reads (opt-in).
    replicas: Option<Arc<Replicas>>,
}

impl Node {
    pub(crate) fn new(primary: Server, replicas: Option<Arc<Replicas>>) -> Node {
        Node { primary, replicas }
    }

    /// The primary: every write, delete, lease, purge and report runs there.
    pub(crate) fn primary(&self) -> &Server {
        &self.primary
    }

    pub(crate) fn replicas(&self) -> Option<&Replicas> {
        self.replicas.as_deref()
    }

    /// A memoized call's lookup: a live entry, or one expired less than `stale_window_ms` ago.
    pub(crate) async fn lookup(&self, key: &str, stale_window_ms: i64, from: ReadFrom) -> Result<Lookup> {
        self.read(ReadJob::lookup(key, stale_window_ms), from).await
    }

    /// A live entry.
    pub(crate) async fn get_live(&self, key: &str, from: ReadFrom) -> Result<Option<LiveEntry>> {
        Ok(self.read(ReadJob::live(key), from).await?.live())
    }

    async fn read(&self, job: ReadJob, from: ReadFrom) -> Result<Lookup> {
        if from == ReadFrom::AnyCopy {
            if let Some((replicas, replica, as_of)) = self.standby() {
                replica.sent(1);
                match self.primary.read_on(&replica.reads, job.clone()).await {
                    Ok(lookup) => return Ok(lookup.answered_by_standby(as_of, replicas.max_lag())),
                    Err(error) => {
                        tracing::debug!(replica = %replica.name, %error, "read replica failed; reading the primary");
                        replicas.failed(replica);
                    }
                }
            }
        }
        self.primary.read(job).await
    }

    /// Live entries of `keys`, in order (in as few statements as the limits allow).
    pub(crate) async fn get_many_live(&self, keys: &[&str]) -> Vec<Result<Option<LiveEntry>>> {
        let Some((replicas, replica, as_of)) = self.standby() else {
            return self.primary.read_many(keys).await.into_iter().map(|lookup| lookup.map(Lookup::live)).collect();
        };
        replica.sent(keys.len());
        let answers = self.primary.read_many_on(&replica.reads, keys).await;
        if answers.iter().any(Result::is_err) {
            replicas.failed(replica);
        }
        let mut found: Vec<Option<Result<Lookup>>> =
            answers.into_iter().map(|a| a.ok().map(|l| Ok(l.answered_by_standby(as_of, replicas.max_lag())))).collect();
        // What the standby did not answer, the primary does.
        let missing: Vec<usize> = (0..found.len()).filter(|&i| found[i].is_none()).collect();
        if !missing.is_empty() {
            let retry: Vec<&str> = missing.iter().map(|&i| keys[i]).collect();
            for (i, answer) in missing.into_iter().zip(self.primary.read_many(&retry).await) {
                found[i] = Some(answer);
            }
        }
        found
            .into_iter()
            .map(|lookup| {
                let unanswered = || Err(CacheError::Internal("a read got no answer from the primary".into()));
                lookup.unwrap_or_else(unanswered).map(Lookup::live)
            })
            .collect()
    }

    /// A standby to read from now, if the shard has any and one is within the lag bound.
    fn standby(&self) -> Option<(&Arc<Replicas>, &Replica, Instant)> {
        let replicas = self.replicas.as_ref()?;
        let (replica, as_of) = replicas.pick()?;
        Some((replicas, replica, as_of))
    }
}
