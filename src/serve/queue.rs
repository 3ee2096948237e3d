//! Admission to a model: requests wait in its queue (bounded by `--max-queue`; a full
//! queue is a 429) until its worker takes them.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Queue {
    waiting: AtomicUsize,
    /// Sequences decoding (causal LMs) or tasks running.
    active: AtomicUsize,
    pub max: usize,
}

impl Queue {
    pub fn new(max: usize) -> Self {
        Self {
            waiting: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes a place in the queue, or refuses when it is full.
    pub fn enter(&self) -> bool {
        self.waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < self.max).then_some(w + 1)
            })
            .is_ok()
    }

    /// A waiting request was taken by the worker (or dropped).
    pub fn leave(&self) {
        let _ = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| w.checked_sub(1));
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    pub fn set_active(&self, n: usize) {
        self.active.store(n, Ordering::SeqCst);
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_until_one_leaves() {
        let q = Queue::new(2);
        assert!(q.enter() && q.enter());
        assert!(!q.enter());
        q.leave();
        assert!(q.enter());
        assert_eq!(q.waiting(), 2);
    }
}
