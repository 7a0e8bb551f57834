//! Errors of the ring buffer.

use std::io;
use std::path::PathBuf;

/// Why a ring buffer operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// [`super::BufferOptions`] are inconsistent, for example a segment larger than a quarter of
    /// the capacity. Raised by `Buffer::open` only.
    #[error("invalid buffer options: {reason}")]
    InvalidOptions {
        /// The inconsistent values and the allowed relation between them.
        reason: String,
    },

    /// The file system reported no space left, or a file-size limit was reached, while writing
    /// `path`. Nothing written before stays damaged: the partial write was cut off and the
    /// unwritten records are kept in memory for the next attempt. Retryable once space is freed.
    #[error(
        "no space left for the buffer while writing {path}: {source}; free disk space or lower buffer.capacity_bytes"
    )]
    DiskFull {
        /// The file being written.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A file-system call other than a full disk failed.
    #[error("failed to {operation} {path}: {source}")]
    Io {
        /// The call that failed, e.g. "write segment".
        operation: &'static str,
        /// The file or directory it was called on.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// An fsync failed. The kernel may have dropped the dirty pages, so which records reached the
    /// disk is unknown: every later call fails until the buffer is opened again, which rescans
    /// the segments.
    #[error(
        "buffer at {directory} stopped after a failed fsync: close it and open it again to rescan the segments"
    )]
    Poisoned {
        /// The buffer directory.
        directory: PathBuf,
    },

    /// A payload is larger than `max_record_bytes`.
    #[error(
        "record of {len} bytes exceeds the limit of {max} bytes: split the event or raise buffer.max_record_bytes"
    )]
    RecordTooLarge {
        /// The payload length.
        len: usize,
        /// The configured limit.
        max: usize,
    },

    /// Nothing is left to evict but the record still does not fit, which happens only with
    /// options built by hand whose capacity is below two segments.
    #[error(
        "buffer at {directory} cannot fit a record of {len} bytes even after evicting every closed segment: raise buffer.capacity_bytes"
    )]
    Full {
        /// The buffer directory.
        directory: PathBuf,
        /// The frame length of the record.
        len: usize,
    },

    /// An acknowledgement names a sequence number that was never made durable, so the Collector
    /// cannot have stored it.
    #[error(
        "acknowledged sequence number {acked} is beyond the highest durable sequence number {durable}: the Collector acknowledged records this buffer never sent"
    )]
    AckBeyondDurable {
        /// The acknowledged sequence number.
        acked: u64,
        /// The highest durable sequence number.
        durable: u64,
    },
}

impl BufferError {
    /// Tells whether the same call may succeed later without reopening the buffer.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::DiskFull { .. } | Self::Io { .. })
    }

    /// Builds [`BufferError::DiskFull`] for out-of-space errors and [`BufferError::Io`] for the
    /// rest.
    pub(crate) fn from_io(operation: &'static str, path: PathBuf, source: io::Error) -> Self {
        let full = matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::FileTooLarge | io::ErrorKind::QuotaExceeded
        );
        if full {
            Self::DiskFull { path, source }
        } else {
            Self::Io {
                operation,
                path,
                source,
            }
        }
    }
}
