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
//! Banned peers (they served bytes that failed verification) are left out
//! of the [`View`], so never chosen again for this transfer. Step 5 comes only after the subnet's
//! holders were asked, which is how a new master after a re-election takes
//! from the LAN every run the subnet already has: no run crosses the WAN
//! twice.

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

/// What the scheduler knows about the subnet for one content: usable peers
/// only (banned ones are left out). Holders' ranges are borrowed: building
/// a view copies no coverage. Plain lists, as a view is built for every
/// scheduling pass and a subnet has tens of peers.
#[derive(Debug, Clone)]
pub struct View<'a, P> {
    /// Whether we hold the base content.
    pub have_base: bool,
    /// Whether we may use the WAN (we are master).
    pub may_use_dp: bool,
    /// The peers that hold target ranges verified.
    pub holders: Vec<Holder<'a, P>>,
    /// Peers that hold the base content whole.
    pub base_holders: Vec<P>,
}

/// A peer holding part of the target.
#[derive(Debug, Clone)]
pub struct Holder<'a, P> {
    /// Who.
    pub peer: P,
    /// The target ranges it holds verified.
    pub ranges: &'a RangeSet,
    /// It cannot take a request now (it answered "busy", or ours to it
    /// are at their cap): another holder is preferred; a unit only busy
    /// peers hold waits.
    pub busy: bool,
}

impl<P> Default for View<'_, P> {
    fn default() -> Self {
        View {
            have_base: false,
            may_use_dp: false,
            holders: Vec::new(),
            base_holders: Vec::new(),
        }
    }
}

impl<'a, P: PartialEq> View<'a, P> {
    /// The ranges `peer` holds, if it is a holder.
    pub fn ranges_of(&self, peer: &P) -> Option<&'a RangeSet> {
        self.holders
            .iter()
            .find(|h| h.peer == *peer)
            .map(|h| h.ranges)
    }
}

/// The decision unit by unit, in the order of the module doc, spreading
/// load over holders as it goes: [`assign`] decides all units at once; the
/// transfer state machine asks one unit at a time and stops when its
/// requests in flight are at their caps.
#[derive(Debug, Clone)]
pub struct Scheduler<P> {
    /// Bytes given to each peer so far, sorted by peer.
    load: Vec<(P, u64)>,
}

impl<P: Ord + Clone> Default for Scheduler<P> {
    fn default() -> Self {
        Scheduler { load: Vec::new() }
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
            .filter(|h| h.ranges.covers(u.offset, end))
            .inspect(|_| held = true)
            .filter(|h| !h.busy)
            .min_by_key(|h| self.load_of(&h.peer))
            .map(|h| h.peer.clone());
        if let Some(p) = holder {
            self.add_load(&p, u.len);
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
                .min_by_key(|p| self.load_of(p))
                .cloned();
            if let Some(p) = alt {
                self.add_load(&p, u.len);
                return Some(Source::AltCopy(p));
            }
        }
        view.may_use_dp.then_some(Source::Dp)
    }

    fn load_of(&self, p: &P) -> u64 {
        self.load
            .binary_search_by(|(q, _)| q.cmp(p))
            .ok()
            .and_then(|i| self.load.get(i))
            .map_or(0, |x| x.1)
    }

    fn add_load(&mut self, p: &P, bytes: u64) {
        match self.load.binary_search_by(|(q, _)| q.cmp(p)) {
            Ok(i) => {
                if let Some(x) = self.load.get_mut(i) {
                    x.1 += bytes;
                }
            }
            Err(i) => self.load.insert(i, (p.clone(), bytes)),
        }
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

    fn holder<P>(peer: P, ranges: &RangeSet) -> Holder<'_, P> {
        Holder {
            peer,
            ranges,
            busy: false,
        }
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
        v.holders.push(holder(7, &r7));
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
    fn alt_copy_when_the_base_is_elsewhere() {
        let mut v: View<'_, u8> = View {
            may_use_dp: true,
            ..View::default()
        };
        v.base_holders.push(3);
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
        v.holders.push(holder(1, &all));
        v.holders.push(holder(2, &all));
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
        v.holders.push(Holder {
            busy: true,
            ..holder(1, &a)
        });
        v.holders.push(holder(2, &b));
        let a = assign(&units(), |_, _| false, &v);
        // Unit at 100 from the free peer 2; the others only busy peer 1
        // holds: they wait, they do not go to the DP.
        assert_eq!(a, vec![(1, Source::Peer(2))]);
        v.holders[0].busy = false;
        let a = assign(&units(), |_, _| false, &v);
        assert!(a.iter().all(|(_, f)| matches!(f, Source::Peer(_))), "{a:?}");
    }
}
