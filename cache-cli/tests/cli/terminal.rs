//! The purge confirmation, answered at a real terminal: the binary runs under a pseudo-terminal (rexpect),
//! so stdin is a tty and it asks, as it does for a person.
//!
//! Every wait is bounded by one generous timeout and nothing is timed: a slow machine only makes it slower.

use crate::support::{with_tagged_entries, TestDb, BINARY};
use rexpect::process::WaitStatus;
use rexpect::session::{spawn_command, PtySession};
use std::process::Command;

/// How long any one expectation may wait (the binary starts, connects, counts, then asks).
const PATIENCE_MS: u64 = 60_000;

/// `pg-cached ARGS` under a pseudo-terminal, pointed at `db`.
fn at_a_terminal(db: &TestDb, args: &[&str]) -> PtySession {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("NO_COLOR", "1")
        .env("TERM", "dumb")
        .env_remove("CACHE_MAX_ENTRIES")
        .env_remove("RUST_LOG");
    spawn_command(command, Some(PATIENCE_MS)).expect("pg-cached starts under a pseudo-terminal")
}

/// Answers `question` with `answer`, and returns what the binary printed afterwards and its exit code.
fn answer(mut session: PtySession, question: &str, answer: &str) -> (String, i32) {
    session.exp_string(question).unwrap_or_else(|e| panic!("the question {question:?} is asked: {e}"));
    session.send_line(answer).expect("typing the answer");
    let rest = session.exp_eof().expect("pg-cached ends after the answer");
    match session.process().wait().expect("its exit status") {
        WaitStatus::Exited(_, code) => (rest, code),
        other => panic!("pg-cached did not exit normally: {other:?}; it printed {rest:?}"),
    }
}

#[test]
fn purge_asks_at_a_terminal_and_only_yes_deletes() {
    let db = with_tagged_entries();

    let asked = at_a_terminal(&db, &["purge", "--tag", "doc:1"]);
    let (said, code) = answer(asked, "Delete 2 entries tagged doc:1? [y/N]", "n");
    assert_eq!(code, 1, "not confirmed is an error: {said:?}");
    assert!(said.contains("error: not confirmed; nothing was deleted"), "{said:?}");
    assert_eq!(db.count("'doc:1' = ANY (tags)"), 2, "nothing was deleted");
    assert_eq!(db.scalar("SELECT count(*) FROM cache_tag_invalidations"), 0, "nor invalidated");

    let asked = at_a_terminal(&db, &["purge", "--tag", "doc:1"]);
    let (said, code) = answer(asked, "Delete 2 entries tagged doc:1? [y/N]", "y");
    assert_eq!(code, 0, "{said:?}");
    assert!(said.contains("deleted 2 entries tagged doc:1"), "{said:?}");
    assert_eq!(db.count("'doc:1' = ANY (tags)"), 0);
    assert_eq!(db.count("true"), 2, "entries without the tag stay");

    // The same question guards the other scopes; "yes" in full counts, whatever its case.
    let asked = at_a_terminal(&db, &["purge", "--namespace", "plain"]);
    let (said, code) = answer(asked, "Delete 1 entries in namespace plain? [y/N]", "YES");
    assert_eq!((code, db.count("cache_key LIKE 'plain:%'")), (0, 0), "{said:?}");
}
