//! Scans over `u32` slices for the cut finder: the maximum, and the first value
//! at least a threshold. With AVX-512 they read 16 values per instruction (and
//! the last few under a mask); elsewhere they are the plain loops.
//!
//! The finder calls these a few times per block of ~1,000 positions on ranges
//! of 1 to ~130 values, so the fixed cost matters as much as the width: no
//! set-up, one masked load for short ranges.

/// The maximum of `values` (0 when empty).
pub fn max_u32(values: &[u32]) -> u32 {
    if avx512::supported() {
        // SAFETY: the CPU has AVX-512 F (checked above).
        unsafe { avx512::max(values) }
    } else {
        values.iter().copied().fold(0, u32::max)
    }
}

/// The index of the first value `≥ t` in `values`.
pub fn position_ge_u32(values: &[u32], t: u32) -> Option<usize> {
    if avx512::supported() {
        // SAFETY: the CPU has AVX-512 F (checked above).
        unsafe { avx512::position_ge(values, t) }
    } else {
        values.iter().position(|&x| x >= t)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Whether this CPU runs the kernels (the standard library caches the answer).
    #[inline]
    pub(super) fn supported() -> bool {
        is_x86_feature_detected!("avx512f")
    }

    /// Loads `values[i..]`, at most 16, zeros past the end.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load(values: &[u32], i: usize) -> (__m512i, __mmask16) {
        let rest = values.len().saturating_sub(i).min(16);
        let mask: __mmask16 = if rest == 16 { !0 } else { (1u16 << rest) - 1 };
        // SAFETY: the mask covers only values[i..i + rest], all in bounds;
        // masked-off lanes are not read and cannot fault.
        let v = unsafe { _mm512_maskz_loadu_epi32(mask, values.as_ptr().wrapping_add(i).cast()) };
        (v, mask)
    }

    /// # Safety
    ///
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max(values: &[u32]) -> u32 {
        let mut m = _mm512_setzero_si512();
        let mut i = 0;
        while i < values.len() {
            m = _mm512_max_epu32(m, load(values, i).0);
            i += 16;
        }
        _mm512_reduce_max_epu32(m)
    }

    /// # Safety
    ///
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn position_ge(values: &[u32], t: u32) -> Option<usize> {
        let t = _mm512_set1_epi32(t as i32);
        let mut i = 0;
        while i < values.len() {
            let (v, valid) = load(values, i);
            let hits = _mm512_mask_cmpge_epu32_mask(valid, v, t);
            if hits != 0 {
                return Some(i + hits.trailing_zeros() as usize);
            }
            i += 16;
        }
        None
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    pub(super) fn supported() -> bool {
        false
    }
    pub(super) unsafe fn max(_: &[u32]) -> u32 {
        unreachable!("not supported off x86_64")
    }
    pub(super) unsafe fn position_ge(_: &[u32], _: u32) -> Option<usize> {
        unreachable!("not supported off x86_64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agree_with_the_plain_loops() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in 0..70 {
            let v: Vec<u32> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 16) as u32
                })
                .collect();
            assert_eq!(
                max_u32(&v),
                v.iter().copied().fold(0, u32::max),
                "len {len}"
            );
            for t in [0, 1, u32::MAX / 2, u32::MAX - 5, u32::MAX] {
                assert_eq!(
                    position_ge_u32(&v, t),
                    v.iter().position(|&y| y >= t),
                    "len {len} t {t}"
                );
            }
            // High bits set: the comparison must be unsigned.
            let high: Vec<u32> = v.iter().map(|y| y | 0x8000_0000).collect();
            assert_eq!(max_u32(&high), high.iter().copied().fold(0, u32::max));
            assert_eq!(
                position_ge_u32(&high, 0x8000_0001),
                high.iter().position(|&y| y >= 0x8000_0001)
            );
        }
    }
}
