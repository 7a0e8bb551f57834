//! A full file system: the buffer reports a clear error and leaves no damage behind.
//!
//! The test mounts a 2 MiB tmpfs (it needs root and a kernel that allows mounts here). Without
//! it, the same scenario runs in a child process whose file-size limit (`ulimit -f`, with
//! SIGXFSZ ignored) makes writes past 1 MiB fail with EFBIG; `EDR_BUFFER_DISK_FULL_NO_MOUNT`
//! selects that fallback on purpose.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use edr_sensor::buffer::{Buffer, BufferError, BufferOptions, Lane, RecordKind};

use super::{drain_all, payload_for};

const CHILD_ENV: &str = "EDR_BUFFER_FSIZE_CHILD";

fn full_options(directory: &Path) -> BufferOptions {
    BufferOptions {
        directory: directory.to_owned(),
        // Far more than the file system holds, so the disk fills before eviction starts.
        capacity_bytes: 64 << 20,
        segment_bytes: 4 << 20,
        sync_interval: Duration::from_secs(1),
        max_record_bytes: 4096,
        drain_rate_bytes_per_sec: None,
        drain_rate_records_per_sec: None,
    }
}

/// Appends 1 KiB records with a sync every 16 until a call fails; returns the highest durable
/// number and the error.
fn fill(directory: &Path) -> (u64, BufferError) {
    let mut buffer = Buffer::open(full_options(directory)).unwrap();
    let mut durable = 0;
    for index in 1..100_000u64 {
        if let Err(error) = buffer.append(Lane::Telemetry, &payload_for(index, 1024)) {
            return (durable, error);
        }
        if index % 16 == 0 {
            match buffer.sync() {
                Ok(seq) => durable = seq,
                Err(error) => return (durable, error),
            }
        }
    }
    panic!("the file system never filled");
}

/// Reopens the buffer and checks that records 1 to `durable` are intact and nothing is damaged.
fn check_after_full(directory: &Path, durable: u64) {
    let mut buffer = Buffer::open(full_options(directory)).unwrap();
    let drained = drain_all(&mut buffer);
    assert!(
        drained.len() as u64 >= durable,
        "{} records, {durable} durable",
        drained.len()
    );
    for (index, record) in drained.iter().enumerate() {
        assert_eq!(record.seq, index as u64 + 1);
        match &record.kind {
            RecordKind::Event(payload) => assert_eq!(payload, &payload_for(record.seq, 1024)),
            RecordKind::Gap(gap) => panic!("unexpected gap {gap:?}"),
        }
    }
    assert_eq!(buffer.metrics().damaged_records_skipped, 0);
}

fn assert_clear_error(error: &BufferError) {
    assert!(matches!(error, BufferError::DiskFull { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with("no space left for the buffer while writing"),
        "{message}"
    );
    assert!(
        message.contains("free disk space or lower buffer.capacity_bytes"),
        "{message}"
    );
}

#[test]
fn full_disk_gives_clear_error_and_no_damage() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let mount = tempfile::tempdir().unwrap();
    let skip_mount = std::env::var_os("EDR_BUFFER_DISK_FULL_NO_MOUNT").is_some();
    let mounted = !skip_mount
        && Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(mount.path())
            .status()
            .is_ok_and(|status| status.success());
    if !mounted {
        println!("mounting a tmpfs failed; falling back to a file-size limit in a child process");
        run_with_file_size_limit();
        return;
    }

    let directory = mount.path().join("buffer");
    let (durable, error) = fill(&directory);
    assert_clear_error(&error);
    assert!(durable > 0);
    check_after_full(&directory, durable);

    let unmounted = Command::new("umount").arg(mount.path()).status().unwrap();
    assert!(unmounted.success());
}

/// Fills the buffer in a child process limited to 1 MiB per file, then checks it here.
fn run_with_file_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // `ulimit -f` counts 1024-byte blocks; an ignored SIGXFSZ stays ignored across exec, so the
    // write fails with EFBIG instead of killing the child.
    let output = Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f 1024; exec "$0" disk_full::fill_child --exact --nocapture --test-threads=1"#)
        .arg(&exe)
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed: {stdout}");
    let durable: u64 = stdout
        .lines()
        // The test harness prints the test name on the same line.
        .find_map(|line| line.split("durable ").nth(1))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .expect("child reported no durable number");
    check_after_full(dir.path(), durable);
}

#[test]
fn fill_child() {
    let Some(directory) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let (durable, error) = fill(Path::new(&directory));
    assert_clear_error(&error);
    println!("durable {durable}");
}
