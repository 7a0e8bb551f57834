//! Helpers shared by the tests that run a real `edr-collector serve` on loopback: building the
//! binary, starting and stopping it, and running its CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SENSOR: &str = env!("CARGO_BIN_EXE_edr-windows");

pub fn data_dir() -> PathBuf {
    std::env::var_os("EDR_DATA_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
        PathBuf::from,
    )
}

/// Builds `edr-collector` and returns its path.
///
/// The build uses its own target directory under this test's one: building one package
/// unifies features differently from the workspace build, and sharing the directory would
/// make the two builds overwrite each other's artifacts every time.
pub fn collector_binary() -> PathBuf {
    let profile_dir = Path::new(SENSOR).parent().unwrap();
    let release = profile_dir
        .file_name()
        .is_some_and(|name| name == "release");
    let target_dir = profile_dir
        .parent()
        .unwrap()
        .join("edr-collector-for-tests");
    let mut build = Command::new(env!("CARGO"));
    build.args([
        "build",
        "-p",
        "edr-collector",
        "--bin",
        "edr-collector",
        "--target-dir",
    ]);
    build.arg(&target_dir);
    if release {
        build.arg("--release");
    }
    let status = build
        .status()
        .expect("cannot run cargo to build edr-collector");
    assert!(status.success(), "building edr-collector failed");
    target_dir
        .join(if release { "release" } else { "debug" })
        .join("edr-collector")
}

/// A running `edr-collector serve`; killed on drop.
pub struct Collector {
    child: Child,
    pub addr: String,
}

impl Collector {
    pub fn start(binary: &Path, data_dir: &Path, listen: &str) -> Self {
        Self::start_with(binary, data_dir, listen, &[])
    }

    /// Starts `serve` with `extra` arguments and waits for its start-up line.
    pub fn start_with(binary: &Path, data_dir: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(binary)
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", listen])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(pos) = line.find("listen_addr=") {
                    let addr: String = line[pos + "listen_addr=".len()..]
                        .chars()
                        .take_while(|c| !c.is_whitespace())
                        .collect();
                    let _ = tx.send(addr);
                }
                eprintln!("[collector] {line}");
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the Collector did not log its listen address");
        Self { child, addr }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `binary` with `args` and fails the test unless it succeeds.
pub fn run(binary: &Path, args: &[&str]) -> Output {
    let output = Command::new(binary).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{binary:?} {args:?} failed: {output:?}"
    );
    output
}

/// Runs an `edr-collector` command against `data_dir` and returns its standard output.
pub fn collector_cli(binary: &Path, data_dir: &Path, args: &[&str]) -> String {
    let mut full = args.to_vec();
    full.extend(["--data-dir", data_dir.to_str().unwrap()]);
    String::from_utf8(run(binary, &full).stdout).unwrap()
}

pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < timeout, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
