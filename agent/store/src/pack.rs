//! Packs: the origin runs of a needs list (or every run of a pieces file),
//! compressed with zstd in frames of about [`FRAME_TARGET`] bytes, written by
//! the publisher beside the needs file. Rsync compresses literal data on the
//! fly; the DP holds both versions, so it prepares the compressed bytes once
//! and every receiver downloads them.
//!
//! A frame of a needs list's pack is compressed against a span of the base
//! (a zstd prefix with long-distance matching, chosen by
//! `NeedsFile::reference_for`): new code in a binary is mostly old code
//! moved and patched, which matches at a far finer grain than RDC chunks.
//! The receiver holds the base and reads the same span to decompress. On the
//! corpus's binary series this halves the download again against plain
//! compression.
//!
//! A frame is decompressed with its recorded size as the limit, and every run
//! in it is then checked against its hash, so a bad pack (or a damaged base
//! span) can cost a retry, never bad data.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use peerdelta_protocol::needsfile::{Frame, NeedsFile, Pack, Span};
use peerdelta_protocol::rdc::ReadAt;

/// A pack is kept only if it is at most this fraction of the raw bytes.
const WORTH: f64 = 0.9;

/// A compressed frame: bytes, raw length, the base span it references.
type Compressed = (Vec<u8>, u32, Option<Span>);

/// The window log a frame needs to reach back over its reference.
fn window_log(reference: usize, raw: usize) -> u32 {
    let total = (reference + raw).max(1 << 10) as u64;
    (64 - (total - 1).leading_zeros()).clamp(10, 27)
}

/// Compresses `raw`, against `reference` (a prefix) if given; used for pack
/// frames and for manifests against earlier manifests.
pub fn compress(raw: &[u8], reference: Option<&[u8]>, level: i32) -> anyhow::Result<Vec<u8>> {
    let Some(prefix) = reference else {
        return zstd::bulk::compress(raw, level).context("compressing a frame");
    };
    use zstd::zstd_safe::{CCtx, CParameter};
    let zerr = |what: &'static str| {
        move |code: usize| anyhow::anyhow!("{what}: {}", zstd::zstd_safe::get_error_name(code))
    };
    let mut c = CCtx::try_create().context("creating a zstd context")?;
    c.set_parameter(CParameter::CompressionLevel(level))
        .map_err(zerr("setting the level"))?;
    c.set_parameter(CParameter::WindowLog(window_log(prefix.len(), raw.len())))
        .map_err(zerr("setting the window"))?;
    c.set_parameter(CParameter::EnableLongDistanceMatching(true))
        .map_err(zerr("enabling long matching"))?;
    c.ref_prefix(prefix).map_err(zerr("referencing the base"))?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()));
    c.compress2(&mut out, raw)
        .map_err(zerr("compressing a frame"))?;
    Ok(out)
}

/// Compresses the origin runs of `nf`, read from `content` (the target), into
/// `pack_path` with zstd at `level` on `threads` threads. Returns the pack
/// description, or `None` (and no file) when compression would not save 10%.
pub fn build<R, B>(
    nf: &NeedsFile,
    content: &R,
    base: Option<&B>,
    pack_path: &Path,
    level: i32,
    threads: usize,
) -> anyhow::Result<Option<Pack>>
where
    R: ReadAt + ?Sized,
    R::Error: std::error::Error + Send + Sync + 'static,
    B: ReadAt + ?Sized,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let origin = nf.origin_runs();
    if origin.is_empty() {
        return Ok(None);
    }
    let groups = nf.frame_groups();
    let mut out = std::fs::File::create(pack_path)
        .with_context(|| format!("creating {}", pack_path.display()))?;
    let mut frames = Vec::with_capacity(groups.len());
    let (mut offset, mut raw_total) = (0u64, 0u64);
    for batch in groups.chunks(threads.max(1)) {
        let compressed: Vec<anyhow::Result<Compressed>> = std::thread::scope(|s| {
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
                        let span = base.and_then(|_| nf.reference_for(g.clone()));
                        let reference = match (span, base) {
                            (Some(sp), Some(b)) => {
                                let mut r = vec![0u8; sp.len as usize];
                                b.read_exact_at(&mut r, sp.offset)
                                    .context("reading the base")?;
                                Some(r)
                            }
                            _ => None,
                        };
                        let z = compress(&raw, reference.as_deref(), level)?;
                        Ok((z, raw.len() as u32, span))
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
            let (z, raw_len, reference) = c?;
            out.write_all(&z)
                .with_context(|| format!("writing {}", pack_path.display()))?;
            frames.push(Frame {
                first: g.start as u32,
                count: g.len() as u32,
                offset,
                len: z.len() as u32,
                raw_len,
                reference,
            });
            offset += z.len() as u64;
            raw_total += u64::from(raw_len);
        }
        if offset as f64 > WORTH * raw_total as f64
            && raw_total >= 4 * peerdelta_protocol::needsfile::FRAME_TARGET
        {
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
    // Not synced here: the caller installs it with a batch (one sync for all).
    Ok(Some(Pack {
        len: offset,
        frames,
    }))
}

/// Decompresses what [`compress`] made, against the same `reference`, into at
/// most `limit` bytes.
pub fn decompress(bytes: &[u8], reference: Option<&[u8]>, limit: usize) -> anyhow::Result<Vec<u8>> {
    let Some(prefix) = reference else {
        return zstd::bulk::decompress(bytes, limit).context("decompressing");
    };
    use zstd::zstd_safe::{DCtx, DParameter};
    let zerr =
        |code: usize| anyhow::anyhow!("decompressing: {}", zstd::zstd_safe::get_error_name(code));
    let mut d = DCtx::try_create().context("creating a zstd context")?;
    d.set_parameter(DParameter::WindowLogMax(27))
        .map_err(zerr)?;
    d.ref_prefix(prefix).map_err(zerr)?;
    let mut out: Vec<u8> = Vec::with_capacity(limit);
    d.decompress(&mut out, bytes).map_err(zerr)?;
    Ok(out)
}

/// Decompresses one frame (with the base span it references, read by the
/// caller), refusing anything but exactly its recorded size.
pub fn unpack_frame(
    frame: &Frame,
    bytes: &[u8],
    reference: Option<&[u8]>,
) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        bytes.len() == frame.len as usize,
        "frame of {} bytes, expected {}",
        bytes.len(),
        frame.len
    );
    anyhow::ensure!(
        reference.map(<[u8]>::len) == frame.reference.map(|r| r.len as usize),
        "frame reference of the wrong size"
    );
    let raw = decompress(bytes, reference, frame.raw_len as usize)?;
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
        let pack = build(&nf, &text[..], None::<&[u8]>, &path, 3, 2)
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
            let raw = unpack_frame(
                f,
                &bytes[f.range().start as usize..f.range().end as usize],
                None,
            )
            .unwrap();
            let mut at = 0;
            for r in &origin[f.first as usize..(f.first + f.count) as usize] {
                r.verify(&raw[at..at + r.run.len as usize]).unwrap();
                at += r.run.len as usize;
            }
        }
        let f = pack.frames[0];
        assert!(unpack_frame(&f, &bytes[..f.len as usize - 1], None).is_err());
        let mut bad = bytes[..f.len as usize].to_vec();
        bad[10] ^= 0xff;
        let ok = unpack_frame(&f, &bad, None).map(|raw| raw != text[..raw.len()]);
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
        let _ = build(&nf, &noise[..], None::<&[u8]>, &p2, 3, 2).unwrap();
    }

    #[test]
    fn frames_compressed_against_the_base_need_it_and_beat_plain_ones() {
        use peerdelta_protocol::needs::compare;
        use peerdelta_protocol::rdc::{Params, Signature, chunks};
        // A "binary": random blocks; the new version patches every block a
        // little and shifts everything, so RDC finds few whole chunks.
        let mut old = Vec::new();
        for k in 0..3000u32 {
            let mut x = k.wrapping_mul(2_654_435_761) | 1;
            for _ in 0..1000 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                old.push(x as u8);
            }
        }
        let mut new = vec![7u8; 100];
        for block in old.chunks(1000) {
            let mut b = block.to_vec();
            b[500..504].copy_from_slice(b"EDIT");
            new.extend_from_slice(&b);
        }
        let sig = |d: &[u8]| -> Vec<Signature> {
            chunks(d, Params::LEVEL1)
                .iter()
                .map(Signature::from)
                .collect()
        };
        let needs = compare(&sig(&new), &sig(&old));
        let nf = needsfile::build(
            ContentHash::of(&old),
            old.len() as u64,
            ContentHash::of(&new),
            &needs,
            &new[..],
        )
        .unwrap();
        assert!(
            nf.origin_bytes() > new.len() as u64 / 2,
            "RDC alone barely helps"
        );
        let dir = tempfile::tempdir().unwrap();
        let (plain_path, ref_path) = (dir.path().join("plain"), dir.path().join("ref"));
        let plain = build(&nf, &new[..], None::<&[u8]>, &plain_path, 9, 2).unwrap();
        let refd = build(&nf, &new[..], Some(&old[..]), &ref_path, 9, 2)
            .unwrap()
            .unwrap();
        assert!(
            plain.is_none() || plain.unwrap().len > refd.len * 10,
            "the reference pays"
        );
        assert!(refd.frames.iter().all(|f| f.reference.is_some()));
        let bytes = std::fs::read(&ref_path).unwrap();
        let origin = nf.origin_runs();
        for f in &refd.frames {
            let span = f.reference.unwrap();
            let z = &bytes[f.range().start as usize..f.range().end as usize];
            let reference = &old[span.offset as usize..span.range().end as usize];
            let raw = unpack_frame(f, z, Some(reference)).unwrap();
            let mut at = 0;
            for r in &origin[f.first as usize..(f.first + f.count) as usize] {
                r.verify(&raw[at..at + r.run.len as usize]).unwrap();
                at += r.run.len as usize;
            }
            // Without the base it cannot be decompressed.
            assert!(unpack_frame(f, z, None).is_err());
        }
    }
}
