//! What goes wrong: crashes (silent or not), departures, joins, DP
//! outages, cut links, and rogue peers that misbehave in five ways
//! ([`Misbehaviour`]; their answers are in `rogue`).

use peerdelta_protocol::election::Rank;
use peerdelta_protocol::rangeset::RangeSet;

use crate::agent::Holding;
use crate::link::Us;
use crate::scenario::{FaultKind, Misbehaviour};
use crate::sim::{C, Ev, Sim, us};

/// A flapping rogue comes or goes this often.
const FLAP: Us = 1_000_000;

impl Sim<'_> {
    /// Turns the scenario's faults into events, outage windows and crash
    /// points.
    pub(crate) fn schedule_faults(&mut self) {
        let sc = self.sc;
        for (k, f) in sc.faults.iter().enumerate() {
            let at = f.at_s.map(us);
            self.faults.push((f.kind, f.branch, f.agents, f.behaviour));
            let end = f.end_s.map(us);
            let ours = |i: usize| f.branch.is_none_or(|w| w == i as u64);
            match (f.kind, at, f.at_fraction) {
                (FaultKind::MasterCrash, None, Some(x)) => {
                    for (i, b) in self.branches.iter_mut().enumerate() {
                        if ours(i) {
                            b.crash_at_fraction.push(x);
                        }
                    }
                }
                (FaultKind::DpOutage, Some(at), _) => {
                    self.dp_outages.push((at, end.unwrap_or(at)));
                }
                (FaultKind::LinkCut, Some(at), _) => {
                    for (i, b) in self.branches.iter_mut().enumerate() {
                        if ours(i) {
                            b.wan.cuts.push((at, end.unwrap_or(at)));
                        }
                    }
                }
                (_, Some(at), _) => {
                    self.push(at, Ev::Fault(k as u32));
                    self.open += 1;
                }
                _ => {}
            }
        }
        for b in &mut self.branches {
            b.crash_at_fraction
                .sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
        }
    }

    /// Fault `k` happens now.
    pub(crate) fn fault(&mut self, k: usize) {
        let Some(&(kind, branch, n, behaviour)) = self.faults.get(k) else {
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
                            ag.honest_alive() && ag.election.as_ref().is_some_and(|e| e.is_master())
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
                            .filter(|&a| self.agents[a as usize].honest_alive())
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
                FaultKind::Rogue => {
                    if let Some(kind) = behaviour {
                        for _ in 0..n {
                            self.rogue_join(b, kind);
                        }
                    }
                }
                FaultKind::DpOutage | FaultKind::LinkCut => {}
            }
        }
    }

    /// An agent stops: `silent` (power loss) or disconnected (SIGKILL,
    /// shutdown: peers see the connection close at their next heartbeat).
    pub(crate) fn crash(&mut self, a: u32, silent: bool) {
        let now = self.now;
        let ag = &mut self.agents[a as usize];
        if !ag.alive {
            return;
        }
        ag.alive = false;
        ag.epoch += 1;
        ag.silent = silent;
        ag.announced = None;
        ag.transfer = None;
        ag.timer = None;
        if ag.asked_at.is_some() && ag.done_at.is_none() && ag.rogue.is_none() {
            // It asked and will not finish.
            self.open -= 1;
        }
        // DP responses in flight stop: what the link had not carried yet
        // was never sent.
        let pending = std::mem::take(&mut ag.dp_pending);
        let b = ag.branch as usize;
        for p in pending {
            let span = p.end.saturating_sub(p.start).max(1);
            let sent_frac = (now.saturating_sub(p.start) as f64 / span as f64).clamp(0.0, 1.0);
            let unsent = p.len - (p.len as f64 * sent_frac) as u64;
            self.agents[a as usize].src.dp -= unsent;
            self.branches[b].wan_bytes -= unsent;
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
    }

    /// Content from the DP arrived: counted toward a master crash scheduled
    /// at a fraction of the branch's download. Whether `a` crashes now.
    pub(crate) fn dp_arrived(&mut self, a: u32, units: &[usize]) -> bool {
        let len: u64 = units.iter().map(|&i| self.content.units[i].len).sum();
        let br = &mut self.branches[self.agents[a as usize].branch as usize];
        br.content_dp_bytes += len;
        let origin = self.content.origin_bytes.max(1) as f64;
        if let Some(&x) = br.crash_at_fraction.last()
            && br.content_dp_bytes as f64 >= x * origin
        {
            br.crash_at_fraction.pop();
            return true;
        }
        false
    }

    /// A rogue peer connects to branch `b`.
    fn rogue_join(&mut self, b: u32, kind: Misbehaviour) {
        let id = self.add_agent(b, Holding::Nothing, 1);
        self.agents[id as usize].rogue = Some(kind);
        self.branches[b as usize].members.push(id);
        self.connected(id);
        if kind == Misbehaviour::SlowReader {
            // It opens as many slow reads at every holder as it may.
            let slots = self.sc.timing.upload_slots;
            let cap = (slots / 2).max(1);
            if slots > 0 {
                for k in 0..self.branches[b as usize].members.len() {
                    let o = self.branches[b as usize].members[k];
                    if o != id && self.agents[o as usize].rogue.is_none() {
                        for _ in 0..cap {
                            self.agents[o as usize].count_upload(id, true);
                        }
                    }
                }
            }
        }
        if kind == Misbehaviour::Flapping {
            let at = self.now + FLAP;
            self.push(at, Ev::Flap(id));
        }
    }

    /// Every transfer of `p`'s branch may ask it from now on.
    fn connected(&mut self, p: u32) {
        let now = crate::sim::ts(self.now);
        let b = self.agents[p as usize].branch as usize;
        for k in 0..self.branches[b].members.len() {
            let o = self.branches[b].members[k];
            if o == p {
                continue;
            }
            if let Some(t) = self.agents[o as usize].transfer.as_mut() {
                t.handle_peer(now, p);
                self.drive(o);
            }
        }
    }

    /// A flapping rogue comes or goes.
    pub(crate) fn flap(&mut self, a: u32) {
        if !self.agents[a as usize].alive || self.open == 0 {
            return;
        }
        let now = crate::sim::ts(self.now);
        let ag = &mut self.agents[a as usize];
        ag.present = !ag.present;
        ag.announced = None;
        if ag.present {
            self.connected(a);
        } else {
            let b = ag.branch as usize;
            for k in 0..self.branches[b].members.len() {
                let o = self.branches[b].members[k];
                let oa = &mut self.agents[o as usize];
                if o == a || !oa.alive {
                    continue;
                }
                if let Some(e) = oa.election.as_mut() {
                    e.handle_gone(now, a);
                }
                if let Some(t) = oa.transfer.as_mut() {
                    t.handle_peer_gone(now, a);
                }
                self.decisions(o);
                self.drive(o);
            }
        }
        let at = self.now + FLAP;
        self.push(at, Ev::Flap(a));
    }

    /// A rogue's heartbeat: its (lying) announcement, and for those that
    /// claim everything, the news that they hold it all, again.
    pub(crate) fn rogue_beat(&mut self, a: u32, members: &[u32]) {
        let ag = &self.agents[a as usize];
        let Some(kind) = ag.rogue else { return };
        if !ag.present {
            return;
        }
        let now = crate::sim::ts(self.now);
        let (rank, claims) = rogue_rank(kind);
        let whole = matches!(kind, Misbehaviour::NotFound | Misbehaviour::Busy)
            .then(|| RangeSet::whole(self.content.size));
        // Heard with the beat's other announcements, when in a beat and
        // a repeat (a rogue's rank never changes, but it comes and goes).
        let repeat =
            self.agents[a as usize].announced.replace((rank, claims)) == Some((rank, claims));
        let batched = match self.beat_announces.as_mut() {
            Some(b) if repeat => {
                b.push((a, rank, claims));
                true
            }
            _ => false,
        };
        for &o in members {
            let oa = &mut self.agents[o as usize];
            if o == a || !oa.honest_alive() {
                continue;
            }
            if let Some(e) = oa.election.as_mut()
                && !batched
            {
                e.handle_heard(now, a, rank, claims);
            }
            if let (Some(t), Some(w)) = (oa.transfer.as_mut(), &whole) {
                t.handle_have(now, a, C, w);
            }
            self.decisions(o);
            self.drive(o);
        }
    }
}

/// What a rogue announces: its rank, and whether it claims the role.
pub(crate) fn rogue_rank(kind: Misbehaviour) -> (Rank, bool) {
    let best = Rank {
        complete: true,
        held_permille: 1000,
        has_base: true,
        weight: u32::MAX,
        free_mib: u64::MAX,
    };
    match kind {
        Misbehaviour::SilentMaster | Misbehaviour::Flapping => (best, true),
        Misbehaviour::NotFound | Misbehaviour::Busy => (best, false),
        Misbehaviour::SlowReader => (Rank::from_holdings(7, &[], 0, 0, 1, 1 << 30), false),
    }
}
