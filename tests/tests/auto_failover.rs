//! Failover under pg_auto_failover (issue 13): a monitor, a primary and a secondary set up on this machine by
//! `scripts/pg-auto-failover`, and a cache built on the multi-host URL that `pg_autoctl show uri` gives.
//! Callers keep calling while `pg_autoctl perform failover` runs: memoized calls never fail (they run uncached
//! meanwhile) and every value returned is right; the entries written before the failover are hits again soon
//! after the new primary is reported, without anyone touching the cache.
//!
//! Skips, saying so, where `pg_autoctl` is not installed (`scripts/pg-auto-failover install`);
//! `PG_CACHED_REQUIRE_AUTO_FAILOVER=1` makes that a failure instead.
//!
//! The formation comes from the script, not from Rust code in the style of `tests/src/pg_cluster.rs`:
//! pg_autoctl is itself the orchestrator (creating nodes, running them, performing the failover are its
//! commands), so Rust would only shell out to the same commands. One implementation of the setup, its waits
//! and its teardown serves both the test and whoever tries it by hand, and the test keeps the script working.

use cache_runtime::Ttl;
use integration_tests::pg_cluster::find_bin_dir;
use integration_tests::{failover_squares, within};
use sqlx::Connection;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Seconds the script waits for any one thing (a node to start, a state to be reported).
const SCRIPT_TIMEOUT: &str = "60";
/// Entries hit again within this bound after the new primary is reported. Observed: by the report already
/// (the first pass after it, 35 to 120 ms, hits throughout), since the cache has followed the new primary
/// before pg_auto_failover reports it.
const HITS_BACK_WITHIN: Duration = Duration::from_secs(15);
const KEYS: u64 = 40;

/// Writes a line to the real stderr, past the test harness's capture: a skip or a measurement should show in
/// a plain `cargo test` run.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn pg_autoctl_installed() -> bool {
    let on_path = Command::new("pg_autoctl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    on_path || find_bin_dir().is_ok_and(|bin| bin.join("pg_autoctl").is_file())
}

/// A formation of `scripts/pg-auto-failover` in a directory of its own; dropping it runs `down`, also when the
/// test panics.
struct Formation {
    script: PathBuf,
    dir: PathBuf,
}

impl Formation {
    /// Brings a formation up in `<target>/tmp/pg-auto-failover` and returns it with its URL. Leftovers of an
    /// earlier run that was killed (so that its guard never ran) are taken down first; so two runs of this test
    /// at once from one target directory would stop each other's formation.
    fn up() -> Result<(Formation, String), String> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let formation = Formation {
            script: root.join("scripts/pg-auto-failover"),
            dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pg-auto-failover"),
        };
        formation.run("down")?;
        // A formation's start can fail for reasons of the machine, not of the cache (a port taken between the
        // probe and the bind, pg_autoctl giving up on a standby a busy machine started late): one more try,
        // from scratch, before the test fails.
        let out = match formation.run("up") {
            Ok(out) => out,
            Err(first) => {
                say(&format!("the formation did not come up; taking it down and trying once more: {first}"));
                formation.run("down")?;
                formation.run("up")?
            }
        };
        let url = out.lines().last().unwrap_or_default().trim().to_owned();
        if !url.starts_with("postgres://") {
            return Err(format!("scripts/pg-auto-failover up printed no URL: {out:?}"));
        }
        Ok((formation, url))
    }

    fn command(&self, what: &str) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(&self.script)
            .arg(what)
            .env("PG_AUTO_FAILOVER_DIR", &self.dir)
            .env("PG_AUTO_FAILOVER_TIMEOUT", SCRIPT_TIMEOUT)
            .stdin(Stdio::null());
        command
    }

    /// Runs a subcommand to its end; its stderr goes to the test's output (shown when the test fails).
    fn run(&self, what: &str) -> Result<String, String> {
        let out = self.command(what).output().map_err(|e| format!("cannot run {}: {e}", self.script.display()))?;
        finish(what, &out)
    }

    /// `failover`, without blocking the runtime: callers keep running meanwhile. The script bounds its own
    /// waits; the timeout here only guards against the script itself hanging.
    async fn failover(&self) -> Result<String, String> {
        let mut command = tokio::process::Command::from(self.command("failover"));
        command.kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(150), command.output())
            .await
            .map_err(|_| "scripts/pg-auto-failover failover did not end within 150 s".to_owned())?
            .map_err(|e| format!("cannot run {}: {e}", self.script.display()))?;
        finish("failover", &out)
    }
}

fn finish(what: &str, out: &std::process::Output) -> Result<String, String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stderr}");
    if !out.status.success() {
        return Err(format!("scripts/pg-auto-failover {what}: {}\n{stderr}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Drop for Formation {
    fn drop(&mut self) {
        if let Err(e) = self.run("down") {
            say(&format!("warning: the pg_auto_failover formation in {} was not taken down: {e}", self.dir.display()));
        }
    }
}

/// A single-host URL for each host of a multi-host one (`postgres://u@h1:p1,h2:p2/db?...`).
fn each_host(url: &str) -> Vec<String> {
    let rest = url.strip_prefix("postgres://").expect("a postgres:// URL");
    let (authority, path) = rest.split_at(rest.find('/').expect("a database in the URL"));
    let database = path.split('?').next().unwrap_or(path);
    let (user, hosts) = authority.rsplit_once('@').expect("a user in the URL");
    hosts.split(',').map(|host| format!("postgres://{user}@{host}{database}")).collect()
}

/// Whether the server accepts writes, and how many cache entries it holds (under `key` only, if given).
async fn probe(url: &str, key: Option<&str>) -> Result<(bool, i64), sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut conn).await?;
    let rows = sqlx::query_scalar("SELECT count(*) FROM cache_entries WHERE cache_key = $1 OR $1 IS NULL")
        .bind(key)
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok((!in_recovery, rows))
}

/// The one host that accepts writes.
async fn primary_of(hosts: &[String]) -> Option<String> {
    let mut primaries = Vec::new();
    for host in hosts {
        if matches!(probe(host, None).await, Ok((true, _))) {
            primaries.push(host.clone());
        }
    }
    (primaries.len() == 1).then(|| primaries.remove(0))
}

fn direct_key(x: u64) -> String {
    format!("auto_failover:direct:{x}")
}

/// What one caller saw, in time since `perform failover` started.
#[derive(Debug, Default)]
struct Seen {
    calls: u64,
    errors: u64,
    misses: u64,
    first_error: Option<Duration>,
    /// The first success after the first error: the first write (or hit) served by the new primary.
    first_success_after: Option<Duration>,
}

impl Seen {
    fn ok(&mut self, at: Duration) {
        if self.first_error.is_some() && self.first_success_after.is_none() {
            self.first_success_after = Some(at);
        }
    }
    fn error(&mut self, at: Duration) {
        self.errors += 1;
        self.first_error.get_or_insert(at);
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_follows_a_pg_auto_failover_failover() -> TestResult {
    if !pg_autoctl_installed() {
        assert!(
            std::env::var("PG_CACHED_REQUIRE_AUTO_FAILOVER").as_deref() != Ok("1"),
            "PG_CACHED_REQUIRE_AUTO_FAILOVER=1 but pg_autoctl is not installed (scripts/pg-auto-failover install)"
        );
        say("skipped: pg_autoctl not installed (scripts/pg-auto-failover install)");
        return Ok(());
    }
    let test_started = Instant::now();
    let (formation, url) = tokio::task::spawn_blocking(Formation::up).await??;
    let up_took = test_started.elapsed();
    let hosts = each_host(&url);
    assert_eq!(hosts.len(), 2, "{url} names a primary and a secondary");

    let (cache, squares) = failover_squares(&url, KEYS).await?;
    for x in 0..KEYS {
        cache.set(&direct_key(x), &(x * x), Ttl::Never).await?;
    }
    let old_primary = primary_of(&hosts).await.ok_or("no single primary before the failover")?;
    // The cache commits without waiting for the standby (synchronous_commit off): wait until it has them all.
    let expected = 2 * KEYS as i64;
    for host in &hosts {
        within(Duration::from_secs(20), async || matches!(probe(host, None).await, Ok((_, rows)) if rows == expected))
            .await
            .ok_or_else(|| format!("{host} does not hold the {expected} entries within 20 s"))?;
    }

    // Callers through the failover: memoized calls (never fail, always right), gets (may fail while there is
    // no primary, never answer wrong), and a writer that notes when writes fail and when they work again.
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = JoinSet::new();
    for task in 0..3u64 {
        let (squares, stop) = (Arc::clone(&squares), Arc::clone(&stop));
        load.spawn(async move {
            let mut seen = Seen::default();
            let mut x = task;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(squares.square(x % KEYS).await, (x % KEYS) * (x % KEYS));
                seen.calls += 1;
                x += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            ("memoized", seen)
        });
    }
    let (c, s) = (cache.clone(), Arc::clone(&stop));
    load.spawn(async move {
        let mut seen = Seen::default();
        let mut x = 0;
        while !s.load(Ordering::Relaxed) {
            let k = x % KEYS;
            match c.get::<u64>(&direct_key(k)).await {
                Ok(Some(value)) => {
                    assert_eq!(value, k * k, "get {k}");
                    seen.ok(started.elapsed());
                }
                Ok(None) => seen.misses += 1,
                Err(_) => seen.error(started.elapsed()),
            }
            seen.calls += 1;
            x += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ("get", seen)
    });
    let (c, s) = (cache.clone(), Arc::clone(&stop));
    load.spawn(async move {
        let mut seen = Seen::default();
        while !s.load(Ordering::Relaxed) {
            match c.set("auto_failover:probe", &seen.calls, Ttl::Never).await {
                Ok(()) => seen.ok(started.elapsed()),
                Err(_) => seen.error(started.elapsed()),
            }
            seen.calls += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ("set", seen)
    });

    let report = formation.failover().await;
    let reported = started.elapsed();
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            return Err(e.into());
        }
    };

    // Hits are back once a whole pass over the keys runs no body and every get hits.
    let back = within(HITS_BACK_WITHIN, async || {
        let before = squares.runs();
        let mut all_hit = true;
        for x in 0..KEYS {
            assert_eq!(squares.square(x).await, x * x);
            match cache.get::<u64>(&direct_key(x)).await {
                Ok(Some(value)) => assert_eq!(value, x * x, "get {x}"),
                Ok(None) | Err(_) => all_hit = false,
            }
        }
        all_hit && squares.runs() == before
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    while let Some(joined) = load.join_next().await {
        seen.push(joined?);
    }
    let get = &seen.iter().find(|(kind, _)| *kind == "get").expect("the get task").1;
    let set = &seen.iter().find(|(kind, _)| *kind == "set").expect("the set task").1;
    let memoized: u64 = seen.iter().filter(|(kind, _)| *kind == "memoized").map(|(_, s)| s.calls).sum();
    say(&format!(
        "pg_auto_failover: formation up in {up_took:.1?}; after `perform failover`: writes failing from {} to {} \
         (first write on the new primary), first hit at {} (gets: {} errors, {} misses), new primary reported at \
         {reported:.1?} ({}); all entries hits again {} after that; {memoized} memoized calls, {} ran uncached",
        ms(set.first_error),
        ms(set.first_success_after),
        ms(get.first_success_after),
        get.errors,
        get.misses,
        report.trim(),
        ms(back),
        squares.runs() - KEYS,
    ));
    let back = back.ok_or_else(|| format!("entries were not hits again within {HITS_BACK_WITHIN:?} of the report"))?;
    assert!(back < HITS_BACK_WITHIN);

    // The new primary is the other node, and the cache writes there.
    let new_primary = primary_of(&hosts).await.ok_or("no single primary after the failover")?;
    assert_ne!(new_primary, old_primary, "the failover moved the primary");
    cache.set("auto_failover:after", &1, Ttl::Never).await?;
    assert_eq!(cache.get::<i32>("auto_failover:after").await?, Some(1));
    assert_eq!(probe(&new_primary, Some("auto_failover:after")).await?, (true, 1));
    drop(formation);
    say(&format!("pg_auto_failover: the test took {:.1?}", test_started.elapsed()));
    Ok(())
}
