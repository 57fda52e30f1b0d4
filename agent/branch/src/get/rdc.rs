//! Client-side recursive RDC (MS-RDC §3.1.5.4): a receiver more than
//! four versions behind, with an older version of the file, fetches the
//! content's signature levels top down, only the parts that differ from its
//! own, then the file's differing ranges; the result is checked against the
//! content's BLAKE3. Only the master does this (the DP is asked); peers then
//! take the finished content's runs.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use anyhow::Context;
use peerdelta_protocol::fetchplan;
use peerdelta_protocol::manifest::FileEntry;
use peerdelta_protocol::needs::{Need, RecursivePlan, SeedLevels};
use peerdelta_protocol::rdc::{LevelParams, MAX_LEVELS, SignatureBuilder};
use peerdelta_protocol::{ContentHash, layout, sigstore};
use peerdelta_store::content::verify_file;

use super::JobError;
use super::io::Io;

/// Client-side recursive RDC from a cached seed: the content's signature
/// levels are fetched top down, only the parts that differ from the seed's,
/// then the file's differing ranges. Checked against the content's BLAKE3.
pub(crate) async fn rdc(
    io: &Io,
    f: &FileEntry,
    seed: ContentHash,
    params: &LevelParams,
) -> Result<(), JobError> {
    let sig_rel = layout::sigs(&f.hash);
    let head_len = sigstore::HEADER_FETCH.min(f.sig.len);
    let head = io
        .client
        .get_ranges(&sig_rel, &[(0, head_len)], f.sig.len)
        .await?;
    let (header, start) =
        sigstore::decode_header(&head[0]).map_err(|e| JobError::Dp(format!("{sig_rel}: {e}")))?;
    // Levels, parameters and lengths must be what the signed manifest says
    // before any of them sizes a request or a buffer.
    header
        .check_against(start, &f.sig, params, f.size)
        .map_err(|e| JobError::Dp(format!("{sig_rel}: {e}")))?;
    let seed_path = io.cache.content_path(&seed);
    let params = header.params;
    let seed_levels = {
        let p = seed_path.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<SeedLevels> {
            let src = peerdelta_store::fsutil::FileSource::open(&p)?;
            let mut b = SignatureBuilder::new(params, MAX_LEVELS);
            let mut buf = vec![0u8; 1 << 20];
            let mut pos = 0u64;
            use peerdelta_protocol::rdc::ReadAt;
            while pos < src.len() {
                let n = (src.len() - pos).min(buf.len() as u64) as usize;
                src.read_exact_at(&mut buf[..n], pos)?;
                b.push(&buf[..n], &mut |_, _| {});
                pos += n as u64;
            }
            Ok(SeedLevels::from_files(b.finish(&mut |_, _| {}))?)
        })
        .await
        .map_err(|e| anyhow::anyhow!("signing the seed: {e}"))??
    };
    let depth = header.depth();
    let level_range = |level: usize| {
        header
            .level_range(start, level)
            .ok_or_else(|| JobError::Dp(format!("{sig_rel}: no level {level}")))
    };
    let top_r = level_range(depth)?;
    let top = io
        .client
        .get_ranges(
            &sig_rel,
            &[(top_r.start, top_r.end - top_r.start)],
            f.sig.len,
        )
        .await?;
    let mut plan = RecursivePlan::new(params, depth, &top[0], &seed_levels)
        .map_err(|e| JobError::Dp(format!("{e}")))?;
    while plan.level() > 1 {
        let below = plan.level() - 1;
        let r = level_range(below)?;
        let seed_file = seed_levels.file(below).unwrap_or_default();
        let mut rebuilt = Vec::with_capacity((r.end - r.start) as usize);
        let wanted: Vec<(u64, u64)> = plan
            .needs()
            .iter()
            .filter_map(|n| match *n {
                Need::Source { offset, len } => Some((r.start + offset, len)),
                Need::Seed { .. } => None,
            })
            .collect();
        // Each needed range is a unit, whatever requests carry its pieces.
        let units: Vec<(usize, u64, u64)> = wanted
            .iter()
            .enumerate()
            .map(|(k, &(o, l))| (k, o, l))
            .collect();
        let mut asm = fetchplan::Assembler::new(units);
        let mut fetched: HashMap<usize, Vec<u8>> = HashMap::new();
        for req in fetchplan::plan_split(&wanted, io.client.limits(io.limits)) {
            let got = io
                .client
                .get_ranges(&sig_rel, &req.ranges, f.sig.len)
                .await?;
            for ((o, _), b) in req.ranges.iter().zip(got) {
                fetched.extend(asm.add(*o, &b));
            }
        }
        let mut next_source = 0usize;
        for n in plan.needs() {
            match *n {
                Need::Seed { offset, len } => {
                    let s = seed_file
                        .get(offset as usize..(offset + len) as usize)
                        .ok_or_else(|| JobError::Dp("seed range".into()))?;
                    rebuilt.extend_from_slice(s);
                }
                Need::Source { .. } => {
                    let b = fetched
                        .remove(&next_source)
                        .ok_or_else(|| JobError::Dp(format!("{sig_rel}: a range never arrived")))?;
                    rebuilt.extend_from_slice(&b);
                    next_source += 1;
                }
            }
        }
        plan.descend(&rebuilt, &seed_levels)
            .map_err(|e| JobError::Dp(format!("{sig_rel}: {e}")))?;
    }
    // Level 1: the file.
    let dir = io.cache.partial_dir(&f.hash);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let data_path = dir.join("rdc-data");
    let data =
        File::create(&data_path).with_context(|| format!("creating {}", data_path.display()))?;
    data.set_len(f.size).context("sizing")?;
    let seed_file =
        File::open(&seed_path).with_context(|| format!("opening {}", seed_path.display()))?;
    let mut at = 0u64;
    let mut source: Vec<(u64, u64, u64)> = Vec::new(); // (target offset, source offset, len)
    let mut buf = Vec::new();
    for n in plan.needs() {
        match *n {
            Need::Seed { offset, len } => {
                let mut done = 0;
                while done < len {
                    let k = (len - done).min(1 << 20);
                    buf.resize(k as usize, 0);
                    seed_file
                        .read_exact_at(&mut buf, offset + done)
                        .context("reading the seed")?;
                    data.write_all_at(&buf, at + done).context("writing")?;
                    done += k;
                }
                io.reused.fetch_add(len, Ordering::Relaxed);
            }
            Need::Source { offset, len } => source.push((at, offset, len)),
        }
        at += n.len();
    }
    let content_rel = layout::content(&f.hash);
    let ranges: Vec<(u64, u64)> = source.iter().map(|&(_, o, l)| (o, l)).collect();
    for req in fetchplan::plan_split(&ranges, io.client.limits(io.limits)) {
        let got = io
            .client
            .get_ranges(&content_rel, &req.ranges, f.size)
            .await?;
        for ((o, _), b) in req.ranges.iter().zip(got) {
            // Target offset == source offset: the needs list rebuilds the source.
            data.write_all_at(&b, *o).context("writing")?;
        }
    }
    data.sync_all().context("syncing")?;
    drop(data);
    io.progress(0, f.size);
    let cache = io.cache.clone();
    let hash = f.hash;
    tokio::task::spawn_blocking(move || {
        let v = verify_file(&data_path, &hash)
            .map_err(|e| JobError::Dp(format!("client-side RDC result: {e:#}")))?;
        cache.insert(v).map_err(JobError::Local)?;
        let _ = fs::remove_dir_all(dir);
        Ok(())
    })
    .await
    .map_err(|e| JobError::Local(anyhow::anyhow!("{e}")))?
}
