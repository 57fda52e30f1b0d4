//! The `.needs.bin` file: how to build a target content from a base content,
//! as runs in target order, each with the BLAKE3 of the bytes it produces.
//!
//! A [`Run`] is either `Seed` (bytes of the base at an offset) or `Origin`
//! (bytes of the target itself, fetched from the DP or from a peer that has
//! them, at the run's target offset). Every run carries the hash of its bytes,
//! so bytes from *any* source are verified before use; [`Run::verify`] is the
//! only way to get a [`VerifiedRun`], which is what writers accept.
//!
//! Runs are at most [`MAX_RUN`] bytes: large enough that per-run overhead is
//! negligible, small enough that a transfer interrupted mid-run loses little
//! and that peers can exchange runs as units.
//!
//! Format: `magic (8) ‖ postcard(NeedsFile)`. The manifest carries the file's
//! BLAKE3, so a tampered file is rejected before it is parsed; [`decode`]
//! still bounds everything it reads.

use serde::{Deserialize, Serialize};

use crate::hash::ContentHash;
use crate::needs::Need;
use crate::rdc::ReadAt;

/// Magic of a needs file.
pub const NEEDS_MAGIC: [u8; 8] = *b"PDNEEDS1";
/// Largest run.
pub const MAX_RUN: u64 = 1 << 20;
/// Largest needs file accepted by [`decode`].
pub const MAX_NEEDS_FILE: usize = 256 << 20;

/// Where a run's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunSource {
    /// From the base content at `offset`.
    Seed {
        /// Offset in the base.
        offset: u64,
    },
    /// From the target content itself (the DP's copy, or a peer's), at the
    /// run's own target offset.
    Origin,
}

/// One run of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Run {
    /// Where the bytes come from.
    pub source: RunSource,
    /// Length, `1..=MAX_RUN`.
    pub len: u32,
    /// BLAKE3 of the bytes.
    pub hash: ContentHash,
}

/// A needs file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedsFile {
    /// The content it starts from ([`ContentHash::EMPTY`] for a pieces file:
    /// every run from the origin).
    pub base: ContentHash,
    /// Size of the base.
    pub base_len: u64,
    /// The content it builds.
    pub target: ContentHash,
    /// Size of the target.
    pub target_len: u64,
    /// Runs in target order.
    pub runs: Vec<Run>,
    /// The origin runs compressed, if the DP prepared them.
    pub pack: Option<Pack>,
}

/// The origin runs of a needs file, compressed in frames, in a file beside it
/// (`protocol::layout::pack`). A frame holds consecutive origin runs (by their
/// order among origin runs), so a receiver fetches the frames holding the runs
/// it lacks and checks every run it decompresses against its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pack {
    /// Size of the pack file.
    pub len: u64,
    /// The frames, in order.
    pub frames: Vec<Frame>,
}

/// One compressed frame of a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Ordinal (among origin runs) of the first run in the frame.
    pub first: u32,
    /// Number of origin runs in the frame.
    pub count: u32,
    /// Offset of the frame in the pack file.
    pub offset: u64,
    /// Compressed length.
    pub len: u32,
    /// Decompressed length (the runs' total).
    pub raw_len: u32,
    /// Bytes of the base the frame was compressed against (a zstd prefix):
    /// the receiver, who holds the base, reads the same span to decompress.
    /// Like `zstd --patch-from`, but per frame, with a bounded window.
    pub reference: Option<Span>,
}

/// A span of the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// Offset in the base.
    pub offset: u64,
    /// Length, at most [`MAX_REFERENCE`].
    pub len: u32,
}

impl Span {
    /// The byte range.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + u64::from(self.len)
    }
}

/// Largest reference span of a frame (bounds a receiver's memory).
pub const MAX_REFERENCE: u32 = 16 << 20;
/// Raw bytes a frame may hold at most (a receiver decompresses a frame into
/// memory): far above what the publisher makes, [`FRAME_TARGET`] plus one run.
pub const MAX_FRAME_RAW: u64 = 64 << 20;
/// Raw bytes a frame holds at least (whole runs; the last frame may hold less).
pub const FRAME_TARGET: u64 = 2 << 20;
/// Base bytes before and after the aligned position a reference spans.
pub const REFERENCE_RADIUS: u64 = 4 << 20;

impl Frame {
    /// Byte range in the pack.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + u64::from(self.len)
    }
}

/// A run placed in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacedRun {
    /// Index in [`NeedsFile::runs`].
    pub index: usize,
    /// Offset of the run in the target.
    pub target_offset: u64,
    /// The run.
    pub run: Run,
}

/// Bytes that matched their run's hash. Only [`Run::verify`] makes one.
#[derive(Debug)]
pub struct VerifiedRun<'a> {
    bytes: &'a [u8],
    target_offset: u64,
}

impl<'a> VerifiedRun<'a> {
    /// The verified bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Where they go in the target.
    pub fn target_offset(&self) -> u64 {
        self.target_offset
    }
}

/// Bytes that did not match their run's hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "run at target offset {target_offset} ({len} bytes): expected BLAKE3 {expected}, got {actual}"
)]
pub struct RunMismatch {
    /// Where the run goes in the target.
    pub target_offset: u64,
    /// Its length.
    pub len: u64,
    /// The hash in the needs file.
    pub expected: ContentHash,
    /// The hash of the bytes offered.
    pub actual: ContentHash,
}

impl PlacedRun {
    /// Checks `bytes` against the run's hash and length.
    pub fn verify<'a>(&self, bytes: &'a [u8]) -> Result<VerifiedRun<'a>, RunMismatch> {
        let actual = ContentHash::of(bytes);
        if bytes.len() as u64 != u64::from(self.run.len) || actual != self.run.hash {
            return Err(RunMismatch {
                target_offset: self.target_offset,
                len: u64::from(self.run.len),
                expected: self.run.hash,
                actual,
            });
        }
        Ok(VerifiedRun {
            bytes,
            target_offset: self.target_offset,
        })
    }

    /// The run's range in the target.
    pub fn target_range(&self) -> std::ops::Range<u64> {
        self.target_offset..self.target_offset + u64::from(self.run.len)
    }
}

/// Why a needs file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NeedsFileError {
    /// Larger than [`MAX_NEEDS_FILE`].
    #[error("needs file of {0} bytes is larger than the limit")]
    TooLarge(usize),
    /// Wrong magic or undecodable.
    #[error("not a needs file: {0}")]
    Format(String),
    /// Decoded but inconsistent.
    #[error("inconsistent needs file: {0}")]
    Invalid(String),
}

impl NeedsFile {
    /// Runs with their target offsets.
    pub fn placed(&self) -> impl Iterator<Item = PlacedRun> + '_ {
        let mut offset = 0u64;
        self.runs.iter().enumerate().map(move |(index, run)| {
            let p = PlacedRun {
                index,
                target_offset: offset,
                run: *run,
            };
            offset += u64::from(run.len);
            p
        })
    }

    /// Bytes that must come from the target's copy (DP or peers).
    pub fn origin_bytes(&self) -> u64 {
        self.runs
            .iter()
            .filter(|r| r.source == RunSource::Origin)
            .map(|r| u64::from(r.len))
            .sum()
    }

    /// Bytes taken from the base.
    pub fn seed_bytes(&self) -> u64 {
        self.target_len - self.origin_bytes()
    }

    /// Encodes with the magic.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = NEEDS_MAGIC.to_vec();
        out.extend(
            postcard::to_allocvec(self).expect("serialising owned data into a Vec cannot fail"),
        );
        out
    }

    /// The origin runs in order (their position in this list is their ordinal).
    pub fn origin_runs(&self) -> Vec<PlacedRun> {
        self.placed()
            .filter(|p| p.run.source == RunSource::Origin)
            .collect()
    }

    /// Checks that runs are non-empty, within [`MAX_RUN`], add up to the
    /// target length, and read inside the base; and that the pack's frames
    /// cover the origin runs in order, within the pack, with the right sizes.
    pub fn validate(&self) -> Result<(), NeedsFileError> {
        self.validate_runs()?;
        if let Some(pack) = &self.pack {
            let origin: Vec<u64> = self
                .runs
                .iter()
                .filter(|r| r.source == RunSource::Origin)
                .map(|r| u64::from(r.len))
                .collect();
            let mut next_run = 0usize;
            let mut next_offset = 0u64;
            for (i, f) in pack.frames.iter().enumerate() {
                let bad =
                    |what: &str| Err(NeedsFileError::Invalid(format!("pack frame {i}: {what}")));
                if f.first as usize != next_run || f.count == 0 {
                    return bad("runs out of order");
                }
                let end = next_run + f.count as usize;
                let Some(runs) = origin.get(next_run..end) else {
                    return bad("past the last origin run");
                };
                if runs.iter().sum::<u64>() != u64::from(f.raw_len) {
                    return bad("decompressed length differs from its runs");
                }
                if u64::from(f.raw_len) > MAX_FRAME_RAW {
                    return bad("larger than a frame may be");
                }
                let end_offset = f.offset.checked_add(u64::from(f.len));
                if f.offset != next_offset || end_offset.is_none_or(|e| e > pack.len) {
                    return bad("outside the pack");
                }
                if let Some(r) = f.reference
                    && (r.len == 0
                        || r.len > MAX_REFERENCE
                        || r.offset
                            .checked_add(u64::from(r.len))
                            .is_none_or(|e| e > self.base_len))
                {
                    return bad("reference outside the base");
                }
                next_run = end;
                next_offset = end_offset.unwrap_or(u64::MAX);
            }
            if next_run != origin.len() {
                return Err(NeedsFileError::Invalid(
                    "pack does not cover every origin run".into(),
                ));
            }
        }
        Ok(())
    }

    /// Groups the origin runs into frames of whole runs of about
    /// [`FRAME_TARGET`] raw bytes: ranges of origin-run ordinals.
    pub fn frame_groups(&self) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let (mut start, mut raw, mut n) = (0usize, 0u64, 0usize);
        for r in self.runs.iter().filter(|r| r.source == RunSource::Origin) {
            raw += u64::from(r.len);
            n += 1;
            if raw >= FRAME_TARGET {
                out.push(start..n);
                start = n;
                raw = 0;
            }
        }
        if start < n {
            out.push(start..n);
        }
        out
    }

    /// The span of the base a frame of origin runs `group` is compressed
    /// against: [`REFERENCE_RADIUS`] around where its bytes sit in the base,
    /// aligned by the nearest seed run before it (or after, or the same
    /// offset). `None` for a pieces file (no base).
    pub fn reference_for(&self, group: std::ops::Range<usize>) -> Option<Span> {
        if self.base_len == 0 || group.is_empty() {
            return None;
        }
        // Target offsets of the frame and the shift of the closest seed run.
        let (mut at, mut k) = (0u64, 0usize);
        let (mut start, mut end) = (None, 0u64);
        let mut shift_before: Option<i128> = None;
        let mut shift_after: Option<i128> = None;
        for r in &self.runs {
            let len = u64::from(r.len);
            match r.source {
                RunSource::Origin => {
                    if k == group.start {
                        start = Some(at);
                    }
                    if k + 1 == group.end {
                        end = at + len;
                    }
                    k += 1;
                }
                RunSource::Seed { offset } => {
                    let shift = i128::from(offset) - i128::from(at);
                    if start.is_none() {
                        shift_before = Some(shift);
                    } else if shift_after.is_none() {
                        shift_after = Some(shift);
                    }
                }
            }
            at += len;
        }
        let start = start?;
        let shift = shift_before.or(shift_after).unwrap_or(0);
        let raw = end.saturating_sub(start);
        let aligned = (i128::from(start) + shift).clamp(0, i128::from(self.base_len)) as u64;
        let lo = aligned.saturating_sub(REFERENCE_RADIUS);
        let hi = (aligned + raw + REFERENCE_RADIUS).min(self.base_len);
        let len = (hi - lo).min(u64::from(MAX_REFERENCE)) as u32;
        (len > 0).then_some(Span { offset: lo, len })
    }

    fn validate_runs(&self) -> Result<(), NeedsFileError> {
        let mut total = 0u64;
        for (i, r) in self.runs.iter().enumerate() {
            let len = u64::from(r.len);
            if len == 0 || len > MAX_RUN {
                return Err(NeedsFileError::Invalid(format!("run {i} has length {len}")));
            }
            if let RunSource::Seed { offset } = r.source
                && offset
                    .checked_add(len)
                    .is_none_or(|end| end > self.base_len)
            {
                return Err(NeedsFileError::Invalid(format!(
                    "run {i} reads past the base"
                )));
            }
            total += len;
        }
        if total != self.target_len {
            return Err(NeedsFileError::Invalid(format!(
                "runs cover {total} bytes, target has {}",
                self.target_len
            )));
        }
        Ok(())
    }
}

/// Decodes and validates a needs file.
pub fn decode(bytes: &[u8]) -> Result<NeedsFile, NeedsFileError> {
    if bytes.len() > MAX_NEEDS_FILE {
        return Err(NeedsFileError::TooLarge(bytes.len()));
    }
    let body = bytes
        .strip_prefix(&NEEDS_MAGIC)
        .ok_or_else(|| NeedsFileError::Format("bad magic".into()))?;
    let (file, rest) = postcard::take_from_bytes::<NeedsFile>(body)
        .map_err(|e| NeedsFileError::Format(e.to_string()))?;
    if !rest.is_empty() {
        return Err(NeedsFileError::Format(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    file.validate()?;
    Ok(file)
}

/// A run of a needs file before its hash is known (see [`plan_runs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedRun {
    /// Offset in the target.
    pub offset: u64,
    /// Length, `1..=MAX_RUN`.
    pub len: u64,
    /// Where its bytes come from.
    pub source: RunSource,
}

/// Splits merged needs (as [`crate::needs::compare`] makes them) into runs,
/// in target order.
///
/// Runs are cut at multiples of [`MAX_RUN`] in the target, not every
/// `MAX_RUN` bytes from where a need starts. So the interior runs of long
/// needs are the runs of the target's pieces file, and the needs lists of
/// one target (one per base) share the runs where their needs share
/// boundaries: a publisher hashes each distinct run once.
pub fn plan_runs(needs: &[Need]) -> Vec<PlannedRun> {
    let mut runs = Vec::new();
    let mut offset = 0u64;
    for need in needs {
        let mut done = 0u64;
        while done < need.len() {
            let boundary = (offset / MAX_RUN + 1) * MAX_RUN;
            let len = (need.len() - done).min(boundary - offset);
            let source = match *need {
                Need::Seed {
                    offset: base_off, ..
                } => RunSource::Seed {
                    offset: base_off + done,
                },
                Need::Source { .. } => RunSource::Origin,
            };
            runs.push(PlannedRun {
                offset,
                len,
                source,
            });
            done += len;
            offset += len;
        }
    }
    runs
}

/// Makes a needs file of `runs` (from [`plan_runs`]), asking `hash(offset,
/// len)` for the BLAKE3 of each run's target bytes.
pub fn assemble<E>(
    base: ContentHash,
    base_len: u64,
    target: ContentHash,
    runs: &[PlannedRun],
    mut hash: impl FnMut(u64, u64) -> Result<ContentHash, E>,
) -> Result<NeedsFile, E> {
    let mut out = Vec::with_capacity(runs.len());
    for r in runs {
        out.push(Run {
            source: r.source,
            len: r.len as u32,
            hash: hash(r.offset, r.len)?,
        });
    }
    Ok(NeedsFile {
        base,
        base_len,
        target,
        target_len: runs.last().map_or(0, |r| r.offset + r.len),
        runs: out,
        pack: None,
    })
}

/// The index of the pieces-file run (every run from the origin, cut by
/// [`plan_runs`]) that is exactly `offset..offset + len` of a content of
/// `total` bytes, if one is.
pub fn piece_index(offset: u64, len: u64, total: u64) -> Option<usize> {
    (offset.is_multiple_of(MAX_RUN) && len > 0 && len == MAX_RUN.min(total.saturating_sub(offset)))
        .then_some((offset / MAX_RUN) as usize)
}

/// BLAKE3 of `len` bytes of `src` at `offset`, read into `buf`.
pub fn hash_range<R: ReadAt + ?Sized>(
    src: &R,
    offset: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> Result<ContentHash, R::Error> {
    buf.resize(len as usize, 0);
    src.read_exact_at(buf, offset)?;
    Ok(ContentHash::of(buf))
}

/// Builds a needs file from merged needs: splits them into runs
/// ([`plan_runs`]) and hashes each run's target bytes, read from `target`.
pub fn build<R: ReadAt + ?Sized>(
    base: ContentHash,
    base_len: u64,
    target: ContentHash,
    needs: &[Need],
    target_data: &R,
) -> Result<NeedsFile, R::Error> {
    let mut buf = Vec::new();
    assemble(base, base_len, target, &plan_runs(needs), |offset, len| {
        hash_range(target_data, offset, len, &mut buf)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::needs::compare;
    use crate::rdc::{Params, Signature, chunks};

    fn sigs(d: &[u8]) -> Vec<Signature> {
        chunks(d, Params::LEVEL1)
            .iter()
            .map(Signature::from)
            .collect()
    }

    /// A pseudo-random base of `len` bytes and a target with `inserted`
    /// put in at `at`, their needs and hashes.
    fn inserted(
        len: u32,
        at: usize,
        inserted: &[u8],
    ) -> (Vec<u8>, Vec<u8>, Vec<Need>, ContentHash, ContentHash) {
        let base: Vec<u8> = (0..len)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let mut target = base[..at].to_vec();
        target.extend_from_slice(inserted);
        target.extend_from_slice(&base[at..]);
        let needs = compare(&sigs(&target), &sigs(&base));
        let (bh, th) = (ContentHash::of(&base), ContentHash::of(&target));
        (base, target, needs, bh, th)
    }

    #[test]
    fn runs_split_at_aligned_offsets_and_reuse_the_pieces_hashes() {
        // An insertion near the start shifts everything after it.
        let (base, target, needs, bh, th) = inserted(5_500_000, 300_000, &[7u8; 5000]);
        let plain = build(bh, base.len() as u64, th, &needs, &target[..]).unwrap();
        // Every run ends at the end of a need or at a multiple of MAX_RUN.
        let mut ends: Vec<u64> = Vec::new();
        let mut at = 0;
        for n in &needs {
            at += n.len();
            ends.push(at);
        }
        for p in plain.placed() {
            let end = p.target_range().end;
            assert!(end.is_multiple_of(MAX_RUN) || ends.contains(&end), "{end}");
        }
        // The pieces file's runs are the aligned ones.
        let whole = [Need::Source {
            offset: 0,
            len: target.len() as u64,
        }];
        let pieces = build(ContentHash::EMPTY, 0, th, &whole, &target[..]).unwrap();
        let aligned: Vec<ContentHash> = pieces.runs.iter().map(|r| r.hash).collect();
        assert_eq!(aligned.len(), target.len().div_ceil(MAX_RUN as usize));
        // Reusing them, only the runs at the ends of needs are read.
        let mut read = 0u64;
        let reused = assemble(bh, base.len() as u64, th, &plan_runs(&needs), |off, len| {
            if let Some(k) = piece_index(off, len, target.len() as u64) {
                return Ok(aligned[k]);
            }
            read += len;
            Ok::<_, std::convert::Infallible>(ContentHash::of(
                &target[off as usize..(off + len) as usize],
            ))
        })
        .unwrap();
        assert_eq!(reused, plain);
        assert!(
            read < 2 * MAX_RUN,
            "read {read} B of {} to hash the needs list",
            target.len()
        );
    }

    #[test]
    fn build_verify_round_trip() {
        let (base, target, needs, bh, th) =
            inserted(3_000_000, 1_000_000, b"new bytes in the middle");
        let nf = build(bh, base.len() as u64, th, &needs, &target[..]).unwrap();
        assert!(nf.runs.iter().all(|r| u64::from(r.len) <= MAX_RUN));
        assert!(nf.origin_bytes() < 10_000);
        let bytes = nf.encode();
        let back = decode(&bytes).unwrap();
        assert_eq!(back, nf);
        // Rebuild from verified runs only.
        let mut out = vec![0u8; target.len()];
        for p in back.placed() {
            let src = match p.run.source {
                RunSource::Seed { offset } => {
                    &base[offset as usize..offset as usize + p.run.len as usize]
                }
                RunSource::Origin => {
                    &target[p.target_range().start as usize..p.target_range().end as usize]
                }
            };
            let v = p.verify(src).unwrap();
            out[v.target_offset() as usize..][..v.bytes().len()].copy_from_slice(v.bytes());
        }
        assert_eq!(out, target);
        // A wrong byte is caught.
        let p = back.placed().next().unwrap();
        let mut wrong = base[..p.run.len as usize].to_vec();
        wrong[0] ^= 1;
        assert!(p.verify(&wrong).is_err());
    }

    #[test]
    fn decode_rejects_garbage_and_inconsistency() {
        assert!(decode(b"").is_err());
        assert!(decode(b"PDNEEDS1\xff\xff").is_err());
        let h = ContentHash::of(b"");
        let mut nf = NeedsFile {
            base: h,
            base_len: 10,
            target: h,
            target_len: 5,
            runs: vec![],
            pack: None,
        };
        assert!(
            decode(&nf.encode()).is_err(),
            "runs do not cover the target"
        );
        nf.runs.push(Run {
            source: RunSource::Seed { offset: 8 },
            len: 5,
            hash: h,
        });
        assert!(decode(&nf.encode()).is_err(), "reads past the base");
        nf.runs[0].source = RunSource::Seed { offset: 5 };
        assert!(decode(&nf.encode()).is_ok());
        let mut bytes = nf.encode();
        bytes.push(0);
        assert!(decode(&bytes).is_err(), "trailing byte");
        // Packs must cover the origin runs exactly.
        nf.runs.push(Run {
            source: RunSource::Origin,
            len: 3,
            hash: h,
        });
        nf.runs.push(Run {
            source: RunSource::Origin,
            len: 4,
            hash: h,
        });
        nf.target_len = 12;
        let frame = |first, count, offset, len, raw_len| Frame {
            first,
            count,
            offset,
            len,
            raw_len,
            reference: None,
        };
        nf.pack = Some(Pack {
            len: 10,
            frames: vec![frame(0, 2, 0, 10, 7)],
        });
        assert!(decode(&nf.encode()).is_ok());
        nf.pack = Some(Pack {
            len: 10,
            frames: vec![frame(0, 1, 0, 4, 3), frame(1, 1, 4, 6, 4)],
        });
        assert!(decode(&nf.encode()).is_ok());
        for frames in [
            vec![frame(0, 1, 0, 4, 3)],
            vec![frame(0, 2, 0, 10, 8)],
            vec![frame(0, 2, 0, 11, 7)],
            vec![frame(1, 1, 0, 4, 4)],
            vec![frame(0, 1, 0, 4, 3), frame(1, 1, 5, 4, 4)],
        ] {
            nf.pack = Some(Pack { len: 10, frames });
            assert!(decode(&nf.encode()).is_err(), "{:?}", nf.pack);
        }
        // References must lie inside the base.
        let base_len = nf.base_len;
        for (span, ok) in [
            (
                Span {
                    offset: 0,
                    len: base_len as u32,
                },
                true,
            ),
            (
                Span {
                    offset: 1,
                    len: base_len as u32,
                },
                false,
            ),
            (Span { offset: 0, len: 0 }, false),
            (
                Span {
                    offset: u64::MAX,
                    len: 1,
                },
                false,
            ),
        ] {
            let mut f = frame(0, 2, 0, 10, 7);
            f.reference = Some(span);
            nf.pack = Some(Pack {
                len: 10,
                frames: vec![f],
            });
            assert_eq!(decode(&nf.encode()).is_ok(), ok, "{span:?}");
        }
    }

    #[test]
    fn frames_and_their_references() {
        let h = ContentHash::of(b"x");
        let run = |source, len: u64| Run {
            source,
            len: len as u32,
            hash: h,
        };
        let mib = 1u64 << 20;
        // 40 MiB base; target: 1 MiB seed (shifted +3 MiB), 5 MiB origin,
        // 1 MiB seed, 1 MiB origin.
        let runs = vec![
            run(RunSource::Seed { offset: 3 * mib }, mib),
            run(RunSource::Origin, mib),
            run(RunSource::Origin, mib),
            run(RunSource::Origin, mib),
            run(RunSource::Origin, mib),
            run(RunSource::Origin, mib),
            run(RunSource::Seed { offset: 20 * mib }, mib),
            run(RunSource::Origin, mib),
        ];
        let nf = NeedsFile {
            base: h,
            base_len: 40 * mib,
            target: h,
            target_len: 8 * mib,
            runs,
            pack: None,
        };
        let groups = nf.frame_groups();
        assert_eq!(groups, vec![0..2, 2..4, 4..6]);
        // Frame 0 starts at target 1 MiB, shift +3 MiB: aligned 4 MiB.
        assert_eq!(
            nf.reference_for(groups[0].clone()),
            Some(Span {
                offset: 0,
                len: (4 + 2 + 4) as u32 * mib as u32
            })
        );
        // The last frame holds origin runs 4 (target 5 MiB) and 5 (target 7 MiB).
        let last = nf.reference_for(groups[2].clone()).unwrap();
        assert_eq!(last.offset, 8 * mib - 4 * mib);
        assert!(last.range().end <= nf.base_len);
        // A pieces file has no base: no reference.
        let pieces = NeedsFile {
            base: ContentHash::EMPTY,
            base_len: 0,
            ..nf.clone()
        };
        assert_eq!(pieces.reference_for(0..1), None);
    }
}
