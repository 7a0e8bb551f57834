//! File-system calls of the ring buffer, with the Windows differences in one place.
//!
//! On Windows every file is opened with `FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE`
//! so that a segment can be deleted or renamed while a reader still holds it, and every call is
//! retried for up to about one second when it fails with a sharing or lock violation, which is
//! what an antivirus scanner or a backup agent that briefly opens the file causes. The default
//! directory is `%ProgramData%\edr\buffer`, restricted to SYSTEM and Administrators by a
//! [`DirectoryAcl`] hook.
//!
//! NOTE: the `cfg(windows)` code here is type-checked for `x86_64-pc-windows-msvc` but has never
//! run on Windows: the share mode, the retry on sharing violations, the directory fsync through
//! `FILE_FLAG_BACKUP_SEMANTICS`, `%ProgramData%` and the `icacls` call are untested there.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

/// Restricts who may read and write the buffer directory.
///
/// The buffer calls [`DirectoryAcl::restrict`] once after it creates or opens its directory.
/// `edr-sensor` forbids unsafe code, so a Win32 implementation (`SetNamedSecurityInfoW` with a
/// protected DACL) belongs in `edr-windows`, which passes it to [`super::Buffer::open_with_acl`].
pub trait DirectoryAcl: Send + Sync + std::fmt::Debug {
    /// Restricts `directory` and what it will contain to the service accounts.
    fn restrict(&self, directory: &Path) -> io::Result<()>;
}

/// The default [`DirectoryAcl`] of the platform.
///
/// On Unix it sets mode 0700 on the directory, so only its owner (root for the sensor service)
/// can enter it. On Windows it runs `icacls` to drop inherited entries and grant full control to
/// SYSTEM (`S-1-5-18`) and Administrators (`S-1-5-32-544`) only, with inheritance to the files
/// inside; SIDs are used because group names are localised.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultDirectoryAcl;

impl DirectoryAcl for DefaultDirectoryAcl {
    #[cfg(unix)]
    fn restrict(&self, directory: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(directory, fs::Permissions::from_mode(0o700))
    }

    #[cfg(windows)]
    fn restrict(&self, directory: &Path) -> io::Result<()> {
        windows::restrict_with_icacls(directory)
    }

    #[cfg(not(any(unix, windows)))]
    fn restrict(&self, _directory: &Path) -> io::Result<()> {
        Ok(())
    }
}

/// Returns the platform's default buffer directory, or why there is none.
pub fn default_directory() -> Result<PathBuf, String> {
    #[cfg(windows)]
    {
        windows::default_directory()
    }
    #[cfg(not(windows))]
    {
        Ok(PathBuf::from("/var/lib/edr-sensor/buffer"))
    }
}

/// Creates a new file for reading and writing; fails if it exists.
pub(crate) fn create_new(path: &Path) -> io::Result<File> {
    retry_transient(|| {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create_new(true);
        share_all(&mut options);
        options.open(path)
    })
}

/// Opens an existing file for reading and writing.
pub(crate) fn open_read_write(path: &Path) -> io::Result<File> {
    retry_transient(|| {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        share_all(&mut options);
        options.open(path)
    })
}

/// Opens an existing file for reading.
pub(crate) fn open_read(path: &Path) -> io::Result<File> {
    retry_transient(|| {
        let mut options = OpenOptions::new();
        options.read(true);
        share_all(&mut options);
        options.open(path)
    })
}

/// Creates or truncates a file for writing.
pub(crate) fn create_truncate(path: &Path) -> io::Result<File> {
    retry_transient(|| {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        share_all(&mut options);
        options.open(path)
    })
}

/// Reads a whole file.
pub(crate) fn read_all(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = open_read(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Deletes a file; a file that is already gone counts as deleted.
pub(crate) fn remove_file(path: &Path) -> io::Result<()> {
    match retry_transient(|| fs::remove_file(path)) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Renames `from` to `to`, replacing `to` if it exists.
pub(crate) fn rename_replace(from: &Path, to: &Path) -> io::Result<()> {
    retry_transient(|| fs::rename(from, to))
}

/// Creates a directory and its parents.
pub(crate) fn create_dir_all(path: &Path) -> io::Result<()> {
    retry_transient(|| fs::create_dir_all(path))
}

/// Makes the entries of a directory (created, renamed and deleted files) durable.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(windows)]
    {
        windows::sync_dir(path)
    }
    #[cfg(not(windows))]
    {
        retry_transient(|| File::open(path))?.sync_all()
    }
}

/// Runs `operation` again while it fails with a transient error, up to about one second in all.
///
/// Transient errors are the Windows sharing and lock violations; on other systems no error is
/// transient and the operation runs once.
pub(crate) fn retry_transient<T>(operation: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    retry_with(operation, is_transient, RETRY_DELAYS)
}

/// Waits between attempts: 10 + 20 + 40 + 80 + 160 + 320 + 400 ms, about one second in all.
const RETRY_DELAYS: &[Duration] = &[
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(40),
    Duration::from_millis(80),
    Duration::from_millis(160),
    Duration::from_millis(320),
    Duration::from_millis(400),
];

fn retry_with<T>(
    mut operation: impl FnMut() -> io::Result<T>,
    is_transient: impl Fn(&io::Error) -> bool,
    delays: &[Duration],
) -> io::Result<T> {
    let mut delays = delays.iter();
    loop {
        match operation() {
            Err(error) if is_transient(&error) => {
                let Some(delay) = delays.next() else {
                    return Err(error);
                };
                tracing::debug!(%error, ?delay, "file held by another process, retrying");
                thread::sleep(*delay);
            }
            other => return other,
        }
    }
}

fn is_transient(error: &io::Error) -> bool {
    #[cfg(windows)]
    {
        windows::is_sharing_violation(error)
    }
    #[cfg(not(windows))]
    {
        let _ = error;
        false
    }
}

fn share_all(options: &mut OpenOptions) {
    #[cfg(windows)]
    windows::share_all(options);
    #[cfg(not(windows))]
    let _ = options;
}

#[cfg(windows)]
mod windows {
    //! Windows file-system specifics, without unsafe code: `std`'s `OpenOptionsExt` sets the
    //! share mode and flags, and `icacls` sets the ACL.

    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::windows::fs::OpenOptionsExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const FILE_SHARE_READ: u32 = 0x1;
    const FILE_SHARE_WRITE: u32 = 0x2;
    const FILE_SHARE_DELETE: u32 = 0x4;
    const FILE_FLAG_BACKUP_SEMANTICS: u32 = 0x0200_0000;
    const ERROR_SHARING_VIOLATION: i32 = 32;
    const ERROR_LOCK_VIOLATION: i32 = 33;

    pub(super) fn share_all(options: &mut OpenOptions) {
        options.share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE);
    }

    pub(super) fn is_sharing_violation(error: &io::Error) -> bool {
        matches!(
            error.raw_os_error(),
            Some(ERROR_SHARING_VIOLATION | ERROR_LOCK_VIOLATION)
        )
    }

    /// Flushes a directory: Windows opens a directory only with `FILE_FLAG_BACKUP_SEMANTICS`,
    /// and `FlushFileBuffers` on it needs write access.
    pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
        let file = super::retry_transient(|| {
            let mut options = OpenOptions::new();
            options
                .read(true)
                .write(true)
                .custom_flags(FILE_FLAG_BACKUP_SEMANTICS);
            share_all(&mut options);
            options.open(path)
        })?;
        File::sync_all(&file)
    }

    pub(super) fn default_directory() -> Result<PathBuf, String> {
        let base = std::env::var_os("ProgramData")
            .ok_or_else(|| "the ProgramData environment variable is not set".to_owned())?;
        Ok(PathBuf::from(base).join("edr").join("buffer"))
    }

    pub(super) fn restrict_with_icacls(directory: &Path) -> io::Result<()> {
        let status = Command::new("icacls")
            .arg(directory)
            .args([
                "/inheritance:r",
                "/grant:r",
                "*S-1-5-18:(OI)(CI)F",
                "/grant:r",
                "*S-1-5-32-544:(OI)(CI)F",
            ])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "icacls on {} exited with {status}",
                directory.display()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn retry_stops_after_success() {
        let attempts = Cell::new(0);
        let result = retry_with(
            || {
                attempts.set(attempts.get() + 1);
                if attempts.get() < 3 {
                    Err(io::Error::from(io::ErrorKind::WouldBlock))
                } else {
                    Ok(7)
                }
            },
            |error| error.kind() == io::ErrorKind::WouldBlock,
            &[Duration::ZERO; 5],
        );
        assert_eq!(result.unwrap(), 7);
        assert_eq!(attempts.get(), 3);
    }

    #[test]
    fn retry_gives_up_after_last_delay() {
        let attempts = Cell::new(0);
        let result: io::Result<()> = retry_with(
            || {
                attempts.set(attempts.get() + 1);
                Err(io::Error::from(io::ErrorKind::WouldBlock))
            },
            |error| error.kind() == io::ErrorKind::WouldBlock,
            &[Duration::ZERO; 2],
        );
        assert!(result.is_err());
        assert_eq!(attempts.get(), 3);
    }

    #[test]
    fn retry_does_not_repeat_permanent_errors() {
        let attempts = Cell::new(0);
        let result: io::Result<()> = retry_with(
            || {
                attempts.set(attempts.get() + 1);
                Err(io::Error::from(io::ErrorKind::NotFound))
            },
            |error| error.kind() == io::ErrorKind::WouldBlock,
            &[Duration::ZERO; 2],
        );
        assert!(result.is_err());
        assert_eq!(attempts.get(), 1);
    }

    #[test]
    fn retry_delays_total_about_one_second() {
        let total: Duration = RETRY_DELAYS.iter().sum();
        assert!(total >= Duration::from_millis(900) && total <= Duration::from_millis(1100));
    }

    #[cfg(unix)]
    #[test]
    fn default_acl_makes_directory_private() {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::tempdir().unwrap();
        DefaultDirectoryAcl.restrict(directory.path()).unwrap();
        let mode = fs::metadata(directory.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
