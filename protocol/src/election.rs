//! Master election for one package version on one subnet: a sans-IO state
//! machine. Events go in (a peer's announcement heard, a tick of the clock,
//! the agent's own rank changed), decisions come out ([`Action`]). The agent
//! drives it with libp2p and a real clock, simnet with simulated ones; the
//! rules live here only.
//!
//! Every candidate announces its [`Rank`] and whether it claims the master
//! role, once per heartbeat. Ranks compare, in order (greater wins):
//!
//! 1. holds the target version complete (then the WAN is not used at all);
//! 2. fraction of the target's bytes held (per mille, in 5% steps);
//! 3. holds a base version that has needs lists to the target;
//! 4. configured weight (0: never master, and never answers peers);
//! 5. free cache space;
//! 6. the peer id, lowest wins: a deterministic final tie-break.
//!
//! The master is the best-ranked *claimant* among the live candidates (a
//! claimant that sees a better one steps down, so two claimants after a
//! partition heals resolve to one). With no live claimant, after a settle
//! period that lets the candidates hear each other, the best-ranked live
//! candidate claims. A master silent for `master_timeout_ms` is lost: it
//! drops out and the rest re-elect.
//!
//! Driving it (the `handle_*` / `poll_*` shape of the other machines):
//! feed announcements, departures, bans and rank changes with the current
//! [`Timestamp`]; call [`Election::handle_timeout`] when
//! [`Election::poll_timeout`] is reached (every heartbeat: it ticks the
//! decisions and queues our own [`Action::Announce`]); drain
//! [`Election::poll_action`]. No driver writes a heartbeat loop.
//!
//! Claims must be backed and settled: a claimant becomes master over an
//! established one only after claiming for [`COMPLETE_GRACE_BEATS`]
//! heartbeats (so one that claims the best rank out of nowhere does not
//! unseat a working master at once), and a peer the transfer banned (it
//! claimed data it did not deliver, or sent bad data) is dropped and never
//! heard again ([`Election::handle_banned`]). A master whose job failed
//! withdraws ([`Election::handle_withdraw`]): it stops claiming and counts
//! as weight 0 until it rejoins.
//!
//! Incumbency: a master keeps its role while it lives, except that (a) a
//! candidate holding the target complete takes over from one that does not,
//! once it has held it for [`COMPLETE_GRACE_BEATS`] heartbeats, and (b) at
//! each periodic re-election (`reelect_ms`) a candidate strictly better on
//! criteria 1–4 takes over (not one complete for less than the grace).
//! Free space and the peer id only break ties between non-incumbents: the
//! peers that copied the master's finished blocks would otherwise tie with
//! it and take over mid-transfer for nothing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// A candidate's rank. `Ord`: greater is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rank {
    /// Holds the target version complete.
    pub complete: bool,
    /// Per mille of the target's bytes held (0 until the manifest is known).
    pub held_permille: u16,
    /// Holds a base version with needs lists to the target.
    pub has_base: bool,
    /// Configured election weight; 0 never becomes master.
    pub weight: u32,
    /// Free cache space in MiB (coarse, so small fluctuations do not reorder).
    pub free_mib: u64,
}

impl Rank {
    /// The criteria an incumbent is challenged on (1–4).
    fn strength(&self) -> (bool, u16, bool, u32) {
        (
            self.complete,
            self.held_permille.min(1000),
            self.has_base,
            self.weight,
        )
    }

    /// The rank of an agent for `target`, from what it holds: the versions
    /// of the package it holds complete, the bytes of the target's contents
    /// it holds (cached or verified in progress; `total` 0 while the
    /// manifest is unknown), its weight and free cache space. The agent and
    /// simnet both rank this way.
    pub fn from_holdings(
        target: u64,
        versions: &[u64],
        held: u64,
        total: u64,
        weight: u32,
        free_bytes: u64,
    ) -> Rank {
        let complete = versions.contains(&target);
        // In steps of HELD_STEP per mille: peers copying the same master's
        // blocks progress together, and ranks that differ by a few blocks
        // (each agent sees the others' as of their last announcement) made
        // two agents claim at once after a master loss.
        let held_permille = if complete {
            1000
        } else if total > 0 {
            let p = ((u128::from(held) * 1000) / u128::from(total)).min(999) as u16;
            p - p % HELD_STEP
        } else {
            0
        };
        Rank {
            complete,
            held_permille,
            has_base: versions
                .iter()
                .any(|v| *v < target && target - v <= crate::layout::WINDOW as u64),
            weight,
            free_mib: free_bytes >> 20,
        }
    }

    /// May this candidate be master at all?
    pub fn eligible(&self) -> bool {
        self.weight > 0
    }
}

/// A candidate recomputes its rank every this many heartbeats (see
/// [`Election::rerank_due`]).
pub const RERANK_BEATS: u64 = 4;

/// Heartbeats a candidate must have held the target complete before it takes
/// over from an incumbent that does not. Peers copying the master's finished
/// blocks complete moments after it; without the grace, one whose
/// announcement overtook the master's took over at the very end of the
/// transfer, for nothing (and two such peers then met in a conflict).
pub const COMPLETE_GRACE_BEATS: u64 = 2;

/// A peer that left and came back waits one more grace per departure, up
/// to this many graces.
pub const MAX_GRACES: u32 = 8;

/// Granularity of [`Rank::held_permille`] from [`Rank::from_holdings`]: 5%.
pub const HELD_STEP: u16 = 50;

/// Orders candidates `(rank, id)`: greater is better; lower id wins ties.
/// Free space counts by its power of two: agents whose caches share a disk
/// see each other's as of the last announcement, and a few MiB written in
/// between made each rank itself first (two masters at once).
pub fn better<P: Ord>(a: (&Rank, &P), b: (&Rank, &P)) -> bool {
    let room = |r: &Rank| u64::BITS - r.free_mib.leading_zeros();
    let ka = (a.0.strength(), room(a.0));
    let kb = (b.0.strength(), room(b.0));
    ka > kb || (ka == kb && a.1 < b.1)
}

/// Timing of the election, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// How often a candidate announces itself.
    pub heartbeat_ms: u64,
    /// Silence after which a peer (and so a master) is considered lost.
    pub master_timeout_ms: u64,
    /// Wait after joining before claiming, so candidates hear each other.
    pub settle_ms: u64,
    /// Periodic re-election: how often a better candidate may take over.
    pub reelect_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ms: 500,
            master_timeout_ms: 3_000,
            settle_ms: 1_500,
            reelect_ms: 300_000,
        }
    }
}

/// What a candidate last announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    /// Its rank.
    pub rank: Rank,
    /// Whether it claims the master role.
    pub claims: bool,
    /// When it was heard (ms).
    pub at_ms: u64,
    /// Since when it has announced the target complete (ms; meaningful
    /// while `rank.complete`).
    pub complete_since_ms: u64,
    /// Since when it has claimed the role without a break (ms; meaningful
    /// while `claims`).
    pub claiming_since_ms: u64,
    /// Since when it has been live without a break (ms).
    pub live_since_ms: u64,
}

/// An input to the election.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event<P> {
    /// A candidate's announcement arrived. One that repeats what a live
    /// peer last said only refreshes it; what time changes is decided at
    /// the next [`Event::Tick`].
    Heard {
        /// Who.
        from: P,
        /// Its rank.
        rank: Rank,
        /// Whether it claims the master role.
        claims: bool,
    },
    /// A peer disconnected (faster than waiting for its silence).
    Gone(P),
    /// Our own rank changed (content arrived, cache filled).
    Rank(Rank),
    /// Time passed.
    Tick,
}

/// Why the master changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// The first election for this version.
    First,
    /// The master went silent or disconnected.
    MasterLost,
    /// A candidate holding the target complete took over.
    HoldsTarget,
    /// A strictly better candidate took over at the periodic re-election.
    Periodic,
    /// Two claimants met; the better one stays.
    Conflict,
}

/// A decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Announce our rank and claim to every peer (once per heartbeat).
    Announce {
        /// Our rank (weight 0 while withdrawn).
        rank: Rank,
        /// Whether we claim the master role.
        claims: bool,
    },
    /// We are master from now: fetch from the DP, serve the subnet.
    BecomeMaster,
    /// We are no longer master: stop fetching from the DP.
    StepDown,
    /// The master as we see it changed (for logs, status and metrics).
    MasterChanged {
        /// The previous master.
        from: Option<P>,
        /// The new one (`None`: no master right now).
        to: Option<P>,
        /// Why.
        reason: Reason,
        /// The live candidates and their ranks, best first.
        candidates: Vec<(P, Rank)>,
    },
    /// The master announced holding more of the target than before: the
    /// subnet progresses (a waiting peer's stall clock restarts, see
    /// `transfer::Transfer::handle_master_progress`).
    MasterProgress,
}

/// The election for one package version, seen from one candidate.
#[derive(Debug, Clone)]
pub struct Election<P> {
    me: P,
    rank: Rank,
    timing: Timing,
    peers: BTreeMap<P, Heard>,
    claiming: bool,
    master: Option<P>,
    /// Since when our own rank says complete (meaningful while it does).
    complete_since_ms: u64,
    /// No peer is forgotten before then: the table is looked over only
    /// when its oldest entry may have fallen silent for long.
    forget_due_ms: u64,
    claiming_since_ms: u64,
    started_ms: u64,
    now_ms: u64,
    last_periodic_ms: u64,
    elections: u64,
    next_beat_ms: u64,
    beats: u64,
    banned: BTreeSet<P>,
    /// Per peer: how often it left (disconnected or went silent) while
    /// we ran; its graces grow with it (bounded table).
    departures: BTreeMap<P, u32>,
    /// Since when no live peer (nor we) claims the role.
    unclaimed_since_ms: u64,
    /// The best candidate we see that does not claim, and since when it is
    /// (it is passed over once it has had the time to claim).
    top: Option<(P, u64)>,
    withdrawn: bool,
    actions: VecDeque<Action<P>>,
}

impl<P: Ord + Clone + Debug> Election<P> {
    /// Starts the election at `now`; the first heartbeat is due at once.
    pub fn new(me: P, rank: Rank, timing: Timing, now: Timestamp) -> Self {
        let now_ms = now.0;
        Election {
            me,
            rank,
            timing,
            peers: BTreeMap::new(),
            claiming: false,
            master: None,
            complete_since_ms: now_ms,
            forget_due_ms: now_ms,
            claiming_since_ms: now_ms,
            started_ms: now_ms,
            now_ms,
            last_periodic_ms: now_ms,
            elections: 0,
            next_beat_ms: now_ms,
            beats: 0,
            banned: BTreeSet::new(),
            departures: BTreeMap::new(),
            unclaimed_since_ms: now_ms,
            top: None,
            withdrawn: false,
            actions: VecDeque::new(),
        }
    }

    /// A peer's announcement arrived (ignored from a banned peer).
    pub fn handle_heard(&mut self, now: Timestamp, from: P, rank: Rank, claims: bool) {
        if self.banned.contains(&from) {
            return;
        }
        self.handle(Event::Heard { from, rank, claims }, now.0);
    }

    /// A peer disconnected (faster than waiting for its silence).
    pub fn handle_gone(&mut self, now: Timestamp, peer: P) {
        self.handle(Event::Gone(peer), now.0);
    }

    /// The transfer banned a peer: it drops out and is never heard again.
    pub fn handle_banned(&mut self, now: Timestamp, peer: P) {
        if self.banned.len() < 4096 {
            self.banned.insert(peer.clone());
        }
        self.handle(Event::Gone(peer), now.0);
    }

    /// Our own rank changed (content arrived, cache filled).
    pub fn handle_rank(&mut self, now: Timestamp, rank: Rank) {
        self.handle(Event::Rank(rank), now.0);
    }

    /// Our job failed (`true`: stop claiming, count as weight 0) or may be
    /// tried again (`false`).
    pub fn handle_withdraw(&mut self, now: Timestamp, withdrawn: bool) {
        if self.withdrawn != withdrawn {
            self.withdrawn = withdrawn;
            self.handle(Event::Tick, now.0);
        }
    }

    /// A heartbeat is due (or time passed): decisions, then our
    /// announcement. A spurious call only re-decides.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.handle(Event::Tick, now.0);
        if self.now_ms >= self.next_beat_ms {
            self.beats += 1;
            self.next_beat_ms = self.now_ms + self.timing.heartbeat_ms;
            let (rank, claims) = (self.rank(), self.claims());
            self.actions.push_back(Action::Announce { rank, claims });
        }
    }

    /// The next decision or announcement, if any.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    /// When [`Election::handle_timeout`] is next due: the next heartbeat.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        Some(Timestamp(self.next_beat_ms))
    }

    /// Whether our rank should be recomputed before the next heartbeat:
    /// a rank reads the cache, so every [`RERANK_BEATS`] heartbeats, and
    /// every one while we claim the role (our progress is what peers
    /// compare).
    pub fn rank_due(&self) -> bool {
        (self.beats + 1) % RERANK_BEATS == 1 || self.claiming
    }

    /// Whether we withdrew (our job failed).
    pub fn withdrawn(&self) -> bool {
        self.withdrawn
    }

    /// Who we are.
    pub fn me(&self) -> &P {
        &self.me
    }

    /// Whether we claim the master role (what to announce).
    pub fn claims(&self) -> bool {
        self.claiming
    }

    /// Our rank as announced (weight 0 while withdrawn).
    pub fn rank(&self) -> Rank {
        if self.withdrawn {
            Rank {
                weight: 0,
                ..self.rank
            }
        } else {
            self.rank
        }
    }

    /// The master as we see it.
    pub fn master(&self) -> Option<&P> {
        self.master.as_ref()
    }

    /// Whether we are the master.
    pub fn is_master(&self) -> bool {
        self.master.as_ref() == Some(&self.me)
    }

    /// How many times the master changed to someone (elections and re-elections).
    pub fn elections(&self) -> u64 {
        self.elections
    }

    /// The live candidates (ourselves included), best first.
    pub fn candidates(&self) -> Vec<(P, Rank)> {
        let mut v: Vec<(P, Rank)> = self
            .live()
            .map(|(p, h)| (p.clone(), h.rank))
            .chain(std::iter::once((self.me.clone(), self.rank())))
            .collect();
        v.sort_by(|a, b| {
            if better((&a.1, &a.0), (&b.1, &b.0)) {
                std::cmp::Ordering::Less
            } else if better((&b.1, &b.0), (&a.1, &a.0)) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        v
    }

    /// Peers heard within the timeout.
    fn live(&self) -> impl Iterator<Item = (&P, &Heard)> {
        let cutoff = self.now_ms.saturating_sub(self.timing.master_timeout_ms);
        self.peers.iter().filter(move |(_, h)| h.at_ms >= cutoff)
    }

    fn departed(&mut self, p: &P) {
        if self.departures.len() < 4096 || self.departures.contains_key(p) {
            *self.departures.entry(p.clone()).or_default() += 1;
        }
    }

    /// The grace a claim of `p` must have been held for: one of
    /// [`COMPLETE_GRACE_BEATS`] heartbeats, once more per time it left
    /// (up to [`MAX_GRACES`]): a peer that comes and goes never settles.
    fn grace_of(&self, p: &P) -> u64 {
        let left = self.departures.get(p).copied().unwrap_or(0);
        COMPLETE_GRACE_BEATS * self.timing.heartbeat_ms * u64::from(left.min(MAX_GRACES - 1) + 1)
    }

    /// Feeds one event at time `now_ms`; queues the decisions it leads to.
    fn handle(&mut self, event: Event<P>, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        match event {
            Event::Heard { from, rank, claims } => {
                if from == self.me {
                    return;
                }
                let cutoff = self.now_ms.saturating_sub(self.timing.master_timeout_ms);
                let at_ms = self.now_ms;
                match self.peers.get_mut(&from) {
                    // A live peer repeating itself changes nothing the next
                    // tick would not decide anyway (every heartbeat brings
                    // one such announcement per peer: deciding on each
                    // would cost a subnet of n agents n^2 decisions a beat).
                    Some(h) if h.at_ms >= cutoff && h.rank == rank && h.claims == claims => {
                        h.at_ms = at_ms;
                        return;
                    }
                    old => {
                        let old = old.map(|h| h.clone());
                        if old.as_ref().is_some_and(|h| h.at_ms < cutoff) {
                            self.departed(&from);
                        }
                        if self.master.as_ref() == Some(&from)
                            && old
                                .as_ref()
                                .is_some_and(|h| rank.held_permille > h.rank.held_permille)
                        {
                            self.actions.push_back(Action::MasterProgress);
                        }
                        let live_since_ms = match &old {
                            Some(h) if h.at_ms >= cutoff => h.live_since_ms,
                            _ => at_ms,
                        };
                        let complete_since_ms = match &old {
                            Some(h) if h.at_ms >= cutoff && h.rank.complete => h.complete_since_ms,
                            _ => at_ms,
                        };
                        let claiming_since_ms = match &old {
                            Some(h) if h.at_ms >= cutoff && h.claims => h.claiming_since_ms,
                            _ => at_ms,
                        };
                        // Bounded: a subnet has at most this many candidates.
                        if self.peers.len() < 4096 || self.peers.contains_key(&from) {
                            self.peers.insert(
                                from,
                                Heard {
                                    rank,
                                    claims,
                                    at_ms,
                                    complete_since_ms,
                                    claiming_since_ms,
                                    live_since_ms,
                                },
                            );
                        }
                    }
                }
            }
            Event::Gone(p) => {
                if self.peers.remove(&p).is_some() {
                    self.departed(&p);
                }
            }
            // Likewise an unchanged rank.
            Event::Rank(r) if r == self.rank => return,
            Event::Rank(r) => {
                if r.complete && !self.rank.complete {
                    self.complete_since_ms = self.now_ms;
                }
                self.rank = r;
            }
            Event::Tick if self.now_ms >= self.forget_due_ms => {
                // Forget peers silent for long (bounded table). Heard times
                // only grow, so the oldest left says when to look again.
                let silence = 10 * self.timing.master_timeout_ms;
                let forget = self.now_ms.saturating_sub(silence);
                self.peers.retain(|_, h| h.at_ms >= forget);
                let oldest = self.peers.values().map(|h| h.at_ms).min();
                self.forget_due_ms = oldest.unwrap_or(self.now_ms).saturating_add(silence);
            }
            Event::Tick => {}
        }
        let actions = self.decide();
        // A role taken or left is announced at once, not at the next
        // heartbeat: two agents that both see themselves best would
        // otherwise both work as master for up to a heartbeat.
        if actions
            .iter()
            .any(|a| matches!(a, Action::BecomeMaster | Action::StepDown))
        {
            self.next_beat_ms = self.now_ms;
        }
        self.actions.extend(actions);
    }

    /// Applies the rules of the module documentation.
    fn decide(&mut self) -> Vec<Action<P>> {
        let mut out = Vec::new();
        let me = self.me.clone();
        // The live claimants, best first.
        let grace = COMPLETE_GRACE_BEATS * self.timing.heartbeat_ms;
        let my_rank = self.rank();
        let mut claimants: Vec<(P, Rank)> = self
            .live()
            .filter(|(_, h)| h.claims && h.rank.eligible())
            .map(|(p, h)| (p.clone(), h.rank))
            .collect();
        if self.claiming {
            claimants.push((me.clone(), my_rank));
        }
        // A claim is settled once held for the grace; an established master
        // (the one we see, still claiming) is unseated only by settled ones.
        let claiming_for = |p: &P| -> u64 {
            let since = if *p == me {
                self.claiming_since_ms
            } else {
                self.peers
                    .get(p)
                    .map_or(self.now_ms, |h| h.claiming_since_ms)
            };
            self.now_ms.saturating_sub(since)
        };
        let incumbent = self
            .master
            .clone()
            .filter(|m| claimants.iter().any(|(p, _)| p == m));
        match &incumbent {
            Some(inc) => {
                claimants.retain(|(p, _)| p == inc || claiming_for(p) >= self.grace_of(p));
            }
            // Even with no master, one that came and went must settle.
            None => claimants.retain(|(p, _)| {
                *p == me || !self.departures.contains_key(p) || claiming_for(p) >= self.grace_of(p)
            }),
        }
        let best_of = |v: &[(P, Rank)]| -> Option<(P, Rank)> {
            v.iter()
                .fold(None::<&(P, Rank)>, |acc, c| match acc {
                    Some(a) if !better((&c.1, &c.0), (&a.1, &a.0)) => Some(a),
                    _ => Some(c),
                })
                .cloned()
        };
        // Candidates: the best-ranked one that does not claim though it
        // had the time to (the settle period and a grace since it appeared,
        // since the role was last held, and since it became the best we
        // see) is passed over, then the next best is looked at the same
        // way; so one that ranks best and never claims cannot leave the
        // subnet without a master. Only the best is timed: the others have
        // no reason to claim, and passing them over too made every agent
        // see itself first once a rogue was passed over (all claimed).
        let wait = self.timing.settle_ms + grace;
        let mut everyone: Vec<(P, Rank, Option<u64>)> = self
            .live()
            .map(|(p, h)| (p.clone(), h.rank, (!h.claims).then_some(h.live_since_ms)))
            .chain(std::iter::once((me.clone(), my_rank, None)))
            .filter(|(_, r, _)| r.eligible())
            .collect();
        let mut top = None;
        let best_index = |v: &[(P, Rank, Option<u64>)]| {
            (0..v.len()).reduce(|a, b| match (v.get(a), v.get(b)) {
                (Some(x), Some(y)) if better((&y.1, &y.0), (&x.1, &x.0)) => b,
                _ => a,
            })
        };
        while let Some(k) = best_index(&everyone) {
            let Some((p, _, Some(live_since))) = everyone.get(k) else {
                break;
            };
            let top_since = match &self.top {
                Some((q, t)) if q == p => *t,
                _ => self.now_ms,
            };
            let since = (*live_since).max(self.unclaimed_since_ms).max(top_since);
            if self.now_ms.saturating_sub(since) < wait.max(self.grace_of(p)) {
                top = Some((p.clone(), top_since));
                break;
            }
            everyone.swap_remove(k);
        }
        self.top = top;
        let everyone: Vec<(P, Rank)> = everyone.into_iter().map(|(p, r, _)| (p, r)).collect();
        let best = best_of(&everyone);
        let leader = best_of(&claimants);
        let periodic_due =
            self.now_ms.saturating_sub(self.last_periodic_ms) >= self.timing.reelect_ms;
        let complete_for = |p: &P| -> u64 {
            let since = if *p == me {
                self.complete_since_ms
            } else {
                self.peers
                    .get(p)
                    .map_or(self.now_ms, |h| h.complete_since_ms)
            };
            self.now_ms.saturating_sub(since)
        };
        let (to, reason): (Option<P>, Reason) = match leader.clone() {
            Some((lp, lr)) => {
                // Challenges against the incumbent claimant.
                let claims = |p: &P| *p == me || claimants.iter().any(|(c, _)| c == p);
                let challenger = best.filter(|(bp, br)| {
                    let completes = br.complete && !lr.complete;
                    // Not even at a periodic re-election: that is the
                    // handover the grace is there to prevent.
                    let in_grace = completes && complete_for(bp) < self.grace_of(bp);
                    // Only a settled claimant (or we) unseats the master:
                    // it keeps working until the challenger has claimed
                    // for its grace.
                    *bp != lp
                        && claims(bp)
                        && !in_grace
                        && (completes || (periodic_due && br.strength() > lr.strength()))
                });
                match challenger {
                    Some((bp, br)) => (
                        Some(bp),
                        if br.complete && !lr.complete {
                            Reason::HoldsTarget
                        } else {
                            Reason::Periodic
                        },
                    ),
                    None if claimants.len() > 1 => (Some(lp), Reason::Conflict),
                    None => (Some(lp), Reason::First),
                }
            }
            None => {
                let settled = self.now_ms.saturating_sub(self.started_ms) >= self.timing.settle_ms;
                if settled {
                    let reason = if self.master.is_some() {
                        Reason::MasterLost
                    } else {
                        Reason::First
                    };
                    (best.map(|b| b.0), reason)
                } else {
                    (None, Reason::First)
                }
            }
        };
        if periodic_due {
            self.last_periodic_ms = self.now_ms;
        }
        if leader.is_some() {
            self.unclaimed_since_ms = self.now_ms;
        }
        // Our own role follows the decision.
        let should_claim = to.as_ref() == Some(&me) && my_rank.eligible();
        if should_claim && !self.claiming {
            self.claiming = true;
            self.claiming_since_ms = self.now_ms;
            out.push(Action::BecomeMaster);
        } else if !should_claim && self.claiming {
            self.claiming = false;
            out.push(Action::StepDown);
        }
        // The master as we see it: a peer becomes master when it claims, not
        // when we expect it to.
        let seen = match &to {
            Some(p) if *p == me => Some(me.clone()),
            Some(p) => self
                .live()
                .any(|(q, h)| q == p && h.claims)
                .then(|| p.clone()),
            None => None,
        };
        if seen != self.master {
            let reason = match (&self.master, &seen) {
                (Some(old), _) if !self.live().any(|(q, _)| q == old) && *old != me => {
                    Reason::MasterLost
                }
                _ => reason,
            };
            if seen.is_some() {
                self.elections += 1;
            }
            out.push(Action::MasterChanged {
                from: self.master.clone(),
                to: seen.clone(),
                reason,
                candidates: self.candidates(),
            });
            self.master = seen;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(held: u16, weight: u32) -> Rank {
        Rank {
            complete: held >= 1000,
            held_permille: held,
            has_base: true,
            weight,
            free_mib: 1000,
        }
    }

    /// A fully connected subnet of elections, with message delivery each step.
    struct Net {
        nodes: Vec<Option<Election<u32>>>,
        now: u64,
    }

    impl Net {
        fn new(ranks: &[Rank]) -> Net {
            Net::with_timing(ranks, Timing::default())
        }
        fn with_timing(ranks: &[Rank], t: Timing) -> Self {
            Net {
                nodes: ranks
                    .iter()
                    .enumerate()
                    .map(|(i, r)| Some(Election::new(i as u32, *r, t, Timestamp(0))))
                    .collect(),
                now: 0,
            }
        }
        /// Advances one heartbeat: everyone announces, everyone ticks.
        fn step(&mut self) {
            self.now += Timing::default().heartbeat_ms;
            self.step_at_now();
        }
        fn step_at_now(&mut self) {
            let said: Vec<(u32, Rank, bool)> = self
                .nodes
                .iter()
                .filter_map(|n| n.as_ref().map(|e| (*e.me(), e.rank(), e.claims())))
                .collect();
            let now = Timestamp(self.now);
            for e in self.nodes.iter_mut().flatten() {
                for (from, rank, claims) in &said {
                    e.handle_heard(now, *from, *rank, *claims);
                }
                e.handle_timeout(now);
                while e.poll_action().is_some() {}
            }
        }
        fn steps(&mut self, n: usize) {
            for _ in 0..n {
                self.step();
            }
        }
        /// Node `i`'s own rank changes at `at`.
        fn set_rank(&mut self, i: usize, r: Rank, at: u64) {
            if let Some(n) = self.nodes[i].as_mut() {
                n.handle_rank(Timestamp(at), r);
            }
        }
        fn masters(&self) -> Vec<u32> {
            self.nodes
                .iter()
                .flatten()
                .filter(|e| e.is_master())
                .map(|e| *e.me())
                .collect()
        }
        fn views(&self) -> Vec<Option<u32>> {
            self.nodes
                .iter()
                .flatten()
                .map(|e| e.master().copied())
                .collect()
        }
    }

    #[test]
    fn order_of_criteria() {
        let base = rank(500, 1);
        let p = 7u32;
        let q = 3u32;
        let complete = Rank {
            complete: true,
            ..base
        };
        assert!(better((&complete, &p), (&base, &q)));
        let more = Rank {
            held_permille: 600,
            has_base: false,
            ..base
        };
        assert!(better((&more, &p), (&base, &q)));
        let with_base = Rank {
            has_base: true,
            weight: 1,
            ..base
        };
        let heavier_no_base = Rank {
            has_base: false,
            weight: 9,
            ..base
        };
        assert!(better((&with_base, &p), (&heavier_no_base, &q)));
        let heavier = Rank { weight: 2, ..base };
        assert!(better((&heavier, &p), (&base, &q)));
        let roomier = Rank {
            free_mib: 5000,
            ..base
        };
        assert!(better((&roomier, &p), (&base, &q)));
        // Everything equal: the lower id wins.
        assert!(better((&base, &q), (&base, &p)));
        assert!(!better((&base, &p), (&base, &p)));
    }

    #[test]
    fn one_master_after_settling_and_everyone_agrees() {
        let mut net = Net::new(&[rank(100, 1), rank(300, 1), rank(300, 2), rank(0, 1)]);
        net.step();
        assert!(net.masters().is_empty(), "nobody claims before settling");
        net.steps(6);
        assert_eq!(net.masters(), vec![2]);
        assert!(net.views().iter().all(|v| *v == Some(2)));
    }

    #[test]
    fn weight_zero_never_master() {
        let mut net = Net::new(&[rank(900, 0), rank(0, 1)]);
        net.steps(8);
        assert_eq!(net.masters(), vec![1]);
        // Alone with weight 0: no master at all.
        let mut net = Net::new(&[rank(900, 0)]);
        net.steps(8);
        assert!(net.masters().is_empty());
    }

    #[test]
    fn lost_master_is_replaced_within_the_timeout() {
        let mut net = Net::new(&[rank(0, 1), rank(0, 1), rank(0, 1)]);
        net.steps(6);
        assert_eq!(net.masters(), vec![0]);
        net.nodes[0] = None;
        let lost_at = net.now;
        let mut steps = 0;
        while net.masters().is_empty() {
            net.step();
            steps += 1;
            assert!(steps < 20, "no re-election");
        }
        net.step();
        assert_eq!(net.masters(), vec![1]);
        assert!(net.views().iter().all(|v| *v == Some(1)));
        assert!(net.now - lost_at <= Timing::default().master_timeout_ms + 1_000);
        let e = net.nodes[2].as_ref().map(|e| e.elections());
        assert_eq!(e, Some(2));
    }

    #[test]
    fn incumbent_keeps_role_on_ties_but_a_holder_of_the_target_takes_over() {
        let mut net = Net::new(&[rank(0, 1), rank(0, 1)]);
        net.steps(6);
        assert_eq!(net.masters(), vec![0]);
        // The peer catches up with the master: no change.
        for n in net.nodes.iter_mut().flatten() {
            let r = rank(500, 1);
            n.handle_rank(Timestamp(net.now), r);
        }
        net.steps(4);
        assert_eq!(net.masters(), vec![0]);
        // A peer holding the complete target joins: it takes over once it
        // has held it for the grace.
        net.nodes.push(Some(Election::new(
            9,
            rank(1000, 1),
            Timing::default(),
            Timestamp(net.now),
        )));
        net.step();
        assert_eq!(net.masters(), vec![0], "not within the grace");
        // It claims once its grace passed; the master hands over once the
        // claim has held for a grace too (working until then).
        net.steps(3);
        assert!(net.masters().contains(&0), "{:?}", net.masters());
        net.steps(3);
        assert_eq!(net.masters(), vec![9]);
    }

    #[test]
    fn a_peer_completing_just_before_the_master_does_not_take_over() {
        let mut net = Net::new(&[rank(0, 1), rank(0, 1), rank(0, 1)]);
        net.steps(6);
        assert_eq!(net.masters(), vec![0]);
        // Node 1 copied the master's last blocks and says so a heartbeat
        // before the master's own announcement catches up.
        let now = net.now;
        net.set_rank(1, rank(1000, 1), now);
        net.step();
        net.set_rank(0, rank(1000, 1), now + 600);
        net.steps(6);
        assert_eq!(net.masters(), vec![0]);
        let e: Vec<u64> = net.nodes.iter().flatten().map(|e| e.elections()).collect();
        assert_eq!(e, vec![1, 1, 1], "one election, no handover at the end");
    }

    #[test]
    fn the_grace_holds_at_a_periodic_reelection_too() {
        // Re-elections every heartbeat: one falls inside any grace.
        let t = Timing {
            reelect_ms: Timing::default().heartbeat_ms,
            ..Timing::default()
        };
        let mut net = Net::with_timing(&[rank(0, 1), rank(0, 1)], t);
        net.steps(6);
        assert_eq!(net.masters(), vec![0]);
        let now = net.now;
        net.set_rank(1, rank(1000, 1), now);
        net.step();
        assert_eq!(net.masters(), vec![0], "taken over within the grace");
        net.steps(6);
        assert_eq!(
            net.masters(),
            vec![1],
            "a complete peer takes over after it"
        );
    }

    #[test]
    fn a_best_ranked_peer_that_never_claims_is_passed_over() {
        // Node 2 announces the best rank and never claims (a rogue, or a
        // broken agent): after the settle time and a grace the others elect
        // among themselves.
        let mut net = Net::new(&[rank(0, 1), rank(0, 1)]);
        let mut e = 0;
        for _ in 0..12 {
            net.now += Timing::default().heartbeat_ms;
            let now = Timestamp(net.now);
            for n in net.nodes.iter_mut().flatten() {
                n.handle_heard(now, 2, rank(1000, u32::MAX), false);
            }
            net.step_at_now();
            e += 1;
        }
        assert_eq!(net.masters(), vec![0], "after {e} beats");
        // The same once a master is lost.
        net.nodes[0] = None;
        for _ in 0..20 {
            net.now += Timing::default().heartbeat_ms;
            let now = Timestamp(net.now);
            for n in net.nodes.iter_mut().flatten() {
                n.handle_heard(now, 2, rank(1000, u32::MAX), false);
            }
            net.step_at_now();
        }
        assert_eq!(net.masters(), vec![1]);
    }

    #[test]
    fn the_masters_progress_is_told_once_per_increase() {
        let t = Timing::default();
        let mut e = Election::new(1u32, rank(0, 1), t, Timestamp(0));
        let mut now = 0;
        while e.master() != Some(&0) {
            now += t.heartbeat_ms;
            assert!(now < 20 * t.heartbeat_ms, "node 0 never became master");
            e.handle_heard(Timestamp(now), 0, rank(0, 5), true);
            e.handle_timeout(Timestamp(now));
        }
        while e.poll_action().is_some() {}
        let progress = |e: &mut Election<u32>| {
            std::iter::from_fn(|| e.poll_action())
                .filter(|a| matches!(a, Action::MasterProgress))
                .count()
        };
        e.handle_heard(Timestamp(now + 1), 0, rank(100, 5), true);
        assert_eq!(progress(&mut e), 1);
        e.handle_heard(Timestamp(now + 2), 0, rank(100, 5), true);
        assert_eq!(progress(&mut e), 0, "a repeat is no progress");
        // Another peer's progress is not the master's.
        e.handle_heard(Timestamp(now + 3), 2, rank(0, 1), false);
        e.handle_heard(Timestamp(now + 4), 2, rank(300, 1), false);
        assert_eq!(progress(&mut e), 0);
    }

    #[test]
    fn passing_over_a_silent_best_never_makes_two_masters() {
        // Four honest agents that all heard the rogue from the start: when
        // it is passed over, only the best of them claims (passing over
        // every non-claimer at once made each see itself first).
        let mut net = Net::new(&[rank(0, 1), rank(0, 1), rank(0, 1), rank(0, 1)]);
        for beat in 0..30 {
            net.now += Timing::default().heartbeat_ms;
            let now = Timestamp(net.now);
            for n in net.nodes.iter_mut().flatten() {
                n.handle_heard(now, 9, rank(1000, u32::MAX), false);
            }
            net.step_at_now();
            assert!(net.masters().len() <= 1, "beat {beat}: {:?}", net.masters());
        }
        assert_eq!(net.masters(), vec![0]);
    }

    #[test]
    fn a_claimant_that_comes_and_goes_never_settles() {
        let mut net = Net::new(&[rank(0, 1), rank(0, 1)]);
        net.steps(6);
        assert_eq!(net.masters(), vec![0]);
        // Node 7 claims the best rank for two heartbeats, leaves for two,
        // again and again: it never becomes master in anyone's view.
        for round in 0..20 {
            for k in 0..4 {
                net.now += Timing::default().heartbeat_ms;
                let now = Timestamp(net.now);
                for n in net.nodes.iter_mut().flatten() {
                    if k < 2 {
                        n.handle_heard(now, 7, rank(1000, u32::MAX), true);
                    } else if k == 2 {
                        n.handle_gone(now, 7);
                    }
                }
                net.step_at_now();
                assert_eq!(net.masters(), vec![0], "round {round}");
                assert!(
                    net.views().iter().all(|v| *v == Some(0)),
                    "round {round}: {:?}",
                    net.views()
                );
            }
        }
    }

    #[test]
    fn periodic_reelection_lets_a_strictly_better_candidate_take_over() {
        let mut net = Net::new(&[rank(0, 1), rank(0, 1)]);
        net.steps(6);
        assert_eq!(net.masters(), vec![0]);
        // Node 1 now holds more of the target (say, an older version appeared).
        net.set_rank(1, rank(700, 1), net.now);
        net.steps(4);
        assert_eq!(net.masters(), vec![0], "no takeover before the re-election");
        let until = net.now + Timing::default().reelect_ms + 2_000;
        while net.now < until {
            net.step();
        }
        assert_eq!(net.masters(), vec![1]);
    }

    fn drain(e: &mut Election<u32>) -> Vec<Action<u32>> {
        std::iter::from_fn(|| e.poll_action()).collect()
    }

    #[test]
    fn two_claimants_resolve_to_the_better_one_once_settled() {
        let t = Timing::default();
        let mut a = Election::new(1u32, rank(0, 1), t, Timestamp(0));
        let mut b = Election::new(2u32, rank(0, 1), t, Timestamp(0));
        // Each settles alone (a partition), each claims.
        a.handle_timeout(Timestamp(2_000));
        b.handle_timeout(Timestamp(2_000));
        assert!(a.is_master() && b.is_master());
        // The partition heals: b keeps its role until a's claim has held
        // for the grace, then steps down.
        b.handle_heard(Timestamp(2_100), 1, a.rank(), true);
        assert!(b.is_master(), "not within the grace");
        b.handle_heard(Timestamp(2_600), 1, a.rank(), true);
        b.handle_heard(Timestamp(3_200), 1, a.rank(), true);
        b.handle_timeout(Timestamp(3_200));
        assert!(drain(&mut b).contains(&Action::StepDown));
        a.handle_heard(Timestamp(3_200), 2, b.rank(), false);
        assert!(a.is_master() && !b.is_master());
        assert_eq!(b.master(), Some(&1));
    }

    #[test]
    fn a_claimant_out_of_nowhere_does_not_unseat_the_master_at_once() {
        let mut net = Net::new(&[rank(0, 1), rank(0, 1)]);
        net.steps(6);
        assert_eq!(net.masters(), vec![0]);
        // A stranger claims the best possible rank; the master holds on
        // for the grace, then yields; the stranger is banned (it served
        // nothing) and the master takes the role back.
        let best = Rank {
            complete: true,
            held_permille: 1000,
            has_base: true,
            weight: u32::MAX,
            free_mib: u64::MAX,
        };
        let now = Timestamp(net.now + 100);
        let e = net.nodes[0].as_mut().unwrap();
        e.handle_heard(now, 99, best, true);
        assert!(e.is_master(), "yielded at once");
        e.handle_banned(Timestamp(net.now + 200), 99);
        e.handle_heard(Timestamp(net.now + 300), 99, best, true);
        e.handle_timeout(Timestamp(net.now + 2_000));
        assert!(e.is_master());
    }

    #[test]
    fn a_withdrawn_master_stops_claiming_and_another_takes_over() {
        let mut net = Net::new(&[rank(0, 1), rank(0, 1)]);
        net.steps(6);
        assert_eq!(net.masters(), vec![0]);
        let now = Timestamp(net.now);
        net.nodes[0].as_mut().unwrap().handle_withdraw(now, true);
        net.steps(6);
        assert_eq!(net.masters(), vec![1]);
        assert_eq!(net.nodes[0].as_ref().unwrap().rank().weight, 0);
    }

    #[test]
    fn announcements_come_once_per_heartbeat() {
        let t = Timing::default();
        let mut e = Election::new(1u32, rank(0, 1), t, Timestamp(0));
        assert_eq!(e.poll_timeout(), Some(Timestamp(0)));
        e.handle_timeout(Timestamp(0));
        let n = drain(&mut e)
            .iter()
            .filter(|a| matches!(a, Action::Announce { .. }))
            .count();
        assert_eq!(n, 1);
        assert_eq!(e.poll_timeout(), Some(Timestamp(t.heartbeat_ms)));
        e.handle_timeout(Timestamp(10));
        assert!(
            drain(&mut e)
                .iter()
                .all(|a| !matches!(a, Action::Announce { .. }))
        );
    }

    #[test]
    fn rank_from_holdings() {
        let r = Rank::from_holdings(7, &[3, 5], 250, 1000, 1, 3 << 20);
        assert!(!r.complete);
        assert_eq!(r.held_permille, 250);
        assert!(r.has_base, "v5 is within the window of v7");
        assert_eq!(r.free_mib, 3);
        // v2 is outside the window of v7; nothing known of the manifest yet.
        let r = Rank::from_holdings(7, &[2], 0, 0, 1, 0);
        assert!(!r.has_base);
        assert_eq!(r.held_permille, 0);
        // Everything held but not recorded complete stays below complete.
        let r = Rank::from_holdings(7, &[], 1000, 1000, 1, 0);
        assert_eq!(r.held_permille, 950, "steps of 5%, never complete");
        let r = Rank::from_holdings(7, &[6], 268, 1000, 1, 0);
        assert_eq!(r.held_permille, 250);
        let r = Rank::from_holdings(7, &[7], 0, 0, 0, 0);
        assert!(r.complete && r.held_permille == 1000 && !r.eligible());
    }
}
