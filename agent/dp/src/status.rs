//! Status reports on the DP: appended as JSON lines to
//! `<private>/status/reports.jsonl`, each write fsynced before the sender gets
//! its answer. `peerdelta dp status` lists them.
//!
//! The log is bounded: once `reports.jsonl` would pass its size limit it is
//! renamed to `reports.1.jsonl` (dropping the previous one, whose reports are
//! counted in `dropped`), so the log never takes more than twice the limit.
//! Reports are refused outright while the disk holding the log has less free
//! space than a floor, so reports can never fill the DP's disk. Reading
//! streams the log line by line, oldest first; nothing loads it whole.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use peerdelta_protocol::status::StatusReport;
use serde::{Deserialize, Serialize};

use super::library::Library;
use peerdelta_store::util::now_ms;

/// The current log file's name.
const CURRENT: &str = "reports.jsonl";
/// The rotated log file's name.
const ROTATED: &str = "reports.1.jsonl";
/// The count of reports dropped by rotation, as decimal text.
const DROPPED: &str = "dropped";
/// Longest line read back; a longer one is damage (reports are at most 16 KiB).
const MAX_LINE: usize = 64 * 1024;

/// A report as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredReport {
    /// When the DP received it (ms since the Unix epoch, DP clock).
    pub received_ms: u64,
    /// The address it came from.
    pub remote: String,
    /// The report.
    pub report: StatusReport,
}

/// Why a report was not stored.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The log's file system is nearly full.
    #[error("only {free} bytes free on the status log's disk")]
    LowSpace {
        /// Free bytes.
        free: u64,
    },
    /// Writing failed.
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

struct Log {
    file: File,
    len: u64,
    lines: u64,
}

/// The bounded, rotating report log.
pub struct StatusStore {
    dir: PathBuf,
    max_bytes: u64,
    min_free: u64,
    log: Mutex<Log>,
    dropped: AtomicU64,
}

impl StatusStore {
    /// Opens (creating) the log of `lib`, rotating at `max_bytes` and
    /// refusing reports while less than `min_free` bytes are free.
    pub fn open(lib: &Library, max_bytes: u64, min_free: u64) -> anyhow::Result<Self> {
        let dir = lib.status_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(CURRENT);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        let lines = count_lines(&path)?;
        Ok(StatusStore {
            dropped: AtomicU64::new(read_dropped(&dir)),
            dir,
            max_bytes: max_bytes.max(4096),
            min_free,
            log: Mutex::new(Log { file, len, lines }),
        })
    }

    /// Reports dropped by rotation since the library was created.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Appends one report durably, rotating the log first if it is full.
    pub fn append(&self, report: &StatusReport, remote: &str) -> Result<(), AppendError> {
        if let Some(free) = peerdelta_store::fsutil::free_bytes(&self.dir)
            && free < self.min_free
        {
            return Err(AppendError::LowSpace { free });
        }
        let stored = StoredReport {
            received_ms: now_ms(),
            remote: remote.to_owned(),
            report: report.clone(),
        };
        let mut line = serde_json::to_vec(&stored).context("encoding a report")?;
        line.push(b'\n');
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len > 0 && log.len + line.len() as u64 > self.max_bytes {
            self.rotate(&mut log)?;
        }
        let path = self.dir.join(CURRENT);
        log.file
            .write_all(&line)
            .and_then(|()| log.file.sync_data())
            .with_context(|| format!("writing {}", path.display()))?;
        log.len += line.len() as u64;
        log.lines += 1;
        Ok(())
    }

    /// Moves the current log over the rotated one, counting the reports
    /// that drops, and starts a new current log.
    fn rotate(&self, log: &mut Log) -> anyhow::Result<()> {
        let (current, rotated) = (self.dir.join(CURRENT), self.dir.join(ROTATED));
        let lost = count_lines(&rotated)?;
        let dropped = self.dropped() + lost;
        peerdelta_store::fsutil::write_atomic(
            &self.dir.join(DROPPED),
            dropped.to_string().as_bytes(),
        )?;
        std::fs::rename(&current, &rotated)
            .with_context(|| format!("rotating {}", current.display()))?;
        log.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&current)
            .with_context(|| format!("opening {}", current.display()))?;
        peerdelta_store::fsutil::sync_dir(&self.dir)?;
        self.dropped.store(dropped, Ordering::Relaxed);
        tracing::info!(
            dropped = lost,
            "status log rotated: {} reports moved to {ROTATED}",
            log.lines
        );
        log.len = 0;
        log.lines = 0;
        Ok(())
    }
}

fn count_lines(path: &Path) -> anyhow::Result<u64> {
    match File::open(path) {
        Ok(f) => {
            let mut n = 0u64;
            let mut r = BufReader::new(f);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let read = r
                    .by_ref()
                    .take(MAX_LINE as u64 + 1)
                    .read_until(b'\n', &mut buf)
                    .with_context(|| format!("reading {}", path.display()))?;
                if read == 0 {
                    return Ok(n);
                }
                n += u64::from(buf.ends_with(b"\n"));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
    }
}

fn read_dropped(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(DROPPED))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// What reading the log found besides the reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadStats {
    /// Unreadable lines (a torn last line after a crash, or damage).
    pub bad_lines: u64,
    /// Reports dropped by rotation before these.
    pub dropped: u64,
}

/// Calls `each` with every stored report, oldest first, reading the log a
/// line at a time (the rotated file, then the current one).
pub fn for_each(
    lib: &Library,
    mut each: impl FnMut(StoredReport) -> anyhow::Result<()>,
) -> anyhow::Result<ReadStats> {
    let dir = lib.status_dir();
    let mut stats = ReadStats {
        dropped: read_dropped(&dir),
        ..ReadStats::default()
    };
    for name in [ROTATED, CURRENT] {
        let path = dir.join(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let mut r = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = r
                .by_ref()
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            if line.len() > MAX_LINE {
                // Skip the rest of an overlong line.
                stats.bad_lines += 1;
                loop {
                    line.clear();
                    let n = r
                        .by_ref()
                        .take(MAX_LINE as u64)
                        .read_until(b'\n', &mut line)?;
                    if n == 0 || line.ends_with(b"\n") {
                        break;
                    }
                }
                continue;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<StoredReport>(&line) {
                Ok(r) => each(r)?,
                Err(_) => stats.bad_lines += 1,
            }
        }
    }
    Ok(stats)
}

/// `s` with control characters escaped (`\n`, `\u{1b}`, …), for printing
/// fields that came from the network on a terminal.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerdelta_protocol::manifest::PackageName;
    use peerdelta_protocol::status::StatusEvent;

    fn report(i: u64) -> StatusReport {
        StatusReport {
            agent: format!("agent-{i}"),
            package: PackageName::new("app").unwrap(),
            version: 1 + i,
            event: StatusEvent::Held {
                versions: vec![1, 2, 3],
            },
            time_ms: i,
        }
    }

    #[test]
    fn the_log_rotates_counts_what_it_drops_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::at(&dir.path().join("lib"), None);
        let store = StatusStore::open(&lib, 4096, 0).unwrap();
        for i in 0..200 {
            store.append(&report(i), "127.0.0.1:1").unwrap();
        }
        let status = lib.status_dir();
        let sizes: u64 = [CURRENT, ROTATED]
            .iter()
            .map(|n| std::fs::metadata(status.join(n)).map_or(0, |m| m.len()))
            .sum();
        assert!(sizes <= 2 * 4096, "the log takes {sizes} bytes");
        let mut seen = Vec::new();
        let stats = for_each(&lib, |r| {
            seen.push(r.report.time_ms);
            Ok(())
        })
        .unwrap();
        assert!(!seen.is_empty());
        assert!(seen.windows(2).all(|w| w[0] + 1 == w[1]), "{seen:?}");
        assert_eq!(*seen.last().unwrap(), 199);
        assert_eq!(stats.dropped + seen.len() as u64, 200);
        assert_eq!(store.dropped(), stats.dropped);
        assert!(stats.dropped > 0);
        // The count survives a restart.
        let again = StatusStore::open(&lib, 4096, 0).unwrap();
        assert_eq!(again.dropped(), stats.dropped);
    }

    #[test]
    fn a_nearly_full_disk_refuses_reports() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::at(&dir.path().join("lib"), None);
        let store = StatusStore::open(&lib, 1 << 20, u64::MAX).unwrap();
        assert!(matches!(
            store.append(&report(1), "x"),
            Err(AppendError::LowSpace { .. })
        ));
    }

    #[test]
    fn damaged_and_overlong_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::at(&dir.path().join("lib"), None);
        let store = StatusStore::open(&lib, 1 << 20, 0).unwrap();
        store.append(&report(1), "x").unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(lib.status_dir().join(CURRENT))
            .unwrap();
        f.write_all(&vec![b'x'; 3 * MAX_LINE]).unwrap();
        f.write_all(b"\nnot json\n").unwrap();
        drop(f);
        store.append(&report(2), "x").unwrap();
        let mut n = 0;
        let stats = for_each(&lib, |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((n, stats.bad_lines), (2, 2));
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain ü"), "plain ü");
        assert_eq!(escape_controls("a\u{1b}[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
    }
}
