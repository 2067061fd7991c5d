//! No password reaches the terminal: the real binary, given a URL with a password in each form a URL (or a
//! libpq `key=value` string) can hold one, unreachable or malformed so that every run ends in an error
//! message, prints none of it on stdout or stderr, however the URL was given.

use crate::support::{pg_cached_at, BINARY};
use assert_cmd::Command;

/// The two halves of the password; neither may be printed.
const HALVES: [&str; 2] = ["Pw1", "Xy9"];

const URLS: &[&str] = &[
    // Well-formed, and nothing listens on port 1.
    "postgres://app:Pw1Xy9@127.0.0.1:1/cache",
    "postgres://app:Pw1Xy9@127.0.0.1:1,127.0.0.1:2/cache?target_session_attrs=read-write",
    "postgres://app@127.0.0.1:1/cache?password=Pw1Xy9",
    "postgres://app@127.0.0.1:1/cache?sslmode=disable&password=Pw1Xy9",
    "postgres://app@127.0.0.1:1/cache?pass%77ord=Pw1Xy9",
    "postgres://app:Pw1Xy9%2F%40@127.0.0.1:1/cache",
    // Malformed: a password whose `/`, `#`, `?` or `@` was not percent-encoded, a bad parameter, a key the
    // driver does not read, a mistyped scheme, a libpq key=value string.
    "postgres://app:Pw1/Xy9@127.0.0.1:1/cache",
    "postgres://app:Pw1#Xy9@127.0.0.1:1/cache",
    "postgres://app:Pw1?Xy9@127.0.0.1:1/cache",
    "postgres://app:Pw1@Xy9@127.0.0.1:notaport/cache",
    "postgres://app:Pw1Xy9@127.0.0.1:1/cache?sslmode=bogus",
    "postgres://127.0.0.1:1/cache?PASSWORD=Pw1Xy9",
    "postgres:/app:Pw1Xy9@127.0.0.1:1/cache",
    "host=127.0.0.1 port=1 password=Pw1Xy9",
];

/// The ways a URL reaches the binary: `DATABASE_URL`, `--database-url`, `--shards` (next to a clean URL),
/// and the JSON mode.
fn runs(url: &str) -> Vec<(&'static str, Command)> {
    let mut flag = Command::new(BINARY);
    flag.env_remove("DATABASE_URL").env("NO_COLOR", "1").args(["--database-url", url]);
    let mut shards = pg_cached_at("postgres://app@127.0.0.1:1/unused");
    shards.args(["--shards", &format!("{url},postgres://app@127.0.0.1:2/other")]);
    let mut json = pg_cached_at(url);
    json.arg("--json");
    vec![("DATABASE_URL", pg_cached_at(url)), ("--database-url", flag), ("--shards", shards), ("--json", json)]
}

#[test]
fn no_password_reaches_the_terminal() {
    let failures: Vec<String> = std::thread::scope(|scope| {
        let checks: Vec<_> = URLS
            .iter()
            .flat_map(|url| runs(url).into_iter().map(move |(how, command)| (*url, how, command)))
            .map(|(url, how, mut command)| {
                scope.spawn(move || {
                    let output = command.args(["--timeout", "1", "stats"]).output().expect("the binary runs");
                    let printed = format!(
                        "{}{}",
                        String::from_utf8_lossy(&output.stdout),
                        String::from_utf8_lossy(&output.stderr)
                    );
                    let leaked = HALVES.iter().any(|half| printed.contains(half));
                    let panicked = printed.contains("panicked");
                    (leaked || panicked || output.status.success())
                        .then(|| format!("{how} {url} ({}): {printed}", output.status))
                })
            })
            .collect();
        checks.into_iter().filter_map(|check| check.join().expect("a check thread")).collect()
    });
    assert!(
        failures.is_empty(),
        "{} runs showed a password (or did not fail):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
