//! A content being built: its data file and the journal of which ranges of
//! it are verified and durable (`DIR/data`, `DIR/journal`).
//!
//! [`Partial::write`] is the only way bytes get into the data file, and it
//! takes a [`VerifiedRun`]: only the function that checked a run's BLAKE3
//! makes one. [`Partial::commit`] fsyncs the data and then journals what was
//! written, so a range is recorded only once its verified bytes are durable.
//! The journal's format and rules are [`peerdelta_protocol::journal`]'s; this
//! module reads it, cuts a damaged tail, and appends durably.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use peerdelta_protocol::ContentHash;
use peerdelta_protocol::journal::{self as format, MAX_JOURNAL, Parsed, RECORD_LEN};
use peerdelta_protocol::needsfile::VerifiedRun;
use peerdelta_protocol::rangeset::RangeSet;

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
    done: Mutex<RangeSet>,
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
            done: Mutex::new(RangeSet::from_ranges(&done)),
        })
    }

    /// Whether the verified ranges cover `r`.
    pub fn covers(&self, r: std::ops::Range<u64>) -> bool {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.covers(r.start, r.end)
    }

    /// The verified ranges, merged and sorted.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ranges()
            .to_vec()
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
        for &(o, l) in ranges {
            done.insert(o, l);
        }
        Ok(())
    }
}

/// A content being built in a directory of its own.
pub struct Partial {
    dir: std::path::PathBuf,
    data: File,
    journal: Journal,
    written: Mutex<Vec<(u64, u64)>>,
}

impl Partial {
    /// Opens (creating) the partial content `hash` of `len` bytes in `dir`.
    pub fn open(dir: &Path, hash: &ContentHash, len: u64) -> anyhow::Result<Partial> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let data_path = dir.join("data");
        let data = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&data_path)
            .with_context(|| format!("opening {}", data_path.display()))?;
        data.set_len(len)
            .with_context(|| format!("sizing {}", data_path.display()))?;
        Ok(Partial {
            journal: Journal::open(&dir.join("journal"), hash, len)?,
            dir: dir.to_owned(),
            data,
            written: Mutex::new(Vec::new()),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data file's path.
    pub fn data_path(&self) -> std::path::PathBuf {
        self.dir.join("data")
    }

    /// Whether `r` is verified and durable.
    pub fn covers(&self, r: std::ops::Range<u64>) -> bool {
        self.journal.covers(r)
    }

    /// The verified ranges, merged and sorted.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.journal.ranges()
    }

    /// Writes a verified run's bytes where they go (durable and journaled
    /// at the next [`commit`](Self::commit)).
    pub fn write(&self, run: VerifiedRun<'_>) -> anyhow::Result<()> {
        use std::os::unix::fs::FileExt;
        let (bytes, at) = (run.bytes(), run.target_offset());
        self.data
            .write_all_at(bytes, at)
            .with_context(|| format!("writing bytes at {at} of {}", self.data_path().display()))?;
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, bytes.len() as u64));
        Ok(())
    }

    /// Makes what was written durable, then records it in the journal.
    pub fn commit(&self) -> anyhow::Result<()> {
        let ranges = std::mem::take(&mut *self.written.lock().unwrap_or_else(|e| e.into_inner()));
        if ranges.is_empty() {
            return Ok(());
        }
        self.data
            .sync_data()
            .with_context(|| format!("syncing {}", self.data_path().display()))?;
        self.journal.record(&ranges)
    }

    /// Reads bytes of the data file (verified ones, for peers or a base).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.data.read_exact_at(buf, offset)
    }

    /// Commits and syncs; returns the data file's path, to verify the
    /// whole content.
    pub fn finish(&self) -> anyhow::Result<std::path::PathBuf> {
        self.commit()?;
        self.data
            .sync_all()
            .with_context(|| format!("syncing {}", self.data_path().display()))?;
        Ok(self.data_path())
    }
}

/// The verified ranges of partial content `hash` in `dir` and its data
/// file (what can be given to peers before it is finished), without opening
/// it for writing.
pub fn coverage(dir: &Path, hash: &ContentHash) -> (Vec<(u64, u64)>, std::path::PathBuf) {
    let ranges = read(&dir.join("journal"), hash)
        .map(|p| p.ranges)
        .unwrap_or_default();
    (ranges, dir.join("data"))
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

#[cfg(test)]
mod partial_tests {
    use super::*;
    use peerdelta_protocol::needsfile::{PlacedRun, Run, RunSource};

    #[test]
    fn only_verified_runs_are_written_and_journaled_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"hello, partial".to_vec();
        let h = ContentHash::of(&bytes);
        let p = Partial::open(dir.path(), &h, bytes.len() as u64).unwrap();
        let run = PlacedRun {
            index: 0,
            target_offset: 0,
            run: Run {
                source: RunSource::Origin,
                len: 5,
                hash: ContentHash::of(&bytes[..5]),
            },
        };
        assert!(run.verify(b"HELLO").is_err());
        p.write(run.verify(&bytes[..5]).unwrap()).unwrap();
        assert!(!p.covers(0..5), "not journaled before commit");
        p.commit().unwrap();
        assert!(p.covers(0..5));
        assert_eq!(coverage(dir.path(), &h).0, vec![(0, 5)]);
        let mut back = [0u8; 5];
        p.read_at(&mut back, 0).unwrap();
        assert_eq!(&back, b"hello");
    }
}
