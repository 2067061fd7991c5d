//! stats, keys and get.

use crate::support::{json_of, text_of, with_tagged_entries, TestDb};
use predicates::prelude::*;
use std::time::Duration;

const TEN_MINUTES: Option<Duration> = Some(Duration::from_secs(600));

/// Three entries in `alpha`, two in `beta`, and one expired entry in `beta` that waits for a sweep.
fn populated() -> TestDb {
    let db = TestDb::migrated();
    let cache = db.cache();
    db.block_on(async {
        for i in 0..3 {
            cache.set(&format!("alpha:{i}"), &serde_json::json!({"i": i}), TEN_MINUTES).await.expect("set");
        }
        cache.set("beta:0", &"zero", TEN_MINUTES).await.expect("set");
        cache.set("beta:1", &vec![1, 2, 3], cache_runtime::Ttl::Never).await.expect("set");
    });
    db.sql(
        "INSERT INTO cache_entries (cache_key, data, expires_at, sweep_at) \
            VALUES ('beta:old', '1', now() - interval '1 hour', now() - interval '1 hour')",
    );
    db
}

#[test]
fn migrate_then_stats_counts_entries_per_namespace() {
    let db = TestDb::create();
    db.pg_cached()
        .arg("migrate")
        .assert()
        .success()
        .stdout(predicate::str::contains("applied migration(s) 1, 2, 3, 4, 5"));
    let again = json_of(db.pg_cached().args(["migrate", "--json"]));
    assert_eq!(again["shards"][0]["newly_applied"], serde_json::json!([]), "{again}");
    assert!(again["schema_version"].as_i64() >= Some(5));

    let cache = db.cache();
    db.block_on(async {
        cache.set("alpha:1", &1, TEN_MINUTES).await.expect("set");
        cache.set("alpha:2", &2, TEN_MINUTES).await.expect("set");
        cache.set("beta:1", &"b", TEN_MINUTES).await.expect("set");
    });
    db.sql(
        "INSERT INTO cache_entries (cache_key, data, expires_at) VALUES ('beta:old', '1', now() - interval '1 hour')",
    );

    let stats = json_of(db.pg_cached().args(["stats", "--json"]));
    assert_eq!((stats["entries"].as_u64(), stats["expired"].as_u64()), (Some(4), Some(1)), "{stats}");
    let namespaces = stats["namespaces"].as_array().expect("namespaces");
    let find = |name: &str| namespaces.iter().find(|n| n["namespace"] == name).cloned().expect(name);
    assert_eq!((find("alpha")["entries"].as_u64(), find("alpha")["expired"].as_u64()), (Some(2), Some(0)));
    assert_eq!((find("beta")["entries"].as_u64(), find("beta")["expired"].as_u64()), (Some(2), Some(1)));
    assert!(find("alpha")["bytes"].as_u64() > Some(0));
    assert!(find("alpha")["oldest"].as_str().is_some_and(|t| t.ends_with('Z')));
    let table = &stats["tables"][0];
    assert!(table["total_bytes"].as_u64() > Some(0) && table["shard"].as_str().is_some_and(|s| s.contains(&db.name)));

    let text = text_of(db.pg_cached().arg("stats"));
    assert!(text.contains("hit ratio: kept per process; see metrics"), "{text}");
    assert!(text.contains("alpha") && text.contains("beta") && text.contains("dead"), "{text}");
}

#[test]
fn keys_filter_by_prefix_newest_first_up_to_the_limit() {
    let db = populated();
    // Fixed creation times, so "newest first" does not depend on how fast the writes were.
    db.sql(
        "UPDATE cache_entries SET created_at = now() - interval '1 minute' * (10 - substr(cache_key, 7)::int) \
            WHERE cache_key LIKE 'alpha:%'",
    );
    let listed = json_of(db.pg_cached().args(["keys", "alpha:", "--limit", "2", "--json"]));
    let keys: Vec<&str> = listed["keys"].as_array().expect("keys").iter().filter_map(|k| k["key"].as_str()).collect();
    assert_eq!(keys, ["alpha:2", "alpha:1"], "{listed}");
    assert_eq!(listed["more"], true);
    assert!(listed["keys"][0]["ttl_ms"].as_i64().is_some_and(|ms| ms > 0 && ms <= 600_000));
    assert!(listed["keys"][0]["bytes"].as_u64() > Some(0));

    let all = json_of(db.pg_cached().args(["keys", "--json"]));
    let all: Vec<&str> = all["keys"].as_array().expect("keys").iter().filter_map(|k| k["key"].as_str()).collect();
    assert_eq!(all.len(), 5, "expired entries are not listed: {all:?}");
    assert!(!all.contains(&"beta:old"));

    let text = text_of(db.pg_cached().args(["keys", "beta:"]));
    assert!(text.contains("beta:1") && text.contains("never"), "{text}");
}

#[test]
fn get_shows_the_entry_and_a_missing_key_exits_1() {
    let db = populated();
    let entry = json_of(db.pg_cached().args(["get", "alpha:1", "--json"]));
    assert_eq!(entry["value"], serde_json::json!({"i": 1}));
    assert_eq!(entry["key"], "alpha:1");
    assert!(entry["ttl_ms"].as_i64().is_some_and(|ms| ms > 0) && entry["expires"].is_string());
    let never = json_of(db.pg_cached().args(["get", "beta:1", "--json"]));
    assert_eq!((never["ttl_ms"].is_null(), never["expires"].is_null()), (true, true));

    let text = text_of(db.pg_cached().args(["get", "alpha:1"]));
    assert!(text.contains("\"i\": 1") && text.contains("created"), "{text}");
    assert!(!text.contains('\u{1b}'), "no colour off a terminal");

    for missing in ["alpha:404", "beta:old"] {
        let failed = db.pg_cached().args(["get", missing]).assert().code(1).stdout("");
        let stderr = String::from_utf8_lossy(&failed.get_output().stderr).into_owned();
        assert!(stderr.starts_with("error: ") && stderr.lines().count() == 1 && stderr.contains(missing), "{stderr}");
    }
}

#[test]
fn get_shows_tags_and_compute_time() {
    let db = with_tagged_entries();
    // set_tagged records no compute time; a memoized write does. Give one entry the time a computation took.
    db.sql("UPDATE cache_entries SET compute_us = 1500 WHERE cache_key = 'answer:2'");
    let tagged = json_of(db.pg_cached().args(["get", "answer:2", "--json"]));
    assert_eq!(tagged["tags"], serde_json::json!(["doc:1", "doc:2"]), "sorted, as stored: {tagged}");
    assert_eq!(tagged["compute_ms"].as_f64(), Some(1.5), "{tagged}");
    let plain = json_of(db.pg_cached().args(["get", "plain:1", "--json"]));
    assert_eq!((plain["tags"].clone(), plain["compute_ms"].clone()), (serde_json::json!([]), serde_json::Value::Null));

    let text = text_of(db.pg_cached().args(["get", "answer:2"]));
    assert!(text.lines().any(|l| l == "tags     doc:1, doc:2"), "{text}");
    assert!(text.lines().any(|l| l == "compute  1.5ms"), "{text}");
    let text = text_of(db.pg_cached().args(["get", "plain:1"]));
    assert!(text.lines().any(|l| l == "tags     (none)"), "{text}");
    assert!(text.lines().any(|l| l == "compute  not recorded"), "{text}");
}

#[test]
fn stats_sum_the_compute_time_of_live_entries() {
    let db = populated();
    // 1 ms + 2.5 ms in alpha; 0.5 ms in beta, whose expired entry's 999 ms no longer counts.
    db.sql(
        "UPDATE cache_entries SET compute_us = CASE cache_key WHEN 'alpha:0' THEN 1000 WHEN 'alpha:1' THEN 2500 \
            WHEN 'beta:0' THEN 500 WHEN 'beta:old' THEN 999000 END",
    );
    let stats = json_of(db.pg_cached().args(["stats", "--json"]));
    let namespaces = stats["namespaces"].as_array().expect("namespaces");
    let compute =
        |name: &str| namespaces.iter().find(|n| n["namespace"] == name).and_then(|n| n["compute_ms"].as_f64());
    assert_eq!((compute("alpha"), compute("beta")), (Some(3.5), Some(0.5)), "{stats}");
    assert_eq!(stats["compute_ms"].as_f64(), Some(4.0), "{stats}");

    let text = text_of(db.pg_cached().arg("stats"));
    assert!(text.contains("compute: 4.0ms held in live entries"), "{text}");
    let alpha = text.lines().find(|l| l.starts_with("alpha")).unwrap_or_default();
    assert!(alpha.contains("3.5ms"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("namespace") && l.contains("compute")), "{text}");
}

#[test]
fn stats_sum_the_usage_of_live_entries_as_saved() {
    let db = populated();
    // alpha: two entries with usage; beta: the live one has none (NULL, as before migration 0008), the expired
    // one's usage no longer counts.
    db.sql(
        "UPDATE cache_entries SET input_tokens = 1000, output_tokens = 200, cost_micros = 4500 \
            WHERE cache_key IN ('alpha:0', 'alpha:1', 'beta:old')",
    );
    let stats = json_of(db.pg_cached().args(["stats", "--json"]));
    let saved = |name: &str| {
        let namespaces = stats["namespaces"].as_array().cloned().unwrap_or_default();
        namespaces.into_iter().find(|n| n["namespace"] == name).map(|n| n["saved"].clone())
    };
    let usage = |input: u64, output: u64, cost: u64| serde_json::json!({"input_tokens": input, "output_tokens": output, "cost_micros_usd": cost});
    assert_eq!(saved("alpha"), Some(usage(2000, 400, 9000)), "{stats}");
    assert_eq!(saved("beta"), Some(usage(0, 0, 0)), "{stats}");
    assert_eq!(stats["saved"], usage(2000, 400, 9000), "{stats}");

    let text = text_of(db.pg_cached().arg("stats"));
    assert!(text.contains("saved per hit: 2,400 tokens, $0.0090 held in live entries"), "{text}");
    let alpha = text.lines().find(|l| l.starts_with("alpha")).unwrap_or_default();
    assert!(alpha.contains("2,400") && alpha.contains("$0.0090"), "{text}");
}
