//! Subnet cooperation end to end: real `peerdelta agent run` daemons on
//! loopback with explicit peer lists, a real `peerdelta dp serve`, bytes
//! counted by the DP.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use peerdelta_tests::agents::*;
use peerdelta_tests::library::{Series, metric, publish_big, published_series};
use peerdelta_tests::netns;

use peerdelta_tests::{DpServer, cannot_run, peerdelta, run_ok};

/// These tests start several daemons each and measure elections, timings
/// and WAN bytes: run in parallel on a small machine they starve each
/// other's heartbeats (seen in CI: twice one agent's WAN bytes, and a
/// version recorded with a content missing). One at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// DP payload bytes of one agent alone getting v2 holding v1.
fn single_run(s: &Series, dp: &DpServer) -> u64 {
    single_run_pkg(s, dp, "app")
}

fn masters(results: &[serde_json::Value]) -> usize {
    results.iter().filter(|j| j["role"] == "master").count()
}

/// One WAN download: exactly one agent fetched from the DP, and some agent
/// is master. (Which: a peer that completes before the master, from the
/// master's and its own blocks, takes over by the election's rule that a
/// holder of the complete target wins; the WAN is then not needed at all.)
fn one_wan_user(results: &[serde_json::Value]) {
    let users = results
        .iter()
        .filter(|j| j["summary"]["dp_bytes"].as_u64().unwrap_or(0) > 0)
        .count();
    assert_eq!(users, 1, "{results:#?}");
    assert!(masters(results) >= 1, "{results:#?}");
}

#[test]
fn five_agents_one_wan_download() {
    let _one_at_a_time = serial();
    let s = published_series();
    let dp = DpServer::start(&s.lib);
    let single = single_run(&s, &dp);
    let caches: Vec<PathBuf> = (0..5).map(|i| s.dir.path().join(format!("c{i}"))).collect();
    for c in &caches {
        get_alone(&s, &dp.url(), c, 1);
    }
    let net = start_agents(&s, &dp.url(), &caches, "", "");
    let p0 = metric(&dp.addr, PAYLOAD);
    let results = get_all(&net.agents.iter().collect::<Vec<_>>());
    let wan = metric(&dp.addr, PAYLOAD) - p0;
    eprintln!("single run {single} B; five agents {wan} B");
    assert!(
        wan as f64 <= 1.02 * single as f64,
        "five agents cost the DP {wan} B, one alone {single} B"
    );
    one_wan_user(&results);
    let lan: u64 = results
        .iter()
        .map(|j| j["summary"]["lan_bytes"].as_u64().unwrap_or(0))
        .sum();
    assert!(lan > 0, "the peers took nothing over the LAN: {results:#?}");
    for a in &net.agents {
        verify_cache(&s, a);
    }
    // Status shows the election.
    let st = net.agents[0].status();
    let job = &st["jobs"][0];
    assert!(
        job["log"].as_array().is_some_and(|l| !l.is_empty()),
        "{st:#}"
    );
    assert!(job["master"].is_string(), "{st:#}");
}

/// The master of `package` v2 as agent `a` sees it (a name like "a3").
fn master_seen(a: &Agent, package: &str) -> Option<String> {
    let st = a.status();
    st["jobs"]
        .as_array()?
        .iter()
        .find(|j| j["package"] == package)?["master"]
        .as_str()
        .map(|m| m.split(' ').next().unwrap_or(m).to_owned())
}

#[test]
fn master_killed_at_30_and_80_percent() {
    let _one_at_a_time = serial();
    let s = published_series();
    publish_big(&s);
    let dp = DpServer::start(&s.lib);
    let single = single_run_pkg(&s, &dp, "big");
    let caches: Vec<PathBuf> = (0..5).map(|i| s.dir.path().join(format!("k{i}"))).collect();
    for c in &caches {
        get_alone_pkg(&s, &dp.url(), c, "big", 1);
    }
    // Slow enough to kill the master mid-transfer: 512 KiB/s, one 64 KiB
    // request at a time.
    let mut net = start_agents(
        &s,
        &dp.url(),
        &caches,
        "[governor]\nmax_rate = \"512 KiB/s\"\n",
        "concurrency = 1\nrequest_bytes = 65536\n",
    );
    let p0 = metric(&dp.addr, PAYLOAD);
    let all: Vec<&Agent> = net.agents.iter().collect();
    let pending = start_all(&all, "big");
    let mut killed: Vec<String> = Vec::new();
    for fraction in [0.3, 0.8] {
        let deadline = Instant::now() + Duration::from_secs(120);
        while ((metric(&dp.addr, PAYLOAD) - p0) as f64) < fraction * single as f64 {
            assert!(
                Instant::now() < deadline,
                "the transfer stalled before {fraction}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let alive = net.agents.iter().find(|a| a.child.is_some()).unwrap();
        let m = master_seen(alive, "big").expect("a master");
        let victim = net.agents.iter_mut().find(|a| a.name == m).unwrap();
        eprintln!("killing master {m} at {:.0}%", fraction * 100.0);
        victim.kill();
        killed.push(m);
    }
    // The killed agents' `get --wait` fail; the survivors' must succeed.
    let mut results = Vec::new();
    for (h, a) in pending.into_iter().zip(&net.agents) {
        let (ok, out, err) = h.join().unwrap();
        if killed.contains(&a.name) {
            continue;
        }
        assert!(ok, "{}: get failed: {err}\n{}", a.name, a.logs());
        results.push(serde_json::from_str::<serde_json::Value>(&out).unwrap());
    }
    let wan = metric(&dp.addr, PAYLOAD) - p0;
    eprintln!(
        "single run {single} B; five agents, two masters killed: {wan} B ({:.3}x)",
        wan as f64 / single as f64
    );
    assert!(
        wan as f64 <= 1.05 * single as f64,
        "with two masters killed the DP sent {wan} B, one agent alone {single} B"
    );
    assert_eq!(results.len(), 3);
    let mut elections = Vec::new();
    for a in net.agents.iter().filter(|a| !killed.contains(&a.name)) {
        verify_cache(&s, a);
        let st = a.status();
        assert!(
            st["reelections"].as_u64().unwrap_or(0) >= 2,
            "{}: {st:#}",
            a.name
        );
        elections.push(st["elections"].as_u64().unwrap_or(0));
    }
    simnet_agrees(&s, wan, &elections);
}

/// simnet on the same small scenario (the same two files, 5 agents, the
/// WAN at 512 KiB/s, one DP request at a time, the same election timing,
/// the master killed at 30% and 80%) reports the WAN bytes and elections
/// of the real run within 10%.
/// (Survivors may count a transient claim the election resolved at once,
/// so the real count is each survivor's; simnet must match one of them.)
fn simnet_agrees(s: &Series, real_wan: u64, real_elections: &[u64]) {
    let dir = s.dir.path();
    let scenario = format!(
        "name = \"the subnet test, simulated\"\n\
         [package]\nold = {old:?}\nnew = {new:?}\nunit_kib = 1024\nmanifest_bytes = 400\n\
         [timing]\nheartbeat_ms = 200\nmaster_timeout_ms = 1500\nsettle_ms = 800\ndp_concurrency = 1\ndp_request_kib = 64\n\
         [[branches]]\nagents = 5\nwan_mbps = 4.194304\nwan_latency_ms = 0.1\nlan_mbps = 10000\nlan_latency_ms = 0.05\n\
         [[faults]]\nkind = \"master_crash\"\nat_fraction = 0.3\n\
         [[faults]]\nkind = \"master_crash\"\nat_fraction = 0.8\n",
        old = dir.join("big-src1/image.bin"),
        new = dir.join("big-src2/image.bin"),
    );
    let sc = peerdelta_simnet::scenario::Scenario::parse(&scenario).unwrap();
    let r = peerdelta_simnet::run(&sc, None).unwrap().0.result;
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let b = &r.per_branch[0];
    eprintln!(
        "real: {real_wan} B, {real_elections:?} elections; simnet: {} B, {} elections",
        b.wan_bytes, b.elections
    );
    let off = (b.wan_bytes as f64 - real_wan as f64).abs() / real_wan as f64;
    assert!(
        off <= 0.10,
        "simnet WAN {} B vs real {real_wan} B",
        b.wan_bytes
    );
    let close = |r: &u64| (b.elections as f64 - *r as f64).abs() <= 0.10 * (*r).max(1) as f64;
    assert!(
        real_elections.iter().any(close),
        "simnet {} elections vs real {real_elections:?}",
        b.elections
    );
}

#[test]
fn alt_copy_from_the_only_holder_of_v1() {
    let _one_at_a_time = serial();
    let s = published_series();
    let dp = DpServer::start(&s.lib);
    let single = single_run(&s, &dp);
    let caches: Vec<PathBuf> = (0..4)
        .map(|i| s.dir.path().join(format!("alt{i}")))
        .collect();
    // Only a0 holds v1.
    get_alone(&s, &dp.url(), &caches[0], 1);
    let net = start_agents(&s, &dp.url(), &caches, "", "");
    let p0 = metric(&dp.addr, PAYLOAD);
    // a1..a3 want v2; a0 is not a candidate, so not the master ...
    let want: Vec<&Agent> = net.agents.iter().skip(1).collect();
    let results = get_all(&want);
    one_wan_user(&results);
    let wan = metric(&dp.addr, PAYLOAD) - p0;
    eprintln!("single run (holding v1) {single} B; alt-copy subnet {wan} B");
    // ... and still only the origin runs cross the WAN: the seed runs came
    // from a0's v1 over the LAN. (Measured: 16,543 B against 15,969 B;
    // the 574 B more are not explained yet.)
    assert!(
        wan as f64 <= 1.05 * single as f64,
        "the subnet cost the DP {wan} B; an agent holding v1 alone {single} B"
    );
    let st = net.agents[0].status();
    assert!(
        st["lan_bytes_out"].as_u64().unwrap_or(0) > 1 << 20,
        "a0 served no v1 blocks: {st:#}"
    );
    for a in &want {
        verify_cache(&s, a);
    }
}

#[test]
fn malicious_peer_is_banned_and_the_transfer_completes() {
    let _one_at_a_time = serial();
    let s = published_series();
    let dp = DpServer::start(&s.lib);
    let caches: Vec<PathBuf> = (0..3)
        .map(|i| s.dir.path().join(format!("mal{i}")))
        .collect();
    for c in &caches {
        get_alone(&s, &dp.url(), c, 1);
    }
    // a0 holds v2 as well and serves everything corrupted; holding the
    // target it is the master the others elect, and the one they must ban.
    get_alone(&s, &dp.url(), &caches[0], 2);
    let net = start_agents_with(&s, &dp.url(), &caches, "", "", |i| {
        (i == 0).then_some("serve-corrupt")
    });
    let want: Vec<&Agent> = net.agents.iter().skip(1).collect();
    get_all(&want);
    for a in &want {
        verify_cache(&s, a);
        let st = a.status();
        assert!(
            st["bans"].as_u64().unwrap_or(0) >= 1,
            "{}: no ban: {st:#}",
            a.name
        );
    }
    // The DP heard about it.
    let out = run_ok(peerdelta(["dp", "status", "--json", "--library"]).arg(&s.lib));
    assert!(
        out.contains("peer "),
        "no hash-failure report naming a peer: {out}"
    );
}

#[test]
fn agents_on_a_bridge_find_each_other_by_mdns() {
    let _one_at_a_time = serial();
    let seg = match netns::Segment::create(3) {
        Ok(seg) => seg,
        Err(why) => {
            return cannot_run(&format!(
                "network namespaces are not available here ({why}); this test needs root and iproute2"
            ));
        }
    };
    let s = published_series();
    // The DP on the bridge (the segment's gateway), so every host reaches it.
    let (_dp, addr) = peerdelta_tests::start_until(
        peerdelta([
            "dp",
            "serve",
            "--listen",
            &format!("{}:0", seg.gateway()),
            "--library",
        ])
        .arg(&s.lib),
        "listening on http://",
    );
    let url = format!("http://{addr}");
    let caches: Vec<PathBuf> = (0..3)
        .map(|i| s.dir.path().join(format!("ns{i}")))
        .collect();
    for c in &caches {
        get_alone(&s, &url, c, 1);
    }
    // No peer list: the same port and control address in every namespace.
    let net = "listen = [\"/ip4/0.0.0.0/tcp/7118\"]\npeers = []\nmdns = true\n";
    let agents: Vec<Agent> = caches
        .iter()
        .enumerate()
        .map(|(i, c)| {
            spawn_agent(
                &s,
                &url,
                i,
                c,
                "127.0.0.1:7117",
                "",
                net,
                Some(&seg.hosts[i]),
                None,
            )
        })
        .collect();
    wait_for_peers(&agents);
    for (i, a) in agents.iter().enumerate() {
        let st = a.status();
        let addrs: Vec<String> = st["peers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["addrs"].as_array().cloned().unwrap_or_default())
            .map(|a| a.as_str().unwrap_or("").to_owned())
            .collect();
        // Found on the bridge, not on loopback.
        let others: Vec<String> = (0..3).filter(|j| *j != i).map(|j| seg.addr(j)).collect();
        assert!(
            others
                .iter()
                .all(|o| addrs.iter().any(|a| a.contains(o.as_str()))),
            "{}: peers at {addrs:?}, expected {others:?}",
            a.name
        );
    }
    // What one agent alone costs the DP for the same update.
    let alone = s.dir.path().join("ns-alone");
    get_alone(&s, &url, &alone, 1);
    let p0 = metric(&addr, PAYLOAD);
    get_alone(&s, &url, &alone, 2);
    let single = metric(&addr, PAYLOAD) - p0;
    let p0 = metric(&addr, PAYLOAD);
    let results = get_all(&agents.iter().collect::<Vec<_>>());
    one_wan_user(&results);
    let wan = metric(&addr, PAYLOAD) - p0;
    eprintln!("three agents on a bridge, found by mDNS: DP sent {wan} B; one alone {single} B");
    assert!(
        wan as f64 <= 1.02 * single as f64,
        "the bridge subnet cost the DP {wan} B, one agent alone {single} B"
    );
    for a in &agents {
        verify_cache(&s, a);
    }
}

#[test]
fn sigterm_mid_transfer_stops_cleanly_and_a_restart_resumes() {
    let _one_at_a_time = serial();
    let s = published_series();
    publish_big(&s);
    let dp = DpServer::start(&s.lib);
    let single = single_run_pkg(&s, &dp, "big");
    let cache = s.dir.path().join("term");
    get_alone_pkg(&s, &dp.url(), &cache, "big", 1);
    let slow = "[governor]\nmax_rate = \"1 MiB/s\"\n";
    let agent_cfg = "concurrency = 1\nrequest_bytes = 65536\n";
    let mut net = start_agents(&s, &dp.url(), std::slice::from_ref(&cache), slow, agent_cfg);
    let p0 = metric(&dp.addr, PAYLOAD);
    let pending = start_all(&[&net.agents[0]], "big");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ((metric(&dp.addr, PAYLOAD) - p0) as f64) < 0.5 * single as f64 {
        assert!(Instant::now() < deadline, "the transfer did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGTERM: the daemon stops within seconds, exit code 0.
    let a = &mut net.agents[0];
    let child = a.child.as_mut().unwrap();
    run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let stop = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            stop.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}\n{}", a.logs());
    assert!(a.logs().contains("SIGTERM"), "{}", a.logs());
    a.child = None;
    for h in pending {
        let _ = h.join();
    }
    drop(net);
    // A restart on the same cache resumes: what was verified stays.
    let net = start_agents(&s, &dp.url(), std::slice::from_ref(&cache), "", "");
    let results = wait_all(start_all(&[&net.agents[0]], "big"), &[&net.agents[0]]);
    assert_eq!(results.len(), 1);
    let wan = metric(&dp.addr, PAYLOAD) - p0;
    eprintln!("single run {single} B; with a SIGTERM and a restart {wan} B");
    assert!(
        wan as f64 <= 1.05 * single as f64,
        "after a restart the DP sent {wan} B in all, one run {single} B"
    );
    verify_cache(&s, &net.agents[0]);
}
