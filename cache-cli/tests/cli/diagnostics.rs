//! doctor, watch, and a sharded cache.

use crate::support::{json_of, text_of, TestDb, BINARY};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The check named `name` in a doctor report.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"].as_array().and_then(|c| c.iter().find(|c| c["name"] == name)).unwrap_or_else(|| panic!("{name}"))
}

#[test]
fn doctor_passes_a_migrated_database() {
    let db = TestDb::migrated();
    // A pool of 1, so the headroom check holds however busy the shared test server is.
    let report = json_of(db.pg_cached().args(["doctor", "--pool-size", "1", "--json"]));
    assert_eq!(report["ok"], true, "{report:#}");
    for name in [
        "connection",
        "schema",
        "indexes",
        "dead_tuples",
        "autovacuum",
        "synchronous_commit",
        "connections",
        "clock",
        "notifications",
    ] {
        assert_ne!(check(&report, name)["status"], "fail", "{report:#}");
    }
    assert_eq!(check(&report, "schema")["status"], "ok");
    let schema = check(&report, "schema")["message"].as_str().unwrap_or_default();
    let latest = cache_runtime::MIGRATOR.iter().map(|m| m.version).max().unwrap_or_default();
    assert!(
        schema.contains(&format!("(version {latest})")) && schema.contains("SQL functions at version"),
        "{report:#}"
    );
    assert_eq!(check(&report, "indexes")["status"], "ok", "migration 5's GIN index is expected, not stray");
    let text = text_of(db.pg_cached().args(["doctor", "--pool-size", "1"]));
    assert!(text.lines().any(|l| l.starts_with("OK") && l.contains("schema")), "{text}");
}

#[test]
fn doctor_warns_while_a_row_stands_for_an_earlier_releases_listeners() {
    let db = TestDb::migrated();
    let report = json_of(db.pg_cached().args(["doctor", "--pool-size", "1", "--json"]));
    assert_eq!(check(&report, "notifications")["status"], "ok", "a new database has no such row: {report:#}");
    // What migrating a database an earlier release used leaves (migration 0013).
    db.sql("INSERT INTO cache_listeners (held) VALUES (false)");
    let report = json_of(db.pg_cached().args(["doctor", "--pool-size", "1", "--json"]));
    let notifications = check(&report, "notifications");
    assert_eq!(notifications["status"], "warn", "{report:#}");
    let fix = notifications["fix"].as_str().unwrap_or_default();
    assert!(fix.ends_with("DELETE FROM cache_listeners WHERE NOT held"), "{fix}");
    db.sql(fix.split_once(": ").map_or(fix, |(_, statement)| statement));
    let report = json_of(db.pg_cached().args(["doctor", "--pool-size", "1", "--json"]));
    assert_eq!(check(&report, "notifications")["status"], "ok", "{report:#}");
}

#[test]
fn doctor_fails_a_missing_tags_index_and_gives_its_statement() {
    let db = TestDb::migrated();
    db.sql("DROP INDEX cache_entries_tags_idx");
    let assert = db.pg_cached().args(["doctor", "--pool-size", "1", "--json"]).assert().code(1);
    let report: Value = serde_json::from_slice(&assert.get_output().stdout).expect("a JSON report despite the FAIL");
    let indexes = check(&report, "indexes");
    assert_eq!(indexes["status"], "fail", "{report:#}");
    assert!(indexes["message"].as_str().is_some_and(|m| m.contains("cache_entries_tags_idx")), "{report:#}");
    let fix = indexes["fix"].as_str().unwrap_or_default();
    assert!(fix.contains("USING gin (tags) WHERE tags IS NOT NULL"), "{fix}");
    // The statement it gives is the one that repairs it.
    db.sql(fix.split_once(": ").map_or(fix, |(_, statement)| statement));
    let report = json_of(db.pg_cached().args(["doctor", "--pool-size", "1", "--json"]));
    assert_eq!(check(&report, "indexes")["status"], "ok", "{report:#}");
}

#[test]
fn a_schema_older_than_the_binary_asks_for_migrate_and_purges_nothing() {
    let db = crate::support::with_tagged_entries();
    // What a database still on migration 4 lacks that get, stats and purge --tag read or call.
    db.sql(
        "DROP FUNCTION pg_cached_invalidate_tags(text[], text, text); \
         ALTER TABLE cache_entries DROP COLUMN tags, DROP COLUMN compute_us",
    );
    for args in [&["get", "answer:1"][..], &["stats"], &["purge", "--tag", "doc:1", "--yes"]] {
        let failed = db.pg_cached().args(args).assert().code(1).stdout("");
        let stderr = String::from_utf8_lossy(&failed.get_output().stderr).into_owned();
        assert!(stderr.starts_with("error: ") && stderr.lines().count() == 1, "{args:?}: {stderr}");
        assert!(stderr.contains("older than this pg-cached") && stderr.contains("pg-cached migrate"), "{stderr}");
    }
    assert_eq!(db.count("true"), 4);
}

#[test]
fn doctor_fails_the_schema_of_an_unmigrated_database() {
    let db = TestDb::create();
    let assert = db.pg_cached().args(["doctor", "--pool-size", "1", "--json"]).assert().code(1);
    let report: Value = serde_json::from_slice(&assert.get_output().stdout).expect("a JSON report despite the FAIL");
    assert_eq!(report["ok"], false);
    let schema = check(&report, "schema");
    assert_eq!(schema["status"], "fail", "{report:#}");
    assert_eq!(schema["fix"], "pg-cached migrate");
    assert_eq!(check(&report, "indexes")["status"], "fail");
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.starts_with("error: ") && stderr.contains("failed"), "{stderr}");
}

#[test]
fn watch_shows_invalidation_events() {
    let db = TestDb::migrated();
    let cache = db.cache();
    db.block_on(async {
        for i in 0..3 {
            cache.set(&format!("w:{i}"), &i, Some(Duration::from_secs(600))).await.expect("set");
        }
    });
    // Two refreshes five seconds apart: the first is printed once the LISTEN is in place; the deletes go
    // in between, so the second must report them.
    let mut child = Command::new(BINARY)
        .args(["watch", "--count", "2", "--interval", "5", "--json"])
        .env("DATABASE_URL", &db.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pg-cached watch");
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line.expect("watch writes UTF-8 lines")).is_err() {
                return;
            }
        }
    });
    let next = || -> Value {
        let line = received.recv_timeout(Duration::from_secs(30)).expect("a refresh within 30 s");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("a JSON line ({e}): {line}"))
    };
    let first = next();
    assert_eq!((first["tick"].as_u64(), first["rates"].is_null()), (Some(0), true), "{first}");
    assert_eq!(first["namespaces"], serde_json::json!([{"namespace": "w", "entries": 3}]));
    db.block_on(async {
        cache.delete("w:0").await.expect("delete");
        cache.delete_namespace("w").await.expect("purge");
    });
    let second = next();
    assert_eq!(second["tick"], 1, "{second}");
    assert!(second["events"]["keys_invalidated"].as_u64() >= Some(1), "{second}");
    // The channel names namespaces by hash (it carries no namespace text); watch shows the hash.
    let purged = format!("{:016x}", cache_runtime::channel::name_hash("w"));
    assert_eq!(second["events"]["namespaces_purged"], serde_json::json!([purged]), "{second}");
    assert!(second["rates"]["deleted"].is_number(), "{second}");
    assert!(wait(&mut child, Duration::from_secs(30)), "watch stops after --count refreshes");
}

/// Waits for `child` to exit successfully, killing it after `limit`.
fn wait(child: &mut std::process::Child, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    false
}

#[test]
fn shards_are_read_and_merged() {
    let (one, two) = (TestDb::create(), TestDb::create());
    let shards = format!("{},{}", one.url, two.url);
    let sharded = |args: &[&str]| {
        let mut command = one.pg_cached();
        command.env_remove("DATABASE_URL").arg("--shards").arg(&shards).args(args);
        command
    };
    let migrated = json_of(&mut sharded(&["migrate", "--json"]));
    assert_eq!(migrated["shards"].as_array().map(Vec::len), Some(2), "{migrated}");

    let cache = one
        .block_on(cache_runtime::PgCache::builder().shards([&one.url, &two.url]).sweep_interval(None).build())
        .expect("a sharded cache");
    one.block_on(async {
        for i in 0..20 {
            cache.set(&format!("s:{i}"), &i, Some(Duration::from_secs(600))).await.expect("set");
        }
    });
    assert!(one.count("true") > 0 && two.count("true") > 0, "20 keys land on both shards");

    let stats = json_of(&mut sharded(&["stats", "--json"]));
    assert_eq!(stats["entries"], 20, "{stats}");
    assert_eq!(stats["namespaces"], serde_json::json!([stats["namespaces"][0].clone()]));
    assert_eq!(stats["namespaces"][0]["entries"], 20);
    assert_eq!(stats["tables"].as_array().map(Vec::len), Some(2));
    let keys = json_of(&mut sharded(&["keys", "s:", "--limit", "15", "--json"]));
    assert_eq!((keys["keys"].as_array().map(Vec::len), keys["more"].as_bool()), (Some(15), Some(true)));
    for i in [3, 17] {
        let entry = json_of(&mut sharded(&["get", &format!("s:{i}"), "--json"]));
        assert_eq!(entry["value"], i, "get finds each key on its own shard");
    }
    // A tag purge reaches every shard: 20 more keys carry a tag, and land on both servers.
    one.block_on(async {
        for i in 0..20 {
            cache.set_tagged(&format!("t:{i}"), &i, Some(Duration::from_secs(600)), &["batch"]).await.expect("set");
        }
    });
    assert!(one.count("tags IS NOT NULL") > 0 && two.count("tags IS NOT NULL") > 0, "tagged keys on both shards");
    let purged = json_of(&mut sharded(&["purge", "--tag", "batch", "--yes", "--json"]));
    assert_eq!(purged["removed"], 20, "{purged}");
    assert_eq!((one.count("tags IS NOT NULL"), two.count("tags IS NOT NULL")), (0, 0));
    let purged = json_of(&mut sharded(&["purge", "--namespace", "s", "--yes", "--json"]));
    assert_eq!(purged["removed"], 20);
}

#[test]
fn rekey_moves_entries_to_the_current_key_and_doctor_reports_key_ids() {
    let db = TestDb::migrated();
    let (k1, k2) = ("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=");
    let old = cache_runtime::Keyring::parse(&format!("k1:{k1}")).expect("a keyring");
    let writer = db
        .block_on(cache_runtime::PgCache::builder().database_url(&db.url).encryption(old).encrypt_all().build())
        .expect("a cache");
    for i in 0..5 {
        db.block_on(writer.set(&format!("answer:{i}"), &format!("secret {i}"), None)).expect("a write");
    }
    let keys = format!("k2:{k2},k1:{k1}");

    let report = json_of(db.pg_cached().env("PG_CACHED_KEYS", &keys).args(["doctor", "--pool-size", "1", "--json"]));
    let encryption = check(&report, "encryption");
    assert_eq!((&encryption["status"], &encryption["fix"]), (&Value::from("warn"), &Value::from("pg-cached rekey")));

    let assert = db.pg_cached().env("PG_CACHED_KEYS", &keys).args(["rekey", "--batch-size", "2", "--json"]).assert();
    let output = assert.success().get_output().clone();
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!((&report["rekeyed"], &report["examined"], &report["batches"]), (&5.into(), &5.into(), &3.into()));
    assert_eq!(report["by_key_id"], serde_json::json!([{"key_id": "k2", "entries": 5}]), "{report:#}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("batch 3: 5 rekeyed"), "progress on stderr");

    let report = json_of(db.pg_cached().env("PG_CACHED_KEYS", &keys).args(["doctor", "--pool-size", "1", "--json"]));
    assert_eq!(check(&report, "encryption")["status"], "ok", "{report:#}");
    // No key material anywhere in what the tool printed, and none without the keys: a usage error.
    let text = text_of(db.pg_cached().env("PG_CACHED_KEYS", &keys).args(["rekey"]));
    assert!(text.contains("rekeyed 0 of 0") && !text.contains(k1) && !text.contains(k2), "{text}");
    db.pg_cached().args(["rekey"]).assert().code(2);
}
