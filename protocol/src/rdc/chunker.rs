//! Streaming chunking and signing: H3 + FilterMax + MD4 in one pass.
//!
//! A [`Chunker`] accepts input slices of any size and emits each [`Chunk`] as
//! soon as its end is decided, which is `h + 1` bytes after the cut. It keeps
//! only the bytes whose chunk is not decided yet plus the hash window, so its
//! memory is bounded by the horizon and the block size, never by the input.
//! The boundaries do not depend on how the input is sliced.

use md4::{Digest, Md4};

use super::filtermax::{Cut, CutFinder, CutKind};
use super::h3::{H3_TABLE, step};
use super::params::Params;

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
    /// Input bytes received: the next byte's offset.
    len: u64,
    /// A chunk is being built (false only before a resynchronising chunker's first cut).
    open: bool,
    /// Start of the chunk being built, and how far its MD4 has been fed.
    chunk_start: u64,
    md4_pos: u64,
    md4: Md4,
    /// Compute MD4 of each chunk (false: boundaries only, MD4 left zero).
    sign: bool,
    cuts: Vec<Cut>,
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
        c.sign = false;
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
            open,
            chunk_start: base,
            md4_pos: base,
            md4: Md4::new(),
            sign: true,
            cuts: Vec::new(),
        }
    }

    /// Bytes received so far (offset of the next byte).
    pub fn position(&self) -> u64 {
        self.len
    }

    /// Adds input; calls `sink` for every chunk that became final.
    pub fn push(&mut self, data: &[u8], sink: &mut impl FnMut(Chunk)) {
        self.push_inner(data, &mut |c, _| sink(c));
    }

    /// Ends the input; calls `sink` for the remaining chunks.
    pub fn finish(mut self, sink: &mut impl FnMut(Chunk)) {
        self.finish_inner(&mut |c, _| sink(c));
    }

    pub(crate) fn push_inner(&mut self, data: &[u8], sink: &mut impl FnMut(Chunk, ChunkEnd)) {
        for block in data.chunks(BLOCK) {
            self.buf.extend_from_slice(block);
            self.hash_new(block.len());
            self.cuts.clear();
            self.finder.scan(&mut self.cuts);
            self.emit_cuts(sink);
            let decided = self.finder.decided();
            if self.open {
                self.feed_md4(decided);
            } else {
                // Nothing before the first cut belongs to a chunk we emit.
                self.md4_pos = self.md4_pos.max(decided);
            }
            self.trim();
        }
    }

    pub(crate) fn finish_inner(&mut self, sink: &mut impl FnMut(Chunk, ChunkEnd)) {
        self.cuts.clear();
        self.finder.finish(&mut self.cuts);
        self.emit_cuts(sink);
        if self.open && self.len > self.chunk_start {
            self.close_chunk(self.len, ChunkEnd::EndOfData, sink);
        }
    }

    /// Computes H3 for the `n` bytes just appended to `buf`.
    fn hash_new(&mut self, n: usize) {
        let w = self.window;
        let first = (self.len + w as u64 - self.buf_start) as usize;
        let bytes = &self.buf[first - w..first + n];
        let out = self.finder.slots(n);
        self.hash = hash_block(bytes, w, self.shift, self.hash, out);
        self.len += n as u64;
    }

    fn emit_cuts(&mut self, sink: &mut impl FnMut(Chunk, ChunkEnd)) {
        let cuts = std::mem::take(&mut self.cuts);
        for cut in &cuts {
            if self.open {
                self.close_chunk(cut.pos, ChunkEnd::Cut(cut.kind), sink);
            } else {
                self.open = true;
                self.chunk_start = cut.pos;
                self.md4_pos = cut.pos;
            }
        }
        self.cuts = cuts;
    }

    fn feed_md4(&mut self, upto: u64) {
        if !self.sign {
            self.md4_pos = self.md4_pos.max(upto);
        } else if upto > self.md4_pos {
            let (from, buf_start, w) = (self.md4_pos, self.buf_start, self.window as u64);
            let a = (from + w - buf_start) as usize;
            let b = (upto + w - buf_start) as usize;
            self.md4.update(&self.buf[a..b]);
            self.md4_pos = upto;
        }
    }

    fn close_chunk(&mut self, end: u64, how: ChunkEnd, sink: &mut impl FnMut(Chunk, ChunkEnd)) {
        self.feed_md4(end);
        let mut md4 = [0u8; 16];
        if self.sign {
            md4.copy_from_slice(&self.md4.finalize_reset());
        }
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

    /// Drops buffered bytes that neither the hash window nor an open chunk needs.
    fn trim(&mut self) {
        let w = self.window as u64;
        let keep_from = self.len.min(self.md4_pos + w);
        if keep_from > self.buf_start {
            let drop = (keep_from - self.buf_start) as usize;
            self.buf.drain(..drop);
            self.buf_start = keep_from;
        }
    }
}

/// H3 over `bytes[w..]`, where `bytes[..w]` are the `w` bytes before them (the
/// ones leaving the window); `hash` is the H3 after `bytes[w-1]`. Writes one
/// value per new byte to `out` and returns the last.
///
/// Long inputs are split into four lanes hashed in one loop: H3 of a position
/// depends only on the `w` bytes ending there, so a lane starts from 0 and
/// warms up over the `w` bytes before it, removing virtual zeros (§1.3). The
/// four independent dependency chains keep the CPU busy.
pub(crate) fn hash_block(bytes: &[u8], w: usize, shift: u32, hash: u32, out: &mut [u32]) -> u32 {
    match shift {
        0 => hash_block_s::<0>(bytes, w, hash, out),
        1 => hash_block_s::<1>(bytes, w, hash, out),
        2 => hash_block_s::<2>(bytes, w, hash, out),
        4 => hash_block_s::<4>(bytes, w, hash, out),
        8 => hash_block_s::<8>(bytes, w, hash, out),
        16 => hash_block_s::<16>(bytes, w, hash, out),
        s => hash_serial(bytes, w, s, hash, out),
    }
}

fn hash_serial(bytes: &[u8], w: usize, shift: u32, mut hash: u32, out: &mut [u32]) -> u32 {
    let n = out.len();
    for ((&leaving, &entering), slot) in bytes[..n].iter().zip(&bytes[w..w + n]).zip(out.iter_mut())
    {
        hash = step(hash, leaving, entering, shift);
        *slot = hash;
    }
    hash
}

#[inline(always)]
fn lane_start<const S: u32>(before: &[u8]) -> u32 {
    let mut hash = 0;
    for &b in before {
        hash = (hash ^ (H3_TABLE[0] ^ H3_TABLE[usize::from(b)])).rotate_left(S);
    }
    hash
}

fn hash_block_s<const S: u32>(bytes: &[u8], w: usize, hash: u32, out: &mut [u32]) -> u32 {
    let n = out.len();
    debug_assert_eq!(bytes.len(), n + w);
    if n < 4 * (w + 64) {
        return hash_serial(bytes, w, S, hash, out);
    }
    let q = n / 4;
    let (o0, rest) = out.split_at_mut(q);
    let (o1, rest) = rest.split_at_mut(q);
    let (o2, rest) = rest.split_at_mut(q);
    let (o3, tail) = rest.split_at_mut(q);
    let mut h0 = hash;
    let mut h1 = lane_start::<S>(&bytes[q..q + w]);
    let mut h2 = lane_start::<S>(&bytes[2 * q..2 * q + w]);
    let mut h3 = lane_start::<S>(&bytes[3 * q..3 * q + w]);
    let (l0, e0) = (&bytes[..q], &bytes[w..w + q]);
    let (l1, e1) = (&bytes[q..2 * q], &bytes[q + w..2 * q + w]);
    let (l2, e2) = (&bytes[2 * q..3 * q], &bytes[2 * q + w..3 * q + w]);
    let (l3, e3) = (&bytes[3 * q..4 * q], &bytes[3 * q + w..4 * q + w]);
    let t = &H3_TABLE;
    for k in 0..q {
        h0 = (h0 ^ (t[usize::from(l0[k])] ^ t[usize::from(e0[k])])).rotate_left(S);
        h1 = (h1 ^ (t[usize::from(l1[k])] ^ t[usize::from(e1[k])])).rotate_left(S);
        h2 = (h2 ^ (t[usize::from(l2[k])] ^ t[usize::from(e2[k])])).rotate_left(S);
        h3 = (h3 ^ (t[usize::from(l3[k])] ^ t[usize::from(e3[k])])).rotate_left(S);
        o0[k] = h0;
        o1[k] = h1;
        o2[k] = h2;
        o3[k] = h3;
    }
    hash_serial(&bytes[4 * q..], w, S, h3, tail)
}
