//! The branch agent's settings: the `[agent]` section of the configuration
//! file, and what the daemon's transfers derive from it.

use peerdelta_protocol::fetchplan::RequestLimits;
use peerdelta_protocol::manifest::PackageName;
use serde::Deserialize;

use crate::get::GetOptions;

/// The `[agent]` section: the daemon (`peerdelta agent run`).
///
/// ```toml
/// [agent]
/// name = "branch-12-pc-3"                 # in logs and status (default: host name)
/// listen = ["/ip4/0.0.0.0/tcp/7118"]      # libp2p listen addresses
/// peers = ["/ip4/10.1.2.3/tcp/7118"]      # static peers, for networks without multicast
/// mdns = true                             # discover peers on the LAN
/// psk = "64 hex digits"                   # subnet key: only agents holding it connect
/// weight = 1                              # election weight; 0 = never master, never serves
/// control = "127.0.0.1:7117"              # loopback control API (get, status, metrics)
/// heartbeat_ms = 500
/// master_timeout_ms = 3000                # a silent master is replaced after this
/// settle_ms = 1500
/// reelect_secs = 300                      # periodic re-election
/// concurrency = 4                         # DP requests in flight (master)
/// request_bytes = 4194304                 # most bytes in one DP request
/// upload_slots = 6                        # peers' range requests served at once; more: "busy"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentFile {
    /// Name in logs, status and reports.
    pub name: Option<String>,
    /// libp2p listen addresses.
    pub listen: Vec<String>,
    /// Static peers.
    pub peers: Vec<String>,
    /// mDNS discovery.
    pub mdns: bool,
    /// Subnet pre-shared key (64 hex digits).
    pub psk: Option<String>,
    /// Election weight.
    pub weight: u32,
    /// Control API address (loopback only).
    pub control: String,
    /// Election heartbeat.
    pub heartbeat_ms: u64,
    /// Master loss timeout.
    pub master_timeout_ms: u64,
    /// Settle time before the first claim.
    pub settle_ms: u64,
    /// Periodic re-election.
    pub reelect_secs: u64,
    /// DP requests in flight at once (master).
    pub concurrency: usize,
    /// Most bytes in one DP request.
    pub request_bytes: u64,
    /// Range requests from peers answered at once; more get "busy", so
    /// new blocks spread from the first peers that got them.
    pub upload_slots: u32,
}

/// The control API's default address.
pub const DEFAULT_CONTROL: &str = "127.0.0.1:7117";

impl Default for AgentFile {
    fn default() -> Self {
        let t = peerdelta_protocol::election::Timing::default();
        AgentFile {
            name: None,
            listen: vec!["/ip4/0.0.0.0/tcp/7118".into()],
            peers: Vec::new(),
            mdns: true,
            psk: None,
            weight: 1,
            control: DEFAULT_CONTROL.into(),
            heartbeat_ms: t.heartbeat_ms,
            master_timeout_ms: t.master_timeout_ms,
            settle_ms: t.settle_ms,
            reelect_secs: t.reelect_ms / 1000,
            concurrency: 4,
            request_bytes: 4 << 20,
            upload_slots: peerdelta_protocol::swarm::DEFAULT_UPLOAD_SLOTS,
        }
    }
}

/// The options of the daemon's transfers (package and version are set per transfer).
pub fn transfer_options(agent: &AgentFile, name: &str) -> anyhow::Result<GetOptions> {
    Ok(GetOptions {
        package: PackageName::new("placeholder").map_err(|e| anyhow::anyhow!("{e}"))?,
        version: None,
        out: None,
        link: false,
        force: false,
        concurrency: agent.concurrency.clamp(1, 64),
        limits: RequestLimits {
            max_ranges: peerdelta_protocol::fetchplan::MAX_RANGES_PER_REQUEST,
            max_bytes: agent.request_bytes.max(16 << 10),
        },
        progress: false,
        agent: name.to_owned(),
        report: true,
        dp_give_up: None,
    })
}

/// Hostname, for status reports.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "agent".into())
}
