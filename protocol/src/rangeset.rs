//! A set of byte ranges of one content, kept sorted and disjoint: what a
//! journal records as verified, what a peer announces it holds, what a
//! transfer has done. One type, so that "merge" and "covers" are written
//! once.
//!
//! Ranges are `(offset, len)`; empty ones are ignored, and one that would
//! end past `u64::MAX` is refused (ranges from a peer are not trusted).

use serde::{Deserialize, Serialize};

/// Sorted, disjoint, non-empty byte ranges; touching ranges are merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct RangeSet(Vec<(u64, u64)>);

impl<'de> Deserialize<'de> for RangeSet {
    /// Whatever arrives is normalised (sorted, merged, overflow dropped):
    /// a peer's list is never trusted to be well formed.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: Vec<(u64, u64)> = Vec::deserialize(d)?;
        Ok(RangeSet::from_ranges(&v))
    }
}

impl RangeSet {
    /// The empty set.
    pub fn new() -> Self {
        RangeSet(Vec::new())
    }

    /// The set of `ranges`, in any order, overlapping or not; ranges that
    /// would end past `u64::MAX` are dropped.
    pub fn from_ranges(ranges: &[(u64, u64)]) -> Self {
        let mut sorted: Vec<(u64, u64)> = ranges
            .iter()
            .copied()
            .filter(|&(o, l)| l > 0 && o.checked_add(l).is_some())
            .collect();
        sorted.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
        for (o, l) in sorted {
            match out.last_mut() {
                Some(last) if o <= last.0 + last.1 => {
                    last.1 = last.1.max(o + l - last.0);
                }
                _ => out.push((o, l)),
            }
        }
        RangeSet(out)
    }

    /// The whole of `0..len`.
    pub fn whole(len: u64) -> Self {
        RangeSet::from_ranges(&[(0, len)])
    }

    /// Adds `offset..offset + len`.
    pub fn insert(&mut self, offset: u64, len: u64) {
        let Some(end) = offset.checked_add(len).filter(|_| len > 0) else {
            return;
        };
        // The ranges that touch [offset, end) merge into one.
        let first = self.0.partition_point(|&(o, l)| o + l < offset);
        let last = self.0.partition_point(|&(o, _)| o <= end);
        let (mut lo, mut hi) = (offset, end);
        if first < last {
            lo = lo.min(self.0[first].0);
            let (o, l) = self.0[last - 1];
            hi = hi.max(o + l);
        }
        self.0.splice(first..last, std::iter::once((lo, hi - lo)));
    }

    /// Adds every range of `other`: a few one by one, many in one merge
    /// of the two sorted lists.
    pub fn extend(&mut self, other: &RangeSet) {
        if other.0.len() <= 4 {
            for &(o, l) in &other.0 {
                self.insert(o, l);
            }
            return;
        }
        if self.0.is_empty() {
            self.0.clone_from(&other.0);
            return;
        }
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.0.len() + other.0.len());
        let (mut a, mut b) = (self.0.iter().peekable(), other.0.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 <= y.0 => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            let Some(&(o, l)) = next else { break };
            match out.last_mut() {
                Some(last) if o <= last.0 + last.1 => {
                    last.1 = last.1.max(o + l - last.0);
                }
                _ => out.push((o, l)),
            }
        }
        self.0 = out;
    }

    /// Whether `start..end` is covered (an empty range always is): a
    /// binary search.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        let i = self.0.partition_point(|&(o, _)| o <= start);
        i.checked_sub(1)
            .and_then(|i| self.0.get(i))
            .is_some_and(|&(o, l)| o + l >= end)
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Bytes covered.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|r| r.1).sum()
    }

    /// Whether nothing is covered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of disjoint ranges.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_and_coverage() {
        let m = RangeSet::from_ranges(&[(10, 5), (0, 10), (20, 10)]);
        assert_eq!(m.ranges(), &[(0, 15), (20, 10)]);
        assert!(m.covers(2, 15));
        assert!(m.covers(0, 15));
        assert!(!m.covers(14, 21));
        assert!(m.covers(20, 30));
        assert!(!m.covers(25, 31));
        assert!(!RangeSet::from_ranges(&[(0, 10), (11, 5)]).covers(2, 15));
        assert!(RangeSet::new().covers(5, 5));
        assert!(!RangeSet::new().covers(0, 1));
        assert_eq!(
            RangeSet::from_ranges(&[(10, 5), (0, 10), (20, 1), (15, 0)]).ranges(),
            &[(0, 15), (20, 1)]
        );
        assert!(RangeSet::from_ranges(&[(u64::MAX, 2)]).is_empty());
        assert_eq!(m.total(), 25);
    }

    #[test]
    fn insert_merges_what_it_touches() {
        let mut s = RangeSet::new();
        for (o, l) in [(50, 10), (10, 10), (30, 5), (20, 10), (0, 0), (100, 1)] {
            s.insert(o, l);
        }
        assert_eq!(s.ranges(), &[(10, 25), (50, 10), (100, 1)]);
        s.insert(5, 100);
        assert_eq!(s.ranges(), &[(5, 100)]);
        s.insert(u64::MAX - 1, 5);
        assert_eq!(s.ranges(), &[(5, 100)]);
    }

    #[test]
    fn insert_agrees_with_rebuilding_from_scratch() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for _ in 0..500 {
            let ranges: Vec<(u64, u64)> =
                (0..1 + next(20)).map(|_| (next(200), next(30))).collect();
            let mut s = RangeSet::new();
            for &(o, l) in &ranges {
                s.insert(o, l);
            }
            assert_eq!(s, RangeSet::from_ranges(&ranges), "{ranges:?}");
            // Merging two sets, large or small, is their union.
            let more: Vec<(u64, u64)> = (0..next(12)).map(|_| (next(200), next(30))).collect();
            let mut u = s.clone();
            u.extend(&RangeSet::from_ranges(&more));
            let all: Vec<(u64, u64)> = ranges.iter().chain(&more).copied().collect();
            assert_eq!(u, RangeSet::from_ranges(&all), "{ranges:?} + {more:?}");
        }
    }

    #[test]
    fn decoding_normalises() {
        let raw =
            postcard::to_allocvec(&vec![(20u64, 5u64), (0, 10), (5, 10), (u64::MAX, 9)]).unwrap();
        let s: RangeSet = postcard::from_bytes(&raw).unwrap();
        assert_eq!(s.ranges(), &[(0, 15), (20, 5)]);
    }
}
