//! Where a cache's connections come from: a pool, a URL (one host, or a primary and its standbys), sqlx
//! connection options, or several URLs for shards; and how shards are identified (never by credentials):
//! by the name the operator gave (`name=postgres://...`), or else by their database and set of hosts.

use crate::error::{CacheError, Result};
use crate::redact::redact_url;
use sqlx::postgres::{PgConnectOptions, PgPool};

/// Where the cache's connections come from.
#[derive(Default)]
pub(crate) enum Source {
    #[default]
    Unset,
    Pool(PgPool),
    Url(String),
    Options(Box<PgConnectOptions>),
    Shards(Vec<String>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Unset => f.write_str("Unset"),
            Source::Pool(pool) => f.debug_tuple("Pool").field(pool).finish(),
            Source::Url(url) => f.debug_tuple("Url").field(&redact_url(url)).finish(),
            Source::Shards(urls) => {
                f.debug_tuple("Shards").field(&urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>()).finish()
            }
            Source::Options(options) => f
                .debug_struct("Options")
                .field("host", &options.get_host())
                .field("port", &options.get_port())
                .field("database", &options.get_database())
                .finish_non_exhaustive(),
        }
    }
}

/// One server to connect to: the name routing scores keys against, and its hosts.
#[derive(Debug)]
pub(crate) struct ServerSpec {
    /// The shard's identity (see [`identity`]).
    pub(crate) name: String,
    /// Named by the operator (`name=postgres://...`) rather than derived from its hosts.
    pub(crate) explicit: bool,
    /// Its hosts in the order given: a primary and its standbys, tried in that order.
    pub(crate) hosts: Vec<PgConnectOptions>,
}

impl Source {
    /// The servers to connect to, each with its shard name and its hosts (several when a URL names a primary
    /// and its standbys).
    pub(crate) fn servers(&self) -> Result<Vec<ServerSpec>> {
        let servers: Vec<ServerSpec> = match self {
            Source::Url(url) => vec![unnamed(parse_url(url)?)],
            Source::Options(options) => vec![unnamed(vec![(**options).clone()])],
            Source::Shards(specs) => {
                specs.iter().enumerate().map(|(i, spec)| parse_spec(i, spec)).collect::<Result<_>>()?
            }
            Source::Pool(_) | Source::Unset => {
                return Err(CacheError::Config("PgCache::builder() needs .pool(), .database_url() or .shards()".into()))
            }
        };
        if servers.is_empty() {
            return Err(CacheError::Config("PgCacheBuilder::shards() was given no URL".into()));
        }
        for (i, server) in servers.iter().enumerate() {
            if servers[..i].iter().any(|other| other.name == server.name) {
                return Err(CacheError::Config(format!("shard {} is listed twice", server.name)));
            }
        }
        Ok(servers)
    }
}

/// Says, once per cache built, which shards route by their host list although another process may list
/// other hosts for them (see `identity`).
pub(crate) fn warn_unnamed_host_lists(servers: &[ServerSpec]) {
    if servers.len() < 2 {
        return;
    }
    for server in servers.iter().filter(|s| !s.explicit && s.hosts.len() > 1) {
        tracing::warn!(
            shard = %server.name,
            "a shard with several hosts is identified by its host list: every process must list the same hosts \
             (in any order), or keys route differently; name it (`name=postgres://...`) to make routing \
             independent of its hosts"
        );
    }
}

fn unnamed(hosts: Vec<PgConnectOptions>) -> ServerSpec {
    ServerSpec { name: identity(&hosts), explicit: false, hosts }
}

/// One entry of `shards()` (the `index`th): `postgres://...`, or `name=postgres://...`.
fn parse_spec(index: usize, spec: &str) -> Result<ServerSpec> {
    let Some((name, url)) = split_name(spec) else { return Ok(unnamed(parse_url(spec)?)) };
    if !is_shard_name(name) {
        // The text before `=` is not shown: it may be a mistyped password.
        return Err(CacheError::Config(format!(
            "shard {} of the list: a shard name (before `=`) is 1 to {MAX_NAME_CHARS} ASCII letters, digits, \
             `.`, `_` or `-`",
            index + 1
        )));
    }
    Ok(ServerSpec { name: name.to_owned(), explicit: true, hosts: parse_url(url)? })
}

/// The longest shard name.
const MAX_NAME_CHARS: usize = 63;

/// `name=scheme://...` split at its `=`, if the text before `://` holds one.
fn split_name(spec: &str) -> Option<(&str, &str)> {
    let scheme_end = spec.find("://")?;
    let equals = spec[..scheme_end].rfind('=')?;
    Some((&spec[..equals], &spec[equals + 1..]))
}

/// Letters, digits, `.`, `_`, `-`: nothing a derived name (which holds `:` and `/`) or a password could
/// look like, safe to log, and never split by a comma-separated list.
fn is_shard_name(name: &str) -> bool {
    (1..=MAX_NAME_CHARS).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The identity of a shard that was not named: its database and the set of its hosts (`host:port`, sorted,
/// each once), never its credentials. So the order in which a URL lists a primary and its standbys does not
/// matter, and a single host gives `host:port/database`, as it always has. Adding or removing a standby
/// changes it, and nothing read from the URL alone could avoid that: a name that did not change when any
/// host is added or removed could not tell two shards with the same database name apart. Hence explicit
/// names (see `PgCacheBuilder::shards`).
pub(crate) fn identity(hosts: &[PgConnectOptions]) -> String {
    let mut list: Vec<String> = hosts.iter().map(|o| format!("{}:{}", o.get_host(), o.get_port())).collect();
    list.sort_unstable();
    list.dedup();
    format!("{}/{}", list.join(","), hosts.first().and_then(|o| o.get_database()).unwrap_or(""))
}

/// The hosts of a URL (one, or several for a primary and its standbys; see `failover.rs`).
fn parse_url(url: &str) -> Result<Vec<PgConnectOptions>> {
    crate::route::failover::parse_hosts(url)
        .map_err(|e| CacheError::Config(format!("invalid database URL {}: {e}", redact_url(url))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(specs: &[&str]) -> Result<Vec<(String, bool)>> {
        let source = Source::Shards(specs.iter().map(|s| (*s).to_owned()).collect());
        Ok(source.servers()?.into_iter().map(|s| (s.name, s.explicit)).collect())
    }

    fn name(spec: &str) -> String {
        names(&[spec]).expect("a valid shard")[0].0.clone()
    }

    /// A single host keeps the identity it always had (`shards.rs` pins the routes of such names).
    #[test]
    fn a_single_host_is_host_port_database() {
        assert_eq!(name("postgres://u:pw@db1/cache"), "db1:5432/cache");
        assert_eq!(name("postgres://db1:5433/cache?sslmode=disable"), "db1:5433/cache");
    }

    #[test]
    fn an_unnamed_shard_is_its_set_of_hosts() {
        let sorted = "a:5432,b:5433/app";
        assert_eq!(name("postgres://a,b:5433/app"), sorted);
        assert_eq!(name("postgres://b:5433,a:5432/app?target_session_attrs=read-write"), sorted);
        assert_eq!(name("postgres://b:5433,a,b:5433/app"), sorted);
        assert_eq!(name("postgres://other@a,b:5433/app"), sorted, "the user is not part of it");
        assert_ne!(name("postgres://a,b:5433,c/app"), sorted, "an extra host changes it (hence names)");
    }

    #[test]
    fn a_named_shard_is_its_name_alone() {
        assert_eq!(names(&["eu-1=postgres://a,b/app"]).expect("valid"), [("eu-1".to_owned(), true)]);
        assert_eq!(name("eu-1=postgres://c,b,a/other"), "eu-1");
        assert_eq!(name("shard_2.x=postgresql://a/app"), "shard_2.x");
        // An `=` after the scheme is part of the URL, not a name.
        assert_eq!(name("postgres://u:p=w@a/app?application_name=x=y"), "a:5432/app");
    }

    #[test]
    fn bad_names_and_duplicates_are_refused() {
        for spec in ["=postgres://a/app", "eu 1=postgres://a/app", "u:secret=postgres://a/app", "é=postgres://a/app"] {
            let error = names(&[spec]).expect_err(spec).to_string();
            assert!(error.contains("shard 1 of the list") && !error.contains("secret"), "{spec}: {error}");
        }
        let long = format!("{}=postgres://a/app", "n".repeat(64));
        assert!(names(&[&long]).is_err());
        assert!(names(&[&long[1..]]).is_ok(), "63 characters");
        let twice = names(&["x=postgres://a/app", "x=postgres://b/app"]).expect_err("one name twice");
        assert!(twice.to_string().contains("shard x is listed twice"), "{twice}");
        assert!(names(&["postgres://a,b/app", "postgres://b,a/app"]).is_err(), "one host set twice");
        assert!(names(&["a:5432/app=postgres://a/app"]).is_err(), "a derived name cannot be given");
    }

    #[test]
    fn debug_output_of_named_shards_shows_no_password() {
        let source = Source::Shards(vec!["eu-1=postgres://app:Pw1secret@a,b/cache".to_owned()]);
        let shown = format!("{source:?}");
        assert!(!shown.contains("Pw1secret") && shown.contains("eu-1="), "{shown}");
    }
}
