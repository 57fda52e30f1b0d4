//! What the daemon shows: one serde type the daemon serves at
//! `/v1/status` and `/v1/jobs/…`, and the CLI reads back (`peerdelta status`,
//! `peerdelta get --wait`), so both agree on every field.

use peerdelta_protocol::election::Rank;
use serde::{Deserialize, Serialize};

use crate::get::GetSummary;

/// This agent's role in one version's election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// It fetches from the DP for the subnet.
    Master,
    /// It asked for the version and takes it from the subnet.
    Peer,
    /// It holds the version and answers (it did not ask).
    Holder,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Master => "master",
            Role::Peer => "peer",
            Role::Holder => "holder",
        })
    }
}

/// Where one version's transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Electing, or waiting for the subnet.
    Waiting,
    /// Transferring.
    Running,
    /// In the cache.
    Done,
    /// Failed (asking again retries).
    Failed,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Waiting => "waiting",
            Phase::Running => "running",
            Phase::Done => "done",
            Phase::Failed => "failed",
        })
    }
}

/// One election and transfer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    /// Package.
    pub package: String,
    /// Version.
    pub version: u64,
    /// Our role.
    pub role: Role,
    /// The master as we see it (its name).
    pub master: Option<String>,
    /// Where the transfer is.
    pub phase: Phase,
    /// Our rank.
    pub rank: Rank,
    /// Masters seen for this version.
    pub elections: u64,
    /// Election log: candidates, ranks, winner, reason (the last 50).
    pub log: Vec<String>,
    /// The last error.
    pub error: Option<String>,
    /// The summary once done.
    pub summary: Option<GetSummary>,
    /// Bytes of the target held (cached or verified in progress).
    pub held_bytes: u64,
    /// Bytes of the target.
    pub total_bytes: u64,
    /// Peers banned in this transfer, with why.
    pub banned: Vec<String>,
    /// Times the subnet stalled and this agent used the DP itself.
    pub stall_fallbacks: u64,
}

/// A peer as its announcements describe it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    /// Peer id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its addresses.
    pub addrs: Vec<String>,
    /// Its election weight.
    pub weight: u32,
    /// Why it cannot work with us.
    pub incompatible: Option<String>,
    /// Milliseconds since it was last heard.
    pub last_heard_ms: Option<u64>,
}

/// The cache, briefly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheView {
    /// Its directory.
    pub root: String,
    /// Versions held, "package vN".
    pub versions: Vec<String>,
}

/// Everything `peerdelta status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    /// This agent's name.
    pub agent: String,
    /// Its peer id.
    pub peer_id: String,
    /// Addresses it listens on.
    pub listening: Vec<String>,
    /// Connected peers.
    pub peers: Vec<PeerView>,
    /// Elections and transfers.
    pub jobs: Vec<JobView>,
    /// The cache.
    pub cache: CacheView,
    /// The control API's token file (readable by the daemon's user only).
    pub control_token_file: String,
    /// The DP key it pins (hex).
    pub dp_key: String,
    /// Bytes received from the DP.
    pub wan_bytes: u64,
    /// Bytes received from peers.
    pub lan_bytes_in: u64,
    /// Bytes sent to peers.
    pub lan_bytes_out: u64,
    /// Masters elected.
    pub elections: u64,
    /// Of which after a previous one.
    pub reelections: u64,
    /// Peers banned.
    pub bans: u64,
}
