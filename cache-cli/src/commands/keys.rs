//! `pg-cached keys [PREFIX] [--limit N]`: live keys, newest first, with their time left and size.
//!
//! `PgCache::keys` is not used: it lists keys in byte order without their metadata. Each server returns its
//! newest `limit + 1` keys; the merge keeps the newest `limit` overall, and the extra row tells whether
//! there are more.

use crate::cli::{ConnectionArgs, KeysArgs};
use crate::error::CliError;
use crate::input;
use crate::output::{Align, Output, Paint, Render, Styled, Table};
use crate::sql;
use crate::target::{Shard, Target, Tuning};
use crate::units::{self, Timestamp};
use serde::Serialize;

/// The `keys` report; its JSON shape is documented in README.md.
#[derive(Debug, Serialize)]
pub struct KeysReport {
    prefix: Option<String>,
    limit: u32,
    /// Whether more keys match than were listed.
    more: bool,
    keys: Vec<KeyInfo>,
}

/// One live entry.
#[derive(Debug, Serialize)]
struct KeyInfo {
    key: String,
    /// Milliseconds left before it expires; `null` when it never does.
    ttl_ms: Option<i64>,
    /// Stored size of its value (`pg_column_size`).
    bytes: u64,
    created: Option<Timestamp>,
    expires: Option<Timestamp>,
}

/// Runs `keys`.
///
/// # Errors
/// [`CliError::Usage`] for a prefix with a NUL; a database error on any server.
pub async fn run(connection: &ConnectionArgs, args: &KeysArgs, output: Output) -> Result<(), CliError> {
    let prefix = args.prefix.clone().unwrap_or_default();
    input::check_prefix(&prefix)?;
    let target = Target::connect(connection, Tuning::default()).await?;
    let fetch = i64::from(args.limit) + 1;
    let per_shard = target.on_every_shard("keys", |shard| newest(shard, &prefix, fetch)).await?;
    let mut keys: Vec<KeyInfo> = per_shard.into_iter().flatten().collect();
    // Newest first; equal times in key order, as each server sorted them.
    keys.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.key.cmp(&b.key)));
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let more = keys.len() > limit;
    keys.truncate(limit);
    output.emit(&KeysReport { prefix: args.prefix.clone(), limit: args.limit, more, keys })
}

async fn newest(shard: &Shard, prefix: &str, limit: i64) -> Result<Vec<KeyInfo>, CliError> {
    type Row = (String, i32, Option<i64>, Option<i64>, Option<i64>);
    let rows: Vec<Row> =
        sqlx::query_as(sql::KEYS).bind(prefix).bind(limit).fetch_all(&shard.pool).await.map_err(shard.error())?;
    Ok(rows
        .into_iter()
        .map(|(key, bytes, ttl_ms, created, expires)| KeyInfo {
            key,
            ttl_ms,
            bytes: bytes.unsigned_abs().into(),
            created: created.map(Timestamp),
            expires: expires.map(Timestamp),
        })
        .collect())
}

impl Render for KeysReport {
    fn render(&self, out: &mut Styled<'_>) -> std::io::Result<()> {
        if self.keys.is_empty() {
            let scope = self.prefix.as_deref().map_or(String::new(), |p| format!(" starting with {p:?}"));
            return out.line(&format!("no live keys{scope}"));
        }
        let mut table = Table::new(&[
            ("key", Align::Left),
            ("ttl", Align::Left),
            ("bytes", Align::Right),
            ("created", Align::Left),
        ]);
        for key in &self.keys {
            let ttl = key.ttl_ms.map_or_else(|| "never".to_owned(), units::duration_ms);
            table.row(vec![key.key.clone(), ttl, units::count(key.bytes), units::when(key.created)]);
        }
        table.render(out)?;
        if self.more {
            out.paint(Paint::Dim, &format!("(first {} shown; raise --limit for more)", self.limit))?;
            out.line("")?;
        }
        Ok(())
    }
}
