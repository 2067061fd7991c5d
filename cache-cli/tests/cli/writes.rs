//! delete, purge and sweep.

use crate::support::{json_of, TestDb};
use predicates::prelude::*;
use std::time::Duration;

/// `n` live entries in each of `namespaces`.
fn with_entries(namespaces: &[&str], n: usize) -> TestDb {
    let db = TestDb::migrated();
    let cache = db.cache();
    db.block_on(async {
        for namespace in namespaces {
            for i in 0..n {
                cache.set(&format!("{namespace}:{i}"), &i, Some(Duration::from_secs(600))).await.expect("set");
            }
        }
    });
    db
}

/// `n` entries in `namespace` that expired an hour ago.
fn add_expired(db: &TestDb, namespace: &str, n: usize) {
    db.sql(&format!(
        "INSERT INTO cache_entries (cache_key, data, expires_at, sweep_at) \
         SELECT '{namespace}:old' || i, '1', now() - interval '1 hour', now() - interval '1 hour' \
         FROM generate_series(1, {n}) AS i"
    ));
}

#[test]
fn delete_removes_keys_and_counts_them() {
    let db = with_entries(&["a"], 3);
    let report = json_of(db.pg_cached().args(["delete", "a:0", "a:1", "a:404", "--json"]));
    assert_eq!(report["removed"], 2, "{report}");
    let missing = report["keys"].as_array().expect("keys").iter().find(|k| k["key"] == "a:404").cloned();
    assert_eq!(
        missing.map(|k| (k["removed"].clone(), k["error"].clone())),
        Some((false.into(), serde_json::Value::Null))
    );
    assert_eq!(db.count("true"), 1);
    db.pg_cached().args(["get", "a:0"]).assert().code(1);

    db.pg_cached()
        .args(["delete", "--stdin"])
        .write_stdin("a:2\n")
        .assert()
        .success()
        .stdout(predicate::str::contains("removed 1 of 1 key(s)"));
    assert_eq!(db.count("true"), 0);
}

#[test]
fn purge_namespace_with_yes_deletes_only_that_namespace() {
    let db = with_entries(&["gone", "kept"], 4);
    let report = json_of(db.pg_cached().args(["purge", "--namespace", "gone", "--yes", "--json"]));
    assert_eq!(report, serde_json::json!({"scope": "namespace", "namespace": "gone", "removed": 4}));
    assert_eq!((db.count("cache_key LIKE 'gone:%'"), db.count("cache_key LIKE 'kept:%'")), (0, 4));
}

#[test]
fn purge_without_yes_off_a_terminal_refuses_and_deletes_nothing() {
    let db = with_entries(&["kept"], 2);
    // Even a "y" piped in is no confirmation: nobody is there to read the question.
    let refused = db.pg_cached().args(["purge", "--namespace", "kept"]).write_stdin("y\n").assert().code(2);
    let stderr = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(stderr.starts_with("error: ") && stderr.contains("--yes") && stderr.lines().count() == 1, "{stderr}");
    db.pg_cached().args(["purge", "--expired"]).assert().code(2);
    assert_eq!(db.count("true"), 2);
}

#[test]
fn purge_expired_deletes_only_expired_entries() {
    let db = with_entries(&["live"], 2);
    add_expired(&db, "dead", 3);
    let report = json_of(db.pg_cached().args(["purge", "--expired", "--yes", "--json"]));
    assert_eq!(report, serde_json::json!({"scope": "expired", "namespace": null, "removed": 3}));
    assert_eq!((db.count("cache_key LIKE 'dead:%'"), db.count("cache_key LIKE 'live:%'")), (0, 2));
}

#[test]
fn sweep_deletes_expired_entries_and_reports() {
    let db = with_entries(&["live"], 2);
    add_expired(&db, "dead", 5);
    let report = json_of(db.pg_cached().args(["sweep", "--json"]));
    assert_eq!(report, serde_json::json!({"expired": 5, "evicted": 0, "max_entries": null}));
    assert_eq!(db.count("true"), 2);

    // With a row limit, the sweep also evicts down to it.
    let limited = json_of(db.pg_cached().args(["sweep", "--max-entries", "1", "--json"]));
    assert_eq!((limited["evicted"].as_u64(), limited["max_entries"].as_u64()), (Some(1), Some(1)), "{limited}");
    assert_eq!(db.count("true"), 1);
}
