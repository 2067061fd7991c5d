//! Compile-pass and compile-fail tests of `#[pg_cached]`.
//!
//! Regenerate the expected compiler output with `TRYBUILD=overwrite cargo test -p ui-tests`, then read the
//! diff: every caret must sit under the tokens at fault.

#[test]
fn ui() {
    // The pass cases call memoized functions without `cache = ...`, which use the process-wide cache. Without
    // `DATABASE_URL` that cache is unavailable and the bodies simply run, so no case touches a database.
    std::env::remove_var("DATABASE_URL");
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
