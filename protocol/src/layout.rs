//! Where things are in a DP library, relative to its root. The DP writes these
//! paths and agents fetch them as URL paths, so both use these functions.
//!
//! ```text
//! dp.pub                                          the DP's public key
//! content/<shard>/<hash>                          contents by BLAKE3
//! sigs/<shard>/<hash>.rdc                         signature containers
//! needs/<target shard>/<base>-<target>.needs.bin  needs lists (base = BLAKE3
//!                                                 of nothing: pieces file)
//! needs/<target shard>/<base>-<target>.pack       their origin runs, compressed
//! needs/<shard>/<hash>.bundle                     a version's small contents,
//!                                                 patched against an earlier one
//! packages/<package>/index                        signed list of versions
//! packages/<package>/<version>/manifest           signed manifest
//! ```

use crate::hash::ContentHash;
use crate::manifest::PackageName;

/// The DP's public key file.
pub const PUBLIC_KEY: &str = "dp.pub";

/// Previous versions a version's needs lists start from (with the version
/// itself, ConfigMgr BDR's window of five): a receiver holding one of them
/// rebuilds with needs lists; one further behind uses client-side RDC.
pub const WINDOW: usize = 4;

/// A content.
pub fn content(h: &ContentHash) -> String {
    format!("content/{}/{}", h.shard(), h)
}

/// A small content compressed with zstd (one frame).
pub fn content_zst(h: &ContentHash) -> String {
    format!("content/{}/{}.zst", h.shard(), h)
}

/// A content's signature container.
pub fn sigs(h: &ContentHash) -> String {
    format!("sigs/{}/{}.rdc", h.shard(), h)
}

/// The needs list from `base` to `target`.
pub fn needs(base: &ContentHash, target: &ContentHash) -> String {
    format!("needs/{}/{}-{}.needs.bin", target.shard(), base, target)
}

/// The compressed origin runs of the needs list from `base` to `target`.
pub fn pack(base: &ContentHash, target: &ContentHash) -> String {
    format!("needs/{}/{}-{}.pack", target.shard(), base, target)
}

/// A bundle, by its hash (see [`crate::bundle`]).
pub fn bundle(h: &ContentHash) -> String {
    format!("needs/{}/{}.bundle", h.shard(), h)
}

/// A package's index.
pub fn index(package: &PackageName) -> String {
    format!("packages/{package}/index")
}

/// A package version's manifest.
pub fn manifest(package: &PackageName, version: u64) -> String {
    format!("packages/{package}/{version}/manifest")
}

/// A version's manifest compressed alone.
pub fn manifest_zst(package: &PackageName, version: u64) -> String {
    format!("packages/{package}/{version}/manifest.zst")
}

/// A version's manifest compressed against the manifest of version `from`.
pub fn manifest_delta(package: &PackageName, version: u64, from: u64) -> String {
    format!("packages/{package}/{version}/manifest.from-{from}")
}

/// Whether `rel` names an immutable, hash-named library file an agent may
/// keep and pass to peers (needs lists, pieces files, signatures): exactly
/// `needs/<shard>/<name>` or `sigs/<shard>/<name>`, plain names only.
pub fn is_library_file(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    let [top, shard, name] = parts.as_slice() else {
        return false;
    };
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 200
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    matches!(*top, "needs" | "sigs") && plain(shard) && plain(name)
}

/// What a library path holds, for accounting (metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `content/`.
    Content,
    /// `sigs/`.
    Signatures,
    /// `needs/`.
    Needs,
    /// `packages/` (manifests and indexes) and the public key.
    Manifests,
    /// Anything else.
    Other,
}

impl Kind {
    /// Classifies a library-relative path.
    pub fn of(path: &str) -> Kind {
        let path = path.trim_start_matches('/');
        match path.split('/').next() {
            Some("content") => Kind::Content,
            Some("sigs") => Kind::Signatures,
            Some("needs") => Kind::Needs,
            Some("packages") | Some(PUBLIC_KEY) => Kind::Manifests,
            _ => Kind::Other,
        }
    }

    /// Label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Kind::Content => "content",
            Kind::Signatures => "signatures",
            Kind::Needs => "needs",
            Kind::Manifests => "manifests",
            Kind::Other => "other",
        }
    }

    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::Content,
        Kind::Signatures,
        Kind::Needs,
        Kind::Manifests,
        Kind::Other,
    ];
}
