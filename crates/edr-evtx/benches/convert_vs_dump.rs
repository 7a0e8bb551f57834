//! Converting EVTX to OCSF JSON lines against dumping the same files to JSON lines.
//!
//! Both sides run on one thread over every EVTX file under `$EDR_DATA_DIR/evtx` (default
//! `<workspace>/../shared/data/evtx`) and write their lines into memory:
//! - `dump`: the `evtx` crate's own JSON-lines rendering, the code path of `evtx_dump -o jsonl`;
//! - `convert`: [`edr_evtx::convert_file`] and `serde_json` serialisation of every OCSF event.
//!
//! On Linux both sides allocate with mimalloc, as `edr-windows convert` does there.
//!
//! With `EVTX_DUMP=/path/to/evtx_dump`, the real `evtx_dump -t 1 -o jsonl` is also timed, one
//! process per file as a user would run it. `EDR_BENCH_ITERATIONS` sets the number of runs
//! (default 5); the best and median run of each side are printed with their ratio.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use evtx::{EvtxParser, ParserSettings};

/// The allocator of `edr-windows` on Linux (ADR 0011), which runs `convert`. Both sides use it.
#[cfg(not(windows))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("evtx"))
        {
            out.push(path);
        }
    }
}

fn dump(paths: &[PathBuf]) -> usize {
    let mut bytes = 0;
    for path in paths {
        let mut parser = EvtxParser::from_path(path)
            .unwrap()
            .with_configuration(ParserSettings::new().num_threads(1));
        for chunk in parser.chunks_json_bytes(false) {
            bytes += chunk.data.len();
            std::hint::black_box(&chunk.data);
        }
    }
    bytes
}

fn convert(paths: &[PathBuf]) -> usize {
    let mut bytes = 0;
    let mut buffer = Vec::with_capacity(1 << 20);
    for path in paths {
        edr_evtx::convert_file(path, |event| {
            serde_json::to_writer(&mut buffer, &event).unwrap();
            buffer.push(b'\n');
            if buffer.len() > 1 << 20 {
                bytes += buffer.len();
                std::hint::black_box(&buffer);
                buffer.clear();
            }
        })
        .unwrap();
    }
    bytes + buffer.len()
}

fn external_dump(binary: &Path, paths: &[PathBuf]) -> usize {
    for path in paths {
        let status = std::process::Command::new(binary)
            .args(["-t", "1", "-o", "jsonl"])
            .arg(path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        std::hint::black_box(status);
    }
    0
}

fn measure(name: &str, iterations: usize, mut run: impl FnMut() -> usize) -> (Duration, Duration) {
    let mut times = Vec::new();
    let mut output = 0;
    for _ in 0..iterations {
        let start = Instant::now();
        output = run();
        times.push(start.elapsed());
    }
    times.sort();
    let (best, median) = (times[0], times[times.len() / 2]);
    println!("{name:>14}: best {best:>10.2?}  median {median:>10.2?}  output {output} bytes");
    (best, median)
}

fn main() {
    let data = std::env::var_os("EDR_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        });
    let dir = data.join("evtx");
    if !dir.exists() {
        println!(
            "skipped: no EVTX data at {} (set EDR_DATA_DIR)",
            dir.display()
        );
        return;
    }
    let mut paths = Vec::new();
    files(&dir, &mut paths);
    paths.sort();
    let iterations: usize = std::env::var("EDR_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let input: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    println!(
        "{} EVTX files, {input} bytes, {iterations} runs, one thread",
        paths.len()
    );

    let (dump_best, dump_median) = measure("dump (jsonl)", iterations, || dump(&paths));
    let (convert_best, convert_median) = measure("convert (ocsf)", iterations, || convert(&paths));
    println!(
        "ratio convert/dump: best {:.2}  median {:.2}",
        convert_best.as_secs_f64() / dump_best.as_secs_f64(),
        convert_median.as_secs_f64() / dump_median.as_secs_f64()
    );
    if let Some(binary) = std::env::var_os("EVTX_DUMP") {
        let binary = PathBuf::from(binary);
        let (best, median) = measure("evtx_dump -t 1", iterations, || {
            external_dump(&binary, &paths)
        });
        println!(
            "ratio convert/evtx_dump process: best {:.2}  median {:.2}",
            convert_best.as_secs_f64() / best.as_secs_f64(),
            convert_median.as_secs_f64() / median.as_secs_f64()
        );
    }
}
