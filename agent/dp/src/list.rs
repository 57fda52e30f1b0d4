//! `peerdelta dp list`: packages, versions, sizes, and what a receiver holding
//! each of the previous versions downloads for a version (the manifest, the
//! bundle from that version, then needs lists, packs and whole contents for
//! the rest: what `get` does).

use peerdelta_protocol::{bundle, getplan, layout};
use std::collections::HashSet;

use ed25519_dalek::VerifyingKey;
use peerdelta_protocol::ContentHash;
use peerdelta_protocol::manifest::{BundleRef, IndexEntry, Manifest, PackageName};
use peerdelta_protocol::publish::WINDOW;
use serde::Serialize;

use super::library::Library;

/// One version in `dp list`.
#[derive(Debug, Clone, Serialize)]
pub struct VersionRow {
    /// Version number.
    pub version: u64,
    /// Files.
    pub files: u64,
    /// Bytes of the files.
    pub bytes: u64,
    /// When it was published (ms since the Unix epoch).
    pub published_ms: u64,
    /// Size of the signed manifest.
    pub manifest_bytes: u64,
    /// For each of the previous versions (newest first): bytes a receiver
    /// holding it downloads from the DP (manifest, bundle, needs lists,
    /// origin runs, whole files without a needs list).
    pub from_previous: Vec<DeltaCost>,
}

/// Download cost from one older version.
#[derive(Debug, Clone, Serialize)]
pub struct DeltaCost {
    /// The version held.
    pub from: u64,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// One package in `dp list`.
#[derive(Debug, Clone, Serialize)]
pub struct PackageRow {
    /// Always "package".
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The package.
    pub package: String,
    /// Its versions, oldest first.
    pub versions: Vec<VersionRow>,
}

/// Bytes a receiver holding `old` downloads to get `new` (index excluded):
/// the manifest, the bundle from `old` if there is one, and what
/// [`getplan`] gives for the contents the bundle does not hold.
pub fn delta_cost(lib: &Library, new: &Manifest, entry: &IndexEntry, old: &Manifest) -> u64 {
    let held: HashSet<_> = old.files().map(|(_, f)| f.hash).collect();
    entry.manifest_fetch(|v| v == old.version).len()
        + getplan::download_bytes_with_bundle(
            new,
            |h| held.contains(h),
            |v| v == old.version,
            |b| bundle_targets(lib, b),
        )
}

/// The targets of a bundle in the library (`None` if it cannot be read).
pub fn bundle_targets(lib: &Library, b: &BundleRef) -> Option<Vec<ContentHash>> {
    let bytes = std::fs::read(lib.path(&layout::bundle(&b.hash))).ok()?;
    let bundle = bundle::decode(&bytes).ok()?;
    Some(bundle.entries.iter().map(|e| e.target).collect())
}

/// Lists one package.
pub fn list_package(
    lib: &Library,
    package: &PackageName,
    key: &VerifyingKey,
) -> anyhow::Result<PackageRow> {
    let index = lib
        .index(package, key)?
        .ok_or_else(|| anyhow::anyhow!("no package {package} in {}", lib.root.display()))?;
    let mut manifests: Vec<(Manifest, u64)> = Vec::new();
    let mut rows = Vec::new();
    for e in &index.versions {
        let (m, raw) = lib.manifest(package, e.version, key)?;
        let from_previous = manifests
            .iter()
            .rev()
            .take(WINDOW)
            .map(|(old, _)| DeltaCost {
                from: old.version,
                bytes: delta_cost(lib, &m, e, old),
            })
            .collect();
        rows.push(VersionRow {
            version: e.version,
            files: e.files,
            bytes: e.bytes,
            published_ms: e.published_ms,
            manifest_bytes: raw.len() as u64,
            from_previous,
        });
        manifests.push((m, raw.len() as u64));
    }
    Ok(PackageRow {
        kind: "package",
        package: package.to_string(),
        versions: rows,
    })
}
