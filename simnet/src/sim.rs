//! The discrete-event core: one thread, one event queue ordered by
//! (time, sequence), a seeded generator, so a scenario and a seed give the
//! same run byte for byte.
//!
//! What is modelled:
//!
//! - links as FIFO servers at unit granularity: the DP's uplink (shared by
//!   every branch), each branch's WAN link (shared by its flows; packet loss
//!   caps a flow at the Mathis et al. TCP rate), each agent's LAN port (a
//!   switched LAN: a transfer holds the sender's and the receiver's ports);
//! - agents as the daemon runs them: per package version an
//!   [`Election`] fed with heartbeats, `Gone` on disconnection and its own
//!   rank; transfers in rounds as `get`'s `lan_runs` does: each round asks
//!   [`swarm::assign`] where every unit comes from, moves the LAN units
//!   (`lan_concurrency` at a time), and when only DP units are left the
//!   master fetches them (`dp_concurrency` at a time); a peer with nothing
//!   to take looks again every `poll_ms`;
//! - faults: master crash (SIGKILL: peers see the connection drop), agent
//!   crash (silent: peers notice by timeout), leave, join, DP outage, WAN
//!   link cut. Requests during an outage or cut wait for its end.
//!
//! Simplifications (see the README): seed runs from a local base and disk
//! writes take no time; a request is one unit (no coalescing); the manifest
//! and needs list travel as one small transfer.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use peerdelta_protocol::election::{Action, Election, Event, Rank, Timing};
use peerdelta_protocol::swarm::{self, From, Unit, View};

use crate::content::Content;
use crate::scenario::{FaultKind, Scenario};

/// Microseconds of simulated time.
pub type Us = u64;

const SEC: f64 = 1e6;

/// A small deterministic generator (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_5EED)
    }
    /// Next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// A link: a FIFO server with a rate and a latency.
#[derive(Debug, Clone)]
struct Link {
    us_per_byte: f64,
    latency: Us,
    busy: Us,
}

impl Link {
    fn new(mbps: f64, latency_ms: f64) -> Link {
        Link {
            us_per_byte: 8.0 / mbps,
            latency: (latency_ms * 1000.0) as Us,
            busy: 0,
        }
    }
}

/// What an agent held when the update started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// A base version within the window (needs lists exist).
    Base,
    /// A version 6+ behind (client-side RDC when master alone).
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
    fn add(&mut self, o: &Sources) {
        self.local += o.local;
        self.alt_copy += o.alt_copy;
        self.lan_peer += o.lan_peer;
        self.dp += o.dp;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not asked yet.
    Idle,
    /// Waiting for the manifest and needs list.
    Meta,
    /// Fetching them.
    MetaFetch,
    /// Scheduling rounds.
    Rounds,
    /// Done.
    Done,
}

/// A DP response on its way: when the link carries it, for accounting a crash.
#[derive(Debug, Clone, Copy)]
struct Pending {
    unit: u32,
    start: Us,
    end: Us,
    len: u64,
    sec: usize,
}

#[derive(Debug)]
struct Agent {
    branch: u32,
    alive: bool,
    epoch: u32,
    holding: Holding,
    weight: u32,
    election: Option<Election<u32>>,
    phase: Phase,
    asked_at: Option<Us>,
    done_at: Option<Us>,
    has_meta: bool,
    done: Vec<bool>,
    /// How many are done.
    done_units: usize,
    /// `done` as bits, to find quickly which peers hold something we lack.
    bits: Vec<u64>,
    done_bytes: u64,
    /// Merged target ranges held (what Coverage answers).
    coverage: Vec<(u64, u64)>,
    /// For an agent 6+ behind: the seed units its old version has.
    old_has: Vec<bool>,
    lan_queue: VecDeque<(usize, u32, bool)>,
    lan_inflight: u32,
    dp_queue: VecDeque<usize>,
    dp_inflight: u32,
    dp_pending: Vec<Pending>,
    parked_at: Option<Us>,
    src: Sources,
    /// Stopped without closing its connections (noticed by timeout).
    silent: bool,
    /// Its peers were told it is gone.
    gone_told: bool,
    /// LAN requests it is answering.
    uploads: u32,
    /// Peers that answered "busy" since its last round.
    busy_seen: std::collections::BTreeSet<u32>,
}

#[derive(Debug)]
struct Branch {
    members: Vec<u32>,
    wan: Link,
    wan_cut: Vec<(Us, Us)>,
    lan_mbps: f64,
    lan_latency: Us,
    loss_cap_us_per_byte: f64,
    parked: Vec<u32>,
    dp_fetches: Vec<u32>,
    masters_elected: u64,
    wan_bytes: u64,
    content_dp_bytes: u64,
    crash_at_fraction: Vec<f64>,
    beating: bool,
    multi_master_since: Option<Us>,
    beats: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Ask(u32),
    Beat(u32),
    Round(u32, u32),
    MetaDone(u32, u32),
    LanDone {
        agent: u32,
        epoch: u32,
        unit: u32,
        from: u32,
        from_epoch: u32,
        alt: bool,
    },
    DpDone {
        agent: u32,
        epoch: u32,
        unit: u32,
    },
    Fault(u32),
    /// An agent's uptime ends: it shuts down (peers see it go).
    Leave(u32),
    /// A peer answered "busy" (its upload slots were full).
    LanBusy {
        agent: u32,
        epoch: u32,
        from: u32,
    },
    /// The DP (or the branch's link) is back: a master goes on fetching.
    DpResume(u32, u32),
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
    /// Agents simulated.
    pub agents: u64,
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
    sc: &'a Scenario,
    content: &'a Content,
    timing: Timing,
    rng: Rng,
    now: Us,
    seq: u64,
    queue: BinaryHeap<Reverse<(Us, u64, Ev)>>,
    agents: Vec<Agent>,
    branches: Vec<Branch>,
    dp: Link,
    dp_outages: Vec<(Us, Us)>,
    faults: Vec<(FaultKind, Option<u64>, u64, Option<Us>)>,
    events: u64,
    trace: Trace,
    limit: Us,
    /// Per agent: when its LAN port is free, sending and receiving.
    ports: Vec<(Us, Us)>,
    /// Work not finished: agents asking and not done, asks and faults to come.
    open: u64,
}

fn us(s: f64) -> Us {
    // Scenario times are checked to be finite and at most a year.
    (s.clamp(0.0, 366.0 * 86400.0) * SEC) as Us
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
        let mut sim = Sim {
            sc,
            content,
            timing,
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
            ports: Vec::new(),
            open: 0,
        };
        for g in &sc.branches {
            for _ in 0..g.count {
                let b = sim.branches.len() as u32;
                let rtt_s = 2.0 * g.wan_latency_ms / 1000.0;
                let loss_cap = if g.wan_loss > 0.0 && rtt_s > 0.0 {
                    // Mathis: rate <= MSS / RTT * 1.22 / sqrt(p), bytes/s.
                    let rate = 1460.0 / rtt_s * 1.22 / g.wan_loss.sqrt();
                    SEC / rate
                } else {
                    0.0
                };
                let with_target = sim.rng.unit() < g.target;
                let mut branch = Branch {
                    members: Vec::new(),
                    wan: Link::new(g.wan_mbps, g.wan_latency_ms),
                    wan_cut: Vec::new(),
                    lan_mbps: g.lan_mbps,
                    lan_latency: (g.lan_latency_ms * 1000.0) as Us,
                    loss_cap_us_per_byte: loss_cap,
                    parked: Vec::new(),
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
        for (k, f) in sc.faults.iter().enumerate() {
            let at = f.at_s.map(us);
            sim.faults
                .push((f.kind, f.branch, f.agents, f.end_s.map(us)));
            match (f.kind, at, f.at_fraction) {
                (FaultKind::MasterCrash, None, Some(x)) => {
                    for (i, b) in sim.branches.iter_mut().enumerate() {
                        if f.branch.is_none_or(|w| w == i as u64) {
                            b.crash_at_fraction.push(x);
                        }
                    }
                }
                (FaultKind::DpOutage, Some(at), _) => {
                    sim.dp_outages.push((at, f.end_s.map_or(at, us)));
                }
                (FaultKind::LinkCut, Some(at), _) => {
                    for (i, b) in sim.branches.iter_mut().enumerate() {
                        if f.branch.is_none_or(|w| w == i as u64) {
                            b.wan_cut.push((at, f.end_s.map_or(at, us)));
                        }
                    }
                }
                (_, Some(at), _) => {
                    sim.push(at, Ev::Fault(k as u32));
                    sim.open += 1;
                }
                _ => {}
            }
        }
        for b in &mut sim.branches {
            b.crash_at_fraction
                .sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
        }
        sim
    }

    fn add_agent(&mut self, branch: u32, holding: Holding, weight: u32) -> u32 {
        let n = self.content.units.len();
        let id = self.agents.len() as u32;
        let complete = holding == Holding::Target;
        let old_has: Vec<bool> = if holding == Holding::Old {
            (0..n)
                .map(|_| self.rng.unit() >= self.content.behind_changed)
                .collect()
        } else {
            Vec::new()
        };
        self.agents.push(Agent {
            branch,
            alive: true,
            epoch: 0,
            holding,
            weight,
            election: None,
            phase: if complete { Phase::Done } else { Phase::Idle },
            asked_at: None,
            done_at: None,
            has_meta: false,
            done: vec![complete; n],
            done_units: if complete { n } else { 0 },
            bits: if complete {
                vec![u64::MAX; n.div_ceil(64)]
            } else {
                vec![0; n.div_ceil(64)]
            },
            done_bytes: if complete { self.content.size } else { 0 },
            coverage: if complete {
                vec![(0, self.content.size)]
            } else {
                Vec::new()
            },
            old_has,
            lan_queue: VecDeque::new(),
            lan_inflight: 0,
            dp_queue: VecDeque::new(),
            dp_inflight: 0,
            dp_pending: Vec::new(),
            parked_at: None,
            src: Sources::default(),
            silent: false,
            gone_told: false,
            uploads: 0,
            busy_seen: Default::default(),
        });
        id
    }

    fn push(&mut self, at: Us, ev: Ev) {
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
            Ev::Round(a, epoch) => {
                if self.live(a, epoch) && self.agents[a as usize].phase == Phase::Rounds {
                    self.round(a);
                } else if self.live(a, epoch) && self.agents[a as usize].phase == Phase::Meta {
                    self.want_meta(a);
                }
            }
            Ev::MetaDone(a, epoch) => {
                if self.live(a, epoch) {
                    let ag = &mut self.agents[a as usize];
                    ag.has_meta = true;
                    let b = ag.branch;
                    if ag.phase == Phase::MetaFetch || ag.phase == Phase::Meta {
                        ag.phase = Phase::Rounds;
                        self.round(a);
                    }
                    self.changed(b);
                }
            }
            Ev::LanDone {
                agent,
                epoch,
                unit,
                from,
                from_epoch,
                alt,
            } => {
                if self.live(from, from_epoch) {
                    let f = &mut self.agents[from as usize];
                    f.uploads = f.uploads.saturating_sub(1);
                    // A free upload slot: peers waiting on it look again.
                    let fb = f.branch;
                    self.changed(fb);
                }
                if !self.live(agent, epoch) {
                    return;
                }
                let ok = self.live(from, from_epoch);
                let ag = &mut self.agents[agent as usize];
                ag.lan_inflight -= 1;
                if ok {
                    let len = self.content.units[unit as usize].len;
                    if alt {
                        ag.src.alt_copy += len;
                    } else {
                        ag.src.lan_peer += len;
                    }
                    self.mark_done(agent, unit as usize);
                    let b = self.agents[agent as usize].branch;
                    self.changed(b);
                }
                self.pump_lan(agent);
            }
            Ev::DpDone { agent, epoch, unit } => {
                if !self.live(agent, epoch) {
                    return;
                }
                let ag = &mut self.agents[agent as usize];
                ag.dp_inflight -= 1;
                self.mark_done(agent, unit as usize);
                let b = self.agents[agent as usize].branch;
                self.changed(b);
                self.dp_arrived(agent, unit);
                if self.live(agent, epoch) {
                    self.pump_dp(agent);
                }
            }
            Ev::Fault(k) => {
                self.open -= 1;
                self.fault(k as usize);
            }
            Ev::Leave(a) => self.crash(a, false),
            Ev::DpResume(a, epoch) => {
                if self.live(a, epoch) {
                    let ag = &self.agents[a as usize];
                    let master = ag.election.as_ref().is_some_and(|e| e.is_master());
                    if !ag.has_meta && master && ag.phase != Phase::MetaFetch {
                        self.fetch_meta(a);
                    } else {
                        self.pump_dp(a);
                    }
                }
            }
            Ev::LanBusy { agent, epoch, from } => {
                if self.live(agent, epoch) {
                    let ag = &mut self.agents[agent as usize];
                    ag.lan_inflight -= 1;
                    ag.busy_seen.insert(from);
                    self.pump_lan(agent);
                }
            }
        }
    }

    fn live(&self, a: u32, epoch: u32) -> bool {
        let ag = &self.agents[a as usize];
        ag.alive && ag.epoch == epoch
    }

    fn ask(&mut self, a: u32) {
        let now = self.now;
        let ag = &mut self.agents[a as usize];
        if !ag.alive || ag.phase != Phase::Idle {
            // It left before asking: its ask is no longer to come.
            self.open -= 1;
            return;
        }
        ag.asked_at = Some(now);
        ag.phase = Phase::Meta;
        let rank = self.rank(a);
        let timing = self.timing;
        let ag = &mut self.agents[a as usize];
        ag.election = Some(Election::new(a, rank, timing, now / 1000));
        let b = ag.branch;
        self.start_beats(b);
        self.want_meta(a);
    }

    fn start_beats(&mut self, b: u32) {
        let br = &mut self.branches[b as usize];
        if !br.beating {
            br.beating = true;
            let at = self.now + self.timing.heartbeat_ms * 1000;
            self.push(at, Ev::Beat(b));
        }
    }

    fn rank(&self, a: u32) -> Rank {
        let ag = &self.agents[a as usize];
        let versions: &[u64] = match ag.holding {
            Holding::Target => &[7, 6],
            Holding::Base => &[6],
            Holding::Old => &[1],
            Holding::Nothing => &[],
        };
        let total = if ag.has_meta { self.content.size } else { 0 };
        Rank::from_holdings(7, versions, ag.done_bytes, total, ag.weight, 100 << 30)
    }

    /// One heartbeat of a branch: ranks, disconnections, ticks, then every
    /// live candidate's announcement to every other.
    fn beat(&mut self, b: u32) {
        let now_ms = self.now / 1000;
        let members = self.branches[b as usize].members.clone();
        self.branches[b as usize].beats += 1;
        let beat = self.branches[b as usize].beats;
        // Peers whose connections closed since the last beat.
        let gone: Vec<u32> = members
            .iter()
            .copied()
            .filter(|&p| self.agents[p as usize].gone_now() && !self.agents[p as usize].gone_told)
            .collect();
        for &p in &gone {
            self.agents[p as usize].gone_told = true;
        }
        let mut became = Vec::new();
        let mut any_left = false;
        // Agents' heartbeats are not in step: each, in turn (starting from a
        // different one each beat), ticks its election and its announcement
        // reaches the others before the next one ticks.
        let n = members.len();
        let first = (self.branches[b as usize].beats as usize) % n.max(1);
        for k in 0..n {
            let a = members[(first + k) % n];
            let ag = &self.agents[a as usize];
            if !ag.alive {
                continue;
            }
            // A holder of the target joins the election once anyone asks.
            if ag.election.is_none() && ag.holding == Holding::Target {
                let r = self.rank(a);
                let ag = &mut self.agents[a as usize];
                ag.election = Some(Election::new(a, r, self.timing, now_ms));
                ag.has_meta = false;
            }
            let due = self.agents[a as usize]
                .election
                .as_ref()
                .is_some_and(|e| e.rerank_due(beat));
            let rank = due.then(|| self.rank(a));
            let ag = &mut self.agents[a as usize];
            let Some(e) = ag.election.as_mut() else {
                continue;
            };
            let mut actions = Vec::new();
            if let Some(rank) = rank {
                actions.extend(e.handle(Event::Rank(rank), now_ms));
            }
            for &p in &gone {
                actions.extend(e.handle(Event::Gone(p), now_ms));
            }
            actions.extend(e.handle(Event::Tick, now_ms));
            let said = (e.rank(), e.claims());
            if actions.contains(&Action::BecomeMaster) {
                became.push(a);
            }
            if ag.phase != Phase::Done {
                any_left = true;
            }
            for &other in &members {
                if other == a {
                    continue;
                }
                let o = &mut self.agents[other as usize];
                if !o.alive {
                    continue;
                }
                let Some(e) = o.election.as_mut() else {
                    continue;
                };
                let heard = Event::Heard {
                    from: a,
                    rank: said.0,
                    claims: said.1,
                };
                if e.handle(heard, now_ms).contains(&Action::BecomeMaster) {
                    became.push(other);
                }
            }
        }
        for a in became {
            self.became_master(a);
        }
        self.check_masters(b);
        if any_left || self.agents_pending(b) {
            let at = self.now + self.timing.heartbeat_ms * 1000;
            self.push(at, Ev::Beat(b));
        } else {
            self.branches[b as usize].beating = false;
        }
    }

    fn agents_pending(&self, b: u32) -> bool {
        self.branches[b as usize].members.iter().any(|&a| {
            let ag = &self.agents[a as usize];
            ag.alive && ag.phase == Phase::Idle && ag.holding != Holding::Target
        })
    }

    /// At most one master per branch once the election has settled.
    fn check_masters(&mut self, b: u32) {
        let masters = self.branches[b as usize]
            .members
            .iter()
            .filter(|&&a| {
                let ag = &self.agents[a as usize];
                ag.alive && ag.election.as_ref().is_some_and(|e| e.is_master())
            })
            .count();
        let grace =
            (self.timing.master_timeout_ms + self.timing.settle_ms + 3 * self.timing.heartbeat_ms)
                * 1000;
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
        let ag = &self.agents[a as usize];
        if !ag.has_meta && ag.phase != Phase::MetaFetch {
            // The master fetches the manifest and needs list (for itself,
            // or, holding the target, for the peers that will ask).
            self.fetch_meta(a);
        }
        self.changed(b);
    }

    fn fetch_meta(&mut self, a: u32) {
        let bytes = self.content.manifest_bytes + self.content.needs_bytes;
        let (epoch, b) = (
            self.agents[a as usize].epoch,
            self.agents[a as usize].branch,
        );
        if let Some(t) = self.blocked_until(b) {
            self.push(t, Ev::DpResume(a, epoch));
            return;
        }
        let ag = &mut self.agents[a as usize];
        if ag.phase == Phase::Meta {
            ag.phase = Phase::MetaFetch;
        }
        let (epoch, b) = (ag.epoch, ag.branch);
        let arrive = self.dp_send(b, bytes, None);
        self.agents[a as usize].src.dp += bytes;
        self.push(arrive, Ev::MetaDone(a, epoch));
    }

    /// Needs the manifest: from a peer that has it, else (master) the DP,
    /// else wait for the master.
    fn want_meta(&mut self, a: u32) {
        let ag = &self.agents[a as usize];
        if ag.has_meta || ag.phase != Phase::Meta {
            return;
        }
        let b = ag.branch;
        let is_master = ag.election.as_ref().is_some_and(|e| e.is_master());
        let from = self.branches[b as usize]
            .members
            .iter()
            .copied()
            .find(|&p| {
                let pa = &self.agents[p as usize];
                p != a && pa.alive && pa.has_meta && pa.weight > 0
            });
        if let Some(p) = from {
            let bytes = self.content.manifest_bytes + self.content.needs_bytes;
            let arrive = self.lan_send(p, a, bytes);
            let epoch = self.agents[a as usize].epoch;
            self.agents[a as usize].phase = Phase::MetaFetch;
            self.push(arrive, Ev::MetaDone(a, epoch));
        } else if is_master {
            self.fetch_meta(a);
        } else {
            self.park(a);
        }
    }

    fn park(&mut self, a: u32) {
        let ag = &mut self.agents[a as usize];
        if ag.parked_at.is_none() {
            ag.parked_at = Some(self.now);
            let b = ag.branch;
            self.branches[b as usize].parked.push(a);
        }
    }

    /// Something a peer could take changed: parked agents look again at
    /// their next poll.
    fn changed(&mut self, b: u32) {
        let br = &mut self.branches[b as usize];
        let parked = std::mem::take(&mut br.parked);
        let poll = self.sc.timing.poll_ms * 1000;
        for a in parked {
            let ag = &mut self.agents[a as usize];
            let Some(t0) = ag.parked_at.take() else {
                continue;
            };
            let k = (self.now - t0).div_ceil(poll).max(1);
            let epoch = ag.epoch;
            self.push(t0 + k * poll, Ev::Round(a, epoch));
        }
    }

    /// One scheduling round (`lan_runs`' loop body).
    fn round(&mut self, a: u32) {
        let ag = &self.agents[a as usize];
        if ag.lan_inflight > 0 || ag.dp_inflight > 0 || !ag.lan_queue.is_empty() {
            return;
        }
        if ag.done_units == ag.done.len() {
            return self.complete(a);
        }
        let busy = std::mem::take(&mut self.agents[a as usize].busy_seen);
        let ag = &self.agents[a as usize];
        let b = ag.branch;
        let is_master = ag.election.as_ref().is_some_and(|e| e.is_master());
        let members = &self.branches[b as usize].members;
        let mut view: View<u32> = View {
            have_base: ag.holding == Holding::Base,
            may_use_dp: is_master,
            busy,
            ..View::default()
        };
        // Units some peer holds and we lack.
        let mut offered = vec![0u64; ag.bits.len()];
        for &p in members {
            let pa = &self.agents[p as usize];
            if p == a || !pa.alive || pa.weight == 0 {
                continue;
            }
            // Only peers holding a unit we lack can be chosen for one:
            // leaving the others out changes nothing `assign` decides.
            let mut lacks = false;
            for ((o, p), m) in offered.iter_mut().zip(&pa.bits).zip(&ag.bits) {
                let new = p & !m;
                lacks |= new != 0;
                *o |= new;
            }
            if lacks && !pa.coverage.is_empty() {
                view.holders.insert(p, pa.coverage.clone());
            }
            // Base holders matter only to an agent without the base (with
            // it, `assign` takes seed runs locally first).
            if pa.holding == Holding::Base && !view.have_base {
                view.base_holders.insert(p);
            }
        }
        // 6+ versions behind with no base on the subnet: client-side RDC
        // (master only) finds the seed runs its old version still has.
        let rdc = ag.holding == Holding::Old && is_master && view.base_holders.is_empty();
        let units: Vec<Unit> = if rdc {
            view.have_base = true;
            self.content
                .units
                .iter()
                .zip(&ag.old_has)
                .map(|(u, has)| Unit {
                    seed_offset: u.seed_offset.filter(|_| *has),
                    ..*u
                })
                .collect()
        } else {
            Vec::new()
        };
        let units: &[Unit] = if rdc { &units } else { &self.content.units };
        // Only the units `assign` could give a source (a peer offers it, or
        // it is a seed run we or a peer's base can give, or we may use the
        // DP) are passed: the rest would wait anyway, and leaving them out
        // keeps a round's cost to what can move.
        let all = view.may_use_dp;
        let seeds = view.have_base || !view.base_holders.is_empty();
        let pick: Vec<usize> = (0..units.len())
            .filter(|&i| {
                !ag.done[i]
                    && (all
                        || offered[i / 64] & (1 << (i % 64)) != 0
                        || (seeds && units[i].seed_offset.is_some()))
            })
            .collect();
        let sub: Vec<Unit> = pick.iter().map(|&i| units[i]).collect();
        let plan = swarm::assign(&sub, |_, _| false, &view);
        let mut lan = Vec::new();
        let mut dp = Vec::new();
        let mut local = Vec::new();
        for (k, from) in plan {
            let i = pick[k];
            match from {
                From::Local => local.push(i),
                From::Peer(p) => lan.push((i, p, false)),
                From::AltCopy(p) => lan.push((i, p, true)),
                From::Dp => dp.push(i),
            }
        }
        if !local.is_empty() {
            for &i in &local {
                let len = self.content.units[i].len;
                self.agents[a as usize].src.local += len;
                self.mark_done(a, i);
            }
            self.changed(b);
        }
        if !lan.is_empty() {
            self.agents[a as usize].lan_queue.extend(lan);
            self.pump_lan(a);
        } else if !dp.is_empty() {
            for &i in &dp {
                let f = &mut self.branches[b as usize].dp_fetches[i];
                *f += 1;
                if *f > 1 {
                    let held = self.branches[b as usize].members.iter().any(|&p| {
                        let pa = &self.agents[p as usize];
                        pa.alive && pa.weight > 0 && pa.done.get(i).copied().unwrap_or(false)
                    });
                    if held {
                        self.trace.violations.push(format!(
                            "branch {b}: unit {i} fetched from the DP again while a live peer held it"
                        ));
                    }
                }
            }
            self.agents[a as usize].dp_queue.extend(dp);
            self.pump_dp(a);
        } else if self.agents[a as usize].done_units == self.content.units.len() {
            self.complete(a);
        } else {
            self.park(a);
        }
    }

    fn pump_lan(&mut self, a: u32) {
        let max = self.sc.timing.lan_concurrency;
        loop {
            let ag = &mut self.agents[a as usize];
            if ag.lan_inflight >= max {
                return;
            }
            let Some((i, p, alt)) = ag.lan_queue.pop_front() else {
                break;
            };
            if ag.busy_seen.contains(&p) {
                // It said busy this round: the next round decides again.
                continue;
            }
            ag.lan_inflight += 1;
            let epoch = ag.epoch;
            let slots = self.sc.timing.upload_slots;
            if swarm::busy(self.agents[p as usize].uploads, slots) {
                let latency = self.branches[self.agents[a as usize].branch as usize].lan_latency;
                let at = self.now + 2 * latency;
                self.push(
                    at,
                    Ev::LanBusy {
                        agent: a,
                        epoch,
                        from: p,
                    },
                );
                continue;
            }
            self.agents[p as usize].uploads += 1;
            let len = self.content.units[i].len;
            let arrive = self.lan_send(p, a, len);
            let from_epoch = self.agents[p as usize].epoch;
            self.push(
                arrive,
                Ev::LanDone {
                    agent: a,
                    epoch,
                    unit: i as u32,
                    from: p,
                    from_epoch,
                    alt,
                },
            );
        }
        let ag = &self.agents[a as usize];
        if ag.lan_inflight == 0 && ag.lan_queue.is_empty() {
            self.round(a);
        }
    }

    fn pump_dp(&mut self, a: u32) {
        let max = self.sc.timing.dp_concurrency;
        let (epoch, b) = (
            self.agents[a as usize].epoch,
            self.agents[a as usize].branch,
        );
        if !self.agents[a as usize].dp_queue.is_empty()
            && let Some(t) = self.blocked_until(b)
        {
            // Requests wait for the DP or the link to come back (as the
            // agent's retries do), without holding the shared uplink.
            self.push(t, Ev::DpResume(a, epoch));
            return;
        }
        loop {
            let ag = &mut self.agents[a as usize];
            if ag.dp_inflight >= max {
                return;
            }
            let Some(i) = ag.dp_queue.pop_front() else {
                break;
            };
            ag.dp_inflight += 1;
            let (epoch, b) = (ag.epoch, ag.branch);
            let len = self.content.units[i].len;
            let arrive = self.dp_send(b, len, Some((a, i as u32)));
            self.agents[a as usize].src.dp += len;
            self.push(
                arrive,
                Ev::DpDone {
                    agent: a,
                    epoch,
                    unit: i as u32,
                },
            );
            if !self.agents[a as usize].alive {
                return;
            }
        }
        let ag = &self.agents[a as usize];
        if ag.dp_inflight == 0 {
            self.round(a);
        }
    }

    /// When the DP and branch `b`'s link are both up again, if either is
    /// down now (windows may overlap or follow each other).
    fn blocked_until(&self, b: u32) -> Option<Us> {
        let mut at = self.now;
        loop {
            let next = self
                .dp_outages
                .iter()
                .chain(&self.branches[b as usize].wan_cut)
                .filter(|(s, e)| at >= *s && at < *e)
                .map(|w| w.1)
                .max();
            match next {
                Some(e) => at = e,
                None => break,
            }
        }
        (at > self.now).then_some(at)
    }

    /// Reserves the DP uplink and the branch's WAN link for `bytes` (both
    /// up: the callers wait out outages); returns the arrival time.
    fn dp_send(&mut self, b: u32, bytes: u64, content_for: Option<(u32, u32)>) -> Us {
        let at = self.now;
        let br = &mut self.branches[b as usize];
        let dp_start = at.max(self.dp.busy);
        let dp_end = dp_start + (bytes as f64 * self.dp.us_per_byte) as Us;
        self.dp.busy = dp_end;
        let start = dp_start.max(br.wan.busy);
        let on_link = (bytes as f64 * br.wan.us_per_byte) as Us;
        br.wan.busy = start + on_link;
        let flow = (bytes as f64 * br.loss_cap_us_per_byte.max(br.wan.us_per_byte)) as Us;
        let arrive = start + on_link.max(flow) + br.wan.latency + self.dp.latency;
        br.wan_bytes += bytes;
        let sec = (arrive / 1_000_000) as usize;
        bump(&mut self.trace.wan_per_s, sec, bytes);
        if (b as usize) < PLOTTED_BRANCHES {
            if self.trace.branch_wan_per_s.len() <= b as usize {
                self.trace
                    .branch_wan_per_s
                    .resize(b as usize + 1, Vec::new());
            }
            bump(&mut self.trace.branch_wan_per_s[b as usize], sec, bytes);
        }
        if let Some((agent, unit)) = content_for {
            self.agents[agent as usize].dp_pending.push(Pending {
                unit,
                start,
                end: start + on_link,
                len: bytes,
                sec,
            });
        }
        arrive
    }

    /// A content unit from the DP arrived: counted toward a master crash
    /// scheduled at a fraction of the branch's download.
    fn dp_arrived(&mut self, a: u32, unit: u32) {
        let len = self.content.units[unit as usize].len;
        let ag = &mut self.agents[a as usize];
        ag.dp_pending.retain(|p| p.unit != unit);
        let br = &mut self.branches[ag.branch as usize];
        br.content_dp_bytes += len;
        let origin = self.content.origin_bytes.max(1) as f64;
        if let Some(&x) = br.crash_at_fraction.last()
            && br.content_dp_bytes as f64 >= x * origin
        {
            br.crash_at_fraction.pop();
            self.crash(a, false);
        }
    }

    /// Reserves the sender's and receiver's LAN ports; returns the arrival time.
    fn lan_send(&mut self, from: u32, to: u32, bytes: u64) -> Us {
        let b = self.agents[to as usize].branch as usize;
        let br = &self.branches[b];
        let dur = (bytes as f64 * 8.0 / br.lan_mbps) as Us;
        let latency = br.lan_latency;
        // Ports as two FIFO servers: the sender's uplink and the receiver's
        // downlink, both held for the same interval.
        let (f, t) = (from as usize, to as usize);
        let start = self.now.max(self.port_up(f)).max(self.port_down(t));
        self.set_port_up(f, start + dur);
        self.set_port_down(t, start + dur);
        start + dur + latency
    }

    fn port_up(&self, a: usize) -> Us {
        self.ports.get(a).map_or(0, |p| p.0)
    }
    fn port_down(&self, a: usize) -> Us {
        self.ports.get(a).map_or(0, |p| p.1)
    }
    fn set_port_up(&mut self, a: usize, t: Us) {
        self.port(a).0 = t;
    }
    fn set_port_down(&mut self, a: usize, t: Us) {
        self.port(a).1 = t;
    }
    fn port(&mut self, a: usize) -> &mut (Us, Us) {
        if self.ports.len() <= a {
            self.ports.resize(a + 1, (0, 0));
        }
        &mut self.ports[a]
    }

    /// Records unit `i` as held by `a` (the caller tells the branch).
    fn mark_done(&mut self, a: u32, i: usize) {
        let u = self.content.units[i];
        let ag = &mut self.agents[a as usize];
        if ag.done[i] {
            return;
        }
        ag.done[i] = true;
        ag.done_units += 1;
        if let Some(w) = ag.bits.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
        ag.done_bytes += u.len;
        add_range(&mut ag.coverage, u.offset, u.len);
    }

    fn complete(&mut self, a: u32) {
        let ag = &mut self.agents[a as usize];
        if ag.phase == Phase::Done {
            return;
        }
        ag.phase = Phase::Done;
        ag.done_at = Some(self.now);
        let b = ag.branch;
        self.open -= 1;
        self.changed(b);
    }

    /// An agent stops: `silent` (power loss) or disconnected (SIGKILL,
    /// shutdown: peers see the connection close).
    fn crash(&mut self, a: u32, silent: bool) {
        let ag = &mut self.agents[a as usize];
        if !ag.alive {
            return;
        }
        ag.alive = false;
        ag.epoch += 1;
        ag.silent = silent;
        if !matches!(ag.phase, Phase::Done | Phase::Idle) {
            // It asked and will not finish.
            self.open -= 1;
        }
        // DP responses in flight stop: what the link had not carried yet
        // was never sent.
        let now = self.now;
        let pending = std::mem::take(&mut ag.dp_pending);
        let b = ag.branch as usize;
        for p in pending {
            let span = p.end.saturating_sub(p.start).max(1);
            let sent_frac = (now.saturating_sub(p.start) as f64 / span as f64).clamp(0.0, 1.0);
            let unsent = p.len - (p.len as f64 * sent_frac) as u64;
            self.agents[a as usize].src.dp -= unsent;
            let br = &mut self.branches[b];
            br.wan_bytes -= unsent;
            if let Some(v) = self.trace.wan_per_s.get_mut(p.sec) {
                *v -= unsent;
            }
            if let Some(v) = self
                .trace
                .branch_wan_per_s
                .get_mut(b)
                .and_then(|s| s.get_mut(p.sec))
            {
                *v -= unsent;
            }
        }
        let ag = &mut self.agents[a as usize];
        ag.lan_queue.clear();
        ag.dp_queue.clear();
        ag.lan_inflight = 0;
        ag.dp_inflight = 0;
        ag.parked_at = None;
        let b = ag.branch;
        self.changed(b);
    }

    fn fault(&mut self, k: usize) {
        let Some(&(kind, branch, n, _)) = self.faults.get(k) else {
            return;
        };
        let targets: Vec<u32> = (0..self.branches.len() as u32)
            .filter(|b| branch.is_none_or(|w| w == u64::from(*b)))
            .collect();
        for b in targets {
            match kind {
                FaultKind::MasterCrash => {
                    let m = self.branches[b as usize]
                        .members
                        .iter()
                        .copied()
                        .find(|&a| {
                            let ag = &self.agents[a as usize];
                            ag.alive && ag.election.as_ref().is_some_and(|e| e.is_master())
                        });
                    if let Some(m) = m {
                        self.crash(m, false);
                    }
                }
                FaultKind::AgentCrash | FaultKind::AgentLeave => {
                    for _ in 0..n {
                        let alive: Vec<u32> = self.branches[b as usize]
                            .members
                            .iter()
                            .copied()
                            .filter(|&a| self.agents[a as usize].alive)
                            .collect();
                        if alive.is_empty() {
                            break;
                        }
                        let pick = alive[self.rng.below(alive.len() as u64) as usize];
                        self.crash(pick, kind == FaultKind::AgentCrash);
                    }
                }
                FaultKind::AgentJoin => {
                    for _ in 0..n {
                        let id = self.add_agent(b, Holding::Nothing, 1);
                        self.branches[b as usize].members.push(id);
                        let now = self.now;
                        self.push(now, Ev::Ask(id));
                        self.open += 1;
                    }
                }
                FaultKind::DpOutage | FaultKind::LinkCut => {}
            }
        }
    }

    fn finish(self) -> Outcome {
        let mut sources = Sources::default();
        let mut completion = Vec::new();
        let mut unfinished = 0;
        for ag in &self.agents {
            sources.add(&ag.src);
            match (ag.asked_at, ag.done_at) {
                (Some(s), Some(d)) => completion.push((d - s) as f64 / SEC),
                (Some(_), None) if ag.alive => unfinished += 1,
                _ => {}
            }
        }
        let mut trace = self.trace;
        for (i, ag) in self.agents.iter().enumerate() {
            if ag.alive && ag.asked_at.is_some() && ag.done_units < ag.done.len() {
                trace.violations.push(format!(
                    "agent {i} (branch {}) is alive and lacks part of the content at the end",
                    ag.branch
                ));
            }
        }
        let branches = self
            .branches
            .iter()
            .map(|b| {
                let mut last = Some(0);
                for &a in &b.members {
                    let ag = &self.agents[a as usize];
                    if !ag.alive || ag.asked_at.is_none() {
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
                    .filter_map(|&a| self.agents[a as usize].election.as_ref())
                    .map(|e| e.elections())
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
            agents: self.agents.len() as u64,
        }
    }
}

impl Agent {
    /// Whether peers notice at their next heartbeat that it is gone (the
    /// connection closed); a silent crash is noticed by timeout only.
    fn gone_now(&self) -> bool {
        !self.alive && !self.silent
    }
}

fn bump(v: &mut Vec<u64>, i: usize, n: u64) {
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    v[i] += n;
}

/// Adds `offset..offset+len` to merged, sorted ranges.
fn add_range(ranges: &mut Vec<(u64, u64)>, offset: u64, len: u64) {
    let i = ranges.partition_point(|r| r.0 + r.1 < offset);
    let mut start = offset;
    let mut end = offset + len;
    let mut j = i;
    while j < ranges.len() && ranges[j].0 <= end {
        start = start.min(ranges[j].0);
        end = end.max(ranges[j].0 + ranges[j].1);
        j += 1;
    }
    ranges.splice(i..j, std::iter::once((start, end - start)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge() {
        let mut r = Vec::new();
        add_range(&mut r, 10, 5);
        add_range(&mut r, 0, 5);
        add_range(&mut r, 20, 5);
        assert_eq!(r, vec![(0, 5), (10, 5), (20, 5)]);
        add_range(&mut r, 5, 5);
        assert_eq!(r, vec![(0, 15), (20, 5)]);
        add_range(&mut r, 14, 7);
        assert_eq!(r, vec![(0, 25)]);
    }
}
