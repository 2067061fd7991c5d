//! Exit codes and error lines: bad input and bad usage (2), unreachable servers (1), completions.

use crate::support::{pg_cached_at, BINARY};
use assert_cmd::Command;
use predicates::prelude::*;
use std::time::{Duration, Instant};

/// Nothing listens on port 1: connecting is refused.
const CLOSED: &str = "postgres://postgres@127.0.0.1:1/nothing";

/// The stderr of a run that exited with `code`, checked to be one `error:` line.
fn one_error_line(command: &mut Command, code: i32) -> String {
    let assert = command.assert().code(code);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1, "{stderr:?}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
    stderr
}

#[test]
fn an_unreachable_server_fails_fast_with_one_line() {
    let started = Instant::now();
    let stderr = one_error_line(pg_cached_at(CLOSED).arg("stats"), 1);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(stderr.contains("127.0.0.1:1/nothing") && stderr.contains("refused"), "{stderr}");
}

#[test]
fn bad_keys_and_namespaces_are_usage_errors_before_any_io() {
    // The server is unreachable: a check that happened after connecting would exit 1, not 2.
    one_error_line(pg_cached_at(CLOSED).args(["get", ""]), 2);
    one_error_line(pg_cached_at(CLOSED).args(["delete", "ok:1", ""]), 2);
    // Command-line arguments cannot hold a NUL; keys read from stdin can.
    let stderr = one_error_line(pg_cached_at(CLOSED).args(["delete", "--stdin"]).write_stdin("ok:1\nbad\0key\n"), 2);
    assert!(stderr.contains("NUL"), "{stderr}");
    one_error_line(pg_cached_at(CLOSED).args(["purge", "--namespace", "no:colons", "--yes"]), 2);
    // Every tag is checked, the good ones given first included, and the line names what is wrong.
    let stderr = one_error_line(pg_cached_at(CLOSED).args(["purge", "--tag", "doc:1", "--tag", "", "--yes"]), 2);
    assert!(stderr.contains("invalid cache tag") && stderr.contains("empty"), "{stderr}");
    let long = "t".repeat(cache_runtime::MAX_TAG_CHARS + 1);
    let stderr = one_error_line(pg_cached_at(CLOSED).args(["purge", "--tag", &long, "--yes"]), 2);
    assert!(stderr.contains("longer than 200"), "{stderr}");
    let stderr = one_error_line(pg_cached_at(CLOSED).args(["purge", "--tag", "line\nbreak", "--yes"]), 2);
    assert!(stderr.contains("control character"), "{stderr}");
    one_error_line(pg_cached_at(CLOSED).args(["keys", "--limit", "1"]).env_remove("DATABASE_URL"), 2);
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        &["frobnicate"][..],
        &["keys", "--limit", "many"],
        &["purge", "--namespace", "a", "--expired", "--yes"],
        &["purge", "--yes"],
        &["purge", "--tag", "a", "--namespace", "b", "--yes"],
        &["purge", "--tag", "a", "--expired", "--yes"],
        &["purge", "--tag"],
        &["delete"],
        &["watch", "--interval", "0"],
        &["completions", "tcsh"],
    ] {
        pg_cached_at(CLOSED).args(args).assert().code(2).stdout("");
    }
}

#[test]
fn completions_for_bash_need_no_database() {
    Command::new(BINARY).args(["completions", "bash"]).env_remove("DATABASE_URL").assert().success().stdout(
        predicate::str::contains("complete -F")
            .and(predicate::str::contains("pg-cached"))
            .and(predicate::str::contains("doctor")),
    );
}
