//! Who listens on the events channel: the cache's writes notify only while some listener is registered in
//! `cache_listeners` (migration 0013), and a row standing for an earlier release's listeners, which do not
//! register, keeps every write notifying until the operator deletes it.

use super::Check;
use crate::error::CliError;
use crate::sql;
use crate::target::Shard;

/// How writes notify on this server, and whether an upgrade step is left to do.
pub async fn notifications(shard: &Shard) -> Result<Check, CliError> {
    let has_registry: bool =
        sqlx::query_scalar(sql::HAS_LISTENER_REGISTRY).fetch_one(&shard.pool).await.map_err(shard.error())?;
    if !has_registry {
        return Ok(verdict(None));
    }
    let counts: (i64, i64) = sqlx::query_as(sql::LISTENERS).fetch_one(&shard.pool).await.map_err(shard.error())?;
    Ok(verdict(Some(counts)))
}

/// The verdict on `counts`: rows of registered sessions, rows standing for an earlier release's listeners
/// (`None`: no registry).
fn verdict(counts: Option<(i64, i64)>) -> Check {
    const NAME: &str = "notifications";
    match counts {
        None => Check::ok(NAME, "no registry of listeners (migrations before 13): every write notifies"),
        Some((registered, standing)) if standing > 0 => Check::warn(
            NAME,
            format!(
                "a row stands for listeners of an earlier release, so every write notifies ({registered} \
                 registered besides)"
            ),
            "once every process runs a release with migration 13 or later: DELETE FROM cache_listeners WHERE NOT held",
        ),
        Some((0, _)) => Check::ok(NAME, "no listener registered: writes skip their notifications"),
        Some((registered, _)) => Check::ok(NAME, format!("{registered} listener(s) registered: writes notify")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::doctor::Status;

    #[test]
    fn a_standing_row_is_the_one_thing_to_fix() {
        assert_eq!(verdict(None).status, Status::Ok);
        assert_eq!(verdict(Some((0, 0))).status, Status::Ok);
        assert_eq!(verdict(Some((3, 0))).message, "3 listener(s) registered: writes notify");
        let standing = verdict(Some((2, 1)));
        assert_eq!(standing.status, Status::Warn);
        assert!(standing.fix.is_some_and(|fix| fix.ends_with("DELETE FROM cache_listeners WHERE NOT held")));
    }
}
