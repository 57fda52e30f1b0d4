//! A DP library for tests: init, publish the six-version series, read its
//! key and manifests, scrape `dp serve` metrics.

use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use peerdelta_protocol::manifest::{
    Manifest, PackageIndex, open_index, open_manifest, parse_public_key,
};

use crate::fixtures::{Tree, versions, write_tree};
use crate::{get, peerdelta, run_ok};

/// `peerdelta dp init` a library in `dir/library`.
pub fn init_library(dir: &Path) -> PathBuf {
    let lib = dir.join("library");
    let out = run_ok(peerdelta(["dp", "init", "--library"]).arg(&lib));
    assert!(out.contains("DP public key"), "{out}");
    lib
}

/// `peerdelta dp publish --json`: the summary.
pub fn publish(lib: &Path, package: &str, src: &Path) -> serde_json::Value {
    publish_with(lib, package, src, &[])
}

/// `peerdelta dp publish --json` with more arguments: the summary.
pub fn publish_with(lib: &Path, package: &str, src: &Path, args: &[&str]) -> serde_json::Value {
    let out = run_ok(
        peerdelta(["dp", "publish", "--json", "--package", package, "--library"])
            .arg(lib)
            .args(args)
            .arg(src),
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("publish summary {out:?}: {e}"))
}

/// A library holding the six-version series of `fixtures::versions` as
/// package `app`, with the source trees.
pub struct Series {
    /// Scratch directory holding everything.
    pub dir: tempfile::TempDir,
    /// The library.
    pub lib: PathBuf,
    /// The trees of versions 1 to 6.
    pub trees: Vec<Tree>,
}

/// Publishes the series.
pub fn published_series() -> Series {
    published_series_with(&[])
}

/// Publishes the series with more `dp publish` arguments.
pub fn published_series_with(args: &[&str]) -> Series {
    let dir = tempfile::tempdir().unwrap();
    let lib = init_library(dir.path());
    let trees = versions();
    for (k, t) in trees.iter().enumerate() {
        let src = dir.path().join(format!("src{}", k + 1));
        write_tree(&src, t);
        let s = publish_with(&lib, "app", &src, args);
        assert_eq!(s["version"], (k + 1) as u64);
    }
    Series { dir, lib, trees }
}

/// Publishes package `big`: v1 a 24 MiB random file, v2 with 80 random
/// regions of 100 kB replaced (about 8 MB of origin bytes, incompressible,
/// in runs of about 100 kB: a transfer can be interrupted mid-way).
pub fn publish_big(s: &Series) {
    let mut data = crate::random_bytes(100, 24 << 20);
    for v in 1..=2u64 {
        if v == 2 {
            for k in 0..80usize {
                let at = k * (300 << 10);
                let fresh = crate::random_bytes(200 + k as u64, 100_000);
                data[at..at + fresh.len()].copy_from_slice(&fresh);
            }
        }
        let src = s.dir.path().join(format!("big-src{v}"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("image.bin"), &data).unwrap();
        let out = publish(&s.lib, "big", &src);
        assert_eq!(out["version"], v);
    }
}

/// The library's public key.
pub fn library_key(lib: &Path) -> VerifyingKey {
    parse_public_key(&fs::read_to_string(lib.join("dp.pub")).unwrap()).unwrap()
}

/// The path of the library's public key file.
pub fn key_file(lib: &Path) -> PathBuf {
    lib.join("dp.pub")
}

/// A version's manifest (verified) and its size.
pub fn library_manifest(lib: &Path, package: &str, v: u64) -> (Manifest, u64) {
    let bytes = fs::read(lib.join(format!("packages/{package}/{v}/manifest"))).unwrap();
    (
        open_manifest(&bytes, &library_key(lib)).unwrap(),
        bytes.len() as u64,
    )
}

/// A package's index (verified) and its size.
pub fn library_index(lib: &Path, package: &str) -> (PackageIndex, u64) {
    let bytes = fs::read(lib.join(format!("packages/{package}/index"))).unwrap();
    (
        open_index(&bytes, &library_key(lib)).unwrap(),
        bytes.len() as u64,
    )
}

/// The sum over kinds of a `dp serve` counter, e.g.
/// `peerdelta_dp_payload_bytes_total`.
pub fn metric(addr: &str, name: &str) -> u64 {
    let r = get(addr, "/metrics", &[]);
    assert_eq!(r.status, 200);
    String::from_utf8_lossy(&r.body)
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Reads a tree back from disk (contents and modes), in the fixtures' form.
pub fn read_tree(dir: &Path) -> Tree {
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, rel: &str, out: &mut Tree) {
        for e in fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = fs::symlink_metadata(e.path()).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(format!("{r}/"), (Vec::new(), mode));
                walk(root, &r, out);
            } else {
                out.insert(r, (fs::read(e.path()).unwrap(), mode));
            }
        }
    }
    let mut t = Tree::new();
    walk(dir, "", &mut t);
    t
}

/// The tree `get --out` materialised in `dir`: [`read_tree`] without the
/// record peerdelta keeps there of what it wrote (which must be present).
pub fn read_out_tree(dir: &Path) -> Tree {
    let mut t = read_tree(dir);
    assert!(
        t.remove(".peerdelta-tree").is_some(),
        "{}: no record of what peerdelta wrote",
        dir.display()
    );
    t
}

/// Asserts two trees are identical, naming the first difference.
pub fn assert_same_tree(got: &Tree, want: &Tree, what: &str) {
    let gk: Vec<&String> = got.keys().collect();
    let wk: Vec<&String> = want.keys().collect();
    assert_eq!(gk, wk, "{what}: paths");
    for (p, (c, m)) in want {
        let (gc, gm) = &got[p];
        assert_eq!(gm, m, "{what}: mode of {p}");
        assert!(gc == c, "{what}: content of {p} differs");
    }
}
