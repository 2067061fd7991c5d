//! grant: a role that could not use the cache can, then only reads, then nothing.

use crate::support::{json_of, TestDb};
use predicates::prelude::*;
use std::time::Duration;

const TTL: Option<Duration> = Some(Duration::from_secs(600));

#[test]
fn grant_gives_a_role_the_cache_then_reading_only_then_nothing() {
    let db = TestDb::migrated();
    let role = db.role("app");
    let app = db.cache_as(&role);
    assert!(db.block_on(app.set("app:1", &1, TTL)).is_err(), "nobody but the owner uses the cache by default");

    let report = json_of(db.pg_cached().args(["grant", &role, "--json"]));
    assert_eq!((report["role"].as_str(), report["access"].as_str()), (Some(role.as_str()), Some("writer")), "{report}");
    assert_eq!(report["shards"].as_array().map(Vec::len), Some(1), "{report}");
    db.block_on(app.set("app:1", &1, TTL)).expect("a writer writes");

    db.pg_cached()
        .args(["grant", &role, "--read-only"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("role {role:?} may now read the cache")));
    assert_eq!(db.block_on(app.get::<i32>("app:1")).expect("a reader reads"), Some(1));
    assert!(db.block_on(app.set("app:2", &2, TTL)).is_err(), "a reader does not write");

    db.pg_cached().args(["grant", &role, "--revoke"]).assert().success();
    assert!(db.block_on(app.get::<i32>("app:1")).is_err());
}

#[test]
fn grant_refuses_what_is_not_a_role() {
    let db = TestDb::migrated();
    for role in ["public", "no_such_role_here", ""] {
        let failed = db.pg_cached().args(["grant", role]).assert().code(2).stdout("");
        let stderr = String::from_utf8_lossy(&failed.get_output().stderr).into_owned();
        assert!(stderr.starts_with("error: invalid role") && stderr.lines().count() == 1, "{role:?}: {stderr}");
    }
}
