//! The JSON report of a run. `result` is deterministic (the same scenario
//! and seed give the same bytes); `run` holds the wall-clock figures.

use serde::Serialize;

use crate::agent::Sources;
use crate::sim::{BranchOutcome, Outcome};

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was simulated and what came out (deterministic).
    pub result: RunResult,
    /// How the simulation itself ran.
    pub run: RunFigures,
}

/// Deterministic results.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Agents simulated (joins included).
    pub agents: u64,
    /// Branches.
    pub branches: u64,
    /// The update's size.
    pub size_bytes: u64,
    /// Of which only the DP has (needs-list origin runs).
    pub origin_bytes: u64,
    /// Simulated seconds until the last event.
    pub sim_seconds: f64,
    /// Events processed.
    pub events: u64,
    /// WAN bytes, all branches.
    pub wan_bytes: u64,
    /// WAN bytes per branch: min, mean, max.
    pub wan_bytes_per_branch: [f64; 3],
    /// Bytes by source.
    pub sources: Sources,
    /// Agents that finished, and alive ones that did not.
    pub finished: u64,
    /// Alive agents that asked and did not finish.
    pub unfinished: u64,
    /// Seconds from asking to having the content: p50, p90, p99, max.
    pub completion_s: [f64; 4],
    /// Masters elected, all branches.
    pub elections: u64,
    /// Of which re-elections.
    pub reelections: u64,
    /// Bans of rogue peers by honest agents.
    pub rogue_bans: u64,
    /// Bans of honest peers (crashed ones: their claims were not backed).
    pub honest_bans: u64,
    /// Times a non-master used the DP because its subnet stalled.
    pub stall_fallbacks: u64,
    /// Transient DP errors waited out.
    pub dp_errors: u64,
    /// Per branch.
    pub per_branch: Vec<BranchOutcome>,
    /// Broken invariants (a run with any fails).
    pub violations: Vec<String>,
}

/// Wall-clock figures.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    /// Wall seconds of the simulation.
    pub wall_seconds: f64,
    /// Events per wall second.
    pub events_per_s: f64,
    /// Peak resident memory, bytes (Linux), if known.
    pub peak_rss_bytes: Option<u64>,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Peak resident set size of this process (Linux `/proc/self/status`).
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl RunResult {
    /// Summarises an outcome.
    pub fn of(scenario: &str, seed: u64, o: &Outcome) -> RunResult {
        let wan: Vec<u64> = o.branches.iter().map(|b| b.wan_bytes).collect();
        let total: u64 = wan.iter().sum();
        let n = wan.len().max(1) as f64;
        let elections: u64 = o.branches.iter().map(|b| b.elections).sum();
        let elected_branches = o.branches.iter().filter(|b| b.elections > 0).count() as u64;
        let c = &o.completion_s;
        RunResult {
            scenario: scenario.to_owned(),
            seed,
            agents: o.agents,
            branches: o.branches.len() as u64,
            size_bytes: o.size,
            origin_bytes: o.origin_bytes,
            sim_seconds: o.sim_seconds,
            events: o.events,
            wan_bytes: total,
            wan_bytes_per_branch: [
                wan.iter().copied().min().unwrap_or(0) as f64,
                total as f64 / n,
                wan.iter().copied().max().unwrap_or(0) as f64,
            ],
            sources: o.sources,
            finished: c.len() as u64,
            unfinished: o.unfinished,
            completion_s: [
                quantile(c, 0.5),
                quantile(c, 0.9),
                quantile(c, 0.99),
                c.last().copied().unwrap_or(0.0),
            ],
            elections,
            reelections: elections - elected_branches,
            rogue_bans: o.trace.rogue_bans,
            honest_bans: o.trace.honest_bans,
            stall_fallbacks: o.stall_fallbacks,
            dp_errors: o.trace.dp_errors,
            per_branch: o.branches.clone(),
            violations: o.trace.violations.clone(),
        }
    }

    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        let gb = |b: f64| b / 1e9;
        format!(
            "{}: {} agents in {} branches, {:.2} GB update ({:.3} GB from the DP per branch at best)\n\
             WAN: {:.3} GB in all; per branch min {:.3} / mean {:.3} / max {:.3} GB\n\
             sources: local {:.2} GB, alt-copy {:.2} GB, LAN peers {:.2} GB, DP {:.3} GB\n\
             finished {} (unfinished {}); completion p50 {:.1} s, p90 {:.1} s, p99 {:.1} s, max {:.1} s\n\
             elections {} (re-elections {}); bans: {} rogue, {} honest; stall fallbacks {}; DP errors {}\n\
             simulated {:.1} s, {} events; invariants: {}",
            self.scenario,
            self.agents,
            self.branches,
            gb(self.size_bytes as f64),
            gb(self.origin_bytes as f64),
            gb(self.wan_bytes as f64),
            gb(self.wan_bytes_per_branch[0]),
            gb(self.wan_bytes_per_branch[1]),
            gb(self.wan_bytes_per_branch[2]),
            gb(self.sources.local as f64),
            gb(self.sources.alt_copy as f64),
            gb(self.sources.lan_peer as f64),
            gb(self.sources.dp as f64),
            self.finished,
            self.unfinished,
            self.completion_s[0],
            self.completion_s[1],
            self.completion_s[2],
            self.completion_s[3],
            self.elections,
            self.reelections,
            self.rogue_bans,
            self.honest_bans,
            self.stall_fallbacks,
            self.dp_errors,
            self.sim_seconds,
            self.events,
            if self.violations.is_empty() {
                "all held".to_owned()
            } else {
                format!("{} BROKEN", self.violations.len())
            }
        )
    }
}
