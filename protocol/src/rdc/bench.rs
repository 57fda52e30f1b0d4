//! The RDC throughput benchmark, shared by `cargo bench -p peerdelta-protocol`
//! and `peerdelta rdc bench`. The caller passes the clock, so this module still
//! reads none.

use std::time::Duration;

use md4::{Digest, Md4};

use super::{Chunk, Chunker, ParallelOptions, Params, sign_parallel};

/// One measured workload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    /// What was measured.
    pub name: &'static str,
    /// Threads used.
    pub threads: usize,
    /// Best throughput over the rounds, in MB/s (10^6 bytes per second).
    pub mb_per_s: f64,
}

/// All workloads over one buffer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Buffer size in bytes.
    pub bytes: u64,
    /// Rounds per workload (the best is kept).
    pub rounds: usize,
    /// MD4 alone, boundaries only, full signature, the full signature with the
    /// portable kernel (the same as the full signature on a CPU without
    /// AVX-512), parallel signature.
    pub rows: Vec<BenchRow>,
}

impl BenchReport {
    fn rate(&self, name: &str) -> f64 {
        self.rows
            .iter()
            .find(|r| r.name == name)
            .map_or(0.0, |r| r.mb_per_s)
    }

    /// Full single-threaded signature as a fraction of MD4 alone.
    pub fn signature_vs_md4(&self) -> f64 {
        self.rate(SIGNATURE) / self.rate(MD4_ALONE)
    }

    /// Parallel signature over single-threaded signature.
    pub fn parallel_speedup(&self) -> f64 {
        self.rate(PARALLEL) / self.rate(SIGNATURE)
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} MiB buffer, level-1 parameters (window 48, horizon 1024), best of {} rounds\n",
            self.bytes >> 20,
            self.rounds
        );
        s.push_str(&format!(
            "{:<34} {:>7} {:>10}\n",
            "workload", "threads", "MB/s"
        ));
        for r in &self.rows {
            s.push_str(&format!(
                "{:<34} {:>7} {:>10.0}\n",
                r.name, r.threads, r.mb_per_s
            ));
        }
        s.push_str(&format!(
            "signature / MD4 alone: {:.0}%   parallel / single-threaded signature: {:.2}x\n",
            100.0 * self.signature_vs_md4(),
            self.parallel_speedup()
        ));
        s
    }
}

const MD4_ALONE: &str = "MD4 alone";
const BOUNDARIES: &str = "H3 + FilterMax boundaries only";
const SIGNATURE: &str = "level-1 signature (boundaries+MD4)";
const PARALLEL: &str = "level-1 signature, parallel";
const PORTABLE: &str = "level-1 signature, portable kernel";

/// Measures the four workloads on `buf`, keeping the best of `rounds` runs.
/// `elapsed` times a closure (the caller's clock).
pub fn run(
    buf: &[u8],
    threads: usize,
    rounds: usize,
    elapsed: &mut dyn FnMut(&mut dyn FnMut()) -> Duration,
) -> BenchReport {
    let params = Params::LEVEL1;
    let mut rows = Vec::new();
    let mut best = |name: &'static str, threads: usize, work: &mut dyn FnMut()| {
        let mut fastest = Duration::MAX;
        for _ in 0..rounds.max(1) {
            fastest = fastest.min(elapsed(work));
        }
        let mb_per_s = buf.len() as f64 / fastest.as_secs_f64().max(1e-9) / 1e6;
        rows.push(BenchRow {
            name,
            threads,
            mb_per_s,
        });
    };
    let mut sink = 0u64;
    best(MD4_ALONE, 1, &mut || sink ^= u64::from(Md4::digest(buf)[0]));
    best(BOUNDARIES, 1, &mut || {
        let mut c = Chunker::boundaries_only(params);
        c.push(buf, &mut |x| sink ^= x.offset);
        c.finish(&mut |x| sink ^= x.offset);
    });
    let mut sequential = 0u64;
    best(SIGNATURE, 1, &mut || {
        sequential = fold_chunks(Chunker::new(params), buf)
    });
    let mut portable = 0u64;
    best(PORTABLE, 1, &mut || {
        portable = fold_chunks(Chunker::portable(params), buf)
    });
    assert_eq!(
        sequential, portable,
        "the portable kernel's signature differs from the AVX-512 one"
    );
    let mut parallel = 0u64;
    best(PARALLEL, threads, &mut || {
        parallel = 0;
        let opts = ParallelOptions::new(threads);
        let _ = sign_parallel(buf, params, opts, &mut |x| parallel = fold(parallel, x));
    });
    assert_eq!(
        sequential, parallel,
        "parallel signature differs from the sequential one"
    );
    std::hint::black_box(sink);
    BenchReport {
        bytes: buf.len() as u64,
        rounds,
        rows,
    }
}

/// Folds one chunk into a running digest of a signature (order matters).
fn fold(acc: u64, c: &Chunk) -> u64 {
    acc.rotate_left(5) ^ u64::from(c.md4[0]) ^ c.offset
}

/// The folded signature of `buf` chunked by `c`.
fn fold_chunks(mut c: Chunker, buf: &[u8]) -> u64 {
    let mut acc = 0u64;
    c.push(buf, &mut |x| acc = fold(acc, &x));
    c.finish(&mut |x| acc = fold(acc, &x));
    acc
}

/// A deterministic pseudo-random buffer for the benchmark (no file given).
pub fn sample_buffer(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
