//! Similarity traits (MS-RDC 3.1.5.4.1, 4.6; `spec/ms-rdc.md` §7).
//!
//! Sixteen 6-bit values summarising a file's level-1 signatures, so that two
//! files sharing many chunks share many traits. peerdelta uses them to find the
//! most similar old file when a file was renamed or moved with changes.

use md4::{Digest, Md4};

use super::sigfile::Signature;

/// Number of traits.
pub const TRAIT_COUNT: usize = 16;

/// The 16 similarity traits of a file, each `0..=63`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Traits(pub [u8; TRAIT_COUNT]);

impl Traits {
    /// How many of the 16 traits are equal (0..=16).
    pub fn matches(&self, other: &Traits) -> usize {
        self.0.iter().zip(&other.0).filter(|(a, b)| a == b).count()
    }
}

/// Computes the traits of a file from its level-1 signatures: for each `k`,
/// the bytewise minimum over all chunks of `MD4(md4 ‖ k+1)`; trait `k` is byte 7
/// of that minimum, masked to 6 bits.
///
/// This costs 16 MD4 compressions per chunk, so it is computed on demand (to
/// match renamed files), not while signing.
pub fn similarity<'a>(sigs: impl IntoIterator<Item = &'a Signature>) -> Traits {
    let mut min = [[0xFFu8; 16]; TRAIT_COUNT];
    let mut input = [0u8; 17];
    for sig in sigs {
        input[..16].copy_from_slice(&sig.md4);
        for (k, slot) in min.iter_mut().enumerate() {
            input[16] = k as u8 + 1;
            let d = Md4::digest(input);
            if d.as_slice() < slot.as_slice() {
                slot.copy_from_slice(&d);
            }
        }
    }
    let mut out = [0u8; TRAIT_COUNT];
    for (t, m) in out.iter_mut().zip(&min) {
        *t = m[7] & 0x3F;
    }
    Traits(out)
}
