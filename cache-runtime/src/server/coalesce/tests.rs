//! Batch formation and the capacity counts, without a server.

use super::*;
use crate::server::reads::{ReadJob, Reads};

/// A read queue over a pool that never connects: enough to form batches.
fn read_queue(max_keys: usize) -> Arc<Queue<Reads>> {
    read_queue_of(max_keys, 1)
}

fn read_queue_of(max_keys: usize, max_batches: usize) -> Arc<Queue<Reads>> {
    let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://nobody@127.0.0.1:9/none").unwrap();
    let limits = Limits { max_keys, max_batches, op_timeout: Duration::from_secs(1) };
    Queue::new(Reads, crate::server::warm::Warm::new(pool, max_batches), limits, "get")
}

/// What each queued caller will be answered.
type Answers<K> = Vec<oneshot::Receiver<Answer<<K as Kind>::Output>>>;

fn queued<K: Kind>(queue: &Arc<Queue<K>>, jobs: impl IntoIterator<Item = K::Job>) -> (Permit<K>, Answers<K>) {
    let mut state = queue.state();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answers = Vec::new();
    for job in jobs {
        let (reply, answer) = oneshot::channel();
        state.pending.push_back(Pending { job, reply, deadline });
        answers.push(answer);
    }
    (state.take_slot(queue, false), answers)
}

fn reads(keys: &[&str]) -> Vec<ReadJob> {
    keys.iter().map(|key| ReadJob::live(*key)).collect()
}

fn next_keys<K: Kind>(queue: &Queue<K>, permit: &mut Permit<K>) -> Vec<String> {
    let batch = queue.take_batch(permit).unwrap_or_default();
    permit.unload(&mut queue.state());
    batch.iter().map(|p| K::key(&p.job).to_owned()).collect()
}

/// A write of `key` carrying `tags` tags.
fn tagged(key: &str, tags: usize) -> crate::entry::Write {
    let mut write = crate::entry::Write::plain(key, "1".into(), None);
    write.meta.tags = (tags > 0).then(|| (0..tags).map(|i| format!("t{i}")).collect());
    write
}

#[tokio::test]
async fn a_batch_of_writes_stops_before_the_write_that_would_pass_its_tag_locks() {
    let queue = write_queue(100);
    let jobs = [tagged("a", 600), tagged("b", 400), tagged("c", 100), tagged("d", 0)];
    let (mut permit, _answers) = queued(&queue, jobs);
    assert_eq!(next_keys(&queue, &mut permit), ["a", "b"]);
    assert_eq!(next_keys(&queue, &mut permit), ["c", "d"]);
    assert!(queue.take_batch(&mut permit).is_none());
}

#[tokio::test]
async fn the_first_job_of_a_batch_is_taken_whatever_its_weight() {
    let queue = write_queue(100);
    let (mut permit, _answers) = queued(&queue, [tagged("big", 1_000), tagged("small", 100), tagged("other", 0)]);
    assert_eq!(next_keys(&queue, &mut permit), ["big"]);
    assert_eq!(next_keys(&queue, &mut permit), ["small", "other"]);
}

#[tokio::test]
async fn reads_fill_a_batch_up_to_its_key_cap() {
    let queue = read_queue(128);
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    let (mut permit, _answers) = queued(&queue, reads(&keys.iter().map(String::as_str).collect::<Vec<_>>()));
    assert_eq!(next_keys(&queue, &mut permit).len(), 128);
    assert_eq!(next_keys(&queue, &mut permit).len(), 128);
    assert_eq!(next_keys(&queue, &mut permit).len(), 44);
}

/// Batches running, operations carried, and dispatchers among the batches.
fn counts(queue: &Queue<Reads>) -> (usize, usize, usize) {
    let state = queue.state();
    (state.running(), state.carried(), state.dispatching())
}

#[tokio::test]
async fn permits_give_back_their_counts_however_they_end() {
    let queue = read_queue(8);
    let (mut permit, _answers) = queued(&queue, reads(&["a", "b"]));
    assert!(queue.take_batch(&mut permit).is_some());
    assert_eq!(counts(&queue), (1, 2, 1));
    drop(permit); // a dispatcher dropped mid-batch (its task cancelled, its runtime gone)
    assert_eq!(counts(&queue), (0, 0, 0));

    let mut state = queue.state();
    let mut permit = state.take_slot(&queue, false);
    permit.carry(&mut state, 3);
    permit.retire(&mut state); // a dispatcher that found the queue empty
    assert_eq!((state.running(), state.carried(), state.dispatching()), (0, 0, 0));
    drop(state);

    let mut state = queue.state();
    let mut own = state.take_slot(&queue, true); // a caller's own batch of one
    own.carry(&mut state, 1);
    drop(state);
    assert_eq!(counts(&queue), (1, 1, 0));
    drop(own);
    assert_eq!(counts(&queue), (0, 0, 0));
}

/// Dispatchers take at most half the slots (at least one) while that many can carry what waits in full
/// batches, all of them past that, and never a slot that a caller's own batch holds.
#[tokio::test]
async fn dispatchers_take_half_the_slots_unless_full_batches_wait_and_only_free_ones() {
    // (slots, callers' own batches, operations queued, dispatchers expected), batches of at most 8: one
    // dispatcher per batch's worth waiting, up to the cap.
    let cases = [
        (4, 0, 16, 2),
        (4, 0, 17, 3),
        (4, 0, 100, 4),
        (4, 3, 100, 1),
        (4, 4, 100, 0),
        (1, 0, 100, 1),
        (8, 2, 32, 4),
        (8, 2, 100, 6),
        (3, 0, 8, 1),
        (3, 0, 9, 2),
        (3, 0, 100, 3),
    ];
    for (max_batches, own_batches, queued_jobs, expected) in cases {
        let keys: Vec<String> = (0..queued_jobs).map(|i| format!("k{i}")).collect();
        let queue = read_queue_of(8, max_batches);
        let (first, _answers) = queued(&queue, reads(&keys.iter().map(String::as_str).collect::<Vec<_>>()));
        drop(first); // a dispatcher's permit: it starts nobody, and the jobs stay queued
        let mut state = queue.state();
        let own: Vec<_> = (0..own_batches).map(|_| state.take_slot(&queue, true)).collect();
        let more = queue.dispatchers_wanted(&mut state);
        let dispatching = state.dispatching();
        // Emptied, so that the callers' permits start no dispatcher when they go; and unlocked before any
        // assertion, since a failing one drops the permits, which take the lock.
        let _ = state.pending.take(usize::MAX, usize::MAX, |_| 0);
        drop(state);
        let case = format!("{max_batches} slots, {own_batches} callers' own batches, {queued_jobs} queued");
        assert_eq!((more.len(), dispatching), (expected, expected), "{case}");
        drop((own, more));
        assert_eq!(counts(&queue), (0, 0, 0));
    }
}

#[test]
fn a_permit_dropped_outside_any_runtime_gives_back_its_slot() {
    // The queue is built inside a runtime that is then shut down, with a dispatcher's permit still held.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (queue, permit) = runtime.block_on(async {
        let queue = read_queue(8);
        let permit = queue.state().take_slot(&queue, true);
        (queue, permit)
    });
    drop(runtime);
    drop(permit);
    assert_eq!(counts(&queue), (0, 0, 0));
}

/// A write queue over a pool that never connects.
fn write_queue(max_keys: usize) -> Arc<Queue<crate::server::writes::Writes>> {
    let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://nobody@127.0.0.1:9/none").unwrap();
    let limits = Limits { max_keys, max_batches: 1, op_timeout: Duration::from_secs(1) };
    let writes = crate::server::writes::Writes { sender: 1, lock_timeout: "100".into(), async_commit: true };
    Queue::new(writes, crate::server::warm::Warm::new(pool, 1), limits, "set")
}

/// Audit finding 10: writes queued on one hot key cost O(1) each to batch (they were skipped and put back
/// on every batch: O(n²) under the queue's lock), and the keys behind them are not held back.
#[tokio::test]
async fn a_hot_key_costs_each_batch_one_operation_and_holds_nobody_back() {
    let queue = write_queue(64);
    let mut answers = Vec::new();
    let mut state = queue.state();
    let deadline = Instant::now() + Duration::from_secs(60);
    let write = |key: &str| crate::entry::Write::plain(key, "1".into(), None);
    for i in 0..10_100 {
        let (reply, answer) = oneshot::channel();
        let key = if i % 101 == 100 { format!("cold{i}") } else { "hot".to_owned() };
        state.pending.push_back(Pending { job: write(&key), reply, deadline });
        answers.push(answer);
    }
    let mut permit = state.take_slot(&queue, false);
    drop(state);
    let mut batches = 0;
    while let Some(batch) = queue.take_batch(&mut permit) {
        batches += 1;
        assert_eq!(batch.iter().filter(|p| p.job.key == "hot").count(), 1, "one write of the hot key per batch");
        if batches == 1 {
            assert_eq!(batch.len(), 64, "the cold keys behind the hot ones go in the first batch");
        }
        permit.unload(&mut queue.state());
    }
    assert_eq!(batches, 10_000);
    let touched = queue.state().pending.touched;
    assert_eq!(touched, 10_100, "each write was taken off its queue once");
}
