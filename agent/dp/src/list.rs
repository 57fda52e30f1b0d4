//! `peerdelta dp list`: packages, versions, sizes, and what a receiver holding
//! each of the previous versions downloads for a version (from the needs lists).

use peerdelta_protocol::getplan;
use std::collections::HashSet;

use ed25519_dalek::VerifyingKey;
use peerdelta_protocol::manifest::{IndexEntry, Manifest, PackageName};
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
    /// holding it downloads from the DP (manifest, needs lists, origin runs,
    /// whole files without a needs list).
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

/// Bytes a receiver holding `old` downloads to get `new` (index excluded).
pub fn delta_cost(new: &Manifest, entry: &IndexEntry, old: &Manifest) -> u64 {
    let held: HashSet<_> = old.files().map(|(_, f)| f.hash).collect();
    entry.manifest_fetch(|v| v == old.version).len()
        + getplan::download_bytes(new, |h| held.contains(h))
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
                bytes: delta_cost(&m, e, old),
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
