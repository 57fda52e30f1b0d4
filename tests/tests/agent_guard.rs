//! What keeps strangers out of an agent: the control API (Host check, token
//! for state-changing calls, files only the daemon's user can read) and the
//! subnet key. Real `peerdelta agent run` daemons on loopback.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use peerdelta_tests::agents::*;
use peerdelta_tests::library::{assert_same_tree, published_series, read_out_tree};
use peerdelta_tests::nginx::free_port;
use peerdelta_tests::{DpServer, http, run_code, run_ok};

#[test]
fn the_control_api_refuses_other_hosts_and_calls_without_the_token() {
    let s = published_series();
    let dp = DpServer::start(&s.lib);
    let net = start_agents(&s, &dp.url(), &[s.dir.path().join("c0")], "", "");
    let a = &net.agents[0];
    // DNS rebinding: a page at evil.example resolving to 127.0.0.1.
    let r = http(
        &a.control,
        "GET",
        "/v1/status",
        &[("Host", "evil.example:7117")],
        b"",
    );
    assert_eq!(r.status, 421);
    let r = http(&a.control, "GET", "/v1/status", &[], b"");
    assert_eq!(r.status, 200);
    // Starting a transfer needs the token.
    let body = br#"{"package":"app","version":1}"#;
    let ct = ("Content-Type", "application/json");
    let r = http(&a.control, "POST", "/v1/get", &[ct], body);
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    let r = http(
        &a.control,
        "POST",
        "/v1/get",
        &[ct, ("Authorization", "Bearer 00")],
        body,
    );
    assert_eq!(r.status, 401);
    let token_file = a.cache.join("control.token");
    let token = fs::read_to_string(&token_file).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let r = http(
        &a.control,
        "POST",
        "/v1/get",
        &[ct, ("Authorization", &auth)],
        body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The token and the agent's private key are the daemon's user's alone.
    for f in [token_file, a.cache.join("agent.key")] {
        let mode = fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    // The CLI finds the token (from the path the daemon names) and `--out`
    // is honoured through the daemon.
    let out = s.dir.path().join("out");
    run_ok(
        a.cmd(&[
            "get",
            "--package",
            "app",
            "--version",
            "2",
            "--quiet",
            "--control",
        ])
        .arg(&a.control)
        .arg("--out")
        .arg(&out),
    );
    assert_same_tree(&read_out_tree(&out), &s.trees[1], "v2 through the daemon");
    // A token file the CLI is pointed at that is not a token: refused
    // without sending it.
    let fake = s.dir.path().join("not-a-token");
    fs::write(&fake, "root:x:0:0::/root:/bin/sh\n").unwrap();
    let r = run_code(
        a.cmd(&["get", "--package", "app", "--version", "2", "--control"])
            .arg(&a.control)
            .env("PEERDELTA_CONTROL_TOKEN", &fake),
        2,
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("token"));
}

#[test]
fn strangers_without_the_subnet_key_cannot_join() {
    let s = published_series();
    let dp = DpServer::start(&s.lib);
    let key = "11".repeat(32);
    let wrong = "22".repeat(32);
    let keys = [
        Some(key.as_str()),
        Some(key.as_str()),
        Some(wrong.as_str()),
        None,
    ];
    let ports: Vec<u16> = keys.iter().map(|_| free_port()).collect();
    let caches: Vec<PathBuf> = (0..keys.len())
        .map(|i| s.dir.path().join(format!("p{i}")))
        .collect();
    for c in &caches {
        get_alone(&s, &dp.url(), c, 1);
    }
    let agents: Vec<Agent> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let peers: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("\"/ip4/127.0.0.1/tcp/{p}\""))
                .collect();
            let net = format!(
                "listen = [\"/ip4/127.0.0.1/tcp/{}\"]\npeers = [{}]\nmdns = false\n{}",
                ports[i],
                peers.join(", "),
                k.map_or(String::new(), |k| format!("psk = \"{k}\"\n"))
            );
            let control = format!("127.0.0.1:{}", free_port());
            spawn_agent(&s, &dp.url(), i, &caches[i], &control, "", &net, None, None)
        })
        .collect();
    // The two with the key find each other.
    wait_for_peers(&agents[..2]);
    // The others stay alone and say why, after several redials.
    let deadline = Instant::now() + Duration::from_secs(20);
    let said = |a: &Agent| a.logs().contains("subnet key (agent.psk)");
    while !(said(&agents[2]) && said(&agents[3])) {
        assert!(
            Instant::now() < deadline,
            "no reason in the logs:\n{}\n{}",
            agents[2].logs(),
            agents[3].logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for a in &agents[2..] {
        assert_eq!(a.peers_seen(), 0, "{} joined:\n{}", a.name, a.logs());
    }
    for a in &agents[..2] {
        assert_eq!(a.peers_seen(), 1, "{}", a.name);
    }
    // A transfer among the keyed agents: only they are candidates.
    let results = get_all(&[&agents[0], &agents[1]]);
    for r in &results {
        assert_eq!(r["phase"], "done", "{r:#}");
    }
    let st = agents[0].status();
    let log = st["jobs"][0]["log"].to_string();
    assert!(log.contains("a0") || log.contains("a1"), "{log}");
    assert!(!log.contains("a2") && !log.contains("a3"), "{log}");
    // The strangers learned nothing of the transfer.
    for a in &agents[2..] {
        let st = a.status();
        assert!(
            st["jobs"].as_array().is_none_or(|j| j.is_empty()),
            "{}: {st:#}",
            a.name
        );
    }
}
