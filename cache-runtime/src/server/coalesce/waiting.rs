//! The operations waiting for a batch: one FIFO per key, and the keys in the order their oldest waiting
//! operation arrived.
//!
//! A batch takes keys from the front. For kinds whose operations of one key may not share a statement
//! (writes, deletes), it takes one operation per key and puts the key back at the front for the next batch;
//! so many operations queued on one hot key cost O(1) each to form batches, and the operations of other keys
//! behind them still go in the next batch. (Keeping one queue and skipping the hot key's operations on every
//! batch cost O(n) per batch, O(n²) for n of them, under the queue's lock.)

use super::{Kind, Pending};
use std::collections::{HashMap, VecDeque};

pub(super) struct Waiting<K: Kind> {
    /// Keys with waiting operations, oldest first.
    order: VecDeque<String>,
    by_key: HashMap<String, VecDeque<Pending<K>>>,
    len: usize,
    /// Operations taken off a key's queue by [`take`](Self::take), for the tests of its cost.
    #[cfg(test)]
    pub(super) touched: usize,
}

impl<K: Kind> Waiting<K> {
    pub(super) fn new() -> Self {
        Waiting {
            order: VecDeque::new(),
            by_key: HashMap::new(),
            len: 0,
            #[cfg(test)]
            touched: 0,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Queues `pending` after everything waiting.
    pub(super) fn push_back(&mut self, pending: Pending<K>) {
        let key = K::key(&pending.job);
        match self.by_key.get_mut(key) {
            Some(jobs) => jobs.push_back(pending),
            None => {
                self.order.push_back(key.to_owned());
                self.by_key.insert(key.to_owned(), VecDeque::from([pending]));
            }
        }
        self.len += 1;
    }

    /// The next batch: at most `max` operations, and no more of `budget` than their `weight`s allow (the
    /// first is taken whatever its weight). Operations whose callers left are dropped on the way.
    pub(super) fn take(&mut self, max: usize, budget: usize, weight: impl Fn(&K::Job) -> usize) -> Vec<Pending<K>> {
        let mut batch: Vec<Pending<K>> = Vec::new();
        let mut used = 0usize;
        // Keys that keep operations waiting, to go back to the front in their order.
        let mut again = Vec::new();
        'keys: while batch.len() < max {
            let Some(key) = self.order.pop_front() else { break };
            let Some(jobs) = self.by_key.get_mut(&key) else { continue };
            loop {
                let Some(next) = jobs.pop_front() else { break };
                self.len -= 1;
                #[cfg(test)]
                {
                    self.touched += 1;
                }
                if next.reply.is_closed() {
                    continue;
                }
                let cost = weight(&next.job);
                if !batch.is_empty() && used.saturating_add(cost) > budget {
                    jobs.push_front(next);
                    self.len += 1;
                    again.push(key);
                    break 'keys;
                }
                used = used.saturating_add(cost);
                batch.push(next);
                if !K::SAME_KEY_SHARES || batch.len() == max {
                    break;
                }
            }
            if jobs.is_empty() {
                self.by_key.remove(&key);
            } else {
                again.push(key);
            }
        }
        for key in again.into_iter().rev() {
            self.order.push_front(key);
        }
        batch
    }
}
