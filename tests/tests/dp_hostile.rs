//! A DP facing hostile clients, end to end against a real `peerdelta dp
//! serve`: range amplification, status report floods and junk, slow
//! clients. Each test would fail on the DP before issue 15.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use peerdelta_protocol::layout;
use peerdelta_tests::library::{init_library, library_manifest, publish};
use peerdelta_tests::{DpServer, connect_from, get, http, peerdelta, random_bytes, run_ok};

/// A library with one package `app` holding `blob.bin` of `len` random
/// bytes; returns the library and the content's library path.
fn library_with(dir: &Path, len: usize) -> (std::path::PathBuf, String) {
    let lib = init_library(dir);
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("blob.bin"), random_bytes(7, len)).unwrap();
    publish(&lib, "app", &src);
    let (m, _) = library_manifest(&lib, "app", 1);
    let (_, f) = m.files().next().unwrap();
    (lib, format!("/{}", layout::content(&f.hash)))
}

fn metric(addr: &str, name: &str) -> u64 {
    let body = get(addr, "/metrics", &[]).body;
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn overlapping_ranges_cost_at_most_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let len = 4 << 20;
    let (lib, path) = library_with(dir.path(), len);
    let dp = DpServer::start(&lib);
    // 256 copies of the whole file (CVE-2011-3192's pattern).
    let header = format!("bytes={}", vec!["0-"; 256].join(","));
    let r = get(&dp.addr, &path, &[("Range", &header)]);
    assert_eq!(r.status, 206);
    assert!(
        r.body.len() as f64 <= 1.1 * len as f64,
        "{} bytes sent for a {len}-byte file",
        r.body.len()
    );
    assert_eq!(r.range_bytes(0, len as u64 - 1).map(|b| b.len()), Some(len));
    // Overlapping pieces of it, in every order: no byte twice.
    let pieces: Vec<String> = (0..200u64)
        .map(|i| {
            let a = (i * 7919 * 4096) % len as u64;
            format!("{a}-{}", a + 600_000)
        })
        .collect();
    let r = get(
        &dp.addr,
        &path,
        &[("Range", &format!("bytes={}", pieces.join(",")))],
    );
    assert_eq!(r.status, 206);
    assert!(r.body.len() <= len + 4096, "{}", r.body.len());
    // More ranges than the documented limit: refused.
    let many: Vec<String> = (0..4096u64)
        .map(|i| format!("{}-{}", i * 100, i * 100))
        .collect();
    let r = get(
        &dp.addr,
        &path,
        &[("Range", &format!("bytes={}", many.join(",")))],
    );
    assert_eq!(r.status, 416);
    // What the DP counted matches.
    let sent = metric(
        &dp.addr,
        "peerdelta_dp_bytes_served_total{kind=\"content\"}",
    );
    assert!(sent <= 3 * (len as u64) + 10_000, "{sent}");
}

fn report_json(agent: &str, detail: &str) -> String {
    format!(
        r#"{{"agent":"{agent}","package":"app","version":1,"time_ms":1,"event":{{"type":"hash_failure","content":"{}","source":"dp","detail":"{detail}"}}}}"#,
        "ab".repeat(32)
    )
}

/// POSTs a status report from `from`; returns the status code.
fn post_from(from: IpAddr, addr: &str, body: &str) -> u16 {
    let mut s = connect_from(from, addr);
    write!(
        s,
        "POST /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn status_reports_are_rate_limited_per_client_and_the_log_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (lib, _) = library_with(dir.path(), 10_000);
    let dp = DpServer::start_with(&lib, &["--status-per-minute", "5"]);
    let a: IpAddr = "127.0.0.1".parse().unwrap();
    let b: IpAddr = "127.0.0.2".parse().unwrap();
    let codes: Vec<u16> = (0..8)
        .map(|i| post_from(a, &dp.addr, &report_json("branch-a", &format!("run {i}"))))
        .collect();
    assert_eq!(&codes[..5], &[204; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|c| *c == 429), "{codes:?}");
    // Another client is not held back by the first.
    assert_eq!(post_from(b, &dp.addr, &report_json("branch-b", "x")), 204);
    assert_eq!(
        metric(&dp.addr, "peerdelta_dp_status_reports_limited_total"),
        3
    );
    drop(dp);

    // A log capped at 1 MiB: 2,500 reports of ~1.3 kB each rotate it; the
    // disk holds at most two files, and `dp status` says what was dropped.
    let dp = DpServer::start_with(
        &lib,
        &["--status-per-minute", "1000000", "--status-log-mib", "1"],
    );
    let detail = "d".repeat(1000);
    for i in 0..2500 {
        let r = http(
            &dp.addr,
            "POST",
            "/status",
            &[("Content-Type", "application/json")],
            report_json(&format!("agent-{i}"), &detail).as_bytes(),
        );
        assert_eq!(r.status, 204);
    }
    let status_dir = lib.with_file_name("library.private").join("status");
    let total: u64 = std::fs::read_dir(&status_dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        total <= 2 * (1 << 20) + 4096,
        "the status log takes {total} bytes"
    );
    let out = peerdelta(["dp", "status", "--json", "--library"])
        .arg(&lib)
        .output()
        .unwrap();
    assert!(out.status.success());
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dropped: u64 = stderr
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no dropped count in {stderr:?}"));
    // 2,500 here and 6 accepted by the first server.
    assert_eq!(listed.len() as u64 + dropped, 2506, "{stderr}");
    assert_eq!(
        listed.last().unwrap()["report"]["agent"],
        "agent-2499",
        "newest last"
    );
}

#[test]
fn control_characters_are_refused_and_escaped_on_output() {
    let dir = tempfile::tempdir().unwrap();
    let (lib, _) = library_with(dir.path(), 10_000);
    let dp = DpServer::start(&lib);
    for evil in [
        report_json("branch\\u001b[2J", "x"),
        report_json("branch", "clear\\u001b]0;pwned\\u0007"),
        report_json("branch", "line\\nbreak"),
    ] {
        let r = http(
            &dp.addr,
            "POST",
            "/status",
            &[("Content-Type", "application/json")],
            evil.as_bytes(),
        );
        assert_eq!(r.status, 400, "{evil}");
    }
    // A log written before the check (or edited by hand) is printed escaped.
    let log = lib
        .with_file_name("library.private")
        .join("status/reports.jsonl");
    let old = format!(
        "{{\"received_ms\":1,\"remote\":\"x\",\"report\":{}}}\n",
        report_json("old\\u001b[31m", "bell\\u0007")
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(old.as_bytes())
        .unwrap();
    let out = run_ok(peerdelta(["dp", "status", "--library"]).arg(&lib));
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(out.contains("old\\u{1b}[31m"), "{out}");
}

#[test]
fn slow_clients_cannot_pin_the_dp() {
    let dir = tempfile::tempdir().unwrap();
    let len = 48 << 20;
    let (lib, path) = library_with(dir.path(), len);
    let dp = DpServer::start_with(
        &lib,
        &[
            "--header-timeout-secs",
            "2",
            "--stall-timeout-secs",
            "2",
            "--max-connections-per-client",
            "8",
        ],
    );
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    // Slowloris: connections that start a request and never finish it.
    let mut slow: Vec<TcpStream> = (0..30)
        .map(|_| {
            let mut s = connect_from(attacker, &dp.addr);
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ");
            s
        })
        .collect();
    // An honest client is served at once.
    let t = Instant::now();
    let r = get(&dp.addr, &path, &[("Range", "bytes=0-99")]);
    assert_eq!(r.status, 206);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Beyond 8 from one address, connections are closed at once; the first
    // 8 are closed when the header timeout passes.
    let refused = metric(&dp.addr, "peerdelta_dp_connections_refused_total");
    assert_eq!(refused, 22);
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        let t = Instant::now();
        // EOF, a reset, or an error answer: never a wait past the timeout.
        let _ = s.read(&mut buf);
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    }
    // A body that never arrives.
    let mut s = connect_from(attacker, &dp.addr);
    s.write_all(
        format!(
            "POST /status HTTP/1.1\r\nHost: {}\r\nContent-Length: 1000\r\n\r\n{{",
            dp.addr
        )
        .as_bytes(),
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    // A reader that stops reading a large file is dropped after the stall
    // timeout instead of holding the connection forever.
    let mut s = connect_from(attacker, &dp.addr);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        dp.addr
    )
    .unwrap();
    let mut first = [0u8; 4096];
    s.read_exact(&mut first).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.read_to_end(&mut rest);
    assert!(
        rest.len() + first.len() < len,
        "the stalled response was sent whole ({} bytes)",
        rest.len()
    );
    drop(slow);
}
