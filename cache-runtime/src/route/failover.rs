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
#[derive(Debug)]
pub(crate) struct Hosts {
    candidates: Vec<PgConnectOptions>,
    /// A search for the primary is running.
    searching: AtomicBool,
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
pub(crate) fn parse_hosts(url: &str) -> Result<Vec<PgConnectOptions>, String> {
    let (scheme, rest) = url.split_once("://").ok_or("the URL has no scheme")?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (user_info, host_list) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let tail = strip_target_session_attrs(tail)?;
    host_list
        .split(',')
        .map(|host| {
            let one = format!("{scheme}://{user_info}{host}{tail}");
            PgConnectOptions::from_str(&one).map_err(|e| e.to_string())
        })
        .collect()
}

fn strip_target_session_attrs(tail: &str) -> Result<String, String> {
    let Some((path, query)) = tail.split_once('?') else { return Ok(tail.to_owned()) };
    let mut kept = Vec::new();
    for pair in query.split('&') {
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
}
