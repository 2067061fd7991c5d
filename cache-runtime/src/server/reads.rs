//! Coalesced reads (see `coalesce/`): many keys' lookups as one statement ([`sql::READ_MANY`]), and the
//! one-key statement ([`sql::LOOKUP`]) for a batch of one.

use super::coalesce::{Kind, Locking, Outcome};
use super::sql;
use crate::entry::{EntryMeta, Lookup};
use crate::usage::Usage;
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

/// A row of [`sql::LOOKUP`].
#[derive(sqlx::FromRow)]
struct LookupRow {
    json: Option<String>,
    remaining_ms: Option<i64>,
    fresh: Option<bool>,
    now_us: i64,
    tags: Option<Vec<String>>,
    compute_us: Option<i64>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cost_micros: Option<i64>,
    snapshot: Option<String>,
}

/// A row of [`sql::READ_MANY`]: a [`LookupRow`] for key `i` (from 1), or, when its JSON was longer than its
/// cap, that length instead. The snapshot, the statement's, comes in row 1 only.
#[derive(sqlx::FromRow)]
struct ReadManyRow {
    i: i64,
    deferred_bytes: Option<i32>,
    #[sqlx(flatten)]
    row: LookupRow,
}

impl LookupRow {
    fn into_lookup(self, snapshot: Option<Arc<str>>) -> Lookup {
        Lookup {
            json: self.json,
            remaining_ms: self.remaining_ms,
            fresh: self.fresh.unwrap_or(false),
            db_now_us: self.now_us,
            as_of: None,
            meta: EntryMeta::from_columns(
                self.tags,
                self.compute_us,
                Usage::from_columns(self.input_tokens, self.output_tokens, self.cost_micros),
            ),
            snapshot: snapshot.or_else(|| self.snapshot.map(Into::into)),
        }
    }
}

impl ReadManyRow {
    fn into_outcome(self, snapshot: &Option<Arc<str>>) -> Outcome<Lookup> {
        match self.deferred_bytes {
            Some(bytes) => Outcome::Deferred { bytes: usize::try_from(bytes).unwrap_or(usize::MAX) },
            None => Outcome::Done(self.row.into_lookup(snapshot.clone())),
        }
    }
}

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

    fn params(&self, jobs: &[ReadJob], _locking: Locking) -> ReadParams {
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

    async fn run<'c>(conn: &'c mut PgConnection, params: &'c ReadParams) -> sqlx::Result<Vec<Outcome<Lookup>>> {
        let found: Vec<Outcome<Lookup>> = if params.keys.len() == 1 {
            let row = sqlx::query_as::<_, LookupRow>(sql::LOOKUP)
                .bind(&params.keys[0])
                .bind(params.stale_ms[0])
                .fetch_one(conn)
                .await?;
            vec![Outcome::Done(row.into_lookup(None))]
        } else {
            let rows = sqlx::query_as::<_, ReadManyRow>(sql::READ_MANY)
                .bind(&params.keys)
                .bind(&params.stale_ms)
                .bind(&params.caps)
                .fetch_all(conn)
                .await?;
            // The statement's snapshot comes in one row only: every lookup of the batch shares it.
            let snapshot: Option<Arc<str>> = rows.iter().find_map(|r| r.row.snapshot.as_deref()).map(Into::into);
            let mut found: Vec<Option<Outcome<Lookup>>> = vec![None; params.keys.len()];
            for row in rows {
                if let Some(slot) = usize::try_from(row.i - 1).ok().and_then(|i| found.get_mut(i)) {
                    *slot = Some(row.into_outcome(&snapshot));
                }
            }
            found
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| sqlx::Error::Protocol("a coalesced read returned no row for a key".into()))?
        };
        Ok(params.slots.iter().map(|&slot| found[slot].clone()).collect())
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
        let params = reads.params(&jobs, Locking::Try);
        assert_eq!(params.caps, [1_000, 750, 500, 750]);
        assert!(params.caps.iter().sum::<i64>() <= 3_000, "the caps never add up past the budget");
    }

    #[test]
    fn callers_of_one_key_share_a_row_with_the_largest_cap() {
        let reads = Reads::new(1_000, 10);
        let jobs = [job("a", None), job("a", Some(600)), job("b", None)];
        let params = reads.params(&jobs, Locking::Try);
        assert_eq!(params.keys, ["a", "b"]);
        assert_eq!(params.caps, [600, 200]);
        assert_eq!(params.slots, [0, 0, 1]);
    }

    #[test]
    fn a_lone_read_has_no_cap() {
        let params = Reads::new(10, 10).params(&[job("a", Some(1 << 20))], Locking::Try);
        assert_eq!(params.caps, [i64::MAX]);
    }
}
