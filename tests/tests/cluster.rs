//! Cluster-wide single-flight across separate OS processes (`flight_worker`), on one cold key.

use sqlx::PgPool;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn database_name(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT current_database()::text").fetch_one(pool).await.expect("database name")
}

fn worker(database: &str, tag: &str, callers: usize, body_ms: u64, lease_ms: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_flight_worker"))
        .args([database, tag, &callers.to_string(), &body_ms.to_string(), &lease_ms.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start flight_worker")
}

/// Every `RESULT` line a worker printed; fails if it did not exit cleanly.
async fn results(child: Child) -> Vec<String> {
    let output = child.wait_with_output().await.expect("worker output");
    assert!(output.status.success(), "worker failed: {:?}", output.status);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("RESULT ").map(str::to_owned))
        .collect()
}

async fn runs(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT tag FROM flight_runs ORDER BY id").fetch_all(pool).await.expect("runs")
}

async fn setup(pool: &PgPool) {
    sqlx::query("CREATE TABLE flight_runs (id serial PRIMARY KEY, tag text NOT NULL)")
        .execute(pool)
        .await
        .expect("table");
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn one_execution_across_processes(pool: PgPool) -> TestResult {
    setup(&pool).await;
    let database = database_name(&pool).await;
    let workers: Vec<Child> = (0..4).map(|i| worker(&database, &format!("p{i}"), 50, 1500, 10_000)).collect();
    let mut all = Vec::new();
    for child in workers {
        let got = results(child).await;
        assert_eq!(got.len(), 50);
        all.extend(got);
    }
    let runs = runs(&pool).await;
    assert_eq!(runs.len(), 1, "the body ran once across 4 processes x 50 callers: {runs:?}");
    let expected = format!("value-from-{}", runs[0]);
    assert!(all.iter().all(|v| *v == expected), "every caller got the one computed value");
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_leases").fetch_one(&pool).await?;
    assert_eq!(leases, 0, "the lease was released");
    Ok(())
}

#[sqlx::test(migrator = "cache_runtime::MIGRATOR", fixtures("../../migrations/functions.sql"))]
async fn a_killed_leader_blocks_nobody_past_its_lease(pool: PgPool) -> TestResult {
    setup(&pool).await;
    let database = database_name(&pool).await;
    let lease = Duration::from_millis(1500);
    // The leader would compute for a minute; it is killed long before.
    let mut leader = worker(&database, "leader", 1, 60_000, lease.as_millis() as u64);
    let started = Instant::now();
    while runs(&pool).await.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(30), "the leader never started its body");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut follower = worker(&database, "follower", 5, 200, lease.as_millis() as u64);
    let stdout = follower.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    assert_eq!(lines.next_line().await?.as_deref(), Some("READY"));
    tokio::time::sleep(Duration::from_millis(200)).await; // the follower is now waiting on the lease
    leader.start_kill()?; // SIGKILL: no chance to release the lease
    leader.wait().await?;
    let killed_at = Instant::now();
    let mut got = Vec::new();
    while let Some(line) = lines.next_line().await? {
        if let Some(value) = line.strip_prefix("RESULT ") {
            got.push(value.to_owned());
        }
    }
    let recovery = killed_at.elapsed();
    assert!(follower.wait().await?.success());
    assert_eq!(got, vec!["value-from-follower"; 5], "one follower computed after the lease lapsed");
    assert_eq!(runs(&pool).await, vec!["leader", "follower"], "exactly one take-over");
    // Liveness bound, not a benchmark: the lease (1.5 s) plus the body (0.2 s), with room for a slow machine.
    assert!(recovery < Duration::from_secs(10), "followers waited {recovery:?}");
    println!("leader-kill recovery: {recovery:?} (lease {lease:?}, body 200 ms)");
    Ok(())
}
