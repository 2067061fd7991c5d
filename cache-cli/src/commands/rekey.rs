//! `pg-cached rekey`: moves encrypted entries to the first key of `PG_CACHED_KEYS` (`PgCache::rekey`), with
//! progress on stderr, then says how many entries remain under each key id.

use crate::cli::{ConnectionArgs, RekeyArgs};
use crate::error::CliError;
use crate::output::{Output, Render, Styled};
use crate::target::{Target, Tuning};
use crate::units;
use cache_runtime::{KeyIdCount, Keyring, RekeyReport};
use serde::Serialize;

/// The `rekey` report; its JSON shape is documented in README.md.
#[derive(Debug, Serialize)]
pub struct RekeyOutcome {
    /// The key id everything was moved to.
    current_key: String,
    #[serde(flatten)]
    report: RekeyReport,
    /// Encrypted entries per key id afterwards, over every shard.
    by_key_id: Vec<KeyIdCount>,
}

/// Runs `rekey`.
///
/// # Errors
/// [`CliError::Usage`] when `PG_CACHED_KEYS` is unset or malformed; database errors (the batches before the
/// failing one are done: run it again).
pub async fn run(connection: &ConnectionArgs, args: &RekeyArgs, output: Output) -> Result<(), CliError> {
    let keyring = Keyring::from_env().map_err(|error| CliError::Usage(format!("{error} (see docs/SECURITY.md)")))?;
    let current_key = keyring.current_id().to_owned();
    let target = Target::connect(connection, Tuning { keyring: Some(keyring), ..Tuning::default() }).await?;
    let report = target
        .cache
        .rekey(args.batch_size, |so_far| {
            eprintln!("batch {}: {} rekeyed of {} examined", so_far.batches, so_far.rekeyed, so_far.examined);
        })
        .await?;
    let by_key_id = target.cache.entries_by_key_id().await?;
    output.emit(&RekeyOutcome { current_key, report, by_key_id })
}

impl Render for RekeyOutcome {
    fn render(&self, out: &mut Styled<'_>) -> std::io::Result<()> {
        let r = &self.report;
        out.line(&format!(
            "rekeyed {} of {} entries to key {:?} in {} batches ({} changed meanwhile, {} under unknown key ids, \
             {} undecryptable: left as they are)",
            units::count(r.rekeyed),
            units::count(r.examined),
            self.current_key,
            r.batches,
            units::count(r.changed_meanwhile),
            units::count(r.unknown_key),
            units::count(r.undecryptable),
        ))?;
        out.line(&format!("encrypted entries per key id: {}", key_id_list(&self.by_key_id)))
    }
}

/// `k2: 1,200, k1: 3`, or `none`.
pub fn key_id_list(counts: &[KeyIdCount]) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    let each =
        counts.iter().map(|c| format!("{}: {}", c.key_id.as_deref().unwrap_or("(no id)"), units::count(c.entries)));
    each.collect::<Vec<_>>().join(", ")
}
