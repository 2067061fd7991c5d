//! The listener's connection: LISTEN, the events secret, and the registration that makes writes notify.
//!
//! Writes notify only while some listener is registered in `cache_listeners` (migration 0013 has the whole
//! protocol): a write reads the registry after its change, so one that found it empty and commits later is
//! a transaction in progress when the registration committed. [`connect`] registers, on the listening
//! connection itself (the row's session lock lives as long as the listener's session), then takes a
//! snapshot; [`InFlight`] waits for the transactions in progress in it, after which every change is either
//! notified or was committed before the tier starts (it is cleared then).

use crate::channel::{in_flight_ended, register_listener, Secret, CHANNEL};
use sqlx::postgres::{PgListener, PgPool};
use std::time::Duration;
use tokio::time::Instant;

/// The bounds of the interval between two checks of [`InFlight`].
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(100);

/// A wait that long for them is logged (once): a transaction left open keeps the tier off.
const SLOW: Duration = Duration::from_secs(10);

/// Listens on `pool`'s connection, reads the events secret through `cache_pool`, and registers the listener
/// as cache `sender`'s. Returns, besides, the writes that may not notify it (see the module docs).
pub(super) async fn connect(
    pool: &PgPool,
    cache_pool: &PgPool,
    sender: u64,
) -> Result<(PgListener, Secret, InFlight), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    let encoding: String = sqlx::query_scalar("SHOW server_encoding").fetch_one(&mut listener).await?;
    if encoding.eq_ignore_ascii_case("SQL_ASCII") {
        // Such a server cannot convert what it sends to UTF-8: a payload that is not UTF-8 makes it end the
        // session (FATAL) of a listener whose client_encoding is UTF8. Asked for SQL_ASCII, it sends the
        // bytes as they are, and `payload` drops them. A build that aborts on panic cannot.
        if cfg!(not(panic = "unwind")) {
            return Err(sqlx::Error::Configuration(
                "in a SQL_ASCII database the event listener needs a build that unwinds panics".into(),
            ));
        }
        sqlx::query("SET client_encoding TO 'SQL_ASCII'").execute(&mut listener).await?;
    }
    listener.listen(CHANNEL).await?;
    let secret: Vec<u8> = sqlx::query_scalar("SELECT secret FROM cache_events_secret").fetch_one(cache_pool).await?;
    // On the listening connection: the row's lock lives as long as that session, so a row outlives its
    // listener only until a registration or a sweep finds the lock free.
    let snapshot = register_listener(&mut listener, &format!("{sender:016x}")).await?;
    Ok((listener, Secret::new(&secret), InFlight::new(snapshot)))
}

/// The transactions in progress just after a listener's registration committed (a `pg_snapshot`'s text):
/// each may have read the registry before, found no listener, and will not notify. The tier may serve once
/// they have all ended.
#[derive(Debug)]
pub(super) struct InFlight {
    /// `None` once they ended (or when the database's functions predate the registry).
    snapshot: Option<String>,
    since: Instant,
    /// The interval before the next check.
    wait: Duration,
    /// Whether the slow wait was logged.
    told: bool,
}

impl InFlight {
    fn new(snapshot: Option<String>) -> InFlight {
        InFlight { snapshot, since: Instant::now(), wait: Duration::ZERO, told: false }
    }

    /// Whether they have all ended.
    pub(super) fn ended(&self) -> bool {
        self.snapshot.is_none()
    }

    /// When to check next: at once, then at doubling intervals.
    pub(super) fn next_check(&self) -> Instant {
        Instant::now() + self.wait
    }

    /// Asks the server (through `pool`, within `timeout`) whether they have ended. A failure is a "not yet".
    pub(super) async fn check(&mut self, pool: &PgPool, timeout: Duration) {
        let Some(snapshot) = self.snapshot.as_deref() else { return };
        match tokio::time::timeout(timeout, in_flight_ended(pool, snapshot)).await {
            Ok(Ok(true)) => {
                self.snapshot = None;
                return;
            }
            Ok(Ok(false)) | Err(_) => {}
            Ok(Err(error)) => tracing::debug!(%error, "cannot tell whether writes in flight ended; asking again"),
        }
        if !self.told && self.since.elapsed() >= SLOW {
            self.told = true;
            tracing::info!(
                "the in-process tier waits for transactions that began before its listener registered (one of \
                 them may change the cache without notifying it); it stays off until they end"
            );
        }
        self.wait = (self.wait * 2).clamp(POLL_MIN, POLL_MAX);
    }
}
