//! What `get` accepts from a DP (or anything between it and the agent):
//! never an older index than one it verified, never an expired one, never a
//! signature container whose header disagrees with the signed manifest.
//! Real `dp serve` and `get` processes.

use std::fs;
use std::path::Path;
use std::process::Command;

use peerdelta_protocol::layout;
use peerdelta_protocol::sigstore;
use peerdelta_tests::library::{
    assert_same_tree, key_file, library_manifest, published_series, read_out_tree,
};
use peerdelta_tests::{DpServer, peerdelta, run_code, run_ok};

fn get_cmd(url: &str, lib: &Path, cache: &Path) -> Command {
    let mut c = peerdelta([
        "get",
        "--no-report",
        "--json",
        "--package",
        "app",
        "--dp",
        url,
    ]);
    c.arg("--dp-key")
        .arg(key_file(lib))
        .arg("--cache")
        .arg(cache);
    c
}

#[test]
fn an_older_index_is_refused_once_a_newer_one_was_seen() {
    let s = published_series();
    let index_path = s.lib.join(layout::index(
        &peerdelta_protocol::manifest::PackageName::new("app").unwrap(),
    ));
    let newest = fs::read(&index_path).unwrap();
    let server = DpServer::start(&s.lib);
    let cache = s.dir.path().join("cache");
    // Sees the index of generation 6 (v6 the newest).
    run_ok(get_cmd(&server.url(), &s.lib, &cache).args(["--version", "5"]));
    // A stale mirror (or a replay) serves the index as it was at v4: validly
    // signed, but older.
    let mut old = peerdelta_protocol::manifest::open_index(
        &newest,
        &peerdelta_tests::library::library_key(&s.lib),
    )
    .unwrap();
    assert_eq!(old.generation, 6);
    // Re-sign an older index with the DP's own key, as a replay would carry.
    old.versions.truncate(4);
    old.generation = 4;
    let key_text =
        fs::read_to_string(s.lib.with_file_name("library.private").join("dp.key")).unwrap();
    let seed = key_text
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .and_then(|l| peerdelta_protocol::hex::decode::<32>(l.trim()))
        .unwrap();
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let replay = peerdelta_protocol::manifest::seal(
        peerdelta_protocol::manifest::INDEX_MAGIC,
        &old,
        &signing,
    );
    fs::write(&index_path, &replay).unwrap();
    let out = run_code(&mut get_cmd(&server.url(), &s.lib, &cache), 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("older than one this agent verified"), "{err}");
    // A fresh cache has seen nothing: it takes the (valid) old index.
    run_ok(&mut get_cmd(
        &server.url(),
        &s.lib,
        &s.dir.path().join("fresh"),
    ));
    // The real index back: accepted again.
    fs::write(&index_path, &newest).unwrap();
    run_ok(&mut get_cmd(&server.url(), &s.lib, &cache));
}

#[test]
fn an_expired_index_is_refused_and_a_refresh_revives_it() {
    let s = published_series();
    let server = DpServer::start(&s.lib);
    let cache = s.dir.path().join("cache");
    // An index valid for one second (the library keeps the validity in
    // seconds; `--index-valid-days` sets it in days).
    let private = s.lib.with_file_name("library.private");
    fs::write(private.join("index-valid-secs"), "1\n").unwrap();
    run_ok(peerdelta(["dp", "refresh-index", "--library"]).arg(&s.lib));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = run_code(&mut get_cmd(&server.url(), &s.lib, &cache), 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expired") && err.contains("frozen"), "{err}");
    // The DP re-signs it with a sane validity: accepted.
    let out = run_ok(
        peerdelta([
            "dp",
            "refresh-index",
            "--index-valid-days",
            "7",
            "--library",
        ])
        .arg(&s.lib),
    );
    assert!(
        out.contains("generation 8") && out.contains("expires"),
        "{out}"
    );
    run_ok(&mut get_cmd(&server.url(), &s.lib, &cache));
}

#[test]
fn a_signature_container_that_disagrees_with_the_manifest_is_not_used() {
    let s = published_series();
    let server = DpServer::start(&s.lib);
    let url = server.url();
    let cache = s.dir.path().join("cache");
    run_ok(get_cmd(&url, &s.lib, &cache).args(["--version", "1"]));
    // v6's big.bin is rebuilt by client-side RDC from v1's; its container
    // now claims other parameters and a level of absurd size.
    let (m6, _) = library_manifest(&s.lib, "app", 6);
    let f = m6
        .files()
        .find(|(e, _)| e.path.as_str() == "big.bin")
        .unwrap()
        .1;
    let sig_path = s.lib.join(layout::sigs(&f.hash));
    let mut c = fs::read(&sig_path).unwrap();
    let (mut header, start) = sigstore::decode_header(&c).unwrap();
    header.levels[0] = u64::MAX / 2;
    let h = postcard::to_allocvec(&header).unwrap();
    let mut forged = sigstore::SIG_MAGIC.to_vec();
    forged.extend_from_slice(&(h.len() as u32).to_le_bytes());
    forged.extend_from_slice(&h);
    forged.extend_from_slice(&c[start as usize..]);
    c = forged;
    fs::write(&sig_path, &c).unwrap();
    let out = s.dir.path().join("out");
    let r = run_ok(
        get_cmd(&url, &s.lib, &cache)
            .args(["--version", "6", "--out"])
            .arg(&out),
    );
    let summary: serde_json::Value = serde_json::from_str(&r).unwrap();
    assert_same_tree(
        &read_out_tree(&out),
        &s.trees[5],
        "v6 despite the container",
    );
    assert_eq!(summary["rdc_contents"], 0, "{summary}");
}
