//! Status reports on the DP: appended as JSON lines to
//! `<private>/status/reports.jsonl`, each write fsynced before the sender gets
//! its answer. `peerdelta dp status` lists them.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;
use peerdelta_protocol::status::StatusReport;
use serde::{Deserialize, Serialize};

use super::library::Library;
use crate::util::now_ms;

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

/// The append-only report log.
pub struct StatusStore {
    path: PathBuf,
    file: Mutex<File>,
}

impl StatusStore {
    /// Opens (creating) the log of `lib`.
    pub fn open(lib: &Library) -> anyhow::Result<Self> {
        let dir = lib.status_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("reports.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(StatusStore {
            path,
            file: Mutex::new(file),
        })
    }

    /// Appends one report durably.
    pub fn append(&self, report: &StatusReport, remote: &str) -> anyhow::Result<()> {
        let stored = StoredReport {
            received_ms: now_ms(),
            remote: remote.to_owned(),
            report: report.clone(),
        };
        let mut line = serde_json::to_vec(&stored).context("encoding a report")?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// Reads every stored report; returns them and the number of unreadable lines
/// (a torn last line after a crash, or damage).
pub fn read_all(lib: &Library) -> anyhow::Result<(Vec<StoredReport>, usize)> {
    let path = lib.status_dir().join("reports.jsonl");
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut out = Vec::new();
    let mut bad = 0;
    for line in BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<StoredReport>(&line) {
            Ok(r) => out.push(r),
            Err(_) => bad += 1,
        }
    }
    Ok((out, bad))
}
