//! Materialising a cached version into a directory (`get --out DIR`),
//! without ever losing a file peerdelta did not write.
//!
//! # Rules
//!
//! - peerdelta keeps a record of what it wrote in `DIR/.peerdelta-tree`
//!   ([`RECORD`]): the version, and every path with the size, modification
//!   time and inode it left there. A path is *ours* if the record lists it
//!   and it is still as we left it; *changed* if the record lists it but it
//!   was modified since; *foreign* otherwise.
//! - A directory that is not empty and has no record (peerdelta did not
//!   create it: `--out /opt`) is refused with a usage error naming it,
//!   unless `--force`. Changed files are refused the same way.
//! - Foreign paths are never removed or overwritten, with or without
//!   `--force`: they are carried into the new tree (hard links, so the same
//!   files), and a foreign path where the new version needs to put something
//!   is an error naming it.
//! - The swap is crash-safe: the new tree is built beside `DIR`, every file
//!   and directory fsynced, then exchanged with `DIR` in one
//!   `renameat2(RENAME_EXCHANGE)`; at every instant `DIR` is the complete old
//!   tree or the complete new one. The old tree is then removed entry by
//!   entry, only what peerdelta knows it may remove; anything else found there
//!   (a file created meanwhile) is moved into the new tree, or the old tree
//!   is kept aside and named. On a file system without `RENAME_EXCHANGE` the
//!   old tree is renamed aside first (`.DIR.peerdelta-old`) and put back by
//!   the next run if a crash came between the two renames.
//! - Set-user-ID and set-group-ID bits are dropped from every mode.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use peerdelta_protocol::manifest::{EntryKind, Manifest};
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use peerdelta_store::fsutil::sync_dir;
use peerdelta_store::usage;

/// The record of what peerdelta wrote, at the top of the tree.
pub const RECORD: &str = ".peerdelta-tree";

/// Largest record read back.
const MAX_RECORD: u64 = 256 << 20;

/// Mode bits kept: permissions and sticky; never set-user-ID or set-group-ID.
const MODE_MASK: u32 = 0o1777;

/// How to materialise.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Hard links into the cache instead of copies.
    pub link: bool,
    /// Install into a non-empty directory peerdelta did not create, and
    /// replace files changed since peerdelta wrote them.
    pub force: bool,
}

/// What a materialisation did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    /// Files written.
    pub files: u64,
    /// Foreign paths kept.
    pub kept_foreign: u64,
}

/// One path peerdelta wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Written {
    path: String,
    dir: bool,
    size: u64,
    mtime_ns: i64,
    ino: u64,
}

/// The record file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// Always 1.
    format: u32,
    package: String,
    version: u64,
    written: Vec<Written>,
}

/// An existing path, as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// peerdelta wrote it and it is as left.
    Ours,
    /// peerdelta wrote it; it changed since.
    Changed,
    /// Not peerdelta's.
    Foreign,
}

fn stamp(path: String, m: &fs::Metadata) -> Written {
    Written {
        path,
        dir: m.is_dir(),
        size: if m.is_dir() { 0 } else { m.len() },
        mtime_ns: if m.is_dir() {
            0
        } else {
            m.mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec())
        },
        ino: if m.is_dir() { 0 } else { m.ino() },
    }
}

/// Every path under `root` (not following symbolic links), parents first,
/// relative and `/`-separated, with its metadata; the record itself excluded.
fn walk(root: &Path) -> anyhow::Result<Vec<(String, fs::Metadata)>> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_owned()
        } else {
            root.join(&rel)
        };
        let mut names: Vec<String> = Vec::new();
        for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                // Not UTF-8: never a name peerdelta writes, so foreign.
                let p = e.path();
                bail!(
                    "{} has a name that is not UTF-8; move it out of the way first",
                    p.display()
                );
            };
            names.push(name);
        }
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if child == RECORD {
                continue;
            }
            let m = fs::symlink_metadata(root.join(&child))
                .with_context(|| format!("reading {}", root.join(&child).display()))?;
            if m.is_dir() {
                subdirs.push(child.clone());
            }
            out.push((child, m));
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

fn read_record(dir: &Path) -> Option<Record> {
    let path = dir.join(RECORD);
    let m = fs::symlink_metadata(&path).ok()?;
    if !m.is_file() || m.len() > MAX_RECORD {
        return None;
    }
    let r: Record = serde_json::from_slice(&fs::read(&path).ok()?).ok()?;
    (r.format == 1).then_some(r)
}

fn classify(found: &[(String, fs::Metadata)], record: Option<&Record>) -> BTreeMap<String, Found> {
    let ours: BTreeMap<&str, &Written> = record
        .map(|r| r.written.iter().map(|w| (w.path.as_str(), w)).collect())
        .unwrap_or_default();
    found
        .iter()
        .map(|(p, m)| {
            let f = match ours.get(p.as_str()) {
                None => Found::Foreign,
                Some(w) if w.dir && m.is_dir() => Found::Ours,
                Some(w) if **w == stamp(p.clone(), m) => Found::Ours,
                Some(_) => Found::Changed,
            };
            (p.clone(), f)
        })
        .collect()
}

/// A few paths for an error message.
fn some(paths: &[&str]) -> String {
    let mut s: Vec<String> = paths.iter().take(5).map(|p| p.to_string()).collect();
    if paths.len() > 5 {
        s.push(format!("and {} more", paths.len() - 5));
    }
    s.join(", ")
}

/// Puts the version's tree in `out` by the rules of the module doc.
pub fn materialize(
    cache: &Cache,
    m: &Manifest,
    out: &Path,
    opts: Options,
) -> anyhow::Result<Report> {
    let name = out
        .file_name()
        .context("--out needs a directory name")?
        .to_str()
        .context("--out needs a UTF-8 directory name")?
        .to_owned();
    let parent = peerdelta_store::fsutil::parent_dir(out);
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(".{name}.peerdelta-new"));
    let aside = parent.join(format!(".{name}.peerdelta-old"));
    recover(out, &aside)?;
    if fs::symlink_metadata(&staging).is_ok() {
        // A run that stopped before or after its swap: the tree there is
        // peerdelta's (plus files carried or created meanwhile): emptied by
        // the same rules as an old tree.
        clear_old(&staging, out)?;
    }
    if m.entries.iter().any(|e| e.path.as_str() == RECORD) {
        bail!("the package has a file named {RECORD}, which peerdelta reserves");
    }

    // What is there now.
    let (found, record) = match fs::symlink_metadata(out) {
        Err(e) if e.kind() == ErrorKind::NotFound => (Vec::new(), None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
        Ok(meta) if meta.file_type().is_symlink() => bail!(usage!(
            "--out {} is a symbolic link; give the directory it points to",
            out.display()
        )),
        Ok(meta) if !meta.is_dir() => bail!(usage!(
            "--out {} exists and is not a directory",
            out.display()
        )),
        Ok(_) => {
            let record = read_record(out);
            if record.is_none() && !opts.force {
                let mut names = fs::read_dir(out)
                    .with_context(|| format!("listing {}", out.display()))?
                    .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()));
                if let Some(first) = names.next() {
                    bail!(usage!(
                        "--out {} is not empty (it holds {first}) and was not created by peerdelta: \
                         refusing to touch it; pass --force to install into it (its other files are kept)",
                        out.display()
                    ));
                }
            }
            (walk(out)?, record)
        }
    };
    let classes = classify(&found, record.as_ref());
    let changed: Vec<&str> = classes
        .iter()
        .filter(|(_, f)| **f == Found::Changed)
        .map(|(p, _)| p.as_str())
        .collect();
    if !changed.is_empty() && !opts.force {
        bail!(usage!(
            "in --out {}, {} changed since peerdelta wrote them: {}; pass --force to replace them",
            out.display(),
            changed.len(),
            some(&changed)
        ));
    }
    let kinds: BTreeMap<&str, bool> = m
        .entries
        .iter()
        .map(|e| (e.path.as_str(), matches!(e.kind, EntryKind::Dir)))
        .collect();
    let found_meta: BTreeMap<&str, &fs::Metadata> =
        found.iter().map(|(p, m)| (p.as_str(), m)).collect();
    // Foreign paths in the way of the new version: never overwritten.
    let mut blocked = Vec::new();
    for (p, f) in &classes {
        if *f != Found::Foreign {
            continue;
        }
        let is_dir = found_meta.get(p.as_str()).is_some_and(|m| m.is_dir());
        match kinds.get(p.as_str()) {
            Some(true) if is_dir => {}
            Some(_) => blocked.push(p.as_str()),
            None => {
                // Inside a path the new version has as a file?
                let mut up = p.as_str();
                while let Some((parent, _)) = up.rsplit_once('/') {
                    if kinds.get(parent) == Some(&false) {
                        blocked.push(p.as_str());
                        break;
                    }
                    up = parent;
                }
            }
        }
    }
    if !blocked.is_empty() {
        bail!(usage!(
            "in --out {}, {} paths peerdelta did not write are where {} v{} puts its own: {}; \
             move them away (peerdelta never overwrites them)",
            out.display(),
            blocked.len(),
            m.package,
            m.version,
            some(&blocked)
        ));
    }

    // The new tree, beside the old one.
    remove_tree(&staging)?;
    fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let mut report = Report::default();
    let mut written = Vec::new();
    let mut dirs = Vec::new();
    for e in &m.entries {
        let dest = staging.join(e.path.as_str());
        let mode = e.mode & MODE_MASK;
        match &e.kind {
            EntryKind::Dir => {
                fs::create_dir(&dest).with_context(|| format!("creating {}", dest.display()))?;
                dirs.push((dest, mode));
                written.push(Written {
                    path: e.path.to_string(),
                    dir: true,
                    size: 0,
                    mtime_ns: 0,
                    ino: 0,
                });
            }
            EntryKind::File(f) => {
                let src = cache.content_path(&f.hash);
                place_file(&src, &dest, mode, opts.link)?;
                let meta = fs::symlink_metadata(&dest)
                    .with_context(|| format!("reading {}", dest.display()))?;
                written.push(stamp(e.path.to_string(), &meta));
                report.files += 1;
            }
        }
    }
    // Foreign paths come along (parents first, as `walk` lists them).
    for (p, meta) in &found {
        if classes.get(p) != Some(&Found::Foreign) {
            continue;
        }
        let dest = staging.join(p);
        if meta.is_dir() {
            if !dest.exists() {
                fs::create_dir(&dest).with_context(|| format!("creating {}", dest.display()))?;
                dirs.push((dest, meta.permissions().mode() & 0o7777));
            }
        } else {
            if let Some(d) = dest.parent() {
                fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            }
            fs::hard_link(out.join(p), &dest)
                .with_context(|| format!("keeping {} in the new tree", out.join(p).display()))?;
        }
        report.kept_foreign += 1;
    }
    let record = Record {
        format: 1,
        package: m.package.to_string(),
        version: m.version,
        written,
    };
    let rec_path = staging.join(RECORD);
    peerdelta_store::fsutil::create_synced(&rec_path, &serde_json::to_vec(&record)?)?;
    // Directory modes last, deepest first, so read-only ones do not block
    // writes; every directory fsynced so the tree is durable before the swap.
    for (d, mode) in dirs.iter().rev() {
        sync_dir(d)?;
        fs::set_permissions(d, fs::Permissions::from_mode(*mode))
            .with_context(|| format!("setting the mode of {}", d.display()))?;
    }
    sync_dir(&staging)?;
    peerdelta_store::fault::point("materialize-before-swap");

    // The swap.
    if fs::symlink_metadata(out).is_err() {
        fs::rename(&staging, out)
            .with_context(|| format!("moving {} into place", out.display()))?;
        sync_dir(&parent)?;
        return Ok(report);
    }
    let swapped = if peerdelta_store::fault::active("materialize-no-exchange") {
        Err(std::io::Error::from_raw_os_error(libc::EINVAL))
    } else {
        exchange(&staging, out)
    };
    let old = match swapped {
        Ok(()) => {
            sync_dir(&parent)?;
            staging.clone()
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => bail!(usage!(
            "--out {} is a mount point: peerdelta swaps whole trees; give a directory inside it",
            out.display()
        )),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
            // No RENAME_EXCHANGE here: the old tree goes aside first; a
            // crash before the second rename is undone by `recover`.
            tracing::debug!("no RENAME_EXCHANGE on this file system: {e}");
            fs::rename(out, &aside)
                .with_context(|| format!("moving the old {} aside", out.display()))?;
            sync_dir(&parent)?;
            peerdelta_store::fault::point("materialize-between-renames");
            fs::rename(&staging, out)
                .with_context(|| format!("moving {} into place", out.display()))?;
            sync_dir(&parent)?;
            aside.clone()
        }
        Err(e) => {
            return Err(e).with_context(|| format!("swapping {} into place", out.display()));
        }
    };
    peerdelta_store::fault::point("materialize-after-swap");
    clear_old(&old, out)?;
    Ok(report)
}

/// Copies (or links, when the cache file has the right mode) one content.
fn place_file(src: &Path, dest: &Path, mode: u32, link: bool) -> anyhow::Result<()> {
    if link {
        let src_mode = fs::metadata(src)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(u32::MAX);
        // A hard link shares the cache file's mode: link only when it is right.
        if src_mode == mode && fs::hard_link(src, dest).is_ok() {
            return Ok(());
        }
    }
    let mut from = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut to = File::create_new(dest).with_context(|| format!("creating {}", dest.display()))?;
    std::io::copy(&mut from, &mut to).with_context(|| format!("writing {}", dest.display()))?;
    to.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", dest.display()))?;
    to.sync_all()
        .with_context(|| format!("syncing {}", dest.display()))
}

/// Exchanges two paths atomically (`renameat2(RENAME_EXCHANGE)`).
#[allow(unsafe_code)]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths that live across the call;
    // renameat2 only reads them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Puts back an old tree a crash left aside between the two renames of the
/// fallback swap.
fn recover(out: &Path, aside: &Path) -> anyhow::Result<()> {
    if fs::symlink_metadata(aside).is_ok() && fs::symlink_metadata(out).is_err() {
        tracing::warn!(
            "putting back {} from {} (an earlier run stopped mid-swap)",
            out.display(),
            aside.display()
        );
        fs::rename(aside, out).with_context(|| format!("restoring {}", out.display()))?;
    }
    Ok(())
}

/// Removes a directory tree peerdelta made itself (a staging tree), making
/// read-only directories writable first.
fn remove_tree(path: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        Ok(_) => {}
    }
    writable(path);
    fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
}

fn writable(path: &Path) {
    if let Ok(m) = fs::symlink_metadata(path)
        && m.is_dir()
    {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
        if let Ok(rd) = fs::read_dir(path) {
            for e in rd.flatten() {
                writable(&e.path());
            }
        }
    }
}

/// Empties the tree at `old` (the old tree after a swap, or a staging tree
/// a stopped run left) of what peerdelta may remove: paths its record lists
/// (its own files; changed ones only exist there if `--force` allowed it),
/// and files that are also in the tree at `out` (the same inode: foreign
/// files carried over by hard link). Anything else (a file created while
/// `out` was being replaced) is moved into `out`, or, if that place is
/// taken, `old` is kept and named in a warning.
fn clear_old(old: &Path, out: &Path) -> anyhow::Result<()> {
    writable(old);
    let entries = walk(old)?;
    let classes = classify(&entries, read_record(old).as_ref());
    let in_out: HashSet<(u64, u64)> = match fs::symlink_metadata(out) {
        Ok(m) if m.is_dir() => walk(out)?
            .iter()
            .filter(|(_, m)| !m.is_dir())
            .map(|(_, m)| (m.dev(), m.ino()))
            .collect(),
        _ => HashSet::new(),
    };
    let mut kept = false;
    // Children before parents.
    for (p, meta) in entries.iter().rev() {
        let path = old.join(p);
        if meta.is_dir() {
            if fs::remove_dir(&path).is_err() {
                kept = true;
            }
            continue;
        }
        let known = matches!(classes.get(p), Some(Found::Ours | Found::Changed))
            || in_out.contains(&(meta.dev(), meta.ino()));
        if known {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            continue;
        }
        let dest = out.join(p);
        let moved = fs::symlink_metadata(&dest).is_err()
            && dest.parent().is_some_and(|d| fs::create_dir_all(d).is_ok())
            && fs::rename(&path, &dest).is_ok();
        if !moved {
            kept = true;
        }
    }
    let _ = fs::remove_file(old.join(RECORD));
    if kept || fs::remove_dir(old).is_err() {
        let keep = old.with_file_name(format!(
            "{}.kept-{}",
            old.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            peerdelta_store::util::now_ms()
        ));
        let _ = fs::rename(old, &keep);
        tracing::warn!(
            "kept {}: it holds files created while {} was being replaced",
            keep.display(),
            out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_tell_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"one").unwrap();
        let a = stamp("f".into(), &fs::symlink_metadata(&p).unwrap());
        fs::write(&p, b"two!").unwrap();
        let b = stamp("f".into(), &fs::symlink_metadata(&p).unwrap());
        assert_ne!(a, b);
    }
}
