//! Progress of long work: an indicatif bar on a terminal, plain log lines
//! every few seconds otherwise (a multi-GB publish or download must never look
//! idle in a log), nothing with `--quiet` or `--json`.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::util::human_bytes;

/// How often plain log lines are written.
const LOG_EVERY: Duration = Duration::from_secs(2);

/// A progress reporter for work measured in files and bytes.
pub struct Progress {
    label: String,
    bar: Option<ProgressBar>,
    log: bool,
    files: AtomicU64,
    bytes: AtomicU64,
    total_files: u64,
    total_bytes: u64,
    started: Instant,
    last_log: Mutex<Instant>,
}

impl Progress {
    /// Starts reporting `label` over `total_files` files of `total_bytes`.
    /// `visible` false (quiet or JSON output) shows nothing.
    pub fn new(label: &str, total_files: u64, total_bytes: u64, visible: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (visible && terminal).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg:12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {prefix}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(label.to_owned());
            bar
        });
        Progress {
            label: label.to_owned(),
            bar,
            log: visible && !terminal,
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            total_files,
            total_bytes,
            started: Instant::now(),
            last_log: Mutex::new(Instant::now()),
        }
    }

    /// Records `files` more files and `bytes` more bytes done.
    pub fn add(&self, files: u64, bytes: u64) {
        let f = self.files.fetch_add(files, Ordering::Relaxed) + files;
        let b = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(bar) = &self.bar {
            bar.set_position(b);
            bar.set_prefix(format!("{f}/{} files", self.total_files));
        } else if self.log {
            let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= LOG_EVERY {
                *last = Instant::now();
                let secs = self.started.elapsed().as_secs_f64().max(1e-3);
                let rate = b as f64 / secs;
                let eta = if rate > 0.0 {
                    (self.total_bytes.saturating_sub(b)) as f64 / rate
                } else {
                    0.0
                };
                tracing::info!(
                    "{}: {f}/{} files, {}/{}, {}/s, ETA {:.0} s",
                    self.label,
                    self.total_files,
                    human_bytes(b),
                    human_bytes(self.total_bytes),
                    human_bytes(rate as u64),
                    eta
                );
            }
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
