//! The `edr-windows` binary's enroll, status and replay commands, without a Collector.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_edr-windows");

#[test]
fn status_without_identity_says_enroll() {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["status", "--state-dir"])
        .arg(root.path().join("state"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not enrolled"), "{stderr}");
    assert!(stderr.contains("edr-windows enroll"), "{stderr}");
}

#[test]
fn enroll_with_garbage_token_writes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let out = Command::new(BIN)
        .args([
            "enroll",
            "--collector",
            "https://127.0.0.1:9",
            "--token",
            "garbage",
            "--state-dir",
        ])
        .arg(&state)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("\"garbage\" is not an EDR token"),
        "{stderr}"
    );
    assert!(!state.exists());
}

#[test]
fn mistyped_token_fails_checksum_first() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let token = format!(
        "edr1.{}.{}.{}.00000000",
        "0".repeat(16),
        "0".repeat(64),
        "0".repeat(64)
    );
    let out = Command::new(BIN)
        .args([
            "enroll",
            "--collector",
            "http://127.0.0.1:9",
            "--token",
            &token,
            "--state-dir",
        ])
        .arg(&state)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // The check digits are wrong; the token is checked before the URL and the network.
    assert!(stderr.contains("checksum"), "{stderr}");
    assert!(!state.exists());
}

#[test]
fn replay_names_state_or_buffer_file() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("not-a-folder");
    std::fs::write(&file, "x").unwrap();
    for args in [
        vec!["--state-dir".into(), file.clone()],
        vec![
            "--state-dir".into(),
            root.path().join("state"),
            "--buffer-dir".into(),
            file.clone(),
        ],
    ] {
        let out = Command::new(BIN)
            .arg("replay")
            .args(&args)
            .arg(root.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains("is a file, not a folder"), "{stderr}");
        assert!(stderr.contains("not-a-folder"), "{stderr}");
    }
}
