//! A publish killed midway (SIGKILL at several moments, and aborts at the
//! exact steps that matter) leaves the library consistent: earlier versions
//! intact, no partial version visible, and the next publish succeeds.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use peerdelta_tests::{peerdelta, random_bytes, run, run_ok};

fn tree(dir: &Path, seed: u64) {
    fs::create_dir_all(dir.join("parts")).unwrap();
    for i in 0..30u64 {
        fs::write(
            dir.join(format!("parts/p{i:02}.bin")),
            random_bytes(seed * 100 + i, 3 << 20),
        )
        .unwrap();
    }
    fs::write(
        dir.join("image.img"),
        random_bytes(seed * 100 + 99, 48 << 20),
    )
    .unwrap();
}

fn versions(lib: &Path) -> String {
    run_ok(peerdelta(["dp", "list", "--library"]).arg(lib))
}

fn contents(lib: &Path) -> usize {
    walk(&lib.join("content"))
}

fn walk(d: &Path) -> usize {
    fs::read_dir(d).map_or(0, |rd| {
        rd.filter_map(Result::ok)
            .map(|e| {
                if e.path().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

#[test]
fn sigkill_at_several_moments_leaves_the_library_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib");
    run_ok(peerdelta(["dp", "init", "--library"]).arg(&lib));
    let v1 = dir.path().join("v1");
    tree(&v1, 1);
    run_ok(
        peerdelta(["dp", "publish", "--quiet", "--package", "app", "--library"])
            .arg(&lib)
            .arg(&v1),
    );
    let before = versions(&lib);
    let v2 = dir.path().join("v2");
    tree(&v2, 2);
    let base = contents(&lib);
    let mut killed_midway = 0;
    // Kill when the publish has stored nothing, a few, and most new contents.
    for threshold in [0usize, 3, 20] {
        let mut child = peerdelta(["dp", "publish", "--quiet", "--package", "app", "--library"])
            .arg(&lib)
            .arg(&v2)
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            if contents(&lib) >= base + threshold || start.elapsed() > Duration::from_secs(60) {
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if threshold == 0 {
            std::thread::sleep(Duration::from_millis(150));
        }
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        let _ = child.wait();
        run_ok(peerdelta(["dp", "verify", "--full", "--library"]).arg(&lib));
        if !finished {
            killed_midway += 1;
            assert_eq!(
                versions(&lib),
                before,
                "killed at {threshold}: no new version is visible"
            );
            assert!(
                !lib.join("packages/app/2").exists(),
                "killed at {threshold}: no version directory"
            );
        }
    }
    assert!(
        killed_midway >= 2,
        "only {killed_midway} kills landed before the publish finished"
    );
    // The next publish succeeds and cleans up.
    let out = run_ok(
        peerdelta(["dp", "publish", "--package", "app", "--library"])
            .arg(&lib)
            .arg(&v2),
    );
    assert_eq!(out.trim(), "2");
    assert_eq!(
        fs::read_dir(dir.path().join("lib.private/tmp"))
            .unwrap()
            .count(),
        0
    );
    run_ok(peerdelta(["dp", "verify", "--full", "--library"]).arg(&lib));
}

#[test]
fn aborts_at_each_commit_step_never_leave_a_partial_version() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib");
    run_ok(peerdelta(["dp", "init", "--library"]).arg(&lib));
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.bin"), random_bytes(1, 1 << 20)).unwrap();
    run_ok(
        peerdelta(["dp", "publish", "--quiet", "--package", "app", "--library"])
            .arg(&lib)
            .arg(&src),
    );
    let mut expected = 1;
    for (k, point) in [
        "publish:mid-install",
        "publish:before-version-dir",
        "publish:after-version-dir",
        "publish:after-index",
    ]
    .iter()
    .enumerate()
    {
        fs::write(src.join("a.bin"), random_bytes(10 + k as u64, 1 << 20)).unwrap();
        let out = run(
            peerdelta(["dp", "publish", "--quiet", "--package", "app", "--library"])
                .arg(&lib)
                .arg(&src)
                .env("PEERDELTA_FAULT", point),
        );
        assert!(!out.status.success(), "{point}: the fault fired");
        run_ok(peerdelta(["dp", "verify", "--full", "--library"]).arg(&lib));
        // After the version directory exists the version is complete: the next
        // publish finds it and indexes it (recovery) rather than losing it.
        if *point == "publish:after-version-dir" || *point == "publish:after-index" {
            expected += 1;
        }
        let next: serde_json::Value = serde_json::from_str(&run_ok(
            peerdelta(["dp", "publish", "--json", "--package", "app", "--library"])
                .arg(&lib)
                .arg(&src),
        ))
        .unwrap();
        expected += 1;
        assert_eq!(next["version"], expected, "{point}");
        if *point == "publish:after-version-dir" {
            assert_eq!(
                next["recovered_versions"],
                serde_json::json!([expected - 1])
            );
        }
        run_ok(peerdelta(["dp", "verify", "--full", "--library"]).arg(&lib));
    }
}

#[test]
fn concurrent_publishes_are_serialised() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib");
    run_ok(peerdelta(["dp", "init", "--library"]).arg(&lib));
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    tree(&a, 3);
    fs::create_dir_all(&b).unwrap();
    fs::write(b.join("small"), b"small").unwrap();
    let first = peerdelta(["dp", "publish", "--quiet", "--package", "app", "--library"])
        .arg(&lib)
        .arg(&a)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let second = run_ok(
        peerdelta(["dp", "publish", "--quiet", "--package", "app", "--library"])
            .arg(&lib)
            .arg(&b),
    );
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success());
    let mut got = vec![second.trim().parse::<u64>().unwrap()];
    let listing = versions(&lib);
    assert!(
        listing.contains("v1") && listing.contains("v2"),
        "{listing}"
    );
    got.push(3 - got[0]);
    got.sort_unstable();
    assert_eq!(got, vec![1, 2]);
    run_ok(peerdelta(["dp", "verify", "--full", "--library"]).arg(&lib));
}
