//! The three coalesced operations (see `coalesce.rs`): reads, writes and deletes, each as one statement for
//! many keys, and as the one-key statement for a batch of one.

use crate::channel::keys_payload;
use crate::entry::{EntryMeta, Lookup};
use crate::server::coalesce::{Answer, Kind, Outcome};
use crate::server::sql;
use crate::tags::Tags;
use sqlx::postgres::PgConnection;
use std::collections::HashMap;
use std::sync::Arc;

/// A read of one key: a live entry, or one expired less than `stale_ms` ago (0 for a plain get).
#[derive(Debug, Clone)]
pub(crate) struct ReadJob {
    pub(crate) key: String,
    pub(crate) stale_ms: i64,
    /// The length of its JSON, once a batch deferred it for being too long to fit.
    pub(crate) bytes: Option<usize>,
}

impl ReadJob {
    pub(crate) fn new(key: impl Into<String>, stale_ms: i64) -> ReadJob {
        ReadJob { key: key.into(), stale_ms, bytes: None }
    }
}

/// Reads. One response brings back at most `max_bytes` of JSON: each key's row has a cap, its known length
/// or an equal share of what the known ones leave, and a row past its cap is deferred to a later batch, which
/// then has room for it (see `coalesce.rs`). A batch of one key sends [`sql::LOOKUP`], which has no cap, so a
/// value larger than the budget still comes back, alone.
#[derive(Debug, Clone)]
pub(crate) struct Reads {
    max_bytes: usize,
    /// The weight of a key whose length is not known yet: the budget split over a full batch.
    unknown_share: usize,
}

impl Reads {
    pub(crate) fn new(max_bytes: usize, max_keys: usize) -> Reads {
        let max_bytes = max_bytes.max(1);
        Reads { max_bytes, unknown_share: (max_bytes / max_keys.max(1)).max(1) }
    }

    /// Each job's cap: its known length, or an equal share of what the known lengths leave of the budget.
    fn caps(&self, jobs: &[ReadJob]) -> Vec<usize> {
        let known: usize = jobs.iter().filter_map(|job| job.bytes).sum();
        let unknown = jobs.iter().filter(|job| job.bytes.is_none()).count().max(1);
        let share = self.max_bytes.saturating_sub(known) / unknown;
        jobs.iter().map(|job| job.bytes.unwrap_or(share)).collect()
    }
}

pub(crate) struct ReadParams {
    /// Distinct (key, stale window) pairs: callers of one key share its row.
    keys: Vec<String>,
    stale_ms: Vec<i64>,
    /// Each pair's cap, in bytes of JSON.
    caps: Vec<i64>,
    /// For each job, its pair's index.
    slots: Vec<usize>,
}

type ReadRow = (
    i64,
    Option<String>,
    Option<i32>,
    Option<i64>,
    Option<bool>,
    i64,
    Option<Vec<String>>,
    Option<i64>,
    Option<String>,
);

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

    fn weight(&self, job: &ReadJob) -> usize {
        job.bytes.unwrap_or(self.unknown_share)
    }

    fn budget(&self) -> usize {
        self.max_bytes
    }

    fn deferred(job: &mut ReadJob, bytes: usize) {
        job.bytes = Some(bytes);
    }

    fn params(&self, jobs: &[ReadJob]) -> ReadParams {
        if let [job] = jobs {
            // The common case, a lone get: nothing to share, and no cap (the one-key statement has none).
            let (keys, stale_ms) = (vec![job.key.clone()], vec![job.stale_ms]);
            return ReadParams { keys, stale_ms, caps: vec![i64::MAX], slots: vec![0] };
        }
        let mut index = HashMap::with_capacity(jobs.len());
        let (mut keys, mut stale_ms, mut caps) = (Vec::new(), Vec::new(), Vec::new());
        let mut slots = Vec::with_capacity(jobs.len());
        for (job, cap) in jobs.iter().zip(self.caps(jobs)) {
            let cap = i64::try_from(cap).unwrap_or(i64::MAX);
            let slot = *index.entry((job.key.as_str(), job.stale_ms)).or_insert_with(|| {
                keys.push(job.key.clone());
                stale_ms.push(job.stale_ms);
                caps.push(cap);
                keys.len() - 1
            });
            // Callers of one key share a row: it may be as long as the largest of their caps.
            caps[slot] = caps[slot].max(cap);
            slots.push(slot);
        }
        ReadParams { keys, stale_ms, caps, slots }
    }

    async fn run<'c>(conn: &'c mut PgConnection, params: &'c ReadParams) -> Answer<Vec<Outcome<Lookup>>> {
        let found: Vec<Outcome<Lookup>> = if params.keys.len() == 1 {
            let (json, remaining_ms, fresh, db_now_us, tags, compute_us, snapshot) =
                sqlx::query_as::<_, LookupRow>(sql::LOOKUP)
                    .bind(&params.keys[0])
                    .bind(params.stale_ms[0])
                    .fetch_one(conn)
                    .await?;
            let meta = EntryMeta::from_columns(tags, compute_us);
            let (fresh, snapshot) = (fresh.unwrap_or(false), snapshot.map(Into::into));
            vec![Outcome::Done(Lookup { json, remaining_ms, fresh, db_now_us, as_of: None, meta, snapshot })]
        } else {
            let rows = sqlx::query_as::<_, ReadRow>(sql::READ_MANY)
                .bind(&params.keys)
                .bind(&params.stale_ms)
                .bind(&params.caps)
                .fetch_all(conn)
                .await?;
            // The statement's snapshot comes in one row only: every lookup of the batch shares it.
            let snapshot: Option<Arc<str>> = rows.iter().find_map(|row| row.8.as_deref()).map(Into::into);
            let mut found: Vec<Option<Outcome<Lookup>>> = vec![None; params.keys.len()];
            for (i, json, deferred, remaining_ms, fresh, db_now_us, tags, compute_us, _) in rows {
                let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| found.get_mut(i)) else { continue };
                *slot = Some(match deferred {
                    Some(bytes) => Outcome::Deferred { bytes: usize::try_from(bytes).unwrap_or(usize::MAX) },
                    None => Outcome::Done(Lookup {
                        json,
                        remaining_ms,
                        fresh: fresh.unwrap_or(false),
                        db_now_us,
                        as_of: None,
                        meta: EntryMeta::from_columns(tags, compute_us),
                        snapshot: snapshot.clone(),
                    }),
                });
            }
            found
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| sqlx::Error::Protocol("a coalesced read returned no row for a key".into()))?
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

    async fn run<'c>(conn: &'c mut PgConnection, p: &'c WriteParams) -> Answer<Vec<Outcome<bool>>> {
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
        Ok(written.into_iter().map(Outcome::Done).collect())
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

    async fn run<'c>(conn: &'c mut PgConnection, p: &'c DeleteParams) -> Answer<Vec<Outcome<u64>>> {
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
        Ok(deleted.into_iter().map(|n| Outcome::Done(n.max(0).unsigned_abs())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(key: &str, bytes: Option<usize>) -> ReadJob {
        ReadJob { bytes, ..ReadJob::new(key, 0) }
    }

    #[test]
    fn keys_of_unknown_length_share_what_the_known_ones_leave() {
        let reads = Reads::new(3_000, 100);
        let jobs = [job("a", Some(1_000)), job("b", None), job("c", Some(500)), job("d", None)];
        assert_eq!(reads.caps(&jobs), [1_000, 750, 500, 750]);
        let params = reads.params(&jobs);
        assert_eq!(params.caps, [1_000, 750, 500, 750]);
        assert!(params.caps.iter().sum::<i64>() <= 3_000, "the caps never add up past the budget");
    }

    #[test]
    fn callers_of_one_key_share_a_row_with_the_largest_cap() {
        let reads = Reads::new(1_000, 10);
        let jobs = [job("a", None), job("a", Some(600)), job("b", None)];
        let params = reads.params(&jobs);
        assert_eq!(params.keys, ["a", "b"]);
        assert_eq!(params.caps, [600, 200]);
        assert_eq!(params.slots, [0, 0, 1]);
    }

    #[test]
    fn a_lone_read_has_no_cap() {
        let params = Reads::new(10, 10).params(&[job("a", Some(1 << 20))]);
        assert_eq!(params.caps, [i64::MAX]);
    }
}
