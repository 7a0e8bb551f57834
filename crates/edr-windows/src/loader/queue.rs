//! The bounded queue between the ETW consumer callbacks and the decoding threads.
//!
//! Limits: at most `max_records` records and at most `max_bytes` heap bytes are held. A push
//! never blocks, because a blocked ETW callback only moves the loss into ETW's buffers where it is
//! harder to attribute. A record that does not fit is dropped and counted in
//! [`QueueStats::overflows`], which the loader reports with the session losses.
//!
//! After [`RecordQueue::close`], pushes are rejected (and counted as `rejected_after_close`) and
//! poppers drain what is left, then see `None`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::record::CopiedRecord;

/// Counters of a [`RecordQueue`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Records accepted.
    pub pushed: u64,
    /// Records dropped because the queue was full (by count or by bytes).
    pub overflows: u64,
    /// Records dropped because they arrived after the queue was closed.
    pub rejected_after_close: u64,
    /// Records currently queued.
    pub depth: u64,
    /// Heap bytes currently queued.
    pub bytes: u64,
}

/// Why [`RecordQueue::try_push`] dropped a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushRejected {
    /// The record count or byte bound was reached.
    Full,
    /// The queue was closed for shutdown.
    Closed,
}

#[derive(Debug, Default)]
struct Inner {
    records: VecDeque<CopiedRecord>,
    bytes: usize,
    closed: bool,
}

/// A bounded multi-producer, multi-consumer queue of copied records.
#[derive(Debug)]
pub struct RecordQueue {
    max_records: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
    not_empty: Condvar,
    pushed: AtomicU64,
    overflows: AtomicU64,
    rejected_after_close: AtomicU64,
}

impl RecordQueue {
    /// Creates a queue holding at most `max_records` records and `max_bytes` heap bytes.
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        Self {
            max_records,
            max_bytes,
            inner: Mutex::new(Inner::default()),
            not_empty: Condvar::new(),
            pushed: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
            rejected_after_close: AtomicU64::new(0),
        }
    }

    /// Appends a record unless the queue is full or closed; never blocks on space.
    pub fn try_push(&self, record: CopiedRecord) -> Result<(), PushRejected> {
        let size = record.heap_size();
        let mut inner = self.lock();
        if inner.closed {
            self.rejected_after_close.fetch_add(1, Ordering::Relaxed);
            return Err(PushRejected::Closed);
        }
        if inner.records.len() >= self.max_records || inner.bytes + size > self.max_bytes {
            self.overflows.fetch_add(1, Ordering::Relaxed);
            return Err(PushRejected::Full);
        }
        inner.bytes += size;
        inner.records.push_back(record);
        drop(inner);
        self.pushed.fetch_add(1, Ordering::Relaxed);
        self.not_empty.notify_one();
        Ok(())
    }

    /// Removes the oldest record, waiting up to `timeout` for one. Returns `None` on timeout or
    /// when the queue is closed and empty.
    pub fn pop_timeout(&self, timeout: Duration) -> Option<CopiedRecord> {
        let inner = self.lock();
        let (mut inner, _) = self
            .not_empty
            .wait_timeout_while(inner, timeout, |inner| {
                inner.records.is_empty() && !inner.closed
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let record = inner.records.pop_front()?;
        inner.bytes -= record.heap_size();
        Some(record)
    }

    /// Removes every queued record and passes each to `f`, oldest first. Returns how many.
    pub fn drain(&self, mut f: impl FnMut(CopiedRecord)) -> usize {
        let records = {
            let mut inner = self.lock();
            inner.bytes = 0;
            std::mem::take(&mut inner.records)
        };
        let count = records.len();
        records.into_iter().for_each(&mut f);
        count
    }

    /// Rejects further pushes and wakes every waiting popper.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
    }

    /// Whether [`RecordQueue::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Returns the queue's counters.
    pub fn stats(&self) -> QueueStats {
        let (depth, bytes) = {
            let inner = self.lock();
            (inner.records.len() as u64, inner.bytes as u64)
        };
        QueueStats {
            pushed: self.pushed.load(Ordering::Relaxed),
            overflows: self.overflows.load(Ordering::Relaxed),
            rejected_after_close: self.rejected_after_close.load(Ordering::Relaxed),
            depth,
            bytes,
        }
    }

    /// The record-count bound.
    pub fn capacity(&self) -> usize {
        self.max_records
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` inconsistent: every critical
        // section updates `bytes` and `records` together without calling out.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::record::RecordHeader;

    fn record(payload_len: usize) -> CopiedRecord {
        CopiedRecord::copy_from(0, RecordHeader::default(), &[], &vec![0u8; payload_len])
    }

    #[test]
    fn overflow_by_count_is_counted() {
        let queue = RecordQueue::new(2, 1 << 20);
        assert_eq!(queue.try_push(record(8)), Ok(()));
        assert_eq!(queue.try_push(record(8)), Ok(()));
        assert_eq!(queue.try_push(record(8)), Err(PushRejected::Full));
        let stats = queue.stats();
        assert_eq!(stats.pushed, 2);
        assert_eq!(stats.overflows, 1);
        assert_eq!(stats.depth, 2);
    }

    #[test]
    fn overflow_by_bytes_is_counted() {
        let queue = RecordQueue::new(100, 1000);
        assert_eq!(queue.try_push(record(600)), Ok(()));
        assert_eq!(queue.try_push(record(600)), Err(PushRejected::Full));
        assert_eq!(queue.stats().overflows, 1);
        assert_eq!(queue.stats().bytes, 600);
    }

    #[test]
    fn pop_returns_oldest_and_frees_bytes() {
        let queue = RecordQueue::new(10, 1 << 20);
        queue.try_push(record(1)).unwrap();
        queue.try_push(record(2)).unwrap();
        let first = queue.pop_timeout(Duration::from_millis(1)).unwrap();
        assert_eq!(first.payload().len(), 1);
        assert_eq!(queue.stats().bytes, 2);
    }

    #[test]
    fn closed_queue_drains_then_ends() {
        let queue = RecordQueue::new(10, 1 << 20);
        queue.try_push(record(1)).unwrap();
        queue.close();
        assert_eq!(queue.try_push(record(1)), Err(PushRejected::Closed));
        assert!(queue.pop_timeout(Duration::from_secs(5)).is_some());
        assert!(queue.pop_timeout(Duration::from_secs(5)).is_none());
        assert_eq!(queue.stats().rejected_after_close, 1);
    }

    #[test]
    fn drain_empties_queue() {
        let queue = RecordQueue::new(10, 1 << 20);
        for _ in 0..3 {
            queue.try_push(record(4)).unwrap();
        }
        let mut seen = 0;
        assert_eq!(queue.drain(|_| seen += 1), 3);
        assert_eq!(seen, 3);
        assert_eq!(queue.stats().depth, 0);
        assert_eq!(queue.stats().bytes, 0);
    }
}
