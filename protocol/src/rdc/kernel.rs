//! The inner loops: H3 over a block of new positions, writing every value and
//! the maximum of every group of [`GROUP`] values, optionally interleaved with
//! MD4 compressions of bytes whose chunk is already decided.
//!
//! # Lanes
//!
//! H3 is a chain, `h = rotl(h ^ T[out] ^ T[in], s)`, so one chain is latency
//! bound. H3 at a position depends only on the `w` bytes ending there
//! (`spec/ms-rdc.md` §1.3), so a lane can start anywhere from 0 after a warm-up
//! over the `w` bytes before it that removes virtual zeros. A block is split into
//! four lanes; without MD4 all four advance together, four independent chains.
//!
//! # Interleaved MD4
//!
//! MD4 is one dependency chain of 48 steps per 64-byte block (~230 cycles on
//! the machine we measure on, for ~340 instructions), which leaves most
//! execution ports idle; one H3 lane over 64 positions is a shorter chain of
//! mostly loads and stores. [`Lanes::step_md4`] puts both in one loop body so the
//! out-of-order core runs them side by side: with it, MD4 plus H3 costs about
//! 20% more than MD4 alone instead of 75% more. One lane rather than several,
//! because MD4's state leaves registers for only one.
//!
//! Left alone, the compiler moves the 64 H3 steps together, away from the MD4
//! steps, which undoes the interleaving. An opaque branch between groups of
//! steps ([`barrier`]) splits the body into basic blocks it does not schedule
//! across; it costs a store, a load and a predicted branch per 4 positions.
//!
//! # Group maxima
//!
//! The cut finder mostly asks "where is the next value at least `t`?". The
//! kernel keeps the maximum of every aligned group of 16 values (a compare and
//! a move per position, cheaper here than in a second pass over the values),
//! so the finder reads one value in 16 and looks inside a group only when its
//! maximum says so.

use super::h3::H3_TABLE;
use super::md4::{barrier, md4_steps, words};

/// Values per group maximum.
pub(crate) const GROUP: usize = 16;

/// Positions per lane and step (plain or with MD4); a multiple of [`GROUP`].
const STEP: usize = 64;
/// Groups per step.
const STEP_GROUPS: usize = STEP / GROUP;

/// One H3 step with a constant rotation.
#[inline(always)]
fn step<const S: u32>(h: u32, out: u8, inp: u8) -> u32 {
    (h ^ (H3_TABLE[usize::from(out)] ^ H3_TABLE[usize::from(inp)])).rotate_left(S)
}

/// Where one round's H3 values go: `values[0]` starts a group and
/// `groups.len() == values.len().div_ceil(GROUP)`.
pub(crate) struct Out<'a> {
    pub values: &'a mut [u32],
    pub groups: &'a mut [u32],
}

/// H3 over a block of `n` new positions. `bytes` holds the `w` bytes before
/// them followed by their `n` bytes.
pub(crate) struct Lanes {
    w: usize,
    n: usize,
    /// Positions per lane, a multiple of [`STEP`]; 0 when the block is too
    /// short for lanes and is hashed serially.
    q: usize,
    /// Progress within each lane, a multiple of [`STEP`].
    k: [usize; 4],
    h: [u32; 4],
}

impl Lanes {
    /// Prepares the lanes; `hash` is H3 after the byte before the block.
    pub fn new<const S: u32>(bytes: &[u8], w: usize, n: usize, hash: u32) -> Self {
        debug_assert_eq!(bytes.len(), w + n);
        let q = if n >= 4 * 4 * STEP {
            n / 4 / STEP * STEP
        } else {
            0
        };
        let mut h = [hash, 0, 0, 0];
        if q > 0 {
            for (lane, hl) in h.iter_mut().enumerate().skip(1) {
                // Warm up on the w bytes before the lane, removing virtual zeros.
                let start = lane * q;
                for &b in &bytes[start..start + w] {
                    *hl = step::<S>(*hl, 0, b);
                }
            }
        }
        Lanes {
            w,
            n,
            q,
            k: [0; 4],
            h,
        }
    }

    /// The lane to advance with the next MD4 block: the least advanced one
    /// with a step left.
    #[inline]
    fn next_lane(&self) -> Option<usize> {
        (0..4)
            .filter(|&j| self.k[j] < self.q)
            .min_by_key(|&j| self.k[j])
    }

    /// True while a step with MD4 is possible.
    #[inline]
    pub fn has_step(&self) -> bool {
        self.next_lane().is_some()
    }

    /// Advances one lane by [`STEP`] positions while compressing one MD4 block;
    /// without a step left, only compresses. Not inlined, so that the caller's
    /// state does not compete with MD4's for registers.
    #[inline(never)]
    pub fn step_md4<const S: u32>(
        &mut self,
        bytes: &[u8],
        out: &mut Out<'_>,
        md4: &mut [u32; 4],
        block: &[u8; 64],
    ) {
        let Some(j) = self.next_lane() else {
            super::md4::compress(md4, block);
            return;
        };
        let a = j * self.q + self.k[j];
        let (leave, enter) = lane_bytes(bytes, a, self.w);
        let o: &mut [u32; STEP] = (&mut out.values[a..a + STEP])
            .try_into()
            .expect("STEP values");
        let g: &mut [u32; STEP_GROUPS] = (&mut out.groups[a / GROUP..a / GROUP + STEP_GROUPS])
            .try_into()
            .expect("STEP groups");
        let mut h = self.h[j];
        let mut m = 0u32;
        // The table terms of the next four positions, computed one group
        // ahead so the compiler cannot fold them into the chain: the chain
        // is then an xor and a rotate per position, not two xors and a rotate.
        let terms = |p: usize| -> [u32; 4] {
            [0, 1, 2, 3].map(|d| {
                let q = (p + d) % STEP;
                H3_TABLE[usize::from(leave[q])] ^ H3_TABLE[usize::from(enter[q])]
            })
        };
        let mut next = terms(0);
        let x = words(block);
        let [mut ma, mut mb, mut mc, mut md] = *md4;
        md4_steps!(ma, mb, mc, md, x, |i| {
            // Four positions per three MD4 steps: 64 per block.
            barrier();
            let now = std::mem::replace(&mut next, terms(4 * i + 4));
            for (d, t) in now.iter().enumerate() {
                h = (h ^ t).rotate_left(S);
                o[4 * i + d] = h;
                m = m.max(h);
            }
            if i % 4 == 3 {
                g[i / 4] = std::mem::take(&mut m);
            }
        });
        md4[0] = md4[0].wrapping_add(ma);
        md4[1] = md4[1].wrapping_add(mb);
        md4[2] = md4[2].wrapping_add(mc);
        md4[3] = md4[3].wrapping_add(md);
        self.h[j] = h;
        self.k[j] += STEP;
    }

    /// Hashes every position not hashed yet and returns H3 after the last byte.
    pub fn finish<const S: u32>(mut self, bytes: &[u8], out: &mut Out<'_>) -> u32 {
        let (w, n, q) = (self.w, self.n, self.q);
        if q > 0 {
            while self.k.iter().all(|&k| k < q) {
                self.step4::<S>(bytes, out);
            }
            for j in 0..4 {
                let (from, to) = (j * q + self.k[j], (j + 1) * q);
                self.h[j] = serial::<S>(
                    &bytes[from..to + w],
                    w,
                    self.h[j],
                    &mut out.values[from..to],
                );
                group_maxima(out, from, to);
            }
        }
        let from = 4 * q;
        let h = if q > 0 { self.h[3] } else { self.h[0] };
        let last = serial::<S>(&bytes[from..n + w], w, h, &mut out.values[from..n]);
        group_maxima(out, from, n);
        last
    }

    /// Advances all four lanes by [`STEP`] positions.
    #[inline]
    fn step4<const S: u32>(&mut self, bytes: &[u8], out: &mut Out<'_>) {
        let (w, q) = (self.w, self.q);
        let at = [0, 1, 2, 3].map(|j| j * q + self.k[j]);
        let (l0, e0) = lane_bytes(bytes, at[0], w);
        let (l1, e1) = lane_bytes(bytes, at[1], w);
        let (l2, e2) = lane_bytes(bytes, at[2], w);
        let (l3, e3) = lane_bytes(bytes, at[3], w);
        let [o0, o1, o2, o3] = lane_slots::<STEP>(out.values, q, at);
        let [g0, g1, g2, g3] =
            lane_slots::<STEP_GROUPS>(out.groups, q / GROUP, at.map(|a| a / GROUP));
        let [mut h0, mut h1, mut h2, mut h3] = self.h;
        for gi in 0..STEP_GROUPS {
            let (mut m0, mut m1, mut m2, mut m3) = (0u32, 0u32, 0u32, 0u32);
            for i in gi * GROUP..(gi + 1) * GROUP {
                h0 = step::<S>(h0, l0[i], e0[i]);
                h1 = step::<S>(h1, l1[i], e1[i]);
                h2 = step::<S>(h2, l2[i], e2[i]);
                h3 = step::<S>(h3, l3[i], e3[i]);
                o0[i] = h0;
                o1[i] = h1;
                o2[i] = h2;
                o3[i] = h3;
                m0 = m0.max(h0);
                m1 = m1.max(h1);
                m2 = m2.max(h2);
                m3 = m3.max(h3);
            }
            g0[gi] = m0;
            g1[gi] = m1;
            g2[gi] = m2;
            g3[gi] = m3;
        }
        self.h = [h0, h1, h2, h3];
        for k in &mut self.k {
            *k += STEP;
        }
    }
}

/// The leaving and entering bytes of [`STEP`] positions starting at `a`.
#[inline(always)]
fn lane_bytes(bytes: &[u8], a: usize, w: usize) -> (&[u8; STEP], &[u8; STEP]) {
    let leave = bytes[a..a + STEP].try_into().expect("STEP bytes");
    let enter = bytes[a + w..a + w + STEP].try_into().expect("STEP bytes");
    (leave, enter)
}

/// `N` slots of each of four lanes of `q` slots, lane `j` at `at[j]` (which
/// is in `[j*q, (j+1)*q)`).
#[inline(always)]
fn lane_slots<const N: usize>(slots: &mut [u32], q: usize, at: [usize; 4]) -> [&mut [u32; N]; 4] {
    fn pick<const N: usize>(lane: &mut [u32], off: usize) -> &mut [u32; N] {
        (&mut lane[off..off + N]).try_into().expect("lane slots")
    }
    let (s0, rest) = slots.split_at_mut(q);
    let (s1, rest) = rest.split_at_mut(q);
    let (s2, s3) = rest.split_at_mut(q);
    [
        pick(s0, at[0]),
        pick(s1, at[1] - q),
        pick(s2, at[2] - 2 * q),
        pick(s3, at[3] - 3 * q),
    ]
}

/// H3 over `bytes[w..]` in one chain from `h`, writing `out`; returns the last value.
#[inline]
fn serial<const S: u32>(bytes: &[u8], w: usize, mut h: u32, out: &mut [u32]) -> u32 {
    for ((&leave, &enter), slot) in bytes.iter().zip(&bytes[w..]).zip(out.iter_mut()) {
        h = step::<S>(h, leave, enter);
        *slot = h;
    }
    h
}

/// Computes the maxima of the groups of values `[from, to)`; `from` starts a
/// group (the serial paths always do), the last group may be partial.
fn group_maxima(out: &mut Out<'_>, from: usize, to: usize) {
    debug_assert_eq!(from % GROUP, 0);
    if from >= to {
        return;
    }
    for (g, values) in out.groups[from / GROUP..]
        .iter_mut()
        .zip(out.values[from..to].chunks(GROUP))
    {
        *g = values.iter().copied().fold(0, u32::max);
    }
}
