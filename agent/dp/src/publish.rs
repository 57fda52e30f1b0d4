//! `peerdelta dp publish`: a directory tree becomes the next version of a
//! package.
//!
//! 1. Under the publish lock, recover from a publish that died: versions
//!    renamed into place but missing from the index are added, temporary files
//!    removed.
//! 2. Scan the tree, refusing symlinks, special files, names that are not
//!    UTF-8 and paths that could escape the package root, naming the path.
//! 3. Find each file's content. Small files are hashed (BLAKE3, several at
//!    once). A large file of a size that a recent version holds is compared
//!    with those contents run by run (their pieces hashes), so an unchanged,
//!    renamed or moved one costs one hashing pass and a changed one the runs
//!    up to its first change. Any other large file is new to the recent
//!    versions and is hashed by the copy that stores it (step 4), unless
//!    several such files have one size (they are hashed, so that one copy
//!    stores their content) or the recent contents' runs cannot be read
//!    (it is hashed). Contents already in the library cost nothing more,
//!    and a re-publish of the same tree only reads it once.
//! 4. Copy each new content into the library and sign it (MS-RDC, all levels
//!    its size needs): small files on all cores at once, large files one at
//!    a time on all cores. A hashed content must copy to the same hash; a
//!    large file copied first is named by the copy's hash, must not have
//!    been written to during the copy, and is dropped if the library held
//!    it after all. Zeros are left as holes. Nothing is fsynced file by
//!    file: the batch is written to temporary files, made durable with one
//!    filesystem sync, then renamed into place (`library::Staging`).
//! 5. Plan needs lists against the previous versions (`protocol::publish`),
//!    compute the missing ones, and keep those that save at least
//!    `--min-saving` bytes over sending the whole file (a second batch).
//! 6. Sync the filesystem (the renames), write the signed manifest into a new
//!    version directory, rename it into place, then replace the signed index.
//!    A reader never sees a partial version: until the rename there is no
//!    version directory, and every file a manifest names is durable before it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{BufReader, ErrorKind, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, mpsc};
use std::time::Instant;

use anyhow::{Context, bail};
use ed25519_dalek::VerifyingKey;
use peerdelta_protocol::manifest::{
    self, Entry, EntryKind, FileEntry, IndexEntry, MANIFEST_MAGIC, Manifest, ManifestDelta,
    NeedsRef, PackageIndex, PackageName, PiecesRef, RelPath, SigRef,
};
use peerdelta_protocol::needs::{Need, compare, summarize};
use peerdelta_protocol::needsfile::{NeedsFile, Pack, PlannedRun};
use peerdelta_protocol::publish::{NeedsPlan, NewFile, WINDOW, plan_needs};
use peerdelta_protocol::rdc::{
    DEFAULT_PIECE_LEN, LevelParams, ReadAt, Signature, Traits, sigfile, similarity,
};
use peerdelta_protocol::{ContentHash, layout, needsfile, sigstore};
use serde::Serialize;

use super::library::{Library, Staging};
use peerdelta_store::fsutil::create_synced;
use peerdelta_store::fsutil::{
    FileSource, GrowingFile, drop_written, start_writeback, sync_dir, write_sparse,
};
use peerdelta_store::progress::Progress;
use peerdelta_store::util::{now_ms, par_map};

/// A large copy starts going to disk every this many bytes.
const WRITEBACK: u64 = 16 << 20;

/// A large copy drops from the page cache what lies at least this far
/// behind the copy loop, and further with more signing threads (workers
/// take pieces of [`DEFAULT_PIECE_LEN`] bytes and run up to two per thread
/// ahead of the oldest one).
const DROP_LAG: u64 = 4 * WRITEBACK;

/// How far behind the copy loop a large copy drops what it wrote from the
/// page cache, with `threads` signing threads ([`DROP_LAG`]).
fn drop_lag(threads: usize) -> u64 {
    DROP_LAG.max((2 * threads as u64 + 2) * DEFAULT_PIECE_LEN)
}

/// Files at least this large are mostly not hashed before they are stored
/// (they are compared with recent contents run by run, or copied first; the
/// module doc, step 3, has the exceptions), and are signed one at a time on
/// all cores; smaller ones are hashed and signed several at once, one core
/// each.
const BIG_FILE: u64 = 32 << 20;

/// Contents up to this size are read whole, then written and signed from
/// memory; larger ones are signed from the copy while it is being written.
/// At least [`needsfile::MAX_RUN`]: compressed copies are made of these.
const IN_MEMORY: u64 = 4 << 20;

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The package.
    pub package: PackageName,
    /// The directory tree.
    pub source: PathBuf,
    /// A needs list must save at least this many bytes over the whole file.
    pub min_saving: u64,
    /// Worker threads.
    pub threads: usize,
    /// Show progress.
    pub progress: bool,
    /// zstd level of the packs of needs lists (0: no packs). Pieces packs
    /// (whole contents) use at most [`PIECES_LEVEL`], for publish speed.
    pub pack_level: i32,
}

/// zstd level of whole-content packs (fast; they are large).
pub const PIECES_LEVEL: i32 = 3;

/// What the library holds for a content besides its bytes.
#[derive(Debug, Clone, Copy)]
struct Stored {
    sig: SigRef,
    pieces: Option<PiecesRef>,
    zst_len: Option<u64>,
}

/// What a publish did (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct PublishSummary {
    /// Always "publish".
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The package.
    pub package: String,
    /// The new version.
    pub version: u64,
    /// Files in the version.
    pub files: u64,
    /// Directories in the version.
    pub dirs: u64,
    /// Bytes of the files.
    pub bytes: u64,
    /// Contents not in the library before.
    pub new_contents: u64,
    /// Their bytes.
    pub new_content_bytes: u64,
    /// Bytes read and hashed before storing: small files, and large files
    /// of several at one new size (so that one copy stores them all) or
    /// whose recent contents' runs could not be read.
    pub hashed_bytes: u64,
    /// Bytes of large files hashed run by run to compare them with the
    /// contents of their size that recent versions hold.
    pub compared_bytes: u64,
    /// Bytes copied into the library: the new contents, and any large file
    /// copied before its hash was known that the library held after all
    /// (from an older version, or another package).
    pub copied_bytes: u64,
    /// Signature bytes written for them.
    pub signature_bytes: u64,
    /// Needs lists computed and written.
    pub needs_lists_written: u64,
    /// Needs lists that already existed.
    pub needs_lists_reused: u64,
    /// Needs lists not written because the whole file is about as cheap.
    pub needs_lists_skipped: u64,
    /// Versions found complete but missing from the index, and added.
    pub recovered_versions: Vec<u64>,
    /// Wall time in seconds, in total and per phase.
    pub seconds: f64,
    /// Seconds hashing the tree (and comparing large files' runs).
    pub hash_seconds: f64,
    /// Seconds copying and signing new contents (and hashing the large
    /// files copied first).
    pub store_seconds: f64,
    /// Seconds computing needs lists.
    pub needs_seconds: f64,
    /// Tree bytes per second over the whole publish, in MB/s.
    pub mb_per_s: f64,
}

struct Scanned {
    rel: RelPath,
    abs: PathBuf,
    mode: u32,
    /// Size for a file, `None` for a directory.
    size: Option<u64>,
}

/// The signature and pieces references of a content the library already
/// holds, if it does.
fn existing_refs(
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

/// Publishes `opts.source` as the next version of `opts.package`.
pub fn publish(lib: &Library, opts: &PublishOptions) -> anyhow::Result<PublishSummary> {
    let started = Instant::now();
    let key = lib.signing_key()?;
    let public = key.verifying_key();
    let params = LevelParams::default();
    let _lock = lib.lock()?;
    let (mut index, recovered) = recover(lib, &opts.package, &public)?;

    let tree = scan(&opts.source)?;
    let files: Vec<&Scanned> = tree.iter().filter(|e| e.size.is_some()).collect();
    let total: u64 = files.iter().filter_map(|f| f.size).sum();
    tracing::info!(package = %opts.package, files = files.len(), bytes = total, "publishing {}", opts.source.display());

    // Previous versions: their signature references can be reused, and a
    // large file that one of them holds is recognised by its runs.
    let previous = previous_manifests(lib, &opts.package, index.as_ref(), &public)?;
    let mut known: HashMap<ContentHash, Stored> = HashMap::new();
    let mut held_by_size: HashMap<u64, Vec<(ContentHash, Option<PiecesRef>)>> = HashMap::new();
    for m in &previous {
        for (_, f) in m.files() {
            let stored = Stored {
                sig: f.sig,
                pieces: f.pieces,
                zst_len: f.zst_len,
            };
            if known.insert(f.hash, stored).is_none() && f.size >= BIG_FILE {
                held_by_size
                    .entry(f.size)
                    .or_default()
                    .push((f.hash, f.pieces));
            }
        }
    }

    // Find each file's content (see the module doc, step 3).
    let t = Instant::now();
    // Large files of sizes no recent version holds are copied first.
    let copied_first = |size: u64| size >= BIG_FILE && !held_by_size.contains_key(&size);
    let (found, found_bytes) = (files.iter())
        .map(|f| f.size.unwrap_or(0))
        .filter(|&size| !copied_first(size))
        .fold((0, 0), |(n, b), size| (n + 1, b + size));
    let progress = Progress::new("hashing", found, found_bytes, opts.progress);
    // Small files wait on opening and reading as much as on hashing.
    let io_threads = (opts.threads * 2).clamp(4, 16);
    let hashed_bytes = AtomicU64::new(0);
    // Small files several at once, large ones after them on all cores.
    let mut hashes = par_map(&files, io_threads, |f| {
        let size = f.size.unwrap_or(0);
        if size >= BIG_FILE {
            return Ok(None);
        }
        let h = hash_file(&f.abs, size, 1)?;
        hashed_bytes.fetch_add(size, Ordering::Relaxed);
        progress.add(1, size);
        Ok(Some(h))
    })?;
    let mut hashed_bytes = hashed_bytes.into_inner();
    let mut compared_bytes = 0;
    for (f, h) in files.iter().zip(&mut hashes) {
        let size = f.size.unwrap_or(0);
        if size >= BIG_FILE
            && let Some(held) = held_by_size.get(&size)
        {
            let r = recognise(lib, &f.abs, size, held, opts.threads)?;
            *h = r.content;
            hashed_bytes += r.hashed;
            compared_bytes += r.compared;
            progress.add(1, size);
        }
    }
    // Several changed files of one size may be one content: hashed first,
    // it is copied once.
    let mut unknown_sizes: HashMap<u64, usize> = HashMap::new();
    for (f, h) in files.iter().zip(&hashes) {
        if h.is_none() {
            *unknown_sizes.entry(f.size.unwrap_or(0)).or_default() += 1;
        }
    }
    for (f, h) in files.iter().zip(&mut hashes) {
        let size = f.size.unwrap_or(0);
        if h.is_none() && unknown_sizes.get(&size).is_some_and(|&n| n > 1) {
            *h = Some(hash_file(&f.abs, size, opts.threads)?);
            hashed_bytes += size;
        }
    }
    drop(progress);
    let hash_seconds = t.elapsed().as_secs_f64();

    // Store and sign new contents (each content once).
    let t = Instant::now();
    let mut unique: BTreeMap<ContentHash, (&Path, u64)> = BTreeMap::new();
    for (f, h) in files.iter().zip(&hashes) {
        if let Some(h) = h {
            unique.entry(*h).or_insert((&f.abs, f.size.unwrap_or(0)));
        }
    }
    let mut missing: Vec<(ContentHash, &Path, u64)> = Vec::new();
    let mut sig_refs: HashMap<ContentHash, Stored> = HashMap::new();
    for (h, (path, size)) in &unique {
        match existing_refs(lib, &known, h, *size)? {
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
            None => existing_refs(lib, &known, h, size),
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
    let store_seconds = t.elapsed().as_secs_f64();

    // Needs lists.
    let t = Instant::now();
    let new_files: Vec<NewFile> = files
        .iter()
        .zip(&hashes)
        .map(|(f, h)| NewFile {
            path: f.rel.clone(),
            hash: *h,
            size: f.size.unwrap_or(0),
        })
        .collect();
    let prev_refs: Vec<&Manifest> = previous.iter().collect();
    let plans = plan_needs(&new_files, &prev_refs, &mut |h| {
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
    let made = needs_lists(&staging, &pairs, &sizes, &sig_refs, &sources, opts)?;
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
    let mut needs_by_path: HashMap<&RelPath, Vec<NeedsRef>> = HashMap::new();
    for p in &plans {
        if let Some(NeedsOutcome::Written(info) | NeedsOutcome::Reused(info)) =
            made_by_pair.get(&(p.base, p.target))
        {
            needs_by_path
                .entry(&p.path)
                .or_default()
                .push(needs_ref(p, info));
        }
    }
    let needs_seconds = t.elapsed().as_secs_f64();

    // Manifest, version directory, index.
    let version = index
        .as_ref()
        .and_then(|i| i.latest())
        .map_or(1, |e| e.version + 1);
    let mut entries = Vec::with_capacity(tree.len());
    let mut hash_of: HashMap<&RelPath, ContentHash> = HashMap::new();
    for (f, h) in files.iter().zip(&hashes) {
        hash_of.insert(&f.rel, *h);
    }
    for e in &tree {
        let kind = match e.size {
            None => EntryKind::Dir,
            Some(size) => {
                let hash = hash_of[&e.rel];
                let stored = *sig_refs
                    .get(&hash)
                    .context("a content without signatures")?;
                EntryKind::File(FileEntry {
                    size,
                    hash,
                    sig: stored.sig,
                    needs: needs_by_path.remove(&e.rel).unwrap_or_default(),
                    pieces: stored.pieces,
                    zst_len: stored.zst_len,
                })
            }
        };
        entries.push(Entry {
            path: e.rel.clone(),
            mode: e.mode,
            kind,
        });
    }
    let manifest = Manifest {
        package: opts.package.clone(),
        version,
        published_ms: now_ms(),
        params,
        entries,
    };
    manifest
        .validate()
        .context("the new manifest is inconsistent")?;
    let sealed = manifest::seal(MANIFEST_MAGIC, &manifest, &key);
    peerdelta_store::fault::point("publish:before-version-dir");
    let previous: Vec<u64> = index
        .as_ref()
        .map(|i| {
            i.versions
                .iter()
                .rev()
                .take(WINDOW)
                .map(|e| e.version)
                .collect()
        })
        .unwrap_or_default();
    let extras = manifest_extras(lib, &opts.package, &sealed, &previous)?;
    // Every file the manifest names is in place; make that durable first.
    lib.sync()?;
    write_version(lib, &opts.package, version, &sealed, &extras)?;
    peerdelta_store::fault::point("publish:after-version-dir");
    let entry = index_entry(lib, &manifest, &sealed)?;
    let mut index = match index.as_mut() {
        Some(i) => {
            i.versions.push(entry);
            i.clone()
        }
        None => new_index(&opts.package, vec![entry]),
    };
    lib.write_index(&mut index, &key)?;
    peerdelta_store::fault::point("publish:after-index");

    let seconds = started.elapsed().as_secs_f64();
    let summary = PublishSummary {
        kind: "publish",
        package: opts.package.to_string(),
        version,
        files: files.len() as u64,
        dirs: (tree.len() - files.len()) as u64,
        bytes: total,
        new_contents: added.len() as u64,
        new_content_bytes: new_bytes,
        hashed_bytes,
        compared_bytes,
        copied_bytes,
        signature_bytes,
        needs_lists_written: written,
        needs_lists_reused: reused,
        needs_lists_skipped: skipped,
        recovered_versions: recovered,
        seconds,
        hash_seconds,
        store_seconds,
        needs_seconds,
        mb_per_s: total as f64 / seconds.max(1e-9) / 1e6,
    };
    tracing::info!(package = %opts.package, version, new_bytes, needs = written, "published");
    Ok(summary)
}

/// The index of a package's first version (generation 0: signing makes it 1).
fn new_index(package: &PackageName, versions: Vec<IndexEntry>) -> PackageIndex {
    PackageIndex {
        package: package.clone(),
        generation: 0,
        signed_ms: 0,
        expires_ms: None,
        versions,
    }
}

/// Takes versions that were renamed into place but not indexed (a publish died
/// between the two steps) into the index, and empties the temporary directory.
fn recover(
    lib: &Library,
    package: &PackageName,
    key: &VerifyingKey,
) -> anyhow::Result<(Option<PackageIndex>, Vec<u64>)> {
    let tmp = lib.tmp_dir();
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for e in fs::read_dir(&tmp).with_context(|| format!("listing {}", tmp.display()))? {
        let p = e?.path();
        let _ = if p.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
    }
    let mut index = lib.index(package, key)?;
    let latest = index
        .as_ref()
        .and_then(|i| i.latest())
        .map_or(0, |e| e.version);
    let dir = lib.path(&format!("packages/{package}"));
    let mut found: Vec<u64> = match fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .filter(|&v| v > latest)
            .collect(),
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    found.sort_unstable();
    let mut recovered = Vec::new();
    for v in found {
        if v != latest + 1 + recovered.len() as u64 {
            bail!(
                "{} has version {v} but not the versions before it; fix the library by hand",
                dir.display()
            );
        }
        let (m, bytes) = lib.manifest(package, v, key)?;
        let entry = index_entry(lib, &m, &bytes)?;
        match index.as_mut() {
            Some(i) => i.versions.push(entry),
            None => index = Some(new_index(package, vec![entry])),
        }
        tracing::warn!(package = %package, version = v, "recovered a version a previous publish left out of the index");
        recovered.push(v);
    }
    Ok((index, recovered))
}

/// Walks the tree in path order, refusing anything that is not a regular file
/// or a directory, or whose name could not be reproduced safely.
fn scan(root: &Path) -> anyhow::Result<Vec<Scanned>> {
    let meta = fs::metadata(root).with_context(|| format!("reading {}", root.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let mut out = Vec::new();
    let mut stack = vec![(root.to_owned(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            let abs = e.path();
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                bail!("{}: the name is not valid UTF-8", abs.display());
            };
            let rel_str = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let rel = RelPath::new(&rel_str).with_context(|| format!("{}", abs.display()))?;
            // Does not follow a symbolic link (and reads relative to the
            // directory: no walk of the whole path).
            let meta = e
                .metadata()
                .with_context(|| format!("reading {}", abs.display()))?;
            let mode = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = fs::read_link(&abs)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                bail!(
                    "{}: symbolic links are not supported (it points to {target})",
                    abs.display()
                );
            } else if ft.is_dir() {
                stack.push((abs.clone(), rel_str));
                out.push(Scanned {
                    rel,
                    abs,
                    mode,
                    size: None,
                });
            } else if ft.is_file() {
                out.push(Scanned {
                    rel,
                    abs,
                    mode,
                    size: Some(meta.len()),
                });
            } else {
                bail!(
                    "{}: not a regular file or directory (device, socket or FIFO)",
                    abs.display()
                );
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// What a file's metadata says about its bytes: a file whose stamp is the
/// same before and after it was read was not written to in between, as far
/// as its timestamps tell (nanoseconds, but kernels before 6.13 move them
/// once per clock tick, a few milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// The stamp of an open file, now.
    fn now(file: &File, path: &Path) -> anyhow::Result<Self> {
        let meta = file
            .metadata()
            .with_context(|| format!("reading metadata of {}", path.display()))?;
        Ok(Stamp::of(&meta))
    }
}

/// The stamp of the open `file` now; an error unless it still has the size
/// it was scanned with and, given a stamp taken earlier, was not written to
/// since.
fn unchanged(file: &File, path: &Path, size: u64, since: Option<Stamp>) -> anyhow::Result<Stamp> {
    let now = Stamp::now(file, path)?;
    if now.len != size {
        bail!(
            "{} changed while it was being published ({size} bytes, then {})",
            path.display(),
            now.len
        );
    }
    if since.is_some_and(|s| s != now) {
        bail!("{} changed while it was being published", path.display());
    }
    Ok(now)
}

/// A file scanned at `size` bytes, opened for reading, and its stamp; an
/// error if it has another size now.
fn open_scanned(path: &Path, size: u64) -> anyhow::Result<(FileSource, Stamp)> {
    let src = FileSource::open(path)?;
    let stamp = unchanged(src.file(), path, size, None)?;
    Ok((src, stamp))
}

/// What [`recognise`] found.
struct Recognised {
    /// The content, if it is one of those compared (or was hashed).
    content: Option<ContentHash>,
    /// Bytes hashed whole (when the runs to compare with could not be read).
    hashed: u64,
    /// Bytes hashed run by run to compare.
    compared: u64,
}

/// The content of a large file if it is one of `held` (the contents of its
/// size that recent versions hold), found by comparing their runs with the
/// file's; `None` if it is none of them. If the runs of one of them cannot
/// be read, the file is hashed instead.
fn recognise(
    lib: &Library,
    path: &Path,
    size: u64,
    held: &[(ContentHash, Option<PiecesRef>)],
    threads: usize,
) -> anyhow::Result<Recognised> {
    let runs: Vec<Vec<ContentHash>> = held
        .iter()
        .map(|(h, pieces)| pieces_hashes(lib, h, size, pieces.as_ref()))
        .collect();
    if runs.iter().any(Vec::is_empty) {
        return Ok(Recognised {
            content: Some(hash_file(path, size, threads)?),
            hashed: size,
            compared: 0,
        });
    }
    let (src, stamp) = open_scanned(path, size)?;
    let candidates: Vec<&[ContentHash]> = runs.iter().map(Vec::as_slice).collect();
    let found =
        peerdelta_protocol::hash::find_by_runs(&src, needsfile::MAX_RUN, &candidates, threads)
            .with_context(|| format!("reading {}", path.display()))?;
    unchanged(src.file(), path, size, Some(stamp))?;
    Ok(Recognised {
        content: found.candidate.and_then(|i| held.get(i)).map(|(h, _)| *h),
        hashed: 0,
        compared: found.hashed,
    })
}

/// BLAKE3 of a file on `threads` threads, checking it still has the size
/// it was scanned with.
fn hash_file(path: &Path, size: u64, threads: usize) -> anyhow::Result<ContentHash> {
    let changed = |now: u64| {
        anyhow::anyhow!(
            "{} changed while it was being published ({size} bytes, then {now})",
            path.display()
        )
    };
    if threads > 1 {
        let (src, stamp) = open_scanned(path, size)?;
        let h = src.hash(threads)?;
        unchanged(src.file(), path, size, Some(stamp))?;
        return Ok(h);
    }
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = blake3::Hasher::new();
    // A small file in one read (one byte more shows it grew).
    let cap = (size as usize).saturating_add(1).clamp(4096, 1 << 20);
    let n = std::io::copy(&mut BufReader::with_capacity(cap, f), &mut h)
        .with_context(|| format!("reading {}", path.display()))?;
    if n != size {
        return Err(changed(n));
    }
    Ok(h.finalize().into())
}

/// What [`store_content`] did.
struct StoreOutcome {
    /// The content.
    hash: ContentHash,
    /// Its signature and pieces references.
    stored: Stored,
    /// Whether it was stored now (not found present after the copy).
    new: bool,
}

/// Copies a content into the library and writes its signature container
/// (all staged in `staging`). With `expected`, the copy must be that
/// content. Without, the copy names it (the source must not be written to
/// while it is copied), and a content already `present` (its references
/// returned) is not stored again.
#[allow(clippy::too_many_arguments)]
fn store_content(
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
struct Copied {
    /// Bytes copied.
    len: u64,
    /// Their BLAKE3.
    digest: ContentHash,
    /// The BLAKE3 of each [`needsfile::MAX_RUN`] of them: the pieces file's
    /// runs.
    runs: Vec<ContentHash>,
    files: peerdelta_protocol::rdc::SignatureFiles,
}

/// Copies `input` (`size` bytes expected) to `tmp` while signing the copy on
/// `threads` threads: the signer reads what the copy loop has already
/// written (it is what the library will serve), so copying and signing
/// overlap. A third thread hashes what the copy loop wrote, whole and per
/// run.
fn copy_signing(
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
const HASH_QUEUE: usize = 4;

/// Reads until `buf` is full or the input ends; the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
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
fn stored_refs(lib: &Library, hash: &ContentHash, size: u64) -> anyhow::Result<Stored> {
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
fn write_zst(
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
fn write_pieces<R>(
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
    nf.pack = write_pack(staging, &nf, content, None, level, threads)?;
    let bytes = nf.encode();
    staging.write_new(&layout::needs(&ContentHash::EMPTY, hash), &bytes)?;
    Ok(Some(PiecesRef {
        file_hash: ContentHash::of(&bytes),
        file_len: bytes.len() as u64,
        pack_len: nf.pack.map(|p| p.len),
    }))
}

/// Compresses the origin runs of `nf` into its pack file, if worth it.
fn write_pack<R>(
    staging: &Staging<'_>,
    nf: &NeedsFile,
    content: &R,
    base: Option<&FileSource>,
    level: i32,
    threads: usize,
) -> anyhow::Result<Option<Pack>>
where
    R: ReadAt + ?Sized,
    R::Error: std::error::Error + Send + Sync + 'static,
{
    if level <= 0 {
        return Ok(None);
    }
    let tmp = staging.library().tmp_path("pack");
    let pack = peerdelta_store::pack::build(nf, content, base, &tmp, level, threads)?;
    if pack.is_some() {
        staging.add(tmp, layout::pack(&nf.base, &nf.target));
    }
    Ok(pack)
}

/// Level-1 signatures of a stored content.
fn level1(lib: &Library, hash: &ContentHash) -> anyhow::Result<Vec<Signature>> {
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
fn traits(lib: &Library, hash: &ContentHash) -> anyhow::Result<Option<Traits>> {
    if !lib.has(&layout::sigs(hash)) {
        return Ok(None);
    }
    Ok(Some(similarity(&level1(lib, hash)?)))
}

/// A needs list's file and what it saves.
#[derive(Debug, Clone)]
struct NeedsInfo {
    file_hash: ContentHash,
    file_len: u64,
    origin_bytes: u64,
    pack_len: Option<u64>,
}

enum NeedsOutcome {
    Written(NeedsInfo),
    Reused(NeedsInfo),
    NotWorth,
}

/// What a pair still needs once compared.
enum NeedsStep {
    Done(NeedsOutcome),
    Build(Vec<PlannedRun>),
}

/// Makes (or finds) the needs list of every `((base, target), base_len)`
/// pair, in order, in three passes over all of them: compare the pair's
/// signatures and decide whether a list is worth it; hash each distinct run
/// of each target once (the lists of one target against its bases share
/// most runs, and runs that are the target's pieces are known already);
/// write the files.
fn needs_lists(
    staging: &Staging<'_>,
    pairs: &[((ContentHash, ContentHash), u64)],
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
        needs_step(lib, base, target, len_of(&target), opts.min_saving, sigs)
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
        write_needs(staging, nf, opts)
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

/// Pieces whose runs are hashed together, read from one content.
const HASH_BATCH: u64 = 8;

/// Reads pieces of a content published just now for hashing its needs
/// lists' runs: from the source tree when the piece there still hashes to
/// what was copied (the source was just read twice, so it is likely in
/// memory, while the library copy was dropped from it as it was written),
/// from the library otherwise.
struct PieceReader {
    source: Option<FileSource>,
    library: Option<FileSource>,
    path: PathBuf,
    buf: Vec<u8>,
}

impl PieceReader {
    fn new(lib: &Library, content: &ContentHash, source: Option<&Path>) -> anyhow::Result<Self> {
        Ok(PieceReader {
            source: source.and_then(|p| FileSource::open(p).ok()),
            library: None,
            path: lib.path(&layout::content(content)),
            buf: Vec::new(),
        })
    }

    /// `len` bytes at `offset` (a whole piece), whose BLAKE3 is `expected`
    /// if known.
    fn read(
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
fn needs_step<'a>(
    lib: &Library,
    base: ContentHash,
    target: ContentHash,
    target_len: u64,
    min_saving: u64,
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
    let needs = compare(target_sigs()?, &level1(lib, &base)?);
    let origin = summarize(&needs).source_bytes;
    let runs = needsfile::plan_runs(&needs);
    // Each run costs about 40 bytes in the file.
    if target_len
        .saturating_sub(origin)
        .saturating_sub(runs.len() as u64 * 40 + 128)
        < min_saving
    {
        return Ok(NeedsStep::Done(NeedsOutcome::NotWorth));
    }
    Ok(NeedsStep::Build(runs))
}

/// Packs and writes a needs list whose runs are hashed.
fn write_needs(
    staging: &Staging<'_>,
    mut nf: NeedsFile,
    opts: &PublishOptions,
) -> anyhow::Result<NeedsOutcome> {
    let lib = staging.library();
    if opts.pack_level > 0 {
        let content = FileSource::open(&lib.path(&layout::content(&nf.target)))?;
        let base_content = FileSource::open(&lib.path(&layout::content(&nf.base)))?;
        nf.pack = write_pack(
            staging,
            &nf,
            &content,
            Some(&base_content),
            opts.pack_level,
            opts.threads,
        )?;
    }
    let bytes = nf.encode();
    staging.write_new(&layout::needs(&nf.base, &nf.target), &bytes)?;
    Ok(NeedsOutcome::Written(NeedsInfo {
        file_hash: ContentHash::of(&bytes),
        file_len: bytes.len() as u64,
        origin_bytes: nf.origin_bytes(),
        pack_len: nf.pack.map(|p| p.len),
    }))
}

/// The hash of the run `offset..offset + len` of a content of `len_all`
/// bytes if it is one of its pieces, `aligned` (from [`pieces_hashes`]).
fn piece_hash(aligned: &[ContentHash], len_all: u64, offset: u64, len: u64) -> Option<ContentHash> {
    aligned
        .get(needsfile::piece_index(offset, len, len_all)?)
        .copied()
}

/// The run hashes of a content's pieces file (its [`needsfile::MAX_RUN`]-aligned
/// runs), which needs lists to it reuse, if the file is the one `known`
/// names; none otherwise (the needs lists then hash all their runs).
fn pieces_hashes(
    lib: &Library,
    target: &ContentHash,
    target_len: u64,
    known: Option<&PiecesRef>,
) -> Vec<ContentHash> {
    let Some(known) = known.filter(|_| target_len > needsfile::MAX_RUN) else {
        return Vec::new();
    };
    let path = lib.path(&layout::needs(&ContentHash::EMPTY, target));
    let unusable = |why: &dyn std::fmt::Display| {
        tracing::warn!("{}: {why}; hashing instead", path.display());
        Vec::new()
    };
    let nf = match fs::read(&path) {
        Err(e) => return unusable(&e),
        Ok(bytes) if ContentHash::of(&bytes) != known.file_hash => {
            return unusable(&"not the pieces file the manifests name");
        }
        Ok(bytes) => match needsfile::decode(&bytes) {
            Ok(nf) => nf,
            Err(e) => return unusable(&e),
        },
    };
    let planned = needsfile::plan_runs(&[Need::Source {
        offset: 0,
        len: target_len,
    }]);
    let aligned = nf.target == *target
        && nf.target_len == target_len
        && nf.runs.len() == planned.len()
        && (nf.runs.iter().zip(&planned))
            .all(|(r, p)| r.source == p.source && u64::from(r.len) == p.len);
    if !aligned {
        return unusable(&"not the content's runs of one MiB");
    }
    nf.runs.iter().map(|r| r.hash).collect()
}

fn needs_ref(plan: &NeedsPlan, info: &NeedsInfo) -> NeedsRef {
    NeedsRef {
        base: plan.base,
        base_versions: plan.base_versions.clone(),
        file_hash: info.file_hash,
        file_len: info.file_len,
        origin_bytes: info.origin_bytes,
        pack_len: info.pack_len,
    }
}

/// The newest [`WINDOW`] manifests of the package.
fn previous_manifests(
    lib: &Library,
    package: &PackageName,
    index: Option<&PackageIndex>,
    key: &VerifyingKey,
) -> anyhow::Result<Vec<Manifest>> {
    let Some(index) = index else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in index.versions.iter().rev().take(WINDOW) {
        out.push(lib.manifest(package, e.version, key)?.0);
    }
    Ok(out)
}

/// Renames a complete version directory into place.
/// zstd level of manifests (alone and against earlier ones): a manifest is
/// fetched by every receiver, and small.
const MANIFEST_LEVEL: i32 = 6;

/// The manifest compressed alone (`manifest.zst`) and against the signed
/// manifests of the `previous` versions (`manifest.from-<v>`): file name and
/// bytes of each.
fn manifest_extras(
    lib: &Library,
    package: &PackageName,
    sealed: &[u8],
    previous: &[u64],
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = vec![(
        "manifest.zst".to_owned(),
        peerdelta_store::pack::compress(sealed, None, MANIFEST_LEVEL)?,
    )];
    for &v in previous {
        let path = lib.path(&layout::manifest(package, v));
        let old = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let delta = peerdelta_store::pack::compress(sealed, Some(&old), MANIFEST_LEVEL)?;
        out.push((format!("manifest.from-{v}"), delta));
    }
    Ok(out)
}

/// The index entry of a version whose directory is in place: the manifest's
/// hash and size, and the compressed forms found beside it.
fn index_entry(lib: &Library, m: &Manifest, sealed: &[u8]) -> anyhow::Result<IndexEntry> {
    let size = |rel: &str| {
        fs::metadata(lib.path(rel))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    };
    let dir = lib.path(&format!("packages/{}/{}", m.package, m.version));
    let mut manifest_deltas = Vec::new();
    for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = e?.file_name();
        let Some(from) = name
            .to_str()
            .and_then(|n| n.strip_prefix("manifest.from-"))
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        if let Some(len) = size(&layout::manifest_delta(&m.package, m.version, from)) {
            manifest_deltas.push(ManifestDelta { from, len });
        }
    }
    manifest_deltas.sort_by_key(|d| d.from);
    Ok(IndexEntry {
        version: m.version,
        manifest_hash: ContentHash::of(sealed),
        manifest_len: sealed.len() as u64,
        published_ms: m.published_ms,
        files: m.files().count() as u64,
        bytes: m.total_bytes(),
        manifest_zst_len: size(&layout::manifest_zst(&m.package, m.version)),
        manifest_deltas,
    })
}

fn write_version(
    lib: &Library,
    package: &PackageName,
    version: u64,
    sealed: &[u8],
    extras: &[(String, Vec<u8>)],
) -> anyhow::Result<()> {
    let tmp = lib.tmp_path("version");
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    create_synced(&tmp.join("manifest"), sealed)?;
    for (name, bytes) in extras {
        create_synced(&tmp.join(name), bytes)?;
    }
    sync_dir(&tmp)?;
    let parent = lib.path(&format!("packages/{package}"));
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let dest = parent.join(version.to_string());
    if dest.exists() {
        bail!("{} already exists", dest.display());
    }
    fs::rename(&tmp, &dest)
        .with_context(|| format!("moving {} to {}", tmp.display(), dest.display()))?;
    sync_dir(&parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_hashes_to_its_content_or_is_reported_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // Two parallel leaves and a bit.
        let data: Vec<u8> = (0..(17u32 << 20)).map(|i| (i % 251) as u8).collect();
        fs::write(&path, &data).unwrap();
        let len = data.len() as u64;
        for threads in [1, 2] {
            assert_eq!(
                hash_file(&path, len, threads).unwrap(),
                ContentHash::of(&data)
            );
            // Scanned at another size: it changed since.
            for scanned in [len - 1, len + 1] {
                let e = hash_file(&path, scanned, threads).unwrap_err().to_string();
                assert!(e.contains("changed while it was being published"), "{e}");
            }
        }
    }

    #[test]
    fn a_file_written_to_since_its_stamp_is_changed_and_a_read_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"some bytes").unwrap();
        // An old modification time, so that any write moves it whatever
        // the clock's granularity.
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut file = File::open(&path).unwrap();
        let before = Stamp::now(&file, &path).unwrap();
        let mut read = Vec::new();
        file.read_to_end(&mut read).unwrap();
        unchanged(&file, &path, 10, Some(before)).unwrap();
        // Another size than scanned.
        let e = unchanged(&file, &path, 11, None).unwrap_err().to_string();
        assert!(e.contains("(11 bytes, then 10)"), "{e}");
        // The same bytes written again.
        fs::write(&path, b"some bytes").unwrap();
        let e = unchanged(&file, &path, 10, Some(before))
            .unwrap_err()
            .to_string();
        assert!(e.contains("changed while it was being published"), "{e}");
        unchanged(&file, &path, 10, None).unwrap();
    }

    #[test]
    fn a_copy_hashes_and_signs_what_it_wrote_or_reports_a_changed_source() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("source");
        let data: Vec<u8> = (0..(5u32 << 20) + 7).map(|i| (i / 3 % 241) as u8).collect();
        fs::write(&src, &data).unwrap();
        let len = data.len() as u64;
        let params = LevelParams::default();
        let tmp = dir.path().join("copy");
        let copy =
            copy_signing(&mut File::open(&src).unwrap(), &src, &tmp, len, params, 2).unwrap();
        assert_eq!((copy.len, copy.digest), (len, ContentHash::of(&data)));
        let runs: Vec<ContentHash> = data
            .chunks(needsfile::MAX_RUN as usize)
            .map(ContentHash::of)
            .collect();
        assert_eq!(copy.runs, runs);
        assert_eq!(fs::read(&tmp).unwrap(), data);
        let signed = peerdelta_store::signing::signature_levels(&data[..], params, 1).unwrap();
        assert_eq!(copy.files.files, signed.files);
        // Scanned longer (it shrank since) or shorter (it grew).
        for (size, what) in [(len + 1, "changed while"), (len - 1, "grew while")] {
            let e = copy_signing(&mut File::open(&src).unwrap(), &src, &tmp, size, params, 2)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{size}: {e}");
        }
    }

    #[test]
    fn pieces_hashes_come_only_from_the_pieces_file_the_manifests_name() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::at(&dir.path().join("lib"), None);
        fs::create_dir_all(dir.path().join("lib")).unwrap();
        fs::create_dir_all(lib.tmp_dir()).unwrap();
        let data: Vec<u8> = (0..(5u32 << 19) + 3).map(|i| (i % 249) as u8).collect();
        let (hash, size) = (ContentHash::of(&data), data.len() as u64);
        let staging = Staging::new(&lib);
        let known = write_pieces(&staging, &hash, size, &data[..], &[], 0, 1)
            .unwrap()
            .unwrap();
        staging.commit().unwrap();
        let runs: Vec<ContentHash> = data
            .chunks(needsfile::MAX_RUN as usize)
            .map(ContentHash::of)
            .collect();
        assert_eq!(pieces_hashes(&lib, &hash, size, Some(&known)), runs);
        // Another file than the manifests name, none named, or none there:
        // nothing is reused (the needs lists hash their runs).
        let other = PiecesRef {
            file_hash: ContentHash::of(b"another pieces file"),
            ..known
        };
        assert!(pieces_hashes(&lib, &hash, size, Some(&other)).is_empty());
        assert!(pieces_hashes(&lib, &hash, size, None).is_empty());
        fs::remove_file(lib.path(&layout::needs(&ContentHash::EMPTY, &hash))).unwrap();
        assert!(pieces_hashes(&lib, &hash, size, Some(&known)).is_empty());
    }

    #[test]
    fn pieces_come_from_the_source_only_where_it_still_hashes_as_copied() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::at(&dir.path().join("lib"), None);
        let run = needsfile::MAX_RUN as usize;
        let copied: Vec<u8> = (0..2 * run).map(|i| (i % 253) as u8).collect();
        let hash = ContentHash::of(&copied);
        let path = lib.path(&layout::content(&hash));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        // The library holds other bytes than the source in the first piece
        // (only so that the test sees which one was read), and the source
        // changed in the second.
        let mut library = copied.clone();
        library[0] ^= 1;
        fs::write(&path, &library).unwrap();
        let mut source = copied.clone();
        source[run + 5] ^= 1;
        let src_path = dir.path().join("source");
        fs::write(&src_path, &source).unwrap();
        let first = Some(ContentHash::of(&copied[..run]));
        let second = Some(ContentHash::of(&copied[run..]));

        let mut reader = PieceReader::new(&lib, &hash, Some(&src_path)).unwrap();
        assert_eq!(reader.read(0, run as u64, first).unwrap(), &source[..run]);
        assert_eq!(
            reader.read(run as u64, run as u64, second).unwrap(),
            &library[run..]
        );
        // No hash to check the source against, or no source: the library.
        assert_eq!(reader.read(0, run as u64, None).unwrap(), &library[..run]);
        let mut reader = PieceReader::new(&lib, &hash, None).unwrap();
        assert_eq!(reader.read(0, run as u64, first).unwrap(), &library[..run]);
        // A source gone since: the library.
        fs::remove_file(&src_path).unwrap();
        let mut reader = PieceReader::new(&lib, &hash, Some(&src_path)).unwrap();
        assert_eq!(reader.read(0, run as u64, first).unwrap(), &library[..run]);
    }
}
