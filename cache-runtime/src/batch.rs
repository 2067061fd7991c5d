//! The three coalesced operations (see `coalesce.rs`): reads, writes and deletes, each as one statement for
//! many keys, and as the one-key statement for a batch of one.

use crate::coalesce::{Answer, Kind};
use crate::events::keys_payload;
use crate::server::{EntryMeta, Lookup};
use crate::sql;
use crate::tags::Tags;
use sqlx::postgres::PgConnection;
use std::collections::HashMap;
use std::sync::Arc;

/// A read of one key: a live entry, or one expired less than `stale_ms` ago (0 for a plain get).
#[derive(Debug, Clone)]
pub(crate) struct ReadJob {
    pub(crate) key: String,
    pub(crate) stale_ms: i64,
}

/// Reads; rows past `max_bytes` of JSON in one response are deferred to the next batch (the first row of a
/// batch is always sent, so every read makes progress).
#[derive(Debug)]
pub(crate) struct Reads {
    pub(crate) max_bytes: i64,
}

pub(crate) struct ReadParams {
    /// Distinct (key, stale window) pairs: callers of one key share its row.
    keys: Vec<String>,
    stale_ms: Vec<i64>,
    /// For each job, its pair's index.
    slots: Vec<usize>,
    max_bytes: i64,
}

type ReadRow =
    (i64, Option<String>, Option<i64>, Option<bool>, i64, bool, Option<Vec<String>>, Option<i64>, Option<String>);

/// `sql::LOOKUP`'s row.
type LookupRow = (Option<String>, Option<i64>, Option<bool>, i64, Option<Vec<String>>, Option<i64>, Option<String>);

impl Kind for Reads {
    type Job = ReadJob;
    type Output = Lookup;
    type Params = ReadParams;
    const SAME_KEY_SHARES: bool = true;
    const SPLIT_ON_ERROR: bool = false;

    fn key(job: &ReadJob) -> &str {
        &job.key
    }

    fn params(&self, jobs: &[ReadJob]) -> ReadParams {
        if let [job] = jobs {
            // The common case, a lone get: nothing to share.
            let (keys, stale_ms) = (vec![job.key.clone()], vec![job.stale_ms]);
            return ReadParams { keys, stale_ms, slots: vec![0], max_bytes: self.max_bytes };
        }
        let mut index = HashMap::with_capacity(jobs.len());
        let (mut keys, mut stale_ms, mut slots) = (Vec::new(), Vec::new(), Vec::with_capacity(jobs.len()));
        for job in jobs {
            let slot = *index.entry((job.key.as_str(), job.stale_ms)).or_insert_with(|| {
                keys.push(job.key.clone());
                stale_ms.push(job.stale_ms);
                keys.len() - 1
            });
            slots.push(slot);
        }
        ReadParams { keys, stale_ms, slots, max_bytes: self.max_bytes }
    }

    async fn run<'c>(conn: &'c mut PgConnection, params: &'c ReadParams) -> Answer<Vec<Option<Lookup>>> {
        let found: Vec<Option<Lookup>> = if params.keys.len() == 1 {
            let (json, remaining_ms, fresh, db_now_us, tags, compute_us, snapshot) =
                sqlx::query_as::<_, LookupRow>(sql::LOOKUP)
                    .bind(&params.keys[0])
                    .bind(params.stale_ms[0])
                    .fetch_one(conn)
                    .await?;
            let meta = EntryMeta::from_columns(tags, compute_us);
            let (fresh, snapshot) = (fresh.unwrap_or(false), snapshot.map(Into::into));
            vec![Some(Lookup { json, remaining_ms, fresh, db_now_us, as_of: None, meta, snapshot })]
        } else {
            let rows = sqlx::query_as::<_, ReadRow>(sql::READ_MANY)
                .bind(&params.keys)
                .bind(&params.stale_ms)
                .bind(params.max_bytes)
                .fetch_all(conn)
                .await?;
            let mut found: Vec<Option<Lookup>> = (0..params.keys.len()).map(|_| None).collect();
            // The statement's snapshot comes in the first row only: every lookup of the batch shares it.
            let mut statement_snapshot: Option<Arc<str>> = None;
            for (i, json, remaining_ms, fresh, db_now_us, deferred, tags, compute_us, snapshot) in rows {
                if let Some(snapshot) = snapshot {
                    statement_snapshot = Some(snapshot.into());
                }
                let slot = usize::try_from(i - 1).ok().and_then(|i| found.get_mut(i));
                if let (Some(slot), false) = (slot, deferred) {
                    let fresh = fresh.unwrap_or(false);
                    let meta = EntryMeta::from_columns(tags, compute_us);
                    let snapshot = statement_snapshot.clone();
                    *slot = Some(Lookup { json, remaining_ms, fresh, db_now_us, as_of: None, meta, snapshot });
                }
            }
            found
        };
        Ok(params.slots.iter().map(|&slot| found[slot].clone()).collect())
    }
}

/// A write of one key; see `sql::WRITE` for the fields.
#[derive(Debug)]
pub(crate) struct WriteJob {
    pub(crate) key: String,
    pub(crate) json: String,
    pub(crate) namespace: String,
    pub(crate) ttl_ms: Option<i64>,
    pub(crate) keep_ms: i64,
    pub(crate) started_us: Option<i64>,
    pub(crate) started_snapshot: Option<Arc<str>>,
    pub(crate) tags: Option<Tags>,
    pub(crate) compute_us: Option<i64>,
}

/// Writes; one notification per batch names every key written.
#[derive(Debug)]
pub(crate) struct Writes {
    pub(crate) sender: u64,
    pub(crate) lock_timeout: String,
    pub(crate) async_commit: bool,
}

pub(crate) struct WriteParams {
    keys: Vec<String>,
    jsons: Vec<String>,
    ttl_ms: Vec<Option<i64>>,
    keep_ms: Vec<i64>,
    started_us: Vec<Option<i64>>,
    namespaces: Vec<String>,
    /// Each key's tags, as an array for the one-key statement, and joined by U+001F for the batched one.
    tags: Vec<Option<Tags>>,
    compute_us: Vec<Option<i64>>,
    started_snapshots: Vec<Option<Arc<str>>>,
    notify: String,
    lock_timeout: String,
    async_commit: bool,
}

impl Kind for Writes {
    type Job = WriteJob;
    type Output = bool;
    type Params = WriteParams;
    const SAME_KEY_SHARES: bool = false;
    const SPLIT_ON_ERROR: bool = true;

    fn key(job: &WriteJob) -> &str {
        &job.key
    }

    fn params(&self, jobs: &[WriteJob]) -> WriteParams {
        WriteParams {
            keys: jobs.iter().map(|j| j.key.clone()).collect(),
            jsons: jobs.iter().map(|j| j.json.clone()).collect(),
            ttl_ms: jobs.iter().map(|j| j.ttl_ms).collect(),
            keep_ms: jobs.iter().map(|j| j.keep_ms).collect(),
            started_us: jobs.iter().map(|j| j.started_us).collect(),
            namespaces: jobs.iter().map(|j| j.namespace.clone()).collect(),
            tags: jobs.iter().map(|j| j.tags.clone()).collect(),
            compute_us: jobs.iter().map(|j| j.compute_us).collect(),
            started_snapshots: jobs.iter().map(|j| j.started_snapshot.clone()).collect(),
            notify: keys_payload(self.sender, jobs.iter().map(|j| j.key.as_str())),
            lock_timeout: self.lock_timeout.clone(),
            async_commit: self.async_commit,
        }
    }

    async fn run<'c>(conn: &'c mut PgConnection, p: &'c WriteParams) -> Answer<Vec<Option<bool>>> {
        let written: Vec<bool> = if p.keys.len() == 1 {
            let written = sqlx::query_scalar::<_, bool>(sql::WRITE)
                .bind(&p.keys[0])
                .bind(&p.jsons[0])
                .bind(p.ttl_ms[0])
                .bind(p.keep_ms[0])
                .bind(p.started_us[0])
                .bind(&p.namespaces[0])
                .bind(&p.notify)
                .bind(&p.lock_timeout)
                .bind(p.async_commit)
                .bind(p.tags[0].as_deref())
                .bind(p.compute_us[0])
                .bind(p.started_snapshots[0].as_deref())
                .fetch_one(conn)
                .await?;
            vec![written]
        } else {
            sqlx::query_scalar::<_, Vec<bool>>(sql::WRITE_MANY)
                .bind(&p.keys)
                .bind(&p.jsons)
                .bind(&p.ttl_ms)
                .bind(&p.keep_ms)
                .bind(&p.started_us)
                .bind(&p.namespaces)
                .bind(&p.notify)
                .bind(&p.lock_timeout)
                .bind(p.async_commit)
                .bind(p.tags.iter().map(|t| t.as_ref().map(|t| t.join("\u{1f}"))).collect::<Vec<_>>())
                .bind(&p.compute_us)
                .bind(p.started_snapshots.iter().map(|s| s.as_deref()).collect::<Vec<_>>())
                .fetch_one(conn)
                .await?
        };
        Ok(written.into_iter().map(Some).collect())
    }
}

/// A delete of one key, which is also its invalidation.
#[derive(Debug)]
pub(crate) struct DeleteJob {
    pub(crate) key: String,
}

#[derive(Debug)]
pub(crate) struct Deletes {
    pub(crate) sender: u64,
    pub(crate) lock_timeout: String,
}

pub(crate) struct DeleteParams {
    keys: Vec<String>,
    notify: String,
    lock_timeout: String,
}

impl Kind for Deletes {
    type Job = DeleteJob;
    type Output = u64;
    type Params = DeleteParams;
    const SAME_KEY_SHARES: bool = false;
    const SPLIT_ON_ERROR: bool = true;

    fn key(job: &DeleteJob) -> &str {
        &job.key
    }

    fn params(&self, jobs: &[DeleteJob]) -> DeleteParams {
        DeleteParams {
            keys: jobs.iter().map(|j| j.key.clone()).collect(),
            notify: keys_payload(self.sender, jobs.iter().map(|j| j.key.as_str())),
            lock_timeout: self.lock_timeout.clone(),
        }
    }

    async fn run<'c>(conn: &'c mut PgConnection, p: &'c DeleteParams) -> Answer<Vec<Option<u64>>> {
        let deleted: Vec<i64> = if p.keys.len() == 1 {
            let deleted = sqlx::query_scalar::<_, i64>(sql::DELETE)
                .bind(&p.keys[0])
                .bind(&p.notify)
                .bind(&p.lock_timeout)
                .fetch_one(conn)
                .await?;
            vec![deleted]
        } else {
            sqlx::query_scalar::<_, Vec<i64>>(sql::DELETE_MANY)
                .bind(&p.keys)
                .bind(&p.notify)
                .bind(&p.lock_timeout)
                .fetch_one(conn)
                .await?
        };
        Ok(deleted.into_iter().map(|n| Some(n.max(0).unsigned_abs())).collect())
    }
}
