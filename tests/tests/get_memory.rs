//! `peerdelta get` of a 2 GiB file, whole and then rebuilt from a needs
//! list, stays under 128 MiB resident memory.
//!
//! The file is mostly zeros with random regions, so the DP's packs are small
//! and the transfer is quick; the agent still writes, verifies and hashes
//! every one of the 2 GiB. Peak memory is the child's VmHWM.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use peerdelta_tests::library::{init_library, key_file, publish};
use peerdelta_tests::{DpServer, peerdelta, random_bytes};

const SIZE: u64 = 2 << 30;

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A 2 GiB file: zeros with 1 MiB random regions every 64 MiB; `edit` also
/// rewrites 64 KiB in every eighth region.
fn write_image(dir: &Path, edit: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(dir.join("disk.img"))
        .unwrap();
    f.set_len(SIZE).unwrap();
    for k in 0..32u64 {
        f.seek(SeekFrom::Start(k * (64 << 20))).unwrap();
        let mut region = random_bytes(k, 1 << 20);
        if edit && k % 8 == 3 {
            region[4096..4096 + (64 << 10)].copy_from_slice(&random_bytes(1000 + k, 64 << 10));
        }
        f.write_all(&region).unwrap();
    }
}

/// Runs `get` and returns its JSON summary and peak resident KiB.
fn get_peak(url: &str, lib: &Path, cache: &Path, version: u64) -> (serde_json::Value, u64) {
    let mut child = peerdelta([
        "get",
        "--no-report",
        "--json",
        "--package",
        "img",
        "--dp",
        url,
    ])
    .arg("--dp-key")
    .arg(key_file(lib))
    .arg("--cache")
    .arg(cache)
    .args(["--version", &version.to_string()])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    let pid = child.id();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "get v{version} failed");
    (serde_json::from_slice(&out.stdout).unwrap(), peak)
}

#[test]
fn get_of_a_2_gib_file_stays_under_128_mib() {
    let dir = tempfile::tempdir().unwrap();
    let lib = init_library(dir.path());
    for (k, edit) in [false, true].into_iter().enumerate() {
        let src = dir.path().join(format!("src{k}"));
        write_image(&src, edit);
        publish(&lib, "img", &src);
        std::fs::remove_dir_all(&src).unwrap();
    }
    let server = DpServer::start(&lib);
    let cache = dir.path().join("cache");
    let (whole, peak_whole) = get_peak(&server.url(), &lib, &cache, 1);
    assert_eq!(whole["whole_contents"], 1);
    let (delta, peak_delta) = get_peak(&server.url(), &lib, &cache, 2);
    assert_eq!(delta["delta_contents"], 1);
    assert!(delta["reused_bytes"].as_u64().unwrap() > SIZE - (1 << 20));
    eprintln!(
        "get of 2 GiB: whole {} B from the DP, peak {peak_whole} KiB; rebuild {} B from the DP, peak {peak_delta} KiB",
        whole["dp_bytes"], delta["dp_bytes"]
    );
    assert!(
        peak_whole > 0 && peak_delta > 0,
        "could not read the child's memory"
    );
    assert!(
        peak_whole < 128 * 1024,
        "whole download: peak {peak_whole} KiB"
    );
    assert!(peak_delta < 128 * 1024, "rebuild: peak {peak_delta} KiB");
}
