//! Step 4 of a publish: new contents copied into the library and signed,
//! with their pieces files, packs and compressed copies.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use anyhow::{Context, bail};
use peerdelta_protocol::manifest::{PiecesRef, SigRef};
use peerdelta_protocol::needs::Need;
use peerdelta_protocol::needsfile::{NeedsFile, Pack};
use peerdelta_protocol::rdc::{DEFAULT_PIECE_LEN, LevelParams, ReadAt};
use peerdelta_protocol::{ContentHash, layout, needsfile, sigstore};

use crate::library::{Library, Staging};
use peerdelta_store::fsutil::{
    FileSource, GrowingFile, drop_written, start_writeback, write_sparse,
};
use peerdelta_store::progress::Progress;
use peerdelta_store::util::par_map;

use super::known::{BIG_FILE, Stored, piece_hash};
use super::scan::{Scanned, Stamp, unchanged};
use super::{PIECES_LEVEL, PublishOptions};

/// A large copy starts going to disk every this many bytes.
pub(super) const WRITEBACK: u64 = 16 << 20;

/// A large copy drops from the page cache what lies at least this far
/// behind the copy loop, and further with more signing threads (workers
/// take pieces of [`DEFAULT_PIECE_LEN`] bytes and run up to two per thread
/// ahead of the oldest one).
pub(super) const DROP_LAG: u64 = 4 * WRITEBACK;

/// How far behind the copy loop a large copy drops what it wrote from the
/// page cache, with `threads` signing threads ([`DROP_LAG`]).
pub(super) fn drop_lag(threads: usize) -> u64 {
    DROP_LAG.max((2 * threads as u64 + 2) * DEFAULT_PIECE_LEN)
}

/// Contents up to this size are read whole, then written and signed from
/// memory; larger ones are signed from the copy while it is being written.
/// At least [`needsfile::MAX_RUN`]: compressed copies are made of these.
pub(super) const IN_MEMORY: u64 = 4 << 20;

/// The signature and pieces references of a content the library already
/// holds, if it does.
pub(super) fn existing_refs(
    lib: &Library,
    known: &HashMap<ContentHash, Stored>,
    h: &ContentHash,
    size: u64,
) -> anyhow::Result<Option<Stored>> {
    if let Some(s) = known.get(h) {
        // Named by a recent version: its files are in place (they were
        // durable before that manifest was written, and `dp prune` keeps
        // the signatures of the newest versions).
        return Ok(Some(*s));
    }
    if lib.has(&layout::content(h)) && lib.has(&layout::sigs(h)) {
        return stored_refs(lib, h, size).map(Some);
    }
    Ok(None)
}

/// What [`store_content`] did.
pub(super) struct StoreOutcome {
    /// The content.
    pub(super) hash: ContentHash,
    /// Its signature and pieces references.
    pub(super) stored: Stored,
    /// Whether it was stored now (not found present after the copy).
    pub(super) new: bool,
}

/// Copies a content into the library and writes its signature container
/// (all staged in `staging`). With `expected`, the copy must be that
/// content. Without, the copy names it (the source must not be written to
/// while it is copied), and a content already `present` (its references
/// returned) is not stored again.
#[allow(clippy::too_many_arguments)]
pub(super) fn store_content(
    staging: &Staging<'_>,
    expected: Option<&ContentHash>,
    src: &Path,
    size: u64,
    params: LevelParams,
    threads: usize,
    pack_level: i32,
    present: &dyn Fn(&ContentHash) -> anyhow::Result<Option<Stored>>,
) -> anyhow::Result<StoreOutcome> {
    let lib = staging.library();
    let tmp = lib.tmp_path("content");
    let result = (|| {
        let changed = || anyhow::anyhow!("{} changed while it was being published", src.display());
        let mut input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let before = Stamp::now(&input, src)?;
        let (files, whole, runs, digest) = if size <= IN_MEMORY {
            // Read whole (one byte more than the size shows it grew), then
            // write and sign from memory: no thread, one read of the source.
            let mut raw = Vec::with_capacity(size as usize + 1);
            (&mut input)
                .take(size + 1)
                .read_to_end(&mut raw)
                .with_context(|| format!("reading {}", src.display()))?;
            let digest = ContentHash::of(&raw);
            if raw.len() as u64 != size {
                return Err(changed());
            }
            fs::write(&tmp, &raw).with_context(|| format!("writing {}", tmp.display()))?;
            let files = peerdelta_store::signing::signature_levels(&raw[..], params, 1)?;
            (files, Some(raw), Vec::new(), digest)
        } else {
            let copy = copy_signing(&mut input, src, &tmp, size, params, threads)?;
            if copy.len != size {
                return Err(changed());
            }
            (copy.files, None, copy.runs, copy.digest)
        };
        let hash = match expected {
            Some(h) if *h != digest => return Err(changed()),
            Some(h) => *h,
            None => {
                // Nothing else checks these bytes.
                unchanged(&input, src, size, Some(before))?;
                if let Some(stored) = present(&digest)? {
                    return Ok((digest, stored, false));
                }
                digest
            }
        };
        let container = sigstore::encode(params, size, &files);
        let sig = SigRef {
            len: container.len() as u64,
            depth: files.depth() as u8,
            hash: ContentHash::of(&container),
        };
        let pieces_level = pack_level.min(PIECES_LEVEL);
        let pieces = match &whole {
            Some(raw) => write_pieces(staging, &hash, size, &raw[..], &[], pieces_level, threads)?,
            None if size > needsfile::MAX_RUN => write_pieces(
                staging,
                &hash,
                size,
                &FileSource::open(&tmp)?,
                &runs,
                pieces_level,
                threads,
            )?,
            None => None,
        };
        let zst_len = match &whole {
            Some(raw) => write_zst(staging, &hash, raw, pack_level)?,
            None => None,
        };
        // The content last: a content in the library has its signatures.
        staging.write_new(&layout::sigs(&hash), &container)?;
        let stored = Stored {
            sig,
            pieces,
            zst_len,
        };
        Ok((hash, stored, true))
    })();
    match result {
        Ok((hash, stored, new)) => {
            if new {
                staging.add(tmp, layout::content(&hash));
            } else {
                let _ = fs::remove_file(&tmp);
            }
            Ok(StoreOutcome { hash, stored, new })
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// What [`copy_signing`] made.
pub(super) struct Copied {
    /// Bytes copied.
    pub(super) len: u64,
    /// Their BLAKE3.
    pub(super) digest: ContentHash,
    /// The BLAKE3 of each [`needsfile::MAX_RUN`] of them: the pieces file's
    /// runs.
    pub(super) runs: Vec<ContentHash>,
    pub(super) files: peerdelta_protocol::rdc::SignatureFiles,
}

/// Copies `input` (`size` bytes expected) to `tmp` while signing the copy on
/// `threads` threads: the signer reads what the copy loop has already
/// written (it is what the library will serve), so copying and signing
/// overlap. A third thread hashes what the copy loop wrote, whole and per
/// run.
pub(super) fn copy_signing(
    input: &mut File,
    src: &Path,
    tmp: &Path,
    size: u64,
    params: LevelParams,
    threads: usize,
) -> anyhow::Result<Copied> {
    let output = File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let copy = GrowingFile::new(
        File::open(tmp).with_context(|| format!("opening {}", tmp.display()))?,
        size,
    );
    let lag = drop_lag(threads);
    std::thread::scope(|s| {
        let signer = s.spawn(|| peerdelta_store::signing::signature_levels(&copy, params, threads));
        // The copy loop reads and writes one run at a time; a thread beside
        // it hashes what was written, whole and per run, and hands the
        // buffers back.
        let (to_hash, written) = mpsc::sync_channel::<(Vec<u8>, bool)>(HASH_QUEUE);
        let (give_back, free) = mpsc::channel::<Vec<u8>>();
        let hasher = s.spawn(move || {
            let mut whole = blake3::Hasher::new();
            let mut runs = Vec::with_capacity(size.div_ceil(needsfile::MAX_RUN) as usize);
            // A run of zeros (most of a disk image) always hashes the same.
            let mut zeros: Option<(usize, ContentHash)> = None;
            for (buf, zero) in written {
                whole.update(&buf);
                runs.push(match zeros {
                    Some((len, h)) if zero && len == buf.len() => h,
                    _ if zero => {
                        let h = ContentHash::of(&buf);
                        zeros = Some((buf.len(), h));
                        h
                    }
                    _ => ContentHash::of(&buf),
                });
                let _ = give_back.send(buf);
            }
            (ContentHash::from(whole.finalize()), runs)
        });
        let copied = (|| {
            let mut copied = 0u64;
            while copied < size {
                let mut buf = free.try_recv().unwrap_or_default();
                let wanted = needsfile::MAX_RUN.min(size - copied) as usize;
                buf.resize(wanted, 0);
                let n = read_full(input, &mut buf)
                    .with_context(|| format!("reading {}", src.display()))?;
                buf.truncate(n);
                // Zeros are left as holes (`copied` is a multiple of a run).
                let zero = write_sparse(&output, copied, &buf)
                    .with_context(|| format!("writing {}", tmp.display()))?;
                copied += n as u64;
                copy.advance(copied);
                if to_hash.send((buf, zero)).is_err() || n < wanted {
                    // The hasher is gone, or the source is shorter than scanned.
                    break;
                }
                if copied.is_multiple_of(WRITEBACK) {
                    // Start flushing now, while the signer works on what is
                    // written, rather than all at the batch's sync.
                    start_writeback(&output, copied - WRITEBACK, WRITEBACK);
                    // And drop from the page cache what the signers have
                    // most likely read: the copy then recycles a few pages
                    // instead of filling memory (new pages cost far more
                    // than reused ones; the publish of a 235 MB image took
                    // 20% less). A signer further behind reads from disk.
                    if copied >= lag {
                        drop_written(&output, copied - lag, WRITEBACK);
                    }
                }
            }
            let more = read_full(input, &mut [0u8; 1])
                .with_context(|| format!("reading {}", src.display()))?;
            if copied == size && more > 0 {
                bail!("{} grew while it was being published", src.display());
            }
            Ok(copied)
        })();
        // Whatever happened, the hasher ends and is joined, and so is the
        // signer (told first when the copy will not be complete).
        drop(to_hash);
        let hashed = hasher
            .join()
            .map_err(|_| anyhow::anyhow!("the hashing thread panicked"));
        if !matches!(copied, Ok(n) if n == size) {
            copy.fail();
        }
        let files = signer
            .join()
            .map_err(|_| anyhow::anyhow!("the signing thread panicked"));
        let len = copied?;
        if len != size {
            bail!(
                "{} changed while it was being published ({size} bytes, then {len})",
                src.display()
            );
        }
        let (digest, runs) = hashed?;
        Ok(Copied {
            len,
            digest,
            runs,
            files: files??,
        })
    })
}

/// Runs written by the copy loop and not hashed yet, at most.
pub(super) const HASH_QUEUE: usize = 4;

/// Reads until `buf` is full or the input ends; the bytes read.
pub(super) fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The signature and pieces references of a content stored by an earlier publish.
pub(super) fn stored_refs(lib: &Library, hash: &ContentHash, size: u64) -> anyhow::Result<Stored> {
    let path = lib.path(&layout::sigs(hash));
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let (header, _) =
        sigstore::decode_header(&bytes).with_context(|| format!("reading {}", path.display()))?;
    let sig = SigRef {
        len: bytes.len() as u64,
        depth: header.depth() as u8,
        hash: ContentHash::of(&bytes),
    };
    let pieces = if size > needsfile::MAX_RUN {
        let rel = layout::needs(&ContentHash::EMPTY, hash);
        let bytes = fs::read(lib.path(&rel))
            .with_context(|| format!("reading {}", lib.path(&rel).display()))?;
        let nf = needsfile::decode(&bytes)
            .with_context(|| format!("reading {}", lib.path(&rel).display()))?;
        Some(PiecesRef {
            file_hash: ContentHash::of(&bytes),
            file_len: bytes.len() as u64,
            pack_len: nf.pack.map(|p| p.len),
        })
    } else {
        None
    };
    let zst = lib.path(&layout::content_zst(hash));
    let zst_len = fs::metadata(&zst).ok().map(|m| m.len());
    Ok(Stored {
        sig,
        pieces,
        zst_len,
    })
}

/// Keeps a zstd-compressed copy of a small content (one run), if it saves
/// at least 10%: whole downloads of small changed files are then compressed
/// too, as rsync -z would send them.
pub(super) fn write_zst(
    staging: &Staging<'_>,
    hash: &ContentHash,
    raw: &[u8],
    level: i32,
) -> anyhow::Result<Option<u64>> {
    if level <= 0 || !(256..=needsfile::MAX_RUN).contains(&(raw.len() as u64)) {
        return Ok(None);
    }
    let z = zstd::bulk::compress(raw, level).context("compressing")?;
    if z.len() as f64 > 0.9 * raw.len() as f64 {
        return Ok(None);
    }
    staging.write_new(&layout::content_zst(hash), &z)?;
    Ok(Some(z.len() as u64))
}

/// Writes the pieces file of a content of more than one run (and its pack).
/// `runs` are its run hashes if the caller has them (else they are read
/// from `content` and hashed).
pub(super) fn write_pieces<R>(
    staging: &Staging<'_>,
    hash: &ContentHash,
    size: u64,
    content: &R,
    runs: &[ContentHash],
    level: i32,
    threads: usize,
) -> anyhow::Result<Option<PiecesRef>>
where
    R: ReadAt + ?Sized,
    R::Error: std::error::Error + Send + Sync + 'static,
{
    if size <= needsfile::MAX_RUN {
        return Ok(None);
    }
    let all = needsfile::plan_runs(&[Need::Source {
        offset: 0,
        len: size,
    }]);
    let mut buf = Vec::new();
    let mut nf =
        needsfile::assemble(
            ContentHash::EMPTY,
            0,
            *hash,
            &all,
            |offset, len| match piece_hash(runs, size, offset, len) {
                Some(h) => Ok(h),
                None => needsfile::hash_range(content, offset, len, &mut buf),
            },
        )
        .context("hashing pieces")?;
    if let Some((pack, tmp)) = pack_file(staging, &nf, content, None, level, threads)? {
        staging.add(tmp, layout::pack(&nf.base, &nf.target));
        nf.pack = Some(pack);
    }
    let bytes = nf.encode();
    staging.write_new(&layout::needs(&ContentHash::EMPTY, hash), &bytes)?;
    Ok(Some(PiecesRef {
        file_hash: ContentHash::of(&bytes),
        file_len: bytes.len() as u64,
        pack_len: nf.pack.map(|p| p.len),
    }))
}

/// Compresses the origin runs of `nf` into a pack file, if worth it: the
/// pack and the temporary file holding it, for the caller to stage.
pub(super) fn pack_file<R>(
    staging: &Staging<'_>,
    nf: &NeedsFile,
    content: &R,
    base: Option<&FileSource>,
    level: i32,
    threads: usize,
) -> anyhow::Result<Option<(Pack, PathBuf)>>
where
    R: ReadAt + ?Sized,
    R::Error: std::error::Error + Send + Sync + 'static,
{
    if level <= 0 {
        return Ok(None);
    }
    let tmp = staging.library().tmp_path("pack");
    let pack = peerdelta_store::pack::build(nf, content, base, &tmp, level, threads)?;
    Ok(pack.map(|p| (p, tmp)))
}

/// What storing gave: every content's library references, the contents
/// added (with the file they came from), the hash of every file, and the
/// bytes copied and signed.
pub(super) struct StoredAll<'a> {
    pub(super) sig_refs: HashMap<ContentHash, Stored>,
    pub(super) added: Vec<(ContentHash, &'a Path, u64)>,
    pub(super) hashes: Vec<ContentHash>,
    pub(super) copied_bytes: u64,
    pub(super) signature_bytes: u64,
    pub(super) new_bytes: u64,
}

/// Step 4: each new content copied into the library and signed, once.
pub(super) fn store_all<'a>(
    lib: &Library,
    files: &[&'a Scanned],
    mut hashes: Vec<Option<ContentHash>>,
    known: &HashMap<ContentHash, Stored>,
    opts: &PublishOptions,
    params: LevelParams,
) -> anyhow::Result<StoredAll<'a>> {
    let io_threads = io_threads(opts.threads);
    let mut unique: BTreeMap<ContentHash, (&Path, u64)> = BTreeMap::new();
    for (f, h) in files.iter().zip(&hashes) {
        if let Some(h) = h {
            unique.entry(*h).or_insert((&f.abs, f.size.unwrap_or(0)));
        }
    }
    let mut missing: Vec<(ContentHash, &Path, u64)> = Vec::new();
    let mut sig_refs: HashMap<ContentHash, Stored> = HashMap::new();
    for (h, (path, size)) in &unique {
        match existing_refs(lib, known, h, *size)? {
            Some(s) => {
                sig_refs.insert(*h, s);
            }
            None => missing.push((*h, path, *size)),
        }
    }
    let unhashed: Vec<usize> = (hashes.iter().enumerate())
        .filter(|(_, h)| h.is_none())
        .map(|(i, _)| i)
        .collect();
    let copied_bytes: u64 = missing.iter().map(|m| m.2).sum::<u64>()
        + unhashed
            .iter()
            .map(|&i| files[i].size.unwrap_or(0))
            .sum::<u64>();
    let progress = Progress::new(
        "signing",
        (missing.len() + unhashed.len()) as u64,
        copied_bytes,
        opts.progress,
    );
    let (big, small): (Vec<_>, Vec<_>) = missing.iter().partition(|m| m.2 >= BIG_FILE);
    let staging = Staging::new(lib);
    let stored = par_map(&small, io_threads, |(h, path, size)| {
        let r = store_content(
            &staging,
            Some(h),
            path,
            *size,
            params,
            1,
            opts.pack_level,
            &|_| Ok(None),
        )?;
        progress.add(1, *size);
        Ok((*h, r.stored))
    })?;
    sig_refs.extend(stored.iter().map(|(h, s)| (*h, *s)));
    let mut added = missing.clone();
    let mut signature_bytes: u64 = stored.iter().map(|(_, s)| s.sig.len).sum();
    let more = big
        .iter()
        .map(|(h, path, size)| (Some(*h), *path, *size))
        .chain(unhashed.iter().map(|&i| {
            let f = files[i];
            (None, f.abs.as_path(), f.size.unwrap_or(0))
        }));
    for (i, (expected, path, size)) in more.enumerate() {
        let present = |h: &ContentHash| match sig_refs.get(h) {
            Some(s) => Ok(Some(*s)),
            None => existing_refs(lib, known, h, size),
        };
        let r = store_content(
            &staging,
            expected.as_ref(),
            path,
            size,
            params,
            opts.threads,
            opts.pack_level,
            &present,
        )?;
        if r.new {
            signature_bytes += r.stored.sig.len;
            if expected.is_none() {
                added.push((r.hash, path, size));
            }
        }
        sig_refs.insert(r.hash, r.stored);
        if let Some(&k) = i.checked_sub(big.len()).and_then(|j| unhashed.get(j)) {
            hashes[k] = Some(r.hash);
        }
        progress.add(1, size);
    }
    drop(progress);
    let hashes: Vec<ContentHash> = hashes
        .into_iter()
        .collect::<Option<_>>()
        .context("a file was not hashed")?;
    // Needs lists read the new contents from the library.
    staging.commit()?;
    let new_bytes: u64 = added.iter().map(|m| m.2).sum();
    Ok(StoredAll {
        sig_refs,
        added,
        hashes,
        copied_bytes,
        signature_bytes,
        new_bytes,
    })
}

/// Threads for work that waits on opening and reading files as much as on
/// hashing (small files).
pub(super) fn io_threads(threads: usize) -> usize {
    (threads * 2).clamp(4, 16)
}
