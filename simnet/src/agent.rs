//! A simulated agent: what it holds, its election and transfer (the
//! protocol's state machines, as the daemon runs them), and what it has
//! received from where.

use peerdelta_protocol::election::{Election, Rank};
use peerdelta_protocol::rangeset::RangeSet;
use peerdelta_protocol::transfer::Transfer;

use crate::link::Us;
use crate::scenario::Misbehaviour;

/// What an agent held when the update started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// A base version within the window (needs lists exist).
    Base,
    /// A version 6+ behind (client-side RDC when master).
    Old,
    /// Nothing.
    Nothing,
    /// The target itself.
    Target,
}

/// Bytes by source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Sources {
    /// Seed runs from the agent's own base.
    pub local: u64,
    /// Seed runs alt-copied from a peer's base.
    pub alt_copy: u64,
    /// Target bytes from a peer.
    pub lan_peer: u64,
    /// From the DP (contents, manifest and needs lists).
    pub dp: u64,
}

impl Sources {
    /// Adds another agent's.
    pub fn add(&mut self, o: &Sources) {
        self.local += o.local;
        self.alt_copy += o.alt_copy;
        self.lan_peer += o.lan_peer;
        self.dp += o.dp;
    }
}

/// A DP response on its way: when the link carries it, for accounting a
/// receiver that dies mid-way.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    /// The delivery it belongs to.
    pub slot: u32,
    /// The link starts carrying it.
    pub start: Us,
    /// The link is done with it.
    pub end: Us,
    /// Bytes.
    pub len: u64,
    /// The second its bytes were counted in.
    pub sec: usize,
}

/// One simulated agent (or rogue peer).
#[derive(Debug)]
pub struct Agent {
    /// Its branch.
    pub branch: u32,
    /// Running.
    pub alive: bool,
    /// Bumped at each crash: answers to an earlier life are dropped.
    pub epoch: u32,
    /// Stopped without closing its connections (noticed by timeout).
    pub silent: bool,
    /// Its peers were told it is gone.
    pub gone_told: bool,
    /// What it held at the start.
    pub holding: Holding,
    /// Election weight.
    pub weight: u32,
    /// A rogue peer, and how it misbehaves.
    pub rogue: Option<Misbehaviour>,
    /// A flapping rogue is connected now.
    pub present: bool,
    /// Its election for the version.
    pub election: Option<Election<u32>>,
    /// Its transfer, while it gets the version.
    pub transfer: Option<Transfer<u32>>,
    /// When it asked, and when it had the version.
    pub asked_at: Option<Us>,
    /// When it had the version.
    pub done_at: Option<Us>,
    /// It holds the manifest and needs list (serves them).
    pub has_meta: bool,
    /// Per unit of the content: held verified.
    pub done: Vec<bool>,
    /// How many are.
    pub done_units: usize,
    /// Their bytes.
    pub done_bytes: u64,
    /// Target ranges held verified (what a coverage answer says).
    pub coverage: RangeSet,
    /// Ranges verified since its last announcement (its news).
    pub news: RangeSet,
    /// For an agent 6+ versions behind: the seed units its old version has.
    pub old_has: Vec<bool>,
    /// Bytes received, by source.
    pub src: Sources,
    /// Range requests it is answering, and to whom (per peer).
    pub uploads: u32,
    /// Per asking peer, how many of `uploads`.
    pub uploads_to: Vec<(u32, u32)>,
    /// The transfer's timer as scheduled.
    pub timer: Option<Us>,
    /// DP responses on their way to it.
    pub dp_pending: Vec<Pending>,
    /// Times its transfer used the DP because the subnet stalled.
    pub stall_fallbacks: u64,
    /// Client-side RDC under way: when its download started and ends (its
    /// rank shows the progress, as the daemon's does).
    pub rdc: Option<(Us, Us)>,
    /// What it announced last (an announcement repeating it may wait for
    /// the end of the beat; a change is heard at once).
    pub announced: Option<(peerdelta_protocol::election::Rank, bool)>,
}

impl Agent {
    /// A new agent; `units` is the content's unit count.
    pub fn new(
        branch: u32,
        holding: Holding,
        weight: u32,
        units: usize,
        size: u64,
        old_has: Vec<bool>,
    ) -> Agent {
        let complete = holding == Holding::Target;
        Agent {
            branch,
            alive: true,
            epoch: 0,
            silent: false,
            gone_told: false,
            holding,
            weight,
            rogue: None,
            present: true,
            election: None,
            transfer: None,
            asked_at: None,
            done_at: None,
            has_meta: complete,
            done: vec![complete; units],
            done_units: if complete { units } else { 0 },
            done_bytes: if complete { size } else { 0 },
            coverage: if complete {
                RangeSet::whole(size)
            } else {
                RangeSet::new()
            },
            news: RangeSet::new(),
            old_has,
            src: Sources::default(),
            uploads: 0,
            uploads_to: Vec::new(),
            timer: None,
            dp_pending: Vec::new(),
            stall_fallbacks: 0,
            rdc: None,
            announced: None,
        }
    }

    /// Whether peers notice at their next heartbeat that it is gone (the
    /// connection closed); a silent crash is noticed by timeout only.
    pub fn gone_now(&self) -> bool {
        (!self.alive && !self.silent) || (self.alive && !self.present)
    }

    /// Whether it is an honest agent that is running.
    pub fn honest_alive(&self) -> bool {
        self.alive && self.rogue.is_none()
    }

    /// Whether peers may ask it (connected, serving).
    pub fn reachable(&self) -> bool {
        self.alive && self.present && self.weight > 0
    }

    /// Its rank in the election for version 7 of the package at `now`.
    pub fn rank(&self, size: u64, now: Us) -> Rank {
        let versions: &[u64] = match self.holding {
            Holding::Target => &[7, 6],
            Holding::Base => &[6],
            Holding::Old => &[1],
            Holding::Nothing => &[],
        };
        let total = if self.has_meta { size } else { 0 };
        let rdc = self.rdc.map_or(0, |(start, end)| {
            let f = now.saturating_sub(start) as f64 / end.saturating_sub(start).max(1) as f64;
            (size as f64 * f.clamp(0.0, 1.0)) as u64
        });
        let held = self.done_bytes.max(rdc);
        Rank::from_holdings(7, versions, held, total, self.weight, 100 << 30)
    }

    /// Range requests it answers for `peer` now.
    pub fn uploads_for(&self, peer: u32) -> u32 {
        self.uploads_to
            .iter()
            .find(|(p, _)| *p == peer)
            .map_or(0, |(_, n)| *n)
    }

    /// One more (or one fewer) request answered for `peer`.
    pub fn count_upload(&mut self, peer: u32, more: bool) {
        if more {
            self.uploads += 1;
            match self.uploads_to.iter_mut().find(|(p, _)| *p == peer) {
                Some((_, n)) => *n += 1,
                None => self.uploads_to.push((peer, 1)),
            }
        } else {
            self.uploads = self.uploads.saturating_sub(1);
            if let Some(i) = self.uploads_to.iter().position(|(p, _)| *p == peer) {
                let n = &mut self.uploads_to[i].1;
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.uploads_to.swap_remove(i);
                }
            }
        }
    }
}
