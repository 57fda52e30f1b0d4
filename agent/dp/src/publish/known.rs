//! What a publish knows before it reads the tree: the previous versions
//! (their manifests, the library references of their contents, their large
//! contents by size) and the pieces (MiB run) hashes of stored contents.
//! The lowest layer of the publish steps: `scan`, `store`, `needs`,
//! `bundles` and `version` build on it, and it on none of them.

use std::collections::HashMap;
use std::fs;

use ed25519_dalek::VerifyingKey;
use peerdelta_protocol::manifest::{Manifest, PackageIndex, PackageName, PiecesRef, SigRef};
use peerdelta_protocol::needs::Need;
use peerdelta_protocol::{ContentHash, layout, needsfile};

use crate::library::Library;

/// Files at least this large are mostly not hashed before they are stored
/// (they are compared with recent contents run by run, or copied first; the
/// module doc, step 3, has the exceptions), and are signed one at a time on
/// all cores; smaller ones are hashed and signed several at once, one core
/// each.
pub(super) const BIG_FILE: u64 = 32 << 20;

/// What the library holds for a content besides its bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stored {
    pub(super) sig: SigRef,
    pub(super) pieces: Option<PiecesRef>,
    pub(super) zst_len: Option<u64>,
}

impl Stored {
    /// Bytes a whole download of the content (of `size` bytes) takes.
    pub(super) fn whole_download_bytes(&self, size: u64) -> u64 {
        peerdelta_protocol::getplan::whole_download_bytes(size, self.pieces.as_ref(), self.zst_len)
    }
}

/// The newest `depth` manifests of the package, newest first.
pub(super) fn previous_manifests(
    lib: &Library,
    package: &PackageName,
    index: Option<&PackageIndex>,
    key: &VerifyingKey,
    depth: usize,
) -> anyhow::Result<Vec<Manifest>> {
    let Some(index) = index else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in index.versions.iter().rev().take(depth) {
        out.push(lib.manifest(package, e.version, key)?.0);
    }
    Ok(out)
}

/// What the previous versions give a publish: their manifests (needs lists
/// start from them), the library references of their contents (reused, not
/// recomputed), and their large contents by size (a large file of one of
/// those sizes is recognised by its runs).
pub(super) struct Previous {
    pub(super) manifests: Vec<Manifest>,
    pub(super) known: HashMap<ContentHash, Stored>,
    pub(super) held_by_size: HashMap<u64, Vec<(ContentHash, Option<PiecesRef>)>>,
}

impl Previous {
    /// The previous versions (the window) of `package`.
    pub(super) fn load(
        lib: &Library,
        package: &PackageName,
        index: Option<&PackageIndex>,
        public: &VerifyingKey,
        depth: usize,
    ) -> anyhow::Result<Previous> {
        // Previous versions: their signature references can be reused, and a
        // large file that one of them holds is recognised by its runs.
        let manifests = previous_manifests(lib, package, index, public, depth)?;
        let mut known: HashMap<ContentHash, Stored> = HashMap::new();
        let mut held_by_size: HashMap<u64, Vec<(ContentHash, Option<PiecesRef>)>> = HashMap::new();
        for m in &manifests {
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
        Ok(Previous {
            manifests,
            known,
            held_by_size,
        })
    }
}

/// The hash of the run `offset..offset + len` of a content of `len_all`
/// bytes if it is one of its pieces, `aligned` (from [`pieces_hashes`]).
pub(super) fn piece_hash(
    aligned: &[ContentHash],
    len_all: u64,
    offset: u64,
    len: u64,
) -> Option<ContentHash> {
    aligned
        .get(needsfile::piece_index(offset, len, len_all)?)
        .copied()
}

/// The run hashes of a content's pieces file (its [`needsfile::MAX_RUN`]-aligned
/// runs), which needs lists to it reuse, if the file is the one `known`
/// names; none otherwise (the needs lists then hash all their runs).
pub(super) fn pieces_hashes(
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
