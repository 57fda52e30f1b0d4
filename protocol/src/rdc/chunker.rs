//! Streaming chunking and signing: H3 + FilterMax + MD4 in one pass.
//!
//! A [`Chunker`] accepts input slices of any size and emits each [`Chunk`] as
//! soon as its end is decided, which is `h + 1` bytes after the cut. It keeps
//! only the bytes whose chunk is not decided yet plus the hash window, so its
//! memory is bounded by the horizon and the block size, never by the input.
//! The boundaries do not depend on how the input is sliced.

use peerdelta_kernels::RollingHash;

use super::filtermax::{Cut, CutFinder, CutKind};
use super::h3::H3_TABLE;
use super::kernel::{GROUP, Lanes};
use super::md4::{self, Md4};
use super::params::{MAX_CHUNK_LEN, Params};

/// Positions hashed per round; bounds the buffered H3 values.
const BLOCK: usize = 16 * 1024;

/// One chunk of the input and its MS-RDC signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Chunk {
    /// Offset of the first byte in the input of this level.
    pub offset: u64,
    /// Length in bytes, `1..=65535`.
    pub len: u16,
    /// MD4 of the chunk's bytes.
    pub md4: [u8; 16],
}

impl Chunk {
    /// Offset one past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// How a chunk ends; only the parallel signer needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkEnd {
    Cut(CutKind),
    EndOfData,
}

/// Streaming MS-RDC chunker and signer for one level.
///
/// ```
/// use peerdelta_protocol::rdc::{Chunker, Params};
/// let data: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
/// let mut chunks = Vec::new();
/// let mut chunker = Chunker::new(Params::LEVEL1);
/// for piece in data.chunks(1000) {
///     chunker.push(piece, &mut |c| chunks.push(c));
/// }
/// chunker.finish(&mut |c| chunks.push(c));
/// assert_eq!(chunks.iter().map(|c| u64::from(c.len)).sum::<u64>(), 200_000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Chunker {
    window: usize,
    shift: u32,
    finder: CutFinder,
    /// H3 after the last hashed byte.
    hash: u32,
    /// Bytes of the *virtual stream*: `window` zero bytes followed by the input,
    /// so input offset `p` is virtual position `p + window`. `buf[0]` is virtual
    /// position `buf_start`.
    buf: Vec<u8>,
    buf_start: u64,
    /// Input bytes hashed.
    len: u64,
    /// Input bytes received: the next byte's offset. Bytes past `len` wait
    /// until a round can hash a whole number of groups.
    received: u64,
    signer: Signer,
    /// The AVX-512 H3 kernel when the CPU has it; otherwise the portable lanes
    /// of `kernel.rs`, with MD4 interleaved.
    simd: Option<RollingHash>,
    /// The input received ends with bytes of one value: `(value, offset of
    /// the first of them)`.
    run: (u8, u64),
    /// MD4 of [`MAX_CHUNK_LEN`] bytes of one value, once computed.
    run_md4: Option<(u8, [u8; 16])>,
    /// Pass over long runs of one value ([`Chunker::skip_run`]).
    skip_runs: bool,
    /// Bytes passed over so.
    skipped: u64,
}

/// The chunk being built. Cuts are found one round after their bytes are
/// hashed, and the chunk's MD4 catches up one round later still, inside the
/// next round's hashing loop (see `kernel.rs`).
struct Signer {
    /// Compute MD4 of each chunk (false: boundaries only, MD4 left zero).
    sign: bool,
    /// A chunk is being built (false only before a resynchronising chunker's first cut).
    open: bool,
    chunk_start: u64,
    md4: Md4,
    /// Bytes before `md4_pos` are in the MD4 state (or skipped before the first cut).
    md4_pos: u64,
    /// Bytes before this are decided: no cut will be found below it.
    md4_target: u64,
    /// Cuts found and not yet closed, ascending, all `≤ md4_target`.
    pending: Vec<Cut>,
}

impl Chunker {
    /// A chunker for data starting at offset 0.
    pub fn new(params: Params) -> Self {
        let finder = CutFinder::new(&params, BLOCK);
        Self::build(params, finder, 0, true)
    }

    /// A chunker that only finds boundaries: every chunk's `md4` is zero. For
    /// measuring what finding cut points costs next to hashing.
    pub fn boundaries_only(params: Params) -> Self {
        let mut c = Self::new(params);
        c.signer.sign = false;
        c
    }

    /// A chunker that uses the portable kernel even on a CPU with AVX-512, to
    /// compare the two (both give the same chunks).
    pub fn portable(params: Params) -> Self {
        let mut c = Self::new(params);
        c.simd = None;
        c
    }

    /// A chunker that hashes long runs of one byte value like any other
    /// bytes instead of passing over them, to check and measure that both
    /// give the same chunks.
    pub fn hashing_every_byte(params: Params) -> Self {
        let mut c = Self::new(params);
        c.skip_runs = false;
        c
    }

    /// A chunker for data starting at `base` inside a larger input, for the
    /// parallel signer: it emits nothing before the first local maximum at or
    /// after `from`, from where its output equals the sequential one. `base`
    /// must be 0 or at least `h + w - 1` before `from`.
    pub(crate) fn resync(params: Params, base: u64, from: u64) -> Self {
        let finder = CutFinder::resync(&params, BLOCK, base, from);
        Self::build(params, finder, base, false)
    }

    fn build(params: Params, finder: CutFinder, base: u64, open: bool) -> Self {
        let window = params.window() as usize;
        Chunker {
            window,
            shift: params.shift(),
            finder,
            hash: 0,
            buf: vec![0; window],
            buf_start: base,
            len: base,
            received: base,
            signer: Signer {
                sign: true,
                open,
                chunk_start: base,
                md4: Md4::new(),
                md4_pos: base,
                md4_target: base,
                pending: Vec::new(),
            },
            simd: RollingHash::new(&H3_TABLE, window, params.shift()),
            run: (0, base),
            run_md4: None,
            skip_runs: true,
            skipped: 0,
        }
    }

    /// Whether a cut has been found (false only before a resynchronising
    /// chunker's first cut; the cut may not have opened a chunk yet).
    pub(crate) fn has_cut(&self) -> bool {
        self.signer.open || !self.signer.pending.is_empty()
    }

    /// Every cut still to come is at or after this offset.
    pub(crate) fn decided(&self) -> u64 {
        self.finder.decided()
    }

    /// Bytes passed over without hashing them, inside long runs of one byte
    /// value (their chunks are known without it).
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    /// Bytes received so far (offset of the next byte).
    pub fn position(&self) -> u64 {
        self.received
    }

    /// Adds input; calls `sink` for every chunk that became final.
    pub fn push(&mut self, data: &[u8], sink: &mut impl FnMut(Chunk)) {
        self.push_inner(data, &mut |c, _| sink(c));
    }

    /// Ends the input; calls `sink` for the remaining chunks.
    pub fn finish(mut self, sink: &mut impl FnMut(Chunk)) {
        self.finish_inner(&mut |c, _| sink(c));
    }

    pub(crate) fn push_inner(&mut self, mut data: &[u8], sink: &mut impl FnMut(Chunk, ChunkEnd)) {
        while !data.is_empty() {
            data = self.skip_run(data, sink);
            if data.is_empty() {
                break;
            }
            let waiting = (self.received - self.len) as usize;
            let take = data.len().min(BLOCK - waiting);
            let taken = &data[..take];
            self.buf.extend_from_slice(taken);
            let last = taken[take - 1];
            match take - same_suffix(taken, last) {
                0 if self.run.0 == last => {}
                0 => self.run = (last, self.received),
                i => self.run = (last, self.received + i as u64),
            }
            self.received += take as u64;
            data = &data[take..];
            // Whole groups only, so that every round starts a group.
            let n = (waiting + take) / GROUP * GROUP;
            if n > 0 {
                self.round(n, sink);
            }
        }
    }

    pub(crate) fn finish_inner(&mut self, sink: &mut impl FnMut(Chunk, ChunkEnd)) {
        let n = (self.received - self.len) as usize;
        if n > 0 {
            self.round(n, sink);
        }
        self.finder.finish(&mut self.signer.pending);
        self.signer.md4_target = self.len;
        self.signer.drain(
            &self.buf,
            self.buf_start,
            self.window,
            &mut md4::compress,
            sink,
        );
        let s = &mut self.signer;
        if s.open && self.len > s.chunk_start {
            s.close(self.len, ChunkEnd::EndOfData, sink);
        }
    }

    /// Passes over whole maximum-length chunks of a long run of one byte
    /// value (the zeros of a disk image) without hashing them; returns the
    /// input left to hash.
    ///
    /// Deep inside such a run every H3 value is the same, so there is no
    /// local maximum and a cut is forced every [`MAX_CHUNK_LEN`] bytes, each
    /// chunk with the same MD4. Once everything the chunker holds lies in
    /// the run (the bytes it keeps, the open chunk, and the H3 values within
    /// `h` of the first undecided position), taking in `k` more chunk
    /// lengths of that value only emits `k` such chunks and moves every
    /// position on: the state is otherwise the same. Skipping them gives the
    /// chunks hashing them would give.
    fn skip_run<'a>(&mut self, data: &'a [u8], sink: &mut impl FnMut(Chunk, ChunkEnd)) -> &'a [u8] {
        const P: u64 = MAX_CHUNK_LEN as u64;
        let (value, run_start) = self.run;
        let s = &self.signer;
        let steady = s.open
            && s.pending.is_empty()
            && self.finder.synced()
            && self.finder.last_cut() == s.chunk_start
            && s.chunk_start >= run_start
            // `buf_start` is a position in the virtual stream.
            && self.buf_start >= run_start + self.window as u64
            && self.finder.decided() > run_start + self.window as u64 + self.finder.horizon();
        if !self.skip_runs || !steady || data.len() < P as usize || data[0] != value {
            return data;
        }
        let same = same_prefix(data, value) as u64;
        let k = same / P;
        if k == 0 {
            return data;
        }
        let md4 = if !self.signer.sign {
            [0; 16]
        } else {
            match self.run_md4 {
                Some((v, m)) if v == value => m,
                _ => {
                    let mut m = Md4::new();
                    m.update(&vec![value; MAX_CHUNK_LEN as usize]);
                    let m = m.finalize_reset();
                    self.run_md4 = Some((value, m));
                    m
                }
            }
        };
        let start = self.signer.chunk_start;
        for j in 0..k {
            let chunk = Chunk {
                offset: start + j * P,
                len: MAX_CHUNK_LEN as u16,
                md4,
            };
            sink(chunk, ChunkEnd::Cut(CutKind::Forced));
        }
        let delta = k * P;
        self.skipped += delta;
        self.finder.shift(delta);
        self.buf_start += delta;
        self.len += delta;
        self.received += delta;
        let s = &mut self.signer;
        s.chunk_start += delta;
        s.md4_pos += delta;
        s.md4_target += delta;
        &data[delta as usize..]
    }

    fn round(&mut self, n: usize, sink: &mut impl FnMut(Chunk, ChunkEnd)) {
        match self.shift {
            0 => self.round_s::<0>(n, sink),
            1 => self.round_s::<1>(n, sink),
            2 => self.round_s::<2>(n, sink),
            4 => self.round_s::<4>(n, sink),
            8 => self.round_s::<8>(n, sink),
            _ => self.round_s::<16>(n, sink),
        }
        self.trim();
    }

    /// Hashes the `n` bytes just appended to `buf` (with the MD4 of the decided
    /// bytes interleaved), then scans them for cuts.
    fn round_s<const S: u32>(&mut self, n: usize, sink: &mut impl FnMut(Chunk, ChunkEnd)) {
        debug_assert_eq!(S, self.shift);
        let w = self.window;
        let first = (self.len + w as u64 - self.buf_start) as usize;
        let bytes = &self.buf[first - w..first + n];
        let mut out = self.finder.slots(n);
        let (buf, buf_start) = (&self.buf, self.buf_start);
        if let Some(simd) = self.simd.as_mut() {
            let mut pass = simd.begin(bytes, self.hash, out.values, out.groups);
            self.signer
                .drain(buf, buf_start, w, &mut |m, b| pass.step_md4(m, b), sink);
            self.hash = pass.finish();
        } else {
            let mut lanes = Lanes::new::<S>(bytes, w, n, self.hash);
            let mut compress = |m: &mut [u32; 4], b: &[u8; 64]| {
                if lanes.has_step() {
                    lanes.step_md4::<S>(bytes, &mut out, m, b);
                } else {
                    md4::compress(m, b);
                }
            };
            self.signer.drain(buf, buf_start, w, &mut compress, sink);
            self.hash = lanes.finish::<S>(bytes, &mut out);
        }
        self.len += n as u64;
        self.finder.scan(&mut self.signer.pending);
        self.signer.md4_target = self.finder.decided();
    }

    /// Drops buffered bytes that neither the hash window nor the chunk needs.
    fn trim(&mut self) {
        let w = self.window as u64;
        let keep_from = self.len.min(self.signer.md4_pos + w);
        if keep_from > self.buf_start {
            let drop = (keep_from - self.buf_start) as usize;
            self.buf.drain(..drop);
            self.buf_start = keep_from;
        }
    }
}

/// Bytes compared at once by [`same_prefix`] and [`same_suffix`]: whole
/// blocks without an early exit, which the compiler vectorises.
const SAME_BLOCK: usize = 256;

/// Whether every byte of `block` is `v` (no early exit: vectorised; call
/// it on blocks of a few KiB).
pub fn all_equal(block: &[u8], v: u8) -> bool {
    block.iter().fold(0, |a, &b| a | (b ^ v)) == 0
}

/// Length of the longest prefix of `data` whose bytes are all `v`.
fn same_prefix(data: &[u8], v: u8) -> usize {
    let mut n = 0;
    for block in data.chunks(SAME_BLOCK) {
        if !all_equal(block, v) {
            return n + block.iter().take_while(|&&b| b == v).count();
        }
        n += block.len();
    }
    n
}

/// Length of the longest suffix of `data` whose bytes are all `v`.
fn same_suffix(data: &[u8], v: u8) -> usize {
    let mut n = 0;
    for block in data.rchunks(SAME_BLOCK) {
        if !all_equal(block, v) {
            return n + block.iter().rev().take_while(|&&b| b == v).count();
        }
        n += block.len();
    }
    n
}

impl Signer {
    /// Feeds the MD4 every decided byte, closing a chunk at each pending cut.
    /// Full MD4 blocks go through `compress`, which may hash H3 alongside.
    fn drain(
        &mut self,
        buf: &[u8],
        buf_start: u64,
        w: usize,
        compress: &mut impl FnMut(&mut [u32; 4], &[u8; 64]),
        sink: &mut impl FnMut(Chunk, ChunkEnd),
    ) {
        let at = |pos: u64| (pos + w as u64 - buf_start) as usize;
        let mut next_cut = 0;
        while self.md4_pos < self.md4_target || next_cut < self.pending.len() {
            let cut = self.pending.get(next_cut).copied();
            let end = cut.map_or(self.md4_target, |c| c.pos);
            if !self.open {
                // Before a resynchronising chunker's first cut: skip to it.
                self.md4_pos = end;
                if cut.is_some() {
                    self.open = true;
                    self.chunk_start = end;
                    next_cut += 1;
                }
                continue;
            }
            if self.sign && end > self.md4_pos {
                let rest = self.md4.fill(&buf[at(self.md4_pos)..at(end)]);
                let mut blocks = rest.chunks_exact(64);
                let count = blocks.len();
                for block in &mut blocks {
                    let block: &[u8; 64] = block.try_into().expect("chunks_exact(64)");
                    compress(&mut self.md4.state, block);
                }
                self.md4.account_blocks(count);
                self.md4.stash(blocks.remainder());
            }
            self.md4_pos = end;
            if let Some(c) = cut {
                self.close(c.pos, ChunkEnd::Cut(c.kind), sink);
                next_cut += 1;
            }
        }
        self.pending.clear();
    }

    /// Ends the chunk at `end` (all its bytes are in the MD4) and starts the next.
    fn close(&mut self, end: u64, how: ChunkEnd, sink: &mut impl FnMut(Chunk, ChunkEnd)) {
        if self.sign && self.md4_pos < end {
            debug_assert!(false, "closing a chunk before its bytes were hashed");
        }
        let md4 = if self.sign {
            self.md4.finalize_reset()
        } else {
            [0; 16]
        };
        let len = end - self.chunk_start;
        debug_assert!(
            (1..=u64::from(u16::MAX)).contains(&len),
            "chunk length {len}"
        );
        sink(
            Chunk {
                offset: self.chunk_start,
                len: len as u16,
                md4,
            },
            how,
        );
        self.chunk_start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_prefix_and_suffix_count_bytes_of_one_value() {
        for len in [0, 1, 255, 256, 257, 1000] {
            for at in [0, 1, 255, 256, 257, 999] {
                let mut data = vec![7u8; len];
                if at < len {
                    data[at] = 8;
                    assert_eq!(same_prefix(&data, 7), at, "{len} {at}");
                    assert_eq!(same_suffix(&data, 7), len - at - 1, "{len} {at}");
                } else {
                    assert_eq!(same_prefix(&data, 7), len);
                    assert_eq!(same_suffix(&data, 7), len);
                }
            }
        }
    }

    /// MD4 computed alongside H3 equals the `md4` crate's, with either
    /// kernel, and the two kernels cut alike.
    #[test]
    fn fused_and_plain_md4_agree() {
        // Inputs long enough for lanes and MD4 blocks in the same round.
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for params in [
            Params::LEVEL1,
            Params::LEVEL_N,
            Params::new(16, 512).expect("valid"),
        ] {
            let mut kernels = Vec::new();
            for mut c in [Chunker::new(params), Chunker::portable(params)] {
                let mut got = Vec::new();
                c.push(&data, &mut |x| got.push(x));
                c.finish(&mut |x| got.push(x));
                for chunk in &got {
                    let bytes = &data[chunk.offset as usize..chunk.end() as usize];
                    let want: [u8; 16] = <::md4::Md4 as ::md4::Digest>::digest(bytes).into();
                    assert_eq!(chunk.md4, want, "{params:?} chunk at {}", chunk.offset);
                }
                kernels.push(got);
            }
            // The AVX-512 kernel (where the CPU has it) and the portable one.
            assert_eq!(kernels[0], kernels[1], "{params:?}");
        }
    }
}
