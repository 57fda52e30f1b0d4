//! The journal of a content being built, on disk: the format and its
//! rules are [`peerdelta_protocol::journal`]'s; this module reads, truncates
//! a damaged tail, and appends durably.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use peerdelta_protocol::ContentHash;
use peerdelta_protocol::journal::{self as format, MAX_JOURNAL, Parsed, RECORD_LEN};

/// Reads the journal at `path` for content `hash` (at most [`MAX_JOURNAL`]
/// bytes); `None` if it is missing or not that content's.
pub fn read(path: &Path, hash: &ContentHash) -> Option<Parsed> {
    let f = File::open(path).ok()?;
    let mut raw = Vec::new();
    f.take(MAX_JOURNAL).read_to_end(&mut raw).ok()?;
    format::parse(&raw, hash)
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
        let parsed = format::parse(&raw, hash).filter(|p| p.content_len == len);
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
            file.write_all(&format::header(hash, len))
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
        format::encode_records(&self.hash, ranges, &mut buf);
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
            (format::HEADER_LEN + 2 * RECORD_LEN) as u64
        );
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
