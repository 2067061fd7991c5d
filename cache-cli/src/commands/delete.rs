//! `pg-cached delete KEY...`: deletes entries the way a service would.
//!
//! Each key goes through `PgCache::delete`, so each delete is also an invalidation: running services drop
//! the key from their in-process tiers (a notification on `pg_cached_events`), and a memoized computation
//! of it that started before the delete will not store its result. The deletes run concurrently, a few
//! hundred at a time; the library sends those that meet in flight as one statement.

use crate::cli::{ConnectionArgs, DeleteArgs};
use crate::error::CliError;
use crate::input;
use crate::output::{Output, Render, Styled};
use crate::target::{Target, Tuning};
use futures_util::future::join_all;
use serde::Serialize;

/// Deletes in flight at once.
const IN_FLIGHT: usize = 256;

/// The `delete` report; its JSON shape is documented in README.md.
#[derive(Debug, Serialize)]
pub struct DeleteReport {
    /// How many entries were removed.
    removed: u64,
    keys: Vec<Deleted>,
}

/// What happened to one key.
#[derive(Debug, Serialize)]
struct Deleted {
    key: String,
    /// Whether it had an entry (expired or not).
    removed: bool,
    /// Why it could not be deleted; `null` when it was (or had no entry).
    error: Option<String>,
}

/// Runs `delete`. Every key is checked before anything is deleted. When some deletes fail, the report still
/// lists what happened to each key, and the command fails with the first error.
///
/// # Errors
/// [`CliError::Usage`] for a bad key; the first failed delete.
pub async fn run(connection: &ConnectionArgs, args: &DeleteArgs, output: Output) -> Result<(), CliError> {
    let keys = if args.stdin { input::keys_from(std::io::stdin().lock())? } else { args.keys.clone() };
    for key in &keys {
        input::check_key(key)?;
    }
    let target = Target::connect(connection, Tuning::default()).await?;
    let mut results = Vec::with_capacity(keys.len());
    // A few hundred at a time: each delete has the operation timeout, and a million queued at once would
    // wait past it.
    for chunk in keys.chunks(IN_FLIGHT) {
        results.extend(join_all(chunk.iter().map(|key| target.cache.delete(key))).await);
    }
    let mut first_error = None;
    let mut report = DeleteReport { removed: 0, keys: Vec::with_capacity(keys.len()) };
    for (key, result) in keys.into_iter().zip(results) {
        let (removed, error) = match result {
            Ok(removed) => (removed, None),
            Err(error) => (false, Some(first_error.get_or_insert(error).to_string())),
        };
        report.removed += u64::from(removed);
        report.keys.push(Deleted { key, removed, error });
    }
    output.emit(&report)?;
    first_error.map_or(Ok(()), |error| Err(error.into()))
}

impl Render for DeleteReport {
    fn render(&self, out: &mut Styled<'_>) -> std::io::Result<()> {
        for key in &self.keys {
            let what = match (&key.error, key.removed) {
                (Some(error), _) => format!("not deleted: {error}"),
                (None, true) => "deleted".to_owned(),
                (None, false) => "no entry".to_owned(),
            };
            out.line(&format!("{}: {what}", key.key))?;
        }
        out.line(&format!("removed {} of {} key(s)", self.removed, self.keys.len()))
    }
}
