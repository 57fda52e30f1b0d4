//! `peerdelta rdc sig` on a 2 GiB file stays under 64 MiB resident memory.
//!
//! The file is sparse with random regions, so creating it costs little disk.
//! Peak memory is read from the child's `/proc/<pid>/status` (VmHWM, a high
//! water mark) while it runs.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::process::Stdio;
use std::time::Duration;

use peerdelta_tests::{peerdelta, random_bytes};

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn sig_of_a_2_gib_file_stays_under_64_mib() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.img");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.set_len(2 << 30).unwrap();
    for k in 0..32u64 {
        f.seek(SeekFrom::Start(k * (64 << 20))).unwrap();
        f.write_all(&random_bytes(k, 1 << 20)).unwrap();
    }
    drop(f);
    let mut child = peerdelta(["rdc", "sig"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout).lines().count()
    });
    let pid = child.id();
    let mut peak = 0;
    loop {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().unwrap();
    let lines = reader.join().unwrap();
    assert!(status.success(), "rdc sig failed: {status}");
    assert!(lines > 32_000, "only {lines} chunks");
    assert!(peak > 0, "could not read the child's memory");
    assert!(peak < 64 * 1024, "peak resident memory {peak} KiB");
    eprintln!(
        "rdc sig of a 2 GiB file: peak resident memory {} KiB, {lines} chunks",
        peak
    );
}
