//! Checks of the cache's tables: schema version, indexes, dead tuples, autovacuum.

use super::Check;
use crate::commands::schema::{self, Applied, DROPPED_INDEXES, EXPECTED_INDEXES, OPTIONAL_INDEXES};
use crate::commands::stats;
use crate::error::CliError;
use crate::sql;
use crate::target::Shard;
use crate::units;

/// Dead tuples are worth a WARN above this share of the table...
const DEAD_SHARE_WARN: f64 = 0.2;
/// ...and above this many (a small table with a few dead rows is fine).
const DEAD_MIN_WARN: u64 = 1_000;
/// A high-churn table wants vacuuming well before the server default (20 % dead).
const SCALE_FACTOR_WARN: f64 = 0.05;
/// The advice for a high-churn table.
const AUTOVACUUM_FIX: &str = "ALTER TABLE cache_entries SET (autovacuum_vacuum_scale_factor = 0.01, \
     autovacuum_analyze_scale_factor = 0.02);";

/// Every migration embedded in cache-runtime is applied, none failed or changed, and the SQL functions are
/// at cache-runtime's version.
pub async fn schema(shard: &Shard) -> Result<Check, CliError> {
    let tables = schema_verdict(&schema::embedded(), &schema::applied(shard).await?);
    if tables.status != super::Status::Ok {
        return Ok(tables);
    }
    Ok(functions_verdict(tables.message, schema::functions_version(shard).await?))
}

/// The verdict on the functions' version recorded in `cache_schema` (`None`: never applied), given the
/// migrations' own verdict (all applied).
fn functions_verdict(migrations: String, stored: Option<i32>) -> Check {
    let ours = cache_runtime::FUNCTIONS_VERSION;
    match stored {
        Some(version) if version == ours => {
            Check::ok("schema", format!("{migrations}; SQL functions at version {ours}"))
        }
        Some(version) if version > ours => Check::warn(
            "schema",
            format!("{migrations}; SQL functions at version {version}, newer than this pg-cached's ({ours})"),
            "use a pg-cached built from the same cache-runtime version as the services",
        ),
        stored => Check::fail(
            "schema",
            match stored {
                Some(version) => format!("{migrations}, but the SQL functions are at version {version}, not {ours}"),
                None => format!("{migrations}, but the SQL functions (migrations/functions.sql) were never applied"),
            },
            "pg-cached migrate",
        ),
    }
}

/// The verdict on the applied migrations, given the embedded ones (version, checksum).
fn schema_verdict(embedded: &[(i64, &[u8])], applied: &[Applied]) -> Check {
    let list = |versions: Vec<i64>| versions.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
    if let Some(dirty) = applied.iter().find(|m| !m.success) {
        return Check::fail(
            "schema",
            format!("migration {} failed partway and left the schema dirty", dirty.version),
            format!(
                "repair the schema by hand, delete version {} from _sqlx_migrations, then run pg-cached migrate",
                dirty.version
            ),
        );
    }
    let find = |version: i64| applied.iter().find(|m| m.version == version);
    let missing: Vec<i64> = embedded.iter().filter(|(v, _)| find(*v).is_none()).map(|(v, _)| *v).collect();
    if !missing.is_empty() {
        let message = format!("{} of {} migrations applied; missing: {}", applied.len(), embedded.len(), list(missing));
        return Check::fail("schema", message, "pg-cached migrate");
    }
    let changed: Vec<i64> =
        embedded.iter().filter(|(v, sum)| find(*v).is_some_and(|m| m.checksum != *sum)).map(|(v, _)| *v).collect();
    if !changed.is_empty() {
        return Check::fail(
            "schema",
            format!("migration(s) {} differ from the ones applied, so migrate will refuse to run", list(changed)),
            "restore the migration files as they were released; never edit an applied migration",
        );
    }
    let unknown: Vec<i64> =
        applied.iter().map(|m| m.version).filter(|v| !embedded.iter().any(|(e, _)| e == v)).collect();
    if !unknown.is_empty() {
        return Check::warn(
            "schema",
            format!("the database has migration(s) {} that this pg-cached does not know", list(unknown)),
            "use a pg-cached built from the same cache-runtime version as the services",
        );
    }
    Check::ok("schema", format!("all {} migrations applied (version {})", embedded.len(), schema::latest()))
}

/// The indexes the migrations create are there and valid; none they dropped, and no stray ones on
/// `cache_entries` that every write would have to maintain.
pub async fn indexes(shard: &Shard) -> Result<Check, CliError> {
    Ok(index_verdict(&schema::indexes(shard).await?))
}

fn index_verdict(present: &[(String, String, bool)]) -> Check {
    if present.is_empty() {
        return Check::fail("indexes", "none: the cache's tables do not exist", "pg-cached migrate");
    }
    let has = |name: &str| present.iter().find(|(_, index, _)| index == name);
    let missing: Vec<_> = EXPECTED_INDEXES.iter().filter(|i| has(i.name).is_none()).collect();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|i| format!("{} on {}", i.name, i.table)).collect();
        let statements: Vec<&str> = missing.iter().map(|i| i.create).collect();
        return Check::fail(
            "indexes",
            format!("missing: {}", names.join(", ")),
            format!("pg-cached migrate; if the schema is up to date, recreate them: {}", statements.join("; ")),
        );
    }
    if let Some((_, name, _)) = present.iter().find(|(_, _, valid)| !valid) {
        return Check::fail("indexes", format!("{name} is invalid (a failed build)"), format!("REINDEX INDEX {name};"));
    }
    let known = |name: &str| EXPECTED_INDEXES.iter().any(|i| i.name == name) || OPTIONAL_INDEXES.contains(&name);
    let stray: Vec<&str> = present
        .iter()
        .filter(|(table, name, _)| table == "cache_entries" && !known(name))
        .map(|(_, name, _)| name.as_str())
        .collect();
    if !stray.is_empty() {
        let fix: Vec<String> = stray.iter().map(|name| format!("DROP INDEX {name};")).collect();
        let why = if stray.iter().all(|name| DROPPED_INDEXES.contains(name)) {
            "left from an old schema"
        } else {
            "not the cache's"
        };
        return Check::warn(
            "indexes",
            format!("{} on cache_entries {why}: every write maintains it, no cache lookup uses it", stray.join(", ")),
            format!("unless something else queries it: {}", fix.join(" ")),
        );
    }
    Check::ok("indexes", format!("all {} expected indexes present and valid", EXPECTED_INDEXES.len()))
}

/// Dead tuples are a small share of `cache_entries` (every overwrite and expiry leaves one).
pub async fn dead_tuples(shard: &Shard) -> Result<Check, CliError> {
    match stats::table(shard).await {
        Ok(table) => Ok(dead_verdict(table.live_tuples, table.dead_tuples, &units::when(table.last_autovacuum))),
        Err(CliError::NotMigrated { .. }) => {
            Ok(Check::warn("dead_tuples", "cannot measure: cache_entries does not exist", "pg-cached migrate"))
        }
        Err(error) => Err(error),
    }
}

fn dead_verdict(live: u64, dead: u64, last_autovacuum: &str) -> Check {
    let share = if live + dead == 0 { 0.0 } else { dead as f64 / (live + dead) as f64 };
    let message = format!(
        "{} dead of {} tuples ({:.1} %), last autovacuum {last_autovacuum}",
        units::count(dead),
        units::count(live + dead),
        share * 100.0
    );
    if share > DEAD_SHARE_WARN && dead >= DEAD_MIN_WARN {
        let fix = format!("VACUUM (ANALYZE) cache_entries; then vacuum it sooner: {AUTOVACUUM_FIX}");
        return Check::warn("dead_tuples", message, fix);
    }
    Check::ok("dead_tuples", message)
}

/// Autovacuum is on for `cache_entries`, and triggers early enough for a table that churns.
pub async fn autovacuum(shard: &Shard) -> Result<Check, CliError> {
    let (global, scale, reloptions): (String, f64, Option<Vec<String>>) =
        sqlx::query_as(sql::AUTOVACUUM).fetch_one(&shard.pool).await.map_err(shard.error())?;
    Ok(autovacuum_verdict(global == "on", scale, &reloptions.unwrap_or_default()))
}

/// The verdict from the global switch, the global scale factor and the table's own options (`key=value`).
fn autovacuum_verdict(global_on: bool, global_scale: f64, reloptions: &[String]) -> Check {
    let option = |key: &str| reloptions.iter().find_map(|o| o.strip_prefix(key)?.strip_prefix('='));
    let table_off = option("autovacuum_enabled").is_some_and(|v| matches!(v, "false" | "off" | "no" | "0"));
    if !global_on || table_off {
        let (where_, fix) = if table_off {
            ("for cache_entries", "ALTER TABLE cache_entries SET (autovacuum_enabled = true);")
        } else {
            ("on the server", "ALTER SYSTEM SET autovacuum = on; SELECT pg_reload_conf();")
        };
        // The cache keeps working (sweeps use indexes), but the table and its indexes only grow: a WARN.
        let message = format!("autovacuum is off {where_}: dead tuples from every overwrite and expiry pile up");
        return Check::warn("autovacuum", message, fix);
    }
    let (scale, source) = match option("autovacuum_vacuum_scale_factor").and_then(|v| v.parse::<f64>().ok()) {
        Some(scale) => (scale, "set on cache_entries"),
        None => (global_scale, "server default"),
    };
    let message = format!("autovacuum_vacuum_scale_factor {scale} ({source})");
    if scale > SCALE_FACTOR_WARN {
        let message = format!("{message}: vacuumed only once {:.0} % of the rows are dead", scale * 100.0);
        return Check::warn("autovacuum", message, AUTOVACUUM_FIX);
    }
    Check::ok("autovacuum", message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::doctor::Status;

    fn applied(version: i64, checksum: &[u8]) -> Applied {
        Applied { version, success: true, checksum: checksum.to_vec() }
    }

    #[test]
    fn schema_verdicts() {
        let embedded: Vec<(i64, &[u8])> = vec![(1, b"a"), (2, b"b")];
        assert_eq!(schema_verdict(&embedded, &[applied(1, b"a"), applied(2, b"b")]).status, Status::Ok);
        let missing = schema_verdict(&embedded, &[applied(1, b"a")]);
        assert_eq!((missing.status, missing.fix.as_deref()), (Status::Fail, Some("pg-cached migrate")));
        assert_eq!(schema_verdict(&embedded, &[]).status, Status::Fail);
        assert_eq!(schema_verdict(&embedded, &[applied(1, b"a"), applied(2, b"x")]).status, Status::Fail);
        let newer = schema_verdict(&embedded, &[applied(1, b"a"), applied(2, b"b"), applied(3, b"c")]);
        assert_eq!(newer.status, Status::Warn);
        let dirty = Applied { success: false, ..applied(2, b"b") };
        assert_eq!(schema_verdict(&embedded, &[applied(1, b"a"), dirty]).status, Status::Fail);
    }

    #[test]
    fn functions_verdicts() {
        let ours = cache_runtime::FUNCTIONS_VERSION;
        let ok = functions_verdict("all 6".into(), Some(ours));
        assert_eq!((ok.status, ok.message.as_str()), (Status::Ok, &*format!("all 6; SQL functions at version {ours}")));
        assert_eq!(functions_verdict("m".into(), Some(ours + 1)).status, Status::Warn);
        for behind in [None, Some(ours - 1)] {
            let verdict = functions_verdict("m".into(), behind);
            assert_eq!((verdict.status, verdict.fix.as_deref()), (Status::Fail, Some("pg-cached migrate")));
        }
    }

    #[test]
    fn index_verdicts() {
        let all: Vec<(String, String, bool)> =
            EXPECTED_INDEXES.iter().map(|i| (i.table.to_owned(), i.name.to_owned(), true)).collect();
        assert_eq!(index_verdict(&all).status, Status::Ok);
        assert_eq!(index_verdict(&all[1..]).status, Status::Fail);
        assert_eq!(index_verdict(&[]).fix.as_deref(), Some("pg-cached migrate"));
        let mut invalid = all.clone();
        invalid[1].2 = false;
        assert_eq!(index_verdict(&invalid).status, Status::Fail);
        let mut extra = all.clone();
        extra.push(("cache_entries".into(), "cache_entries_expires_at_idx".into(), true));
        assert_eq!(index_verdict(&extra).status, Status::Warn);
        let mut gin = all;
        gin.push(("cache_entries".into(), "cache_entries_data_gin_idx".into(), true));
        assert_eq!(index_verdict(&gin).status, Status::Ok);
    }

    #[test]
    fn vacuum_verdicts() {
        assert_eq!(dead_verdict(100, 5_000, "never").status, Status::Warn);
        assert_eq!(dead_verdict(100, 50, "never").status, Status::Ok, "a few dead rows in a small table are fine");
        assert_eq!(dead_verdict(0, 0, "never").status, Status::Ok);
        assert_eq!(autovacuum_verdict(true, 0.2, &[]).status, Status::Warn);
        let tuned = ["autovacuum_vacuum_scale_factor=0.01".to_owned()];
        assert_eq!(autovacuum_verdict(true, 0.2, &tuned).status, Status::Ok);
        assert_eq!(autovacuum_verdict(false, 0.01, &[]).status, Status::Warn);
        let off = autovacuum_verdict(true, 0.01, &["autovacuum_enabled=false".to_owned()]);
        assert_eq!(
            (off.status, off.fix.as_deref()),
            (Status::Warn, Some("ALTER TABLE cache_entries SET (autovacuum_enabled = true);"))
        );
    }
}
