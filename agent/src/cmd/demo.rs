//! `peerdelta demo`: the README's first command. On this machine, with
//! nothing set up: a DP (a library, a key pair, an HTTP origin on loopback)
//! publishes two versions of a generated package, and a branch subnet of
//! agent daemons (real libp2p on loopback, static peer lists) gets v1 and
//! then v2. The DP's own counters show what crossed the "WAN": one download
//! per subnet, and for v2 only the delta.

use peerdelta_protocol::publish::FAR_VERSIONS;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use peerdelta_protocol::manifest::PackageName;

use crate::local::{LocalDp, master_of, roll_out, start_branch, verify_caches};
use peerdelta_dp::library::Library;
use peerdelta_dp::publish::{PublishOptions, publish};

/// Arguments of `peerdelta demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Size of the package's large file in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    mib: u64,
    /// Agents on the branch subnet.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=32))]
    agents: u64,
    /// Keep the files in this directory instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Deterministic bytes that look like a package: runs of text-like and
/// binary-like data.
fn package_bytes(len: usize, seed: u64) -> Vec<u8> {
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
    new.extend_from_slice(&package_bytes(40_000, 7)); // inserted code
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
    crate::logging::init(crate::logging::LogFormat::Text, "warn");
    let (dir, temporary) = match a.dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("peerdelta-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = rt.block_on(demo(&dir, (a.mib << 20) as usize, a.agents as usize));
    rt.shutdown_timeout(Duration::from_secs(2));
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Writes version `v` of the demo package's tree into `dir`.
fn write_tree(dir: &Path, v: u64, big: &[u8]) -> anyhow::Result<()> {
    let manual = package_bytes(300_000, 5);
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("setup/app.bin", big.to_vec()),
        (
            "setup/readme.txt",
            b"Install with setup/app.bin.\n".to_vec(),
        ),
        (
            "config/defaults.ini",
            format!("[app]\nversion = {v}\nupdate_channel = stable\n").into_bytes(),
        ),
    ];
    // v2 renames the manual: a rename costs nothing.
    files.push((
        if v == 1 {
            "docs/manual.txt"
        } else {
            "docs/guide.txt"
        },
        manual,
    ));
    for (rel, bytes) in files {
        let path = dir.join(rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn mb(b: u64) -> String {
    if b >= 10_000_000 {
        format!("{:.1} MB", b as f64 / 1e6)
    } else {
        format!("{:.1} kB", b as f64 / 1e3)
    }
}

async fn demo(dir: &Path, len: usize, n: usize) -> anyhow::Result<()> {
    println!("peerdelta demo: a DP and a branch subnet of {n} agents on this machine");
    println!("  working in {}", dir.display());

    // The DP: a library, a key pair, two published versions.
    let lib = Library::at(&dir.join("library"), None);
    let key = lib.init()?;
    let package = PackageName::new("demo-app").map_err(|e| anyhow::anyhow!("{e}"))?;
    let v1_big = package_bytes(len, 42);
    let v2_big = next_version(&v1_big);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut sizes = Vec::new();
    for (v, big) in [(1u64, &v1_big), (2, &v2_big)] {
        let src = dir.join(format!("source-v{v}"));
        write_tree(&src, v, big)?;
        let lib2 = lib.clone();
        let opts = PublishOptions {
            package: package.clone(),
            source: src,
            min_saving: 4096,
            threads,
            progress: false,
            pack_level: 9,
            far_versions: FAR_VERSIONS,
        };
        let s = tokio::task::spawn_blocking(move || publish(&lib2, &opts))
            .await
            .context("publishing")??;
        println!(
            "  DP published {package} v{}: {} files, {} ({} needs lists, {:.1} s)",
            s.version,
            s.files,
            mb(s.bytes),
            s.needs_lists_written,
            s.seconds
        );
        sizes.push(s.bytes);
    }
    let dp = LocalDp::start(&lib).await?;
    println!(
        "  DP serving {} (its own counters measure the WAN below)",
        dp.url
    );
    let agents = start_branch(dir, &dp.url, key, n, None).await?;
    println!("  {n} agents on 127.0.0.1 found each other (libp2p: TCP, noise, yamux)");

    let mut totals = Vec::new();
    for (v, what) in [(1u64, "no earlier version"), (2, "all holding v1")] {
        let before = dp.payload_bytes().await?;
        let (views, took) = roll_out(&agents, &package, v, Duration::from_secs(600)).await?;
        let wan = dp.payload_bytes().await? - before;
        let lan: u64 = views
            .iter()
            .filter_map(|j| j.summary.as_ref().map(|s| s.lan_bytes))
            .sum();
        let full = sizes[(v - 1) as usize] * n as u64;
        println!(
            "  v{v} to {n} agents ({what}): master {}; DP sent {} for {n} x {} of files ({:.2}%), peers shared {} over the LAN, {:.1} s",
            master_of(&views),
            mb(wan),
            mb(sizes[(v - 1) as usize]),
            100.0 * wan as f64 / full as f64,
            mb(lan),
            took.as_secs_f64()
        );
        totals.push((wan, full));
    }
    tokio::task::block_in_place(|| verify_caches(dir, &agents))?;
    let (wan, full) = totals[1];
    println!(
        "  every agent's cache verifies; the v2 update cost the WAN {} instead of {}: {:.1} MB saved",
        mb(wan),
        mb(full),
        full.saturating_sub(wan) as f64 / 1e6
    );
    Ok(())
}
