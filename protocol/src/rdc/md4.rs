//! Streaming MD4 (RFC 1320) whose full blocks the chunker's kernels compress.
//!
//! The `md4` crate is the reference and computes MD4 everywhere else; this
//! copy exists because MD4 is a single long dependency chain that leaves most
//! of the CPU idle, so the chunker compresses each block inside an H3 kernel
//! that runs alongside it (`kernel.rs`, and `peerdelta-kernels`, which holds
//! the 48 steps as a macro with hooks). Tests compare this implementation with
//! the crate.

/// MD4 initial state (RFC 1320 §3.3).
pub(crate) const INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

pub(crate) use peerdelta_kernels::md4::{barrier, words};
pub(crate) use peerdelta_kernels::md4_steps;

pub(crate) use peerdelta_kernels::md4::compress;

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
