//! A table-driven rotate-xor rolling hash over a window of bytes (MS-RDC's H3,
//! `spec/ms-rdc.md` §1), with AVX-512, optionally interleaved with MD4.
//!
//! `h(k) = rotl(h(k-1) ^ T[b(k-w)] ^ T[b(k)], s)` is one long dependency
//! chain. Rotating each value back by a multiple of `s` that grows with the
//! position turns it into a prefix XOR, which vectorises:
//!
//! ```text
//! g(k) = rotr(h(k), s·(k+1))          (so g(-1) = h(-1))
//! g(k) = g(k-1) ^ U(k+w) ^ U(k)       with U(t) = rotr(T[bytes[t]], s·t)
//! h(k) = rotl(g(k), s·(k+1))
//! ```
//!
//! where `bytes[t]` is byte `t - w` (the `w` bytes before the block come
//! first). The second line holds because `s·w ≡ 0 (mod 32)`: rotating the
//! leaving byte's entry by `s·k` is the same as by `s·(k-w)`.
//!
//! # Per 64 positions
//!
//! - `U` of 64 bytes: `vpermi2b` looks the bytes up in four byte planes of the
//!   table (each 256 bytes, four registers; no gathers), four rounds of
//!   unpacking assemble the dwords (a byte permutation up front makes them come
//!   out in position order), a variable rotate applies `s·t`.
//! - Per 16 positions: two loads and an xor give the increments, four shifted
//!   xors their prefix, one xor brings in the running value, a variable rotate
//!   gives `h`.
//! - The maxima of the four groups of 16 (the cut finder reads them) by a
//!   butterfly of shuffles and maxima.
//!
//! # MD4 alongside
//!
//! MD4 is one chain of 48 dependent steps per 64-byte block that keeps the
//! scalar units busy for ~170 cycles and leaves the vector units idle; the
//! work above is nearly all vector instructions. [`Pass::step_md4`] pastes the
//! two into one instruction stream (through [`crate::md4_steps`]'s hooks), so
//! the out-of-order core runs them side by side. `U` is computed one block
//! ahead, so that a block's loads never wait for stores of the same step.

use crate::md4::{compress, words};

/// Values per group maximum (one vector of 16 `u32`).
pub const GROUP: usize = 16;

/// Positions per step (one MD4 block's worth).
const STEP: usize = 64;

/// `U` values kept: a sub-block's worth plus the window and the look-ahead.
const SCRATCH: usize = 4096;

/// The rolling hash `h(k) = rotl(h(k-1) ^ T[b(k-w)] ^ T[b(k)], s)` on a CPU
/// that has AVX-512 (F, BW and VBMI).
#[derive(Clone)]
pub struct RollingHash {
    table: [u32; 256],
    /// Byte plane `p` of the table, in quarters: `planes[4p + q][i]` is byte
    /// `p` of entry `64q + i`.
    planes: [[u8; 64]; 16],
    /// Lane rotations `(s·(t + lane)) mod 32` for `t` = 0, 16 (for `U`) and
    /// 1, 17 (for `h`).
    rotations: [[u32; 16]; 4],
    window: usize,
    shift: u32,
    /// `U(t)` for `t` in `[base, filled)` of the current pass.
    scratch: Vec<u32>,
}

impl std::fmt::Debug for RollingHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RollingHash")
            .field("window", &self.window)
            .field("shift", &self.shift)
            .finish_non_exhaustive()
    }
}

impl RollingHash {
    /// The kernel for `table`, window `window` and rotation `shift`, or `None`
    /// when this CPU lacks the instructions it needs, or when `window` is 0,
    /// `shift` is not below 32 or `window · shift` is not a multiple of 32
    /// (the property that makes a byte's entry cancel `window` steps later).
    pub fn new(table: &[u32; 256], window: usize, shift: u32) -> Option<Self> {
        if window == 0 || shift >= 32 || !(window as u64 * u64::from(shift)).is_multiple_of(32) {
            return None;
        }
        if !avx512::supported() {
            return None;
        }
        let planes = std::array::from_fn(|i| {
            let (p, q) = (i / 4, i % 4);
            std::array::from_fn(|j| (table[64 * q + j] >> (8 * p)) as u8)
        });
        let rotations = [0, 16, 1, 17]
            .map(|t: u32| std::array::from_fn(|lane| shift.wrapping_mul(t + lane as u32) & 31));
        Some(RollingHash {
            table: *table,
            planes,
            rotations,
            window,
            shift,
            scratch: vec![0; SCRATCH + window + 3 * STEP],
        })
    }

    /// The value after every new position and the maximum of every group of
    /// [`GROUP`] values; see [`RollingHash::begin`]. Returns the value after
    /// the last byte.
    pub fn run(&mut self, bytes: &[u8], hash: u32, values: &mut [u32], groups: &mut [u32]) -> u32 {
        self.begin(bytes, hash, values, groups).finish()
    }

    /// Starts hashing a block of new positions. `bytes` holds the `window`
    /// bytes before them (zeros at the start of the data) followed by the new
    /// bytes; `hash` is the value after the byte before them (0 at the
    /// start). `values` gets one value per new byte and `groups[i]` the
    /// maximum of `values[16i..16i+16]` (the last group may be partial).
    ///
    /// # Panics
    ///
    /// When `bytes.len() != window + values.len()` or
    /// `groups.len() != values.len().div_ceil(GROUP)`.
    pub fn begin<'a>(
        &'a mut self,
        bytes: &'a [u8],
        hash: u32,
        values: &'a mut [u32],
        groups: &'a mut [u32],
    ) -> Pass<'a> {
        let (w, n) = (self.window, values.len());
        assert_eq!(bytes.len(), w + n, "bytes: the window, then one per value");
        assert_eq!(groups.len(), n.div_ceil(GROUP), "one maximum per group");
        let mut pass = Pass {
            kernel: self,
            bytes,
            values,
            groups,
            k: 0,
            steps_end: n / STEP * STEP,
            base: 0,
            filled: 0,
            carry: hash,
        };
        if pass.has_step() {
            // U of the window and the first step.
            while pass.filled < w + STEP {
                // SAFETY: `new` built the kernel only after `avx512::supported()`.
                unsafe { avx512::fill(&mut pass) };
            }
        }
        pass
    }
}

/// One block being hashed by [`RollingHash`], [`STEP`] positions at a time.
#[derive(Debug)]
pub struct Pass<'a> {
    kernel: &'a mut RollingHash,
    bytes: &'a [u8],
    values: &'a mut [u32],
    groups: &'a mut [u32],
    /// Next position to hash.
    k: usize,
    /// Positions before this are hashed in steps; the rest one by one.
    steps_end: usize,
    /// `kernel.scratch[i]` is `U(base + i)`.
    base: usize,
    /// `U` is known for `t < filled` (a multiple of [`STEP`]).
    filled: usize,
    /// `g(k-1)`.
    carry: u32,
}

impl Pass<'_> {
    /// True while [`Pass::step_md4`] hashes positions along with its block.
    pub fn has_step(&self) -> bool {
        self.k < self.steps_end
    }

    /// Compresses one MD4 block into `state` and, while positions are left
    /// for it, hashes the next 64 in the same instruction stream.
    pub fn step_md4(&mut self, state: &mut [u32; 4], block: &[u8; 64]) {
        if self.has_step() {
            // SAFETY: a `Pass` exists only for a kernel `new` built after
            // `avx512::supported()`.
            unsafe { avx512::step(self, Some((state, block))) };
        } else {
            compress(state, block);
        }
    }

    /// Hashes every position left and returns the value after the last one.
    pub fn finish(mut self) -> u32 {
        while self.has_step() {
            // SAFETY: as in `step_md4`.
            unsafe { avx512::step(&mut self, None) };
        }
        let (w, s, k) = (self.kernel.window, self.kernel.shift, self.k);
        let mut h = self.carry.rotate_left(s.wrapping_mul(k as u32) & 31);
        let table = &self.kernel.table;
        for (i, slot) in self.values.iter_mut().enumerate().skip(k) {
            let t = table[usize::from(self.bytes[i])] ^ table[usize::from(self.bytes[i + w])];
            h = (h ^ t).rotate_left(s);
            *slot = h;
        }
        for (g, m) in self.groups.iter_mut().enumerate().skip(k / GROUP) {
            let end = (GROUP * (g + 1)).min(self.values.len());
            *m = self.values[GROUP * g..end]
                .iter()
                .copied()
                .fold(0, u32::max);
        }
        h
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{GROUP, Pass, STEP, words};

    /// Whether this CPU runs the kernel.
    pub(super) fn supported() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vbmi")
    }

    /// The byte order that makes four rounds of unpacking yield dwords in
    /// position order: lane `16j + 4m + e` takes byte `16m + 4j + e`.
    const fn unpack_order() -> [u8; 64] {
        let mut p = [0u8; 64];
        let mut q = 0;
        while q < 64 {
            let (j, m, e) = (q / 16, (q / 4) % 4, q % 4);
            p[q] = (16 * m + 4 * j + e) as u8;
            q += 1;
        }
        p
    }
    const UNPACK_ORDER: [u8; 64] = unpack_order();

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load_u32(v: &[u32; 16]) -> __m512i {
        // SAFETY: 64 readable bytes; unaligned loads are allowed.
        unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load_u8(v: &[u8; 64]) -> __m512i {
        // SAFETY: 64 readable bytes; unaligned loads are allowed.
        unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store_u32(to: &mut [u32], v: __m512i) {
        let to: &mut [u32; 16] = to.try_into().unwrap_or_else(|_| unreachable!("16 slots"));
        // SAFETY: 64 writable bytes; unaligned stores are allowed.
        unsafe { _mm512_storeu_si512(to.as_mut_ptr().cast(), v) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn at(scratch: &[u32], i: usize) -> &[u32; 16] {
        scratch[i..i + 16]
            .try_into()
            .unwrap_or_else(|_| unreachable!("16 slots"))
    }

    /// The table in registers: four byte planes of four quarters.
    type Planes = [__m512i; 16];

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn planes(p: &[[u8; 64]; 16]) -> Planes {
        std::array::from_fn(|i| load_u8(&p[i]))
    }

    /// Drops `U` values below the current position when the scratch could
    /// not take one more block.
    fn room(p: &mut Pass<'_>) {
        if p.filled + STEP - p.base > p.kernel.scratch.len() {
            let (from, to) = (p.k - p.base, p.filled - p.base);
            p.kernel.scratch.copy_within(from..to, 0);
            p.base = p.k;
        }
    }

    /// `U(t)` for the 64 `t` from `t0` (a multiple of 64) into `out`, from
    /// `bytes[t0..]` (fewer than 64 at the end: the rest is not read).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn fill_block(planes: &Planes, rot: &[__m512i; 2], bytes: &[u8], out: &mut [u32]) {
        let valid = bytes.len().min(64);
        let mask: __mmask64 = if valid == 64 { !0 } else { (1u64 << valid) - 1 };
        // SAFETY: the mask covers only bytes[..valid]; masked-off lanes are
        // not read and cannot fault.
        let x = unsafe { _mm512_maskz_loadu_epi8(mask, bytes.as_ptr().cast()) };
        let x = _mm512_permutexvar_epi8(load_u8(&UNPACK_ORDER), x);
        let high = _mm512_movepi8_mask(x);
        let look = |p: usize| {
            let lo = _mm512_permutex2var_epi8(planes[4 * p], x, planes[4 * p + 1]);
            let hi = _mm512_permutex2var_epi8(planes[4 * p + 2], x, planes[4 * p + 3]);
            _mm512_mask_blend_epi8(high, lo, hi)
        };
        let (r0, r1, r2, r3) = (look(0), look(1), look(2), look(3));
        let lo01 = _mm512_unpacklo_epi8(r0, r1);
        let hi01 = _mm512_unpackhi_epi8(r0, r1);
        let lo23 = _mm512_unpacklo_epi8(r2, r3);
        let hi23 = _mm512_unpackhi_epi8(r2, r3);
        let d = [
            _mm512_unpacklo_epi16(lo01, lo23),
            _mm512_unpackhi_epi16(lo01, lo23),
            _mm512_unpacklo_epi16(hi01, hi23),
            _mm512_unpackhi_epi16(hi01, hi23),
        ];
        for (m, dm) in d.into_iter().enumerate() {
            store_u32(
                &mut out[16 * m..16 * m + 16],
                _mm512_rorv_epi32(dm, rot[m & 1]),
            );
        }
    }

    /// `h` of 16 positions from their `U(k+w)` and `U(k)`; `carry` is
    /// `g(k-1)` in every lane before and `g(k+15)` after.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn hash16(ahead: __m512i, behind: __m512i, carry: &mut __m512i, rot: __m512i) -> __m512i {
        let zero = _mm512_setzero_si512();
        let mut v = _mm512_xor_si512(ahead, behind);
        v = _mm512_xor_si512(v, _mm512_alignr_epi32::<15>(v, zero));
        v = _mm512_xor_si512(v, _mm512_alignr_epi32::<14>(v, zero));
        v = _mm512_xor_si512(v, _mm512_alignr_epi32::<12>(v, zero));
        v = _mm512_xor_si512(v, _mm512_alignr_epi32::<8>(v, zero));
        let g = _mm512_xor_si512(v, *carry);
        *carry = _mm512_xor_si512(*carry, _mm512_permutexvar_epi32(_mm512_set1_epi32(15), v));
        _mm512_rolv_epi32(g, rot)
    }

    /// The maximum of each of four vectors: halves, then quarters across
    /// vectors, then within 128-bit lanes; the four land in the low lane.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn maxima4(v: &[__m512i; 4]) -> __m128i {
        let halves = |a, b| {
            _mm512_max_epu32(
                _mm512_shuffle_i32x4::<0b01_00_01_00>(a, b),
                _mm512_shuffle_i32x4::<0b11_10_11_10>(a, b),
            )
        };
        let (x, y) = (halves(v[0], v[1]), halves(v[2], v[3]));
        // 128-bit lane j: four candidates of v[j].
        let m = _mm512_max_epu32(
            _mm512_shuffle_i32x4::<0b10_00_10_00>(x, y),
            _mm512_shuffle_i32x4::<0b11_01_11_01>(x, y),
        );
        let m = _mm512_max_epu32(m, _mm512_shuffle_epi32::<0b01_00_11_10>(m));
        let m = _mm512_max_epu32(m, _mm512_shuffle_epi32::<0b10_11_00_01>(m));
        let order = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_castsi512_si128(_mm512_permutexvar_epi32(order, m))
    }

    /// Makes the MD4 state a value the compiler must have in registers at this
    /// point of the instruction stream. With [`pin_vector`] this keeps the
    /// interleaving written in [`step`]: left alone, the compiler moves all
    /// the vector work ahead of the MD4 steps (as it is free to), and the
    /// out-of-order window then sees one kind of work at a time. An empty
    /// `asm!` emits no instruction.
    #[inline(always)]
    fn pin_md4(a: &mut u32, b: &mut u32, c: &mut u32, d: &mut u32) {
        // SAFETY: an empty template: no instruction, no memory, no stack.
        unsafe {
            std::arch::asm!(
                "/* {0:e} {1:e} {2:e} {3:e} */",
                inout(reg) * a,
                inout(reg) * b,
                inout(reg) * c,
                inout(reg) * d,
                options(nomem, nostack, preserves_flags)
            );
        }
    }

    /// See [`pin_md4`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn pin_vector(v: &mut __m512i) {
        // SAFETY: an empty template: no instruction, no memory, no stack.
        unsafe {
            std::arch::asm!(
                "/* {0} */",
                inout(zmm_reg) * v,
                options(nomem, nostack, preserves_flags)
            );
        }
    }

    /// `U` of the next block of bytes (used by [`super::RollingHash::begin`]).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512 F, BW and VBMI ([`supported`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn fill(p: &mut Pass<'_>) {
        room(p);
        let kernel = &mut *p.kernel;
        let planes = planes(&kernel.planes);
        let rot = [
            load_u32(&kernel.rotations[0]),
            load_u32(&kernel.rotations[1]),
        ];
        let at = p.filled - p.base;
        let end = (p.filled + STEP).min(p.bytes.len());
        fill_block(
            &planes,
            &rot,
            &p.bytes[p.filled..end],
            &mut kernel.scratch[at..at + STEP],
        );
        p.filled += STEP;
    }

    /// Hashes the 64 positions from `p.k`, computing `U` one block ahead, and
    /// compresses the MD4 block if one is given, in one instruction stream.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512 F, BW and VBMI ([`supported`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn step(p: &mut Pass<'_>, md4: Option<(&mut [u32; 4], &[u8; 64])>) {
        room(p);
        let super::RollingHash {
            planes: plane_bytes,
            rotations,
            window,
            scratch,
            ..
        } = &mut *p.kernel;
        let w = *window;
        let planes = planes(plane_bytes);
        let rot_u = [load_u32(&rotations[0]), load_u32(&rotations[1])];
        let rot_h = [load_u32(&rotations[2]), load_u32(&rotations[3])];
        let (k, base, filled) = (p.k, p.base, p.filled);
        let ahead = filled < p.bytes.len();
        let ahead_bytes = &p.bytes[filled.min(p.bytes.len())..(filled + STEP).min(p.bytes.len())];
        let mut carry = _mm512_set1_epi32(p.carry as i32);
        let mut hs = [_mm512_setzero_si512(); 4];
        let values = &mut p.values[k..k + STEP];
        let groups = &mut p.groups[k / GROUP..k / GROUP + STEP / GROUP];
        // The work of a step in six slots: U ahead, four vectors of h, maxima.
        let mut work = |slot: usize| match slot {
            0 if ahead => {
                let at = filled - base;
                fill_block(&planes, &rot_u, ahead_bytes, &mut scratch[at..at + STEP]);
            }
            1..=4 => {
                let v = slot - 1;
                let j = k + GROUP * v - base;
                let rot = rot_h[((k / GROUP) + v) & 1];
                let h = hash16(
                    load_u32(at(scratch, j + w)),
                    load_u32(at(scratch, j)),
                    &mut carry,
                    rot,
                );
                pin_vector(&mut carry);
                store_u32(&mut values[GROUP * v..GROUP * v + GROUP], h);
                hs[v] = h;
            }
            5 => {
                let m = maxima4(&hs);
                let g: &mut [u32; 4] = groups
                    .try_into()
                    .unwrap_or_else(|_| unreachable!("4 groups"));
                // SAFETY: 16 writable bytes; unaligned stores are allowed.
                unsafe { _mm_storeu_si128(g.as_mut_ptr().cast(), m) };
            }
            _ => {}
        };
        match md4 {
            None => (0..6).for_each(&mut work),
            Some((state, block)) => {
                let x = words(block);
                let [mut a, mut b, mut c, mut d] = *state;
                crate::md4_steps!(a, b, c, d, x, |i| {
                    pin_md4(&mut a, &mut b, &mut c, &mut d);
                    match i {
                        1 => work(0),
                        4 => work(1),
                        7 => work(2),
                        10 => work(3),
                        13 => work(4),
                        15 => work(5),
                        _ => {}
                    }
                });
                state[0] = state[0].wrapping_add(a);
                state[1] = state[1].wrapping_add(b);
                state[2] = state[2].wrapping_add(c);
                state[3] = state[3].wrapping_add(d);
            }
        }
        p.carry = _mm_cvtsi128_si32(_mm512_castsi512_si128(carry)) as u32;
        if ahead {
            p.filled += STEP;
        }
        p.k += STEP;
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    use super::Pass;

    pub(super) fn supported() -> bool {
        false
    }
    pub(super) unsafe fn fill(_: &mut Pass<'_>) {
        unreachable!("RollingHash::new returns None off x86_64")
    }
    pub(super) unsafe fn step(_: &mut Pass<'_>, _: Option<(&mut [u32; 4], &[u8; 64])>) {
        unreachable!("RollingHash::new returns None off x86_64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> [u32; 256] {
        let mut x = 0x1234_5678_9abc_def0u64;
        std::array::from_fn(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u32
        })
    }

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// The chain, one step at a time.
    fn reference(t: &[u32; 256], s: u32, w: usize, bytes: &[u8], hash: u32) -> Vec<u32> {
        let mut h = hash;
        (0..bytes.len() - w)
            .map(|k| {
                h = (h ^ t[usize::from(bytes[k])] ^ t[usize::from(bytes[k + w])]).rotate_left(s);
                h
            })
            .collect()
    }

    /// The AVX-512 kernel cannot be compared on a CPU without AVX-512: say
    /// so rather than pass, and fail under CI, whose machines have it.
    fn no_avx512() {
        if std::env::var_os("CI").is_some() {
            panic!("no AVX-512 on this CPU: the kernel under test cannot run (CI is set)");
        }
        eprintln!("SKIPPED, not passed: no AVX-512 on this CPU");
    }

    #[test]
    fn matches_the_chain() {
        let t = table();
        for (w, s) in [
            (48, 2),
            (2, 16),
            (32, 1),
            (96, 1),
            (3, 0),
            (16, 2),
            (64, 1),
            (8, 4),
        ] {
            let Some(mut k) = RollingHash::new(&t, w, s) else {
                return no_avx512();
            };
            for (n, seed) in [
                (0, 1),
                (1, 2),
                (15, 3),
                (16, 4),
                (17, 5),
                (64, 6),
                (100, 7),
                (2048, 8),
                (2049, 9),
                (5000, 10),
                (16384, 11),
            ] {
                let bytes = data(w + n, seed);
                let hash = (seed as u32).wrapping_mul(0x9e37_79b9);
                let want = reference(&t, s, w, &bytes, hash);
                let mut values = vec![0; n];
                let mut groups = vec![0; n.div_ceil(GROUP)];
                let last = k.run(&bytes, hash, &mut values, &mut groups);
                assert_eq!(values, want, "w {w} s {s} n {n}");
                assert_eq!(
                    last,
                    want.last().copied().unwrap_or(hash),
                    "w {w} s {s} n {n}"
                );
                let maxima: Vec<u32> = want
                    .chunks(GROUP)
                    .map(|g| g.iter().copied().fold(0, u32::max))
                    .collect();
                assert_eq!(groups, maxima, "w {w} s {s} n {n}");
            }
        }
    }

    #[test]
    fn md4_alongside_changes_neither() {
        let t = table();
        for (w, s) in [(48, 2), (2, 16), (32, 1)] {
            let Some(mut k) = RollingHash::new(&t, w, s) else {
                return no_avx512();
            };
            for (n, blocks) in [
                (64, 1),
                (640, 3),
                (640, 10),
                (640, 25),
                (5000, 100),
                (16384, 300),
            ] {
                let bytes = data(w + n, n as u64);
                let md4_data = data(64 * blocks, 99);
                let want = reference(&t, s, w, &bytes, 7);
                let mut plain = [1u32, 2, 3, 4];
                let mut fused = plain;
                let mut values = vec![0; n];
                let mut groups = vec![0; n.div_ceil(GROUP)];
                let mut pass = k.begin(&bytes, 7, &mut values, &mut groups);
                for block in md4_data.chunks_exact(64) {
                    let block: &[u8; 64] = block.try_into().unwrap();
                    crate::md4::compress(&mut plain, block);
                    pass.step_md4(&mut fused, block);
                }
                let last = pass.finish();
                assert_eq!(fused, plain, "w {w} n {n} blocks {blocks}");
                assert_eq!(values, want, "w {w} n {n} blocks {blocks}");
                assert_eq!(last, *want.last().unwrap());
                let maxima: Vec<u32> = want
                    .chunks(GROUP)
                    .map(|g| g.iter().copied().fold(0, u32::max))
                    .collect();
                assert_eq!(groups, maxima);
            }
        }
    }

    #[test]
    fn refuses_parameters_that_do_not_cancel() {
        let t = table();
        assert!(RollingHash::new(&t, 48, 1).is_none());
        assert!(RollingHash::new(&t, 48, 32).is_none());
        assert!(RollingHash::new(&t, 0, 2).is_none());
    }
}
