//! The `encryption` check: encrypted entries per key id, judged against `PG_CACHED_KEYS` when it is set
//! (entries under a retired key want `pg-cached rekey`; entries under a key the keyring lacks are misses for
//! every service with that keyring).

use super::Check;
use crate::error::CliError;
use crate::sql;
use crate::target::Shard;
use crate::units;
use cache_runtime::{CacheError, Keyring};

/// Counts the encrypted entries of `shard` per key id and judges them against the environment's keyring.
pub async fn key_ids(shard: &Shard) -> Result<Check, CliError> {
    let counts: Vec<(Option<String>, i64)> =
        sqlx::query_as(sql::ENTRIES_BY_KEY_ID).fetch_all(&shard.pool).await.map_err(shard.error())?;
    let counts: Vec<(String, u64)> = counts
        .into_iter()
        .map(|(id, n)| (id.unwrap_or_else(|| "(no id)".to_owned()), n.max(0).unsigned_abs()))
        .collect();
    let keyring = std::env::var_os(cache_runtime::KEYS_ENV).map(|_| Keyring::from_env());
    Ok(verdict(&counts, keyring))
}

/// The verdict on `counts` (key id, entries), given the keyring of `PG_CACHED_KEYS` if it is set.
fn verdict(counts: &[(String, u64)], keyring: Option<Result<Keyring, CacheError>>) -> Check {
    const NAME: &str = "encryption";
    let list = counts.iter().map(|(id, n)| format!("{id}: {}", units::count(*n))).collect::<Vec<_>>().join(", ");
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    match keyring {
        _ if counts.is_empty() => Check::ok(NAME, "no encrypted entries"),
        None => Check::ok(NAME, format!("encrypted entries per key id: {list} (set PG_CACHED_KEYS to check them)")),
        Some(Err(error)) => Check::warn(
            NAME,
            format!("encrypted entries per key id: {list}; PG_CACHED_KEYS is unusable: {error}"),
            "fix PG_CACHED_KEYS: id:base64key pairs, comma-separated, the current key first (docs/SECURITY.md)",
        ),
        Some(Ok(keyring)) => {
            let unknown: Vec<&(String, u64)> =
                counts.iter().filter(|(id, _)| !keyring.ids().any(|k| k == id)).collect();
            let retired: Vec<&(String, u64)> =
                counts.iter().filter(|(id, _)| id != keyring.current_id() && keyring.ids().any(|k| k == id)).collect();
            let sum = |rows: &[&(String, u64)]| units::count(rows.iter().map(|(_, n)| n).sum());
            if !unknown.is_empty() {
                Check::warn(
                    NAME,
                    format!("{} of {} encrypted entries are under key ids not in PG_CACHED_KEYS ({list}): services with this keyring read them as misses", sum(&unknown), units::count(total)),
                    "add those keys to PG_CACHED_KEYS (after the current one), or let the entries expire",
                )
            } else if !retired.is_empty() {
                Check::warn(
                    NAME,
                    format!(
                        "{} of {} encrypted entries are under retired keys ({list})",
                        sum(&retired),
                        units::count(total)
                    ),
                    "pg-cached rekey",
                )
            } else {
                Check::ok(
                    NAME,
                    format!(
                        "all {} encrypted entries are under the current key {}",
                        units::count(total),
                        keyring.current_id()
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::doctor::Status;

    #[test]
    fn judges_key_ids_against_the_keyring() {
        let ring = || Keyring::new("k2", [2; 32]).and_then(|r| r.with_key("k1", [1; 32]));
        let counts = |rows: &[(&str, u64)]| rows.iter().map(|(id, n)| ((*id).to_owned(), *n)).collect::<Vec<_>>();
        assert_eq!(verdict(&[], Some(ring())).status, Status::Ok);
        assert_eq!(verdict(&counts(&[("k1", 3)]), None).status, Status::Ok);
        assert_eq!(verdict(&counts(&[("k2", 3)]), Some(ring())).status, Status::Ok);
        let retired = verdict(&counts(&[("k1", 3), ("k2", 5)]), Some(ring()));
        assert_eq!((retired.status, retired.fix.as_deref()), (Status::Warn, Some("pg-cached rekey")));
        let unknown = verdict(&counts(&[("k0", 1), ("k2", 5)]), Some(ring()));
        assert!(unknown.status == Status::Warn && unknown.message.contains("not in PG_CACHED_KEYS"));
        let broken = verdict(&counts(&[("k2", 5)]), Some(Keyring::parse("k2:short")));
        assert_eq!(broken.status, Status::Warn);
    }
}
