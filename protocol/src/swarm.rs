//! Where each verified unit of a content comes from on a subnet: the block
//! scheduling decision shared by the agent and simnet.
//!
//! A content being built is a list of units: the runs of its needs list (or
//! of its pieces file), each with a target byte range and a BLAKE3 hash, so
//! bytes from any source can be verified. Per unit, cheapest source first:
//!
//! 1. done already (journaled as verified): nothing;
//! 2. a seed run whose base we hold: our own disk;
//! 3. a peer that holds those target bytes verified (the master's finished
//!    runs, or another peer's): the LAN, least-loaded holder first, a
//!    holder that just answered "busy" (its upload slots full) only when no
//!    other has the bytes, and then not this round: the bytes spread from
//!    the first peers that got them instead of queueing at the master;
//! 4. a seed run whose base a peer holds: alt-copy of the base bytes over
//!    the LAN;
//! 5. the DP, and only for the master: the WAN;
//! 6. otherwise wait: the master (or a holder) has not got it yet.
//!
//! Banned peers (they served bytes that failed verification) are never
//! chosen again for this transfer. Step 5 comes only after the subnet's
//! holders were asked, which is how a new master after a re-election takes
//! from the LAN every run the subnet already has: no run crosses the WAN
//! twice.

use std::collections::{BTreeMap, BTreeSet};

use crate::rangeset::RangeSet;

/// Range requests a holder serves at once by default; more get "busy".
pub const DEFAULT_UPLOAD_SLOTS: u32 = 6;

/// Whether a holder with `slots` upload slots (0: no limit), already
/// serving `others` range requests, of which `of_peer` to the asking peer,
/// answers a new one "busy": new blocks then spread from the first peers
/// that got them instead of queueing at one, and no peer holds more than
/// half the slots (a slow or greedy reader cannot take them all).
pub fn busy(others: u32, of_peer: u32, slots: u32) -> bool {
    slots > 0 && (others >= slots || of_peer >= (slots / 2).max(1))
}

/// One unit of a content: a target byte range with a hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// Offset in the target content.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// A seed run: buildable from the base content at `seed_offset`.
    pub seed_offset: Option<u64>,
}

/// Where a unit comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source<P> {
    /// Our own base content on disk.
    Local,
    /// A peer that holds these target bytes.
    Peer(P),
    /// A peer that holds the base content (alt-copy of a seed run).
    AltCopy(P),
    /// The DP (master only).
    Dp,
}

/// What the scheduler knows about the subnet for one content. Holders'
/// ranges are borrowed: building a view copies no coverage.
#[derive(Debug, Clone)]
pub struct View<'a, P> {
    /// Whether we hold the base content.
    pub have_base: bool,
    /// Whether we may use the WAN (we are master).
    pub may_use_dp: bool,
    /// Per peer: the target ranges it holds verified.
    pub holders: BTreeMap<P, &'a RangeSet>,
    /// Peers that hold the base content whole.
    pub base_holders: BTreeSet<P>,
    /// Peers banned for this transfer.
    pub banned: BTreeSet<P>,
    /// Peers that just answered "busy" (all their upload slots taken):
    /// another holder is preferred; a unit only busy peers hold waits.
    pub busy: BTreeSet<P>,
}

impl<P> Default for View<'_, P> {
    fn default() -> Self {
        View {
            have_base: false,
            may_use_dp: false,
            holders: BTreeMap::new(),
            base_holders: BTreeSet::new(),
            banned: BTreeSet::new(),
            busy: BTreeSet::new(),
        }
    }
}

/// The decision unit by unit, in the order of the module doc, spreading
/// load over holders as it goes: [`assign`] decides all units at once; the
/// transfer state machine asks one unit at a time and stops when its
/// requests in flight are at their caps.
#[derive(Debug, Clone)]
pub struct Scheduler<P> {
    load: BTreeMap<P, u64>,
}

impl<P: Ord + Clone> Default for Scheduler<P> {
    fn default() -> Self {
        Scheduler {
            load: BTreeMap::new(),
        }
    }
}

impl<P: Ord + Clone> Scheduler<P> {
    /// Where unit `u` comes from, or `None`: it waits.
    pub fn decide(&mut self, u: &Unit, view: &View<'_, P>) -> Option<Source<P>> {
        if u.seed_offset.is_some() && view.have_base {
            return Some(Source::Local);
        }
        let end = u.offset + u.len;
        let mut held = false;
        let holder = view
            .holders
            .iter()
            .filter(|(p, _)| !view.banned.contains(*p))
            .filter(|(_, ranges)| ranges.covers(u.offset, end))
            .inspect(|_| held = true)
            .filter(|(p, _)| !view.busy.contains(*p))
            .min_by_key(|(p, _)| self.load.get(*p).copied().unwrap_or(0))
            .map(|(p, _)| p.clone());
        if let Some(p) = holder {
            *self.load.entry(p.clone()).or_default() += u.len;
            return Some(Source::Peer(p));
        }
        if held {
            // Only busy peers hold it: wait for a free slot (never the
            // WAN, nor a base holder, for bytes the subnet has).
            return None;
        }
        if u.seed_offset.is_some() {
            let alt = view
                .base_holders
                .iter()
                .filter(|p| !view.banned.contains(*p))
                .min_by_key(|p| self.load.get(*p).copied().unwrap_or(0))
                .cloned();
            if let Some(p) = alt {
                *self.load.entry(p.clone()).or_default() += u.len;
                return Some(Source::AltCopy(p));
            }
        }
        view.may_use_dp.then_some(Source::Dp)
    }
}

/// The decision for the units not yet done: `(unit index, source)`;
/// units missing from the answer wait.
pub fn assign<P: Ord + Clone>(
    units: &[Unit],
    done: impl Fn(usize, &Unit) -> bool,
    view: &View<'_, P>,
) -> Vec<(usize, Source<P>)> {
    let mut s = Scheduler::default();
    units
        .iter()
        .enumerate()
        .filter(|(i, u)| !done(*i, u))
        .filter_map(|(i, u)| s.decide(u, view).map(|src| (i, src)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_busy_once_its_slots_are_taken_and_never_without_a_limit() {
        assert!(!busy(0, 0, 2));
        assert!(!busy(1, 0, 2));
        assert!(busy(2, 0, 2));
        assert!(busy(3, 0, 2));
        assert!(!busy(1000, 1000, 0));
        // One peer gets half the slots at most.
        assert!(!busy(2, 2, 6));
        assert!(busy(3, 3, 6));
        assert!(!busy(3, 0, 6));
        assert!(busy(1, 1, 2));
    }

    fn units() -> Vec<Unit> {
        vec![
            Unit {
                offset: 0,
                len: 100,
                seed_offset: Some(0),
            },
            Unit {
                offset: 100,
                len: 50,
                seed_offset: None,
            },
            Unit {
                offset: 150,
                len: 100,
                seed_offset: Some(400),
            },
            Unit {
                offset: 250,
                len: 10,
                seed_offset: None,
            },
        ]
    }

    #[test]
    fn local_seed_first_then_holders_then_dp_for_the_master_only() {
        let mut v: View<'_, u8> = View {
            have_base: true,
            may_use_dp: true,
            ..View::default()
        };
        let r7 = RangeSet::from_ranges(&[(100, 50)]);
        v.holders.insert(7, &r7);
        let a = assign(&units(), |_, _| false, &v);
        assert_eq!(
            a,
            vec![
                (0, Source::Local),
                (1, Source::Peer(7)),
                (2, Source::Local),
                (3, Source::Dp)
            ]
        );
        v.may_use_dp = false;
        let a = assign(&units(), |_, _| false, &v);
        assert_eq!(a.len(), 3, "a peer waits for what nobody has: {a:?}");
    }

    #[test]
    fn alt_copy_when_the_base_is_elsewhere_and_bans_hold() {
        let mut v: View<'_, u8> = View {
            may_use_dp: true,
            ..View::default()
        };
        v.base_holders.insert(3);
        let all = RangeSet::whole(260);
        v.holders.insert(5, &all);
        v.banned.insert(5);
        let a = assign(&units(), |_, _| false, &v);
        assert_eq!(
            a,
            vec![
                (0, Source::AltCopy(3)),
                (1, Source::Dp),
                (2, Source::AltCopy(3)),
                (3, Source::Dp)
            ]
        );
    }

    #[test]
    fn done_units_are_skipped_and_load_is_spread() {
        let mut v: View<'_, u8> = View::default();
        let all = RangeSet::whole(260);
        v.holders.insert(1, &all);
        v.holders.insert(2, &all);
        let a = assign(&units(), |_, u| u.offset == 100, &v);
        let by: Vec<u8> = a
            .iter()
            .filter_map(|(_, f)| match f {
                Source::Peer(p) => Some(*p),
                _ => None,
            })
            .collect();
        assert_eq!(a.len(), 3);
        assert!(by.contains(&1) && by.contains(&2), "{by:?}");
    }

    #[test]
    fn busy_holders_are_avoided_and_never_sent_to_the_dp() {
        let mut v: View<'_, u32> = View {
            may_use_dp: true,
            ..View::default()
        };
        let (a, b) = (RangeSet::whole(1000), RangeSet::from_ranges(&[(100, 50)]));
        v.holders.insert(1, &a);
        v.holders.insert(2, &b);
        v.busy.insert(1);
        let a = assign(&units(), |_, _| false, &v);
        // Unit at 100 from the free peer 2; the others only busy peer 1
        // holds: they wait, they do not go to the DP.
        assert_eq!(a, vec![(1, Source::Peer(2))]);
        v.busy.clear();
        let a = assign(&units(), |_, _| false, &v);
        assert!(a.iter().all(|(_, f)| matches!(f, Source::Peer(_))), "{a:?}");
    }
}
