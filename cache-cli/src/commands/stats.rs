//! `pg-cached stats`: what the table holds per namespace (entries, bytes, what they cost to compute, the
//! tokens and money one more hit of each saves), and the table's own health.
//!
//! `PgCache::stats` is not used: it has no bytes, oldest or newest entry per namespace, and its hit and miss
//! counters belong to the process that calls it (this tool's would always be zero). One grouped scan per
//! server gives everything, and the servers' results are merged per namespace.

use crate::cli::ConnectionArgs;
use crate::error::CliError;
use crate::output::{Align, Output, Paint, Render, Styled, Table};
use crate::sql;
use crate::target::{Shard, Target, Tuning};
use crate::units::{self, Micros, Timestamp};
use cache_runtime::Usage;
use serde::Serialize;
use std::collections::BTreeMap;

/// The `stats` report; its JSON shape is documented in README.md.
#[derive(Debug, Serialize)]
pub struct StatsReport {
    entries: u64,
    expired: u64,
    bytes: u64,
    /// Compute time held in live entries, all namespaces.
    compute_ms: Micros,
    /// Usage held in live entries, all namespaces.
    saved: Usage,
    namespaces: Vec<NamespaceStats>,
    tables: Vec<TableStats>,
}

/// One namespace, summed over every server.
#[derive(Debug, Clone, Serialize)]
struct NamespaceStats {
    namespace: String,
    entries: u64,
    /// Expired, not yet swept.
    expired: u64,
    /// Stored size of the values (`pg_column_size`: after compression).
    bytes: u64,
    oldest: Option<Timestamp>,
    newest: Option<Timestamp>,
    /// What the live entries cost to compute (the sum of their recorded compute times): what a hit on each
    /// of them would save once.
    compute_ms: Micros,
    /// The usage (tokens, cost) recorded with the live entries: what a hit on each of them saves once.
    saved: Usage,
}

/// `cache_entries` on one server (also read by `doctor`).
#[derive(Debug, Serialize)]
pub struct TableStats {
    shard: String,
    table_bytes: u64,
    index_bytes: u64,
    total_bytes: u64,
    pub(crate) live_tuples: u64,
    pub(crate) dead_tuples: u64,
    pub(crate) last_autovacuum: Option<Timestamp>,
    last_vacuum: Option<Timestamp>,
}

/// Runs `stats`.
///
/// # Errors
/// A database error on any server, or [`CliError::NotMigrated`].
pub async fn run(connection: &ConnectionArgs, output: Output) -> Result<(), CliError> {
    let target = Target::connect(connection, Tuning::default()).await?;
    let per_shard = target
        .on_every_shard("stats", |shard| async move { Ok((namespaces(shard).await?, table(shard).await?)) })
        .await?;
    let (namespaces, tables): (Vec<_>, Vec<_>) = per_shard.into_iter().unzip();
    let namespaces = merge(namespaces.into_iter().flatten());
    output.emit(&StatsReport {
        entries: namespaces.iter().map(|n| n.entries).sum(),
        expired: namespaces.iter().map(|n| n.expired).sum(),
        bytes: namespaces.iter().map(|n| n.bytes).sum(),
        compute_ms: namespaces.iter().map(|n| n.compute_ms).sum(),
        saved: namespaces.iter().map(|n| n.saved).sum(),
        namespaces,
        tables,
    })
}

async fn namespaces(shard: &Shard) -> Result<Vec<NamespaceStats>, CliError> {
    type Row = (String, i64, i64, i64, Option<i64>, Option<i64>, i64, i64, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(sql::NAMESPACE_STATS).fetch_all(&shard.pool).await.map_err(shard.error())?;
    let count = |n: i64| n.max(0).unsigned_abs();
    Ok(rows
        .into_iter()
        .map(|(namespace, entries, expired, bytes, oldest, newest, compute_us, input, output, cost)| NamespaceStats {
            namespace,
            entries: count(entries),
            expired: count(expired),
            bytes: count(bytes),
            oldest: oldest.map(Timestamp),
            newest: newest.map(Timestamp),
            compute_ms: Micros(count(compute_us)),
            saved: Usage { input_tokens: count(input), output_tokens: count(output), cost_micros_usd: count(cost) },
        })
        .collect())
}

/// `cache_entries`' sizes and vacuum statistics on `shard`.
///
/// # Errors
/// [`CliError::NotMigrated`] when the table does not exist; a database error.
pub async fn table(shard: &Shard) -> Result<TableStats, CliError> {
    type Row = (i64, i64, i64, i64, i64, Option<i64>, Option<i64>);
    let row: Option<Row> = sqlx::query_as(sql::TABLE_STATS).fetch_optional(&shard.pool).await.map_err(shard.error())?;
    let (table, indexes, total, live, dead, autovacuum, vacuum) =
        row.ok_or_else(|| CliError::NotMigrated { server: shard.name.clone() })?;
    Ok(TableStats {
        shard: shard.name.clone(),
        table_bytes: table.unsigned_abs(),
        index_bytes: indexes.unsigned_abs(),
        total_bytes: total.unsigned_abs(),
        live_tuples: live.unsigned_abs(),
        dead_tuples: dead.unsigned_abs(),
        last_autovacuum: autovacuum.map(Timestamp),
        last_vacuum: vacuum.map(Timestamp),
    })
}

/// Adds up the rows of one namespace from several servers, sorted by namespace.
fn merge(rows: impl IntoIterator<Item = NamespaceStats>) -> Vec<NamespaceStats> {
    let mut merged: BTreeMap<String, NamespaceStats> = BTreeMap::new();
    for row in rows {
        match merged.get_mut(&row.namespace) {
            Some(sum) => {
                sum.entries += row.entries;
                sum.expired += row.expired;
                sum.bytes += row.bytes;
                sum.oldest = sum.oldest.into_iter().chain(row.oldest).min();
                sum.newest = sum.newest.into_iter().chain(row.newest).max();
                sum.compute_ms = sum.compute_ms + row.compute_ms;
                sum.saved += row.saved;
            }
            None => {
                merged.insert(row.namespace.clone(), row);
            }
        }
    }
    merged.into_values().collect()
}

impl Render for StatsReport {
    fn render(&self, out: &mut Styled<'_>) -> std::io::Result<()> {
        out.paint(Paint::Heading, "entries")?;
        out.line(&format!(
            ": {} ({} expired, waiting for a sweep), {} of values",
            units::count(self.entries),
            units::count(self.expired),
            units::bytes(self.bytes)
        ))?;
        out.paint(Paint::Heading, "compute")?;
        out.line(&format!(": {} held in live entries", self.compute_ms))?;
        out.paint(Paint::Heading, "saved per hit")?;
        out.line(&format!(
            ": {} tokens, {} held in live entries (what one more hit of each saves; running totals are per \
             process: see metrics)",
            units::count(self.saved.tokens()),
            units::usd(self.saved.cost_micros_usd)
        ))?;
        out.paint(Paint::Heading, "hit ratio")?;
        out.line(": kept per process; see metrics")?;
        if !self.namespaces.is_empty() {
            out.line("")?;
            self.namespace_table().render(out)?;
        }
        for table in &self.tables {
            out.line("")?;
            table.render(out)?;
        }
        Ok(())
    }
}

impl StatsReport {
    fn namespace_table(&self) -> Table {
        let mut table = Table::new(&[
            ("namespace", Align::Left),
            ("entries", Align::Right),
            ("expired", Align::Right),
            ("bytes", Align::Right),
            ("compute", Align::Right),
            ("saved tokens", Align::Right),
            ("saved $", Align::Right),
            ("oldest", Align::Left),
            ("newest", Align::Left),
        ]);
        for n in &self.namespaces {
            let name = if n.namespace.is_empty() { "(none)".to_owned() } else { n.namespace.clone() };
            table.row(vec![
                name,
                units::count(n.entries),
                units::count(n.expired),
                units::bytes(n.bytes),
                n.compute_ms.to_string(),
                units::count(n.saved.tokens()),
                units::usd(n.saved.cost_micros_usd),
                units::when(n.oldest),
                units::when(n.newest),
            ]);
        }
        table
    }
}

impl TableStats {
    fn render(&self, out: &mut Styled<'_>) -> std::io::Result<()> {
        out.paint(Paint::Heading, &format!("table cache_entries on {}", self.shard))?;
        out.line("")?;
        let all = self.live_tuples + self.dead_tuples;
        let dead_share = if all == 0 { 0.0 } else { self.dead_tuples as f64 * 100.0 / all as f64 };
        out.line(&format!(
            "  size    {} heap, {} indexes, {} total",
            units::bytes(self.table_bytes),
            units::bytes(self.index_bytes),
            units::bytes(self.total_bytes)
        ))?;
        out.line(&format!(
            "  tuples  {} live, {} dead ({dead_share:.1} %)",
            units::count(self.live_tuples),
            units::count(self.dead_tuples)
        ))?;
        out.line(&format!(
            "  vacuum  last autovacuum {}, last vacuum {}",
            units::when(self.last_autovacuum),
            units::when(self.last_vacuum)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(namespace: &str, entries: u64, oldest: i64, newest: i64) -> NamespaceStats {
        NamespaceStats {
            namespace: namespace.into(),
            entries,
            expired: 1,
            bytes: 10,
            oldest: Some(Timestamp(oldest)),
            newest: Some(Timestamp(newest)),
            compute_ms: Micros(entries * 1000),
            saved: Usage { input_tokens: entries, output_tokens: 1, cost_micros_usd: 10 },
        }
    }

    #[test]
    fn namespaces_of_shards_add_up() {
        let merged = merge([row("b", 1, 5, 9), row("a", 2, 3, 4), row("b", 3, 2, 7)]);
        assert_eq!(merged.iter().map(|n| n.namespace.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let b = &merged[1];
        assert_eq!((b.entries, b.expired, b.bytes, b.compute_ms), (4, 2, 20, Micros(4000)));
        assert_eq!(b.saved, Usage { input_tokens: 4, output_tokens: 2, cost_micros_usd: 20 });
        assert_eq!((b.oldest, b.newest), (Some(Timestamp(2)), Some(Timestamp(9))));
    }
}
