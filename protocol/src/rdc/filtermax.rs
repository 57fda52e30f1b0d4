//! FilterMax cut points over a stream of H3 values (MS-RDC 3.1.5.1.2,
//! `spec/ms-rdc.md` §2).
//!
//! Position `p` is a *local maximum* when `H[p] > H[k]` for every other `k` with
//! `|k - p| ≤ h` inside the data. A chunk starts at every local maximum that the
//! edge rules allow, and a cut is forced when a chunk reaches 65,535 bytes.
//!
//! # How it stays cheap
//!
//! The finder keeps the maximum of the left window `[i-h, i-1]` (its last
//! occurrence) and at most one *pending* candidate: a position that beat its
//! left window and has not been beaten since. Two candidates can never be within
//! `h` of each other, so one is enough, and a pending candidate is always the
//! window maximum. A position below the window maximum changes nothing, so the
//! scan jumps from one "value ≥ window maximum" to the next with a vectorisable
//! search, stopping only at *events*: the window maximum leaving the window (the
//! pending candidate is then decided, and the window is rescanned) and a forced
//! cut falling due.
//!
//! Decisions lag the input by `h + 1` positions: a cut at `c` is known once
//! `H[c + h]` has been seen. A forced cut at `f` is known once every position
//! below `f` is decided, i.e. after `H[f + h - 1]`.
//!
//! # Resynchronisation
//!
//! Whether `p` is a local maximum depends only on the bytes `[p-h-w+1, p+h]`.
//! A finder started in the middle of the data (for parallel signing) therefore
//! finds exactly the true local maxima from `base + h + w - 1` on; it reports
//! nothing before its first local maximum, and enables forced cuts only after
//! it, because forced cuts depend on where the previous chunk started.

use std::collections::VecDeque;

use super::params::{EndRule, MAX_CHUNK_LEN, Params, StartRule};

/// How a chunk boundary came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CutKind {
    /// A strict local maximum of H3 over ± horizon.
    Max,
    /// The chunk reached [`MAX_CHUNK_LEN`] bytes.
    Forced,
}

/// One boundary: a chunk starts at `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    pub pos: u64,
    pub kind: CutKind,
}

/// Streaming FilterMax cut finder. Feed H3 values with [`CutFinder::slots`] and
/// [`CutFinder::scan`], then call [`CutFinder::finish`] once with the length.
pub(crate) struct CutFinder {
    horizon: u64,
    end_rule: EndRule,
    /// First position of the stream (0, or the base of a resynchronising finder).
    first: u64,
    /// No cut below this position (start rule, or resynchronisation margin).
    min_cut: u64,
    /// Forced cuts are enabled (always, except before the first cut when resynchronising).
    synced: bool,
    last_cut: u64,
    pending: Option<u64>,
    have_wmax: bool,
    /// Maximum of the left window (last occurrence): a cached copy of the
    /// front of `stairs`, for the hot loop.
    wmax_pos: u64,
    wmax_val: u32,
    /// Right-to-left running maxima of the positions `[.., stairs_end)`:
    /// positions ascending, values strictly descending. The front is the
    /// window maximum; the rest are the maxima that take over as it expires.
    stairs: VecDeque<(u64, u32)>,
    stairs_end: u64,
    /// Scratch for [`CutFinder::rescan`].
    records: Vec<(u64, u32)>,
    /// H3 values of positions `hist_base ..`; `filled` of them are valid.
    hist: Vec<u32>,
    filled: usize,
    hist_base: u64,
    /// Next position to scan.
    next: u64,
}

const MAX_CHUNK: u64 = MAX_CHUNK_LEN as u64;

impl CutFinder {
    /// A finder for data starting at position 0, that will receive at most
    /// `block` values per call to [`CutFinder::slots`].
    pub fn new(params: &Params, block: usize) -> Self {
        Self::build(params, block, 0, start_min(params), true)
    }

    /// A finder for data starting at `base` in the middle of a file, that
    /// reports nothing before the first local maximum at or after `from`,
    /// which synchronises it; see the module doc. Exact when `base` is 0 or
    /// `from ≥ base + h + w - 1`.
    pub fn resync(params: &Params, block: usize, base: u64, from: u64) -> Self {
        debug_assert!(
            base == 0
                || from >= base + u64::from(params.horizon()) + u64::from(params.window()) - 1
        );
        Self::build(params, block, base, from.max(start_min(params)), false)
    }

    fn build(params: &Params, block: usize, first: u64, min_cut: u64, synced: bool) -> Self {
        let h = params.horizon() as usize;
        CutFinder {
            horizon: h as u64,
            end_rule: params.edges().end,
            first,
            min_cut,
            synced,
            last_cut: first,
            pending: None,
            have_wmax: false,
            wmax_pos: first,
            wmax_val: 0,
            stairs: VecDeque::new(),
            stairs_end: first,
            records: Vec::new(),
            hist: vec![0; h + block],
            filled: 0,
            hist_base: first,
            next: first,
        }
    }

    /// Every cut still to come is at or after this position.
    pub fn decided(&self) -> u64 {
        self.next.saturating_sub(self.horizon + 1).max(self.first)
    }

    /// Room for the H3 values of the next `n ≤ block` positions. Drops history
    /// older than the horizon first.
    pub fn slots(&mut self, n: usize) -> &mut [u32] {
        debug_assert_eq!(
            self.hist_base + self.filled as u64,
            self.next,
            "scan before adding more"
        );
        let keep = (self.horizon as usize).min(self.filled);
        if self.filled + n > self.hist.len() {
            let drop = self.filled - keep;
            self.hist.copy_within(drop..self.filled, 0);
            self.filled = keep;
            self.hist_base += drop as u64;
        }
        if self.filled + n > self.hist.len() {
            // Only reachable if a caller passes more than `block`; grow rather than fail.
            self.hist.resize(self.filled + n, 0);
        }
        let start = self.filled;
        self.filled += n;
        &mut self.hist[start..start + n]
    }

    #[inline]
    fn idx(&self, pos: u64) -> usize {
        (pos - self.hist_base) as usize
    }

    /// Scans every value added since the last scan, appending decided cuts.
    pub fn scan(&mut self, cuts: &mut Vec<Cut>) {
        let h = self.horizon;
        let end = self.hist_base + self.filled as u64;
        let mut i = self.next;
        while i < end {
            if !self.have_wmax {
                self.take(i);
                i += 1;
                continue;
            }
            let expiry = self.wmax_pos + h + 1;
            let forced = if self.synced {
                self.last_cut + MAX_CHUNK + h
            } else {
                u64::MAX
            };
            let stop = end.min(expiry).min(forced);
            if i < stop {
                let (a, b) = (self.idx(i), self.idx(stop));
                match find_ge(&self.hist[a..b], self.wmax_val) {
                    Some(k) => {
                        i += k as u64;
                        self.take(i);
                        i += 1;
                        continue;
                    }
                    None => i = stop,
                }
                if i == end {
                    break;
                }
            }
            // Events due before position i is taken: the pending candidate, then
            // a forced cut, then the window maximum leaving the window.
            if i == expiry
                && let Some(c) = self.pending.take()
            {
                self.cut(c, CutKind::Max, cuts);
            }
            if self.synced && i == self.last_cut + MAX_CHUNK + h {
                let f = self.last_cut + MAX_CHUNK;
                self.cut(f, CutKind::Forced, cuts);
            }
            if i == expiry {
                self.rescan(i);
            }
            self.take(i);
            i += 1;
        }
        self.next = end;
    }

    /// Takes the value at position `i` into the window maximum / candidate state.
    #[inline]
    fn take(&mut self, i: u64) {
        let v = self.hist[self.idx(i)];
        if !self.have_wmax || v > self.wmax_val {
            // Beats its whole left window (and so any pending candidate).
            self.pending = (i >= self.min_cut).then_some(i);
        } else if v == self.wmax_val {
            // A tie disqualifies both: strict comparison on both sides.
            self.pending = None;
        } else {
            return;
        }
        // i is now the last maximum of every window containing it.
        self.have_wmax = true;
        self.wmax_pos = i;
        self.wmax_val = v;
        self.stairs.clear();
        self.stairs.push_back((i, v));
        self.stairs_end = i + 1;
    }

    /// Finds the maximum of the window `[i-h, i-1]` (last occurrence) after
    /// the previous one left it. Extends the staircase over the positions added
    /// since it was last extended (each position is searched once over the
    /// whole stream), then drops what left the window.
    fn rescan(&mut self, i: u64) {
        let from = self.stairs_end;
        let (a, b) = (self.idx(from), self.idx(i));
        let fresh = &self.hist[a..b];
        if let Some(&last) = fresh.last() {
            // Right-to-left records of the fresh range, found right to left.
            let records = &mut self.records;
            records.clear();
            let mut end = fresh.len() - 1;
            let mut m = last;
            records.push((from + end as u64, m));
            while let Some(k) = rfind_gt(&fresh[..end], m) {
                m = fresh[k];
                records.push((from + k as u64, m));
                end = k;
            }
            while self.stairs.back().is_some_and(|&(_, v)| v <= m) {
                self.stairs.pop_back();
            }
            self.stairs.extend(self.records.iter().rev());
            self.stairs_end = i;
        }
        let lo = i.saturating_sub(self.horizon).max(self.first);
        while self.stairs.front().is_some_and(|&(p, _)| p < lo) {
            self.stairs.pop_front();
        }
        if let Some(&(p, v)) = self.stairs.front() {
            self.wmax_pos = p;
            self.wmax_val = v;
        }
    }

    fn cut(&mut self, pos: u64, kind: CutKind, cuts: &mut Vec<Cut>) {
        if self.synced && pos <= self.last_cut {
            return; // already cut here (a forced cut on a local maximum)
        }
        self.synced = true;
        self.last_cut = pos;
        cuts.push(Cut { pos, kind });
    }

    /// Decides the remaining positions of data of length `len` (== positions scanned).
    pub fn finish(&mut self, cuts: &mut Vec<Cut>) {
        let n = self.next;
        let h = self.horizon;
        loop {
            let forced = if self.synced {
                self.last_cut + MAX_CHUNK
            } else {
                u64::MAX
            };
            let pending = self
                .pending
                .filter(|&c| self.end_rule == EndRule::Clip || c + h < n);
            match pending {
                Some(c) if c <= forced => {
                    self.pending = None;
                    self.cut(c, CutKind::Max, cuts);
                }
                _ if forced < n => self.cut(forced, CutKind::Forced, cuts),
                _ => break,
            }
        }
        self.pending = None;
    }
}

/// The first position the start rule lets cut.
fn start_min(params: &Params) -> u64 {
    let h = u64::from(params.horizon());
    match params.edges().start {
        StartRule::Clip => 1,
        StartRule::Horizon => h,
        StartRule::Prose => h + 1,
    }
}

/// Index of the first value `≥ threshold`. Written so that it vectorises: 16
/// lanes are compared without branching, and only a hit is located exactly.
/// Not inlined: inlined into the scan loop, LLVM keeps the loaded values for
/// the exact search and falls back to scalar compares (4x the instructions).
#[inline(never)]
fn find_ge(values: &[u32], threshold: u32) -> Option<usize> {
    let mut chunks = values.chunks_exact(16);
    let mut base = 0;
    for c in &mut chunks {
        if c.iter().fold(false, |any, &x| any | (x >= threshold)) {
            return c.iter().position(|&x| x >= threshold).map(|k| base + k);
        }
        base += 16;
    }
    chunks
        .remainder()
        .iter()
        .position(|&x| x >= threshold)
        .map(|k| base + k)
}

/// Index of the last value `> threshold`, vectorised like [`find_ge`].
#[inline(never)]
fn rfind_gt(values: &[u32], threshold: u32) -> Option<usize> {
    let mut chunks = values.rchunks_exact(16);
    let mut end = values.len();
    for c in &mut chunks {
        end -= 16;
        if c.iter().fold(false, |any, &x| any | (x > threshold)) {
            return c.iter().rposition(|&x| x > threshold).map(|k| end + k);
        }
    }
    chunks.remainder().iter().rposition(|&x| x > threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_ge_and_rfind_gt() {
        let v: Vec<u32> = (0..100).map(|x| (x * 37) % 101).collect();
        for t in [0, 5, 50, 99, 100, 101] {
            assert_eq!(find_ge(&v, t), v.iter().position(|&x| x >= t), "t={t}");
        }
        for t in [0, 5, 50, 99, 100, 101] {
            assert_eq!(rfind_gt(&v, t), v.iter().rposition(|&x| x > t), "t={t}");
        }
    }
}
