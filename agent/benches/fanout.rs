//! `cargo bench -p peerdelta-agent --bench fanout`: LAN fan-out of a 1 GiB
//! package version to 1, 4 and 8 agents on loopback.
//!
//! One version of a package holding one incompressible file of
//! `PEERDELTA_FANOUT_MIB` MiB (default 1024) is published and served by a
//! DP on loopback; the agents' WAN is capped at `PEERDELTA_FANOUT_RATE`
//! (default "25 MiB/s", a fast branch link), as a branch's is. For each
//! subnet size (`PEERDELTA_FANOUT_AGENTS`, default "1,4,8") fresh agent
//! daemons (real libp2p on loopback, in this process) with empty caches ask
//! for it at once; the figure is the time until the last one has it
//! verified in its cache. One WAN download per subnet means the master's
//! download bounds the time; swarming (peers take runs from the master and
//! from each other while it works) keeps 8 agents close to 1. Target: 8
//! agents <= 1.5 x 1 agent.

use peerdelta_protocol::publish::FAR_VERSIONS;
use std::time::Duration;

use anyhow::Context;
use peerdelta_agent::local::{LocalDp, master_of, roll_out, start_branch, verify_caches};
use peerdelta_dp::library::Library;
use peerdelta_dp::publish::{PublishOptions, publish};
use peerdelta_protocol::manifest::PackageName;
use peerdelta_store::util::{cores, human_bytes};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Incompressible bytes (xorshift), written in 64 MiB pieces.
fn write_random(path: &std::path::Path, len: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = len;
    let mut buf = Vec::with_capacity(64 << 20);
    while left > 0 {
        buf.clear();
        let n = left.min(64 << 20) as usize;
        while buf.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.extend_from_slice(&x.to_le_bytes());
        }
        buf.truncate(n);
        f.write_all(&buf)?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mib: u64 = env_or("PEERDELTA_FANOUT_MIB", "1024")
        .parse()
        .context("PEERDELTA_FANOUT_MIB")?;
    let rate = env_or("PEERDELTA_FANOUT_RATE", "25 MiB/s");
    let counts: Vec<usize> = env_or("PEERDELTA_FANOUT_AGENTS", "1,4,8")
        .split(',')
        .map(|s| s.trim().parse().context("PEERDELTA_FANOUT_AGENTS"))
        .collect::<anyhow::Result<_>>()?;
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let lib = Library::at(&work.path().join("library"), None);
    let key = lib.init()?;
    let package = PackageName::new("image").map_err(|e| anyhow::anyhow!("{e}"))?;
    let src = work.path().join("src");
    std::fs::create_dir_all(&src)?;
    write_random(&src.join("image.bin"), mib << 20)?;
    let s = publish(
        &lib,
        &PublishOptions {
            package: package.clone(),
            source: src.clone(),
            min_saving: 4096,
            threads: cores(),
            progress: false,
            pack_level: 9,
            far_versions: FAR_VERSIONS,
        },
    )?;
    std::fs::remove_dir_all(&src)?;
    println!(
        "LAN fan-out of {} (one incompressible file) on {} cores; WAN capped at {rate}",
        human_bytes(s.bytes),
        cores()
    );
    println!(
        "{:>6}  {:>10}  {:>6}  {:>10}  {:>12}  master",
        "agents", "all done", "vs 1", "DP bytes", "LAN bytes"
    );
    let mut base: Option<f64> = None;
    let mut last = 0.0;
    for &n in &counts {
        let dir = work.path().join(format!("branch-{n}"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let (secs, wan, lan, master) = rt.block_on(async {
            let dp = LocalDp::start(&lib).await?;
            let agents = start_branch(&dir, &dp.url, key, n, Some(&rate)).await?;
            let before = dp.payload_bytes().await?;
            let (views, took) = roll_out(&agents, &package, 1, Duration::from_secs(3600)).await?;
            let wan = dp.payload_bytes().await? - before;
            tokio::task::block_in_place(|| verify_caches(&dir, &agents))?;
            let lan: u64 = views
                .iter()
                .filter_map(|j| j.summary.as_ref().map(|s| s.lan_bytes))
                .sum();
            anyhow::Ok((took.as_secs_f64(), wan, lan, master_of(&views)))
        })?;
        rt.shutdown_timeout(Duration::from_secs(5));
        std::fs::remove_dir_all(&dir)?;
        let one = *base.get_or_insert(secs);
        println!(
            "{n:>6}  {secs:>9.1}s  {:>5.2}x  {:>10}  {:>12}  {master}",
            secs / one,
            human_bytes(wan),
            human_bytes(lan)
        );
        last = secs / one;
    }
    if counts.first() == Some(&1) && counts.last() == Some(&8) {
        println!(
            "target: 8 agents <= 1.5 x 1 agent: {} ({last:.2}x)",
            if last <= 1.5 { "met" } else { "unmet" }
        );
    }
    Ok(())
}
