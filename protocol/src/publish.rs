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
//! 3. else, for a file at a new path (moved, renamed, split off or copied
//!    *with* changes), the most similar file anywhere in that version:
//!    similarity traits matched (MS-RDC 3.1.5.4), then a file no longer at
//!    its path in version `n`, the same file name and a close size as
//!    tie-breakers. Below [`MIN_TRAIT_MATCHES`] the file is treated as new.
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
        // Every file of the old version, and whether it left its path (where
        // a moved file came from; a file split in two or copied and edited
        // comes from one still there).
        let candidates: Vec<Candidate<'_>> = old
            .files()
            .map(|(e, f)| Candidate {
                path: &e.path,
                hash: f.hash,
                size: f.size,
                vacated: !new_paths.contains(&e.path),
            })
            .collect();
        for f in new {
            if held.contains(&f.hash) || (depth >= WINDOW && f.size > FAR_MAX) {
                continue;
            }
            let base = match old.file(&f.path) {
                Some(b) => Some((b.hash, b.size)),
                None => most_similar(f, &candidates, &mut traits_of),
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

/// A file of an earlier version a new file may start from.
struct Candidate<'a> {
    path: &'a RelPath,
    hash: ContentHash,
    size: u64,
    /// No longer at its path in the new version.
    vacated: bool,
}

/// The file of the earlier version most similar to `f` (a new path), if
/// similar enough: the most equal traits, then one that left its path, then
/// the same file name, then the closest size.
fn most_similar(
    f: &NewFile,
    all: &[Candidate<'_>],
    traits_of: &mut dyn FnMut(&ContentHash) -> Option<Traits>,
) -> Option<(ContentHash, u64)> {
    let mine = traits_of(&f.hash)?;
    let mut candidates: Vec<&Candidate<'_>> = all.iter().collect();
    candidates.sort_by_key(|c| c.size.abs_diff(f.size));
    candidates.truncate(MAX_CANDIDATES);
    // (equal traits, vacated, same name, closeness of size)
    type Score = (usize, bool, bool, u64);
    let mut best: Option<(Score, ContentHash, u64)> = None;
    for c in candidates {
        let Some(t) = traits_of(&c.hash) else {
            continue;
        };
        let matches = mine.matches(&t);
        if matches < MIN_TRAIT_MATCHES {
            continue;
        }
        let score = (
            matches,
            c.vacated,
            c.path.file_name() == f.path.file_name(),
            u64::MAX - c.size.abs_diff(f.size),
        );
        if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
            best = Some((score, c.hash, c.size));
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
    fn a_file_split_off_starts_from_the_file_it_came_from() {
        // v2 keeps "lib/big.js" (edited) and adds "lib/part.js", split off
        // from it: the new path starts from the old big file, which is
        // still at its path (no file vacated one).
        let v1 = manifest(1, &[("lib/big.js", "BIG1"), ("lib/x.js", "X")]);
        let files = new(&[
            ("lib/big.js", "BIG2"),
            ("lib/part.js", "PART"),
            ("lib/x.js", "X"),
        ]);
        let mut traits = |c: &ContentHash| -> Option<Traits> {
            let similar = [h("BIG1"), h("BIG2"), h("PART")].contains(c);
            Some(Traits(if similar {
                [9u8; 16]
            } else {
                [c.0[0] & 63; 16]
            }))
        };
        let plans = plan_needs(&files, &[&v1], WINDOW, &mut traits);
        let part = plans
            .iter()
            .find(|p| p.path.as_str() == "lib/part.js")
            .expect("the split-off file has a base");
        assert_eq!(part.base, h("BIG1"));
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
