//! The distribution point end to end: `peerdelta dp init/publish/serve/list/
//! status/verify/prune` as real processes, and the library served by
//! `dp serve` (and by nginx, in `dp_nginx.rs`) rebuilding every changed file.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use peerdelta_protocol::manifest::{EntryKind, Manifest, RelPath, open_index, open_manifest};
use peerdelta_protocol::{ContentHash, layout};
use peerdelta_tests::fixtures::{rebuild_over_http, versions, write_tree};
use peerdelta_tests::library::{
    init_library, library_key, library_manifest, publish, published_series,
};
use peerdelta_tests::{DpServer, get, http, peerdelta, run_code, run_ok};

fn key(lib: &Path) -> ed25519_dalek::VerifyingKey {
    library_key(lib)
}

fn manifest(lib: &Path, v: u64) -> Manifest {
    library_manifest(lib, "app", v).0
}

#[test]
fn six_versions_publish_verify_and_rebuild_from_each_of_the_previous_four() {
    let s = published_series();
    run_ok(peerdelta(["dp", "verify", "--full", "--library"]).arg(&s.lib));
    let index = open_index(
        &fs::read(s.lib.join("packages/app/index")).unwrap(),
        &key(&s.lib),
    )
    .unwrap();
    assert_eq!(
        index.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    let server = DpServer::start(&s.lib);
    let mut rebuilt = 0;
    let mut moved_with_changes = 0;
    for (k, tree) in s.trees.iter().enumerate() {
        let v = (k + 1) as u64;
        let m = manifest(&s.lib, v);
        // The manifest describes the tree exactly: paths, modes, sizes, hashes, directories.
        let listed: Vec<(String, u32)> = m
            .entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::Dir => (format!("{}/", e.path), e.mode),
                EntryKind::File(_) => (e.path.to_string(), e.mode),
            })
            .collect();
        let expected: Vec<(String, u32)> = tree
            .iter()
            .map(|(p, (_, mode))| (p.clone(), *mode))
            .collect();
        assert_eq!(listed, expected, "version {v}");
        for (e, f) in m.files() {
            let content = &tree[e.path.as_str()].0;
            assert_eq!(f.size, content.len() as u64);
            assert_eq!(f.hash, ContentHash::of(content));
        }
        // Every changed file rebuilds from each of the previous four versions.
        for old_v in v.saturating_sub(4).max(1)..v {
            let old_tree = &s.trees[(old_v - 1) as usize];
            let held: std::collections::HashSet<ContentHash> = old_tree
                .values()
                .filter(|(c, _)| !c.is_empty())
                .map(|(c, _)| ContentHash::of(c))
                .collect();
            for (e, f) in m.files() {
                if held.contains(&f.hash) || f.size < 100_000 {
                    continue; // unchanged (maybe moved), or too small for a needs list
                }
                let n = f
                    .needs
                    .iter()
                    .find(|n| n.base_versions.contains(&old_v))
                    .unwrap_or_else(|| panic!("v{v} {} has no needs list from v{old_v}", e.path));
                let base = old_tree
                    .values()
                    .find(|(c, _)| ContentHash::of(c) == n.base)
                    .map(|(c, _)| c.clone())
                    .expect("the base is a file of the old version");
                if !old_tree.contains_key(e.path.as_str()) {
                    moved_with_changes += 1;
                }
                let out = rebuild_over_http(&server.addr, &base, &f.hash, n);
                assert!(
                    out == tree[e.path.as_str()].0,
                    "v{v} {} from v{old_v}",
                    e.path
                );
                assert!(
                    n.origin_bytes < f.size / 4,
                    "v{v} {}: {} of {} bytes from the origin",
                    e.path,
                    n.origin_bytes,
                    f.size
                );
                rebuilt += 1;
            }
        }
    }
    assert!(rebuilt >= 20, "only {rebuilt} rebuilds");
    assert!(
        moved_with_changes >= 1,
        "the file moved with changes used its old content"
    );

    // dp list: per-version costs from the previous versions are far below a full download.
    let list: serde_json::Value = serde_json::from_str(&run_ok(
        peerdelta(["dp", "list", "--json", "--library"]).arg(&s.lib),
    ))
    .unwrap();
    let versions = list[0]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 6);
    let v6 = &versions[5];
    let from = v6["from_previous"].as_array().unwrap();
    assert_eq!(
        from.iter()
            .map(|d| d["from"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![5, 4, 3, 2]
    );
    for d in from {
        assert!(
            d["bytes"].as_u64().unwrap() < v6["bytes"].as_u64().unwrap() / 10,
            "{d}"
        );
    }
    let text = run_ok(
        peerdelta(["dp", "list", "--library"])
            .arg(&s.lib)
            .args(["--package", "app"]),
    );
    assert!(text.contains("from v5:"), "{text}");
}

#[test]
fn republishing_identical_content_only_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let lib = init_library(dir.path());
    let src = dir.path().join("src");
    write_tree(&src, &versions()[0]);
    let first = publish(&lib, "app", &src);
    assert!(first["new_contents"].as_u64().unwrap() > 0);
    let again = publish(&lib, "app", &src);
    assert_eq!(again["version"], 2);
    assert_eq!(again["new_contents"], 0);
    assert_eq!(again["new_content_bytes"], 0);
    assert_eq!(again["needs_lists_written"], 0);
    // Renamed and duplicated files add no content either.
    fs::rename(src.join("big.bin"), src.join("docs/big-renamed.bin")).unwrap();
    fs::write(
        src.join("copy-of-main.c"),
        fs::read(src.join("src/main.c")).unwrap(),
    )
    .unwrap();
    let moved = publish(&lib, "app", &src);
    assert_eq!(moved["new_contents"], 0);
    // A second package shares contents with the first.
    let other = publish(&lib, "other", &src);
    assert_eq!(other["version"], 1);
    assert_eq!(other["new_contents"], 0);
}

#[test]
fn large_files_are_recognised_by_runs_or_copied_once_and_zeros_stay_holes() {
    // Large files (32 MiB and more) are not hashed before they are stored:
    // one of a size a recent version holds is compared with those contents
    // run by run, one of another size is copied and named by the copy.
    use std::os::unix::fs::MetadataExt;
    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let lib = init_library(dir.path());
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let counts = |s: &serde_json::Value| {
        [
            "new_contents",
            "hashed_bytes",
            "compared_bytes",
            "copied_bytes",
        ]
        .map(|k| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}")) as usize)
    };
    let file_hash = |v: u64, name: &str| {
        let (m, _) = library_manifest(&lib, "img", v);
        m.file(&RelPath::new(name).unwrap()).unwrap().hash
    };
    // A disk image: data, 31 MiB of zeros, data.
    let mut image = peerdelta_tests::random_bytes(1, MIB);
    image.resize(32 * MIB, 0);
    image.extend(peerdelta_tests::random_bytes(2, MIB));
    let size = image.len();
    let image_hash = ContentHash::of(&image);
    fs::write(src.join("disk.img"), &image).unwrap();
    // New: copied, hashed by the copy alone.
    assert_eq!(counts(&publish(&lib, "img", &src)), [1, 0, 0, size]);
    // Its zeros are holes in the library.
    let stored = fs::metadata(lib.join(layout::content(&image_hash))).unwrap();
    assert_eq!(stored.len(), size as u64);
    assert!(
        stored.blocks() * 512 < 8 * MIB as u64,
        "{} blocks",
        stored.blocks()
    );

    // Unchanged, then renamed: every run compared, nothing copied.
    assert_eq!(counts(&publish(&lib, "img", &src)), [0, 0, size, 0]);
    fs::rename(src.join("disk.img"), src.join("renamed.img")).unwrap();
    let renamed = publish(&lib, "img", &src);
    assert_eq!(counts(&renamed), [0, 0, size, 0]);
    assert_eq!(renamed["needs_lists_written"], 0);
    assert_eq!(file_hash(3, "renamed.img"), image_hash);

    // One byte changed in the last MiB (the same size): every run compared,
    // then copied; changed in the first, the comparison stops there.
    let mut changed = image.clone();
    changed[size - 10] ^= 0x55;
    fs::write(src.join("renamed.img"), &changed).unwrap();
    let s = publish(&lib, "img", &src);
    assert_eq!(counts(&s), [1, 0, size, size]);
    assert!(s["needs_lists_written"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(file_hash(4, "renamed.img"), ContentHash::of(&changed));
    let mut early = image.clone();
    early[5] ^= 0x55;
    fs::write(src.join("renamed.img"), &early).unwrap();
    let [new, hashed, compared, copied] = counts(&publish(&lib, "img", &src));
    assert_eq!([new, hashed, copied], [1, 0, size]);
    assert!(compared < size / 2, "{compared} bytes compared");
    assert_eq!(file_hash(5, "renamed.img"), ContentHash::of(&early));

    // Sizes no recent version holds: copied first. After four of them the
    // first image is outside the needs lists' window but within the 16
    // versions a publish looks back at (for far needs lists and bundles):
    // published again it is recognised by its runs, nothing copied.
    for k in 1..=4 {
        let mut grown = changed.clone();
        grown.extend(peerdelta_tests::random_bytes(10 + k, 4096 * k as usize));
        fs::write(src.join("renamed.img"), &grown).unwrap();
        assert_eq!(counts(&publish(&lib, "img", &src)), [1, 0, 0, grown.len()]);
        assert_eq!(file_hash(5 + k, "renamed.img"), ContentHash::of(&grown));
    }
    fs::write(src.join("renamed.img"), &image).unwrap();
    assert_eq!(counts(&publish(&lib, "img", &src)), [0, 0, size, 0]);
    assert_eq!(file_hash(10, "renamed.img"), image_hash);

    // Two files of one new size are hashed first, so that one copy stores
    // their content.
    let mut twin = changed.clone();
    twin.extend(peerdelta_tests::random_bytes(20, 3 * MIB));
    fs::write(src.join("a.img"), &twin).unwrap();
    fs::write(src.join("b.img"), &twin).unwrap();
    assert_eq!(
        counts(&publish(&lib, "img", &src)),
        [1, 2 * twin.len(), size, twin.len()]
    );
    assert_eq!(file_hash(11, "b.img"), ContentHash::of(&twin));

    // Without the runs of a recent content of its size, a file is hashed.
    let pieces = lib.join(layout::needs(&ContentHash::EMPTY, &image_hash));
    let aside = dir.path().join("pieces-aside");
    fs::rename(&pieces, &aside).unwrap();
    let s = publish(&lib, "img", &src);
    fs::rename(&aside, &pieces).unwrap();
    assert_eq!(counts(&s), [0, size, 2 * twin.len(), 0]);
    assert_eq!(file_hash(12, "renamed.img"), image_hash);
    // Both twins changed the same way (a size recent versions hold):
    // compared, then hashed, and copied once.
    let last = twin.len() - 1;
    twin[last] ^= 1;
    fs::write(src.join("a.img"), &twin).unwrap();
    fs::write(src.join("b.img"), &twin).unwrap();
    assert_eq!(
        counts(&publish(&lib, "img", &src)),
        [1, 2 * twin.len(), size + 2 * twin.len(), twin.len()]
    );
    assert_eq!(file_hash(13, "a.img"), ContentHash::of(&twin));

    let leftovers = fs::read_dir(dir.path().join("library.private/tmp")).map_or(0, |d| d.count());
    assert_eq!(leftovers, 0, "temporary files left behind");
    run_ok(peerdelta(["dp", "verify", "--full", "--library"]).arg(&lib));
}

#[test]
fn tampered_manifest_index_or_needs_list_is_rejected() {
    let s = published_series();
    let k = key(&s.lib);
    let mpath = s.lib.join("packages/app/6/manifest");
    let good = fs::read(&mpath).unwrap();
    for at in [0, 20, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        assert!(open_manifest(&bad, &k).is_err(), "flip at {at}");
    }
    // A manifest signed by another DP.
    let other = tempfile::tempdir().unwrap();
    let other_lib = init_library(other.path());
    assert!(open_manifest(&good, &key(&other_lib)).is_err());
    // On disk, dp verify notices.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    fs::write(&mpath, &bad).unwrap();
    let out = run_code(peerdelta(["dp", "verify", "--library"]).arg(&s.lib), 1);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("app v6"),
        "{out:?}"
    );
    fs::write(&mpath, &good).unwrap();
    run_ok(peerdelta(["dp", "verify", "--library"]).arg(&s.lib));
    // A tampered needs list no longer matches the manifest's hash.
    let m = manifest(&s.lib, 6);
    let (_, f) = m
        .files()
        .find(|(e, _)| e.path.as_str() == "big.bin")
        .unwrap();
    let n = &f.needs[0];
    let npath = s.lib.join(layout::needs(&n.base, &f.hash));
    let mut nbytes = fs::read(&npath).unwrap();
    let last = nbytes.len() - 1;
    nbytes[last] ^= 0x01;
    assert_ne!(ContentHash::of(&nbytes), n.file_hash);
    fs::write(&npath, &nbytes).unwrap();
    let out = run_code(
        peerdelta(["dp", "verify", "--full", "--library"]).arg(&s.lib),
        1,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("needs/"),
        "{out:?}"
    );
}

#[test]
fn bad_inputs_are_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let lib = init_library(dir.path());
    let src = dir.path().join("src");
    write_tree(&src, &versions()[0]);
    publish(&lib, "app", &src);
    let index = fs::read(lib.join("packages/app/index")).unwrap();
    let refuse = |setup: &dyn Fn(&Path), undo: &dyn Fn(&Path), words: &str| {
        setup(&src);
        let out = run_code(
            peerdelta(["dp", "publish", "--package", "app", "--library"])
                .arg(&lib)
                .arg(&src),
            1,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(words), "expected {words:?} in: {err}");
        assert!(
            err.contains(&src.display().to_string()),
            "the error names the path: {err}"
        );
        undo(&src);
        assert_eq!(
            fs::read(lib.join("packages/app/index")).unwrap(),
            index,
            "no version was added"
        );
    };
    refuse(
        &|s| std::os::unix::fs::symlink("/etc/passwd", s.join("docs/link")).unwrap(),
        &|s| fs::remove_file(s.join("docs/link")).unwrap(),
        "symbolic links are not supported",
    );
    refuse(
        &|s| std::os::unix::fs::symlink("..", s.join("escape")).unwrap(),
        &|s| fs::remove_file(s.join("escape")).unwrap(),
        "symbolic links are not supported",
    );
    refuse(
        &|s| {
            let st = std::process::Command::new("mkfifo")
                .arg(s.join("fifo"))
                .status()
                .unwrap();
            assert!(st.success());
        },
        &|s| fs::remove_file(s.join("fifo")).unwrap(),
        "not a regular file or directory",
    );
    refuse(
        &|s| {
            use std::os::unix::ffi::OsStrExt;
            fs::write(s.join(std::ffi::OsStr::from_bytes(b"bad-\xff-name")), b"x").unwrap();
        },
        &|s| {
            use std::os::unix::ffi::OsStrExt;
            fs::remove_file(s.join(std::ffi::OsStr::from_bytes(b"bad-\xff-name"))).unwrap();
        },
        "not valid UTF-8",
    );
    refuse(
        &|s| fs::write(s.join("back\\slash"), b"x").unwrap(),
        &|s| fs::remove_file(s.join("back\\slash")).unwrap(),
        "backslash",
    );
    // Bad names and missing things: usage errors (2) and failures (1).
    run_code(
        peerdelta(["dp", "publish", "--package", "../evil", "--library"])
            .arg(&lib)
            .arg(&src),
        2,
    );
    run_code(
        peerdelta(["dp", "publish", "--package", "app", "--library"])
            .arg(dir.path().join("nolib"))
            .arg(&src),
        2,
    );
    run_code(
        peerdelta(["dp", "publish", "--package", "app", "--library"])
            .arg(&lib)
            .arg(dir.path().join("nosrc")),
        1,
    );
    run_code(peerdelta(["dp", "init", "--library"]).arg(&lib), 2);
}

#[test]
fn private_key_stays_private() {
    let dir = tempfile::tempdir().unwrap();
    let lib = init_library(dir.path());
    let key_file = dir.path().join("library.private/dp.key");
    assert_eq!(
        fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!lib.join("dp.key").exists());
    // The server does not serve it (it is outside the tree), nor traversals.
    let server = DpServer::start(&lib);
    assert_eq!(
        get(&server.addr, "/../library.private/dp.key", &[]).status,
        404
    );
    assert_eq!(
        get(&server.addr, "/%2e%2e/library.private/dp.key", &[]).status,
        404
    );
    // A key readable by others is refused.
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o644)).unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let out = run_code(
        peerdelta(["dp", "publish", "--package", "app", "--library"])
            .arg(&lib)
            .arg(&src),
        2,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("readable by others"));
}

#[test]
fn serving_ranges_etags_status_and_metrics() {
    let s = published_series();
    let server = DpServer::start(&s.lib);
    let a = &server.addr;
    let m = manifest(&s.lib, 6);
    let (_, big) = m
        .files()
        .find(|(e, _)| e.path.as_str() == "big.bin")
        .unwrap();
    let content = &s.trees[5]["big.bin"].0;
    let path = format!("/{}", layout::content(&big.hash));
    // Whole file, HEAD, ETag and 304.
    let r = get(a, &path, &[]);
    assert_eq!(r.status, 200);
    assert!(r.body == *content);
    let etag = r.header("etag").unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", big.hash));
    let h = http(a, "HEAD", &path, &[], b"");
    assert_eq!(h.status, 200);
    assert_eq!(
        h.header("content-length"),
        Some(content.len().to_string().as_str())
    );
    assert!(h.body.is_empty());
    assert_eq!(get(a, &path, &[("If-None-Match", &etag)]).status, 304);
    assert_eq!(
        get(a, &path, &[("If-None-Match", "\"other\", W/\"x\"")]).status,
        200
    );
    // One range, several ranges, out of range.
    let r = get(a, &path, &[("Range", "bytes=100-199")]);
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 100-199/{}", content.len()).as_str())
    );
    assert!(r.body == content[100..200]);
    let r = get(a, &path, &[("Range", "bytes=0-9,1000-1999,-5")]);
    assert_eq!(r.status, 206);
    let parts = r.byteranges();
    assert_eq!(parts.len(), 3);
    let n = content.len() as u64;
    assert_eq!((parts[0].0, parts[0].1), (0, 9));
    assert_eq!((parts[2].0, parts[2].1), (n - 5, n - 1));
    for (a0, b0, data) in &parts {
        assert!(*data == content[*a0 as usize..=*b0 as usize]);
    }
    let r = get(a, &path, &[("Range", &format!("bytes={n}-"))]);
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{n}").as_str())
    );
    // If-Range with another tag: the whole file.
    assert_eq!(
        get(
            a,
            &path,
            &[("Range", "bytes=0-9"), ("If-Range", "\"stale\"")]
        )
        .status,
        200
    );
    // Missing, directories, methods.
    assert_eq!(get(a, "/content/00/nothing", &[]).status, 404);
    assert_eq!(get(a, "/content", &[]).status, 404);
    assert_eq!(http(a, "PUT", &path, &[], b"x").status, 405);
    // The signed index and manifests are served as they are on disk.
    assert!(
        get(a, "/packages/app/index", &[]).body
            == fs::read(s.lib.join("packages/app/index")).unwrap()
    );
    assert!(get(a, "/dp.pub", &[]).body == fs::read(s.lib.join("dp.pub")).unwrap());

    // Status reports: valid, invalid, too large; listed by dp status.
    let report = |agent: &str, pkg: &str, event: &str| {
        format!(
            r#"{{"agent":"{agent}","package":"{pkg}","version":6,"time_ms":1,"event":{event}}}"#
        )
    };
    let ok = report(
        "branch-1",
        "app",
        r#"{"type":"completed","wan_bytes":100,"lan_bytes":5,"reused_bytes":7}"#,
    );
    assert_eq!(
        http(
            a,
            "POST",
            "/status",
            &[("Content-Type", "application/json")],
            ok.as_bytes()
        )
        .status,
        204
    );
    let failure = report(
        "branch-2",
        "app",
        &format!(
            r#"{{"type":"hash_failure","content":"{}","source":"peer x","detail":"run 3"}}"#,
            big.hash
        ),
    );
    assert_eq!(
        http(a, "POST", "/status", &[], failure.as_bytes()).status,
        204
    );
    let other = report("branch-3", "other", r#"{"type":"held","versions":[1,2]}"#);
    assert_eq!(
        http(a, "POST", "/status", &[], other.as_bytes()).status,
        204
    );
    assert_eq!(
        http(a, "POST", "/status", &[], b"{\"agent\":\"x\"}").status,
        400
    );
    assert_eq!(
        http(
            a,
            "POST",
            "/status",
            &[],
            report("a\u{1}", "app", r#"{"type":"held","versions":[]}"#).as_bytes()
        )
        .status,
        400
    );
    let huge = vec![b' '; 100_000];
    assert!(http(a, "POST", "/status", &[], &huge).status >= 400);
    let listed: serde_json::Value = serde_json::from_str(&run_ok(
        peerdelta(["dp", "status", "--json", "--package", "app", "--library"]).arg(&s.lib),
    ))
    .unwrap();
    let agents: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["report"]["agent"].as_str().unwrap())
        .collect();
    assert_eq!(agents, vec!["branch-1", "branch-2"]);
    let text = run_ok(peerdelta(["dp", "status", "--library"]).arg(&s.lib));
    assert!(
        text.contains("hash_failure") && text.contains("peer x") && text.contains("branch-3"),
        "{text}"
    );

    // Metrics: bytes by kind, requests, reports.
    let metrics = String::from_utf8(get(a, "/metrics", &[]).body).unwrap();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{metrics}"))
    };
    assert!(value("peerdelta_dp_bytes_served_total{kind=\"content\"}") >= n + 100);
    assert!(value("peerdelta_dp_bytes_served_total{kind=\"manifests\"}") > 0);
    assert!(value("peerdelta_dp_requests_total{kind=\"content\"}") >= 8);
    assert_eq!(
        value("peerdelta_dp_status_reports_total{event=\"completed\"}"),
        1
    );
    assert_eq!(
        value("peerdelta_dp_status_reports_total{event=\"hash_failure\"}"),
        1
    );
    assert!(value("peerdelta_dp_status_reports_rejected_total") >= 2);
    assert_eq!(value("peerdelta_dp_not_modified_total"), 1);
}

#[test]
fn prune_keeps_the_window_and_verify_still_passes() {
    let s = published_series();
    let out: serde_json::Value = serde_json::from_str(&run_ok(
        peerdelta(["dp", "prune", "--json", "--dry-run", "--library"]).arg(&s.lib),
    ))
    .unwrap();
    assert!(
        out["removed"].as_u64().unwrap() >= 1,
        "v1's old contents are outside versions 2..6: {out}"
    );
    let kept = out["kept"].as_u64().unwrap();
    let out: serde_json::Value = serde_json::from_str(&run_ok(
        peerdelta(["dp", "prune", "--json", "--library"]).arg(&s.lib),
    ))
    .unwrap();
    assert_eq!(out["kept"].as_u64().unwrap(), kept);
    run_ok(peerdelta(["dp", "verify", "--library"]).arg(&s.lib));
    // Every content of version 6 still has its signatures.
    for (_, f) in manifest(&s.lib, 6).files() {
        assert!(s.lib.join(layout::sigs(&f.hash)).exists());
    }
}
