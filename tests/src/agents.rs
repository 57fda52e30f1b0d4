//! Agent daemons for tests: `peerdelta agent run` processes on loopback (or
//! in network namespaces) with explicit peer lists, and what tests ask them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::library::{Series, key_file, metric};
use crate::nginx::free_port;
use crate::{DpServer, netns, peerdelta, run_ok};

/// A running agent daemon, killed when dropped.
pub struct Agent {
    pub name: String,
    pub child: Option<Child>,
    pub control: String,
    pub cache: PathBuf,
    pub log: PathBuf,
    /// The network namespace it runs in (its control API is there).
    pub netns: Option<String>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Agent {
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A `peerdelta` command run where this agent runs.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let c = peerdelta(args);
        match &self.netns {
            Some(ns) => netns::exec(ns, &c),
            None => c,
        }
    }

    pub fn status(&self) -> serde_json::Value {
        let out = run_ok(&mut self.cmd(&["status", "--json", "--control", &self.control]));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON {out:?}: {e}"))
    }

    /// Named peers in its status.
    pub fn peers_seen(&self) -> usize {
        self.cmd(&["status", "--json", "--control", &self.control])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .map_or(0, |s| {
                s["peers"].as_array().map_or(0, |p| {
                    p.iter()
                        .filter(|p| !p["name"].as_str().unwrap_or("").is_empty())
                        .count()
                })
            })
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct Subnet {
    /// The agents.
    pub agents: Vec<Agent>,
}

/// Starts `n` agents whose caches are `caches`, each listing all the others;
/// `extra` goes at the top of the config, `agent_extra` in `[agent]`.
pub fn start_agents(
    s: &Series,
    url: &str,
    caches: &[PathBuf],
    extra: &str,
    agent_extra: &str,
) -> Subnet {
    start_agents_with(s, url, caches, extra, agent_extra, |_| None)
}

/// As [`start_agents`], with a `PEERDELTA_FAULT` per agent.
pub fn start_agents_with(
    s: &Series,
    url: &str,
    caches: &[PathBuf],
    extra: &str,
    agent_extra: &str,
    fault: impl Fn(usize) -> Option<&'static str>,
) -> Subnet {
    start_subnet(s, url, caches, extra, agent_extra, fault, &[])
}

/// As [`start_agents`], each agent also listing the peers at `also`
/// (multiaddrs; a rogue peer, say).
pub fn start_agents_also(s: &Series, url: &str, caches: &[PathBuf], also: &[String]) -> Subnet {
    start_subnet(s, url, caches, "", "", |_| None, also)
}

fn start_subnet(
    s: &Series,
    url: &str,
    caches: &[PathBuf],
    extra: &str,
    agent_extra: &str,
    fault: impl Fn(usize) -> Option<&'static str>,
    also: &[String],
) -> Subnet {
    let ports: Vec<u16> = caches.iter().map(|_| free_port()).collect();
    let mut agents = Vec::new();
    for (i, cache) in caches.iter().enumerate() {
        let control = format!("127.0.0.1:{}", free_port());
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("\"/ip4/127.0.0.1/tcp/{p}\""))
            .chain(also.iter().map(|a| format!("{a:?}")))
            .collect();
        let net = format!(
            "listen = [\"/ip4/127.0.0.1/tcp/{port}\"]\npeers = [{peers}]\nmdns = false\n{agent_extra}",
            port = ports[i],
            peers = peers.join(", "),
        );
        agents.push(spawn_agent(
            s,
            url,
            i,
            cache,
            &control,
            extra,
            &net,
            None,
            fault(i),
        ));
    }
    wait_for_peers(&agents);
    Subnet { agents }
}

/// Starts agent `i` (`a{i}`): `extra` at the top of its config, `net` in `[agent]`.
#[allow(clippy::too_many_arguments)]
pub fn spawn_agent(
    s: &Series,
    url: &str,
    i: usize,
    cache: &Path,
    control: &str,
    extra: &str,
    net: &str,
    netns: Option<&str>,
    fault: Option<&str>,
) -> Agent {
    let cfg = s.dir.path().join(format!("agent{i}-{}.toml", free_port()));
    let log = cfg.with_extension("log");
    fs::write(
        &cfg,
        format!(
            "cache = {cache:?}\ndp = \"{url}\"\ndp_key = {key:?}\n{extra}\n[agent]\nname = \"a{i}\"\ncontrol = \"{control}\"\nheartbeat_ms = 200\nmaster_timeout_ms = 1500\nsettle_ms = 800\n{net}",
            key = key_file(&s.lib),
        ),
    )
    .unwrap();
    let mut cmd = peerdelta(["agent", "run", "--config"]);
    cmd.arg(&cfg).env(
        "RUST_LOG",
        std::env::var("AGENT_LOG").unwrap_or_else(|_| "info,libp2p=warn".into()),
    );
    if let Some(f) = fault {
        cmd.env("PEERDELTA_FAULT", f);
    }
    let mut cmd = match netns {
        Some(ns) => netns::exec(ns, &cmd),
        None => cmd,
    };
    let child = cmd
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Agent {
        name: format!("a{i}"),
        child: Some(child),
        control: control.to_owned(),
        cache: cache.to_owned(),
        log,
        netns: netns.map(str::to_owned),
    }
}

/// Waits for the control APIs and for everyone to see everyone.
pub fn wait_for_peers(agents: &[Agent]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for a in agents {
        let answers = || {
            a.cmd(&["status", "--json", "--control", &a.control])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        while !answers() || a.peers_seen() < agents.len() - 1 {
            assert!(
                Instant::now() < deadline,
                "{} never saw its peers:\n{}",
                a.name,
                a.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A standalone `get` of `version` into `cache`.
pub fn get_alone(s: &Series, url: &str, cache: &Path, version: u64) {
    get_alone_pkg(s, url, cache, "app", version)
}

pub fn get_alone_pkg(s: &Series, url: &str, cache: &Path, package: &str, version: u64) {
    run_ok(
        peerdelta([
            "get",
            "--no-report",
            "--quiet",
            "--package",
            package,
            "--dp",
            url,
        ])
        .arg("--version")
        .arg(version.to_string())
        .arg("--dp-key")
        .arg(key_file(&s.lib))
        .arg("--cache")
        .arg(cache),
    );
}

/// Asks every agent for v2 of `app` at once (`peerdelta get --wait` through
/// each daemon) and waits for all; returns each one's JSON answer.
pub fn get_all(agents: &[&Agent]) -> Vec<serde_json::Value> {
    wait_all(start_all(agents, "app"), agents)
}

pub type Pending = Vec<std::thread::JoinHandle<(bool, String, String)>>;

pub fn start_all(agents: &[&Agent], package: &str) -> Pending {
    agents
        .iter()
        .map(|a| {
            let mut cmd = a.cmd(&[
                "get",
                "--package",
                package,
                "--version",
                "2",
                "--wait",
                "--json",
                "--control",
                &a.control,
            ]);
            std::thread::spawn(move || {
                let out = cmd.output().unwrap();
                (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
        })
        .collect()
}

pub fn wait_all(handles: Pending, agents: &[&Agent]) -> Vec<serde_json::Value> {
    handles
        .into_iter()
        .zip(agents)
        .map(|(h, a)| {
            let (ok, out, err) = h.join().unwrap();
            assert!(ok, "{}: get failed: {err}\n{}", a.name, a.logs());
            serde_json::from_str(&out).unwrap()
        })
        .collect()
}

/// The DP's counter of payload bytes sent.
pub const PAYLOAD: &str = "peerdelta_dp_payload_bytes_total";

/// DP payload bytes of one agent alone getting v2 of `package` holding v1:
/// what a subnet is measured against.
pub fn single_run_pkg(s: &Series, dp: &DpServer, package: &str) -> u64 {
    let cache = s.dir.path().join(format!("single-{package}"));
    get_alone_pkg(s, &dp.url(), &cache, package, 1);
    let p0 = metric(&dp.addr, PAYLOAD);
    get_alone_pkg(s, &dp.url(), &cache, package, 2);
    metric(&dp.addr, PAYLOAD) - p0
}

/// The agent's cache lists v2 and verifies.
pub fn verify_cache(s: &Series, a: &Agent) {
    let out = run_ok(
        peerdelta(["cache", "list", "--json", "--cache"])
            .arg(&a.cache)
            .arg("--dp-key")
            .arg(key_file(&s.lib)),
    );
    assert!(
        out.contains("\"version\": 2") || out.contains("\"version\":2"),
        "{}: {out}",
        a.name
    );
    run_ok(
        peerdelta(["cache", "verify", "--cache"])
            .arg(&a.cache)
            .arg("--dp-key")
            .arg(key_file(&s.lib)),
    );
}
