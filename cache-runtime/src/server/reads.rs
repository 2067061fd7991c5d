//! Coalesced reads (see `coalesce/`): many keys' lookups as one statement ([`sql::READ_MANY`]), and the
//! one-key statements ([`sql::LOOKUP`], [`sql::LOOKUP_LIVE`] for plain gets) for a batch of one.

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
    /// Whether the answer's snapshot is needed: only a memoized call's lookup guards a later write with it.
    needs_snapshot: bool,
}

impl ReadJob {
    /// A memoized call's lookup: the entry (or a stale one within `stale_ms`), the clock and the snapshot.
    pub(crate) fn lookup(key: impl Into<String>, stale_ms: i64) -> ReadJob {
        ReadJob { key: key.into(), stale_ms, needs_snapshot: true }
    }

    /// A plain get: the live entry only. Its [`Lookup`] has no snapshot.
    pub(crate) fn live(key: impl Into<String>) -> ReadJob {
        ReadJob { key: key.into(), stale_ms: 0, needs_snapshot: false }
    }
}

/// Reads. A batch's response holds at most `coalesce_max_keys` values (each at most `max_value_bytes`, which
/// the writes enforce): no byte budget of its own, see [`sql::READ_MANY`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Reads;

pub(crate) struct ReadParams {
    /// Distinct (key, stale window) pairs: callers of one key share its row.
    keys: Vec<String>,
    stale_ms: Vec<i64>,
    /// For each job, its pair's index.
    slots: Vec<usize>,
    /// Whether some job needs the snapshot.
    needs_snapshot: bool,
}

/// A text column decoded straight into shared storage. A value goes on to callers, the in-process tier and
/// the callers of a shared key as an `Arc<str>`: decoded as a `String` first, it would be allocated and
/// copied twice.
struct SharedText(Arc<str>);

impl sqlx::Type<sqlx::Postgres> for SharedText {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <&str as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for SharedText {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        <&str as sqlx::Decode<sqlx::Postgres>>::decode(value).map(|text| SharedText(Arc::from(text)))
    }
}

/// A row of [`sql::LOOKUP`].
#[derive(sqlx::FromRow)]
struct LookupRow {
    json: Option<SharedText>,
    remaining_ms: Option<i64>,
    fresh: Option<bool>,
    now_us: i64,
    tags: Option<Vec<String>>,
    compute_us: Option<i64>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cost_micros: Option<i64>,
    /// Absent from [`sql::LOOKUP_LIVE`].
    #[sqlx(default)]
    snapshot: Option<String>,
}

/// A row of [`sql::READ_MANY`]: a [`LookupRow`] for key `i` (from 1). The snapshot, the statement's, comes
/// in row 1 only.
#[derive(sqlx::FromRow)]
struct ReadManyRow {
    i: i64,
    #[sqlx(flatten)]
    row: LookupRow,
}

impl LookupRow {
    fn into_lookup(self, snapshot: Option<Arc<str>>) -> Lookup {
        Lookup {
            json: self.json.map(|text| text.0),
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

impl Kind for Reads {
    type Job = ReadJob;
    type Output = Lookup;
    type Params = ReadParams;
    const SAME_KEY_SHARES: bool = true;
    const SPLIT_ON_ERROR: bool = false;

    fn key(job: &ReadJob) -> &str {
        &job.key
    }

    fn params(&self, jobs: &[ReadJob], _locking: Locking) -> ReadParams {
        if let [job] = jobs {
            // The common case, a lone get: nothing to share.
            return ReadParams {
                keys: vec![job.key.clone()],
                stale_ms: vec![job.stale_ms],
                slots: vec![0],
                needs_snapshot: job.needs_snapshot,
            };
        }
        let mut index = HashMap::with_capacity(jobs.len());
        let (mut keys, mut stale_ms) = (Vec::new(), Vec::new());
        let slots = jobs
            .iter()
            .map(|job| {
                *index.entry((job.key.as_str(), job.stale_ms)).or_insert_with(|| {
                    keys.push(job.key.clone());
                    stale_ms.push(job.stale_ms);
                    keys.len() - 1
                })
            })
            .collect();
        ReadParams { keys, stale_ms, slots, needs_snapshot: jobs.iter().any(|job| job.needs_snapshot) }
    }

    async fn run<'c>(conn: &'c mut PgConnection, params: &'c ReadParams) -> sqlx::Result<Vec<Outcome<Lookup>>> {
        let found: Vec<Outcome<Lookup>> = if params.keys.len() == 1 {
            let statement = if params.needs_snapshot { sql::LOOKUP } else { sql::LOOKUP_LIVE };
            let row = sqlx::query_as::<_, LookupRow>(statement)
                .bind(&params.keys[0])
                .bind(params.stale_ms[0])
                .fetch_one(conn)
                .await?;
            vec![Outcome::Done(row.into_lookup(None))]
        } else {
            let rows = sqlx::query_as::<_, ReadManyRow>(sql::READ_MANY)
                .bind(&params.keys)
                .bind(&params.stale_ms)
                .fetch_all(conn)
                .await?;
            // The statement's snapshot comes in one row only: every lookup of the batch shares it.
            let snapshot: Option<Arc<str>> = rows.iter().find_map(|r| r.row.snapshot.as_deref()).map(Into::into);
            let mut found: Vec<Option<Outcome<Lookup>>> = vec![None; params.keys.len()];
            for row in rows {
                if let Some(slot) = usize::try_from(row.i - 1).ok().and_then(|i| found.get_mut(i)) {
                    *slot = Some(Outcome::Done(row.row.into_lookup(snapshot.clone())));
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

    #[test]
    fn callers_of_one_key_and_stale_window_share_a_row() {
        let jobs = [ReadJob::live("a"), ReadJob::live("b"), ReadJob::lookup("a", 0), ReadJob::lookup("a", 5)];
        let params = Reads.params(&jobs, Locking::Try);
        assert_eq!(params.keys, ["a", "b", "a"]);
        assert_eq!(params.stale_ms, [0, 0, 5]);
        assert_eq!(params.slots, [0, 1, 0, 2]);
        assert!(params.needs_snapshot, "a lookup among plain gets still gets its snapshot");
    }

    #[test]
    fn plain_gets_alone_leave_the_snapshot_out() {
        assert!(!Reads.params(&[ReadJob::live("a")], Locking::Try).needs_snapshot);
        assert!(!Reads.params(&[ReadJob::live("a"), ReadJob::live("a")], Locking::Try).needs_snapshot);
        assert!(Reads.params(&[ReadJob::lookup("a", 0)], Locking::Try).needs_snapshot);
    }
}
