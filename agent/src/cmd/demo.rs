//! `peerdelta demo`: the README's first command. For now it shows the RDC
//! core on a generated package file: an old and a new version with typical
//! edits, the recursive needs list, the rebuild, and the bytes saved.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Args;
use peerdelta_protocol::needs::{SeedLevels, apply, recursive_needs, summarize};
use peerdelta_protocol::rdc::{LevelParams, MAX_LEVELS, depth_for};

use super::rdc::sign_file;
use crate::fsutil::FileSource;

/// Arguments of `peerdelta demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Size of the generated file in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    mib: u64,
    /// Keep the files in this directory instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Deterministic bytes that look like a package: runs of text-like and
/// binary-like data.
fn package(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words: [&[u8]; 8] = [
        b"install ",
        b"version ",
        b"config ",
        b"library ",
        b"0x1f ",
        b"\n",
        b"package ",
        b"branch ",
    ];
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let r = next();
        let run = 256 + (r % 8192) as usize;
        if r & 1 == 0 {
            for _ in 0..run / 8 {
                out.extend_from_slice(&next().to_le_bytes());
            }
        } else {
            while out.len() < len && run > 0 && out.len() % run != 0 {
                out.extend_from_slice(words[(next() % 8) as usize]);
            }
            out.extend_from_slice(words[(r % 8) as usize]);
        }
    }
    out.truncate(len);
    out
}

/// Version 2: a few edits, an insertion, a deletion and a moved block.
fn next_version(old: &[u8]) -> Vec<u8> {
    let n = old.len();
    let mut new = Vec::with_capacity(n + 100_000);
    new.extend_from_slice(&old[..n / 5]);
    new.extend_from_slice(&package(40_000, 7)); // inserted code
    new.extend_from_slice(&old[n / 5..n / 2]);
    new.extend_from_slice(&old[n / 2 + 30_000..3 * n / 4]); // 30 KB deleted
    new.extend_from_slice(&old[n - n / 20..]); // the tail moved up
    new.extend_from_slice(&old[3 * n / 4..n - n / 20]);
    for k in 1..8 {
        let at = k * new.len() / 8;
        new[at..at + 16].copy_from_slice(b"patched version2"); // small in-place edits
    }
    new
}

/// Runs the demo.
pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let (dir, temporary) = match a.dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("peerdelta-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = demo(&dir, (a.mib << 20) as usize);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn demo(dir: &std::path::Path, len: usize) -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (v1, v2, out) = (
        dir.join("package-v1.bin"),
        dir.join("package-v2.bin"),
        dir.join("rebuilt-v2.bin"),
    );
    println!(
        "peerdelta demo: MS-RDC differential update of one {} MiB package file",
        len >> 20
    );
    let old = package(len, 42);
    let new = next_version(&old);
    std::fs::write(&v1, &old).with_context(|| format!("writing {}", v1.display()))?;
    std::fs::write(&v2, &new).with_context(|| format!("writing {}", v2.display()))?;
    println!(
        "  v1: {} bytes   v2: {} bytes   ({})",
        old.len(),
        new.len(),
        dir.display()
    );

    let params = LevelParams::default();
    let t = Instant::now();
    let mut source = sign_file(&v2, params, MAX_LEVELS, threads, true, &mut |_, _| {})?;
    source.files.truncate(depth_for(&source.sizes()));
    let seed = SeedLevels::from_files(sign_file(
        &v1,
        params,
        MAX_LEVELS,
        threads,
        true,
        &mut |_, _| {},
    )?)?;
    let sign_secs = t.elapsed().as_secs_f64();
    let outcome = recursive_needs(&source, &seed, params)?;
    let sum = summarize(&outcome.needs);
    println!(
        "  signed both versions on {threads} threads in {sign_secs:.2} s ({:.0} MB/s)",
        (old.len() + new.len()) as f64 / sign_secs / 1e6
    );
    for l in &outcome.levels {
        println!(
            "  signature level {}: {:>9} bytes, {:>9} sent",
            l.level, l.file_bytes, l.transferred_bytes
        );
    }
    println!(
        "  needs list: {} runs, {} bytes from v1, {} bytes from the source",
        sum.needs, sum.seed_bytes, sum.source_bytes
    );

    let seed_src = FileSource::open(&v1)?;
    let source_src = FileSource::open(&v2)?;
    let mut rebuilt = Vec::with_capacity(new.len());
    apply(&outcome.needs, &seed_src, &source_src, &mut |b| {
        rebuilt.extend_from_slice(b)
    })?;
    std::fs::write(&out, &rebuilt).with_context(|| format!("writing {}", out.display()))?;
    ensure!(rebuilt == new, "the rebuilt file differs from v2");
    let wan = sum.source_bytes + outcome.signature_bytes();
    println!("  rebuilt v2 from v1 + needs list: byte-identical");
    println!(
        "  WAN bytes: {wan} instead of {} ({:.2}% of a full download, {:.1} MB saved)",
        new.len(),
        100.0 * wan as f64 / new.len() as f64,
        (new.len() as u64 - wan) as f64 / 1e6
    );
    Ok(())
}
