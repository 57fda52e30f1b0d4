//! `peerdelta get --out DIR` never loses a file it did not write: real
//! `get` processes against a real DP, into directories holding the user's
//! own files, with crashes injected around the swap.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use peerdelta_tests::fixtures::{Tree, write_tree};
use peerdelta_tests::library::{
    assert_same_tree, init_library, key_file, publish, read_out_tree, read_tree,
};
use peerdelta_tests::{DpServer, peerdelta, run, run_code, run_ok};

/// Three versions of `app`: v2 changes a file, drops one, adds a
/// directory; v3 has a set-user-ID program.
fn series(dir: &Path) -> (PathBuf, Vec<Tree>) {
    let lib = init_library(dir);
    let file = |s: &str, mode: u32| (s.as_bytes().to_vec(), mode);
    let v1: Tree = [
        ("bin/".to_owned(), (Vec::new(), 0o755)),
        ("bin/tool".to_owned(), file("tool v1", 0o755)),
        ("readme.txt".to_owned(), file("hello", 0o644)),
        ("old.txt".to_owned(), file("goes away in v2", 0o644)),
    ]
    .into();
    let v2: Tree = [
        ("bin/".to_owned(), (Vec::new(), 0o755)),
        ("bin/tool".to_owned(), file("tool v2", 0o755)),
        ("readme.txt".to_owned(), file("hello", 0o644)),
        ("share/".to_owned(), (Vec::new(), 0o755)),
        ("share/data".to_owned(), file("new in v2", 0o644)),
    ]
    .into();
    let v3: Tree = [
        ("bin/".to_owned(), (Vec::new(), 0o755)),
        ("bin/tool".to_owned(), file("tool v3", 0o4755)),
        ("readme.txt".to_owned(), file("hello", 0o2644)),
    ]
    .into();
    for (k, t) in [&v1, &v2, &v3].into_iter().enumerate() {
        let src = dir.join(format!("src{}", k + 1));
        write_tree(&src, t);
        for (p, (_, mode)) in t.iter() {
            // write_tree may not set the special bits: set every mode here.
            fs::set_permissions(
                src.join(p.trim_end_matches('/')),
                fs::Permissions::from_mode(*mode),
            )
            .unwrap();
        }
        publish(&lib, "app", &src);
    }
    (lib, vec![v1, v2, v3])
}

fn get(dp: &DpServer, lib: &Path, cache: &Path, v: u64, out: &Path) -> Command {
    let mut c = peerdelta(["get", "--no-report", "--quiet", "--package", "app", "--dp"]);
    c.arg(dp.url())
        .arg("--dp-key")
        .arg(key_file(lib))
        .arg("--cache")
        .arg(cache)
        .args(["--version", &v.to_string(), "--out"])
        .arg(out);
    c
}

#[test]
fn a_directory_it_did_not_create_is_refused_and_kept_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (lib, trees) = series(dir.path());
    let dp = DpServer::start(&lib);
    let cache = dir.path().join("cache");
    let out = dir.path().join("opt");
    fs::create_dir_all(out.join("notes")).unwrap();
    fs::write(out.join("notes/keep.txt"), b"the user's own").unwrap();
    fs::write(out.join("readme.txt"), b"the user's readme").unwrap();
    let before = read_tree(&out);

    // Refused, naming the directory; nothing touched.
    let r = run_code(&mut get(&dp, &lib, &cache, 1, &out), 2);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains(&out.display().to_string()) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(read_tree(&out), before);

    // --force: a path of theirs where the version puts its own is still
    // never overwritten.
    let r = run_code(get(&dp, &lib, &cache, 1, &out).arg("--force"), 2);
    assert!(String::from_utf8_lossy(&r.stderr).contains("readme.txt"));
    assert_eq!(read_tree(&out), before);

    // Moved away, --force installs beside the user's other files.
    fs::remove_file(out.join("readme.txt")).unwrap();
    run_ok(get(&dp, &lib, &cache, 1, &out).arg("--force"));
    let mut want = trees[0].clone();
    want.insert("notes/".into(), (Vec::new(), 0o755));
    want.insert("notes/keep.txt".into(), (b"the user's own".to_vec(), 0o644));
    let got = read_out_tree(&out);
    assert_same_tree(&got, &want, "v1 beside the user's files");

    // The next version replaces only what peerdelta wrote: no --force needed
    // now, the user's file stays, v1's dropped file goes.
    run_ok(&mut get(&dp, &lib, &cache, 2, &out));
    let got = read_out_tree(&out);
    assert_eq!(got["notes/keep.txt"].0, b"the user's own");
    assert!(!got.contains_key("old.txt"));
    assert_eq!(got["share/data"].0, b"new in v2");
    // Nothing left beside it.
    let leftovers: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("peerdelta-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn files_added_or_changed_in_its_tree_are_kept_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (lib, trees) = series(dir.path());
    let dp = DpServer::start(&lib);
    let cache = dir.path().join("cache");
    let out = dir.path().join("app");
    run_ok(&mut get(&dp, &lib, &cache, 1, &out));
    assert_same_tree(&read_out_tree(&out), &trees[0], "v1");
    // The user adds a file inside peerdelta's tree, in a directory v2 keeps
    // and in one v2 drops, and edits a file peerdelta wrote.
    fs::write(out.join("bin/local.conf"), b"mine").unwrap();
    fs::write(out.join("readme.txt"), b"edited by hand").unwrap();
    let r = run_code(&mut get(&dp, &lib, &cache, 2, &out), 2);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("readme.txt") && err.contains("changed"),
        "{err}"
    );
    assert_eq!(fs::read(out.join("readme.txt")).unwrap(), b"edited by hand");
    // --force replaces the edited file (peerdelta's own) but keeps the added one.
    run_ok(get(&dp, &lib, &cache, 2, &out).arg("--force"));
    let got = read_out_tree(&out);
    assert_eq!(got["readme.txt"].0, b"hello");
    assert_eq!(got["bin/local.conf"].0, b"mine");
    assert_eq!(got["bin/tool"].0, b"tool v2");
}

#[test]
fn set_id_bits_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (lib, _) = series(dir.path());
    // The package does carry the bits (so their absence below means something).
    let (m3, _) = peerdelta_tests::library::library_manifest(&lib, "app", 3);
    let mode_of = |p: &str| {
        m3.entries
            .iter()
            .find(|e| e.path.as_str() == p)
            .unwrap()
            .mode
    };
    assert_eq!(mode_of("bin/tool"), 0o4755);
    assert_eq!(mode_of("readme.txt"), 0o2644);
    let dp = DpServer::start(&lib);
    let out = dir.path().join("app");
    run_ok(&mut get(&dp, &lib, &dir.path().join("cache"), 3, &out));
    let mode = |p: &str| fs::metadata(out.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("bin/tool"), 0o755);
    assert_eq!(mode("readme.txt"), 0o644);
    // With --link too (the cache's copy keeps no special bit either).
    let linked = dir.path().join("linked");
    run_ok(get(&dp, &lib, &dir.path().join("cache"), 3, &linked).arg("--link"));
    assert_eq!(
        fs::metadata(linked.join("bin/tool")).unwrap().mode() & 0o7000,
        0
    );
}

/// After a crash at `fault`, `out` is the whole old tree or the whole new
/// one, and the next run completes the update and leaves nothing behind.
fn crash_at(fault: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (lib, trees) = series(dir.path());
    let dp = DpServer::start(&lib);
    let cache = dir.path().join("cache");
    let out = dir.path().join("app");
    run_ok(&mut get(&dp, &lib, &cache, 1, &out));
    fs::create_dir_all(out.join("notes")).unwrap();
    fs::write(out.join("notes/keep.txt"), b"the user's own").unwrap();
    let r = run(get(&dp, &lib, &cache, 2, &out).env("PEERDELTA_FAULT", fault));
    assert!(!r.status.success(), "{fault}: the crash was not injected");
    let fallback = fault.contains("no-exchange");
    let now = if out.exists() {
        read_out_tree(&out)
    } else {
        // Only between the fallback's two renames: the old tree is aside.
        assert!(fallback, "{fault}: {} is gone", out.display());
        read_out_tree(&dir.path().join(".app.peerdelta-old"))
    };
    let mut v1 = trees[0].clone();
    let mut v2 = trees[1].clone();
    for t in [&mut v1, &mut v2] {
        t.insert("notes/".into(), (Vec::new(), 0o755));
        t.insert("notes/keep.txt".into(), (b"the user's own".to_vec(), 0o644));
    }
    assert!(now == v1 || now == v2, "{fault}: a mixed tree");
    run_ok(&mut get(&dp, &lib, &cache, 2, &out));
    assert_same_tree(&read_out_tree(&out), &v2, fault);
    let leftovers: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".app."))
        .collect();
    assert!(leftovers.is_empty(), "{fault}: {leftovers:?}");
}

#[test]
fn a_crash_before_the_swap_leaves_the_old_tree() {
    crash_at("materialize-before-swap");
}

#[test]
fn a_crash_after_the_swap_leaves_the_new_tree() {
    crash_at("materialize-after-swap");
}

#[test]
fn without_rename_exchange_a_crash_between_renames_is_recovered() {
    crash_at("materialize-no-exchange,materialize-between-renames");
}
