//! `peerdelta cache gc` against real `get` processes: it never deletes what
//! a download in progress needs, and it counts (and cleans) everything the
//! cache holds.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use peerdelta_tests::library::{init_library, key_file, publish};
use peerdelta_tests::{DpServer, peerdelta, random_bytes, run_ok};

fn gc(lib: &Path, cache: &Path, max: &str) -> serde_json::Value {
    let out = run_ok(
        peerdelta([
            "cache",
            "gc",
            "--json",
            "--include-newest",
            "--max-size",
            max,
            "--cache",
        ])
        .arg(cache)
        .arg("--dp-key")
        .arg(key_file(lib)),
    );
    serde_json::from_str(&out).unwrap()
}

fn contents(cache: &Path) -> usize {
    fs::read_dir(cache.join("content"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|d| fs::read_dir(d.path()).ok())
                .map(|d| d.count())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn gc_during_a_download_keeps_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let lib = init_library(dir.path());
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("small.bin"), random_bytes(1, 300_000)).unwrap();
    fs::write(src.join("large.bin"), random_bytes(2, 12 << 20)).unwrap();
    publish(&lib, "app", &src);
    let dp = DpServer::start(&lib);
    let cache = dir.path().join("cache");
    // A slow download: the small file lands long before the large one.
    let get = peerdelta(["get", "--no-report", "--quiet", "--package", "app"])
        .args([
            "--dp",
            &dp.url(),
            "--max-rate",
            "3 MiB/s",
            "--concurrency",
            "1",
        ])
        .arg("--dp-key")
        .arg(key_file(&lib))
        .arg("--cache")
        .arg(&cache)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while contents(&cache) == 0 {
        assert!(Instant::now() < deadline, "nothing landed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Down to nothing, newest included: the version being downloaded stays.
    let r = gc(&lib, &cache, "0");
    assert_eq!(contents(&cache), 1, "{r:#}");
    let out = get.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the download failed after gc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_ok(
        peerdelta(["cache", "verify", "--cache"])
            .arg(&cache)
            .arg("--dp-key")
            .arg(key_file(&lib)),
    );
}

#[test]
fn gc_counts_and_cleans_temporary_partial_and_quarantined_data() {
    let dir = tempfile::tempdir().unwrap();
    let lib = init_library(dir.path());
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.bin"), random_bytes(3, 1 << 20)).unwrap();
    publish(&lib, "app", &src);
    let dp = DpServer::start(&lib);
    let cache = dir.path().join("cache");
    run_ok(
        peerdelta([
            "get",
            "--no-report",
            "--quiet",
            "--package",
            "app",
            "--dp",
            &dp.url(),
        ])
        .arg("--dp-key")
        .arg(key_file(&lib))
        .arg("--cache")
        .arg(&cache),
    );
    // Leftovers of a writer that died (pid 4194304 is above Linux's
    // pid_max), a quarantined content, a partial nobody downloads.
    let junk = random_bytes(4, 2 << 20);
    fs::write(cache.join("tmp/content.4194304.7"), &junk).unwrap();
    fs::write(cache.join("quarantine/abc.1"), &junk).unwrap();
    let partial = cache.join("partial").join("ab".repeat(32));
    fs::create_dir_all(&partial).unwrap();
    fs::write(partial.join("data"), &junk).unwrap();
    // Under no pressure: only the dead writer's file goes, but all count.
    let r = gc(&lib, &cache, "1 GiB");
    assert!(r["bytes_before"].as_u64().unwrap() >= 7 << 20, "{r:#}");
    assert!(r["tmp_removed_bytes"].as_u64().unwrap() >= 2 << 20, "{r:#}");
    assert_eq!(r["quarantine_removed_bytes"], 0);
    assert!(!cache.join("tmp/content.4194304.7").exists());
    // Over the limit: quarantine and the abandoned partial go before any
    // version; the version stays (it is the newest... and we ask for 3 MiB).
    let r = gc(&lib, &cache, "1500 KiB");
    assert!(
        r["quarantine_removed_bytes"].as_u64().unwrap() >= 2 << 20,
        "{r:#}"
    );
    assert!(
        r["partial_removed_bytes"].as_u64().unwrap() >= 2 << 20,
        "{r:#}"
    );
    assert!(r["evicted"].as_array().unwrap().is_empty(), "{r:#}");
    assert!(r["bytes_after"].as_u64().unwrap() <= 1500 << 10, "{r:#}");
}
