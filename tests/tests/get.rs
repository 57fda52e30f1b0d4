//! `peerdelta get` end to end: the real binary against `peerdelta dp serve`
//! and against nginx serving the same library, bytes counted by the server.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peerdelta_protocol::getplan::{self, Source};
use peerdelta_protocol::manifest::Manifest;
use peerdelta_protocol::needsfile::{self, RunSource};
use peerdelta_protocol::{ContentHash, layout};
use peerdelta_tests::fixtures::{Tree, text, write_tree};
use peerdelta_tests::library::{
    Series, assert_same_tree, init_library, key_file, library_index, library_manifest, metric,
    publish, published_series, published_series_with, read_out_tree,
};
use peerdelta_tests::nginx::{Nginx, free_port, nginx_binary};
use peerdelta_tests::{
    DpServer, cannot_run, peerdelta, random_bytes, run, run_code, run_ok, start_until,
};

const PAYLOAD: &str = "peerdelta_dp_payload_bytes_total";
const WIRE: &str = "peerdelta_dp_bytes_served_total";

/// `peerdelta get` for package `app` of `lib` served at `url`, into `cache`.
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

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("JSON summary {out:?}: {e}"))
}

/// What the DP must send for `target` to a cache holding the contents of
/// `held`: index, manifest, then per content the plan's download.
fn expected_bytes(lib: &Path, target: &Manifest, held: &[Manifest]) -> u64 {
    let have: HashSet<ContentHash> = held
        .iter()
        .flat_map(|m| m.files().map(|(_, f)| f.hash))
        .collect();
    let plans = getplan::plan(target, |h| have.contains(h), |_| None);
    assert!(
        plans.iter().all(|p| !matches!(p.source, Source::Rdc(_))),
        "this series needs no client-side RDC"
    );
    let (index, index_len) = library_index(lib, "app");
    let entry = index.get(target.version).unwrap();
    // The manifest: a delta from a held one, else compressed.
    let manifest = entry.manifest_fetch(|v| held.iter().any(|m| m.version == v));
    index_len
        + manifest.len()
        + getplan::download_bytes_with_bundle(
            target,
            |h| have.contains(h),
            |v| held.iter().any(|m| m.version == v),
            |b| {
                let bytes = fs::read(lib.join(layout::bundle(&b.hash))).ok()?;
                let bundle = peerdelta_protocol::bundle::decode(&bytes).ok()?;
                Some(bundle.entries.iter().map(|e| e.target).collect())
            },
        )
}

/// Gets every version of the series in turn into one cache, checking the
/// server's count of each step against the needs lists and the result
/// against the source tree. `counts` reads the server: (payload, wire bytes).
fn run_series(s: &Series, url: &str, counts: &dyn Fn() -> (u64, u64)) {
    let cache = s.dir.path().join(format!("cache-{}", free_port()));
    let mut held: Vec<Manifest> = Vec::new();
    let mut saw_delta = false;
    for (k, tree) in s.trees.iter().enumerate() {
        let v = (k + 1) as u64;
        let (m, _) = library_manifest(&s.lib, "app", v);
        let want = expected_bytes(&s.lib, &m, &held);
        let out = s.dir.path().join(format!("out-{}-{v}", free_port()));
        let (p0, w0) = counts();
        let summary = json(&run_ok(
            get_cmd(url, &s.lib, &cache)
                .args(["--version", &v.to_string(), "--out"])
                .arg(&out),
        ));
        let (p1, w1) = counts();
        assert_eq!(
            p1 - p0,
            want,
            "v{v}: file bytes the server sent = index + manifest + needs lists + origin data"
        );
        assert_eq!(
            w1 - w0,
            summary["dp_bytes"].as_u64().unwrap(),
            "v{v}: body bytes the server sent = what the client counted"
        );
        assert_eq!(summary["hash_failures"], 0);
        assert_same_tree(&read_out_tree(&out), tree, &format!("v{v}"));
        if k > 0 {
            let full = m.total_bytes();
            eprintln!(
                "v{v}: {} of {full} bytes from the DP ({:.1}%), {} contents rebuilt from a needs list",
                p1 - p0,
                100.0 * (p1 - p0) as f64 / full as f64,
                summary["delta_contents"]
            );
            saw_delta |= summary["delta_contents"].as_u64().unwrap() > 0;
            assert!(p1 - p0 < full / 5, "v{v}: a delta update costs little");
        }
        held.push(m);
    }
    assert!(saw_delta);
    // Everything held, the version named: nothing crosses the network.
    let (p0, _) = counts();
    let again = json(&run_ok(
        get_cmd(url, &s.lib, &cache).args(["--version", "6"]),
    ));
    let (p1, _) = counts();
    assert_eq!(p1 - p0, 0);
    assert_eq!(
        again["cached_contents"].as_u64(),
        Some(
            held[5]
                .files()
                .map(|(_, f)| f.hash)
                .collect::<HashSet<_>>()
                .len() as u64
        )
    );
    let verify = run_ok(
        peerdelta(["cache", "verify", "--json", "--cache"])
            .arg(&cache)
            .arg("--dp-key")
            .arg(key_file(&s.lib)),
    );
    assert!(
        json(&verify)["quarantined"].as_array().unwrap().is_empty(),
        "{verify}"
    );
    let list = run_ok(
        peerdelta(["cache", "list", "--cache"])
            .arg(&cache)
            .arg("--dp-key")
            .arg(key_file(&s.lib)),
    );
    assert_eq!(
        list.lines().filter(|l| l.starts_with("app")).count(),
        6,
        "{list}"
    );
}

#[test]
fn series_from_dp_serve_fetches_exactly_the_needs_lists_and_origin_data() {
    let s = published_series();
    let server = DpServer::start(&s.lib);
    let addr = server.addr.clone();
    run_series(&s, &server.url(), &|| {
        (metric(&addr, PAYLOAD), metric(&addr, WIRE))
    });
}

#[test]
fn series_from_nginx_fetches_exactly_the_needs_lists_and_origin_data() {
    let Some(bin) = nginx_binary() else {
        return cannot_run("nginx is not installed (`.ci/run` installs Debian's nginx-light)");
    };
    let s = published_series();
    let ngx = Nginx::start(&bin, &s.dir.path().join("nginx"), &s.lib);
    let counts = || {
        // nginx logs a request when it has sent it; give it a moment.
        let mut last = (u64::MAX, u64::MAX);
        loop {
            let log = ngx.log();
            let now = (
                log.iter().map(|l| l.payload()).sum(),
                log.iter().map(|l| l.body_bytes).sum(),
            );
            if now == last {
                return now;
            }
            last = now;
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    run_series(&s, &ngx.url(), &counts);
}

/// Two versions of a package `app` with enough origin data to interrupt:
/// a random file (origin runs fetched raw) and a text file (origin runs
/// fetched from a compressed pack).
fn two_versions(dir: &Path) -> (PathBuf, Vec<Tree>) {
    let lib = init_library(dir);
    let mut a = random_bytes(7, 24 << 20);
    let mut b = text(8, 300_000);
    let v1: Tree = [
        ("a.bin".to_owned(), (a.clone(), 0o644)),
        ("b.txt".to_owned(), (b.clone(), 0o644)),
    ]
    .into();
    for k in 0..40usize {
        let at = k * (600 << 10);
        a[at..at + (128 << 10)].copy_from_slice(&random_bytes(100 + k as u64, 128 << 10));
        let at = k * (b.len() / 41);
        let ins = text(200 + k as u64, 1000);
        b.splice(at..at, ins);
    }
    let v2: Tree = [
        ("a.bin".to_owned(), (a, 0o644)),
        ("b.txt".to_owned(), (b, 0o600)),
    ]
    .into();
    for (k, t) in [&v1, &v2].into_iter().enumerate() {
        let src = dir.join(format!("src{}", k + 1));
        write_tree(&src, t);
        publish(&lib, "app", &src);
    }
    (lib, vec![v1, v2])
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn killed_get_resumes_and_never_refetches_verified_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (lib, trees) = two_versions(dir.path());
    let server = DpServer::start(&lib);
    let url = server.url();
    let cache = dir.path().join("cache");
    run_ok(get_cmd(&url, &lib, &cache).args(["--version", "1"]));
    let reference_cache = dir.path().join("reference-cache");
    copy_dir(&cache, &reference_cache);

    // The single-run figure.
    let p0 = metric(&server.addr, PAYLOAD);
    run_ok(get_cmd(&url, &lib, &reference_cache).args(["--version", "2"]));
    let single = metric(&server.addr, PAYLOAD) - p0;
    let (m2, mlen) = library_manifest(&lib, "app", 2);
    let (m1, _) = library_manifest(&lib, "app", 1);
    assert_eq!(single, expected_bytes(&lib, &m2, &[m1]));

    // Slowed down so that it can be interrupted; two requests of 256 KiB in flight.
    let (concurrency, request) = (2u64, 256u64 << 10);
    let slow = |c: &mut Command| {
        c.args(["--version", "2", "--max-rate", "4 MiB/s", "--request-bytes"])
            .arg(request.to_string())
            .arg("--concurrency")
            .arg(concurrency.to_string());
    };
    let start = metric(&server.addr, PAYLOAD);
    let kills = 4;
    for k in 0..kills {
        let before = metric(&server.addr, PAYLOAD);
        let mut cmd = get_cmd(&url, &lib, &cache);
        slow(&mut cmd);
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill after about a sixth of the transfer.
        let t = Instant::now();
        while metric(&server.addr, PAYLOAD) - before < single / 6 {
            assert!(
                child.try_wait().unwrap().is_none(),
                "kill {k}: get finished before it could be killed"
            );
            assert!(t.elapsed() < Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let out = dir.path().join("out");
    let mut cmd = get_cmd(&url, &lib, &cache);
    slow(&mut cmd);
    let summary = json(&run_ok(cmd.arg("--out").arg(&out)));
    let total = metric(&server.addr, PAYLOAD) - start;
    assert_same_tree(&read_out_tree(&out), &trees[1], "after the kills");
    // Each start fetches the index and the manifest again; each kill loses
    // at most the requests in flight.
    let (_, ilen) = library_index(&lib, "app");
    let allowance = kills * (concurrency * request + ilen + mlen) + ilen + mlen;
    eprintln!(
        "single run {single} B; {kills} kills, then done: {total} B ({:+} B, allowance {allowance} B)",
        total as i64 - single as i64
    );
    assert!(
        total <= single + allowance,
        "fetched {total} B over {kills} kills, single run {single} B"
    );
    // Both contents rebuilt from v1 (one may have finished before a kill).
    assert_eq!(
        summary["delta_contents"].as_u64().unwrap() + summary["cached_contents"].as_u64().unwrap(),
        2,
        "{summary}"
    );
    let verify = run_ok(
        peerdelta(["cache", "verify", "--json", "--cache"])
            .arg(&cache)
            .arg("--dp-key")
            .arg(key_file(&lib)),
    );
    assert!(json(&verify)["quarantined"].as_array().unwrap().is_empty());
}

#[test]
fn a_dp_restart_mid_transfer_is_waited_out() {
    let dir = tempfile::tempdir().unwrap();
    let (lib, trees) = two_versions(dir.path());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let start_dp = || {
        start_until(
            peerdelta(["dp", "serve", "--listen", &listen, "--library"]).arg(&lib),
            "listening on http://",
        )
        .0
    };
    let mut dp = start_dp();
    let url = format!("http://{listen}");
    let cache = dir.path().join("cache");
    let out = dir.path().join("out");
    let mut child = get_cmd(&url, &lib, &cache)
        .args(["--version", "2", "--max-rate", "8 MiB/s", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while metric(&listen, PAYLOAD) < 8 << 20 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "get finished before the DP restart"
        );
        assert!(t.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(dp);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "get gave up while the DP was down"
    );
    dp = start_dp();
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success());
    let summary = json(&String::from_utf8_lossy(&done.stdout));
    assert_eq!(summary["version"], 2);
    assert_same_tree(&read_out_tree(&out), &trees[1], "after the DP restart");
    drop(dp);
}

/// Flips one byte of a file in place.
fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
}

fn content_of(m: &Manifest, path: &str) -> ContentHash {
    m.files()
        .find(|(e, _)| e.path.as_str() == path)
        .unwrap()
        .1
        .hash
}

fn status_reports(lib: &Path) -> String {
    run_ok(peerdelta(["dp", "status", "--json", "--library"]).arg(lib))
}

/// Hash-failure reports naming the DP as the source, so far.
fn dp_failure_reports(lib: &Path) -> usize {
    let v: serde_json::Value = serde_json::from_str(&status_reports(lib)).unwrap();
    v.as_array()
        .unwrap_or_else(|| panic!("dp status --json is a list: {v}"))
        .iter()
        .filter(|r| r.to_string().contains("hash_failure") && r.to_string().contains("\"dp\""))
        .count()
}

#[test]
fn a_corrupt_local_base_is_detected_reported_and_fetched_whole() {
    let s = published_series();
    let server = DpServer::start(&s.lib);
    let url = server.url();
    let cache = s.dir.path().join("cache");
    run_ok(get_cmd(&url, &s.lib, &cache).args(["--version", "1"]));
    let (m1, _) = library_manifest(&s.lib, "app", 1);
    let (m2, _) = library_manifest(&s.lib, "app", 2);
    let base = content_of(&m1, "big.bin");
    let cached = cache.join("content").join(base.shard()).join(base.to_hex());
    flip(&cached, 6 << 20);

    let out = s.dir.path().join("out");
    let p0 = metric(&server.addr, PAYLOAD);
    let summary = json(&run_ok(
        peerdelta([
            "get",
            "--json",
            "--package",
            "app",
            "--dp",
            &url,
            "--version",
            "2",
        ])
        .arg("--dp-key")
        .arg(key_file(&s.lib))
        .arg("--cache")
        .arg(&cache)
        .arg("--out")
        .arg(&out),
    ));
    let fetched = metric(&server.addr, PAYLOAD) - p0;
    assert_same_tree(
        &read_out_tree(&out),
        &s.trees[1],
        "v2 despite the damaged base",
    );
    assert!(summary["hash_failures"].as_u64().unwrap() >= 1, "{summary}");
    assert!(
        summary["whole_contents"].as_u64().unwrap() == 1,
        "{summary}"
    );
    // The new big.bin came from the DP (its pack or its runs).
    let big = m2
        .files()
        .find(|(e, _)| e.path.as_str() == "big.bin")
        .unwrap()
        .1;
    // Nothing came from the damaged base: its seed runs crossed the WAN
    // too (raw), not only the few kB of a healthy update.
    assert!(
        fetched >= big.size / 4,
        "{fetched} B fetched for a {} B file",
        big.size
    );
    // The damaged base left the cache, into quarantine.
    assert!(!cached.exists());
    assert!(fs::read_dir(cache.join("quarantine")).unwrap().count() >= 1);
    let reports = status_reports(&s.lib);
    assert!(
        reports.contains("hash_failure") && reports.contains("local base"),
        "{reports}"
    );
    assert!(
        reports.contains(&base.to_hex()) || reports.contains(&big.hash.to_hex()),
        "{reports}"
    );
    // v1 is no longer complete: verify drops its record, v2 stays.
    let verify = json(&run_ok(
        peerdelta(["cache", "verify", "--json", "--cache"])
            .arg(&cache)
            .arg("--dp-key")
            .arg(key_file(&s.lib)),
    ));
    assert_eq!(verify["dropped_versions"], serde_json::json!(["app v1"]));
}

#[test]
fn a_dp_sending_a_wrong_byte_is_caught_reported_and_resumed_once_fixed() {
    let s = published_series();
    let server = DpServer::start(&s.lib);
    let url = server.url();
    let cache = s.dir.path().join("cache");
    run_ok(get_cmd(&url, &s.lib, &cache).args(["--version", "1"]));
    let (m1, _) = library_manifest(&s.lib, "app", 1);
    let (m2, _) = library_manifest(&s.lib, "app", 2);
    let (base, target) = (content_of(&m1, "big.bin"), content_of(&m2, "big.bin"));
    // The needs list ships its origin runs in a pack (compressed against
    // the base); the DP also serves them raw.
    let nf =
        needsfile::decode(&fs::read(s.lib.join(layout::needs(&base, &target))).unwrap()).unwrap();
    let pack = nf.pack.clone().expect("a pack");
    let frame = *pack.frames.last().unwrap();
    let frame_runs: Vec<_> = nf
        .placed()
        .filter(|p| p.run.source == RunSource::Origin)
        .skip(frame.first as usize)
        .take(frame.count as usize)
        .collect();
    let pack_file = s.lib.join(layout::pack(&base, &target));
    let content = s.lib.join(layout::content(&target));
    let in_pack = frame.offset + u64::from(frame.len) / 2;
    // The middle byte of every run of that frame.
    let in_content: Vec<u64> = frame_runs
        .iter()
        .map(|r| r.target_offset + u64::from(r.run.len) / 2)
        .collect();

    // A bad pack alone: its runs come raw instead, and the DP hears of it.
    flip(&pack_file, in_pack);
    let other = s.dir.path().join("other-cache");
    run_ok(get_cmd(&url, &s.lib, &other).args(["--version", "1"]));
    let summary = json(&run_ok(
        peerdelta([
            "get",
            "--json",
            "--package",
            "app",
            "--dp",
            &url,
            "--version",
            "2",
        ])
        .arg("--dp-key")
        .arg(key_file(&s.lib))
        .arg("--cache")
        .arg(&other),
    ));
    assert!(summary["hash_failures"].as_u64().unwrap() >= 1, "{summary}");
    let reports = status_reports(&s.lib);
    assert!(
        reports.contains("hash_failure") && reports.contains("\"dp\""),
        "{reports}"
    );

    // The same runs wrong raw as well: nothing good to be had.
    let before = dp_failure_reports(&s.lib);
    for &at in &in_content {
        flip(&content, at);
    }
    let out = s.dir.path().join("out");
    let bad = run_code(
        peerdelta(["get", "--package", "app", "--dp", &url, "--version", "2"])
            .arg("--dp-key")
            .arg(key_file(&s.lib))
            .arg("--cache")
            .arg(&cache)
            .arg("--out")
            .arg(&out),
        1,
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("failed verification"), "{err}");
    assert!(err.contains(&target.to_hex()), "names the content: {err}");
    assert!(!out.exists(), "nothing materialised");
    assert!(
        !cache
            .join("content")
            .join(target.shard())
            .join(target.to_hex())
            .exists()
    );
    let list = run_ok(
        peerdelta(["cache", "list", "--cache"])
            .arg(&cache)
            .arg("--dp-key")
            .arg(key_file(&s.lib)),
    );
    assert!(!list.contains("v2"), "v2 not recorded: {list}");
    assert!(
        dp_failure_reports(&s.lib) > before,
        "the failed raw fetch sent no report: {}",
        status_reports(&s.lib)
    );

    // Repaired: the next get fetches only what it had not verified.
    for &at in &in_content {
        flip(&content, at);
    }
    flip(&pack_file, in_pack);
    let p0 = metric(&server.addr, PAYLOAD);
    run_ok(
        get_cmd(&url, &s.lib, &cache)
            .args(["--version", "2", "--out"])
            .arg(&out),
    );
    let resumed = metric(&server.addr, PAYLOAD) - p0;
    assert_same_tree(&read_out_tree(&out), &s.trees[1], "v2 after the repair");
    let (_, ilen) = library_index(&s.lib, "app");
    let (_, mlen) = library_manifest(&s.lib, "app", 2);
    assert!(
        resumed <= ilen + mlen + u64::from(frame.len) + u64::from(frame.raw_len) + 4096,
        "only the bad frame and run again: {resumed} B"
    );
}

#[test]
fn max_rate_and_schedule_cap_dp_traffic_smoothly() {
    let dir = tempfile::tempdir().unwrap();
    let lib = init_library(dir.path());
    let src = dir.path().join("src");
    write_tree(
        &src,
        &[("data.bin".to_owned(), (random_bytes(3, 6 << 20), 0o644))].into(),
    );
    publish(&lib, "app", &src);
    let server = DpServer::start(&lib);
    let config = dir.path().join("config.toml");
    fs::write(&config, "[governor.schedule]\nall = \"0-24: 1 MiB/s\"\n").unwrap();
    for (k, (rate, how)) in [
        (2u64 << 20, vec!["--max-rate", "2 MiB/s"]),
        (1 << 20, vec!["--config"]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut cmd = get_cmd(&server.url(), &lib, &dir.path().join(format!("cache{k}")));
        cmd.args(&how);
        if how == ["--config"] {
            cmd.arg(&config);
        }
        let mut child = cmd.stdout(Stdio::null()).spawn().unwrap();
        let t0 = Instant::now();
        let base = metric(&server.addr, PAYLOAD);
        let mut samples = vec![(0.0f64, 0u64)];
        while child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(50));
            samples.push((
                t0.elapsed().as_secs_f64(),
                metric(&server.addr, PAYLOAD) - base,
            ));
        }
        assert!(child.wait().unwrap().success());
        samples.push((
            t0.elapsed().as_secs_f64(),
            metric(&server.addr, PAYLOAD) - base,
        ));
        let total = samples.last().unwrap().1;
        assert!(total > 6 << 20);
        // Any one-second window: at most the rate plus one request (a
        // quarter of a second's worth), with 5% for sampling.
        let request = rate / 4;
        let mut worst = 0;
        for (i, &(t, b)) in samples.iter().enumerate() {
            for &(u, c) in &samples[i..] {
                if u - t <= 1.0 {
                    worst = worst.max(c - b);
                }
            }
        }
        let secs = samples.last().unwrap().0;
        eprintln!(
            "cap {rate} B/s: {total} B in {secs:.2} s ({:.0} B/s), busiest second {worst} B",
            total as f64 / secs
        );
        assert!(
            worst as f64 <= (rate + request) as f64 * 1.05,
            "busiest second {worst} B at a cap of {rate} B/s"
        );
        assert!(
            secs >= (total - request) as f64 / rate as f64 * 0.95,
            "{total} B in {secs:.2} s at a cap of {rate} B/s"
        );
    }
}

#[test]
fn bad_dp_and_bad_requests_give_clear_errors() {
    let s = published_series();
    let server = DpServer::start(&s.lib);
    let url = server.url();
    let cache = s.dir.path().join("cache");
    let err = |out: std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    let e = err(run_code(
        get_cmd("http://127.0.0.1:1", &s.lib, &cache).args(["--retry-secs", "1"]),
        1,
    ));
    assert!(e.contains("cannot reach the DP"), "{e}");
    let e = err(run_code(
        peerdelta(["get", "--package", "nope", "--dp", &url, "--cache"])
            .arg(&cache)
            .arg("--dp-key")
            .arg(key_file(&s.lib)),
        1,
    ));
    assert!(e.contains("has no package nope"), "{e}");
    let e = err(run_code(
        get_cmd(&url, &s.lib, &cache).args(["--version", "9"]),
        1,
    ));
    assert!(
        e.contains("no version 9") && e.contains("newest is 6"),
        "{e}"
    );
    // Another DP's key: the signature does not verify.
    let other = tempfile::tempdir().unwrap();
    let other_lib = init_library(other.path());
    let e = err(run_code(
        peerdelta(["get", "--package", "app", "--dp", &url, "--cache"])
            .arg(&cache)
            .arg("--dp-key")
            .arg(key_file(&other_lib)),
        1,
    ));
    assert!(e.contains("signature"), "{e}");
    // Usage errors: exit 2.
    run_code(&mut get_cmd("ftp://example.com", &s.lib, &cache), 2);
    run_code(
        get_cmd(&url, &s.lib, &cache).args(["--max-rate", "fast"]),
        2,
    );
    run_code(
        peerdelta([
            "get",
            "--package",
            "app",
            "--dp",
            &url,
            "--dp-key",
            "not-a-key",
            "--cache",
        ])
        .arg(&cache),
        2,
    );
    // A server answering garbage to everything.
    let garbage = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gaddr = garbage.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for c in garbage.incoming() {
            let Ok(mut c) = c else { continue };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = c.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world",
            );
        }
    });
    let e = err(run_code(
        &mut get_cmd(&format!("http://{gaddr}"), &s.lib, &cache),
        1,
    ));
    assert!(e.contains("index"), "{e}");
    // Nothing was recorded by any of these.
    let list = run_ok(
        peerdelta(["cache", "list", "--cache"])
            .arg(&cache)
            .arg("--dp-key")
            .arg(key_file(&s.lib)),
    );
    assert!(!list.contains("app"), "{list}");
}

/// Whether this process may mount (root in a namespace that allows it).
fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    fs::create_dir_all(dir).unwrap();
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_cleanly_and_records_nothing_half_written() {
    let s = published_series();
    let cache = s.dir.path().join("small-disk");
    if !mount_tmpfs(&cache, "6m") {
        return cannot_run("cannot mount a small tmpfs here (needs root); CI runs as root");
    }
    let _unmount = Unmount(cache.clone());
    let server = DpServer::start(&s.lib);
    let out = run(get_cmd(&server.url(), &s.lib, &cache).args(["--version", "1"]));
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.to_lowercase().contains("no space left"), "{e}");
    // Every content present verifies; no version is recorded.
    let mut checked = 0;
    for shard in fs::read_dir(cache.join("content")).unwrap() {
        for f in fs::read_dir(shard.unwrap().path()).unwrap() {
            let f = f.unwrap();
            let name = f.file_name().to_string_lossy().into_owned();
            assert_eq!(ContentHash::of(&fs::read(f.path()).unwrap()).to_hex(), name);
            checked += 1;
        }
    }
    let list = run_ok(
        peerdelta(["cache", "list", "--cache"])
            .arg(&cache)
            .arg("--dp-key")
            .arg(key_file(&s.lib)),
    );
    assert!(!list.contains("app"), "{list}");
    eprintln!("full disk: {checked} complete contents kept, nothing recorded");
}

#[test]
fn a_receiver_five_versions_behind_uses_client_side_rdc() {
    // Needs lists reach only the window back: v1 is too far for v6's.
    let s = published_series_with(&["--far-versions", "4"]);
    let server = DpServer::start(&s.lib);
    let url = server.url();
    let cache = s.dir.path().join("cache");
    run_ok(get_cmd(&url, &s.lib, &cache).args(["--version", "1"]));
    // v6's needs lists start from v2..v5: none from v1.
    let (m6, mlen) = library_manifest(&s.lib, "app", 6);
    let (m1, _) = library_manifest(&s.lib, "app", 1);
    let held: HashSet<ContentHash> = m1.files().map(|(_, f)| f.hash).collect();
    let plans = getplan::plan(
        &m6,
        |h| held.contains(h),
        |p| {
            m1.files()
                .find(|(e, _)| e.path.as_str() == p)
                .map(|(_, f)| f.hash)
        },
    );
    assert!(
        plans
            .iter()
            .any(|p| p.path == "big.bin" && matches!(p.source, Source::Rdc(_)))
    );
    let out = s.dir.path().join("out");
    let p0 = metric(&server.addr, PAYLOAD);
    let summary = json(&run_ok(
        get_cmd(&url, &s.lib, &cache)
            .args(["--version", "6", "--out"])
            .arg(&out),
    ));
    let fetched = metric(&server.addr, PAYLOAD) - p0;
    assert_same_tree(&read_out_tree(&out), &s.trees[5], "v6 from v1");
    assert!(summary["rdc_contents"].as_u64().unwrap() >= 1, "{summary}");
    // The small contents came in one bundle from v1 (far outside the
    // needs lists' window), not one by one.
    assert!(
        m6.bundles.iter().any(|b| b.from == 1),
        "v6 has a bundle from v1"
    );
    assert!(
        summary["bundle_contents"].as_u64().unwrap() >= 1,
        "{summary}"
    );
    assert_eq!(summary["hash_failures"], 0, "{summary}");
    let whole = library_index(&s.lib, "app").1 + mlen + getplan::download_bytes(&m6, |_| false);
    eprintln!("v1 -> v6 by client-side RDC: {fetched} B from the DP; without a base {whole} B");
    assert!(
        fetched * 4 < whole,
        "RDC fetched {fetched} B, a full download is {whole} B"
    );
}

#[test]
fn a_damaged_bundle_costs_bytes_never_the_update() {
    // A bundle the DP cannot give right (damaged on disk, or gone) is
    // skipped: its contents come their usual way and the update completes.
    let s = published_series();
    let (m2, _) = library_manifest(&s.lib, "app", 2);
    let b = m2
        .bundles
        .iter()
        .find(|b| b.from == 1)
        .expect("v2 has a bundle from v1");
    let path = s.lib.join(layout::bundle(&b.hash));
    for damage in ["flip", "remove"] {
        let saved = fs::read(&path).unwrap();
        match damage {
            "flip" => flip(&path, b.len / 2),
            _ => fs::remove_file(&path).unwrap(),
        }
        let server = DpServer::start(&s.lib);
        let cache = s.dir.path().join(format!("cache-{damage}"));
        run_ok(get_cmd(&server.url(), &s.lib, &cache).args(["--version", "1"]));
        let out = s.dir.path().join(format!("out-{damage}"));
        let summary = json(&run_ok(
            get_cmd(&server.url(), &s.lib, &cache)
                .args(["--version", "2", "--out"])
                .arg(&out),
        ));
        assert_same_tree(&read_out_tree(&out), &s.trees[1], damage);
        assert_eq!(summary["bundle_contents"], 0, "{damage}: {summary}");
        let verify = run(peerdelta(["dp", "verify", "--full", "--library"]).arg(&s.lib));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        assert!(
            !verify.status.success() && text.contains(".bundle"),
            "dp verify names the bundle: {text}"
        );
        drop(server);
        fs::write(&path, saved).unwrap();
    }
    run_ok(peerdelta(["dp", "verify", "--full", "--library"]).arg(&s.lib));
}

#[test]
fn a_receiver_five_versions_behind_gets_one_delta_by_default() {
    // By default large files get needs lists from 16 versions back: a
    // receiver holding v1 rebuilds v6's big file with one needs list from
    // v1 (never a chain), and its small files from one bundle.
    let s = published_series();
    let server = DpServer::start(&s.lib);
    let url = server.url();
    let cache = s.dir.path().join("cache");
    run_ok(get_cmd(&url, &s.lib, &cache).args(["--version", "1"]));
    let (m6, _) = library_manifest(&s.lib, "app", 6);
    let (m1, _) = library_manifest(&s.lib, "app", 1);
    let p0 = metric(&server.addr, PAYLOAD);
    let out = s.dir.path().join("out");
    let summary = json(&run_ok(
        get_cmd(&url, &s.lib, &cache)
            .args(["--version", "6", "--out"])
            .arg(&out),
    ));
    let fetched = metric(&server.addr, PAYLOAD) - p0;
    assert_same_tree(&read_out_tree(&out), &s.trees[5], "v6 from v1");
    assert_eq!(summary["rdc_contents"], 0, "{summary}");
    assert!(
        summary["delta_contents"].as_u64().unwrap() >= 1,
        "{summary}"
    );
    assert!(
        m6.files()
            .any(|(e, f)| e.path.as_str() == "big.bin"
                && f.needs.iter().any(|n| n.base_versions == [1])),
        "big.bin has a needs list from v1"
    );
    // Exactly what the plan says, with the bundle from v1.
    let want = expected_bytes(&s.lib, &m6, std::slice::from_ref(&m1));
    assert_eq!(fetched, want, "{summary}");
    eprintln!("v1 -> v6: {fetched} B from the DP, {summary}");
}
