//! Early fsyncs of segment data on a background thread, so that a group commit after a burst
//! of appends finds most of the data already on disk.
//!
//! The appending thread sends a segment's path to the flush thread after every
//! [`FLUSH_AHEAD_BYTES`] written to it since the last group commit, and when it closes a
//! segment. The flush thread opens the segment and calls `sync_data` while appends go on.
//! Before, a group commit after 64 MiB of 200-byte appends waited about 40 ms for the disk, a
//! third of the append bench's time on a 2-core VM.
//!
//! An early fsync never makes a record durable by itself: `durable_seq` moves only after the
//! appending thread's own fsync of every written segment. The flush thread opens its own file
//! description, so on Linux a writeback error that it sees is still reported to the appending
//! thread's description, which was opened before the error. The first error it sees is also
//! kept for [`Flusher::take_error`], and the group commit fails on it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use super::platform;

/// Bytes written to a segment since the last group commit after which its data is fsynced
/// early on the flush thread.
pub(crate) const FLUSH_AHEAD_BYTES: u64 = 4 << 20;

/// The first failed early fsync: the segment path and the OS error.
type FlushError = Arc<Mutex<Option<(PathBuf, io::Error)>>>;

/// The flush thread and the channel to it. Dropping it lets the thread finish the queued
/// fsyncs and waits for it.
#[derive(Debug)]
pub(crate) struct Flusher {
    sender: Option<Sender<PathBuf>>,
    thread: Option<JoinHandle<()>>,
    error: FlushError,
}

impl Flusher {
    /// Starts the flush thread.
    pub(crate) fn start() -> io::Result<Self> {
        let (sender, receiver) = mpsc::channel();
        let error = FlushError::default();
        let thread_error = Arc::clone(&error);
        let thread = thread::Builder::new()
            .name("edr-buffer-flush".to_owned())
            .spawn(move || run(&receiver, &thread_error))?;
        Ok(Self {
            sender: Some(sender),
            thread: Some(thread),
            error,
        })
    }

    /// Queues an fsync of the segment at `path`.
    pub(crate) fn request(&self, path: &Path) {
        if let Some(sender) = &self.sender {
            // The thread ends only when the sender is dropped, so a send cannot fail while
            // `self` lives; a failure would only cost the early fsync.
            let _ = sender.send(path.to_owned());
        }
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
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("ring buffer flush thread panicked");
            }
        }
    }
}

/// Runs the flush thread until the sender is dropped.
fn run(receiver: &Receiver<PathBuf>, error: &FlushError) {
    while let Ok(first) = receiver.recv() {
        // Requests that queued up while the disk was busy are coalesced: one fsync per segment
        // covers every write before it.
        let mut batch = vec![first];
        batch.extend(receiver.try_iter());
        batch.dedup();

        for path in batch {
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
    use std::time::{Duration, Instant};

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

    /// `/dev/null` has no fsync, so `fdatasync` on it fails with `EINVAL`.
    #[cfg(target_os = "linux")]
    #[test]
    fn flusher_keeps_failed_fsync_until_taken() {
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
