//! Grouping byte ranges into HTTP requests: adjacent ranges merge, and each
//! request carries at most a number of ranges and of bytes, so that a
//! long-RTT link is kept busy by a few large multi-range requests in flight,
//! and an interrupted request loses at most its own bytes.

/// Ranges an agent puts in one request at most (the DP refuses far more:
/// `dp::serve::ranges::MAX_RANGES`; nginx must allow at least this many,
/// `max_ranges`).
pub const MAX_RANGES_PER_REQUEST: usize = 64;

/// Limits of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most ranges in one request.
    pub max_ranges: usize,
    /// Most bytes in one request.
    pub max_bytes: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_ranges: MAX_RANGES_PER_REQUEST,
            max_bytes: 4 << 20,
        }
    }
}

/// One request: ranges `(offset, len)` in ascending order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPlan {
    /// The ranges.
    pub ranges: Vec<(u64, u64)>,
}

impl RequestPlan {
    /// Bytes requested.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).sum()
    }

    /// The `Range` header value.
    pub fn header(&self) -> String {
        let parts: Vec<String> = self
            .ranges
            .iter()
            .map(|&(o, l)| format!("{}-{}", o, o + l - 1))
            .collect();
        format!("bytes={}", parts.join(","))
    }
}

/// Plans requests for `units` (any order; each one a run, a frame, a piece
/// that is verified as a whole): sorted, overlapping ones dropped into one,
/// adjacent ones merged into one range when they go in the same request,
/// never split, so that each unit arrives inside one range of one answer.
/// A request holds at most `max_ranges` ranges and `max_bytes` bytes, except
/// that a unit longer than `max_bytes` goes alone.
pub fn plan(units: &[(u64, u64)], limits: RequestLimits) -> Vec<RequestPlan> {
    let mut sorted: Vec<(u64, u64)> = units.iter().copied().filter(|r| r.1 > 0).collect();
    sorted.sort_unstable();
    // Overlapping units become one (the union must arrive whole).
    let mut atoms: Vec<(u64, u64)> = Vec::new();
    for (o, l) in sorted {
        match atoms.last_mut() {
            Some((ao, al)) if *ao + *al > o => *al = (*al).max(o + l - *ao),
            _ => atoms.push((o, l)),
        }
    }
    let max_bytes = limits.max_bytes.max(1);
    let max_ranges = limits.max_ranges.max(1);
    let mut out: Vec<RequestPlan> = Vec::new();
    let mut cur = RequestPlan { ranges: Vec::new() };
    let mut cur_bytes = 0u64;
    for (o, l) in atoms {
        let adjacent = matches!(cur.ranges.last(), Some((lo, ll)) if lo + ll == o);
        let fits = cur_bytes + l <= max_bytes && (adjacent || cur.ranges.len() < max_ranges);
        if !cur.ranges.is_empty() && !fits {
            out.push(std::mem::replace(
                &mut cur,
                RequestPlan { ranges: Vec::new() },
            ));
            cur_bytes = 0;
        }
        match cur.ranges.last_mut() {
            Some((lo, ll)) if *lo + *ll == o => *ll += l,
            _ => cur.ranges.push((o, l)),
        }
        cur_bytes += l;
    }
    if !cur.ranges.is_empty() {
        out.push(cur);
    }
    out
}

/// Plans requests for byte `ranges` that may be cut anywhere (the caller
/// places each answer at its offset): merged, then cut into pieces of at
/// most `max_bytes`, grouped by [`plan`].
pub fn plan_split(ranges: &[(u64, u64)], limits: RequestLimits) -> Vec<RequestPlan> {
    let max_bytes = limits.max_bytes.max(1);
    let pieces: Vec<(u64, u64)> = ranges
        .iter()
        .flat_map(|&(o, l)| {
            (0..l.div_ceil(max_bytes))
                .map(move |k| (o + k * max_bytes, (l - k * max_bytes).min(max_bytes)))
        })
        .collect();
    plan(&pieces, limits)
}

/// Gathers units (runs, frames: byte ranges verified as a whole) from the
/// pieces that arrive in answers to [`plan_split`] requests, and hands each
/// one over once complete. Memory holds only units partly received.
#[derive(Debug, Default)]
pub struct Assembler {
    /// Units by start offset: id, length.
    units: std::collections::BTreeMap<u64, (usize, u64)>,
    /// Units partly received, by start offset.
    partial: std::collections::HashMap<u64, Partial>,
}

/// A unit partly received: its bytes and the ranges received (relative).
type Partial = (Vec<u8>, Vec<(u64, u64)>);

impl Assembler {
    /// Units `(id, offset, len)`, not overlapping.
    pub fn new(units: impl IntoIterator<Item = (usize, u64, u64)>) -> Self {
        Assembler {
            units: units
                .into_iter()
                .filter(|u| u.2 > 0)
                .map(|(id, o, l)| (o, (id, l)))
                .collect(),
            partial: Default::default(),
        }
    }

    /// Takes the bytes at `offset`; returns the units they complete, as
    /// `(id, bytes)`. Bytes outside every unit are ignored.
    pub fn add(&mut self, offset: u64, bytes: &[u8]) -> Vec<(usize, Vec<u8>)> {
        let end = offset + bytes.len() as u64;
        let first = self
            .units
            .range(..=offset)
            .next_back()
            .map_or(offset, |(o, _)| *o);
        let hit: Vec<(u64, usize, u64)> = self
            .units
            .range(first..end)
            .filter(|(o, (_, l))| *o + *l > offset)
            .map(|(o, (id, l))| (*o, *id, *l))
            .collect();
        let mut done = Vec::new();
        for (start, id, len) in hit {
            let a = start.max(offset);
            let b = (start + len).min(end);
            let piece = &bytes[(a - offset) as usize..(b - offset) as usize];
            if a == start && b == start + len && !self.partial.contains_key(&start) {
                self.units.remove(&start);
                done.push((id, piece.to_vec()));
                continue;
            }
            let (buf, got) = self
                .partial
                .entry(start)
                .or_insert_with(|| (vec![0; len as usize], Vec::new()));
            buf[(a - start) as usize..(b - start) as usize].copy_from_slice(piece);
            got.push((a - start, b - a));
            got.sort_unstable();
            let mut covered = 0;
            for &(o, l) in got.iter() {
                if o > covered {
                    break;
                }
                covered = covered.max(o + l);
            }
            if covered >= len {
                self.units.remove(&start);
                if let Some((buf, _)) = self.partial.remove(&start) {
                    done.push((id, buf));
                }
            }
        }
        done
    }

    /// Units not complete yet: `(id, offset, len)`.
    pub fn pending(&self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        self.units.iter().map(|(o, (id, l))| (*id, *o, *l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_merged_grouped_and_never_split() {
        let limits = RequestLimits {
            max_ranges: 2,
            max_bytes: 100,
        };
        let p = plan(
            &[(50, 10), (0, 10), (10, 5), (200, 250), (90, 60), (150, 50)],
            limits,
        );
        let all: Vec<Vec<(u64, u64)>> = p.iter().map(|r| r.ranges.clone()).collect();
        assert_eq!(
            all,
            vec![
                // 0-15 adjacent units merge; 50 starts a second range.
                vec![(0, 15), (50, 10)],
                // 90 + 60 would pass 100 bytes with the first request's.
                vec![(90, 60)],
                // Adjacent to the unit before but in a new request: 150.
                vec![(150, 50)],
                // Longer than max_bytes: alone, whole.
                vec![(200, 250)],
            ]
        );
        // Every unit lies inside one range of one request.
        for u in [
            (50u64, 10u64),
            (0, 10),
            (10, 5),
            (200, 250),
            (90, 60),
            (150, 50),
        ] {
            assert_eq!(
                p.iter()
                    .filter(|r| r
                        .ranges
                        .iter()
                        .any(|&(o, l)| o <= u.0 && u.0 + u.1 <= o + l))
                    .count(),
                1,
                "{u:?}"
            );
        }
        assert_eq!(p[0].header(), "bytes=0-14,50-59");
        assert!(plan(&[], limits).is_empty());
        // Overlaps merge too.
        assert_eq!(
            plan(&[(0, 10), (5, 10)], RequestLimits::default())[0].ranges,
            vec![(0, 15)]
        );
        // Many adjacent units fill requests up to the byte limit.
        let units: Vec<(u64, u64)> = (0..10).map(|k| (k * 30, 30)).collect();
        let p = plan(&units, limits);
        assert_eq!(
            p.iter().map(|r| r.ranges.clone()).collect::<Vec<_>>(),
            vec![
                vec![(0, 90)],
                vec![(90, 90)],
                vec![(180, 90)],
                vec![(270, 30)]
            ]
        );
    }

    #[test]
    fn assembler_hands_over_complete_units_whatever_the_pieces() {
        let data: Vec<u8> = (0..200u8).collect();
        let units = [(0usize, 0u64, 50u64), (1, 50, 100), (2, 150, 30)];
        // Pieces cut anywhere, in any order, one overlapping another.
        let mut a = Assembler::new(units);
        let mut got = Vec::new();
        for (o, l) in [(120u64, 60u64), (0, 70), (60, 30), (85, 40)] {
            got.extend(a.add(o, &data[o as usize..(o + l) as usize]));
        }
        got.sort();
        assert_eq!(
            got,
            vec![
                (0, data[0..50].to_vec()),
                (1, data[50..150].to_vec()),
                (2, data[150..180].to_vec())
            ]
        );
        assert_eq!(a.pending().count(), 0);
        // Whatever is missing stays pending.
        let mut a = Assembler::new(units);
        assert!(a.add(50, &data[50..149]).is_empty());
        assert_eq!(a.pending().map(|u| u.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(
            a.add(149, &data[149..150]),
            vec![(1, data[50..150].to_vec())]
        );
    }

    #[test]
    fn splittable_ranges_are_cut() {
        let limits = RequestLimits {
            max_ranges: 4,
            max_bytes: 100,
        };
        let p = plan_split(&[(0, 250), (1000, 10)], limits);
        assert_eq!(
            p.iter().map(|r| r.ranges.clone()).collect::<Vec<_>>(),
            vec![
                vec![(0, 100)],
                vec![(100, 100)],
                vec![(200, 50), (1000, 10)]
            ]
        );
        assert!(p.iter().all(|r| r.bytes() <= 100));
    }
}
