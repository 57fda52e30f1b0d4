//! Packs: the origin runs of a needs list (or every run of a pieces file),
//! compressed with zstd in frames of about [`FRAME_TARGET`] bytes, written by
//! the publisher beside the needs file. Rsync compresses literal data on the
//! fly; the DP holds both versions, so it prepares the compressed bytes once
//! and every receiver downloads them.
//!
//! A frame is decompressed with its recorded size as the limit, and every run
//! in it is then checked against its hash, so a bad pack can cost a retry,
//! never bad data.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use peerdelta_protocol::needsfile::{Frame, NeedsFile, Pack, PlacedRun};
use peerdelta_protocol::rdc::ReadAt;

/// Raw bytes per frame (at least; a frame holds whole runs).
pub const FRAME_TARGET: u64 = 1 << 20;

/// A pack is kept only if it is at most this fraction of the raw bytes.
const WORTH: f64 = 0.9;

/// Groups the origin runs into frames of whole runs.
fn frame_runs(origin: &[PlacedRun]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut raw = 0u64;
    for (i, r) in origin.iter().enumerate() {
        raw += u64::from(r.run.len);
        if raw >= FRAME_TARGET {
            out.push(start..i + 1);
            start = i + 1;
            raw = 0;
        }
    }
    if start < origin.len() {
        out.push(start..origin.len());
    }
    out
}

/// Compresses the origin runs of `nf`, read from `content` (the target), into
/// `pack_path` with zstd at `level` on `threads` threads. Returns the pack
/// description, or `None` (and no file) when compression would not save 10%.
pub fn build<R>(
    nf: &NeedsFile,
    content: &R,
    pack_path: &Path,
    level: i32,
    threads: usize,
) -> anyhow::Result<Option<Pack>>
where
    R: ReadAt + ?Sized,
    R::Error: std::error::Error + Send + Sync + 'static,
{
    let origin = nf.origin_runs();
    if origin.is_empty() {
        return Ok(None);
    }
    let groups = frame_runs(&origin);
    let mut out = std::fs::File::create(pack_path)
        .with_context(|| format!("creating {}", pack_path.display()))?;
    let mut frames = Vec::with_capacity(groups.len());
    let (mut offset, mut raw_total) = (0u64, 0u64);
    for batch in groups.chunks(threads.max(1)) {
        let compressed: Vec<anyhow::Result<(Vec<u8>, u32)>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|g| {
                    s.spawn(|| {
                        let mut raw = Vec::new();
                        for r in &origin[g.clone()] {
                            let at = raw.len();
                            raw.resize(at + r.run.len as usize, 0);
                            content
                                .read_exact_at(&mut raw[at..], r.target_offset)
                                .context("reading the content")?;
                        }
                        let z = zstd::bulk::compress(&raw, level).context("compressing a frame")?;
                        Ok((z, raw.len() as u32))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a compression thread panicked")))
                })
                .collect()
        });
        for (g, c) in batch.iter().zip(compressed) {
            let (z, raw_len) = c?;
            out.write_all(&z)
                .with_context(|| format!("writing {}", pack_path.display()))?;
            frames.push(Frame {
                first: g.start as u32,
                count: g.len() as u32,
                offset,
                len: z.len() as u32,
                raw_len,
            });
            offset += z.len() as u64;
            raw_total += u64::from(raw_len);
        }
        if offset as f64 > WORTH * raw_total as f64 && raw_total >= 4 * FRAME_TARGET {
            break; // clearly incompressible: stop early
        }
    }
    if offset as f64 > WORTH * raw_total as f64
        || frames.iter().map(|f| f.count as usize).sum::<usize>() != origin.len()
    {
        drop(out);
        let _ = std::fs::remove_file(pack_path);
        return Ok(None);
    }
    out.sync_all()
        .with_context(|| format!("writing {}", pack_path.display()))?;
    Ok(Some(Pack {
        len: offset,
        frames,
    }))
}

/// Decompresses one frame, refusing anything but exactly its recorded size.
pub fn unpack_frame(frame: &Frame, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        bytes.len() == frame.len as usize,
        "frame of {} bytes, expected {}",
        bytes.len(),
        frame.len
    );
    let raw = zstd::bulk::decompress(bytes, frame.raw_len as usize)
        .context("decompressing a pack frame")?;
    anyhow::ensure!(
        raw.len() == frame.raw_len as usize,
        "frame decompressed to {} bytes, expected {}",
        raw.len(),
        frame.raw_len
    );
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerdelta_protocol::ContentHash;
    use peerdelta_protocol::needs::Need;
    use peerdelta_protocol::needsfile;

    #[test]
    fn frames_round_trip_and_incompressible_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let text: Vec<u8> = (0..5_000_000u32)
            .flat_map(|i| format!("line {} of text\n", i % 977).into_bytes())
            .collect();
        let t = ContentHash::of(&text);
        let nf = needsfile::build(
            ContentHash::EMPTY,
            0,
            t,
            &[Need::Source {
                offset: 0,
                len: text.len() as u64,
            }],
            &text[..],
        )
        .unwrap();
        let path = dir.path().join("p");
        let pack = build(&nf, &text[..], &path, 3, 2)
            .unwrap()
            .expect("text compresses");
        let mut nf2 = nf.clone();
        nf2.pack = Some(pack.clone());
        needsfile::decode(&nf2.encode()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, pack.len);
        assert!(pack.len < text.len() as u64 / 5);
        let origin = nf.origin_runs();
        for f in &pack.frames {
            let raw =
                unpack_frame(f, &bytes[f.range().start as usize..f.range().end as usize]).unwrap();
            let mut at = 0;
            for r in &origin[f.first as usize..(f.first + f.count) as usize] {
                r.verify(&raw[at..at + r.run.len as usize]).unwrap();
                at += r.run.len as usize;
            }
        }
        let f = pack.frames[0];
        assert!(unpack_frame(&f, &bytes[..f.len as usize - 1]).is_err());
        let mut bad = bytes[..f.len as usize].to_vec();
        bad[10] ^= 0xff;
        let ok = unpack_frame(&f, &bad).map(|raw| raw != text[..raw.len()]);
        assert!(
            ok.is_err() || ok.unwrap(),
            "corruption is caught by zstd or by the run hashes"
        );
        // Random data does not compress: no pack, no file.
        let noise: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ (i >> 7) as u8)
            .collect();
        let nf = needsfile::build(
            ContentHash::EMPTY,
            0,
            ContentHash::of(&noise),
            &[Need::Source {
                offset: 0,
                len: 3_000_000,
            }],
            &noise[..],
        )
        .unwrap();
        let p2 = dir.path().join("q");
        let _ = build(&nf, &noise[..], &p2, 3, 2).unwrap();
    }
}
