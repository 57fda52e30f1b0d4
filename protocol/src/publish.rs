//! Which needs lists a new version gets: the publisher's decisions, kept pure.
//!
//! For every file of version `n` and each of the previous versions (at most
//! [`WINDOW`], ConfigMgr BDR's window; further back, up to the publisher's
//! `far` versions, for contents of at most [`FAR_MAX`] bytes, so that a
//! receiver that far behind gets one delta too, never a chain), the base is:
//!
//! 1. nothing, if the receiver holding that version already has the content
//!    (same hash anywhere in it: unchanged, renamed, moved or copied);
//! 2. else the content at the same path in that version, if there is one;
//! 3. else, for a file that moved or was renamed *with* changes, the most
//!    similar file of that version that is no longer at its path in version
//!    `n`: similarity traits matched (MS-RDC 3.1.5.4), plus the same file name
//!    and a close size as tie-breakers. Below [`MIN_TRAIT_MATCHES`] the file is
//!    treated as new.
//!
//! The same (base, target) pair is one needs list whatever the versions or
//! paths it serves.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::hash::ContentHash;
use crate::manifest::{Manifest, RelPath};
use crate::rdc::Traits;

/// Previous versions that get needs lists.
pub use crate::layout::WINDOW;
/// Fewest equal traits (of 16) for a moved file to use a different file as its base.
pub const MIN_TRAIT_MATCHES: usize = 4;
/// Most candidates compared for one moved file (the closest in size).
pub const MAX_CANDIDATES: usize = 256;
/// Largest content that gets needs lists from versions behind the window
/// (larger ones cost the publisher too much per version: a receiver that
/// far behind uses client-side RDC for them).
pub const FAR_MAX: u64 = 256 << 20;
/// Versions back that get needs lists by default (see [`FAR_MAX`]).
pub const FAR_VERSIONS: usize = crate::bundle::BUNDLE_VERSIONS;

/// A file of the version being published.
#[derive(Debug, Clone)]
pub struct NewFile {
    /// Its path.
    pub path: RelPath,
    /// Its content.
    pub hash: ContentHash,
    /// Its size.
    pub size: u64,
}

/// One needs list to produce for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedsPlan {
    /// The file of the new version.
    pub path: RelPath,
    /// Its content.
    pub target: ContentHash,
    /// The content to build it from.
    pub base: ContentHash,
    /// Size of the base.
    pub base_len: u64,
    /// Previous versions in which a receiver holds `base` for this file.
    pub base_versions: Vec<u64>,
}

/// Plans the needs lists of `new` against `previous` (any order; the newest
/// [`WINDOW`] for every file, and for contents of at most [`FAR_MAX`] bytes
/// the newest `far` in all). `traits` gives the similarity traits of a
/// content (the publisher computes them from stored signatures, on demand).
pub fn plan_needs(
    new: &[NewFile],
    previous: &[&Manifest],
    far: usize,
    traits: &mut dyn FnMut(&ContentHash) -> Option<Traits>,
) -> Vec<NeedsPlan> {
    let mut window: Vec<&Manifest> = previous.to_vec();
    window.sort_by_key(|m| std::cmp::Reverse(m.version));
    window.truncate(far.max(WINDOW));
    let new_paths: HashSet<&RelPath> = new.iter().map(|f| &f.path).collect();
    // (path, target, base) -> (base_len, versions)
    let mut plans: BTreeMap<(RelPath, ContentHash, ContentHash), (u64, Vec<u64>)> = BTreeMap::new();
    let mut cache: HashMap<ContentHash, Option<Traits>> = HashMap::new();
    let mut traits_of = |h: &ContentHash| *cache.entry(*h).or_insert_with(|| traits(h));
    for (depth, old) in window.iter().enumerate() {
        let held: HashSet<ContentHash> = old.files().map(|(_, f)| f.hash).collect();
        // Files of the old version no longer at their path: where moved files came from.
        let vacated: Vec<(&RelPath, ContentHash, u64)> = old
            .files()
            .filter(|(e, _)| !new_paths.contains(&e.path))
            .map(|(e, f)| (&e.path, f.hash, f.size))
            .collect();
        for f in new {
            if held.contains(&f.hash) || (depth >= WINDOW && f.size > FAR_MAX) {
                continue;
            }
            let base = match old.file(&f.path) {
                Some(b) => Some((b.hash, b.size)),
                None => most_similar(f, &vacated, &mut traits_of),
            };
            if let Some((base, base_len)) = base {
                let slot = plans
                    .entry((f.path.clone(), f.hash, base))
                    .or_insert((base_len, Vec::new()));
                slot.1.push(old.version);
            }
        }
    }
    plans
        .into_iter()
        .map(|((path, target, base), (base_len, mut versions))| {
            versions.sort_unstable();
            NeedsPlan {
                path,
                target,
                base,
                base_len,
                base_versions: versions,
            }
        })
        .collect()
}

/// The vacated file most similar to `f`, if similar enough.
fn most_similar(
    f: &NewFile,
    vacated: &[(&RelPath, ContentHash, u64)],
    traits_of: &mut dyn FnMut(&ContentHash) -> Option<Traits>,
) -> Option<(ContentHash, u64)> {
    let mine = traits_of(&f.hash)?;
    let mut candidates: Vec<&(&RelPath, ContentHash, u64)> = vacated.iter().collect();
    candidates.sort_by_key(|(_, _, size)| size.abs_diff(f.size));
    candidates.truncate(MAX_CANDIDATES);
    let mut best: Option<((usize, bool, u64), ContentHash, u64)> = None;
    for &&(path, hash, size) in &candidates {
        let Some(t) = traits_of(&hash) else { continue };
        let matches = mine.matches(&t);
        if matches < MIN_TRAIT_MATCHES {
            continue;
        }
        // More traits, then the same name, then the closer size.
        let score = (
            matches,
            path.file_name() == f.path.file_name(),
            u64::MAX - size.abs_diff(f.size),
        );
        if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
            best = Some((score, hash, size));
        }
    }
    best.map(|(_, h, s)| (h, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Entry, EntryKind, FileEntry, PackageName, SigRef};
    use crate::rdc::LevelParams;

    fn h(s: &str) -> ContentHash {
        ContentHash::of(s.as_bytes())
    }

    fn manifest(version: u64, files: &[(&str, &str)]) -> Manifest {
        let mut entries: Vec<Entry> = files
            .iter()
            .map(|(p, c)| Entry {
                path: RelPath::new(p).unwrap(),
                mode: 0o644,
                kind: EntryKind::File(FileEntry {
                    size: c.len() as u64,
                    hash: h(c),
                    sig: SigRef {
                        len: 0,
                        depth: 1,
                        hash: h(""),
                    },
                    needs: vec![],
                    pieces: None,
                    zst_len: None,
                }),
            })
            .collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Manifest {
            package: PackageName::new("p").unwrap(),
            version,
            published_ms: 0,
            params: LevelParams::default(),
            entries,
            bundles: vec![],
        }
    }

    fn new(files: &[(&str, &str)]) -> Vec<NewFile> {
        files
            .iter()
            .map(|(p, c)| NewFile {
                path: RelPath::new(p).unwrap(),
                hash: h(c),
                size: c.len() as u64,
            })
            .collect()
    }

    #[test]
    fn same_path_unchanged_and_moved() {
        let v1 = manifest(
            1,
            &[
                ("a", "A1"),
                ("b", "B1"),
                ("c", "C1"),
                ("old/name", "MOVED1"),
            ],
        );
        let v2 = manifest(
            2,
            &[
                ("a", "A2"),
                ("b", "B1"),
                ("c", "C1"),
                ("old/name", "MOVED1"),
            ],
        );
        let files = new(&[
            ("a", "A3"),
            ("b", "B1"),
            ("renamed-c", "C1"),
            ("new/name", "MOVED2"),
            ("fresh", "F"),
        ]);
        // Traits: MOVED1 and MOVED2 are similar; F is like nothing.
        let mut traits = |c: &ContentHash| -> Option<Traits> {
            let t = if *c == h("MOVED1") || *c == h("MOVED2") {
                [7u8; 16]
            } else {
                [c.0[0] & 63; 16]
            };
            let mut t = t;
            if *c == h("MOVED2") {
                t[0] = 1; // 15 of 16 equal
            }
            Some(Traits(t))
        };
        let plans = plan_needs(&files, &[&v1, &v2], WINDOW, &mut traits);
        let got: Vec<(&str, ContentHash, Vec<u64>)> = plans
            .iter()
            .map(|p| (p.path.as_str(), p.base, p.base_versions.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", h("A1"), vec![1]),
                ("a", h("A2"), vec![2]),
                ("new/name", h("MOVED1"), vec![1, 2]),
            ]
        );
    }

    #[test]
    fn window_is_four_versions() {
        let olds: Vec<Manifest> = (1..=6)
            .map(|v| manifest(v, &[("f", &format!("v{v}"))]))
            .collect();
        let refs: Vec<&Manifest> = olds.iter().collect();
        let plans = plan_needs(&new(&[("f", "v7")]), &refs, WINDOW, &mut |_| None);
        let mut versions: Vec<u64> = plans.iter().flat_map(|p| p.base_versions.clone()).collect();
        versions.sort_unstable();
        assert_eq!(versions, vec![3, 4, 5, 6]);
    }
}
