//! The transfer journal's format: which byte ranges of a content being
//! built are verified and durable in its partial data file.
//!
//! A range is recorded only after its bytes were checked against a needs-list
//! run hash and fsynced into the data file, and on resume every recorded
//! range is trusted without re-reading it. So the journal must never turn
//! bytes nobody verified into verified ones:
//!
//! - A header binds the journal to one content (hash and length); a journal
//!   of another content, or of another format, is not trusted at all (the
//!   build starts over).
//! - Each record carries a check (BLAKE3 of the magic, content hash, offset
//!   and length, truncated to 8 bytes), so a torn or damaged record is told
//!   from a real one. [`parse`] stops at the first record that fails its
//!   check or its bounds and says where; the writer truncates the file there
//!   before appending, so a record appended after a torn tail is never
//!   misaligned.
//!
//! ```text
//! header  "PDJRNL02" ‖ content hash (32) ‖ content length (u64 LE)
//! record  offset (u64 LE) ‖ length (u64 LE) ‖ check (8)
//! ```

use crate::ContentHash;

/// The header's magic.
const MAGIC: &[u8; 8] = b"PDJRNL02";
/// Header length.
pub const HEADER_LEN: usize = 8 + 32 + 8;
/// Record length.
pub const RECORD_LEN: usize = 24;
/// Largest journal read (about 2.8 million records).
pub const MAX_JOURNAL: u64 = 64 << 20;

/// The check of one record.
fn check(hash: &ContentHash, offset: u64, len: u64) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(MAGIC);
    h.update(&hash.0);
    h.update(&offset.to_le_bytes());
    h.update(&len.to_le_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

/// The header of the journal of content `hash` of `len` bytes.
pub fn header(hash: &ContentHash, len: u64) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8..40].copy_from_slice(&hash.0);
    out[40..].copy_from_slice(&len.to_le_bytes());
    out
}

/// Appends the records of `ranges` (`(offset, len)`) of content `hash`.
pub fn encode_records(hash: &ContentHash, ranges: &[(u64, u64)], out: &mut Vec<u8>) {
    for &(o, l) in ranges {
        out.extend_from_slice(&o.to_le_bytes());
        out.extend_from_slice(&l.to_le_bytes());
        out.extend_from_slice(&check(hash, o, l));
    }
}

/// What a journal's bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The content length the header gives.
    pub content_len: u64,
    /// Verified ranges `(offset, len)`, merged and sorted.
    pub ranges: Vec<(u64, u64)>,
    /// Bytes of the journal up to the end of the last good record.
    pub valid_len: u64,
}

/// Parses a journal of content `hash`; `None` if the header is not one
/// for that content (nothing in it can be trusted).
pub fn parse(raw: &[u8], hash: &ContentHash) -> Option<Parsed> {
    let head = raw.get(..HEADER_LEN)?;
    if head[..8] != MAGIC[..] || head[8..40] != hash.0[..] {
        return None;
    }
    let content_len = u64::from_le_bytes(head[40..48].try_into().ok()?);
    let mut ranges = Vec::new();
    let mut valid = HEADER_LEN;
    for r in raw[HEADER_LEN..].chunks_exact(RECORD_LEN) {
        let offset = u64::from_le_bytes(r[..8].try_into().ok()?);
        let len = u64::from_le_bytes(r[8..16].try_into().ok()?);
        let in_bounds = offset
            .checked_add(len)
            .is_some_and(|end| end <= content_len);
        if r[16..] != check(hash, offset, len) || !in_bounds {
            break;
        }
        if len > 0 {
            ranges.push((offset, len));
        }
        valid += RECORD_LEN;
    }
    Some(Parsed {
        content_len,
        ranges: crate::rangeset::RangeSet::from_ranges(&ranges)
            .ranges()
            .to_vec(),
        valid_len: valid as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_damaged_and_foreign_records_are_not_trusted() {
        let h = ContentHash::of(b"content");
        let mut raw = header(&h, 1000).to_vec();
        let rec = |o: u64, l: u64, c: [u8; 8]| {
            let mut r = o.to_le_bytes().to_vec();
            r.extend_from_slice(&l.to_le_bytes());
            r.extend_from_slice(&c);
            r
        };
        encode_records(&h, &[(0, 10)], &mut raw);
        // A record without the right check (what the old format wrote).
        raw.extend(rec(10, 990, [0; 8]));
        encode_records(&h, &[(20, 10)], &mut raw);
        let p = parse(&raw, &h).unwrap();
        assert_eq!(p.ranges, vec![(0, 10)], "reading stops at the bad record");
        assert_eq!(p.valid_len, (HEADER_LEN + RECORD_LEN) as u64);
        // Out of bounds, even with a good check.
        let mut raw2 = header(&h, 1000).to_vec();
        encode_records(&h, &[(990, 20), (u64::MAX, 2)], &mut raw2);
        assert!(parse(&raw2, &h).unwrap().ranges.is_empty());
        // Another content's journal, or no header at all.
        assert!(parse(&raw, &ContentHash::of(b"other")).is_none());
        assert!(parse(&raw[8..], &h).is_none());
        assert!(parse(b"", &h).is_none());
    }
}
