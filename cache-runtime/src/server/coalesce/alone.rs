//! Jobs sent again alone: a batch that found one of a job's locks held by someone else (a transaction that
//! invalidates a tag until it commits, any role holding the lock) answered it [`Outcome::Blocked`] and wrote
//! the others. The job then runs as a statement of its own that waits for its locks, bounded by what is left
//! of its caller's deadline, in a task of its own: the dispatcher that ran the batch goes on with the queue.
//!
//! Each such statement holds a pooled connection while it waits, so they take turns: at most half the
//! queue's batch slots' worth run at once (at least one), and the others wait for a turn within their own
//! deadlines. Many jobs stuck behind one long-held lock thus cannot take every connection from the
//! operations that need none of it.

use super::{statement, Answer, Kind, Locking, Outcome, Pending, Queue};
use crate::server::exec::{self, Failure};
use std::sync::Arc;
use tokio::time::{timeout_at, Instant};

/// How many blocked jobs of one queue may wait for their locks at once, for `max_batches` batch slots.
pub(super) fn turns(max_batches: usize) -> usize {
    (max_batches / 2).max(1)
}

impl<K: Kind> Queue<K> {
    /// Runs `pending` again alone, in a task of its own, and sends its caller the answer.
    pub(super) fn send_alone(self: &Arc<Self>, pending: Pending<K>) {
        let queue = Arc::clone(self);
        let Pending { job, reply, deadline } = pending;
        tokio::spawn(async move {
            if reply.is_closed() {
                return; // its caller left: nobody wants the statement
            }
            let answer = queue.run_blocked(&job, deadline).await;
            let _ = reply.send(answer);
        });
    }

    async fn run_blocked(&self, job: &K::Job, deadline: Instant) -> Answer<K::Output> {
        let _turn = match timeout_at(deadline, self.alone.acquire()).await {
            Ok(Ok(turn)) => turn,
            // Past the deadline, or the semaphore closed (never: it is not closed).
            _ => return Err(Failure::Deadline),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Deadline);
        }
        let work = statement::<K>(self.kind.params(std::slice::from_ref(job), Locking::Wait(left)));
        let outputs = exec::attempt_holding(self.pool(), &mut None, deadline, left, &work, None).await?;
        match outputs.into_iter().next() {
            Some(Outcome::Done(output)) => Ok(output),
            _ => {
                let missing = sqlx::Error::Protocol("a statement that waits for its locks gave no answer".into());
                Err(Failure::Db(Arc::new(missing)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn blocked_jobs_always_get_a_turn_and_never_all_the_slots() {
        assert_eq!(super::turns(1), 1);
        assert_eq!(super::turns(4), 2);
        assert_eq!(super::turns(9), 4);
    }
}
