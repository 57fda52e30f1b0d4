//! Step 2 and 3 of a publish: the tree scanned, and each file's content
//! found (hashed, recognised run by run among recent contents, or left to
//! the copy to hash).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use peerdelta_protocol::manifest::{PiecesRef, RelPath};
use peerdelta_protocol::{ContentHash, needsfile};

use crate::library::Library;
use peerdelta_store::fsutil::FileSource;
use peerdelta_store::progress::Progress;
use peerdelta_store::util::par_map;

use super::PublishOptions;
use super::known::{BIG_FILE, Previous, pieces_hashes};

pub(super) struct Scanned {
    pub(super) rel: RelPath,
    pub(super) abs: PathBuf,
    pub(super) mode: u32,
    /// Size for a file, `None` for a directory.
    pub(super) size: Option<u64>,
}

/// Walks the tree in path order, refusing anything that is not a regular file
/// or a directory, or whose name could not be reproduced safely.
pub(super) fn scan(root: &Path) -> anyhow::Result<Vec<Scanned>> {
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
pub(super) struct Stamp {
    pub(super) len: u64,
    pub(super) mtime: (i64, i64),
    pub(super) ctime: (i64, i64),
}

impl Stamp {
    pub(super) fn of(m: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// The stamp of an open file, now.
    pub(super) fn now(file: &File, path: &Path) -> anyhow::Result<Self> {
        let meta = file
            .metadata()
            .with_context(|| format!("reading metadata of {}", path.display()))?;
        Ok(Stamp::of(&meta))
    }
}

/// The stamp of the open `file` now; an error unless it still has the size
/// it was scanned with and, given a stamp taken earlier, was not written to
/// since.
pub(super) fn unchanged(
    file: &File,
    path: &Path,
    size: u64,
    since: Option<Stamp>,
) -> anyhow::Result<Stamp> {
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
pub(super) fn open_scanned(path: &Path, size: u64) -> anyhow::Result<(FileSource, Stamp)> {
    let src = FileSource::open(path)?;
    let stamp = unchanged(src.file(), path, size, None)?;
    Ok((src, stamp))
}

/// What [`recognise`] found.
pub(super) struct Recognised {
    /// The content, if it is one of those compared (or was hashed).
    pub(super) content: Option<ContentHash>,
    /// Bytes hashed whole (when the runs to compare with could not be read).
    pub(super) hashed: u64,
    /// Bytes hashed run by run to compare.
    pub(super) compared: u64,
}

/// The content of a large file if it is one of `held` (the contents of its
/// size that recent versions hold), found by comparing their runs with the
/// file's; `None` if it is none of them. If the runs of one of them cannot
/// be read, the file is hashed instead.
pub(super) fn recognise(
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
pub(super) fn hash_file(path: &Path, size: u64, threads: usize) -> anyhow::Result<ContentHash> {
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

/// What finding the contents gave: a hash per file (`None` for a large file
/// left to the copy to hash), and the work it took.
pub(super) struct Found {
    pub(super) hashes: Vec<Option<ContentHash>>,
    pub(super) hashed_bytes: u64,
    pub(super) compared_bytes: u64,
}

/// Step 3: each file's content, as the module doc of `publish` says.
pub(super) fn find_contents(
    lib: &Library,
    files: &[&Scanned],
    previous: &Previous,
    opts: &PublishOptions,
) -> anyhow::Result<Found> {
    // Large files of sizes no recent version holds are copied first.
    let copied_first = |size: u64| size >= BIG_FILE && !previous.held_by_size.contains_key(&size);
    let (found, found_bytes) = (files.iter())
        .map(|f| f.size.unwrap_or(0))
        .filter(|&size| !copied_first(size))
        .fold((0, 0), |(n, b), size| (n + 1, b + size));
    let progress = Progress::new("hashing", found, found_bytes, opts.progress);
    // Small files wait on opening and reading as much as on hashing.
    let io_threads = (opts.threads * 2).clamp(4, 16);
    let hashed_bytes = AtomicU64::new(0);
    // Small files several at once, large ones after them on all cores.
    let mut hashes = par_map(files, io_threads, |f| {
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
            && let Some(held) = previous.held_by_size.get(&size)
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
    Ok(Found {
        hashes,
        hashed_bytes,
        compared_bytes,
    })
}
