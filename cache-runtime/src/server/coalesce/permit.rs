//! The capacity of a queue, and the one type that changes it.
//!
//! A queue lets at most `max_batches` batches run at once (dispatcher tasks, and callers running their own
//! batch of one), and counts how many of them are dispatchers and the operations they carry. The counts
//! change only through a [`Permit`]: taken under the state lock, given back when it is dropped, whatever ends
//! its holder (the batch finished, its caller was cancelled, a task panicked, or a runtime shut down with the
//! task in it). A count that is never given back would leave the queue believing its batches still run:
//! after a few such leaks it would never dispatch again.

use super::waiting::Waiting;
use super::{Kind, Queue};
use std::sync::Arc;

/// The state behind a queue's lock.
pub(super) struct State<K: Kind> {
    pub(super) pending: Waiting<K>,
    /// Batches running: dispatcher tasks alive, and callers running their own batch of one.
    running: usize,
    /// Operations in the batches now running.
    carried: usize,
    /// Dispatcher tasks alive (the rest of `running` are callers running their own batch of one).
    dispatching: usize,
}

impl<K: Kind> State<K> {
    pub(super) fn new() -> Self {
        State { pending: Waiting::new(), running: 0, carried: 0, dispatching: 0 }
    }

    /// Gives back a slot taken by [`take_slot`](Self::take_slot) with the same `relay`.
    fn release_slot(&mut self, relay: bool) {
        self.running = self.running.saturating_sub(1);
        if !relay {
            self.dispatching = self.dispatching.saturating_sub(1);
        }
    }

    pub(super) fn running(&self) -> usize {
        self.running
    }

    #[cfg(test)]
    pub(super) fn carried(&self) -> usize {
        self.carried
    }

    pub(super) fn dispatching(&self) -> usize {
        self.dispatching
    }

    /// Takes a batch slot: a caller's own (`relay`) or a dispatcher's. `relay`: when the permit is given
    /// back with jobs still waiting, it starts dispatchers for them (for a caller's own batch: the callers
    /// that queued behind it would otherwise wait for the next submission). A dispatcher's permit does not
    /// relay: a dispatcher only ends on an empty queue, or abnormally (a panic, its runtime shutting down),
    /// and restarting one from there could spawn into a runtime that drops it at once, forever.
    pub(super) fn take_slot(&mut self, queue: &Arc<Queue<K>>, relay: bool) -> Permit<K> {
        self.running += 1;
        self.dispatching += usize::from(!relay);
        Permit { queue: Arc::clone(queue), slot: true, operations: 0, relay }
    }
}

/// One batch slot and the operations of the batch it runs; see the module docs.
pub(super) struct Permit<K: Kind> {
    queue: Arc<Queue<K>>,
    /// Whether it still holds its slot (false once given back under the lock by [`retire`](Self::retire)).
    slot: bool,
    /// The operations counted in `carried` for it.
    operations: usize,
    /// See [`State::take_slot`].
    relay: bool,
}

impl<K: Kind> Permit<K> {
    /// Counts `operations` more as carried by this permit's batch.
    pub(super) fn carry(&mut self, state: &mut State<K>, operations: usize) {
        state.carried += operations;
        self.operations += operations;
    }

    /// The batch is done: its operations are no longer carried (the slot stays, for the next batch).
    pub(super) fn unload(&mut self, state: &mut State<K>) {
        state.carried = state.carried.saturating_sub(std::mem::take(&mut self.operations));
    }

    /// Gives everything back under a lock its holder already has: a dispatcher that found the queue empty
    /// ends under the same lock that saw it empty, so no job can arrive in between and find no dispatcher.
    pub(super) fn retire(mut self, state: &mut State<K>) {
        self.unload(state);
        state.release_slot(self.relay);
        self.slot = false;
    }
}

impl<K: Kind> Drop for Permit<K> {
    fn drop(&mut self) {
        if !self.slot && self.operations == 0 {
            return;
        }
        let queue = Arc::clone(&self.queue);
        let dispatchers = {
            let mut state = queue.state();
            self.unload(&mut state);
            if std::mem::take(&mut self.slot) {
                state.release_slot(self.relay);
            }
            // Jobs that queued while this batch ran still need a dispatcher.
            let relay = self.relay && !state.pending.is_empty() && !std::thread::panicking();
            if relay {
                queue.dispatchers_wanted(&mut state)
            } else {
                Vec::new()
            }
        };
        // Spawned after the lock is released: a runtime that is shutting down drops a new task at once, and
        // its permit's drop takes the lock.
        queue.launch(dispatchers);
    }
}
