//! Scenarios: what is simulated, read from TOML.
//!
//! ```toml
//! name = "one branch, master crash"
//! seed = 1
//! limit_s = 3600                   # simulated time limit
//!
//! [dp]
//! uplink_mbps = 10000
//! outages = [{ start_s = 30, end_s = 90 }]
//!
//! [package]                        # synthetic content ...
//! size_mib = 4096
//! changed = 0.03                   # fraction of the file that is new
//! regions = 200                    # changed regions (needs-list origin runs)
//! uniform = false                  # equal sizes; default: exponential sizes
//! unit_kib = 1024                  # largest origin unit the scheduler moves
//! seed_unit_kib = 16384            # largest seed unit (synthetic)
//! behind_changed = 0.2             # fraction an agent 6+ versions behind lacks
//! manifest_bytes = 20000
//! needs_bytes = 30000
//! # ... or from a real pair of files (publish-like pre-pass via `protocol`):
//! # old = "v1.bin"
//! # new = "v2.bin"
//!
//! [timing]                         # protocol::election::Timing and protocol::transfer::Config
//! heartbeat_ms = 500
//! master_timeout_ms = 3000
//! settle_ms = 1500
//! reelect_s = 300
//! dp_concurrency = 4               # DP requests in flight (master, or a stalled peer)
//! dp_request_kib = 4096            # most bytes in one DP request
//! lan_concurrency = 8              # any agent: LAN requests in flight
//! upload_slots = 6                 # LAN requests answered at once; more: "busy"
//! coverage_refresh_ms = 10000      # coverage asked again without news for this long
//! stall_s = 60                     # a non-master without progress uses the DP after this
//!
//! [[branches]]                     # a group of identical branches
//! count = 1
//! agents = 50
//! wan_mbps = 100
//! wan_latency_ms = 20
//! wan_loss = 0.0
//! lan_mbps = 1000
//! lan_latency_ms = 0.2
//! start_spread_s = 0               # agents ask within this window
//! base = 1.0                       # fraction holding a base in the window
//! behind = 0.0                     # fraction 6+ versions behind
//! target = 0.0                     # fraction of branches where one agent already holds the target
//! weight0 = 0.0                    # fraction with election weight 0
//!
//! [[faults]]
//! kind = "master_crash"            # master_crash | agent_crash | agent_leave | agent_join | dp_outage | link_cut | rogue
//! at_fraction = 0.3                # of the master's DP bytes (master_crash), or
//! # at_s = 12.5
//! branch = 0                       # index; omitted: every branch
//! # end_s = 60                     # link_cut, dp_outage: when it is back
//! # behaviour = "silent_master"    # rogue: silent_master | not_found | busy | slow_reader | flapping
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a scenario cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Unreadable file.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML of this shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value out of range.
    #[error("{0}")]
    Invalid(String),
}

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name in reports.
    pub name: String,
    /// Default seed (the command line may override it).
    #[serde(default = "one")]
    pub seed: u64,
    /// Simulated time limit in seconds.
    #[serde(default = "hour")]
    pub limit_s: f64,
    /// The DP.
    #[serde(default)]
    pub dp: Dp,
    /// The package update.
    pub package: Package,
    /// Election timing and request concurrency.
    #[serde(default)]
    pub timing: TimingSpec,
    /// Groups of branches.
    pub branches: Vec<BranchGroup>,
    /// Scheduled faults.
    #[serde(default)]
    pub faults: Vec<Fault>,
}

fn one() -> u64 {
    1
}
fn hour() -> f64 {
    3600.0
}

/// The DP and its uplink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dp {
    /// Uplink in Mbit/s, shared by every branch.
    pub uplink_mbps: f64,
    /// Windows when the DP answers nothing.
    pub outages: Vec<Window>,
}

impl Default for Dp {
    fn default() -> Self {
        Dp {
            uplink_mbps: 10_000.0,
            outages: Vec::new(),
        }
    }
}

/// A time window.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Start, seconds.
    pub start_s: f64,
    /// End, seconds.
    pub end_s: f64,
}

/// The content of the update.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    /// Synthetic: the file's size in MiB.
    pub size_mib: Option<f64>,
    /// Synthetic: fraction of the new file that must come from the DP.
    #[serde(default = "changed")]
    pub changed: f64,
    /// Synthetic: how many changed regions (origin runs before splitting).
    #[serde(default = "regions")]
    pub regions: u64,
    /// Synthetic: equal region and gap sizes (default: exponentially
    /// distributed, drawn with the run's seed).
    #[serde(default)]
    pub uniform: bool,
    /// Largest origin unit the scheduler moves, KiB.
    #[serde(default = "unit_kib")]
    pub unit_kib: u64,
    /// Synthetic: largest seed unit, KiB (seed runs are copied locally or
    /// alt-copied in large requests; coarser units keep big runs fast).
    #[serde(default = "seed_unit_kib")]
    pub seed_unit_kib: u64,
    /// Fraction of the file an agent 6+ versions behind lacks (client-side RDC).
    #[serde(default = "behind_changed")]
    pub behind_changed: f64,
    /// Signed manifest bytes.
    #[serde(default = "manifest_bytes")]
    pub manifest_bytes: u64,
    /// Needs-list bytes.
    #[serde(default = "needs_bytes")]
    pub needs_bytes: u64,
    /// Real content: the old version's file (relative to the scenario file).
    pub old: Option<PathBuf>,
    /// Real content: the new version's file.
    pub new: Option<PathBuf>,
}

fn changed() -> f64 {
    0.03
}
fn regions() -> u64 {
    200
}
fn unit_kib() -> u64 {
    1024
}
fn seed_unit_kib() -> u64 {
    16 * 1024
}
fn behind_changed() -> f64 {
    0.2
}
fn manifest_bytes() -> u64 {
    20_000
}
fn needs_bytes() -> u64 {
    30_000
}

/// Election timing, transfer timing and concurrency.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimingSpec {
    /// Heartbeat.
    pub heartbeat_ms: u64,
    /// A silent peer is lost after this.
    pub master_timeout_ms: u64,
    /// Wait before the first claim.
    pub settle_ms: u64,
    /// Periodic re-election, seconds.
    pub reelect_s: u64,
    /// DP requests in flight.
    pub dp_concurrency: u32,
    /// Most bytes in one DP request, KiB (an agent's `request_bytes`).
    pub dp_request_kib: u64,
    /// LAN requests in flight (per agent).
    pub lan_concurrency: u32,
    /// LAN requests an agent answers at once; more get "busy" (0: no limit).
    pub upload_slots: u32,
    /// A peer's coverage is asked again when nothing was heard of it for
    /// this long.
    pub coverage_refresh_ms: u64,
    /// A non-master without progress for this long uses the DP itself.
    pub stall_s: u64,
}

impl Default for TimingSpec {
    fn default() -> Self {
        let t = peerdelta_protocol::election::Timing::default();
        let c = peerdelta_protocol::transfer::Config::default();
        TimingSpec {
            heartbeat_ms: t.heartbeat_ms,
            master_timeout_ms: t.master_timeout_ms,
            settle_ms: t.settle_ms,
            reelect_s: t.reelect_ms / 1000,
            dp_concurrency: c.dp_in_flight as u32,
            dp_request_kib: c.dp_request_bytes >> 10,
            lan_concurrency: c.lan_in_flight as u32,
            upload_slots: peerdelta_protocol::swarm::DEFAULT_UPLOAD_SLOTS,
            coverage_refresh_ms: c.coverage_refresh_ms,
            stall_s: c.stall_ms / 1000,
        }
    }
}

/// `count` identical branches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchGroup {
    /// How many.
    #[serde(default = "one")]
    pub count: u64,
    /// Agents per branch.
    pub agents: u32,
    /// WAN link, Mbit/s (shared by every flow of the branch).
    #[serde(default = "wan_mbps")]
    pub wan_mbps: f64,
    /// WAN one-way latency, ms.
    #[serde(default = "wan_latency")]
    pub wan_latency_ms: f64,
    /// WAN packet loss (0..1): caps a flow's TCP throughput (Mathis et al.).
    #[serde(default)]
    pub wan_loss: f64,
    /// LAN port speed, Mbit/s.
    #[serde(default = "lan_mbps")]
    pub lan_mbps: f64,
    /// LAN latency, ms.
    #[serde(default = "lan_latency")]
    pub lan_latency_ms: f64,
    /// Agents ask for the update within this many seconds of the start.
    #[serde(default)]
    pub start_spread_s: f64,
    /// Fraction of agents holding a base version within the window.
    #[serde(default = "full")]
    pub base: f64,
    /// Fraction of agents 6+ versions behind.
    #[serde(default)]
    pub behind: f64,
    /// Fraction of branches where one agent already holds the target.
    #[serde(default)]
    pub target: f64,
    /// Fraction of agents with election weight 0.
    #[serde(default)]
    pub weight0: f64,
    /// Mean uptime in seconds (exponential): each agent shuts down after
    /// its uptime; 0 keeps every agent up.
    #[serde(default)]
    pub uptime_s: f64,
}

fn wan_mbps() -> f64 {
    100.0
}
fn wan_latency() -> f64 {
    20.0
}
fn lan_mbps() -> f64 {
    1000.0
}
fn lan_latency() -> f64 {
    0.2
}
fn full() -> f64 {
    1.0
}

/// A scheduled fault.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// What happens.
    pub kind: FaultKind,
    /// When, seconds.
    pub at_s: Option<f64>,
    /// When, as a fraction of the update's origin bytes the branch has
    /// received from the DP (master crashes; as the subnet test measures it).
    pub at_fraction: Option<f64>,
    /// Which branch (index over all branches); every branch when omitted.
    pub branch: Option<u64>,
    /// How many agents (agent faults), default 1.
    #[serde(default = "one")]
    pub agents: u64,
    /// End of a window (link cut, DP outage).
    pub end_s: Option<f64>,
    /// What a rogue peer does.
    pub behaviour: Option<Misbehaviour>,
}

/// How a rogue peer misbehaves (the same five as the tests' rogue binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Misbehaviour {
    /// Announces the best rank and claims the master role; never answers.
    SilentMaster,
    /// Announces the target complete and holding everything (every
    /// heartbeat); answers every request "not found".
    NotFound,
    /// The same claims; answers every request "busy".
    Busy,
    /// Holds as many upload slots of every holder as it may, reading slowly.
    SlowReader,
    /// Announces the best rank and a claim for one second, leaves for one,
    /// again and again; answers nothing.
    Flapping,
}

/// Fault kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The branch's current master crashes.
    MasterCrash,
    /// A random agent crashes.
    AgentCrash,
    /// A random agent leaves (shuts down cleanly: peers see it go at once).
    AgentLeave,
    /// A new agent with an empty cache joins and asks for the update.
    AgentJoin,
    /// The DP answers nothing from `at_s` to `end_s`.
    DpOutage,
    /// The branch's WAN link is down from `at_s` to `end_s`.
    LinkCut,
    /// A rogue peer joins the branch (`behaviour` says what it does).
    Rogue,
}

impl Scenario {
    /// Reads and checks a scenario file; relative content paths are
    /// resolved against its directory.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut s = Scenario::parse(&text).map_err(|e| match e {
            ScenarioError::Parse { message, .. } => ScenarioError::Parse {
                path: path.to_owned(),
                message,
            },
            e => e,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for p in [&mut s.package.old, &mut s.package.new]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        Ok(s)
    }

    /// Parses and checks scenario text.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: PathBuf::from("<scenario>"),
            message: e.to_string(),
        })?;
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        if self.branches.is_empty() {
            return bad("no [[branches]]".into());
        }
        let agents = self.branches.iter().try_fold(0u64, |acc, b| {
            b.count
                .checked_mul(u64::from(b.agents))
                .and_then(|n| acc.checked_add(n))
        });
        match agents {
            Some(n) if (1..=1_000_000).contains(&n) => {}
            _ => return bad("between 1 and 1,000,000 agents in all branches".into()),
        }
        let branches: u64 = self.branches.iter().map(|b| b.count).sum();
        const YEAR_S: f64 = 366.0 * 86400.0;
        let time_ok = |t: f64| t.is_finite() && (0.0..=YEAR_S).contains(&t);
        if !time_ok(self.limit_s) || self.limit_s == 0.0 {
            return bad("limit_s: seconds, more than 0 and at most a year".into());
        }
        for w in &self.dp.outages {
            if !time_ok(w.start_s) || !time_ok(w.end_s) || w.end_s < w.start_s {
                return bad("dp.outages: start_s <= end_s, within a year".into());
            }
        }
        for (i, b) in self.branches.iter().enumerate() {
            if b.agents == 0 || b.agents > 1000 {
                return bad(format!("branches[{i}].agents: 1..=1000"));
            }
            for (name, v) in [
                ("base", b.base),
                ("behind", b.behind),
                ("target", b.target),
                ("weight0", b.weight0),
                ("wan_loss", b.wan_loss),
            ] {
                if !(0.0..=1.0).contains(&v) {
                    return bad(format!("branches[{i}].{name} = {v}: a fraction, 0..=1"));
                }
            }
            if b.base + b.behind > 1.0 {
                return bad(format!("branches[{i}]: base + behind > 1"));
            }
            if !(b.uptime_s >= 0.0 && b.uptime_s.is_finite()) {
                return bad(format!("branches[{i}].uptime_s must be >= 0"));
            }
            for (name, v) in [("wan_mbps", b.wan_mbps), ("lan_mbps", b.lan_mbps)] {
                if !(v.is_finite() && (0.001..=1e6).contains(&v)) {
                    return bad(format!("branches[{i}].{name}: 0.001 to 1,000,000"));
                }
            }
            for (name, v) in [
                ("wan_latency_ms", b.wan_latency_ms),
                ("lan_latency_ms", b.lan_latency_ms),
                ("start_spread_s", b.start_spread_s),
            ] {
                if !time_ok(v) {
                    return bad(format!("branches[{i}].{name}: 0 up to a year"));
                }
            }
        }
        if !(self.dp.uplink_mbps.is_finite() && (0.001..=1e7).contains(&self.dp.uplink_mbps)) {
            return bad("dp.uplink_mbps: 0.001 to 10,000,000".into());
        }
        let p = &self.package;
        match (p.size_mib, &p.old, &p.new) {
            (Some(s), None, None) if s > 0.0 && s <= 1024.0 * 1024.0 => {}
            (None, Some(_), Some(_)) => {}
            _ => {
                return bad(
                    "package: give size_mib (synthetic, up to 1 TiB) or old and new (real files)"
                        .into(),
                );
            }
        }
        if !(0.0..=1.0).contains(&p.changed) || !(0.0..=1.0).contains(&p.behind_changed) {
            return bad("package.changed and behind_changed are fractions".into());
        }
        if p.regions == 0 || p.regions > 1_000_000 {
            return bad("package.regions: 1..=1000000".into());
        }
        if p.unit_kib == 0
            || p.unit_kib > 64 * 1024
            || p.seed_unit_kib == 0
            || p.seed_unit_kib > 1024 * 1024
        {
            return bad("package.unit_kib: 1..=65536, seed_unit_kib: 1..=1048576".into());
        }
        let t = &self.timing;
        let ms_ok = |v: u64| (1..=86_400_000).contains(&v);
        if !ms_ok(t.heartbeat_ms)
            || !ms_ok(t.coverage_refresh_ms)
            || !ms_ok(t.master_timeout_ms)
            || t.stall_s > 86_400
            || t.settle_ms > 86_400_000
            || t.reelect_s > 86_400 * 366
            || t.dp_concurrency == 0
            || t.lan_concurrency == 0
            || !(16..=1 << 20).contains(&t.dp_request_kib)
        {
            return bad(
                "timing: heartbeat_ms, coverage_refresh_ms, master_timeout_ms 1 ms..1 day, stall_s up to a day; concurrencies positive; dp_request_kib 16..1048576"
                    .into(),
            );
        }
        for (i, f) in self.faults.iter().enumerate() {
            let when = match (f.at_s, f.at_fraction) {
                (Some(_), None) => true,
                (None, Some(x)) => f.kind == FaultKind::MasterCrash && (0.0..=1.0).contains(&x),
                _ => false,
            };
            if !when {
                return bad(format!(
                    "faults[{i}]: give at_s, or at_fraction (0..=1, master_crash only)"
                ));
            }
            if matches!(f.kind, FaultKind::DpOutage | FaultKind::LinkCut) && f.end_s.is_none() {
                return bad(format!("faults[{i}]: {:?} needs end_s", f.kind));
            }
            if (f.kind == FaultKind::Rogue) != f.behaviour.is_some() {
                return bad(format!(
                    "faults[{i}]: behaviour goes with kind = \"rogue\", and only there"
                ));
            }
            if f.at_s.is_some_and(|t| !time_ok(t))
                || f.end_s
                    .is_some_and(|t| !time_ok(t) || f.at_s.is_some_and(|a| t < a))
            {
                return bad(format!("faults[{i}]: at_s <= end_s, within a year"));
            }
            if f.branch.is_some_and(|b| b >= branches) {
                return bad(format!(
                    "faults[{i}].branch: there are {branches} branches (0..{branches})"
                ));
            }
            if f.agents == 0 || f.agents > 10_000 {
                return bad(format!("faults[{i}].agents: 1..=10000"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let s = Scenario::parse(
            "name = \"x\"\n[package]\nsize_mib = 64\n[[branches]]\nagents = 5\n[[faults]]\nkind = \"master_crash\"\nat_fraction = 0.3\n",
        )
        .unwrap();
        assert_eq!(s.branches[0].agents, 5);
        assert_eq!(s.timing.stall_s, 60);
        for bad in [
            "name = \"x\"\n[package]\nsize_mib = 64\nbranches = []\n",
            "name = \"x\"\n[package]\nsize_mib = 64\n[[branches]]\nagents = 5\nbase = 2\n",
            "name = \"x\"\n[package]\n[[branches]]\nagents = 5\n",
            "name = \"x\"\n[package]\nsize_mib = 1\n[[branches]]\nagents = 5\n[[faults]]\nkind = \"link_cut\"\nat_s = 1\n",
            "name = \"x\"\n[package]\nsize_mib = 1\n[[branches]]\nagents = 5\nsurprise = 1\n",
            "name = \"x\"\n[package]\nsize_mib = 1\n[[branches]]\nagents = 5\n[[faults]]\nkind = \"rogue\"\nat_s = 1\n",
            "name = \"x\"\n[package]\nsize_mib = 1\n[[branches]]\nagents = 5\n[[faults]]\nkind = \"agent_crash\"\nat_s = 1\nbehaviour = \"busy\"\n",
        ] {
            assert!(Scenario::parse(bad).is_err(), "{bad}");
        }
    }
}
