//! The library is plain static files: Debian's nginx serving the same tree
//! must work the same for downloads as `peerdelta dp serve`, byte for byte,
//! ranges and multi-ranges included, and files rebuild from it.
//!
//! Skipped (with the reason printed) when nginx is not installed; `.ci/run`
//! installs it.

use std::fs;

use peerdelta_protocol::ContentHash;
use peerdelta_protocol::manifest::{Manifest, open_manifest, parse_public_key};
use peerdelta_tests::fixtures::{rebuild_over_http, versions, write_tree};
use peerdelta_tests::library::read_tree;
use peerdelta_tests::nginx::{Nginx, nginx_binary};
use peerdelta_tests::{DpServer, cannot_run, get, http, peerdelta, run_ok};

#[test]
fn nginx_serves_the_library_like_dp_serve() {
    let Some(nginx) = nginx_binary() else {
        return cannot_run("nginx is not installed (`.ci/run` installs Debian's nginx-light)");
    };
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("library");
    run_ok(peerdelta(["dp", "init", "--library"]).arg(&lib));
    let trees = versions();
    for (k, t) in trees.iter().enumerate() {
        let src = dir.path().join(format!("src{}", k + 1));
        write_tree(&src, t);
        run_ok(
            peerdelta(["dp", "publish", "--quiet", "--package", "app", "--library"])
                .arg(&lib)
                .arg(&src),
        );
    }
    let server = Nginx::start(&nginx, &dir.path().join("nginx"), &lib);
    let ngx = server.addr.clone();
    let dp = DpServer::start(&lib);

    let all: Vec<String> = read_tree(&lib)
        .into_keys()
        .filter(|k| !k.ends_with('/'))
        .collect();
    assert!(all.len() > 30);
    for rel in &all {
        let path = format!("/{rel}");
        let len = fs::metadata(lib.join(rel)).unwrap().len();
        let (a, b) = (get(&ngx, &path, &[]), get(&dp.addr, &path, &[]));
        assert_eq!((a.status, b.status), (200, 200), "{rel}");
        assert!(a.body == b.body, "{rel}: same bytes");
        let (a, b) = (
            http(&ngx, "HEAD", &path, &[], b""),
            http(&dp.addr, "HEAD", &path, &[], b""),
        );
        assert_eq!(
            a.header("content-length"),
            b.header("content-length"),
            "{rel}"
        );
        // nginx's own ETag works with If-None-Match, as ours does.
        let tag = get(&ngx, &path, &[]).header("etag").unwrap().to_owned();
        assert_eq!(
            get(&ngx, &path, &[("If-None-Match", &tag)]).status,
            304,
            "{rel}"
        );
        if len < 40 {
            continue;
        }
        let one = format!("bytes=10-{}", len / 2);
        let (a, b) = (
            get(&ngx, &path, &[("Range", &one)]),
            get(&dp.addr, &path, &[("Range", &one)]),
        );
        assert_eq!((a.status, b.status), (206, 206), "{rel}");
        assert!(a.body == b.body, "{rel}: single range");
        assert_eq!(a.header("content-range"), b.header("content-range"));
        let many = format!("bytes=0-3,{}-{},-7", len / 3, len / 3 + 20);
        let (a, b) = (
            get(&ngx, &path, &[("Range", &many)]),
            get(&dp.addr, &path, &[("Range", &many)]),
        );
        // nginx sends the parts as asked (or the whole file when they add up
        // to more), peerdelta merges close ones: both carry every range.
        assert_eq!(b.status, 206, "{rel}");
        for (x, y) in [(0, 3), (len / 3, len / 3 + 20), (len - 7, len - 1)] {
            let want = &get(&ngx, &path, &[]).body[x as usize..=y as usize];
            assert_eq!(
                a.range_bytes(x, y).as_deref(),
                Some(want),
                "{rel}: nginx {x}-{y}"
            );
            assert_eq!(
                b.range_bytes(x, y).as_deref(),
                Some(want),
                "{rel}: dp {x}-{y}"
            );
        }
        let out = format!("bytes={len}-");
        assert_eq!(get(&ngx, &path, &[("Range", &out)]).status, 416);
        assert_eq!(get(&dp.addr, &path, &[("Range", &out)]).status, 416);
    }

    // With the README's settings (`max_ranges`), nginx bounds multi-range
    // requests too: 256 copies of a file cost one copy at most.
    let biggest = all
        .iter()
        .filter(|r| r.starts_with("content/"))
        .max_by_key(|r| fs::metadata(lib.join(r.as_str())).unwrap().len())
        .unwrap();
    let len = fs::metadata(lib.join(biggest.as_str())).unwrap().len();
    let header = format!("bytes={}", vec!["0-"; 256].join(","));
    let r = get(&ngx, &format!("/{biggest}"), &[("Range", &header)]);
    assert!(
        r.body.len() as f64 <= 1.1 * len as f64,
        "nginx sent {} bytes for a {len}-byte file",
        r.body.len()
    );

    // Every changed file of version 6 rebuilds from versions 2..5 over nginx.
    let key = parse_public_key(&fs::read_to_string(lib.join("dp.pub")).unwrap()).unwrap();
    let manifest = |v: u64| -> Manifest {
        open_manifest(
            &get(&ngx, &format!("/packages/app/{v}/manifest"), &[]).body,
            &key,
        )
        .unwrap()
    };
    let m6 = manifest(6);
    let mut rebuilt = 0;
    for old in 2..=5u64 {
        let old_tree = &trees[(old - 1) as usize];
        for (e, f) in m6.files() {
            let Some(n) = f.needs.iter().find(|n| n.base_versions.contains(&old)) else {
                continue;
            };
            let base = old_tree
                .values()
                .find(|(c, _)| ContentHash::of(c) == n.base)
                .unwrap();
            let out = rebuild_over_http(&ngx, &base.0, &f.hash, n);
            assert!(
                out == trees[5][e.path.as_str()].0,
                "{} from v{old} over nginx",
                e.path
            );
            rebuilt += 1;
        }
    }
    assert!(rebuilt >= 8, "{rebuilt}");
}
