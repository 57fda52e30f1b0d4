//! Test fixtures shared by the end-to-end tests: a package that evolves over
//! six versions, and rebuilding a file over HTTP from a needs list.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use peerdelta_protocol::needsfile::{self, RunSource};
use peerdelta_protocol::{ContentHash, layout};

use crate::{get, random_bytes};

/// A package tree: path -> (content, mode); directories end with '/'.
pub type Tree = BTreeMap<String, (Vec<u8>, u32)>;

pub fn text(seed: u64, lines: usize) -> Vec<u8> {
    let words = [
        "int", "return", "value", "config", "branch", "delta", "peer", "chunk", "{", "}", ";", "=",
        "0x1f",
    ];
    let mut x = seed | 1;
    let mut out = Vec::new();
    for l in 0..lines {
        out.extend_from_slice(format!("{l:06}: ").as_bytes());
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
        out.push(b'\n');
    }
    out
}

pub fn splice(v: &mut Vec<u8>, at: usize, remove: usize, insert: &[u8]) {
    let at = at.min(v.len());
    let end = (at + remove).min(v.len());
    v.splice(at..end, insert.iter().copied());
}

/// Six versions with edits, insertions, renames, moves with and without
/// changes, deletions, a mode change, empty files and directories, and a
/// large binary file.
pub fn versions() -> Vec<Tree> {
    let mut t: Tree = BTreeMap::new();
    t.insert("big.bin".into(), (random_bytes(1, 12 << 20), 0o644));
    t.insert("docs/".into(), (vec![], 0o755));
    t.insert("docs/readme.txt".into(), (text(2, 3000), 0o644));
    t.insert("src/".into(), (vec![], 0o755));
    t.insert("src/main.c".into(), (text(3, 6000), 0o644));
    t.insert("src/util.c".into(), (text(4, 5000), 0o644));
    t.insert("assets/".into(), (vec![], 0o755));
    t.insert("assets/logo.png".into(), (random_bytes(5, 500_000), 0o644));
    t.insert("tools/".into(), (vec![], 0o755));
    t.insert(
        "tools/run.sh".into(),
        (b"#!/bin/sh\necho run\n".to_vec(), 0o755),
    );
    t.insert("empty.txt".into(), (vec![], 0o644));
    t.insert("data/".into(), (vec![], 0o755));
    t.insert("data/empty-dir/".into(), (vec![], 0o700));
    let mut out = vec![t.clone()];
    // v2: edit the big file and main.c, rename the readme (same content).
    let big = &mut t.get_mut("big.bin").unwrap().0;
    splice(big, 3 << 20, 0, &random_bytes(21, 10_000));
    splice(big, 7 << 20, 4096, &random_bytes(22, 4096));
    splice(
        &mut t.get_mut("src/main.c").unwrap().0,
        100_000,
        0,
        b"/* a new comment in version 2 */\n",
    );
    let readme = t.remove("docs/readme.txt").unwrap();
    t.insert("docs/README.md".into(), readme);
    out.push(t.clone());
    // v3: move util.c with changes, add a file.
    let (mut util, mode) = t.remove("src/util.c").unwrap();
    splice(&mut util, 50_000, 200, b"changed while moving\n");
    t.insert("lib/".into(), (vec![], 0o755));
    t.insert("lib/util.c".into(), (util, mode));
    t.insert("src/new.c".into(), (text(6, 2000), 0o644));
    out.push(t.clone());
    // v4: delete the logo, insert into the big file.
    t.remove("assets/logo.png");
    t.remove("assets/");
    splice(
        &mut t.get_mut("big.bin").unwrap().0,
        1 << 20,
        0,
        &random_bytes(41, 50_000),
    );
    out.push(t.clone());
    // v5: append to the big file, change a mode, edit main.c.
    t.get_mut("big.bin")
        .unwrap()
        .0
        .extend_from_slice(&random_bytes(51, 200_000));
    t.get_mut("tools/run.sh").unwrap().1 = 0o700;
    splice(
        &mut t.get_mut("src/main.c").unwrap().0,
        10_000,
        5000,
        &text(52, 10),
    );
    out.push(t.clone());
    // v6: small edits everywhere, truncate the big file a little.
    let big = &mut t.get_mut("big.bin").unwrap().0;
    let n = big.len();
    big.truncate(n - 100_000);
    for (_, (c, _)) in t.iter_mut() {
        if c.len() > 1000 {
            let mid = c.len() / 2;
            c[mid..mid + 8].copy_from_slice(b"v6 edit!");
        }
    }
    out.push(t);
    out
}

pub fn write_tree(dir: &Path, t: &Tree) {
    fs::create_dir_all(dir).unwrap();
    for (p, (content, mode)) in t {
        let path = dir.join(p.trim_end_matches('/'));
        if p.ends_with('/') {
            fs::create_dir_all(&path).unwrap();
        } else {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, content).unwrap();
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
    }
}

/// Rebuilds `target` from `base` with the needs list, fetching the needs list
/// and every origin run over HTTP (origin runs in one multi-range request).
pub fn rebuild_over_http(
    addr: &str,
    base: &[u8],
    target: &ContentHash,
    n: &peerdelta_protocol::manifest::NeedsRef,
) -> Vec<u8> {
    let r = get(addr, &format!("/{}", layout::needs(&n.base, target)), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(ContentHash::of(&r.body), n.file_hash, "needs file hash");
    let nf = needsfile::decode(&r.body).unwrap();
    let placed: Vec<_> = nf.placed().collect();
    let origin: Vec<_> = placed
        .iter()
        .filter(|p| p.run.source == RunSource::Origin)
        .collect();
    let mut fetched: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    if !origin.is_empty() {
        let spec: Vec<String> = origin
            .iter()
            .map(|p| format!("{}-{}", p.target_offset, p.target_range().end - 1))
            .collect();
        let range = format!("bytes={}", spec.join(","));
        let r = get(
            addr,
            &format!("/{}", layout::content(target)),
            &[("Range", &range)],
        );
        assert_eq!(r.status, 206, "{:?}", r.headers);
        // The server may merge ranges (RFC 9110 §14.2): find each run in
        // whatever parts came back.
        for p in &origin {
            let (o, end) = (p.target_offset, p.target_range().end);
            let data = r
                .range_bytes(o, end - 1)
                .unwrap_or_else(|| panic!("no part holds bytes {o}..{end}"));
            fetched.insert(o, data);
        }
    }
    let mut out = Vec::with_capacity(nf.target_len as usize);
    for p in &placed {
        let bytes: &[u8] = match p.run.source {
            RunSource::Seed { offset } => {
                &base[offset as usize..offset as usize + p.run.len as usize]
            }
            RunSource::Origin => &fetched[&p.target_offset],
        };
        let v = p.verify(bytes).unwrap();
        assert_eq!(v.target_offset(), out.len() as u64);
        out.extend_from_slice(v.bytes());
    }
    out
}
