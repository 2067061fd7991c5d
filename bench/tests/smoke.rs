//! The self-check: every row of the suite for about 100 ms against the database of DATABASE_URL.

use bench::{is_benign_skip, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_runs_and_the_report_is_written() {
    let database_url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run the tests through scripts/test or scripts/with-postgres");
    let mut opts = Options::smoke(database_url);
    opts.redis_url = Some(std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()));
    let out = std::env::temp_dir().join(format!("pg_cached_bench_smoke_{}", std::process::id()));
    opts.out = Some(out.clone());
    opts.command = "cargo test -p bench".into();
    let outcome = bench::run(opts.clone()).await.expect("the suite runs");
    bench::report::write(&out, &opts, &outcome).expect("the report is written");

    for row in &outcome.rows {
        let what = format!(
            "{} / {} / {} clients / {}",
            row.case.group.name(),
            row.case.size.label(),
            row.case.clients,
            row.label
        );
        assert!(!row.failed(), "{what}: {} errors, {} timeouts: {:?}", row.errors, row.timeouts, row.first_error);
        match &row.skipped {
            Some(reason) => {
                assert!(is_benign_skip(reason), "{what} was skipped: {reason}");
                eprintln!("note: {what} skipped: {reason}");
            }
            None => assert!(row.ops > 0, "{what} measured nothing"),
        }
    }
    let expected_rows: usize = opts.groups.iter().map(|g| g.variants().len()).sum::<usize>() * 4;
    assert_eq!(outcome.rows.len(), expected_rows);
    assert!(!outcome.fingerprint.is_empty());

    let md = std::fs::read_to_string(out.join("BENCHMARKS.md")).expect("BENCHMARKS.md");
    assert!(md.contains("## Targets and ratios") && md.contains("END GENERATED"), "{md}");
    let svg = std::fs::read_to_string(out.join("bench/throughput.svg")).expect("throughput.svg");
    assert!(svg.starts_with("<svg") && svg.contains("<rect"), "{svg}");
    // A second write replaces the generated section instead of appending another one.
    bench::report::write(&out, &opts, &outcome).expect("the report is rewritten");
    let again = std::fs::read_to_string(out.join("BENCHMARKS.md")).expect("BENCHMARKS.md");
    assert_eq!(again.matches("<!-- END GENERATED -->").count(), 1);
    assert_eq!(again.matches("<!-- BEGIN GENERATED").count(), 1);
    std::fs::remove_dir_all(&out).ok();
}
