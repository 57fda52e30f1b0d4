//! Signed manifests on disk (the DP library's and the branch cache's): read,
//! verified against the pinned key, and checked to be the manifest of the
//! package and version the file's place says, in one function.

use std::path::Path;

use anyhow::Context;
use ed25519_dalek::VerifyingKey;
use peerdelta_protocol::manifest::{self, Manifest, PackageName};

/// Reads a signed manifest file: verified against `key`, and describing
/// `package` version `version` (a file moved under another version's name
/// is refused). The DP's library and the agent's cache both keep them.
pub fn read_verified(
    path: &Path,
    key: &VerifyingKey,
    package: &PackageName,
    version: u64,
) -> anyhow::Result<(Manifest, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let m = manifest::open_manifest_of(&bytes, key, package, version)
        .with_context(|| format!("verifying {}", path.display()))?;
    Ok((m, bytes))
}

/// Verifies signed manifest bytes held somewhere (a cache, a peer's answer)
/// as the manifest of `package` version `version`: `None` if they are not.
pub fn open_verified(
    bytes: &[u8],
    key: &VerifyingKey,
    package: &PackageName,
    version: u64,
) -> Option<Manifest> {
    manifest::open_manifest_of(bytes, key, package, version).ok()
}
