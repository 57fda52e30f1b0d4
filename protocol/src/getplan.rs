//! How a receiver obtains each content of a version, and what that costs the
//! WAN: one decision shared by the agent (`peerdelta get`), the DP's
//! `dp list` figures, simnet and the tests that check server-counted bytes.
//!
//! Per distinct content of the target manifest, cheapest first:
//!
//! 1. already held: nothing to transfer;
//! 2. a needs list whose base is held: the list, then its pack (or the raw
//!    origin runs), the smallest download among the usable lists;
//! 3. an older content at the same path is held but no list fits (the
//!    receiver is more than five versions behind): client-side recursive
//!    RDC, whose cost is known only after the signatures are compared;
//! 4. otherwise the whole content: its pieces file and pack (or the raw
//!    content) for a multi-run content, the compressed copy (or the raw
//!    content) for a small one.

use crate::ContentHash;
use crate::manifest::{BundleRef, FileEntry, Manifest, NeedsRef, PiecesRef};
use crate::needsfile::MAX_RUN;

/// How one content is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Held already.
    Held,
    /// Rebuilt from a held base with this needs list.
    Delta(NeedsRef),
    /// Client-side recursive RDC against this held older content.
    Rdc(ContentHash),
    /// Whole, run by run with its pieces file.
    Pieces,
    /// Whole, in one request (compressed copy if the DP has one).
    Small,
}

/// The plan for one distinct content of a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentPlan {
    /// The content.
    pub hash: ContentHash,
    /// Its size.
    pub size: u64,
    /// The first path naming it in the manifest.
    pub path: String,
    /// How it is obtained.
    pub source: Source,
}

impl FileEntry {
    /// Bytes a whole download of this content takes (pieces file and pack,
    /// compressed copy, or the raw content).
    pub fn whole_download_bytes(&self) -> u64 {
        whole_download_bytes(self.size, self.pieces.as_ref(), self.zst_len)
    }
}

/// Bytes a whole download of a content of `size` bytes takes, with its
/// pieces file (if any) and compressed copy (if any).
pub fn whole_download_bytes(size: u64, pieces: Option<&PiecesRef>, zst_len: Option<u64>) -> u64 {
    match (pieces, zst_len) {
        (Some(p), _) => p.file_len + p.pack_len.unwrap_or(size),
        (None, Some(z)) => z,
        (None, None) => size,
    }
}

/// Plans every distinct content of `target` (in hash order). `held` says
/// whether a content is available locally; `older` names a held older
/// content at a path of the package, if any (for client-side RDC).
pub fn plan(
    target: &Manifest,
    held: impl Fn(&ContentHash) -> bool,
    older: impl Fn(&str) -> Option<ContentHash>,
) -> Vec<ContentPlan> {
    let mut seen = std::collections::BTreeMap::new();
    for (e, f) in target.files() {
        seen.entry(f.hash).or_insert((e.path.as_str(), f));
    }
    seen.into_iter()
        .map(|(hash, (path, f))| ContentPlan {
            hash,
            size: f.size,
            path: path.to_owned(),
            source: source(f, &held, older(path)),
        })
        .collect()
}

fn source(
    f: &FileEntry,
    held: &impl Fn(&ContentHash) -> bool,
    older: Option<ContentHash>,
) -> Source {
    if held(&f.hash) {
        return Source::Held;
    }
    if let Some(n) = f
        .needs
        .iter()
        .filter(|n| held(&n.base))
        .min_by_key(|n| n.download_bytes())
    {
        return Source::Delta(n.clone());
    }
    match older {
        Some(seed) if f.size > MAX_RUN && seed != f.hash && held(&seed) => Source::Rdc(seed),
        _ if f.pieces.is_some() => Source::Pieces,
        _ => Source::Small,
    }
}

/// The source of a content for an agent in a subnet, from its own plan:
/// a content it would get whole may have a needs list whose base a peer
/// holds (the base is copied over the LAN first, [`crate::transfer::
/// Transfer::want_base_copy`]; if no peer has it, the content goes whole
/// after all), so the cheapest needs list is tried instead.
pub fn in_subnet(f: &FileEntry, source: Source) -> Source {
    match source {
        Source::Pieces | Source::Small => f
            .needs
            .iter()
            .min_by_key(|n| n.download_bytes())
            .map_or(source, |n| Source::Delta(n.clone())),
        s => s,
    }
}

impl ContentPlan {
    /// Bytes this content costs the WAN, when known before transferring
    /// (`None` for client-side RDC).
    pub fn download_bytes(&self, f: &FileEntry) -> Option<u64> {
        match &self.source {
            Source::Held => Some(0),
            Source::Delta(n) => Some(n.download_bytes()),
            Source::Rdc(_) => None,
            Source::Pieces | Source::Small => Some(f.whole_download_bytes()),
        }
    }
}

/// The bundle a receiver fetches first: when it lacks some content of
/// `target`, the smallest bundle from a version it holds
/// (`held_version`); its entries make those contents held before the rest
/// is planned.
pub fn bundle_to_fetch(
    target: &Manifest,
    held: impl Fn(&ContentHash) -> bool,
    held_version: impl Fn(u64) -> bool,
) -> Option<BundleRef> {
    if target.files().all(|(_, f)| held(&f.hash)) {
        return None;
    }
    target.bundle_from(held_version).copied()
}

/// Total WAN bytes to get `target` with its bundle: the bundle
/// [`bundle_to_fetch`] picks, then [`download_bytes`] of the contents it
/// does not hold. `bundle_targets` lists a bundle's targets (`None`: it
/// cannot be read, so it is fetched and useless).
pub fn download_bytes_with_bundle(
    target: &Manifest,
    held: impl Fn(&ContentHash) -> bool,
    held_version: impl Fn(u64) -> bool,
    bundle_targets: impl Fn(&BundleRef) -> Option<Vec<ContentHash>>,
) -> u64 {
    let Some(b) = bundle_to_fetch(target, &held, held_version) else {
        return download_bytes(target, held);
    };
    let given: std::collections::BTreeSet<ContentHash> =
        bundle_targets(&b).unwrap_or_default().into_iter().collect();
    b.len + download_bytes(target, |h| held(h) || given.contains(h))
}

/// Total WAN bytes to get `target` when the contents of `held` are present
/// and no client-side RDC applies, manifest excluded (the data and needs
/// lists only). The sum over [`plan`] of [`ContentPlan::download_bytes`].
pub fn download_bytes(target: &Manifest, held: impl Fn(&ContentHash) -> bool) -> u64 {
    let files: std::collections::BTreeMap<ContentHash, &FileEntry> =
        target.files().map(|(_, f)| (f.hash, f)).collect();
    plan(target, held, |_| None)
        .iter()
        .filter_map(|p| p.download_bytes(files.get(&p.hash)?))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Entry, EntryKind, PackageName, PiecesRef, RelPath, SigRef};
    use crate::rdc::LevelParams;

    fn h(n: u8) -> ContentHash {
        ContentHash::of(&[n])
    }

    fn file(path: &str, hash: ContentHash, size: u64, needs: Vec<NeedsRef>) -> Entry {
        Entry {
            path: RelPath::new(path).unwrap(),
            mode: 0o644,
            kind: EntryKind::File(FileEntry {
                size,
                hash,
                sig: SigRef {
                    len: 100,
                    depth: 1,
                    hash: h(99),
                },
                needs,
                pieces: (size > MAX_RUN).then_some(PiecesRef {
                    file_hash: h(98),
                    file_len: 1000,
                    pack_len: Some(size / 2),
                }),
                zst_len: (size <= MAX_RUN).then_some(size / 3),
            }),
        }
    }

    fn needs(base: ContentHash, origin: u64, pack: Option<u64>) -> NeedsRef {
        NeedsRef {
            base,
            base_versions: vec![1],
            file_hash: h(97),
            file_len: 500,
            origin_bytes: origin,
            pack_len: pack,
        }
    }

    #[test]
    fn cheapest_usable_source_per_distinct_content() {
        let big = 10 * MAX_RUN;
        let m = Manifest {
            package: PackageName::new("p").unwrap(),
            version: 3,
            published_ms: 0,
            params: LevelParams::default(),
            entries: vec![
                file(
                    "a",
                    h(1),
                    big,
                    vec![needs(h(10), 5000, Some(2000)), needs(h(11), 900, None)],
                ),
                file("b", h(2), big, vec![needs(h(12), 100, None)]),
                file("c", h(3), 300, vec![]),
                file("d", h(1), big, vec![]),
                file("e", h(4), big, vec![]),
            ],
            bundles: vec![],
        };
        let held = |x: &ContentHash| [h(10), h(11), h(3), h(20)].contains(x);
        let older = |p: &str| (p == "b").then_some(h(20));
        let plans = plan(&m, held, older);
        assert_eq!(plans.len(), 4, "one plan per distinct content");
        let by = |x: ContentHash| plans.iter().find(|p| p.hash == x).unwrap();
        // Both bases held: the smaller download (500 + 900 < 500 + 2000).
        assert_eq!(by(h(1)).source, Source::Delta(needs(h(11), 900, None)));
        assert_eq!(by(h(1)).path, "a");
        // The base of b's list is not held, an older b is: RDC.
        assert_eq!(by(h(2)).source, Source::Rdc(h(20)));
        assert_eq!(by(h(3)).source, Source::Held);
        assert_eq!(by(h(4)).source, Source::Pieces);
        let total = download_bytes(&m, held);
        // a: 1400; b without RDC: pieces 1000 + pack big/2; c: 0; e: 1000 + big/2.
        assert_eq!(total, 1400 + 2 * (1000 + big / 2));
        // Nothing held: small files come compressed.
        assert_eq!(
            plan(&m, |_| false, |_| None)
                .iter()
                .find(|p| p.hash == h(3))
                .unwrap()
                .source,
            Source::Small
        );
    }
}
