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

/// Range requests a holder serves at once by default; more get "busy".
pub const DEFAULT_UPLOAD_SLOTS: u32 = 6;

/// Whether a holder with `slots` upload slots (0: no limit), already
/// serving `others` range requests, answers a new one "busy": new blocks
/// then spread from the first peers that got them instead of queueing at
/// one.
pub fn busy(others: u32, slots: u32) -> bool {
    slots > 0 && others >= slots
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
pub enum From<P> {
    /// Our own base content on disk.
    Local,
    /// A peer that holds these target bytes.
    Peer(P),
    /// A peer that holds the base content (alt-copy of a seed run).
    AltCopy(P),
    /// The DP (master only).
    Dp,
}

/// What the scheduler knows about the subnet for one content.
#[derive(Debug, Clone)]
pub struct View<P> {
    /// Whether we hold the base content.
    pub have_base: bool,
    /// Whether we may use the WAN (we are master).
    pub may_use_dp: bool,
    /// Per peer: the target ranges it holds verified, merged (sorted and
    /// disjoint, as [`merge`] gives them).
    pub holders: BTreeMap<P, Vec<(u64, u64)>>,
    /// Peers that hold the base content whole.
    pub base_holders: BTreeSet<P>,
    /// Peers banned for this transfer.
    pub banned: BTreeSet<P>,
    /// Peers that just answered "busy" (all their upload slots taken):
    /// another holder is preferred; a unit only busy peers hold waits.
    pub busy: BTreeSet<P>,
}

impl<P> Default for View<P> {
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

/// The decision for the units not yet done: `(unit index, source)`;
/// units missing from the answer wait.
pub fn assign<P: Ord + Clone>(
    units: &[Unit],
    done: impl Fn(usize, &Unit) -> bool,
    view: &View<P>,
) -> Vec<(usize, From<P>)> {
    let mut load: BTreeMap<P, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, u) in units.iter().enumerate() {
        if done(i, u) {
            continue;
        }
        if u.seed_offset.is_some() && view.have_base {
            out.push((i, From::Local));
            continue;
        }
        let end = u.offset + u.len;
        let mut held = false;
        let holder = view
            .holders
            .iter()
            .filter(|(p, _)| !view.banned.contains(*p))
            .filter(|(_, ranges)| covers(ranges, u.offset, end))
            .inspect(|_| held = true)
            .filter(|(p, _)| !view.busy.contains(*p))
            .min_by_key(|(p, _)| load.get(*p).copied().unwrap_or(0))
            .map(|(p, _)| p.clone());
        if let Some(p) = holder {
            *load.entry(p.clone()).or_default() += u.len;
            out.push((i, From::Peer(p)));
            continue;
        }
        if held {
            // Only busy peers hold it: wait for a free slot (never the
            // WAN, nor a base holder, for bytes the subnet has).
            continue;
        }
        if u.seed_offset.is_some() {
            let alt = view
                .base_holders
                .iter()
                .filter(|p| !view.banned.contains(*p))
                .min_by_key(|p| load.get(*p).copied().unwrap_or(0))
                .cloned();
            if let Some(p) = alt {
                *load.entry(p.clone()).or_default() += u.len;
                out.push((i, From::AltCopy(p)));
                continue;
            }
        }
        if view.may_use_dp {
            out.push((i, From::Dp));
        }
    }
    out
}

/// Whether merged `ranges` (sorted and disjoint, as [`merge`] gives them)
/// cover `start..end`: a binary search, so a scheduler can ask it for every
/// unit of every holder.
pub fn covers(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    if start >= end {
        return true;
    }
    let i = ranges.partition_point(|(o, _)| *o <= start);
    i.checked_sub(1)
        .and_then(|i| ranges.get(i))
        .is_some_and(|(o, l)| o + l >= end)
}

/// Merges ranges into a sorted list of disjoint ranges (what a peer
/// announces as held).
pub fn merge(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut sorted: Vec<(u64, u64)> = ranges.iter().copied().filter(|r| r.1 > 0).collect();
    sorted.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (o, l) in sorted {
        match out.last_mut() {
            Some(last) if o <= last.0 + last.1 => {
                last.1 = last.1.max(o + l - last.0);
            }
            _ => out.push((o, l)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_busy_once_its_slots_are_taken_and_never_without_a_limit() {
        assert!(!busy(0, 2));
        assert!(!busy(1, 2));
        assert!(busy(2, 2));
        assert!(busy(3, 2));
        assert!(!busy(1000, 0));
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
        let mut v: View<u8> = View {
            have_base: true,
            may_use_dp: true,
            ..View::default()
        };
        v.holders.insert(7, vec![(100, 50)]);
        let a = assign(&units(), |_, _| false, &v);
        assert_eq!(
            a,
            vec![
                (0, From::Local),
                (1, From::Peer(7)),
                (2, From::Local),
                (3, From::Dp)
            ]
        );
        v.may_use_dp = false;
        let a = assign(&units(), |_, _| false, &v);
        assert_eq!(a.len(), 3, "a peer waits for what nobody has: {a:?}");
    }

    #[test]
    fn alt_copy_when_the_base_is_elsewhere_and_bans_hold() {
        let mut v: View<u8> = View {
            may_use_dp: true,
            ..View::default()
        };
        v.base_holders.insert(3);
        v.holders.insert(5, vec![(0, 260)]);
        v.banned.insert(5);
        let a = assign(&units(), |_, _| false, &v);
        assert_eq!(
            a,
            vec![
                (0, From::AltCopy(3)),
                (1, From::Dp),
                (2, From::AltCopy(3)),
                (3, From::Dp)
            ]
        );
    }

    #[test]
    fn done_units_are_skipped_and_load_is_spread() {
        let mut v: View<u8> = View::default();
        v.holders.insert(1, vec![(0, 260)]);
        v.holders.insert(2, vec![(0, 260)]);
        let a = assign(&units(), |_, u| u.offset == 100, &v);
        let by: Vec<u8> = a
            .iter()
            .filter_map(|(_, f)| match f {
                From::Peer(p) => Some(*p),
                _ => None,
            })
            .collect();
        assert_eq!(a.len(), 3);
        assert!(by.contains(&1) && by.contains(&2), "{by:?}");
    }

    #[test]
    fn coverage_and_merging() {
        let m = merge(&[(10, 5), (0, 10), (20, 10)]);
        assert_eq!(m, vec![(0, 15), (20, 10)]);
        assert!(covers(&m, 2, 15));
        assert!(covers(&m, 0, 15));
        assert!(!covers(&m, 14, 21));
        assert!(covers(&m, 20, 30));
        assert!(!covers(&m, 25, 31));
        assert!(!covers(&merge(&[(0, 10), (11, 5)]), 2, 15));
        assert!(covers(&[], 5, 5));
        assert!(!covers(&[], 0, 1));
        assert_eq!(
            merge(&[(10, 5), (0, 10), (20, 1), (15, 0)]),
            vec![(0, 15), (20, 1)]
        );
    }

    #[test]
    fn busy_holders_are_avoided_and_never_sent_to_the_dp() {
        let mut v: View<u32> = View {
            may_use_dp: true,
            ..View::default()
        };
        v.holders.insert(1, vec![(0, 1000)]);
        v.holders.insert(2, vec![(100, 50)]);
        v.busy.insert(1);
        let a = assign(&units(), |_, _| false, &v);
        // Unit at 100 from the free peer 2; the others only busy peer 1
        // holds: they wait, they do not go to the DP.
        assert_eq!(a, vec![(1, From::Peer(2))]);
        v.busy.clear();
        let a = assign(&units(), |_, _| false, &v);
        assert!(a.iter().all(|(_, f)| matches!(f, From::Peer(_))), "{a:?}");
    }
}
