//! Needs lists: which ranges of a target (the *source*, the new file) can be
//! taken from a *seed* (an old file the receiver holds) and which must cross the
//! network (MS-RDC 3.1.5.5, `spec/ms-rdc.md` §6).
//!
//! - [`compare`] turns source and seed signatures into the ordered, merged
//!   needs list.
//! - [`apply`] rebuilds the source from a seed and the source ranges.
//! - [`RecursivePlan`] runs the transfer level by level from the source's top
//!   signature file down to the file, as MS-RDC 4.4 does; [`recursive_local`]
//!   drives it over two local inputs to measure what would cross the network.

mod recursive;

pub use recursive::{
    LevelCost, RecursiveError, RecursiveOutcome, RecursivePlan, SeedLevels, recursive_local,
    recursive_needs,
};

use serde::{Deserialize, Serialize};

use crate::rdc::{ReadAt, Signature};

/// One range of the target, in target order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum Need {
    /// `len` bytes at `offset` of the seed.
    Seed {
        /// Offset in the seed.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// `len` bytes at `offset` of the source (these cross the network).
    Source {
        /// Offset in the source.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl Need {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match *self {
            Need::Seed { len, .. } | Need::Source { len, .. } => len,
        }
    }

    /// True for a zero-length need (never produced by [`compare`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Totals of a needs list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedsSummary {
    /// Bytes of the target (sum of all needs).
    pub target_bytes: u64,
    /// Bytes taken from the seed.
    pub seed_bytes: u64,
    /// Bytes taken from the source.
    pub source_bytes: u64,
    /// Number of needs.
    pub needs: u64,
}

/// Sums a needs list.
pub fn summarize(needs: &[Need]) -> NeedsSummary {
    let mut s = NeedsSummary {
        needs: needs.len() as u64,
        ..Default::default()
    };
    for n in needs {
        match *n {
            Need::Seed { len, .. } => s.seed_bytes += len,
            Need::Source { len, .. } => s.source_bytes += len,
        }
    }
    s.target_bytes = s.seed_bytes + s.source_bytes;
    s
}

/// Seed signatures indexed by (MD4, length), each with its offsets ascending.
pub struct SeedIndex {
    /// Sorted by (signature, offset).
    entries: Vec<(Signature, u64)>,
    /// Entries are bucketed by the first `bits` bits of their MD4:
    /// `starts[b]..starts[b + 1]` is bucket `b` (sorted order keeps each
    /// bucket contiguous). A lookup then searches a bucket of a few entries
    /// instead of the whole index, and a crafted seed whose MD4s all share a
    /// prefix still costs a binary search, never a scan.
    bits: u32,
    starts: Vec<u32>,
}

impl SeedIndex {
    /// Indexes the seed's signatures (in file order).
    pub fn new(seed: &[Signature]) -> Self {
        let mut offset = 0u64;
        let mut entries: Vec<(Signature, u64)> = seed
            .iter()
            .map(|s| {
                let e = (*s, offset);
                offset += u64::from(s.len);
                e
            })
            .collect();
        entries.sort_unstable();
        // About one entry per bucket, at most 2^16 buckets.
        let bits = (usize::BITS - entries.len().leading_zeros()).min(16);
        let mut starts = vec![0u32; (1usize << bits) + 1];
        for (s, _) in &entries {
            starts[bucket(s, bits) + 1] += 1;
        }
        for b in 1..starts.len() {
            starts[b] += starts[b - 1];
        }
        SeedIndex {
            entries,
            bits,
            starts,
        }
    }

    /// Offsets of seed chunks equal to `sig` (MD4 and length), ascending.
    fn offsets(&self, sig: &Signature) -> &[(Signature, u64)] {
        let b = bucket(sig, self.bits);
        let (lo, hi) = (self.starts[b] as usize, self.starts[b + 1] as usize);
        let bucket = &self.entries[lo..hi];
        let lo = bucket.partition_point(|(s, _)| s < sig);
        let hi = lo + bucket[lo..].partition_point(|(s, _)| s == sig);
        &bucket[lo..hi]
    }

    /// Seed offset for `sig`: the one continuing `prefer` if it matches, else
    /// the lowest (`spec/ms-rdc.md` §6 step 3).
    pub fn lookup(&self, sig: &Signature, prefer: Option<u64>) -> Option<u64> {
        let found = self.offsets(sig);
        let first = found.first()?.1;
        if let Some(p) = prefer
            && found.binary_search_by_key(&p, |e| e.1).is_ok()
        {
            return Some(p);
        }
        Some(first)
    }
}

/// The bucket of `sig` among `2^bits`: the first `bits` bits of its MD4.
fn bucket(sig: &Signature, bits: u32) -> usize {
    let prefix = u16::from_be_bytes([sig.md4[0], sig.md4[1]]);
    (u32::from(prefix) >> (16 - bits)) as usize
}

/// The merged needs list that builds the source from the seed: each source
/// chunk whose (MD4, length) occurs in the seed is taken from there.
pub fn compare(source: &[Signature], seed: &[Signature]) -> Vec<Need> {
    compare_indexed(source, &SeedIndex::new(seed))
}

/// [`compare`] with a prepared seed index (to compare many sources).
pub fn compare_indexed(source: &[Signature], seed: &SeedIndex) -> Vec<Need> {
    let mut out: Vec<Need> = Vec::new();
    let mut source_offset = 0u64;
    for sig in source {
        let len = u64::from(sig.len);
        let prefer = match out.last() {
            Some(Need::Seed { offset, len }) => Some(offset + len),
            _ => None,
        };
        let need = match seed.lookup(sig, prefer) {
            Some(offset) => Need::Seed { offset, len },
            None => Need::Source {
                offset: source_offset,
                len,
            },
        };
        push_merged(&mut out, need);
        source_offset += len;
    }
    out
}

/// Appends `need`, merging it into the last one when they are contiguous ranges
/// of the same input.
pub fn push_merged(out: &mut Vec<Need>, need: Need) {
    if need.is_empty() {
        return;
    }
    match (out.last_mut(), need) {
        (Some(Need::Seed { offset: o, len: l }), Need::Seed { offset, len })
            if *o + *l == offset =>
        {
            *l += len
        }
        (Some(Need::Source { offset: o, len: l }), Need::Source { offset, len })
            if *o + *l == offset =>
        {
            *l += len
        }
        _ => out.push(need),
    }
}

/// Why [`apply`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError<E> {
    /// A need reads past the end of its input.
    #[error(
        "need {index} reads {len} bytes at {offset} of the {input}, which has only {available}"
    )]
    OutOfRange {
        /// Index of the need in the list.
        index: usize,
        /// "seed" or "source".
        input: &'static str,
        /// Offset requested.
        offset: u64,
        /// Length requested.
        len: u64,
        /// Length of that input.
        available: u64,
    },
    /// Reading an input failed.
    #[error("reading the {input}: {source}")]
    Read {
        /// "seed" or "source".
        input: &'static str,
        /// The reader's error.
        source: E,
    },
}

/// Rebuilds the target: copies each need from the seed or the source to `sink`
/// in order, in pieces of at most 1 MiB.
pub fn apply<A, B, E>(
    needs: &[Need],
    seed: &A,
    source: &B,
    sink: &mut impl FnMut(&[u8]),
) -> Result<(), ApplyError<E>>
where
    A: ReadAt<Error = E> + ?Sized,
    B: ReadAt<Error = E> + ?Sized,
{
    let mut buf = Vec::new();
    for (index, need) in needs.iter().enumerate() {
        let (input, offset, len, available) = match *need {
            Need::Seed { offset, len } => ("seed", offset, len, seed.len()),
            Need::Source { offset, len } => ("source", offset, len, source.len()),
        };
        if offset.checked_add(len).is_none_or(|end| end > available) {
            return Err(ApplyError::OutOfRange {
                index,
                input,
                offset,
                len,
                available,
            });
        }
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(1 << 20) as usize;
            buf.resize(n, 0);
            let r = match need {
                Need::Seed { .. } => seed.read_exact_at(&mut buf, offset + done),
                Need::Source { .. } => source.read_exact_at(&mut buf, offset + done),
            };
            r.map_err(|source| ApplyError::Read { input, source })?;
            sink(&buf);
            done += n as u64;
        }
    }
    Ok(())
}

/// [`apply`] over two byte slices, returning the target.
pub fn apply_slices(
    needs: &[Need],
    seed: &[u8],
    source: &[u8],
) -> Result<Vec<u8>, ApplyError<std::convert::Infallible>> {
    let bound = (seed.len() + source.len()) as u64;
    let mut out = Vec::with_capacity(summarize(needs).target_bytes.min(bound) as usize);
    apply(needs, seed, source, &mut |b| out.extend_from_slice(b))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lookups agree with a scan of the seed, with duplicate chunks and MD4s
    /// that share their first bytes (one bucket), for seeds of every size.
    #[test]
    fn the_index_finds_what_a_scan_finds() {
        let sig = |i: u64, k: u8| Signature {
            md4: [
                k % 3,
                (i % 5) as u8,
                k,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                (i % 7) as u8,
            ],
            len: 10 + (i % 2) as u16,
        };
        for n in [0u64, 1, 2, 5, 40, 300] {
            let seed: Vec<Signature> = (0..n).map(|i| sig(i, (i % 11) as u8)).collect();
            let index = SeedIndex::new(&seed);
            let offsets: Vec<u64> = seed
                .iter()
                .scan(0, |at, s| {
                    let o = *at;
                    *at += u64::from(s.len);
                    Some(o)
                })
                .collect();
            for i in 0..40u64 {
                let probe = sig(i, (i % 13) as u8);
                let hits: Vec<u64> = (0..seed.len())
                    .filter(|&j| seed[j] == probe)
                    .map(|j| offsets[j])
                    .collect();
                assert_eq!(
                    index.lookup(&probe, None),
                    hits.first().copied(),
                    "n {n} probe {i}"
                );
                for &p in &hits {
                    assert_eq!(index.lookup(&probe, Some(p)), Some(p));
                }
                assert_eq!(index.lookup(&probe, Some(u64::MAX)), hits.first().copied());
            }
        }
    }
}
