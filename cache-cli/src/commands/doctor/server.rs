//! Checks of the server: reachability, `synchronous_commit`, connection headroom, clock skew.

use super::Check;
use crate::error::CliError;
use crate::sql;
use crate::target::Shard;
use crate::units::{self, Timestamp};
use cache_runtime::{HealthReport, HealthStatus};

/// Clock skew worth a WARN, in microseconds.
const SKEW_WARN_US: i64 = 1_000_000;

/// One round trip that reads the server's clock and version.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `server_version`, e.g. "15.20 (Debian 15.20-0+deb12u1)".
    version: String,
    /// The server's clock minus the client's at the midpoint of the round trip, µs.
    skew_us: i64,
    /// Half the round trip: how far off `skew_us` may be, µs.
    uncertainty_us: i64,
}

/// Reads the server's clock between two readings of the client's, to measure skew.
pub async fn probe(shard: &Shard) -> Result<Probe, CliError> {
    let before = Timestamp::now().0;
    let (server_us, version): (i64, String) =
        sqlx::query_as(sql::CLOCK_AND_VERSION).fetch_one(&shard.pool).await.map_err(shard.error())?;
    let after = Timestamp::now().0;
    let midpoint = before + (after - before) / 2;
    Ok(Probe { version, skew_us: server_us - midpoint, uncertainty_us: (after - before) / 2 })
}

/// The library's health check of this server (a round trip, then a count of the table).
pub fn connection(health: Option<&HealthReport>, probe: Result<&Probe, &CliError>) -> Check {
    let version = probe.map_or_else(|_| String::new(), |p| format!("PostgreSQL {}, ", p.version));
    let Some(health) = health else {
        return Check::fail("connection", "no health report for this server", "run doctor again");
    };
    let latency = health.latency_ms.map_or_else(String::new, |ms| format!("round trip {ms:.1} ms"));
    let error = health.error.clone().unwrap_or_default();
    match health.status {
        HealthStatus::Healthy => Check::ok("connection", format!("{version}{latency}")),
        HealthStatus::Degraded => Check::warn(
            "connection",
            format!("{version}{latency}; but the cache table cannot be read: {error}"),
            "see the schema check",
        ),
        _ => Check::fail("connection", format!("the server does not answer: {error}"), "check the server and URL"),
    }
}

/// `synchronous_commit` as the services' sessions see it.
pub async fn synchronous_commit(shard: &Shard) -> Result<Check, CliError> {
    let value: String =
        sqlx::query_scalar(sql::SYNCHRONOUS_COMMIT).fetch_one(&shard.pool).await.map_err(shard.error())?;
    Ok(synchronous_commit_verdict(&value))
}

/// The cache turns `synchronous_commit` off for its own writes (unless `Durability::Full`), so it needs
/// nothing from the server; off for everyone puts every other application's last commits at risk.
fn synchronous_commit_verdict(value: &str) -> Check {
    if value == "off" {
        return Check::warn(
            "synchronous_commit",
            "off for every transaction here: a crash can lose the last commits of all data, not only the \
             cache's, which turns it off for its own writes anyway",
            "unless that is intended: ALTER SYSTEM SET synchronous_commit = on; SELECT pg_reload_conf(); \
             (or ALTER DATABASE / ALTER ROLE ... RESET synchronous_commit)",
        );
    }
    Check::ok("synchronous_commit", format!("{value}; cache writes turn it off for their own transactions"))
}

/// Free connections, against the pool each service process opens.
pub async fn headroom(shard: &Shard, pool_size: u32) -> Result<Check, CliError> {
    let (max, reserved, used): (i64, i64, i64) =
        sqlx::query_as(sql::CONNECTIONS).fetch_one(&shard.pool).await.map_err(shard.error())?;
    Ok(headroom_verdict(max, reserved, used, i64::from(pool_size.max(1))))
}

fn headroom_verdict(max: i64, reserved: i64, used: i64, pool: i64) -> Check {
    let free = (max - reserved - used).max(0);
    let message = format!(
        "{free} connections free ({used} of {max} in use, {reserved} reserved): room for {} more process(es) \
         with a pool of {pool}",
        free / pool
    );
    let fix = "raise max_connections, or lower the services' pool size (PgCacheBuilder::max_connections)";
    match free / pool {
        0 => Check::fail("connections", message, fix),
        1 => Check::warn("connections", message, fix),
        _ => Check::ok("connections", message),
    }
}

/// Client and server clocks agree within a second. Expiry only ever uses the server's clock, but times in
/// this tool's output and in the services' logs would disagree.
pub fn clock(probe: Result<&Probe, &CliError>) -> Check {
    let probe = match probe {
        Ok(probe) => probe,
        Err(error) => return Check::could_not_run("clock", error),
    };
    let beyond_doubt = probe.skew_us.abs() - probe.uncertainty_us;
    let direction = if probe.skew_us > 0 { "ahead of" } else { "behind" };
    let message = format!(
        "the server's clock is {} {direction} this machine's (± {})",
        micros(probe.skew_us),
        micros(probe.uncertainty_us)
    );
    if beyond_doubt > SKEW_WARN_US {
        return Check::warn("clock", message, "synchronise both clocks with NTP (chrony or systemd-timesyncd)");
    }
    Check::ok("clock", message)
}

/// A short duration for people, with sub-millisecond precision below a second.
fn micros(us: i64) -> String {
    if us.abs() < 1_000_000 {
        format!("{:.1} ms", us.unsigned_abs() as f64 / 1000.0)
    } else {
        units::duration_ms(us / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::doctor::Status;

    #[test]
    fn headroom_is_counted_in_pools() {
        assert_eq!(headroom_verdict(100, 3, 7, 10).status, Status::Ok);
        assert_eq!(headroom_verdict(100, 3, 80, 10).status, Status::Warn);
        assert_eq!(headroom_verdict(100, 3, 95, 10).status, Status::Fail);
        assert_eq!(headroom_verdict(10, 3, 20, 10).status, Status::Fail, "more used than allowed: none free");
    }

    #[test]
    fn clock_skew_beyond_a_second_warns() {
        let probe = |skew_us, uncertainty_us| Probe { version: "15".into(), skew_us, uncertainty_us };
        assert_eq!(clock(Ok(&probe(3_000, 500))).status, Status::Ok);
        assert_eq!(clock(Ok(&probe(-2_500_000, 1_000))).status, Status::Warn);
        assert_eq!(clock(Ok(&probe(1_400_000, 600_000))).status, Status::Ok, "a slow round trip leaves doubt");
    }

    #[test]
    fn synchronous_commit_off_for_all_warns() {
        assert_eq!(synchronous_commit_verdict("on").status, Status::Ok);
        assert_eq!(synchronous_commit_verdict("off").status, Status::Warn);
    }
}
