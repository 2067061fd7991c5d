//! delete, purge and sweep.

use crate::support::{json_of, with_tagged_entries, TestDb};
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
    assert_eq!(
        report,
        serde_json::json!({"scope": "namespace", "namespace": "gone", "tags": null, "tenant": null, "removed": 4})
    );
    assert_eq!((db.count("cache_key LIKE 'gone:%'"), db.count("cache_key LIKE 'kept:%'")), (0, 4));
}

#[test]
fn purge_tenant_deletes_only_that_tenants_entries() {
    let db = with_entries(&["answer"], 2);
    let cache = db.cache();
    db.block_on(async {
        for id in ["acme", "globex"] {
            let set = cache.set_many(&[("answer:0", 0), ("answer:1", 1), ("answer:2", 2)], None);
            cache_runtime::tenant(id, set).await.expect("set");
        }
    });
    let stats = json_of(db.pg_cached().args(["stats", "--tenant", "acme", "--json"]));
    assert_eq!(
        (stats["tenant"].as_str(), stats["entries"].as_u64(), stats["live"].as_u64()),
        (Some("acme"), Some(3), Some(3))
    );
    assert!(stats["bytes"].as_u64().is_some_and(|b| b > 0), "{stats}");
    db.pg_cached()
        .args(["stats", "--tenant", "acme"])
        .assert()
        .success()
        .stdout(predicate::str::starts_with("tenant acme: 3 entries (3 live), "));
    db.pg_cached().args(["stats", "--tenant", ""]).assert().code(2);
    let report = json_of(db.pg_cached().args(["purge", "--tenant", "acme", "--yes", "--json"]));
    assert_eq!(
        report,
        serde_json::json!({"scope": "tenant", "namespace": null, "tags": null, "tenant": "acme", "removed": 3})
    );
    let left = (db.count("tenant = 'acme'"), db.count("tenant = 'globex'"), db.count("tenant IS NULL"));
    assert_eq!(left, (0, 3, 2), "only acme's entries went");
    db.pg_cached().args(["purge", "--tenant", "bad\tid", "--yes"]).assert().code(2);
    db.pg_cached().args(["purge", "--tenant", "", "--yes"]).assert().code(2);
    db.pg_cached().args(["purge", "--tenant", "acme", "--namespace", "answer", "--yes"]).assert().code(2);
}

#[test]
fn purge_without_yes_off_a_terminal_refuses_and_deletes_nothing() {
    let db = with_entries(&["kept"], 2);
    // Even a "y" piped in is no confirmation: nobody is there to read the question.
    let refused = db.pg_cached().args(["purge", "--namespace", "kept"]).write_stdin("y\n").assert().code(2);
    let stderr = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(stderr.starts_with("error: ") && stderr.contains("--yes") && stderr.lines().count() == 1, "{stderr}");
    db.pg_cached().args(["purge", "--expired"]).assert().code(2);
    db.pg_cached().args(["purge", "--tag", "doc:1"]).write_stdin("y\n").assert().code(2);
    assert_eq!(db.count("true"), 2);
}

#[test]
fn purge_tag_deletes_the_tagged_entries_records_and_announces_it() {
    let db = with_tagged_entries();
    let mut command = db.pg_cached();
    command.args(["purge", "--tag", "doc:1", "--yes", "--json"]);
    // Services learn of the purge from the events channel: listen as one would (registered, or the cache
    // sends nothing), for the whole run. All of it inside the runtime, which the listener's connection needs
    // even to be dropped.
    let (report, heard) = db.block_on(async {
        let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.expect("listen");
        listener.listen(cache_runtime::EVENTS_CHANNEL).await.expect("LISTEN");
        sqlx::query("SELECT pg_cached_register_listener('test')").execute(&mut listener).await.expect("register");
        let report = tokio::task::spawn_blocking(move || json_of(&mut command)).await.expect("pg-cached ran");
        let tag_event = async {
            loop {
                let payload = listener.recv().await.expect("a notification").payload().to_owned();
                if payload.contains("|t|") {
                    return payload;
                }
            }
        };
        (report, tokio::time::timeout(Duration::from_secs(30), tag_event).await.expect("a tag event within 30 s"))
    });
    assert_eq!(
        report,
        serde_json::json!({"scope": "tag", "namespace": null, "tags": ["doc:1"], "tenant": null, "removed": 2})
    );
    // Signed, and naming the tag by hash only.
    let tag = format!("|t|{:016x}", cache_runtime::channel::name_hash("doc:1"));
    assert!(heard.ends_with(&tag), "every process is told: {heard}");
    let left: Vec<i64> = ["answer:1", "answer:2", "answer:3", "plain:1"]
        .iter()
        .map(|key| db.count(&format!("cache_key = '{key}'")))
        .collect();
    assert_eq!(left, [0, 0, 1, 1], "only the entries carrying doc:1 went");
    // Through PgCache::invalidate_tags: the invalidation is recorded, so computations already running are
    // not stored.
    assert_eq!(db.scalar("SELECT count(*) FROM cache_tag_invalidations WHERE tag = 'doc:1'"), 1);
}

#[test]
fn purge_several_tags_deletes_entries_carrying_any_of_them() {
    let db = with_tagged_entries();
    db.pg_cached()
        .args(["purge", "--tag", "doc:2", "--tag", "doc:3", "--tag", "doc:2", "--yes"])
        .assert()
        .success()
        .stdout("deleted 2 entries tagged any of doc:2, doc:3\n");
    assert_eq!((db.count("cache_key LIKE 'answer:%'"), db.count("cache_key = 'answer:1'")), (1, 1));
    let report = json_of(db.pg_cached().args(["purge", "--tag", "doc:404", "--tag", "doc:1", "--yes", "--json"]));
    assert_eq!(
        report,
        serde_json::json!({"scope": "tag", "namespace": null, "tags": ["doc:404", "doc:1"], "tenant": null, "removed": 1})
    );
    assert_eq!(db.count("true"), 1, "the untagged entry stays");
}

#[test]
fn purge_expired_deletes_only_expired_entries() {
    let db = with_entries(&["live"], 2);
    add_expired(&db, "dead", 3);
    let report = json_of(db.pg_cached().args(["purge", "--expired", "--yes", "--json"]));
    assert_eq!(
        report,
        serde_json::json!({"scope": "expired", "namespace": null, "tags": null, "tenant": null, "removed": 3})
    );
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
