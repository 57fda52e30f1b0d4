//! FilterMax cut points over a stream of H3 values (MS-RDC 3.1.5.1.2,
//! `spec/ms-rdc.md` §2).
//!
//! Position `p` is a *local maximum* when `H[p] > H[k]` for every other `k` with
//! `|k - p| ≤ h` inside the data. A chunk starts at every local maximum that the
//! edge rules allow, and a cut is forced when a chunk reaches 65,535 bytes.
//!
//! # How it stays cheap
//!
//! The positions are cut into *blocks* of at most `h + 1` positions. Every
//! position of a block is within `h` of every other, so a local maximum is the
//! unique maximum of its block: each block has at most one candidate. A
//! candidate is checked against the maxima of `[p-h, p-1]` and `[p+1, p+h]`.
//! Both questions are answered from the maximum of every group of 16 values,
//! which the hashing kernel writes as it goes (`kernel.rs`), so the finder reads
//! about one value in 16 and a few whole groups per block, with no per-position
//! branches. (An earlier version tracked the sliding window maximum and paid
//! for an unpredictable branch at every new maximum; it was 3x slower.)
//!
//! A block is decided once `h` positions past it have arrived, so cuts are
//! known at most `h + block` positions after them. A forced cut at `f` is
//! emitted once every block below `f` is decided.
//!
//! # Resynchronisation
//!
//! Whether `p` is a local maximum depends only on the bytes `[p-h-w+1, p+h]`.
//! A finder started in the middle of the data (for parallel signing) therefore
//! finds exactly the true local maxima from `base + h + w - 1` on; it reports
//! nothing before its first local maximum, and enables forced cuts only after
//! it, because forced cuts depend on where the previous chunk started.

use peerdelta_kernels::{max_u32, position_ge_u32};

use super::kernel::{GROUP, Out};
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

const MAX_CHUNK: u64 = MAX_CHUNK_LEN as u64;

/// Largest block; beyond this, bigger blocks save little and cost buffer.
const MAX_BLOCK: u64 = 4096;

/// Streaming FilterMax cut finder. Feed H3 values with [`CutFinder::slots`] and
/// [`CutFinder::scan`], then call [`CutFinder::finish`] once.
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
    /// Positions per block: at most `h + 1`, a multiple of [`GROUP`] when it can be.
    block: u64,
    /// Start of the first block not yet decided.
    next_block: u64,
    /// H3 values of positions `hist_base ..`; `filled` of them are valid.
    /// `hist_base - first` is a multiple of `block` and of [`GROUP`].
    hist: Vec<u32>,
    /// Maximum of each group of [`GROUP`] values of `hist`.
    groups: Vec<u32>,
    filled: usize,
    hist_base: u64,
}

impl CutFinder {
    /// A finder for data starting at position 0, that will receive at most
    /// `round` values per call to [`CutFinder::slots`].
    pub fn new(params: &Params, round: usize) -> Self {
        Self::build(params, round, 0, start_min(params), true)
    }

    /// A finder for data starting at `base` in the middle of a file, that
    /// reports nothing before the first local maximum at or after `from`,
    /// which synchronises it; see the module doc. Exact when `base` is 0 or
    /// `from ≥ base + h + w - 1`.
    pub fn resync(params: &Params, round: usize, base: u64, from: u64) -> Self {
        debug_assert!(
            base == 0
                || from >= base + u64::from(params.horizon()) + u64::from(params.window()) - 1
        );
        Self::build(params, round, base, from.max(start_min(params)), false)
    }

    fn build(params: &Params, round: usize, first: u64, min_cut: u64, synced: bool) -> Self {
        let h = u64::from(params.horizon());
        let block = match (h + 1).min(MAX_BLOCK) {
            b if b >= GROUP as u64 => b / GROUP as u64 * GROUP as u64,
            b => b,
        };
        // History kept across rounds: h before the first undecided block, the
        // blocks not decided yet (up to h + block), rounded to whole blocks.
        let cap = (2 * h + 3 * block) as usize + GROUP + round;
        CutFinder {
            horizon: h,
            end_rule: params.edges().end,
            first,
            min_cut,
            synced,
            last_cut: first,
            block,
            next_block: first,
            hist: vec![0; cap],
            groups: vec![0; cap.div_ceil(GROUP)],
            filled: 0,
            hist_base: first,
        }
    }

    /// Every cut still to come is at or after this position.
    pub fn decided(&self) -> u64 {
        self.next_block
    }

    /// The horizon `h`.
    pub fn horizon(&self) -> u64 {
        self.horizon
    }

    /// Whether a cut has been made (always true for a finder from the start).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Where the last cut was made.
    pub fn last_cut(&self) -> u64 {
        self.last_cut
    }

    /// Moves every position `delta` bytes on, as if `delta` more bytes had
    /// come in that change nothing but where things are: only right for
    /// `delta` bytes of one value, with the finder deep inside a run of it
    /// and `delta` a multiple of the maximum chunk length (see
    /// `Chunker::skip_run`).
    pub fn shift(&mut self, delta: u64) {
        self.first += delta;
        self.min_cut += delta;
        self.last_cut += delta;
        self.next_block += delta;
        self.hist_base += delta;
    }

    /// Room for the H3 values of the next `n ≤ round` positions and their
    /// group maxima. Drops history no longer needed first. Every call but the
    /// last must be for a multiple of [`GROUP`] positions.
    pub fn slots(&mut self, n: usize) -> Out<'_> {
        debug_assert_eq!(self.filled % GROUP, 0, "rounds come in whole groups");
        if self.filled + n > self.hist.len() {
            // Keep h values before the first undecided block, in whole blocks
            // and groups so that indices stay aligned.
            let keep_from = self
                .next_block
                .saturating_sub(self.horizon)
                .max(self.hist_base);
            let unit = lcm(self.block, GROUP as u64);
            let drop = ((keep_from - self.hist_base) / unit * unit) as usize;
            self.hist.copy_within(drop..self.filled, 0);
            self.groups
                .copy_within(drop / GROUP..self.filled.div_ceil(GROUP), 0);
            self.filled -= drop;
            self.hist_base += drop as u64;
        }
        if self.filled + n > self.hist.len() {
            // Only reachable if a caller passes more than `round`; grow rather than fail.
            self.hist.resize(self.filled + n, 0);
            self.groups.resize((self.filled + n).div_ceil(GROUP), 0);
        }
        let start = self.filled;
        self.filled += n;
        Out {
            values: &mut self.hist[start..start + n],
            groups: &mut self.groups[start / GROUP..(start + n).div_ceil(GROUP)],
        }
    }

    /// Position one past the last value received.
    fn end(&self) -> u64 {
        self.hist_base + self.filled as u64
    }

    #[inline]
    fn idx(&self, pos: u64) -> usize {
        (pos - self.hist_base) as usize
    }

    /// Decides every block whose right horizon has fully arrived, appending cuts.
    pub fn scan(&mut self, cuts: &mut Vec<Cut>) {
        let end = self.end();
        while self.next_block + self.block + self.horizon <= end {
            self.decide_block(end, cuts);
        }
    }

    /// Decides the remaining blocks, with right horizons clipped at the end of
    /// the data (or not allowed to cut under [`EndRule::Full`]).
    pub fn finish(&mut self, cuts: &mut Vec<Cut>) {
        let end = self.end();
        while self.next_block < end {
            self.decide_block(end, cuts);
        }
        self.forced_before(end, cuts);
    }

    /// Decides the block at `next_block`, with values known up to `end`.
    fn decide_block(&mut self, end: u64, cuts: &mut Vec<Cut>) {
        let start = self.next_block;
        let stop = (start + self.block).min(end);
        if let Some(p) = self.candidate(start, stop) {
            let right_full = p + self.horizon < end;
            let allowed = p >= self.min_cut && (right_full || self.end_rule == EndRule::Clip);
            if allowed && self.is_local_max(p, end) {
                self.forced_before(p, cuts);
                self.cut(p, CutKind::Max, cuts);
            }
        }
        self.forced_before(stop, cuts);
        self.next_block = stop;
    }

    /// The unique maximum of positions `[start, stop)`, if it is unique.
    fn candidate(&self, start: u64, stop: u64) -> Option<u64> {
        let (a, b) = (self.idx(start), self.idx(stop));
        let m = self.range_max(a, b)?;
        let k = self.find_ge_at(a, b, m)?;
        if self.range_max(k + 1, b).is_some_and(|x| x == m) {
            return None; // a tie: neither is a strict maximum
        }
        Some(self.hist_base + k as u64)
    }

    /// Whether `p` beats every value within `h` of it (clipped to the data).
    fn is_local_max(&self, p: u64, end: u64) -> bool {
        let k = self.idx(p);
        let v = self.hist[k];
        let lo = self.idx(p.saturating_sub(self.horizon).max(self.first));
        let hi = self.idx((p + self.horizon + 1).min(end));
        self.range_max(lo, k).is_none_or(|x| x < v)
            && self.range_max(k + 1, hi).is_none_or(|x| x < v)
    }

    /// Forced cuts below `limit`: every 65,535 bytes without a cut.
    fn forced_before(&mut self, limit: u64, cuts: &mut Vec<Cut>) {
        while self.synced && self.last_cut + MAX_CHUNK < limit {
            let f = self.last_cut + MAX_CHUNK;
            self.cut(f, CutKind::Forced, cuts);
        }
    }

    fn cut(&mut self, pos: u64, kind: CutKind, cuts: &mut Vec<Cut>) {
        if self.synced && pos <= self.last_cut {
            return; // already cut here
        }
        self.synced = true;
        self.last_cut = pos;
        cuts.push(Cut { pos, kind });
    }

    /// Maximum of `hist[a..b]`, reading group maxima for whole groups; `None`
    /// when the range is empty.
    fn range_max(&self, a: usize, b: usize) -> Option<u32> {
        if a >= b {
            return None;
        }
        let head_end = a.next_multiple_of(GROUP).min(b);
        let (ga, gb) = (head_end / GROUP, b / GROUP);
        let tail = (gb * GROUP).max(head_end);
        let mut m = max_u32(&self.hist[a..head_end]);
        if ga < gb {
            m = m.max(max_u32(&self.groups[ga..gb]));
        }
        Some(m.max(max_u32(&self.hist[tail..b])))
    }

    /// Index in `hist[a..b]` of the first value `≥ t`, reading group maxima
    /// for whole groups.
    fn find_ge_at(&self, a: usize, b: usize, t: u32) -> Option<usize> {
        let head_end = a.next_multiple_of(GROUP).min(b);
        if let Some(k) = position_ge_u32(&self.hist[a..head_end], t) {
            return Some(a + k);
        }
        let (ga, gb) = (head_end / GROUP, b / GROUP);
        if ga < gb
            && let Some(g) = position_ge_u32(&self.groups[ga..gb], t)
        {
            let base = (ga + g) * GROUP;
            return position_ge_u32(&self.hist[base..base + GROUP], t).map(|k| base + k);
        }
        let tail = (gb * GROUP).max(head_end);
        position_ge_u32(&self.hist[tail..b], t).map(|k| tail + k)
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_fit_the_horizon() {
        for (h, want) in [
            (1024, 1024),
            (128, 128),
            (3, 4),
            (16383, 4096),
            (20, 16),
            (14, 15),
        ] {
            let p = Params::new_unchecked(4, h).unwrap();
            assert_eq!(CutFinder::new(&p, 64).block, want, "h = {h}");
        }
    }
}
