//! The transfer state machine with several agents, queues between them,
//! latency, and a clock that jumps to the earliest deadline: honest agents
//! always finish, lying and silent peers are banned, busy ones lose their
//! claims, a DP outage is waited out, and the DP carries each unit about
//! once.

use std::collections::{BTreeMap, BTreeSet};

use peerdelta_protocol::rangeset::RangeSet;
use peerdelta_protocol::swarm::Unit;
use peerdelta_protocol::time::Timestamp;
use peerdelta_protocol::transfer::{
    Action, BanReason, Config, ContentId, ItemFrom, ItemId, Outcome, Rebuild, RequestId, RunsFrom,
    Transfer,
};
use proptest::prelude::*;

const C: ContentId = ContentId(0);
const MANIFEST: ItemId = ItemId(0);

/// How a rogue misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rogue {
    /// Claims everything, never answers.
    Silent,
    /// Claims everything, answers "not found".
    NotFound,
    /// Claims everything, answers "busy" forever.
    Busy,
    /// Claims everything, sends garbage.
    Garbage,
}

#[derive(Debug, Clone)]
struct World {
    agents: Vec<Transfer<u32>>,
    /// Units each agent holds (honest ones).
    held: Vec<BTreeSet<usize>>,
    has_manifest: Vec<bool>,
    rogue: Option<(u32, Rogue)>,
    units: Vec<Unit>,
    now: u64,
    latency: u64,
    /// (time, agent, event)
    queue: Vec<(u64, usize, Ev)>,
    dp_units: u64,
    dp_items: u64,
    dp_down: (u64, u64),
    banned: Vec<(usize, u32, BanReason)>,
}

#[derive(Debug, Clone)]
enum Ev {
    End(RequestId, Outcome),
    Units(Vec<usize>),
    Item,
    Coverage(u32, RangeSet),
    /// News from a peer: it verified these ranges.
    Have(u32, RangeSet),
}

impl World {
    fn new(
        n: usize,
        units: usize,
        rogue: Option<(u32, Rogue)>,
        latency: u64,
        dp_down: (u64, u64),
    ) -> World {
        let cfg = Config {
            stall_ms: 20_000,
            dp_backoff_max_ms: 5_000,
            ..Config::default()
        };
        let units: Vec<Unit> = (0..units as u64)
            .map(|i| Unit {
                offset: i * 1000,
                len: 1000,
                seed_offset: None,
            })
            .collect();
        let mut agents = Vec::new();
        for i in 0..n {
            let mut t = Transfer::new(cfg, i == 0, Timestamp(0));
            for p in 0..n as u32 {
                if p != i as u32 {
                    t.handle_peer(Timestamp(0), p);
                }
            }
            if let Some((r, _)) = rogue {
                t.handle_peer(Timestamp(0), r);
            }
            t.add_item(Timestamp(0), MANIFEST);
            t.add_content(Timestamp(0), C, units.clone(), |_| false, false, false);
            agents.push(t);
        }
        World {
            agents,
            held: vec![BTreeSet::new(); n],
            has_manifest: vec![false; n],
            rogue,
            units,
            now: 0,
            latency,
            queue: Vec::new(),
            dp_units: 0,
            dp_items: 0,
            dp_down,
            banned: Vec::new(),
        }
    }

    fn coverage(&self, a: usize) -> RangeSet {
        let mut s = RangeSet::new();
        for &u in &self.held[a] {
            s.insert(self.units[u].offset, self.units[u].len);
        }
        s
    }

    fn dp_up(&self) -> bool {
        !(self.dp_down.0..self.dp_down.1).contains(&self.now)
    }

    /// Turns agent `a`'s actions into future events.
    fn drain(&mut self, a: usize) {
        while let Some(act) = self.agents[a].poll_action() {
            if std::env::var_os("TRACE").is_some() {
                eprintln!("{:>9} agent {a}: {act:?}", self.now);
            }
            let at = self.now + self.latency;
            match act {
                Action::AskCoverage { id, peer, .. } => {
                    if self.rogue.is_some_and(|(r, _)| r == peer) {
                        let kind = self.rogue.map(|r| r.1);
                        if kind != Some(Rogue::Silent) {
                            let all = RangeSet::whole(self.units.len() as u64 * 1000);
                            self.queue.push((at, a, Ev::Coverage(peer, all)));
                            self.queue.push((at, a, Ev::End(id, Outcome::Ok)));
                        }
                    } else {
                        let cov = self.coverage(peer as usize);
                        self.queue.push((at, a, Ev::Coverage(peer, cov)));
                        self.queue.push((at, a, Ev::End(id, Outcome::Ok)));
                    }
                }
                Action::ItemFromPeer { id, peer, .. } => {
                    let out = match self.rogue {
                        Some((r, k)) if r == peer => match k {
                            Rogue::Silent => continue,
                            Rogue::NotFound => Outcome::NotFound,
                            Rogue::Busy => Outcome::Busy,
                            Rogue::Garbage => Outcome::BadData("garbage".into()),
                        },
                        _ if self.has_manifest[peer as usize] => {
                            self.queue.push((at, a, Ev::Item));
                            Outcome::Ok
                        }
                        _ => Outcome::NotFound,
                    };
                    self.queue.push((at, a, Ev::End(id, out)));
                }
                Action::ItemFromDp { id, .. } => {
                    if self.dp_up() {
                        self.dp_items += 1;
                        self.queue.push((at, a, Ev::Item));
                        self.queue.push((at, a, Ev::End(id, Outcome::Ok)));
                    } else {
                        let e = Outcome::Dp {
                            transient: true,
                            detail: "down".into(),
                        };
                        self.queue.push((at, a, Ev::End(id, e)));
                    }
                }
                Action::FetchRuns {
                    id, from, units, ..
                } => match from {
                    RunsFrom::Peer(p) | RunsFrom::AltCopy(p) => {
                        let out = match self.rogue {
                            Some((r, k)) if r == p => match k {
                                Rogue::Silent => continue,
                                Rogue::NotFound => Outcome::NotFound,
                                Rogue::Busy => Outcome::Busy,
                                Rogue::Garbage => Outcome::BadData("garbage".into()),
                            },
                            _ if units.iter().all(|u| self.held[p as usize].contains(u)) => {
                                let n = units.len() as u64;
                                // The runs, then the end of the request.
                                self.queue.push((at + n, a, Ev::Units(units)));
                                self.queue.push((at + n, a, Ev::End(id, Outcome::Ok)));
                                continue;
                            }
                            _ => Outcome::NotFound,
                        };
                        self.queue.push((at + 1, a, Ev::End(id, out)));
                    }
                    RunsFrom::Dp { .. } => {
                        if self.dp_up() {
                            self.dp_units += units.len() as u64;
                            self.queue.push((at, a, Ev::Units(units)));
                            self.queue.push((at, a, Ev::End(id, Outcome::Ok)));
                        } else {
                            let e = Outcome::Dp {
                                transient: true,
                                detail: "down".into(),
                            };
                            self.queue.push((at, a, Ev::End(id, e)));
                        }
                    }
                },
                Action::CopySeeds { .. } => unreachable!("no seeds here"),
                Action::Ban { peer, reason } => self.banned.push((a, peer, reason)),
                Action::ProbeDp { id } => {
                    let out = if self.dp_up() {
                        Outcome::Ok
                    } else {
                        Outcome::Dp {
                            transient: true,
                            detail: "down".into(),
                        }
                    };
                    self.queue.push((at, a, Ev::End(id, out)));
                }
                Action::Stalled { .. } | Action::Done | Action::ItemUnavailable { .. } => {}
                Action::Failed { reason } => panic!("agent {a} failed: {reason}"),
                Action::Rebuild { content } => {
                    panic!("agent {a}: nothing is lost here, yet {content:?} is rebuilt")
                }
            }
        }
    }

    /// Runs until every agent is done or `limit` ms pass; returns the time.
    fn run(&mut self, limit: u64) -> u64 {
        for a in 0..self.agents.len() {
            self.drain(a);
        }
        let mut steps = 0u64;
        loop {
            steps += 1;
            assert!(steps < 2_000_000, "no end in sight at {} ms", self.now);
            if self.agents.iter().all(Transfer::is_done) {
                return self.now;
            }
            let next_ev = self.queue.iter().map(|e| e.0).min();
            let next_to = self
                .agents
                .iter()
                .filter_map(|t| t.poll_timeout())
                .map(|t| t.0)
                .min();
            let Some(next) = next_ev.into_iter().chain(next_to).min() else {
                panic!("nothing to wait for at {} ms and not done", self.now);
            };
            assert!(next <= limit, "not done within {limit} ms");
            self.now = next.max(self.now);
            let now = Timestamp(self.now);
            let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.queue)
                .into_iter()
                .partition(|e| e.0 <= self.now);
            self.queue = rest;
            for (_, a, ev) in due {
                if std::env::var_os("TRACE").is_some() {
                    eprintln!("{:>9} agent {a} <- {ev:?}", self.now);
                }
                match ev {
                    Ev::End(id, o) => self.agents[a].handle_request_end(now, id, o),
                    Ev::Units(u) => {
                        self.held[a].extend(u.iter().copied());
                        self.agents[a].handle_units_done(now, C, &u);
                        // Its next announcement tells the others.
                        let mut news = RangeSet::new();
                        for &i in &u {
                            news.insert(self.units[i].offset, self.units[i].len);
                        }
                        for b in 0..self.agents.len() {
                            if b != a {
                                let ev = Ev::Have(a as u32, news.clone());
                                self.queue.push((self.now + self.latency, b, ev));
                            }
                        }
                    }
                    Ev::Have(p, r) => self.agents[a].handle_have(now, p, C, &r),
                    Ev::Item => {
                        self.has_manifest[a] = true;
                        self.agents[a].handle_item_done(now, MANIFEST);
                    }
                    Ev::Coverage(p, r) => self.agents[a].handle_coverage(now, p, C, r, false),
                }
                self.drain(a);
            }
            for a in 0..self.agents.len() {
                if self.agents[a].poll_timeout().is_some_and(|t| t <= now) {
                    if std::env::var_os("TRACE").is_some() {
                        eprintln!("{:>9} agent {a}: timeout", self.now);
                    }
                    self.agents[a].handle_timeout(now);
                }
                self.drain(a);
            }
        }
    }
}

#[test]
fn honest_agents_share_one_dp_download() {
    let mut w = World::new(5, 30, None, 2, (0, 0));
    w.run(120_000);
    assert_eq!(w.dp_units, 30, "each unit from the DP once");
    assert_eq!(w.dp_items, 1);
    assert!(w.banned.is_empty(), "{:?}", w.banned);
}

#[test]
fn each_rogue_is_banned_or_ignored_and_everyone_finishes() {
    let honest = World::new(4, 20, None, 2, (0, 0)).run(600_000);
    for kind in [Rogue::Silent, Rogue::NotFound, Rogue::Busy, Rogue::Garbage] {
        let mut w = World::new(4, 20, Some((99, kind)), 2, (0, 0));
        let t = w.run(600_000);
        assert!(
            w.dp_units <= 22,
            "{kind:?}: {} units from the DP",
            w.dp_units
        );
        let banned: BTreeSet<u32> = w.banned.iter().map(|b| b.1).collect();
        assert!(
            banned.iter().all(|p| *p == 99),
            "{kind:?}: honest peers banned: {:?}",
            w.banned
        );
        // A rogue that withholds everything is banned; one that is only
        // refused (not found, busy) may cost a strike and be routed around.
        if matches!(kind, Rogue::Silent | Rogue::Garbage) {
            assert!(banned.contains(&99), "{kind:?}: the rogue was not banned");
        }
        // Bounded: a deadline and a patience at most.
        let c = Config::default();
        let bound = honest + 2 * c.busy_patience_ms.max(c.peer_deadline_ms + 2_000);
        assert!(t <= bound, "{kind:?}: {t} ms vs {honest} ms honest");
        eprintln!(
            "{kind:?}: done in {t} ms (honest only: {honest} ms), {} DP units",
            w.dp_units
        );
    }
}

#[test]
fn a_dp_outage_is_waited_out_without_refetching() {
    let mut w = World::new(4, 20, None, 2, (0, 420_000));
    let t = w.run(3_600_000);
    assert!(t >= 420_000);
    assert_eq!(w.dp_units, 20, "nothing fetched twice after the outage");
}

#[test]
fn a_non_master_without_a_working_subnet_uses_the_dp_after_the_stall() {
    // Nobody is master (agent 0 is told it is not): after the stall every
    // agent takes what it lacks from the DP itself.
    let mut w = World::new(2, 5, None, 2, (0, 0));
    w.agents[0].handle_role(Timestamp(0), false);
    let t = w.run(120_000);
    assert!(t >= 20_000, "{t}");
    assert!(w.agents.iter().any(|a| a.stall_fallbacks() >= 1));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn honest_agents_always_finish(
        n in 2usize..6,
        units in 1usize..25,
        latency in 1u64..3000,
        rogue in proptest::option::of(0u8..4),
        outage in proptest::option::of((0u64..60_000, 1u64..120_000)),
    ) {
        let rogue = rogue.map(|k| (99, [Rogue::Silent, Rogue::NotFound, Rogue::Busy, Rogue::Garbage][k as usize]));
        let down = outage.map_or((0, 0), |(a, d)| (a, a + d));
        let mut w = World::new(n, units, rogue, latency, down);
        w.run(3_600_000);
        let banned: BTreeSet<u32> = w.banned.iter().map(|b| b.1).collect();
        prop_assert!(banned.iter().all(|p| *p == 99), "honest peers banned: {:?}", w.banned);
        // The master fetches each unit once; stalled peers may add a copy.
        prop_assert!(w.dp_units <= (units * n) as u64);
    }
}

#[test]
fn bounded_state() {
    let mut t: Transfer<u32> = Transfer::new(Config::default(), true, Timestamp(0));
    for p in 0..10_000u32 {
        t.handle_peer(Timestamp(0), p);
    }
    t.add_item(Timestamp(0), MANIFEST);
    let mut asked = BTreeMap::new();
    while let Some(a) = t.poll_action() {
        if let Action::ItemFromPeer { peer, .. } = a {
            *asked.entry(peer).or_insert(0) += 1;
        }
    }
    assert!(asked.len() <= Config::default().lan_in_flight);
}

#[test]
fn a_slot_freed_by_one_content_is_used_by_the_next_at_once() {
    // One peer holds three contents; it takes one request at a time. Each
    // answer must start the next content's request without waiting for a
    // timeout (a content left waiting for room is looked at again).
    let cfg = Config {
        peer_in_flight: 1,
        ..Config::default()
    };
    let now = Timestamp(0);
    let mut t: Transfer<u32> = Transfer::new(cfg, false, now);
    t.handle_peer(now, 7);
    let unit = Unit {
        offset: 0,
        len: 1000,
        seed_offset: None,
    };
    for c in 0..3 {
        t.add_content(now, ContentId(c), vec![unit], |_| false, false, false);
    }
    let mut fetches = Vec::new();
    let mut answered = 0;
    let mut done = false;
    for _ in 0..10 {
        let mut ends = Vec::new();
        while let Some(a) = t.poll_action() {
            match a {
                Action::AskCoverage {
                    id, peer, content, ..
                } => {
                    t.handle_coverage(now, peer, content, RangeSet::whole(1000), false);
                    ends.push(id);
                }
                Action::FetchRuns {
                    id, content, units, ..
                } => fetches.push((id, content, units)),
                Action::Done => done = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        for id in ends {
            t.handle_request_end(now, id, Outcome::Ok);
        }
        if let Some((id, content, units)) = fetches.pop() {
            t.handle_units_done(now, content, &units);
            t.handle_request_end(now, id, Outcome::Ok);
            answered += 1;
        }
    }
    assert_eq!(answered, 3, "every content fetched without a timeout");
    assert!(done && t.is_done());
}

#[test]
fn an_unreachable_peer_is_not_asked_again_at_once() {
    // A peer that cannot be reached before it ever answered is asked again
    // after `retry_ms`, not in a loop at the same instant.
    let now = Timestamp(0);
    let mut t: Transfer<u32> = Transfer::new(Config::default(), false, now);
    t.handle_peer(now, 7);
    let unit = Unit {
        offset: 0,
        len: 1000,
        seed_offset: None,
    };
    t.add_content(now, C, vec![unit], |_| false, false, false);
    let mut asks = 0;
    while let Some(a) = t.poll_action() {
        if let Action::AskCoverage { id, .. } = a {
            asks += 1;
            assert!(asks < 10, "asked again and again at the same instant");
            t.handle_request_end(now, id, Outcome::Unreachable);
        }
    }
    assert_eq!(asks, 1);
    let later = Timestamp(Config::default().retry_ms);
    t.handle_timeout(later);
    let again = std::iter::from_fn(|| t.poll_action())
        .filter(|a| matches!(a, Action::AskCoverage { .. }))
        .count();
    assert_eq!(again, 1, "asked again after the retry pause");
}

#[test]
fn a_command_gives_up_on_a_dp_that_stays_down_and_the_daemon_does_not() {
    for give_up in [Some(2_000), None] {
        let cfg = Config {
            dp_give_up_ms: give_up,
            ..Config::default()
        };
        let mut t: Transfer<u32> = Transfer::new(cfg, true, Timestamp(0));
        t.add_item(Timestamp(0), MANIFEST);
        let mut now = 0;
        let mut failed = None;
        while now < 600_000 && failed.is_none() {
            while let Some(a) = t.poll_action() {
                match a {
                    Action::ItemFromDp { id, .. } => {
                        let down = Outcome::Dp {
                            transient: true,
                            detail: "connection refused".into(),
                        };
                        t.handle_request_end(Timestamp(now), id, down);
                    }
                    Action::Failed { reason } => failed = Some((now, reason)),
                    _ => {}
                }
            }
            let Some(next) = t.poll_timeout() else { break };
            now = next.0.max(now + 1);
            t.handle_timeout(Timestamp(now));
        }
        match give_up {
            Some(limit) => {
                let (at, reason) = failed.expect("gave up");
                assert!(reason.contains("cannot reach the DP"), "{reason}");
                assert!((limit..limit + 5_000).contains(&at), "gave up at {at} ms");
            }
            None => assert!(failed.is_none(), "the daemon waits: {failed:?}"),
        }
    }
}

#[test]
fn a_pack_frame_crosses_the_wan_once_when_a_peer_fails_its_units_one_by_one() {
    // Four origin units of 3 MiB in one pack frame, all claimed by a peer
    // that answers "not found" to each request in turn: the units go to
    // the DP in one request, and the frame is never asked for twice.
    let mib = 1u64 << 20;
    let units: Vec<Unit> = (0..4)
        .map(|i| Unit {
            offset: i * 3 * mib,
            len: 3 * mib,
            seed_offset: None,
        })
        .collect();
    let now = Timestamp(0);
    let mut t = Transfer::new(Config::default(), true, now);
    t.handle_peer(now, 7u32);
    t.add_content(now, C, units, |_| false, false, true);
    t.set_pack_frames(C, |_| Some(0));
    t.handle_coverage(now, 7, C, RangeSet::whole(12 * mib), false);
    let drain = |t: &mut Transfer<u32>| -> Vec<Action<u32>> {
        std::iter::from_fn(|| t.poll_action()).collect()
    };
    let to_peer: Vec<RequestId> = drain(&mut t)
        .into_iter()
        .filter_map(|a| match a {
            Action::FetchRuns {
                id,
                from: RunsFrom::Peer(7),
                ..
            } => Some(id),
            _ => None,
        })
        .collect();
    assert!(to_peer.len() >= 2, "{to_peer:?}");
    let mut dp: Vec<(RequestId, Vec<usize>)> = Vec::new();
    for id in to_peer {
        t.handle_request_end(now, id, Outcome::NotFound);
        for a in drain(&mut t) {
            if let Action::FetchRuns {
                id,
                from: RunsFrom::Dp { pack: true },
                units,
                ..
            } = a
            {
                dp.push((id, units));
            }
        }
    }
    assert_eq!(
        dp.len(),
        1,
        "the frame was asked for more than once: {dp:?}"
    );
    // The frame brings every unit of it.
    t.handle_units_done(now, C, &[0, 1, 2, 3]);
    t.handle_request_end(now, dp[0].0, Outcome::Ok);
    assert!(drain(&mut t).iter().any(|a| matches!(a, Action::Done)));
}

/// Master alone with one DP-fetched content of one unit; returns the
/// actions of one drain, answering DP fetches as delivered.
fn drain_alone(t: &mut Transfer<u32>, now: Timestamp) -> Vec<Action<u32>> {
    let mut seen = Vec::new();
    while let Some(a) = t.poll_action() {
        if let Action::FetchRuns {
            id, content, units, ..
        } = &a
        {
            t.handle_units_done(now, *content, units);
            t.handle_request_end(now, *id, Outcome::Ok);
        }
        seen.push(a);
    }
    seen
}

#[test]
fn a_content_is_rebuilt_within_its_budget_then_the_transfer_fails() {
    let unit = Unit {
        offset: 0,
        len: 1000,
        seed_offset: None,
    };
    let now = Timestamp(0);
    // Lost from the store after it was verified: rebuilt twice, then a failure.
    let mut t: Transfer<u32> = Transfer::new(Config::default(), true, now);
    t.add_content(now, C, vec![unit], |_| false, false, false);
    assert!(drain_alone(&mut t, now).contains(&Action::Done));
    for _ in 0..2 {
        t.handle_content_failed(now, C, Rebuild::Lost);
        let seen = drain_alone(&mut t, now);
        assert_eq!(
            seen,
            vec![Action::Rebuild { content: C }],
            "not done while replanned"
        );
        assert!(!t.is_done());
        t.add_content(now, C, vec![unit], |_| false, false, false);
        assert!(drain_alone(&mut t, now).contains(&Action::Done));
    }
    t.handle_content_failed(now, C, Rebuild::Lost);
    assert!(matches!(
        drain_alone(&mut t, now).as_slice(),
        [Action::Failed { .. }]
    ));

    // Whole content failed verification: rebuilt once; a second failure fails.
    let mut t: Transfer<u32> = Transfer::new(Config::default(), true, now);
    t.add_content(now, C, vec![unit], |_| false, false, false);
    drain_alone(&mut t, now);
    t.handle_content_failed(now, C, Rebuild::Unverified("hash".into()));
    assert_eq!(
        drain_alone(&mut t, now),
        vec![Action::Rebuild { content: C }]
    );
    t.add_content(now, C, vec![unit], |_| false, false, false);
    drain_alone(&mut t, now);
    t.handle_content_failed(now, C, Rebuild::Unverified("hash".into()));
    assert!(matches!(
        drain_alone(&mut t, now).as_slice(),
        [Action::Failed { .. }]
    ));
    assert!(t.is_failed());
}

#[test]
fn only_a_master_fetching_a_pack_copies_a_missing_base_and_only_from_peers() {
    let now = Timestamp(0);
    let base = ItemId(1);
    // A non-master, or a master without a pack: build without it.
    let mut t: Transfer<u32> = Transfer::new(Config::default(), false, now);
    assert!(!t.want_base_copy(now, base, true));
    let mut t: Transfer<u32> = Transfer::new(Config::default(), true, now);
    assert!(!t.want_base_copy(now, base, false));
    // A master with a pack: asks the peer, never the DP.
    t.handle_peer(now, 9);
    assert!(t.want_base_copy(now, base, true));
    let id = match t.poll_action() {
        Some(Action::ItemFromPeer { id, item, peer, .. }) if item == base && peer == 9 => id,
        other => panic!("expected the base asked of peer 9, got {other:?}"),
    };
    t.handle_request_end(now, id, Outcome::NotFound);
    let rest: Vec<_> = std::iter::from_fn(|| t.poll_action()).collect();
    assert!(
        rest.contains(&Action::ItemUnavailable { item: base }),
        "no peer has it: the content goes on without it, got {rest:?}"
    );
    assert!(!rest.iter().any(|a| matches!(a, Action::ItemFromDp { .. })));
}

#[test]
fn an_optional_item_the_dp_cannot_give_is_unavailable_not_a_failure() {
    let now = Timestamp(0);
    for outcome in [
        Outcome::BadData("hash".into()),
        Outcome::NotFound,
        Outcome::Dp {
            transient: false,
            detail: "404".into(),
        },
    ] {
        let mut t: Transfer<u32> = Transfer::new(Config::default(), true, now);
        let bundle = ItemId(5);
        t.add_item_from(now, bundle, ItemFrom::Optional);
        let id = match t.poll_action() {
            Some(Action::ItemFromDp { id, item }) if item == bundle => id,
            other => panic!("expected the item asked of the DP, got {other:?}"),
        };
        t.handle_request_end(now, id, outcome.clone());
        let rest: Vec<_> = std::iter::from_fn(|| t.poll_action()).collect();
        assert_eq!(
            rest,
            vec![Action::ItemUnavailable { item: bundle }, Action::Done],
            "after {outcome:?}"
        );
        assert!(!t.is_failed());
    }
}

#[test]
fn a_non_master_takes_an_optional_item_only_from_a_peer_that_has_it() {
    let now = Timestamp(0);
    let mut t: Transfer<u32> = Transfer::new(Config::default(), false, now);
    t.handle_peer(now, 3);
    let bundle = ItemId(5);
    t.add_item_from(now, bundle, ItemFrom::Optional);
    let id = match t.poll_action() {
        Some(Action::ItemFromPeer { id, item, .. }) if item == bundle => id,
        other => panic!("expected the item asked of the peer, got {other:?}"),
    };
    t.handle_request_end(now, id, Outcome::NotFound);
    let rest: Vec<_> = std::iter::from_fn(|| t.poll_action()).collect();
    assert_eq!(
        rest,
        vec![Action::ItemUnavailable { item: bundle }],
        "no waiting for it, no DP"
    );
}
