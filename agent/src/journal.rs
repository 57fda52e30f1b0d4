//! The journal of a content being built: which byte ranges of its partial
//! data file are verified and durable.
//!
//! A range is recorded only after its bytes were checked against a needs-list
//! run hash and fsynced into the data file, and on resume every recorded
//! range is trusted without re-reading it. So the journal must never turn
//! bytes nobody verified into verified ones:
//!
//! - A header binds the journal to one content (hash and length); a journal
//!   of another content, or of another format, is not trusted at all (the
//!   build starts over).
//! - Each record carries a check (BLAKE3 of the content hash, offset and
//!   length, truncated to 8 bytes), so a torn or damaged record is told from
//!   a real one. Reading stops at the first record that fails its check or
//!   its bounds, and [`Journal::open`] truncates the file there before
//!   appending: a record appended after a torn tail is never misaligned.
//!
//! ```text
//! header  "PDJRNL02" ‖ content hash (32) ‖ content length (u64 LE)
//! record  offset (u64 LE) ‖ length (u64 LE) ‖ check (8)
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use peerdelta_protocol::ContentHash;

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

fn header(hash: &ContentHash, len: u64) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8..40].copy_from_slice(&hash.0);
    out[40..].copy_from_slice(&len.to_le_bytes());
    out
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
        ranges: peerdelta_protocol::swarm::merge(&ranges),
        valid_len: valid as u64,
    })
}

/// Reads the journal at `path` for content `hash` (at most [`MAX_JOURNAL`]
/// bytes); `None` if it is missing or not that content's.
pub fn read(path: &Path, hash: &ContentHash) -> Option<Parsed> {
    let f = File::open(path).ok()?;
    let mut raw = Vec::new();
    f.take(MAX_JOURNAL).read_to_end(&mut raw).ok()?;
    parse(&raw, hash)
}

/// An open journal, appending.
pub struct Journal {
    hash: ContentHash,
    file: Mutex<File>,
    done: Mutex<Vec<(u64, u64)>>,
}

impl Journal {
    /// Opens (creating) the journal of content `hash` of `len` bytes. A
    /// journal of another content or length starts over empty; a torn or
    /// damaged tail is cut off.
    pub fn open(path: &Path, hash: &ContentHash, len: u64) -> anyhow::Result<Journal> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut raw = Vec::new();
        (&mut file)
            .take(MAX_JOURNAL)
            .read_to_end(&mut raw)
            .with_context(|| format!("reading {}", path.display()))?;
        let parsed = parse(&raw, hash).filter(|p| p.content_len == len);
        let (done, keep) = match parsed {
            Some(p) => (p.ranges, p.valid_len),
            None => {
                if !raw.is_empty() {
                    tracing::warn!(
                        "{}: not a journal of {hash} ({len} bytes); starting over",
                        path.display()
                    );
                }
                (Vec::new(), 0)
            }
        };
        if keep != raw.len() as u64 {
            if keep > 0 {
                tracing::warn!(
                    "{}: cutting a damaged tail of {} bytes",
                    path.display(),
                    raw.len() as u64 - keep
                );
            }
            file.set_len(keep)
                .with_context(|| format!("truncating {}", path.display()))?;
        }
        if keep == 0 {
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&header(hash, len))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        file.sync_data()
            .with_context(|| format!("syncing {}", path.display()))?;
        file.seek(SeekFrom::End(0))?;
        Ok(Journal {
            hash: *hash,
            file: Mutex::new(file),
            done: Mutex::new(done),
        })
    }

    /// Whether the verified ranges cover `r`.
    pub fn covers(&self, r: std::ops::Range<u64>) -> bool {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        peerdelta_protocol::swarm::covers(&done, r.start, r.end)
    }

    /// The verified ranges, merged and sorted.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.done.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records ranges whose bytes are verified, written and fsynced.
    pub fn record(&self, ranges: &[(u64, u64)]) -> anyhow::Result<()> {
        if ranges.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(RECORD_LEN * ranges.len());
        for &(o, l) in ranges {
            buf.extend_from_slice(&o.to_le_bytes());
            buf.extend_from_slice(&l.to_le_bytes());
            buf.extend_from_slice(&check(&self.hash, o, l));
        }
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&buf)
            .and_then(|()| f.sync_data())
            .context("writing the journal")?;
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.extend_from_slice(ranges);
        *done = peerdelta_protocol::swarm::merge(&done);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let h = ContentHash::of(b"content");
        let j = Journal::open(&path, &h, 100).unwrap();
        assert!(!j.covers(0..1));
        assert!(j.covers(5..5));
        j.record(&[(20, 10), (0, 10)]).unwrap();
        j.record(&[(10, 5)]).unwrap();
        for j in [j, Journal::open(&path, &h, 100).unwrap()] {
            assert!(j.covers(0..15));
            assert!(j.covers(3..12));
            assert!(!j.covers(14..21));
            assert!(j.covers(20..30));
            assert!(!j.covers(25..31));
        }
    }

    #[test]
    fn a_torn_tail_is_cut_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let h = ContentHash::of(b"content");
        let j = Journal::open(&path, &h, 1000).unwrap();
        j.record(&[(0, 10)]).unwrap();
        drop(j);
        // A crash mid-append: 7 bytes of a record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0x11; 7]).unwrap();
        drop(f);
        let j = Journal::open(&path, &h, 1000).unwrap();
        j.record(&[(100, 50)]).unwrap();
        drop(j);
        let p = read(&path, &h).unwrap();
        assert_eq!(p.ranges, vec![(0, 10), (100, 50)]);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            (HEADER_LEN + 2 * RECORD_LEN) as u64
        );
    }

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
        raw.extend(rec(0, 10, check(&h, 0, 10)));
        // A record without the right check (what the old format wrote).
        raw.extend(rec(10, 990, [0; 8]));
        raw.extend(rec(20, 10, check(&h, 20, 10)));
        let p = parse(&raw, &h).unwrap();
        assert_eq!(p.ranges, vec![(0, 10)], "reading stops at the bad record");
        assert_eq!(p.valid_len, (HEADER_LEN + RECORD_LEN) as u64);
        // Out of bounds, even with a good check.
        let mut raw2 = header(&h, 1000).to_vec();
        raw2.extend(rec(990, 20, check(&h, 990, 20)));
        raw2.extend(rec(u64::MAX, 2, check(&h, u64::MAX, 2)));
        assert!(parse(&raw2, &h).unwrap().ranges.is_empty());
        // Another content's journal, or no header at all.
        assert!(parse(&raw, &ContentHash::of(b"other")).is_none());
        assert!(parse(&raw[8..], &h).is_none());
        assert!(parse(b"", &h).is_none());
    }

    #[test]
    fn a_journal_of_another_length_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let h = ContentHash::of(b"content");
        Journal::open(&path, &h, 100)
            .unwrap()
            .record(&[(0, 100)])
            .unwrap();
        let j = Journal::open(&path, &h, 200).unwrap();
        assert!(!j.covers(0..1));
    }
}
