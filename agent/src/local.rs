//! A DP and a branch subnet of agent daemons in one process, on loopback:
//! what `peerdelta demo` shows and the LAN fan-out benchmark measures. The
//! daemons are the real ones (libp2p over TCP, elections, LAN transfers);
//! only the machines are shared.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ed25519_dalek::VerifyingKey;
use peerdelta_protocol::manifest::PackageName;

use crate::config::ConfigFile;
use peerdelta_branch::cache::Cache;
use peerdelta_branch::client::{DpClient, RetryPolicy};
use peerdelta_branch::settings::AgentFile;
use peerdelta_branch::subnet::view::{JobView, Phase, Role};
use peerdelta_branch::subnet::{Daemon, DaemonConfig};
use peerdelta_dp::library::Library;

/// A DP served on a loopback port until dropped.
pub struct LocalDp {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    metrics: DpClient,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl LocalDp {
    /// Serves `lib` on a free loopback port.
    pub async fn start(lib: &Library) -> anyhow::Result<LocalDp> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the DP's port")?;
        let url = format!("http://{}", listener.local_addr().context("DP address")?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(peerdelta_dp::serve::serve_on(
            lib.clone(),
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        let metrics = DpClient::new(
            &url,
            Default::default(),
            RetryPolicy {
                give_up_after: Duration::from_secs(10),
            },
        )?;
        Ok(LocalDp {
            url,
            metrics,
            stop: Some(stop),
        })
    }

    /// File bytes the DP has sent so far, from its own Prometheus counters.
    pub async fn payload_bytes(&self) -> anyhow::Result<u64> {
        let body = self
            .metrics
            .get_bytes("metrics", 1 << 20)
            .await
            .context("reading the DP's metrics")?;
        let name = "peerdelta_dp_payload_bytes_total";
        Ok(String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum())
    }
}

impl Drop for LocalDp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A free loopback TCP port.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr().context("reading the port")?.port())
}

/// Starts `n` daemons (`agent0` …) with caches `dir/cache-agentI`, each
/// listing the others, WAN capped at `max_rate` (e.g. "25 MiB/s") if given;
/// returns once every one has heard from all the others.
pub async fn start_branch(
    dir: &Path,
    dp_url: &str,
    key: VerifyingKey,
    n: usize,
    max_rate: Option<&str>,
) -> anyhow::Result<Vec<Daemon>> {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
    let mut agents: Vec<Daemon> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let name = format!("agent{i}");
        let cfg = AgentFile {
            name: Some(name.clone()),
            listen: vec![format!("/ip4/127.0.0.1/tcp/{port}")],
            peers: ports
                .iter()
                .filter(|p| *p != port)
                .map(|p| format!("/ip4/127.0.0.1/tcp/{p}"))
                .collect(),
            mdns: false,
            heartbeat_ms: 200,
            master_timeout_ms: 1500,
            settle_ms: 800,
            ..AgentFile::default()
        };
        let client = DpClient::new(
            dp_url,
            ConfigFile::default().governor(max_rate, false)?,
            RetryPolicy {
                give_up_after: Duration::from_secs(30),
            },
        )?;
        let mut get = peerdelta_branch::settings::transfer_options(&cfg, &name)?;
        get.report = false;
        agents.push(Daemon::start(DaemonConfig {
            name,
            cache: Cache::open(&dir.join(format!("cache-agent{i}")))?,
            key,
            client,
            agent: cfg,
            get,
        })?);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = true;
        for a in &agents {
            all &= a.peers_heard().await + 1 >= n;
        }
        if all {
            break;
        }
        if Instant::now() > deadline {
            bail!("the agents did not find each other within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(agents)
}

/// Asks every agent for `package` v`version` at once and waits until all
/// have it; returns their views of the job and the time to all-complete.
pub async fn roll_out(
    agents: &[Daemon],
    package: &PackageName,
    version: u64,
    timeout: Duration,
) -> anyhow::Result<(Vec<JobView>, Duration)> {
    let t = Instant::now();
    for a in agents {
        a.request(package.clone(), version).await;
    }
    loop {
        let mut views: Vec<JobView> = Vec::new();
        for a in agents {
            views.extend(a.job(package, version).await);
        }
        if let Some(f) = views.iter().find(|j| j.phase == Phase::Failed) {
            bail!(
                "an agent failed to get {package} v{version}: {}",
                f.error.clone().unwrap_or_default()
            );
        }
        if views.len() == agents.len() && views.iter().all(|j| j.phase == Phase::Done) {
            return Ok((views, t.elapsed()));
        }
        if t.elapsed() > timeout {
            bail!(
                "{package} v{version} did not reach every agent within {} s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The master's name as the agents report it.
pub fn master_of(views: &[JobView]) -> String {
    views
        .iter()
        .find(|j| j.role == Role::Master)
        .and_then(|j| j.master.clone())
        .map(|m| m.trim_end_matches(" (this agent)").to_owned())
        .unwrap_or_else(|| "?".into())
}

/// Checks every agent's cache (contents against their hashes).
pub fn verify_caches(dir: &Path, agents: &[Daemon]) -> anyhow::Result<()> {
    for (i, a) in agents.iter().enumerate() {
        let c = Cache::open(&dir.join(format!("cache-agent{i}")))?;
        let r = c.verify(a.key())?;
        if !r.quarantined.is_empty() || !r.dropped_versions.is_empty() {
            bail!("agent{i}'s cache does not verify: {r:?}");
        }
    }
    Ok(())
}
