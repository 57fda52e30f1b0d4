//! Step 5b of a publish: bundles of the new version's small contents, one
//! per earlier version up to [`BUNDLE_VERSIONS`] back
//! (`protocol::bundle`). Each content of at most [`MAX_TARGET`] bytes the
//! earlier version lacks is patched against the base the needs lists would
//! use there (`protocol::publish::plan_needs`: the same path, or the file
//! it moved from), or compressed alone when that is smaller or there is no
//! base. A pair's patch is computed once for all the bundles it is in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;

use anyhow::Context;
use peerdelta_protocol::bundle::{
    BUNDLE_VERSIONS, Bundle, BundleEntry, MAX_BASE, MAX_BUNDLE, MAX_ENTRIES, MAX_TARGET,
};
use peerdelta_protocol::manifest::{BundleRef, Manifest};
use peerdelta_protocol::publish::{NewFile, plan_needs};
use peerdelta_protocol::{ContentHash, layout};
use peerdelta_store::pack::compress;
use peerdelta_store::util::par_map;

use crate::library::{Library, Staging};

use super::needs::traits;

/// zstd level of the bundle from the previous version: its entries are
/// small, and most receivers of the version download it.
pub(super) const BUNDLE_LEVEL: i32 = 19;
/// zstd level of the bundles from older versions (fewer receivers; level 19
/// on all of them made a publish of an 8 MB JavaScript package 12x slower).
pub(super) const FAR_BUNDLE_LEVEL: i32 = 9;

/// A base, with its size.
type Base = Option<(ContentHash, u64)>;

/// What the bundles of a version came to.
pub(super) struct BundlesMade {
    /// The manifest's references, oldest first.
    pub(super) refs: Vec<BundleRef>,
    /// Bytes of the bundle files.
    pub(super) bytes: u64,
}

/// Makes the bundles of the version whose files are `new`, against the
/// `earlier` versions (newest first; at most [`BUNDLE_VERSIONS`] used):
/// the one from the newest at zstd `level`, the others at `far_level`.
/// `level` 0 makes none (like packs).
pub(super) fn make_bundles(
    lib: &Library,
    new: &[NewFile],
    earlier: &[Manifest],
    threads: usize,
    level: i32,
    far_level: i32,
) -> anyhow::Result<BundlesMade> {
    let mut made = BundlesMade {
        refs: Vec::new(),
        bytes: 0,
    };
    if level <= 0 {
        return Ok(made);
    }
    let sizes: HashMap<ContentHash, u64> = new.iter().map(|f| (f.hash, f.size)).collect();
    // Per earlier version: target -> base (if any).
    let mut wanted: Vec<(u64, BTreeMap<ContentHash, Base>)> = Vec::new();
    let mut traits_of = |h: &ContentHash| traits(lib, h).ok().flatten();
    for old in earlier.iter().take(BUNDLE_VERSIONS) {
        let held: HashSet<ContentHash> = old.files().map(|(_, f)| f.hash).collect();
        let mut targets: BTreeMap<ContentHash, Base> = new
            .iter()
            .filter(|f| f.size > 0 && f.size <= MAX_TARGET && !held.contains(&f.hash))
            .map(|f| (f.hash, None))
            .collect();
        for p in plan_needs(new, &[old], 1, &mut traits_of) {
            if p.base_len > 0
                && p.base_len <= MAX_BASE
                && lib.has(&layout::content(&p.base))
                && let Some(slot) = targets.get_mut(&p.target)
            {
                slot.get_or_insert((p.base, p.base_len));
            }
        }
        if !targets.is_empty() {
            wanted.push((old.version, targets));
        }
    }
    // Every distinct (target, base) once, at the level of the newest
    // version it serves: the bundle from the previous version (most
    // receivers) at `level`, older ones at `far_level`.
    let newest = earlier.first().map(|m| m.version);
    let mut pair_level: BTreeMap<(ContentHash, Base), i32> = BTreeMap::new();
    for (from, targets) in &wanted {
        let l = if Some(*from) == newest {
            level
        } else {
            far_level
        };
        for (t, b) in targets {
            let e = pair_level.entry((*t, *b)).or_insert(l);
            *e = (*e).max(l);
        }
    }
    let pairs: Vec<((ContentHash, Base), i32)> = pair_level.into_iter().collect();
    let read = |h: &ContentHash| -> anyhow::Result<Vec<u8>> {
        let p = lib.path(&layout::content(h));
        fs::read(&p).with_context(|| format!("reading {}", p.display()))
    };
    let patched = par_map(&pairs, threads, |((target, base), l)| {
        let Some((b, _)) = base else {
            return Ok(None);
        };
        Ok(Some(compress(&read(target)?, Some(&read(b)?), *l)?))
    })?;
    // Compressed alone only where no patch is clearly smaller (a patch under
    // a quarter of the content beats any compression of it alone).
    let mut alone_level: BTreeMap<ContentHash, i32> = BTreeMap::new();
    for (((target, _), l), patch) in pairs.iter().zip(&patched) {
        let len = sizes.get(target).copied().unwrap_or(0);
        if patch.as_ref().is_none_or(|p| p.len() as u64 * 4 >= len) {
            let e = alone_level.entry(*target).or_insert(*l);
            *e = (*e).max(*l);
        }
    }
    let alone_todo: Vec<(ContentHash, i32)> = alone_level.into_iter().collect();
    let alone: BTreeMap<ContentHash, Vec<u8>> = par_map(&alone_todo, threads, |(h, l)| {
        Ok((*h, compress(&read(h)?, None, *l)?))
    })?
    .into_iter()
    .collect();
    let mut best: HashMap<(ContentHash, Base), BundleEntry> = HashMap::new();
    for (((target, base), _), patch) in pairs.iter().zip(patched) {
        let target_len = sizes.get(target).copied().unwrap_or(0);
        let alone_data = alone.get(target);
        let alone_entry = |a: &Vec<u8>| BundleEntry {
            target: *target,
            target_len,
            base: None,
            data: a.clone(),
        };
        let entry = match (patch, alone_data) {
            (Some(p), Some(a)) if a.len() <= p.len() => alone_entry(a),
            (Some(p), _) => BundleEntry {
                target: *target,
                target_len,
                base: *base,
                data: p,
            },
            (None, Some(a)) => alone_entry(a),
            (None, None) => continue,
        };
        best.insert((*target, *base), entry);
    }
    let staging = Staging::new(lib);
    for (from, targets) in wanted {
        let mut entries: Vec<BundleEntry> = targets
            .iter()
            .filter_map(|(t, b)| best.get(&(*t, *b)).cloned())
            .collect();
        // Within the size limits: the largest entries go their usual way.
        let mut by_size: Vec<usize> = (0..entries.len()).collect();
        by_size.sort_by_key(|&i| entries[i].data.len());
        let (mut total, mut keep) = (64usize, HashSet::new());
        for i in by_size {
            let len = entries[i].data.len() + 64;
            if total + len > MAX_BUNDLE || keep.len() >= MAX_ENTRIES {
                break;
            }
            total += len;
            keep.insert(entries[i].target);
        }
        entries.retain(|e| keep.contains(&e.target));
        if entries.is_empty() {
            continue;
        }
        let bundle = Bundle {
            from,
            to: earlier.first().map_or(1, |m| m.version + 1),
            entries,
        };
        bundle.validate().context("an inconsistent bundle")?;
        let bytes = bundle.encode();
        let hash = ContentHash::of(&bytes);
        let rel = layout::bundle(&hash);
        if !lib.has(&rel) {
            staging.write_new(&rel, &bytes)?;
        }
        made.bytes += bytes.len() as u64;
        made.refs.push(BundleRef {
            from,
            hash,
            len: bytes.len() as u64,
        });
    }
    staging.commit()?;
    made.refs.sort_by_key(|r| r.from);
    Ok(made)
}
