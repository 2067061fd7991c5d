//! What `watch` measures each tick: `cache_entries`' row counters and its entries per namespace.
//!
//! Operations per second are deltas of `pg_stat_user_tables` between two ticks. Counting entries per
//! namespace reads the table itself, which would show up as reads of the cache; so the count is forced to
//! be a sequential scan (whose rows read are exactly the rows counted), its session's statistics are
//! flushed at once (`pg_stat_force_next_flush`, PostgreSQL 15+), and the next delta leaves those rows out.
//! Other sessions publish their statistics within about a second, so rates trail reality by that much.

use crate::error::CliError;
use crate::sql;
use crate::target::{Shard, Target};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

/// Cumulative row counters of `cache_entries`, summed over the servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounters {
    /// Rows read by sequential scans.
    pub seq_read: u64,
    /// Rows fetched by index scans (the cache's lookups).
    pub idx_fetch: u64,
    /// Rows inserted.
    pub inserted: u64,
    /// Rows updated (an upsert of an existing key).
    pub updated: u64,
    /// Rows deleted.
    pub deleted: u64,
}

/// One tick's measurements.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the counters were read.
    pub at: Instant,
    /// The counters then.
    pub counters: RowCounters,
    /// Rows this tool read itself after reading the counters (its namespace count); they show up in the
    /// next sample's counters.
    pub own_reads: u64,
    /// Entries per namespace, sorted by namespace.
    pub namespaces: Vec<(String, u64)>,
}

/// Operations per second between two samples; JSON shape documented in README.md.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rates {
    /// Rows read (index fetches and sequential reads, this tool's own left out).
    pub rows_read: f64,
    /// Rows inserted.
    pub inserted: f64,
    /// Rows updated.
    pub updated: f64,
    /// Rows deleted.
    pub deleted: f64,
}

impl Rates {
    /// The rates from `before` to `after`. A counter that went down (statistics were reset) counts as 0.
    pub fn between(before: &Sample, after: &Sample) -> Rates {
        let seconds = after.at.duration_since(before.at).as_secs_f64().max(0.001);
        let (b, a) = (&before.counters, &after.counters);
        let per_second = |delta: u64| delta as f64 / seconds;
        let read = a.seq_read.saturating_sub(b.seq_read).saturating_sub(before.own_reads)
            + a.idx_fetch.saturating_sub(b.idx_fetch);
        Rates {
            rows_read: per_second(read),
            inserted: per_second(a.inserted.saturating_sub(b.inserted)),
            updated: per_second(a.updated.saturating_sub(b.updated)),
            deleted: per_second(a.deleted.saturating_sub(b.deleted)),
        }
    }
}

/// Takes samples; knows which servers let it flush its own statistics.
#[derive(Debug)]
pub struct Sampler {
    can_flush: HashSet<String>,
}

impl Sampler {
    /// Asks every server whether `pg_stat_force_next_flush` is available.
    ///
    /// # Errors
    /// A database error.
    pub async fn new(target: &Target) -> Result<Sampler, CliError> {
        let answers = target
            .on_every_shard("checking statistics functions", |shard| async move {
                let can: bool =
                    sqlx::query_scalar(sql::CAN_FLUSH_OWN_STATS).fetch_one(&shard.pool).await.map_err(shard.error())?;
                Ok(can.then(|| shard.name.clone()))
            })
            .await?;
        Ok(Sampler { can_flush: answers.into_iter().flatten().collect() })
    }

    /// Reads the counters, then counts entries per namespace, on every server; merges them.
    ///
    /// # Errors
    /// [`CliError::NotMigrated`] when the table is missing; a database error.
    pub async fn sample(&self, target: &Target) -> Result<Sample, CliError> {
        let at = Instant::now();
        let per_shard = target
            .on_every_shard("sampling", |shard| sample_shard(shard, self.can_flush.contains(&shard.name)))
            .await?;
        let mut sample = Sample { at, counters: RowCounters::default(), own_reads: 0, namespaces: Vec::new() };
        let mut namespaces: BTreeMap<String, u64> = BTreeMap::new();
        for (counters, shard_namespaces) in per_shard {
            let c = &mut sample.counters;
            c.seq_read += counters.seq_read;
            c.idx_fetch += counters.idx_fetch;
            c.inserted += counters.inserted;
            c.updated += counters.updated;
            c.deleted += counters.deleted;
            for (namespace, entries) in shard_namespaces {
                sample.own_reads += entries;
                *namespaces.entry(namespace).or_default() += entries;
            }
        }
        sample.namespaces = namespaces.into_iter().collect();
        Ok(sample)
    }
}

async fn sample_shard(shard: &Shard, can_flush: bool) -> Result<(RowCounters, Vec<(String, u64)>), CliError> {
    let row: Option<(i64, i64, i64, i64, i64)> =
        sqlx::query_as(sql::ROW_COUNTERS).fetch_optional(&shard.pool).await.map_err(shard.error())?;
    let (seq, idx, ins, upd, del) = row.ok_or_else(|| CliError::NotMigrated { server: shard.name.clone() })?;
    let counters = RowCounters {
        seq_read: seq.unsigned_abs(),
        idx_fetch: idx.unsigned_abs(),
        inserted: ins.unsigned_abs(),
        updated: upd.unsigned_abs(),
        deleted: del.unsigned_abs(),
    };
    // One transaction, so the planner settings and the flush request apply to the count's own session.
    let mut tx = shard.pool.begin().await.map_err(shard.error())?;
    sqlx::query(sql::SEQUENTIAL_ONLY).execute(&mut *tx).await.map_err(shard.error())?;
    let rows: Vec<(String, i64)> =
        sqlx::query_as(sql::NAMESPACE_COUNTS).fetch_all(&mut *tx).await.map_err(shard.error())?;
    if can_flush {
        sqlx::query(sql::FLUSH_OWN_STATS).execute(&mut *tx).await.map_err(shard.error())?;
    }
    tx.commit().await.map_err(shard.error())?;
    Ok((counters, rows.into_iter().map(|(namespace, n)| (namespace, n.unsigned_abs())).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn own_reads_are_left_out_of_the_next_delta() {
        let start = Instant::now();
        let before = Sample {
            at: start,
            counters: RowCounters { seq_read: 100, idx_fetch: 10, inserted: 5, updated: 0, deleted: 9 },
            own_reads: 40,
            namespaces: Vec::new(),
        };
        let after = Sample {
            at: start + Duration::from_secs(2),
            counters: RowCounters { seq_read: 140, idx_fetch: 30, inserted: 9, updated: 2, deleted: 3 },
            own_reads: 40,
            namespaces: Vec::new(),
        };
        let rates = Rates::between(&before, &after);
        assert_eq!(rates, Rates { rows_read: 10.0, inserted: 2.0, updated: 1.0, deleted: 0.0 });
    }
}
