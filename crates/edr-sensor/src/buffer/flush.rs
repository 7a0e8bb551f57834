//! Early fsyncs of segment data on a background thread, so that a group commit after a burst
//! of appends finds most of the data already on disk.
//!
//! After every [`FLUSH_AHEAD_BYTES`] written to a lane within one group commit, the appending
//! thread sends the paths of the lane's segments written in that span to the flush thread, which
//! opens each and calls `sync_data` while appends go on. Requests still queued when a group
//! commit completes are dropped, because that commit fsynced the same bytes.
//!
//! Without it, a group commit after 64 MiB of 200-byte appends waited about 43 ms for the disk,
//! a third of the append bench's time on a 2-core VM.
//!
//! An early fsync never makes a record durable by itself: `durable_seq` moves only after the
//! appending thread's own fsync of every written segment. The flush thread opens its own file
//! description. Linux (4.13 and later) returns a writeback error once to every description that
//! was open when it happened, so the appending thread's fsync still fails on an error that the
//! flush thread's fsync returned. The first such error is also kept for [`Flusher::take_error`],
//! and the group commit fails on it on every platform.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use super::platform;

/// Bytes written to a lane since the last group commit or early fsync request after which the
/// segments written are fsynced early on the flush thread.
pub(crate) const FLUSH_AHEAD_BYTES: u64 = 4 << 20;

/// The first failed early fsync: the segment path and the OS error.
type FlushError = Arc<Mutex<Option<(PathBuf, io::Error)>>>;

/// A segment to fsync and the number of group commits completed when it was requested.
type FlushRequest = (PathBuf, u64);

/// The flush thread and the channel to it. Dropping it lets the thread finish the queued
/// fsyncs and waits for it.
#[derive(Debug)]
pub(crate) struct Flusher {
    sender: Option<Sender<FlushRequest>>,
    thread: Option<JoinHandle<()>>,
    error: FlushError,
    /// Group commits completed, so that the thread can skip requests made before the last one.
    commits: Arc<AtomicU64>,
}

impl Flusher {
    /// Starts the flush thread.
    pub(crate) fn start() -> io::Result<Self> {
        let (sender, receiver) = mpsc::channel();
        let error = FlushError::default();
        let commits = Arc::new(AtomicU64::new(0));
        let thread_error = Arc::clone(&error);
        let thread_commits = Arc::clone(&commits);
        let thread = thread::Builder::new()
            .name("edr-buffer-flush".to_owned())
            .spawn(move || run(&receiver, &thread_error, &thread_commits))?;
        Ok(Self {
            sender: Some(sender),
            thread: Some(thread),
            error,
            commits,
        })
    }

    /// Queues an fsync of the segment at `path`.
    pub(crate) fn request(&self, path: &Path) {
        if let Some(sender) = &self.sender {
            // The thread ends only when the sender is dropped or when it panics. A failed send
            // costs only the early fsync.
            let _ = sender.send((path.to_owned(), self.commits.load(Ordering::Relaxed)));
        }
    }

    /// Records that a group commit fsynced everything written so far, which makes the queued
    /// requests redundant.
    pub(crate) fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns and clears the first early fsync error since the last call.
    pub(crate) fn take_error(&self) -> Option<(PathBuf, io::Error)> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("ring buffer flush thread panicked");
        }
    }
}

/// Runs the flush thread until the sender is dropped.
fn run(receiver: &Receiver<FlushRequest>, error: &FlushError, commits: &AtomicU64) {
    while let Ok(first) = receiver.recv() {
        // Requests that queued up while the disk was busy are coalesced: one fsync per segment
        // covers every write before it.
        let mut batch = vec![first];
        batch.extend(receiver.try_iter());
        batch.dedup_by(|later, earlier| later.0 == earlier.0);

        for (path, requested_at) in batch {
            if requested_at < commits.load(Ordering::Relaxed) {
                continue;
            }
            // A segment acknowledged or evicted in the meantime is gone, and any other failure
            // to open only costs the early fsync: the group commit fsyncs the segment anyway.
            let file = match platform::open_read_write(&path) {
                Ok(file) => file,
                Err(open_error) => {
                    tracing::debug!(error = %open_error, path = %path.display(), "segment not opened for an early fsync");
                    continue;
                }
            };
            if let Err(sync_error) = file.sync_data() {
                tracing::error!(error = %sync_error, path = %path.display(), "early fsync of segment failed");
                let mut slot = error.lock().unwrap_or_else(PoisonError::into_inner);
                slot.get_or_insert((path, sync_error));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;

    #[test]
    fn flusher_skips_missing_segments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"record bytes").unwrap();

        let flusher = Flusher::start().unwrap();
        for _ in 0..3 {
            flusher.request(&path);
        }
        flusher.request(&dir.path().join("deleted segment"));
        drop(file);
        // Dropping the flusher waits for every queued request.
        let error = Arc::clone(&flusher.error);
        drop(flusher);
        let error = error.lock().unwrap().take();
        assert!(error.is_none(), "{error:?}");
        assert_eq!(std::fs::read(&path).unwrap(), b"record bytes");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn flusher_skips_requests_before_last_commit() {
        let path = Path::new("/dev/null");
        let flusher = Flusher::start().unwrap();
        flusher.committed();
        // The request is stamped with one commit, so it is not skipped and fails on /dev/null.
        flusher.request(path);
        let error = Arc::clone(&flusher.error);
        drop(flusher);
        assert!(error.lock().unwrap().take().is_some());

        // A request stamped before the last commit is skipped, so /dev/null is never fsynced.
        let flusher = Flusher::start().unwrap();
        flusher.committed();
        let sender = flusher.sender.as_ref().unwrap();
        sender.send((path.to_owned(), 0)).unwrap();
        let error = Arc::clone(&flusher.error);
        drop(flusher);
        assert!(error.lock().unwrap().take().is_none());
    }

    /// `/dev/null` has no fsync, so `fdatasync` on it fails with `EINVAL`.
    #[cfg(target_os = "linux")]
    #[test]
    fn flusher_keeps_failed_fsync_until_taken() {
        use std::time::{Duration, Instant};

        let path = Path::new("/dev/null");
        let flusher = Flusher::start().unwrap();
        flusher.request(path);

        let deadline = Instant::now() + Duration::from_secs(10);
        let (failed_path, error) = loop {
            if let Some(failure) = flusher.take_error() {
                break failure;
            }
            assert!(Instant::now() < deadline, "no error after 10 s");
            thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(failed_path, path);
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(flusher.take_error().is_none());
    }
}
