//! Byte budgets between stages: how many bytes of one kind (fetched bytes, decoded pixels) may be held in
//! the pipeline at once, whatever the number of images that takes.
//!
//! Queues bounded by items alone bound memory only when every item has the same size; a shard of 6000×4000
//! JPEGs holds a hundred times the bytes of a shard of thumbnails in the same number of chunks. A stage
//! takes a [`Permit`] for a chunk's bytes before handing the chunk on, and the permit travels with the
//! chunk until the writer has written it, when dropping it returns the bytes.
//!
//! A chunk larger than the whole budget still goes, alone: it waits until nothing else holds bytes, so the
//! pipeline never deadlocks on one large image. Stages take permits in input order (fetch and decode are
//! single, ordered loops), so a chunk the writer holds back for re-ordering never waits for one behind it.

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};

/// Cut items of the given sizes into consecutive runs of at most `max_items` items and, unless one item
/// alone is larger, at most `max_bytes` bytes. Returns each run's range.
pub(super) fn cut(sizes: &[u64], max_items: usize, max_bytes: u64) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        if i > start && (i - start >= max_items.max(1) || bytes + size > max_bytes) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// A budget of bytes shared by the stages of one shard.
#[derive(Debug)]
pub(super) struct ByteBudget {
    capacity: u64,
    held: Mutex<u64>,
    released: Condvar,
}

impl ByteBudget {
    pub(super) fn new(capacity: u64) -> Arc<Self> {
        Arc::new(Self { capacity: capacity.max(1), held: Mutex::new(0), released: Condvar::new() })
    }

    /// Take `bytes` from the budget, waiting while that would exceed it (unless nothing is held).
    pub(super) fn acquire(self: &Arc<Self>, bytes: u64) -> Permit {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while *held > 0 && *held + bytes > self.capacity {
            held = self.released.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        *held += bytes;
        Permit { budget: Some(self.clone()), bytes }
    }

    /// The most bytes held at once (but for one chunk larger than that, held alone).
    pub(super) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held now.
    #[cfg(test)]
    fn held(&self) -> u64 {
        *self.held.lock().unwrap()
    }
}

/// Bytes taken from a [`ByteBudget`], returned when dropped.
#[derive(Debug)]
pub(super) struct Permit {
    budget: Option<Arc<ByteBudget>>,
    bytes: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(budget) = self.budget.take() {
            let mut held = budget.held.lock().unwrap_or_else(|p| p.into_inner());
            *held -= self.bytes;
            budget.released.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn runs_are_cut_by_items_and_by_bytes() {
        assert_eq!(cut(&[1; 5], 2, 100), vec![0..2, 2..4, 4..5]);
        assert_eq!(cut(&[40, 40, 40, 10, 10], 10, 100), vec![0..2, 2..5]);
        // One item larger than the byte limit is a run of its own.
        assert_eq!(cut(&[10, 500, 10], 10, 100), vec![0..1, 1..2, 2..3]);
        assert_eq!(cut(&[], 10, 100), Vec::<Range<usize>>::new());
    }

    #[test]
    fn permits_return_their_bytes_when_dropped() {
        let budget = ByteBudget::new(100);
        let a = budget.acquire(60);
        let b = budget.acquire(40);
        assert_eq!(budget.held(), 100);
        drop(a);
        assert_eq!(budget.held(), 40);
        drop(b);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_chunk_over_budget_waits_until_bytes_are_returned() {
        let budget = ByteBudget::new(100);
        let first = budget.acquire(80);
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let budget = budget.clone();
            std::thread::spawn(move || {
                let p = budget.acquire(30);
                tx.send(()).unwrap();
                p
            })
        };
        // The waiter cannot proceed while 80 of 100 bytes are held.
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        drop(first);
        rx.recv_timeout(Duration::from_secs(10)).expect("released bytes wake the waiter");
        let second = waiter.join().unwrap();
        assert_eq!(budget.held(), 30);
        drop(second);
    }

    #[test]
    fn one_chunk_larger_than_the_whole_budget_goes_alone() {
        let budget = ByteBudget::new(100);
        let big = budget.acquire(500);
        assert_eq!(budget.held(), 500);
        drop(big);
        let small = budget.acquire(10);
        assert_eq!(budget.held(), 10);
        drop(small);
    }
}
