//! The election under random event orders, lost announcements, departures
//! and adversarial announcers: once the disturbances stop and the subnet
//! settles, exactly one honest master, and every honest node sees it.

use peerdelta_protocol::election::{Election, Rank, Timing};
use peerdelta_protocol::time::Timestamp;
use proptest::prelude::*;

fn rank(held: u16, base: bool, weight: u32, free: u64) -> Rank {
    Rank {
        complete: held >= 1000,
        held_permille: held.min(1000),
        has_base: base,
        weight,
        free_mib: free,
    }
}

fn any_rank() -> impl Strategy<Value = Rank> {
    (
        prop_oneof![Just(0u16), 0u16..1000, Just(1000)],
        any::<bool>(),
        0u32..3,
        0u64..4,
    )
        .prop_map(|(h, b, w, f)| rank(h, b, w, f))
}

/// What an adversarial announcer does every heartbeat.
#[derive(Debug, Clone, Copy)]
enum Rogue {
    /// The best rank, never claiming.
    BestSilent,
    /// The best rank, claiming, present one beat in `period`.
    Flapping { period: u64 },
    /// The best rank and a claim, every beat, but only to some nodes.
    Partial,
}

fn rogue() -> impl Strategy<Value = Rogue> {
    prop_oneof![
        Just(Rogue::BestSilent),
        (2u64..6).prop_map(|period| Rogue::Flapping { period }),
        Just(Rogue::Partial),
    ]
}

/// A random disturbance at one heartbeat.
#[derive(Debug, Clone)]
enum Disturb {
    /// Node `i`'s announcement is lost for node `j`.
    Lose(usize, usize),
    /// Node `i` leaves (its peers see it go) and comes back later.
    Leave(usize),
    /// Node `i`'s rank changes.
    Rank(usize, Rank),
}

fn disturbances(n: usize) -> impl Strategy<Value = Vec<Vec<Disturb>>> {
    let one = prop_oneof![
        (0..n, 0..n).prop_map(|(i, j)| Disturb::Lose(i, j)),
        (0..n).prop_map(Disturb::Leave),
        (0..n, any_rank()).prop_map(|(i, r)| Disturb::Rank(i, r)),
    ];
    prop::collection::vec(prop::collection::vec(one, 0..4), 0..30)
}

const ROGUE: u32 = 1000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn one_master_once_settled(
        ranks in prop::collection::vec(any_rank(), 2..8),
        rogue in proptest::option::of(rogue()),
        plan in (2usize..8).prop_flat_map(disturbances),
        order in any::<u64>(),
    ) {
        let n = ranks.len();
        let t = Timing::default();
        let hb = t.heartbeat_ms;
        let mut nodes: Vec<Option<Election<u32>>> = ranks
            .iter()
            .enumerate()
            .map(|(i, r)| Some(Election::new(i as u32, *r, t, Timestamp(0))))
            .collect();
        let mut away: Vec<u64> = vec![0; n];
        let mut now = 0u64;
        // Disturbed beats, then quiet ones: the master timeout, the settle
        // time, the graces of every departure and some beats of margin.
        let quiet = (t.master_timeout_ms + t.settle_ms) / hb + 8 * 2 + 20;
        let beats = plan.len() as u64 + quiet;
        for beat in 0..beats {
            now += hb;
            let ts = Timestamp(now);
            let disturb: &[Disturb] = plan.get(beat as usize).map_or(&[], |v| v.as_slice());
            for d in disturb {
                match d {
                    Disturb::Leave(i) if *i < n && nodes[*i].is_some() => {
                        nodes[*i] = None;
                        away[*i] = beat + 3;
                        for e in nodes.iter_mut().flatten() {
                            e.handle_gone(ts, *i as u32);
                        }
                    }
                    Disturb::Rank(i, r) if *i < n => {
                        if let Some(e) = nodes[*i].as_mut() {
                            e.handle_rank(ts, *r);
                        }
                    }
                    _ => {}
                }
            }
            for i in 0..n {
                if nodes[i].is_none() && away[i] <= beat {
                    nodes[i] = Some(Election::new(i as u32, ranks[i], t, ts));
                }
            }
            // Announcements, in an order that changes every beat.
            let said: Vec<(u32, Rank, bool)> = nodes
                .iter()
                .flatten()
                .map(|e| (*e.me(), e.rank(), e.claims()))
                .collect();
            let k = (order.rotate_left(beat as u32 % 64) % n as u64) as usize;
            for step in 0..n {
                let j = (k + step) % n;
                let Some(e) = nodes[j].as_mut() else { continue };
                for (from, r, c) in &said {
                    let lost = disturb
                        .iter()
                        .any(|d| matches!(d, Disturb::Lose(a, b) if *a as u32 == *from && *b == j));
                    if !lost {
                        e.handle_heard(ts, *from, *r, *c);
                    }
                }
                match rogue {
                    Some(Rogue::BestSilent) => e.handle_heard(ts, ROGUE, rank(1000, true, u32::MAX, u64::MAX), false),
                    Some(Rogue::Flapping { period }) => {
                        if beat % period == 0 {
                            e.handle_heard(ts, ROGUE, rank(1000, true, u32::MAX, u64::MAX), true);
                        } else if beat % period == 1 {
                            e.handle_gone(ts, ROGUE);
                        }
                    }
                    Some(Rogue::Partial) if j.is_multiple_of(2) => {
                        e.handle_heard(ts, ROGUE, rank(1000, true, u32::MAX, u64::MAX), true);
                    }
                    _ => {}
                }
                e.handle_timeout(ts);
                while e.poll_action().is_some() {}
            }
        }
        let eligible = nodes.iter().flatten().any(|e| e.rank().eligible());
        let masters: Vec<u32> = nodes.iter().flatten().filter(|e| e.is_master()).map(|e| *e.me()).collect();
        if !eligible {
            prop_assert!(masters.is_empty());
            return Ok(());
        }
        match rogue {
            // A claimant some nodes hear every beat is a master to them:
            // the honest ones that do not hear it elect their own.
            Some(Rogue::Partial) => {
                prop_assert!(masters.len() <= 1, "honest masters {:?}", masters);
            }
            _ => {
                prop_assert_eq!(masters.len(), 1, "honest masters {:?}", masters);
                let views: Vec<Option<u32>> = nodes.iter().flatten().map(|e| e.master().copied()).collect();
                prop_assert!(views.iter().all(|v| *v == Some(masters[0])), "views {:?}", views);
            }
        }
    }
}
