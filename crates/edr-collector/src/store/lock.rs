//! The serve lock: at most one `edr-collector serve` per data directory.
//!
//! `serve` takes an exclusive advisory lock on `DATA_DIR/collector.lock` before it opens the
//! database, and holds it until the process exits. A second `serve` on the same directory
//! fails to take the lock and exits before it opens anything else. The other commands
//! (`events`, `export`, `token create`, `sensors revoke`, ...) never take the lock, so they run
//! while `serve` runs, as SQLite's WAL mode allows.
//!
//! The lock comes from [`std::fs::File::try_lock`], which calls `flock(LOCK_EX | LOCK_NB)` on
//! Linux and `LockFileEx` on Windows. Both release the lock when the last handle to the file
//! closes (see flock(2)), and the end of the process closes it, SIGKILL included. So a killed
//! `serve` leaves no lock that blocks the next start. No child process keeps
//! it alive, because std opens files with `O_CLOEXEC`. The file itself stays and is never
//! deleted, because deleting it would let a later `serve` lock a new file while an earlier one
//! still holds the deleted one. Only the lock counts, not whether the file exists.
//!
//! The holder writes its PID and a newline into the file, so that a rejected `serve` can name
//! the process it found. The PID in the file is that of the last `serve` that took the lock,
//! which may have exited since.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::Path;

use super::{DB_FILE, StoreError};

/// Lock file name inside the data directory.
pub(crate) const LOCK_FILE: &str = "collector.lock";

/// The exclusive lock of one data directory; released when dropped or when the process ends.
#[derive(Debug)]
pub(crate) struct ServeLock {
    /// Open lock file; the lock belongs to this open file description.
    _file: File,
}

impl ServeLock {
    /// Takes the serve lock of `data_dir` without waiting, and writes this process's PID into
    /// the lock file.
    ///
    /// Fails with [`StoreError::Missing`] or [`StoreError::Empty`] when `data_dir` has no
    /// database or an empty one, so that no lock file is left in a directory that `init` never
    /// set up, and with [`StoreError::Locked`] when another process holds the lock.
    pub(crate) fn acquire(data_dir: &Path) -> Result<Self, StoreError> {
        super::check_data_dir(data_dir)?;
        super::check_database(&data_dir.join(DB_FILE))?;
        let path = data_dir.join(LOCK_FILE);
        let failed = |action: &'static str| {
            let path = path.clone();
            move |source| StoreError::LockFile {
                path,
                action,
                source,
            }
        };

        // A symbolic link would make the truncation below empty another file.
        reject_symlink(&path).map_err(failed("open"))?;
        let mut file = open_or_create(&path)
            .map_err(|err| match err.kind() {
                std::io::ErrorKind::IsADirectory => std::io::Error::other(
                    "it is a directory: remove it, serve creates the lock file itself",
                ),
                std::io::ErrorKind::ReadOnlyFilesystem => std::io::Error::other(
                    "the file system is read-only: serve needs a writable data directory",
                ),
                _ => err,
            })
            .map_err(failed("open"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    data_dir: data_dir.to_path_buf(),
                    pid: read_pid(&path),
                });
            }
            Err(TryLockError::Error(source)) => return Err(failed("lock")(source)),
        }

        // The link check above and the open are two separate steps. This check, made while
        // the lock is held, closes the gap between them.
        let opened = file.metadata().map_err(failed("open"))?;
        if !same_file(
            &opened,
            &std::fs::symlink_metadata(&path).map_err(failed("open"))?,
        ) {
            return Err(failed("open")(std::io::Error::other(
                "it was replaced while it was opened; start serve again",
            )));
        }
        file.set_len(0).map_err(failed("write"))?;
        writeln!(file, "{}", std::process::id()).map_err(failed("write"))?;
        Ok(Self { _file: file })
    }
}

/// Opens the lock file, or creates it when it does not exist. Not truncated on open: until
/// this process has the lock, the file contains the PID of the holder. The file is created
/// only with `create_new`, which fails on a symbolic link instead of following it, so a link
/// put in its place never makes `serve` create the file the link points to.
fn open_or_create(path: &Path) -> std::io::Result<File> {
    let existing = || OpenOptions::new().read(true).write(true).open(path);
    match existing() {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
            {
                // Another process created it meanwhile.
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => existing(),
                created => created,
            }
        }
        opened => opened,
    }
}

/// Fails when `path` is a symbolic link.
fn reject_symlink(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(std::io::Error::other(
            "it is a symbolic link, which serve rejects: delete the link and start serve again",
        )),
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

/// Returns whether `opened` (of an open file) and `at_path` (of the path, not followed) describe the
/// same file. Only Unix exposes the inode, so elsewhere a link at the path is the only check.
fn same_file(opened: &std::fs::Metadata, at_path: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        opened.dev() == at_path.dev() && opened.ino() == at_path.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = opened;
        !at_path.file_type().is_symlink()
    }
}

/// Reads the PID that the holder wrote into the lock file. Returns `None` when the file cannot
/// be read or is still empty, because the holder has not written its PID yet.
fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        drop(super::super::Store::create(dir.path()).unwrap());

        let first = ServeLock::acquire(dir.path()).unwrap();
        let contents = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(contents, format!("{}\n", std::process::id()));

        // flock locks belong to an open file description, so a second open in the same
        // process conflicts as a second process would.
        let err = ServeLock::acquire(dir.path()).unwrap_err();
        match &err {
            StoreError::Locked { data_dir, pid } => {
                assert_eq!(data_dir, dir.path());
                assert_eq!(*pid, Some(std::process::id()));
            }
            other => panic!("expected Locked, got {other}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(&format!("PID {}", std::process::id())),
            "{message}"
        );
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );

        drop(first);
        assert!(ServeLock::acquire(dir.path()).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_lock_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        drop(super::super::Store::create(dir.path()).unwrap());
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(LOCK_FILE)).unwrap();

        let err = ServeLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

        // A link to a file that does not exist creates nothing either.
        std::fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
        let missing = dir.path().join("missing.txt");
        std::os::unix::fs::symlink(&missing, dir.path().join(LOCK_FILE)).unwrap();
        assert!(ServeLock::acquire(dir.path()).is_err());
        assert!(!missing.exists());
    }

    #[test]
    fn lock_needs_an_initialised_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let err = ServeLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Missing { .. }), "{err}");
        assert!(!dir.path().join(LOCK_FILE).exists());
    }

    #[test]
    fn stale_pid_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        drop(super::super::Store::create(dir.path()).unwrap());
        // A longer PID left by a process that has exited: the new one replaces it whole.
        std::fs::write(dir.path().join(LOCK_FILE), "4000000000\n").unwrap();

        let _lock = ServeLock::acquire(dir.path()).unwrap();
        let contents = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(contents, format!("{}\n", std::process::id()));
    }
}
