//! MD4 (RFC 1320) written out so that it can be interleaved with H3.
//!
//! The `md4` crate is the reference and computes MD4 everywhere else; this
//! copy exists only because MD4 is a single long dependency chain that leaves
//! most of the CPU idle. The chunker's kernel runs one MD4 block
//! and 64 H3 positions in the same instruction stream so the out-of-order core
//! executes them side by side (`kernel.rs` explains the numbers). Tests compare this implementation with the crate.

/// MD4 initial state (RFC 1320 §3.3).
pub(crate) const INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// Message words of one block, little-endian.
#[inline(always)]
pub(crate) fn words(block: &[u8; 64]) -> [u32; 16] {
    let mut x = [0u32; 16];
    for (w, b) in x.iter_mut().zip(block.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    x
}

/// Expands to the 48 MD4 steps over state `a b c d` and words `x`, with
/// `$between` pasted after every third step (16 times, with `$k` = 0..15).
macro_rules! md4_steps {
    ($a:ident, $b:ident, $c:ident, $d:ident, $x:ident, |$k:ident| $between:block) => {{
        macro_rules! f1 {
            ($p:ident, $q:ident, $r:ident, $s:ident, $i:expr, $sh:expr) => {
                $p = $p
                    .wrapping_add(($q & $r) | (!$q & $s))
                    .wrapping_add($x[$i])
                    .rotate_left($sh)
            };
        }
        macro_rules! f2 {
            ($p:ident, $q:ident, $r:ident, $s:ident, $i:expr, $sh:expr) => {
                $p = $p
                    .wrapping_add(($q & $r) | ($q & $s) | ($r & $s))
                    .wrapping_add($x[$i])
                    .wrapping_add(0x5A82_7999)
                    .rotate_left($sh)
            };
        }
        macro_rules! f3 {
            ($p:ident, $q:ident, $r:ident, $s:ident, $i:expr, $sh:expr) => {
                $p = $p
                    .wrapping_add($q ^ $r ^ $s)
                    .wrapping_add($x[$i])
                    .wrapping_add(0x6ED9_EBA1)
                    .rotate_left($sh)
            };
        }
        macro_rules! between {
            ($kk:expr) => {{
                let $k: usize = $kk;
                $between
            }};
        }
        f1!($a, $b, $c, $d, 0, 3);
        f1!($d, $a, $b, $c, 1, 7);
        f1!($c, $d, $a, $b, 2, 11);
        between!(0);
        f1!($b, $c, $d, $a, 3, 19);
        f1!($a, $b, $c, $d, 4, 3);
        f1!($d, $a, $b, $c, 5, 7);
        between!(1);
        f1!($c, $d, $a, $b, 6, 11);
        f1!($b, $c, $d, $a, 7, 19);
        f1!($a, $b, $c, $d, 8, 3);
        between!(2);
        f1!($d, $a, $b, $c, 9, 7);
        f1!($c, $d, $a, $b, 10, 11);
        f1!($b, $c, $d, $a, 11, 19);
        between!(3);
        f1!($a, $b, $c, $d, 12, 3);
        f1!($d, $a, $b, $c, 13, 7);
        f1!($c, $d, $a, $b, 14, 11);
        between!(4);
        f1!($b, $c, $d, $a, 15, 19);
        f2!($a, $b, $c, $d, 0, 3);
        f2!($d, $a, $b, $c, 4, 5);
        between!(5);
        f2!($c, $d, $a, $b, 8, 9);
        f2!($b, $c, $d, $a, 12, 13);
        f2!($a, $b, $c, $d, 1, 3);
        between!(6);
        f2!($d, $a, $b, $c, 5, 5);
        f2!($c, $d, $a, $b, 9, 9);
        f2!($b, $c, $d, $a, 13, 13);
        between!(7);
        f2!($a, $b, $c, $d, 2, 3);
        f2!($d, $a, $b, $c, 6, 5);
        f2!($c, $d, $a, $b, 10, 9);
        between!(8);
        f2!($b, $c, $d, $a, 14, 13);
        f2!($a, $b, $c, $d, 3, 3);
        f2!($d, $a, $b, $c, 7, 5);
        between!(9);
        f2!($c, $d, $a, $b, 11, 9);
        f2!($b, $c, $d, $a, 15, 13);
        f3!($a, $b, $c, $d, 0, 3);
        between!(10);
        f3!($d, $a, $b, $c, 8, 9);
        f3!($c, $d, $a, $b, 4, 11);
        f3!($b, $c, $d, $a, 12, 15);
        between!(11);
        f3!($a, $b, $c, $d, 2, 3);
        f3!($d, $a, $b, $c, 10, 9);
        f3!($c, $d, $a, $b, 6, 11);
        between!(12);
        f3!($b, $c, $d, $a, 14, 15);
        f3!($a, $b, $c, $d, 1, 3);
        f3!($d, $a, $b, $c, 9, 9);
        between!(13);
        f3!($c, $d, $a, $b, 5, 11);
        f3!($b, $c, $d, $a, 13, 15);
        f3!($a, $b, $c, $d, 3, 3);
        between!(14);
        f3!($d, $a, $b, $c, 11, 9);
        f3!($c, $d, $a, $b, 7, 11);
        f3!($b, $c, $d, $a, 15, 15);
        between!(15);
    }};
}
pub(crate) use md4_steps;

/// One MD4 compression.
#[inline(always)]
pub(crate) fn compress(state: &mut [u32; 4], block: &[u8; 64]) {
    let x = words(block);
    let [mut a, mut b, mut c, mut d] = *state;
    md4_steps!(a, b, c, d, x, |_k| {});
    state[0] = state[0].wrapping_add(a);
    state[1] = state[1].wrapping_add(b);
    state[2] = state[2].wrapping_add(c);
    state[3] = state[3].wrapping_add(d);
}

/// Streaming MD4 whose full blocks may be compressed by someone else (the
/// fused kernel): it holds the chaining state, the partial block and the length.
#[derive(Clone)]
pub(crate) struct Md4 {
    pub state: [u32; 4],
    partial: [u8; 64],
    partial_len: usize,
    total: u64,
}

impl Md4 {
    pub fn new() -> Self {
        Md4 {
            state: INIT,
            partial: [0; 64],
            partial_len: 0,
            total: 0,
        }
    }

    /// Feeds bytes until the partial block is empty or `data` runs out;
    /// returns the rest of `data`, which then starts on a block boundary if
    /// anything is left.
    pub fn fill<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        if self.partial_len == 0 {
            return data;
        }
        let n = (64 - self.partial_len).min(data.len());
        self.partial[self.partial_len..self.partial_len + n].copy_from_slice(&data[..n]);
        self.partial_len += n;
        self.total += n as u64;
        if self.partial_len == 64 {
            let block = self.partial;
            compress(&mut self.state, &block);
            self.partial_len = 0;
        }
        &data[n..]
    }

    /// Keeps bytes that do not fill a block (after [`Md4::fill`] and full blocks).
    pub fn stash(&mut self, rest: &[u8]) {
        debug_assert!(self.partial_len + rest.len() < 64);
        self.partial[self.partial_len..self.partial_len + rest.len()].copy_from_slice(rest);
        self.partial_len += rest.len();
        self.total += rest.len() as u64;
    }

    /// Records that `blocks` full blocks were compressed into `state` externally.
    pub fn account_blocks(&mut self, blocks: usize) {
        debug_assert!(blocks == 0 || self.partial_len == 0);
        self.total += 64 * blocks as u64;
    }

    /// Feeds any bytes.
    pub fn update(&mut self, data: &[u8]) {
        let mut rest = self.fill(data);
        let mut blocks = rest.chunks_exact(64);
        for block in &mut blocks {
            let block: &[u8; 64] = block.try_into().unwrap_or(&[0; 64]);
            compress(&mut self.state, block);
            self.total += 64;
        }
        rest = blocks.remainder();
        self.stash(rest);
    }

    /// Pads, returns the digest and resets for the next message.
    pub fn finalize_reset(&mut self) -> [u8; 16] {
        let bits = self.total.wrapping_mul(8);
        let mut pad = [0u8; 72];
        pad[0] = 0x80;
        let pad_len = if self.partial_len < 56 {
            56 - self.partial_len
        } else {
            120 - self.partial_len
        };
        self.update(&pad[..pad_len]);
        self.update(&bits.to_le_bytes());
        debug_assert_eq!(self.partial_len, 0);
        let mut out = [0u8; 16];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        *self = Md4::new();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md4::Digest;

    #[test]
    fn matches_the_md4_crate() {
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        for len in [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 5000] {
            for split in [1, 7, 64, 100, 5000] {
                let mut m = Md4::new();
                for piece in data[..len].chunks(split) {
                    m.update(piece);
                }
                let want = md4::Md4::digest(&data[..len]);
                assert_eq!(
                    m.finalize_reset().as_slice(),
                    want.as_slice(),
                    "len {len} split {split}"
                );
            }
        }
        // RFC 1320 A.5
        let mut m = Md4::new();
        m.update(b"abc");
        assert_eq!(
            crate::hex::encode(&m.finalize_reset()),
            "a448017aaf21d8525fc10ae87aa6729d"
        );
    }
}
