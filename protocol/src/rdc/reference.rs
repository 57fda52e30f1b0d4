//! A slow, literal implementation of FilterMax, used as the test oracle for the
//! streaming chunker and to reproduce published numbers made with the Figure 7
//! hash (`spec/ms-rdc.md` §1.3, §9). Quadratic in the horizon: never use it on
//! real data.

use md4::{Digest, Md4};

use super::chunker::Chunk;
use super::h3::{HashMode, h3_values};
use super::params::{EndRule, MAX_CHUNK_LEN, Params, StartRule};

/// Chunk start offsets (0 first) by the literal rule of `spec/ms-rdc.md` §2.1.
pub fn boundaries(data: &[u8], params: &Params, mode: HashMode) -> Vec<u64> {
    let n = data.len();
    if n == 0 {
        return Vec::new();
    }
    let h = params.horizon() as usize;
    let hash = h3_values(data, params.window(), mode);
    let edges = params.edges();
    let is_max = |p: usize| {
        let lo = p.saturating_sub(h);
        let hi = (p + h).min(n - 1);
        (lo..=hi).all(|k| k == p || hash[p] > hash[k])
    };
    let allowed = |p: usize| {
        let start_ok = match edges.start {
            StartRule::Clip => p >= 1,
            StartRule::Horizon => p >= h,
            StartRule::Prose => p > h,
        };
        let end_ok = match edges.end {
            EndRule::Clip => true,
            EndRule::Full => p + h < n,
        };
        start_ok && end_ok
    };
    let mut out = vec![0u64];
    let mut last = 0usize;
    for p in 1..n {
        if (allowed(p) && is_max(p)) || p - last == MAX_CHUNK_LEN as usize {
            out.push(p as u64);
            last = p;
        }
    }
    out
}

/// Chunks with MD4 for the given boundaries.
pub fn chunks_from_boundaries(data: &[u8], boundaries: &[u64]) -> Vec<Chunk> {
    let mut out = Vec::with_capacity(boundaries.len());
    for (i, &start) in boundaries.iter().enumerate() {
        let end = boundaries.get(i + 1).copied().unwrap_or(data.len() as u64);
        let bytes = &data[start as usize..end as usize];
        let mut md4 = [0u8; 16];
        md4.copy_from_slice(&Md4::digest(bytes));
        out.push(Chunk {
            offset: start,
            len: bytes.len() as u16,
            md4,
        });
    }
    out
}

/// Chunks by the literal rule.
pub fn chunks(data: &[u8], params: &Params, mode: HashMode) -> Vec<Chunk> {
    chunks_from_boundaries(data, &boundaries(data, params, mode))
}
