//! Step 5 of a publish: needs lists (and their packs) against the previous
//! versions' contents.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::Context;
use peerdelta_protocol::manifest::{Manifest, NeedsRef, RelPath};
use peerdelta_protocol::needs::{compare, summarize};
use peerdelta_protocol::needsfile::{NeedsFile, PlannedRun};
use peerdelta_protocol::publish::{NeedsPlan, NewFile, plan_needs};
use peerdelta_protocol::rdc::{ReadAt, Signature, Traits, sigfile, similarity};
use peerdelta_protocol::{ContentHash, layout, needsfile, sigstore};

use crate::library::{Library, Staging};
use peerdelta_store::fsutil::FileSource;
use peerdelta_store::util::par_map;

use super::PublishOptions;
use super::known::{Stored, piece_hash, pieces_hashes};
use super::scan::Scanned;
use super::store::{drop_lag, pack_file};

/// Level-1 signatures of a stored content.
pub(super) fn level1(lib: &Library, hash: &ContentHash) -> anyhow::Result<Vec<Signature>> {
    let path = lib.path(&layout::sigs(hash));
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let (header, start) =
        sigstore::decode_header(&bytes).with_context(|| format!("reading {}", path.display()))?;
    let r = header
        .level_range(start, 1)
        .context("a signature container without level 1")?;
    let level = bytes
        .get(r.start as usize..r.end as usize)
        .with_context(|| format!("{} is truncated", path.display()))?;
    sigfile::decode(level, usize::MAX).with_context(|| format!("reading {}", path.display()))
}

/// Similarity traits of a stored content (`None` if its signatures were pruned).
pub(super) fn traits(lib: &Library, hash: &ContentHash) -> anyhow::Result<Option<Traits>> {
    if !lib.has(&layout::sigs(hash)) {
        return Ok(None);
    }
    Ok(Some(similarity(&level1(lib, hash)?)))
}

/// A needs list's file and what it saves.
#[derive(Debug, Clone)]
pub(super) struct NeedsInfo {
    pub(super) file_hash: ContentHash,
    pub(super) file_len: u64,
    pub(super) origin_bytes: u64,
    pub(super) pack_len: Option<u64>,
}

pub(super) enum NeedsOutcome {
    Written(NeedsInfo),
    Reused(NeedsInfo),
    NotWorth,
}

/// What a pair still needs once compared.
pub(super) enum NeedsStep {
    Done(NeedsOutcome),
    Build(Vec<PlannedRun>),
}

/// Makes (or finds) the needs list of every `((base, target), base_len)`
/// pair, in order, in three passes over all of them: compare the pair's
/// signatures and decide whether a list is worth it; hash each distinct run
/// of each target once (the lists of one target against its bases share
/// most runs, and runs that are the target's pieces are known already);
/// write the files.
pub(super) fn needs_lists(
    staging: &Staging<'_>,
    pairs: &[((ContentHash, ContentHash), u64)],
    newest: &HashSet<(ContentHash, ContentHash)>,
    sizes: &HashMap<ContentHash, u64>,
    stored: &HashMap<ContentHash, Stored>,
    sources: &HashMap<ContentHash, &Path>,
    opts: &PublishOptions,
) -> anyhow::Result<Vec<NeedsOutcome>> {
    let lib = staging.library();
    let started = Instant::now();
    let len_of = |t: &ContentHash| sizes.get(t).copied().unwrap_or(0);
    // A target's level-1 signatures are decoded once for all its bases.
    let target_sigs: HashMap<ContentHash, OnceLock<Vec<Signature>>> = pairs
        .iter()
        .map(|((_, target), _)| (*target, OnceLock::new()))
        .collect();
    let steps = par_map(pairs, opts.threads, |&((base, target), _)| {
        let sigs = || -> anyhow::Result<&[Signature]> {
            let cell = target_sigs
                .get(&target)
                .context("a target without a cell")?;
            if let Some(s) = cell.get() {
                return Ok(s);
            }
            let decoded = level1(lib, &target)?;
            Ok(cell.get_or_init(|| decoded))
        };
        needs_step(
            lib,
            base,
            target,
            len_of(&target),
            opts.min_saving,
            opts.pack_level > 0,
            sigs,
        )
    })?;

    // The runs to hash, by target and by the piece (aligned MiB) each lies
    // in, in batches of a few pieces.
    let mut pieces: HashMap<ContentHash, Vec<ContentHash>> = HashMap::new();
    let mut wanted: BTreeMap<(ContentHash, u64), BTreeSet<(u64, u64)>> = BTreeMap::new();
    for (((_, target), _), step) in pairs.iter().zip(&steps) {
        let NeedsStep::Build(runs) = step else {
            continue;
        };
        let aligned = pieces.entry(*target).or_insert_with(|| {
            let known = stored.get(target).and_then(|s| s.pieces);
            pieces_hashes(lib, target, len_of(target), known.as_ref())
        });
        for r in runs {
            if piece_hash(aligned, len_of(target), r.offset, r.len).is_none() {
                wanted
                    .entry((*target, r.offset / needsfile::MAX_RUN))
                    .or_default()
                    .insert((r.offset, r.len));
            }
        }
    }
    // (piece index, its runs to hash).
    type PieceRuns = (u64, BTreeSet<(u64, u64)>);
    let mut batches: Vec<(ContentHash, Vec<PieceRuns>)> = Vec::new();
    for ((target, piece), runs) in wanted {
        match batches.last_mut() {
            Some((t, b)) if *t == target && (b.len() as u64) < HASH_BATCH => b.push((piece, runs)),
            _ => batches.push((target, vec![(piece, runs)])),
        }
    }
    let compared = started.elapsed();
    let hashed_bytes: u64 = batches
        .iter()
        .flat_map(|b| &b.1)
        .flat_map(|p| &p.1)
        .map(|r| r.1)
        .sum();
    let hashed = par_map(&batches, opts.threads, |(target, wanted)| {
        let len = len_of(target);
        let aligned = pieces.get(target).map_or(&[][..], Vec::as_slice);
        let mut reader = PieceReader::new(lib, target, sources.get(target).copied())?;
        let mut out = Vec::new();
        for (piece, runs) in wanted {
            let start = piece * needsfile::MAX_RUN;
            let end = len.min(start + needsfile::MAX_RUN);
            // Read from the source only if it can be checked against the
            // pieces file's hash (contents read from the source are larger
            // than the drop lag, so they have one).
            let expected = aligned.get(*piece as usize).copied();
            let bytes = reader.read(start, end - start, expected)?;
            for &(offset, n) in runs {
                let at = (offset - start) as usize;
                let run = bytes
                    .get(at..at + n as usize)
                    .context("a run outside its piece")?;
                out.push(((*target, offset, n), ContentHash::of(run)));
            }
        }
        Ok(out)
    })?;
    let hashes: HashMap<(ContentHash, u64, u64), ContentHash> =
        hashed.into_iter().flatten().collect();
    let hashed_at = started.elapsed();

    let todo: Vec<(usize, &Vec<PlannedRun>)> = steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            NeedsStep::Build(runs) => Some((i, runs)),
            NeedsStep::Done(_) => None,
        })
        .collect();
    let written = par_map(&todo, opts.threads, |&(i, runs)| {
        let ((base, target), base_len) = pairs[i];
        let aligned = pieces.get(&target).map_or(&[][..], Vec::as_slice);
        let nf = needsfile::assemble(base, base_len, target, runs, |offset, len| {
            piece_hash(aligned, len_of(&target), offset, len)
                .or_else(|| hashes.get(&(target, offset, len)).copied())
                .context("a run that was not hashed")
        })?;
        let whole = stored
            .get(&target)
            .map_or(len_of(&target), |s| s.whole_download_bytes(len_of(&target)));
        // The list from the previous version is the one most receivers
        // use: compressed hardest, while that stays affordable.
        let level = if newest.contains(&(base, target)) && len_of(&target) <= NEWEST_MAX {
            opts.pack_level.max(NEWEST_LEVEL)
        } else {
            opts.pack_level
        };
        write_needs(staging, nf, whole, level, opts)
    })?;
    tracing::debug!(
        pairs = pairs.len(),
        compare_s = compared.as_secs_f64(),
        hashed_bytes,
        hash_s = (hashed_at - compared).as_secs_f64(),
        write_s = (started.elapsed() - hashed_at).as_secs_f64(),
        "needs lists"
    );
    let mut written = written.into_iter();
    steps
        .into_iter()
        .map(|s| match s {
            NeedsStep::Done(outcome) => Ok(outcome),
            NeedsStep::Build(_) => written.next().context("a needs list went missing"),
        })
        .collect()
}

/// zstd level of the packs of needs lists from the previous version (most
/// receivers are one version behind), for targets of at most
/// [`NEWEST_MAX`] bytes: on text edited throughout, level 19 sends two
/// thirds of what level 9 does (TypeScript's 9 MB `typescript.js`:
/// 665 kB against 1,009 kB), at about 1 s per MB of one core.
pub(super) const NEWEST_LEVEL: i32 = 19;
/// Largest target whose list from the previous version gets
/// [`NEWEST_LEVEL`].
pub(super) const NEWEST_MAX: u64 = 16 << 20;

/// Pieces whose runs are hashed together, read from one content.
pub(super) const HASH_BATCH: u64 = 8;

/// Reads pieces of a content published just now for hashing its needs
/// lists' runs: from the source tree when the piece there still hashes to
/// what was copied (the source was just read twice, so it is likely in
/// memory, while the library copy was dropped from it as it was written),
/// from the library otherwise.
pub(super) struct PieceReader {
    pub(super) source: Option<FileSource>,
    pub(super) library: Option<FileSource>,
    pub(super) path: PathBuf,
    pub(super) buf: Vec<u8>,
}

impl PieceReader {
    pub(super) fn new(
        lib: &Library,
        content: &ContentHash,
        source: Option<&Path>,
    ) -> anyhow::Result<Self> {
        Ok(PieceReader {
            source: source.and_then(|p| FileSource::open(p).ok()),
            library: None,
            path: lib.path(&layout::content(content)),
            buf: Vec::new(),
        })
    }

    /// `len` bytes at `offset` (a whole piece), whose BLAKE3 is `expected`
    /// if known.
    pub(super) fn read(
        &mut self,
        offset: u64,
        len: u64,
        expected: Option<ContentHash>,
    ) -> anyhow::Result<&[u8]> {
        self.buf.resize(len as usize, 0);
        if let (Some(src), Some(expected)) = (&self.source, expected) {
            if src.read_exact_at(&mut self.buf, offset).is_ok()
                && ContentHash::of(&self.buf) == expected
            {
                return Ok(&self.buf);
            }
            // Changed since it was copied: not worth trying again.
            self.source = None;
        }
        let library = match &mut self.library {
            Some(l) => l,
            None => self.library.insert(FileSource::open(&self.path)?),
        };
        library
            .read_exact_at(&mut self.buf, offset)
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok(&self.buf)
    }
}

/// Finds the needs list from `base` to `target` already written, or
/// compares their signatures and plans the list if it saves enough.
pub(super) fn needs_step<'a>(
    lib: &Library,
    base: ContentHash,
    target: ContentHash,
    target_len: u64,
    min_saving: u64,
    packs: bool,
    target_sigs: impl FnOnce() -> anyhow::Result<&'a [Signature]>,
) -> anyhow::Result<NeedsStep> {
    let rel = layout::needs(&base, &target);
    if lib.has(&rel) {
        let bytes = fs::read(lib.path(&rel))
            .with_context(|| format!("reading {}", lib.path(&rel).display()))?;
        let nf = needsfile::decode(&bytes)
            .with_context(|| format!("reading {}", lib.path(&rel).display()))?;
        return Ok(NeedsStep::Done(NeedsOutcome::Reused(NeedsInfo {
            file_hash: ContentHash::of(&bytes),
            file_len: bytes.len() as u64,
            origin_bytes: nf.origin_bytes(),
            pack_len: nf.pack.map(|p| p.len),
        })));
    }
    if !lib.has(&layout::sigs(&base)) {
        // The base's signatures were pruned.
        return Ok(NeedsStep::Done(NeedsOutcome::NotWorth));
    }
    if target_len < min_saving {
        // It cannot save that much.
        return Ok(NeedsStep::Done(NeedsOutcome::NotWorth));
    }
    let needs = compare(target_sigs()?, &level1(lib, &base)?);
    let origin = summarize(&needs).source_bytes;
    let runs = needsfile::plan_runs(&needs);
    // Without packs, what RDC matched is what it saves (each run costs
    // about 40 bytes in the file). With packs, the origin runs are
    // compressed against the base, which finds far more than RDC's chunks
    // in text edited throughout: the list is built and weighed whole
    // (`write_needs`).
    if !packs
        && target_len
            .saturating_sub(origin)
            .saturating_sub(runs.len() as u64 * 40 + 128)
            < min_saving
    {
        return Ok(NeedsStep::Done(NeedsOutcome::NotWorth));
    }
    Ok(NeedsStep::Build(runs))
}

/// Packs and writes a needs list whose runs are hashed, if its download
/// (the list, then the pack or the raw origin runs) saves at least
/// `--min-saving` bytes over the target's whole download (`whole`).
pub(super) fn write_needs(
    staging: &Staging<'_>,
    mut nf: NeedsFile,
    whole: u64,
    level: i32,
    opts: &PublishOptions,
) -> anyhow::Result<NeedsOutcome> {
    let lib = staging.library();
    let mut packed = None;
    if opts.pack_level > 0 {
        let content = FileSource::open(&lib.path(&layout::content(&nf.target)))?;
        let base_content = FileSource::open(&lib.path(&layout::content(&nf.base)))?;
        packed = pack_file(
            staging,
            &nf,
            &content,
            Some(&base_content),
            level,
            opts.threads,
        )?;
        nf.pack = packed.as_ref().map(|(p, _)| p.clone());
    }
    let bytes = nf.encode();
    let info = NeedsInfo {
        file_hash: ContentHash::of(&bytes),
        file_len: bytes.len() as u64,
        origin_bytes: nf.origin_bytes(),
        pack_len: nf.pack.as_ref().map(|p| p.len),
    };
    let download = info.file_len + info.pack_len.unwrap_or(info.origin_bytes);
    if download.saturating_add(opts.min_saving) > whole {
        if let Some((_, tmp)) = packed {
            let _ = fs::remove_file(tmp);
        }
        return Ok(NeedsOutcome::NotWorth);
    }
    if let Some((_, tmp)) = packed {
        staging.add(tmp, layout::pack(&nf.base, &nf.target));
    }
    staging.write_new(&layout::needs(&nf.base, &nf.target), &bytes)?;
    Ok(NeedsOutcome::Written(info))
}

pub(super) fn needs_ref(plan: &NeedsPlan, info: &NeedsInfo) -> NeedsRef {
    NeedsRef {
        base: plan.base,
        base_versions: plan.base_versions.clone(),
        file_hash: info.file_hash,
        file_len: info.file_len,
        origin_bytes: info.origin_bytes,
        pack_len: info.pack_len,
    }
}

/// What the needs lists step made: the needs lists of each path, and counts.
pub(super) struct NeedsMade {
    pub(super) by_path: HashMap<RelPath, Vec<NeedsRef>>,
    pub(super) written: u64,
    pub(super) reused: u64,
    pub(super) skipped: u64,
}

/// Step 5: needs lists from the previous versions' contents to each new
/// file, as `protocol::publish` plans them, kept when they save enough.
pub(super) fn make_needs(
    lib: &Library,
    files: &[&Scanned],
    hashes: &[ContentHash],
    previous: &[Manifest],
    sig_refs: &HashMap<ContentHash, Stored>,
    added: &[(ContentHash, &Path, u64)],
    opts: &PublishOptions,
) -> anyhow::Result<NeedsMade> {
    let new_files: Vec<NewFile> = files
        .iter()
        .zip(hashes)
        .map(|(f, h)| NewFile {
            path: f.rel.clone(),
            hash: *h,
            size: f.size.unwrap_or(0),
        })
        .collect();
    let prev_refs: Vec<&Manifest> = previous.iter().collect();
    let plans = plan_needs(&new_files, &prev_refs, opts.far_versions, &mut |h| {
        traits(lib, h).ok().flatten()
    });
    let mut pairs: BTreeMap<(ContentHash, ContentHash), u64> = BTreeMap::new();
    for p in &plans {
        pairs.insert((p.base, p.target), p.base_len);
    }
    let pairs: Vec<((ContentHash, ContentHash), u64)> = pairs.into_iter().collect();
    let sizes: HashMap<ContentHash, u64> = new_files.iter().map(|f| (f.hash, f.size)).collect();
    let staging = Staging::new(lib);
    // Needs lists read the contents copied just now from the source where
    // the library copy left the page cache as it was written (smaller
    // copies are still there, and cost no check).
    let sources: HashMap<ContentHash, &Path> = added
        .iter()
        .filter(|m| m.2 > drop_lag(opts.threads))
        .map(|m| (m.0, m.1))
        .collect();
    let newest_version = previous.iter().map(|m| m.version).max();
    let newest: HashSet<(ContentHash, ContentHash)> = plans
        .iter()
        .filter(|p| newest_version.is_some_and(|v| p.base_versions.contains(&v)))
        .map(|p| (p.base, p.target))
        .collect();
    let made = needs_lists(&staging, &pairs, &newest, &sizes, sig_refs, &sources, opts)?;
    staging.commit()?;
    let mut made_by_pair: HashMap<(ContentHash, ContentHash), NeedsOutcome> = HashMap::new();
    let (mut written, mut reused, mut skipped) = (0, 0, 0);
    for (((base, target), _), outcome) in pairs.iter().zip(made) {
        match outcome {
            NeedsOutcome::Written(_) => written += 1,
            NeedsOutcome::Reused(_) => reused += 1,
            NeedsOutcome::NotWorth => skipped += 1,
        }
        made_by_pair.insert((*base, *target), outcome);
    }
    let mut needs_by_path: HashMap<RelPath, Vec<NeedsRef>> = HashMap::new();
    for p in &plans {
        if let Some(NeedsOutcome::Written(info) | NeedsOutcome::Reused(info)) =
            made_by_pair.get(&(p.base, p.target))
        {
            needs_by_path
                .entry(p.path.clone())
                .or_default()
                .push(needs_ref(p, info));
        }
    }
    Ok(NeedsMade {
        by_path: needs_by_path,
        written,
        reused,
        skipped,
    })
}
