//! The discrete-event core: one thread, one event queue ordered by
//! (time, sequence), a seeded generator, so a scenario and a seed give the
//! same run byte for byte.
//!
//! Agents run the daemon's state machines: per package version an
//! [`Election`] (heartbeats, announcements, departures, bans) and a
//! [`Transfer`] that decides every request, deadline, ban, stall and DP
//! retry; simnet only carries out what they ask over simulated links
//! ([`crate::link`]) and feeds the results back, as the daemon does over
//! libp2p and HTTP. What simnet adds is the world: when bytes arrive, who
//! is alive, which peers lie ([`crate::faults`]).
//!
//! Simplifications (see the README): the package is one content; the
//! manifest and needs list travel as one item; seed runs from a local base
//! and disk writes take no time; a coverage question is answered at once
//! (a LAN round trip is far below every timer); news of verified ranges
//! travels with the heartbeat announcements, as on the wire.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use peerdelta_protocol::election::{Action as Decision, Election, Rank, Timing};
use peerdelta_protocol::swarm::{self, Unit};
use peerdelta_protocol::time::Timestamp;
use peerdelta_protocol::transfer::{
    self, Action, ContentId, ItemFrom, ItemId, Outcome as End, RequestId, RunsFrom, Transfer,
};

use crate::agent::{Agent, Holding, Pending, Sources};
use crate::content::Content;
use crate::link::{self, Link, Ports, SEC, Us, Wan};
use crate::rng::Rng;
use crate::scenario::{FaultKind, Misbehaviour, Scenario};

/// The manifest and needs list, as one item.
pub(crate) const META: ItemId = ItemId(0);
/// Client-side RDC of the whole content (an agent 6+ versions behind).
pub(crate) const RDC: ItemId = ItemId(1);
/// The content.
pub(crate) const C: ContentId = ContentId(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Ev {
    Ask(u32),
    /// A branch's heartbeat.
    Beat(u32),
    /// An agent's transfer timer (agent, epoch).
    Timer(u32, u32),
    /// Something arrives (a slot of [`Sim::slab`]).
    Deliver(u32),
    Fault(u32),
    /// An agent's uptime ends: it shuts down (peers see it go).
    Leave(u32),
    /// A flapping rogue comes or goes.
    Flap(u32),
}

/// What arrives for a request.
#[derive(Debug)]
pub(crate) enum What {
    /// An answer without data.
    Answer(End),
    /// Runs from a peer.
    Runs {
        units: Vec<usize>,
        from: u32,
        from_epoch: u32,
        alt: bool,
    },
    /// Runs from the DP.
    DpRuns { units: Vec<usize> },
    /// An item, from a peer (and its epoch) or the DP.
    Item {
        item: ItemId,
        from: Option<(u32, u32)>,
    },
}

#[derive(Debug)]
pub(crate) struct Delivery {
    pub to: u32,
    pub epoch: u32,
    pub id: RequestId,
    pub what: What,
}

#[derive(Debug)]
pub(crate) struct Branch {
    pub members: Vec<u32>,
    pub wan: Wan,
    pub lan_mbps: f64,
    pub lan_latency: Us,
    pub dp_fetches: Vec<u32>,
    pub masters_elected: u64,
    pub wan_bytes: u64,
    pub content_dp_bytes: u64,
    pub crash_at_fraction: Vec<f64>,
    pub beating: bool,
    pub multi_master_since: Option<Us>,
    pub beats: u64,
}

/// Run-time figures gathered for the report.
#[derive(Debug, Default)]
pub struct Trace {
    /// Per second: WAN bytes of every branch.
    pub wan_per_s: Vec<u64>,
    /// Per second, for the first branches: WAN bytes.
    pub branch_wan_per_s: Vec<Vec<u64>>,
    /// (time, branch, re-election?) of every master elected.
    pub elections: Vec<(Us, u32, bool)>,
    /// Broken invariants.
    pub violations: Vec<String>,
    /// Bans of rogue peers by honest agents.
    pub rogue_bans: u64,
    /// Bans of honest peers (a crashed one included).
    pub honest_bans: u64,
    /// Transient DP errors the transfers waited out.
    pub dp_errors: u64,
}

/// Branches whose WAN series are kept for plots.
pub const PLOTTED_BRANCHES: usize = 8;

/// Everything a run ends with.
#[derive(Debug)]
pub struct Outcome {
    /// Simulated seconds until the last event.
    pub sim_seconds: f64,
    /// Events processed.
    pub events: u64,
    /// Per branch: WAN bytes, masters elected, seconds until the last agent finished.
    pub branches: Vec<BranchOutcome>,
    /// Per finished agent: seconds from asking to having the content.
    pub completion_s: Vec<f64>,
    /// Agents alive at the end that asked and did not finish.
    pub unfinished: u64,
    /// Bytes by source, all agents.
    pub sources: Sources,
    /// Figures over time.
    pub trace: Trace,
    /// Content figures.
    pub origin_bytes: u64,
    /// The update's size.
    pub size: u64,
    /// Agents simulated (rogues excluded).
    pub agents: u64,
    /// Times an agent used the DP because its subnet stalled.
    pub stall_fallbacks: u64,
}

/// One branch's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BranchOutcome {
    /// WAN bytes (DP to this branch).
    pub wan_bytes: u64,
    /// Masters elected (1 + re-elections), as an agent's status counts them.
    pub elections: u64,
    /// Times an agent took the master role (transient double claims that
    /// the election resolved included).
    pub claims: u64,
    /// Seconds until its last agent finished (None: someone did not).
    pub done_s: Option<f64>,
}

/// The simulator.
pub struct Sim<'a> {
    pub(crate) sc: &'a Scenario,
    pub(crate) content: &'a Content,
    pub(crate) timing: Timing,
    tcfg: transfer::Config,
    /// The content's units without seeds: what an agent without the base builds.
    whole_units: Arc<[Unit]>,
    /// The content's units, shared by every agent's transfer.
    units: Arc<[Unit]>,
    pub(crate) rng: Rng,
    pub(crate) now: Us,
    seq: u64,
    queue: BinaryHeap<Reverse<(Us, u64, Ev)>>,
    pub(crate) agents: Vec<Agent>,
    pub(crate) branches: Vec<Branch>,
    dp: Link,
    pub(crate) dp_outages: Vec<(Us, Us)>,
    pub(crate) faults: Vec<(FaultKind, Option<u64>, u64, Option<Misbehaviour>)>,
    events: u64,
    pub(crate) trace: Trace,
    limit: Us,
    ports: Ports,
    /// Work not finished: agents asking and not done, asks and faults to come.
    pub(crate) open: u64,
    slab: Vec<Option<Delivery>>,
    free: Vec<u32>,
    /// During a heartbeat: the announcements that repeat the last one,
    /// delivered once every member has spoken, receiver by receiver (each
    /// agent's state is visited once a beat instead of once per announcer).
    pub(crate) beat_announces: Option<Vec<(u32, Rank, bool)>>,
}

pub(crate) fn us(s: f64) -> Us {
    // Scenario times are checked to be finite and at most a year.
    (s.clamp(0.0, 366.0 * 86400.0) * SEC) as Us
}

pub(crate) fn ts(now: Us) -> Timestamp {
    Timestamp(now / 1000)
}

impl<'a> Sim<'a> {
    /// Sets up agents, branches and scheduled events.
    pub fn new(sc: &'a Scenario, content: &'a Content, seed: u64) -> Sim<'a> {
        let t = &sc.timing;
        let timing = Timing {
            heartbeat_ms: t.heartbeat_ms,
            master_timeout_ms: t.master_timeout_ms,
            settle_ms: t.settle_ms,
            reelect_ms: t.reelect_s * 1000,
        };
        let tcfg = transfer::Config {
            dp_in_flight: t.dp_concurrency as usize,
            dp_request_bytes: t.dp_request_kib << 10,
            lan_in_flight: t.lan_concurrency as usize,
            coverage_refresh_ms: t.coverage_refresh_ms,
            stall_ms: t.stall_s * 1000,
            ..transfer::Config::default()
        };
        let mut sim = Sim {
            sc,
            content,
            timing,
            tcfg,
            whole_units: content
                .units
                .iter()
                .map(|u| Unit {
                    seed_offset: None,
                    ..*u
                })
                .collect(),
            units: content.units.as_slice().into(),
            rng: Rng::new(seed),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            agents: Vec::new(),
            branches: Vec::new(),
            dp: Link::new(sc.dp.uplink_mbps, 0.0),
            dp_outages: sc
                .dp
                .outages
                .iter()
                .map(|w| (us(w.start_s), us(w.end_s)))
                .collect(),
            faults: Vec::new(),
            events: 0,
            trace: Trace::default(),
            limit: us(sc.limit_s),
            ports: Ports::default(),
            open: 0,
            slab: Vec::new(),
            free: Vec::new(),
            beat_announces: None,
        };
        for g in &sc.branches {
            for _ in 0..g.count {
                let b = sim.branches.len() as u32;
                let with_target = sim.rng.unit() < g.target;
                let mut branch = Branch {
                    members: Vec::new(),
                    wan: Wan::new(g.wan_mbps, g.wan_latency_ms, g.wan_loss),
                    lan_mbps: g.lan_mbps,
                    lan_latency: (g.lan_latency_ms * 1000.0) as Us,
                    dp_fetches: vec![0; content.units.len()],
                    masters_elected: 0,
                    wan_bytes: 0,
                    content_dp_bytes: 0,
                    crash_at_fraction: Vec::new(),
                    beating: false,
                    multi_master_since: None,
                    beats: 0,
                };
                for i in 0..g.agents {
                    let holding = if with_target && i == 0 {
                        Holding::Target
                    } else {
                        let r = sim.rng.unit();
                        if r < g.base {
                            Holding::Base
                        } else if r < g.base + g.behind {
                            Holding::Old
                        } else {
                            Holding::Nothing
                        }
                    };
                    let weight = if sim.rng.unit() < g.weight0 { 0 } else { 1 };
                    let id = sim.add_agent(b, holding, weight);
                    branch.members.push(id);
                    if g.uptime_s > 0.0 {
                        // Exponential uptime: machines shut down at random.
                        let up = -g.uptime_s * (1.0 - sim.rng.unit()).ln();
                        sim.push(us(up), Ev::Leave(id));
                    }
                    if holding != Holding::Target {
                        let at = us(sim.rng.unit() * g.start_spread_s);
                        sim.push(at, Ev::Ask(id));
                        sim.open += 1;
                    }
                }
                sim.branches.push(branch);
            }
        }
        sim.schedule_faults();
        sim
    }

    pub(crate) fn add_agent(&mut self, branch: u32, holding: Holding, weight: u32) -> u32 {
        let n = self.content.units.len();
        let old_has: Vec<bool> = if holding == Holding::Old {
            (0..n)
                .map(|_| self.rng.unit() >= self.content.behind_changed)
                .collect()
        } else {
            Vec::new()
        };
        let id = self.agents.len() as u32;
        self.agents.push(Agent::new(
            branch,
            holding,
            weight,
            n,
            self.content.size,
            old_has,
        ));
        id
    }

    pub(crate) fn push(&mut self, at: Us, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, ev)));
    }

    /// Runs to the end (no events left, or the time limit).
    pub fn run(mut self) -> Outcome {
        while let Some(Reverse((at, _, ev))) = self.queue.pop() {
            if at > self.limit {
                self.now = self.limit;
                break;
            }
            self.now = at;
            self.events += 1;
            self.handle(ev);
            // The rollout is over (what is left, heartbeats and uptimes
            // ending, would only move the clock).
            if self.open == 0 {
                break;
            }
        }
        self.finish()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Ask(a) => self.ask(a),
            Ev::Beat(b) => self.beat(b),
            Ev::Timer(a, epoch) => {
                let now = self.now;
                let ag = &mut self.agents[a as usize];
                if ag.alive && ag.epoch == epoch && ag.timer == Some(now) {
                    ag.timer = None;
                    if let Some(t) = ag.transfer.as_mut() {
                        t.handle_timeout(ts(now));
                    }
                    self.drive(a);
                }
            }
            Ev::Deliver(slot) => self.deliver(slot),
            Ev::Fault(k) => {
                self.open -= 1;
                self.fault(k as usize);
            }
            Ev::Leave(a) => self.crash(a, false),
            Ev::Flap(a) => self.flap(a),
        }
    }

    pub(crate) fn live(&self, a: u32, epoch: u32) -> bool {
        let ag = &self.agents[a as usize];
        ag.alive && ag.epoch == epoch
    }

    fn ask(&mut self, a: u32) {
        let now = self.now;
        let ag = &self.agents[a as usize];
        if !ag.alive || ag.asked_at.is_some() {
            // It left before asking: its ask is no longer to come.
            self.open -= 1;
            return;
        }
        let b = ag.branch;
        let rank = ag.rank(self.content.size, self.now);
        let timing = self.timing;
        let ag = &mut self.agents[a as usize];
        ag.asked_at = Some(now);
        let e = ag
            .election
            .get_or_insert_with(|| Election::new(a, rank, timing, ts(now)));
        let mut t = Transfer::new(self.tcfg, e.is_master(), ts(now));
        let members = self.branches[b as usize].members.clone();
        for &p in &members {
            if p != a && self.agents[p as usize].reachable() {
                t.handle_peer(ts(now), p);
            }
        }
        t.add_item(ts(now), META);
        self.agents[a as usize].transfer = Some(t);
        // Its peers may ask it from now on.
        if self.agents[a as usize].weight > 0 {
            for &p in &members {
                if p != a
                    && let Some(t) = self.agents[p as usize].transfer.as_mut()
                {
                    t.handle_peer(ts(now), a);
                    self.drive(p);
                }
            }
        }
        self.start_beats(b);
        self.drive(a);
    }

    fn start_beats(&mut self, b: u32) {
        let br = &mut self.branches[b as usize];
        if !br.beating {
            br.beating = true;
            let at = self.now + self.timing.heartbeat_ms * 1000;
            self.push(at, Ev::Beat(b));
        }
    }

    /// One heartbeat of a branch: departures, then each agent in turn
    /// (starting from a different one each beat: heartbeats are not in
    /// step) ticks its election and announces, then the news of the beat.
    fn beat(&mut self, b: u32) {
        let now = ts(self.now);
        let members = self.branches[b as usize].members.clone();
        self.branches[b as usize].beats += 1;
        // Connections that closed since the last beat.
        let gone: Vec<u32> = members
            .iter()
            .copied()
            .filter(|&p| {
                let ag = &self.agents[p as usize];
                !ag.alive && !ag.silent && !ag.gone_told
            })
            .collect();
        for &p in &gone {
            self.agents[p as usize].gone_told = true;
        }
        if !gone.is_empty() {
            for &a in &members {
                let ag = &mut self.agents[a as usize];
                if !ag.alive {
                    continue;
                }
                for &p in &gone {
                    if let Some(e) = ag.election.as_mut() {
                        e.handle_gone(now, p);
                    }
                    if let Some(t) = ag.transfer.as_mut() {
                        t.handle_peer_gone(now, p);
                    }
                }
                self.decisions(a);
                self.drive(a);
            }
        }
        let mut any_left = false;
        let n = members.len();
        let first = (self.branches[b as usize].beats as usize) % n.max(1);
        self.beat_announces = Some(Vec::new());
        for k in 0..n {
            let a = members[(first + k) % n];
            let ag = &self.agents[a as usize];
            if !ag.alive {
                continue;
            }
            if ag.rogue.is_some() {
                self.rogue_beat(a, &members);
                continue;
            }
            // A holder of the target joins the election once anyone asks.
            if ag.election.is_none() && ag.holding == Holding::Target {
                let r = ag.rank(self.content.size, self.now);
                let timing = self.timing;
                self.agents[a as usize].election = Some(Election::new(a, r, timing, now));
            }
            let ag = &self.agents[a as usize];
            let Some(e) = ag.election.as_ref() else {
                continue;
            };
            if e.poll_timeout().is_some_and(|t| t <= now) {
                let rank = e.rank_due().then(|| ag.rank(self.content.size, self.now));
                if let Some(e) = self.agents[a as usize].election.as_mut() {
                    if let Some(r) = rank {
                        e.handle_rank(now, r);
                    }
                    e.handle_timeout(now);
                }
            }
            self.decisions(a);
            let ag = &self.agents[a as usize];
            if ag.asked_at.is_some() && ag.done_at.is_none() {
                any_left = true;
            }
        }
        let heard = self.beat_announces.take().unwrap_or_default();
        if !heard.is_empty() {
            for &o in &members {
                if self.hear(o, &heard) {
                    self.decisions(o);
                }
            }
        }
        self.spread_news(&members, None);
        self.check_masters(b);
        if any_left || self.agents_pending(b) {
            let at = self.now + self.timing.heartbeat_ms * 1000;
            self.push(at, Ev::Beat(b));
        } else {
            self.branches[b as usize].beating = false;
        }
    }

    /// Carries out agent `a`'s election decisions: its announcement to
    /// every peer (whose own decisions follow), role changes to its transfer.
    pub(crate) fn decisions(&mut self, a: u32) {
        loop {
            let Some(d) = self.agents[a as usize]
                .election
                .as_mut()
                .and_then(Election::poll_action)
            else {
                return;
            };
            let now = ts(self.now);
            match d {
                Decision::Announce { rank, claims } => {
                    // A repeat changes nothing before the beat ends: heard
                    // with the others. A change (a claim, a new rank) is
                    // heard at once, before the next member decides.
                    let repeat = self.agents[a as usize].announced.replace((rank, claims))
                        == Some((rank, claims));
                    if repeat && let Some(batch) = self.beat_announces.as_mut() {
                        batch.push((a, rank, claims));
                        continue;
                    }
                    let b = self.agents[a as usize].branch as usize;
                    for k in 0..self.branches[b].members.len() {
                        let o = self.branches[b].members[k];
                        if o != a && self.hear(o, &[(a, rank, claims)]) {
                            self.decisions(o);
                        }
                    }
                }
                Decision::BecomeMaster => {
                    self.became_master(a);
                    if let Some(t) = self.agents[a as usize].transfer.as_mut() {
                        t.handle_role(now, true);
                    }
                    self.drive(a);
                }
                Decision::StepDown => {
                    if let Some(t) = self.agents[a as usize].transfer.as_mut() {
                        t.handle_role(now, false);
                    }
                    self.drive(a);
                }
                Decision::MasterChanged { .. } => {}
                Decision::MasterProgress => {
                    if let Some(t) = self.agents[a as usize].transfer.as_mut() {
                        t.handle_master_progress(now);
                    }
                }
            }
        }
    }

    /// Agent `o` hears these announcements; false if it takes no part.
    fn hear(&mut self, o: u32, heard: &[(u32, Rank, bool)]) -> bool {
        let now = ts(self.now);
        let oa = &mut self.agents[o as usize];
        if !oa.alive {
            return false;
        }
        let Some(e) = oa.election.as_mut() else {
            return false;
        };
        for &(a, rank, claims) in heard {
            if a == o {
                continue;
            }
            e.handle_heard(now, a, rank, claims);
        }
        true
    }

    /// Each agent's news of the beat (ranges verified since its last
    /// announcement; `only` one agent's, told at once when it fetched runs
    /// from the DP) reaches its peers' transfers, which decide once for
    /// all of it.
    fn spread_news(&mut self, members: &[u32], only: Option<u32>) {
        let now = ts(self.now);
        let news: Vec<(u32, peerdelta_protocol::rangeset::RangeSet)> = members
            .iter()
            .filter(|&&a| only.is_none_or(|o| o == a))
            .filter_map(|&a| {
                let ag = &mut self.agents[a as usize];
                (ag.honest_alive() && !ag.news.is_empty())
                    .then(|| (a, std::mem::take(&mut ag.news)))
            })
            .collect();
        if news.is_empty() {
            return;
        }
        for &o in members {
            let Some(t) = self.agents[o as usize].transfer.as_mut() else {
                continue;
            };
            for (a, r) in &news {
                if *a != o {
                    t.handle_have(now, *a, C, r);
                }
            }
            self.drive(o);
        }
    }

    fn agents_pending(&self, b: u32) -> bool {
        self.branches[b as usize].members.iter().any(|&a| {
            let ag = &self.agents[a as usize];
            ag.alive && ag.asked_at.is_none() && ag.holding != Holding::Target && ag.rogue.is_none()
        })
    }

    /// At most one honest master per branch once the election has settled.
    fn check_masters(&mut self, b: u32) {
        let masters = self.branches[b as usize]
            .members
            .iter()
            .filter(|&&a| {
                let ag = &self.agents[a as usize];
                ag.honest_alive() && ag.election.as_ref().is_some_and(Election::is_master)
            })
            .count();
        let t = &self.timing;
        let grace = (t.master_timeout_ms + t.settle_ms + 3 * t.heartbeat_ms) * 1000;
        let now = self.now;
        let br = &mut self.branches[b as usize];
        if masters <= 1 {
            br.multi_master_since = None;
        } else {
            let since = *br.multi_master_since.get_or_insert(now);
            if now - since > grace {
                self.trace.violations.push(format!(
                    "branch {b}: {masters} masters for {:.1} s after the election should have settled",
                    (now - since) as f64 / SEC
                ));
                br.multi_master_since = None;
            }
        }
    }

    fn became_master(&mut self, a: u32) {
        let b = self.agents[a as usize].branch;
        let br = &mut self.branches[b as usize];
        br.masters_elected += 1;
        let re = br.masters_elected > 1;
        self.trace.elections.push((self.now, b, re));
    }

    /// Carries out what agent `a`'s transfer asks, then sets its timer.
    pub(crate) fn drive(&mut self, a: u32) {
        while let Some(act) = self.agents[a as usize]
            .transfer
            .as_mut()
            .and_then(Transfer::poll_action)
        {
            self.act(a, act);
        }
        self.arm_timer(a);
    }

    fn arm_timer(&mut self, a: u32) {
        let ag = &mut self.agents[a as usize];
        let Some(t) = ag.transfer.as_ref().and_then(Transfer::poll_timeout) else {
            return;
        };
        let at = (t.0 * 1000).max(self.now + 1);
        if ag.timer.is_none_or(|x| at < x) {
            ag.timer = Some(at);
            let epoch = ag.epoch;
            self.push(at, Ev::Timer(a, epoch));
        }
    }

    fn later(&mut self, at: Us, to: u32, id: RequestId, what: What) -> u32 {
        let epoch = self.agents[to as usize].epoch;
        let d = Delivery {
            to,
            epoch,
            id,
            what,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s as usize] = Some(d);
                s
            }
            None => {
                self.slab.push(Some(d));
                (self.slab.len() - 1) as u32
            }
        };
        self.push(at, Ev::Deliver(slot));
        slot
    }

    /// The DP does not answer `a`'s request `id`: `a` hears so at `at`.
    fn dp_unanswered(&mut self, at: Us, a: u32, id: RequestId) {
        let e = End::Dp {
            transient: true,
            detail: "the DP does not answer".into(),
        };
        self.trace.dp_errors += 1;
        self.later(at, a, id, What::Answer(e));
    }

    fn lan_latency(&self, a: u32) -> Us {
        self.branches[self.agents[a as usize].branch as usize].lan_latency
    }

    /// When a DP request made now proceeds (`Ok`), or fails (`Err`): the
    /// client waits out a DP or link that is back within its give-up time.
    fn dp_call(&self, b: u32) -> Result<Us, Us> {
        let windows = self
            .dp_outages
            .iter()
            .chain(&self.branches[b as usize].wan.cuts);
        match link::up_again(self.now, windows) {
            None => Ok(self.now),
            Some(t) if t - self.now <= link::CLIENT_GIVE_UP => Ok(t),
            Some(_) => Err(self.now + link::CLIENT_GIVE_UP),
        }
    }

    /// Sends `bytes` from the DP to agent `a` at `start`; returns the arrival.
    fn dp_transfer(&mut self, a: u32, start: Us, bytes: u64, id: RequestId, what: What) -> Us {
        let b = self.agents[a as usize].branch as usize;
        let sent = link::dp_send(&mut self.dp, &mut self.branches[b].wan, start, bytes);
        self.branches[b].wan_bytes += bytes;
        let sec = (sent.arrive / 1_000_000) as usize;
        bump(&mut self.trace.wan_per_s, sec, bytes);
        if b < PLOTTED_BRANCHES {
            if self.trace.branch_wan_per_s.len() <= b {
                self.trace.branch_wan_per_s.resize(b + 1, Vec::new());
            }
            bump(&mut self.trace.branch_wan_per_s[b], sec, bytes);
        }
        self.agents[a as usize].src.dp += bytes;
        let slot = self.later(sent.arrive, a, id, what);
        self.agents[a as usize].dp_pending.push(Pending {
            slot,
            start: sent.start,
            end: sent.end,
            len: bytes,
            sec,
        });
        sent.arrive
    }

    /// A request to peer `p` that it answers with data of `bytes`, if it
    /// is there, has a free upload slot, and `has` it.
    fn ask_peer(&mut self, a: u32, p: u32, id: RequestId, bytes: u64, has: bool, what: What) {
        let rtt = 2 * self.lan_latency(a);
        let pa = &self.agents[p as usize];
        if let Some(kind) = pa.rogue {
            if let Some(o) = crate::rogue::rogue_answer(kind, pa.present) {
                self.later(self.now + rtt, a, id, What::Answer(o));
            }
            return;
        }
        if !pa.alive {
            if !pa.silent {
                self.later(self.now + rtt, a, id, What::Answer(End::Unreachable));
            }
            return;
        }
        if !has {
            self.later(self.now + rtt, a, id, What::Answer(End::NotFound));
            return;
        }
        if swarm::busy(pa.uploads, pa.uploads_for(a), self.sc.timing.upload_slots) {
            self.later(self.now + rtt, a, id, What::Answer(End::Busy));
            return;
        }
        self.agents[p as usize].count_upload(a, true);
        let b = self.agents[a as usize].branch as usize;
        let (mbps, latency) = (self.branches[b].lan_mbps, self.branches[b].lan_latency);
        let arrive = self
            .ports
            .send(self.now, p as usize, a as usize, bytes, mbps, latency);
        self.later(arrive, a, id, what);
    }

    /// One action of agent `a`'s transfer.
    fn act(&mut self, a: u32, act: Action<u32>) {
        let now = ts(self.now);
        let b = self.agents[a as usize].branch;
        match act {
            Action::AskCoverage {
                id, peer, content, ..
            } => {
                // Answered at once: a LAN round trip is far below every timer.
                let pa = &self.agents[peer as usize];
                let answer = match pa.rogue {
                    Some(kind) => crate::rogue::rogue_coverage(kind, pa.present, self.content.size),
                    None if !pa.alive && pa.silent => None,
                    None if !pa.alive => Some(Err(End::Unreachable)),
                    None => Some(Ok((pa.coverage.clone(), pa.holding == Holding::Base))),
                };
                let Some(t) = self.agents[a as usize].transfer.as_mut() else {
                    return;
                };
                match answer {
                    Some(Ok((ranges, has_base))) => {
                        t.handle_coverage(now, peer, content, ranges, has_base);
                        t.handle_request_end(now, id, End::Ok);
                    }
                    Some(Err(o)) => t.handle_request_end(now, id, o),
                    None => {}
                }
            }
            Action::ItemFromPeer { id, item, peer, .. } => {
                let pa = &self.agents[peer as usize];
                let has = item == META && pa.has_meta && pa.weight > 0;
                let from = Some((peer, pa.epoch));
                let bytes = self.content.manifest_bytes + self.content.needs_bytes;
                self.ask_peer(a, peer, id, bytes, has, What::Item { item, from });
            }
            Action::ItemFromDp { id, item } => match self.dp_call(b) {
                Err(at) => self.dp_unanswered(at, a, id),
                Ok(start) => {
                    let bytes = if item == RDC {
                        self.rdc_bytes(a)
                    } else {
                        self.content.manifest_bytes + self.content.needs_bytes
                    };
                    let arrive =
                        self.dp_transfer(a, start, bytes, id, What::Item { item, from: None });
                    if item == RDC {
                        self.agents[a as usize].rdc = Some((self.now, arrive));
                    }
                }
            },
            Action::ProbeDp { id } => {
                let (at, o) = match self.dp_call(b) {
                    Err(at) => (
                        at,
                        End::Dp {
                            transient: true,
                            detail: "the DP does not answer".into(),
                        },
                    ),
                    Ok(start) => (
                        start + 2 * self.branches[b as usize].wan.link.latency(),
                        End::Ok,
                    ),
                };
                self.later(at, a, id, What::Answer(o));
            }
            Action::ItemUnavailable { .. } | Action::Stalled { .. } => {}
            Action::CopySeeds { units, .. } => {
                for &i in &units {
                    let len = self.content.units[i].len;
                    self.agents[a as usize].src.local += len;
                    self.mark_done(a, i);
                }
                if let Some(t) = self.agents[a as usize].transfer.as_mut() {
                    t.handle_units_done(now, C, &units);
                }
            }
            Action::FetchRuns {
                id, from, units, ..
            } => {
                let bytes: u64 = units.iter().map(|&i| self.content.units[i].len).sum();
                match from {
                    RunsFrom::Peer(p) | RunsFrom::AltCopy(p) => {
                        let alt = matches!(from, RunsFrom::AltCopy(_));
                        let pa = &self.agents[p as usize];
                        let has = pa.weight > 0
                            && if alt {
                                pa.holding == Holding::Base
                            } else {
                                units.iter().all(|&i| pa.done[i])
                            };
                        let from_epoch = pa.epoch;
                        let what = What::Runs {
                            units,
                            from: p,
                            from_epoch,
                            alt,
                        };
                        self.ask_peer(a, p, id, bytes, has, what);
                    }
                    RunsFrom::Dp { .. } => match self.dp_call(b) {
                        Err(at) => self.dp_unanswered(at, a, id),
                        Ok(start) => {
                            self.check_refetch(a, &units);
                            let _ = self.dp_transfer(a, start, bytes, id, What::DpRuns { units });
                        }
                    },
                }
            }
            Action::Ban { peer, reason } => {
                if let Some(e) = self.agents[a as usize].election.as_mut() {
                    e.handle_banned(now, peer);
                }
                let pa = &self.agents[peer as usize];
                if pa.rogue.is_some() {
                    self.trace.rogue_bans += 1;
                } else {
                    self.trace.honest_bans += 1;
                    if pa.alive && !pa.silent {
                        self.trace.violations.push(format!(
                            "agent {a} banned agent {peer}, which is honest and alive: {reason}"
                        ));
                    }
                }
                self.decisions(a);
            }
            // simnet's store neither loses nor corrupts what it verified.
            Action::Rebuild { content } => self
                .trace
                .violations
                .push(format!("agent {a}: asked to rebuild content {content:?}")),
            Action::Done => self.complete(a),
            Action::Failed { reason } => {
                self.trace
                    .violations
                    .push(format!("agent {a}: its transfer failed: {reason}"));
                let ag = &mut self.agents[a as usize];
                ag.transfer = None;
                if let Some(e) = ag.election.as_mut() {
                    e.handle_withdraw(now, true);
                }
                self.decisions(a);
            }
        }
    }

    /// What client-side RDC fetches: the units its old version lacks.
    fn rdc_bytes(&self, a: u32) -> u64 {
        let ag = &self.agents[a as usize];
        self.content
            .units
            .iter()
            .zip(&ag.old_has)
            .filter(|(u, has)| u.seed_offset.is_none() || !**has)
            .map(|(u, _)| u.len)
            .sum()
    }

    /// A DP fetch of units a live honest peer of the branch holds, when the
    /// branch fetched them before: the WAN carrying a run twice.
    fn check_refetch(&mut self, a: u32, units: &[usize]) {
        let b = self.agents[a as usize].branch as usize;
        for &i in units {
            self.branches[b].dp_fetches[i] += 1;
            if self.branches[b].dp_fetches[i] > 1 {
                let held = self.branches[b].members.iter().any(|&p| {
                    let pa = &self.agents[p as usize];
                    p != a && pa.honest_alive() && pa.weight > 0 && pa.done[i]
                });
                if held {
                    self.trace.violations.push(format!(
                        "branch {b}: unit {i} fetched from the DP again while a live peer held it"
                    ));
                }
            }
        }
    }

    fn deliver(&mut self, slot: u32) {
        let Some(d) = self.slab.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(slot);
        let now = ts(self.now);
        // The sender's upload slot is free again.
        let sender = match &d.what {
            What::Runs {
                from, from_epoch, ..
            } => Some((*from, *from_epoch)),
            What::Item { from, .. } => *from,
            _ => None,
        };
        if let Some((p, e)) = sender
            && self.live(p, e)
        {
            self.agents[p as usize].count_upload(d.to, false);
        }
        if !self.live(d.to, d.epoch) {
            return;
        }
        let a = d.to;
        self.agents[a as usize]
            .dp_pending
            .retain(|p| p.slot != slot);
        // A sender that died on the way: its connection closed, or (a
        // silent crash) nothing comes and the deadline says so.
        if let Some((p, e)) = sender
            && !self.live(p, e)
        {
            if !self.agents[p as usize].silent
                && let Some(t) = self.agents[a as usize].transfer.as_mut()
            {
                t.handle_request_end(now, d.id, End::Unreachable);
            }
            self.drive(a);
            return;
        }
        let mut crash = false;
        match d.what {
            What::Answer(o) => {
                if let Some(t) = self.agents[a as usize].transfer.as_mut() {
                    t.handle_request_end(now, d.id, o);
                }
            }
            What::Runs { units, alt, .. } => {
                for &i in &units {
                    let len = self.content.units[i].len;
                    let src = &mut self.agents[a as usize].src;
                    if alt {
                        src.alt_copy += len;
                    } else {
                        src.lan_peer += len;
                    }
                    self.mark_done(a, i);
                }
                self.units_arrived(a, d.id, &units);
            }
            What::DpRuns { units } => {
                for &i in &units {
                    self.mark_done(a, i);
                }
                crash = self.dp_arrived(a, &units);
                self.units_arrived(a, d.id, &units);
                let due = self.agents[a as usize]
                    .transfer
                    .as_mut()
                    .is_none_or(Transfer::take_news_due);
                if due && !crash {
                    let b = self.agents[a as usize].branch as usize;
                    let members = self.branches[b].members.clone();
                    self.spread_news(&members, Some(a));
                }
            }
            What::Item { item, .. } => {
                if item == META {
                    self.meta_arrived(a);
                } else if item == RDC {
                    let ag = &self.agents[a as usize];
                    let local: u64 = self
                        .content
                        .units
                        .iter()
                        .zip(&ag.old_has)
                        .filter(|(u, has)| u.seed_offset.is_some() && **has)
                        .map(|(u, _)| u.len)
                        .sum();
                    self.agents[a as usize].src.local += local;
                    self.agents[a as usize].rdc = None;
                    for i in 0..self.content.units.len() {
                        self.mark_done(a, i);
                    }
                }
                if let Some(t) = self.agents[a as usize].transfer.as_mut() {
                    t.handle_item_done(now, item);
                    t.handle_request_end(now, d.id, End::Ok);
                }
            }
        }
        self.drive(a);
        if crash {
            self.crash(a, false);
        }
    }

    fn units_arrived(&mut self, a: u32, id: RequestId, units: &[usize]) {
        let now = ts(self.now);
        if let Some(t) = self.agents[a as usize].transfer.as_mut() {
            t.handle_units_done(now, C, units);
            t.handle_request_end(now, id, End::Ok);
        }
    }

    /// The manifest and needs list are here: what to build, and how.
    fn meta_arrived(&mut self, a: u32) {
        let now = ts(self.now);
        let ag = &mut self.agents[a as usize];
        if ag.has_meta {
            return;
        }
        ag.has_meta = true;
        let master = ag.election.as_ref().is_some_and(Election::is_master);
        let (units, have_base) = match ag.holding {
            Holding::Base => (Arc::clone(&self.units), true),
            Holding::Old if master => {
                if let Some(t) = ag.transfer.as_mut() {
                    t.add_item_from(now, RDC, ItemFrom::DpOnly);
                }
                return;
            }
            _ => (Arc::clone(&self.whole_units), false),
        };
        let cov = &ag.coverage;
        if let Some(t) = ag.transfer.as_mut() {
            t.add_content(
                now,
                C,
                units,
                |u| cov.covers(u.offset, u.offset + u.len),
                have_base,
                false,
            );
        }
    }

    /// Records unit `i` as held by `a`.
    pub(crate) fn mark_done(&mut self, a: u32, i: usize) {
        let u = self.content.units[i];
        let ag = &mut self.agents[a as usize];
        if ag.done[i] {
            return;
        }
        ag.done[i] = true;
        ag.done_units += 1;
        ag.done_bytes += u.len;
        ag.coverage.insert(u.offset, u.len);
        ag.news.insert(u.offset, u.len);
    }

    fn complete(&mut self, a: u32) {
        let now = self.now;
        let ag = &mut self.agents[a as usize];
        if ag.done_at.is_some() {
            return;
        }
        ag.done_at = Some(now);
        ag.stall_fallbacks = ag.transfer.as_ref().map_or(0, Transfer::stall_fallbacks);
        // Done: it serves from what it holds; the transfer is over.
        ag.transfer = None;
        ag.timer = None;
        self.open -= 1;
    }

    fn finish(self) -> Outcome {
        let mut sources = Sources::default();
        let mut completion = Vec::new();
        let mut unfinished = 0;
        let mut stall_fallbacks = 0;
        let mut trace = self.trace;
        for (i, ag) in self.agents.iter().enumerate() {
            if ag.rogue.is_some() {
                continue;
            }
            sources.add(&ag.src);
            stall_fallbacks +=
                ag.stall_fallbacks + ag.transfer.as_ref().map_or(0, Transfer::stall_fallbacks);
            match (ag.asked_at, ag.done_at) {
                (Some(s), Some(d)) => completion.push((d - s) as f64 / SEC),
                (Some(_), None) if ag.alive => {
                    unfinished += 1;
                    trace.violations.push(format!(
                        "agent {i} (branch {}) is alive and lacks part of the content at the end",
                        ag.branch
                    ));
                }
                _ => {}
            }
        }
        let branches = self
            .branches
            .iter()
            .map(|b| {
                let mut last = Some(0);
                for &a in &b.members {
                    let ag = &self.agents[a as usize];
                    if !ag.honest_alive() || ag.asked_at.is_none() {
                        continue;
                    }
                    last = match (last, ag.done_at) {
                        (Some(l), Some(d)) => Some(l.max(d)),
                        _ => None,
                    };
                }
                // Elections as an agent's status counts them: the times the
                // master it sees changed to someone (the most any member saw).
                let elections = b
                    .members
                    .iter()
                    .filter(|&&a| self.agents[a as usize].rogue.is_none())
                    .filter_map(|&a| self.agents[a as usize].election.as_ref())
                    .map(Election::elections)
                    .max()
                    .unwrap_or(0);
                BranchOutcome {
                    wan_bytes: b.wan_bytes,
                    elections,
                    claims: b.masters_elected,
                    done_s: last.map(|l| l as f64 / SEC),
                }
            })
            .collect();
        completion.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        Outcome {
            sim_seconds: self.now as f64 / SEC,
            events: self.events,
            branches,
            completion_s: completion,
            unfinished,
            sources,
            trace,
            origin_bytes: self.content.origin_bytes,
            size: self.content.size,
            agents: self.agents.iter().filter(|a| a.rogue.is_none()).count() as u64,
            stall_fallbacks,
        }
    }
}

pub(crate) fn bump(v: &mut Vec<u64>, i: usize, n: u64) {
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    v[i] += n;
}
