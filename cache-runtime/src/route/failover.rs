//! Following the primary: URLs that name several hosts, as libpq's do.
//!
//! `postgres://user@h1:5432,h2:5433/db?target_session_attrs=read-write` names a primary and its standbys
//! (as pg_auto_failover and Patroni hand them out). The cache connects to the host that accepts writes and,
//! when an operation meets a dead connection or a read-only server (SQLSTATE 25006: the host was demoted),
//! looks for the new primary in the background: each host in turn, `SELECT pg_is_in_recovery()`, the first
//! that says `false` wins. From then on the pool opens its connections there (`Pool::set_connect_options`),
//! the event listener reconnects there, and operations that fail meanwhile are retried on a fresh
//! connection (see `exec.rs`) or degrade to running the function, as any cache failure does.
//!
//! Limits: connections already open to an old primary that is still up (demoted to a standby) stay in the
//! pool until they fail or idle out; reads on them may be stale until then, writes fail. Only
//! `target_session_attrs=read-write` (or none) is understood; the cache always needs the primary.

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::Connection;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The hosts of one server: a primary and its standbys, in the order the URL gave them.
pub(crate) struct Hosts {
    candidates: Vec<PgConnectOptions>,
    /// A search for the primary is running.
    searching: AtomicBool,
}

/// By hand: sqlx's own `Debug` of connection options shows the password.
impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let candidates: Vec<String> = self.candidates.iter().map(without_password).collect();
        f.debug_struct("Hosts")
            .field("candidates", &candidates)
            .field("searching", &self.searching.load(Ordering::Relaxed))
            .finish()
    }
}

/// `user@host:port/database`: what can be shown of connection options.
fn without_password(options: &PgConnectOptions) -> String {
    let database = options.get_database().unwrap_or("");
    format!("{}@{}:{}/{database}", options.get_username(), options.get_host(), options.get_port())
}

impl Hosts {
    pub(crate) fn new(candidates: Vec<PgConnectOptions>) -> Arc<Hosts> {
        Arc::new(Hosts { candidates, searching: AtomicBool::new(false) })
    }

    /// The first host given.
    pub(crate) fn first(&self) -> &PgConnectOptions {
        &self.candidates[0]
    }

    /// Whether there is anywhere else to go.
    pub(crate) fn can_fail_over(&self) -> bool {
        self.candidates.len() > 1
    }

    /// The first host that accepts writes, probing each within `timeout`.
    pub(crate) async fn find_primary(&self, timeout: Duration) -> Option<&PgConnectOptions> {
        for candidate in &self.candidates {
            if matches!(tokio::time::timeout(timeout, accepts_writes(candidate)).await, Ok(Ok(true))) {
                return Some(candidate);
            }
        }
        None
    }

    /// After `error`, starts looking for the primary (once at a time) unless the error says nothing about
    /// where the primary is.
    pub(crate) fn after_error(self: &Arc<Self>, error: &crate::CacheError, pool: &PgPool) {
        if !self.can_fail_over() {
            return;
        }
        let telling = match error {
            crate::CacheError::Database { source, .. } => {
                crate::server::exec::is_connection_error(source) || is_read_only(source)
            }
            // A pool that cannot open a connection in time may be facing a primary that is gone.
            crate::CacheError::Timeout { .. } => true,
            _ => false,
        };
        if !telling {
            return;
        }
        if self.searching.swap(true, Ordering::AcqRel) {
            return;
        }
        let (hosts, pool) = (Arc::clone(self), pool.clone());
        tokio::spawn(async move {
            // Keep looking while a promotion is under way; give up after a minute (the next error starts
            // another search).
            for _ in 0..240 {
                if let Some(primary) = hosts.find_primary(Duration::from_secs(1)).await {
                    let (host, port) = (primary.get_host().to_owned(), primary.get_port());
                    pool.set_connect_options(primary.clone());
                    tracing::info!(host, port, "the cache follows the primary to a new host");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            hosts.searching.store(false, Ordering::Release);
        });
    }
}

/// A failed operation may mean the primary moved.
impl crate::server::OnError for Arc<Hosts> {
    fn failed(&self, error: &crate::CacheError, pool: &PgPool) {
        self.after_error(error, pool);
    }
}

async fn accepts_writes(options: &PgConnectOptions) -> Result<bool, sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect_with(options).await?;
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut conn).await?;
    let _ = conn.close().await;
    Ok(!in_recovery)
}

/// A write refused because the server is a standby (or was demoted to one).
fn is_read_only(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("25006"))
}

/// Connection options for each host of a libpq-style URL (`host1:port1,host2:port2`); a URL with one host
/// gives one. `target_session_attrs` is taken out (see the module docs); any other value of it is an error.
///
/// Some URLs are refused although they might parse, because they most likely hold a password that was not
/// percent-encoded, whose pieces would otherwise be taken for a host, a port, a database or a parameter (and
/// shown as such): a `#` anywhere, an `@` after the host list, and password-like parameters that sqlx does
/// not read as the password (it would log their value).
pub(crate) fn parse_hosts(url: &str) -> Result<Vec<PgConnectOptions>, String> {
    let (scheme, rest) =
        url.split_once("://").ok_or("the URL has no scheme (postgres://); key=value strings are not accepted")?;
    if rest.contains('#') {
        return Err(not_encoded("a `#` means nothing in a connection URL", "`#` as %23"));
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (user_info, host_list) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let tail = checked_parameters(tail)?;
    host_list
        .split(',')
        .map(|host| {
            let one = format!("{scheme}://{user_info}{host}{tail}");
            PgConnectOptions::from_str(&one).map_err(|e| e.to_string())
        })
        .collect()
}

/// Why a URL with a character out of place is refused.
fn not_encoded(what: &str, escapes: &str) -> String {
    format!("{what}: in a password, percent-encode {escapes}")
}

/// The path and query string with `target_session_attrs` taken out, after the checks of [`parse_hosts`].
fn checked_parameters(tail: &str) -> Result<String, String> {
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    if path.contains('@') {
        return Err(not_encoded("an `@` after the host list", "`@` as %40 and `/` as %2F"));
    }
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(key, _)| key);
        if key.contains('@') {
            return Err(not_encoded("an `@` in a parameter name", "`@` as %40 and `?` as %3F"));
        }
        if crate::redact::is_secret_key(key) && crate::redact::decoded_key(key) != "password" {
            return Err(format!("the parameter `{key}` is not read by the driver: the password goes in `password`"));
        }
        match pair.split_once('=') {
            Some(("target_session_attrs", "read-write" | "any" | "primary")) => {}
            Some(("target_session_attrs", other)) => {
                return Err(format!("target_session_attrs={other} is not supported: the cache needs the primary"))
            }
            _ => kept.push(pair),
        }
    }
    Ok(if kept.is_empty() { path.to_owned() } else { format!("{path}?{}", kept.join("&")) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_host_urls_are_split() {
        let hosts = parse_hosts("postgres://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write&sslmode=disable")
            .expect("valid");
        let pairs: Vec<(String, u16)> = hosts.iter().map(|o| (o.get_host().to_owned(), o.get_port())).collect();
        assert_eq!(pairs, [("h1".to_owned(), 5432), ("h2".to_owned(), 5433)]);
        assert_eq!(hosts[1].get_database(), Some("db"));
        assert_eq!(hosts[1].get_username(), "u");
        assert_eq!(parse_hosts("postgres://h/db").expect("one host").len(), 1);
        assert!(parse_hosts("postgres://h1,h2/db?target_session_attrs=read-only").is_err());
        assert!(parse_hosts("not a url").is_err());
    }

    /// A password whose `/`, `#`, `?` or `@` was not percent-encoded would otherwise become a host, a port, a
    /// database or a parameter name (shown in shard names, `Debug` and logs): such URLs are refused.
    #[test]
    fn unencoded_password_characters_are_refused() {
        for url in [
            "postgres://app:1234/5@db/cache",
            "postgres://app:12#pw@db/cache",
            "postgres://app:12?pw@db/cache",
            "postgres://db/cache?PASSWORD=pw",
            "postgres://db/cache?sslpassword=pw",
        ] {
            let refused = parse_hosts(url).map(|hosts| hosts.len());
            assert!(refused.is_err(), "{url}: {refused:?}");
        }
        for url in [
            "postgres://app:pw@db/cache?application_name=a@b",
            "postgres://app:1234%2F5@db/cache",
            "postgres://db/cache?pass%77ord=pw",
            "postgres://db/cache?password=pw",
        ] {
            assert!(parse_hosts(url).is_ok(), "{url}");
        }
        let hosts = parse_hosts("postgres://app:pa%2Fss%40word@db/cache").expect("an encoded password");
        assert_eq!((hosts[0].get_host(), hosts[0].get_database()), ("db", Some("cache")));
    }

    #[test]
    fn debug_output_shows_no_password() {
        let hosts = Hosts::new(parse_hosts("postgres://app:Pw1secret@h1:5432,h2:5433/cache").expect("valid"));
        let shown = format!("{hosts:?}");
        assert!(!shown.contains("Pw1secret"), "{shown}");
        assert!(shown.contains("app@h1:5432/cache") && shown.contains("app@h2:5433/cache"), "{shown}");
    }
}
