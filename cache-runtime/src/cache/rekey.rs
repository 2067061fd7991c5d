//! Key rotation: [`PgCache::rekey`] moves encrypted entries to the keyring's current key, and
//! [`PgCache::entries_by_key_id`] says how many remain under each key.
//!
//! Rotation runs while services read and write. Each batch reads entries under other keys (in key order,
//! after the last one seen, so a run visits each row once and ends), decrypts and re-encrypts them here, and
//! replaces each row only if it still holds what was read: a concurrent write wins, and its value is never
//! overwritten with an older one. Nothing is invalidated, since the plaintext is unchanged. Rows it cannot
//! move are counted and left; running it again picks up whatever is still under an old key.

use super::PgCache;
use crate::crypt::envelope::{self, OpenError};
use crate::crypt::Keyring;
use crate::error::{CacheError, Result};
use crate::report::{KeyIdCount, RekeyReport};
use std::collections::BTreeMap;

impl PgCache {
    /// Re-encrypts every entry that is not under the keyring's first key with that key, `batch_size` rows
    /// per statement (500 is a good size: each batch is two short statements), calling `progress` after each
    /// batch. Resumable: stop it at any point and run it again; it only touches entries under other keys.
    /// Afterwards [`entries_by_key_id`](Self::entries_by_key_id) shows which keys are still in use: when only
    /// the first is, the others can leave the keyring.
    ///
    /// Processes that do not know the first key yet read entries under it as misses (and write their own
    /// under their own first key): give every process the new keyring, new key first, before rekeying. See
    /// docs/SECURITY.md, "Rotating keys".
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_runtime::PgCache) -> Result<(), cache_runtime::CacheError> {
    /// let report = cache.rekey(500, |so_far| eprintln!("{} entries rekeyed", so_far.rekeyed)).await?;
    /// assert_eq!(report.rekeyed + report.changed_meanwhile + report.unknown_key + report.undecryptable,
    ///            report.examined);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`CacheError::Config`] without a [keyring](crate::PgCacheBuilder::encryption) or with a zero
    /// `batch_size`; [`CacheError::Timeout`] or [`CacheError::Database`] when a batch fails (the batches
    /// before it are done).
    pub async fn rekey(&self, batch_size: u32, mut progress: impl FnMut(&RekeyReport)) -> Result<RekeyReport> {
        let keyring = self.keyring()?;
        if batch_size == 0 {
            return Err(CacheError::Config("rekey's batch_size must be at least 1".into()));
        }
        let mut report = RekeyReport::default();
        for node in self.shards().all() {
            let server = node.primary();
            let mut after = String::new();
            loop {
                let rows = server.encrypted_not_under(keyring.current_id(), &after, i64::from(batch_size)).await?;
                let Some((last, _)) = rows.last() else { break };
                after.clone_from(last);
                let full = rows.len() == batch_size as usize;
                let replacements = self.reencrypted(keyring, rows, &mut report);
                let tried = replacements.len() as u64;
                let replaced = if tried == 0 { 0 } else { server.replace_unchanged(replacements).await? };
                report.rekeyed += replaced;
                report.changed_meanwhile += tried - replaced;
                report.batches += 1;
                progress(&report);
                if !full {
                    break;
                }
            }
        }
        if report.examined > 0 {
            tracing::info!(?report, current = keyring.current_id(), "rekey done");
        }
        Ok(report)
    }

    /// Encrypted entries per key id over every shard, expired ones included, sorted by id.
    ///
    /// # Errors
    /// [`CacheError::Timeout`] or [`CacheError::Database`] when a shard cannot answer.
    pub async fn entries_by_key_id(&self) -> Result<Vec<KeyIdCount>> {
        let mut counts: BTreeMap<Option<String>, u64> = BTreeMap::new();
        for node in self.shards().all() {
            for (key_id, entries) in node.primary().entries_by_key_id().await? {
                *counts.entry(key_id).or_default() += entries.max(0).unsigned_abs();
            }
        }
        Ok(counts.into_iter().map(|(key_id, entries)| KeyIdCount { key_id, entries }).collect())
    }

    fn keyring(&self) -> Result<&Keyring> {
        self.config().sealing.keyring.as_ref().ok_or_else(|| {
            CacheError::Config("rekey needs a keyring: build the cache with .encryption(Keyring)".into())
        })
    }

    /// Each row that opens, with its new form under the current key: `(key, old, new)`; the others counted.
    fn reencrypted(
        &self,
        keyring: &Keyring,
        rows: Vec<(String, String)>,
        report: &mut RekeyReport,
    ) -> Vec<(String, String, String)> {
        let (limit, compress) = (self.config().max_value_bytes, self.config().sealing.compress);
        let mut replacements = Vec::with_capacity(rows.len());
        for (key, old) in rows {
            report.examined += 1;
            match envelope::open(keyring, &key, &old, limit) {
                Ok(plain) => {
                    let new = envelope::seal(keyring, &key, &plain, compress);
                    replacements.push((key, old, new));
                }
                Err(OpenError::UnknownKey(_)) => report.unknown_key += 1,
                Err(OpenError::Rejected | OpenError::Malformed) => report.undecryptable += 1,
            }
        }
        replacements
    }
}
