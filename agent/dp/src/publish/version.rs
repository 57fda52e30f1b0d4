//! Steps 1 and 6 of a publish: recovering from a publish that died, and
//! the new version: signed manifest, manifest deltas, version directory,
//! index.

use std::collections::HashMap;
use std::fs::{self};
use std::io::ErrorKind;

use anyhow::{Context, bail};
use ed25519_dalek::{SigningKey, VerifyingKey};
use peerdelta_protocol::bundle::BUNDLE_VERSIONS;
use peerdelta_protocol::manifest::{
    self, BundleRef, Entry, EntryKind, FileEntry, IndexEntry, MANIFEST_MAGIC, Manifest,
    ManifestDelta, NeedsRef, PackageIndex, PackageName, RelPath,
};
use peerdelta_protocol::rdc::LevelParams;
use peerdelta_protocol::{ContentHash, layout};

use crate::library::Library;
use peerdelta_store::fsutil::{create_synced, sync_dir};
use peerdelta_store::util::now_ms;

use super::known::Stored;
use super::scan::Scanned;

/// The index of a package's first version (generation 0: signing makes it 1).
pub(super) fn new_index(package: &PackageName, versions: Vec<IndexEntry>) -> PackageIndex {
    PackageIndex {
        package: package.clone(),
        generation: 0,
        signed_ms: 0,
        expires_ms: None,
        versions,
    }
}

/// Takes versions that were renamed into place but not indexed (a publish died
/// between the two steps) into the index, and empties the temporary directory.
pub(super) fn recover(
    lib: &Library,
    package: &PackageName,
    key: &VerifyingKey,
) -> anyhow::Result<(Option<PackageIndex>, Vec<u64>)> {
    let tmp = lib.tmp_dir();
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for e in fs::read_dir(&tmp).with_context(|| format!("listing {}", tmp.display()))? {
        let p = e?.path();
        let _ = if p.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
    }
    let mut index = lib.index(package, key)?;
    let latest = index
        .as_ref()
        .and_then(|i| i.latest())
        .map_or(0, |e| e.version);
    let dir = lib.path(&format!("packages/{package}"));
    let mut found: Vec<u64> = match fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .filter(|&v| v > latest)
            .collect(),
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    found.sort_unstable();
    let mut recovered = Vec::new();
    for v in found {
        if v != latest + 1 + recovered.len() as u64 {
            bail!(
                "{} has version {v} but not the versions before it; fix the library by hand",
                dir.display()
            );
        }
        let (m, bytes) = lib.manifest(package, v, key)?;
        let entry = index_entry(lib, &m, &bytes)?;
        match index.as_mut() {
            Some(i) => i.versions.push(entry),
            None => index = Some(new_index(package, vec![entry])),
        }
        tracing::warn!(package = %package, version = v, "recovered a version a previous publish left out of the index");
        recovered.push(v);
    }
    Ok((index, recovered))
}

/// Renames a complete version directory into place.
/// zstd level of manifests (alone and against earlier ones): a manifest is
/// fetched by every receiver, and small.
pub(super) const MANIFEST_LEVEL: i32 = 6;

/// The manifest compressed alone (`manifest.zst`) and against the signed
/// manifests of the `previous` versions (`manifest.from-<v>`): file name and
/// bytes of each.
pub(super) fn manifest_extras(
    lib: &Library,
    package: &PackageName,
    sealed: &[u8],
    previous: &[u64],
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = vec![(
        "manifest.zst".to_owned(),
        peerdelta_store::pack::compress(sealed, None, MANIFEST_LEVEL)?,
    )];
    for &v in previous {
        let path = lib.path(&layout::manifest(package, v));
        let old = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let delta = peerdelta_store::pack::compress(sealed, Some(&old), MANIFEST_LEVEL)?;
        out.push((format!("manifest.from-{v}"), delta));
    }
    Ok(out)
}

/// The index entry of a version whose directory is in place: the manifest's
/// hash and size, and the compressed forms found beside it.
pub(super) fn index_entry(
    lib: &Library,
    m: &Manifest,
    sealed: &[u8],
) -> anyhow::Result<IndexEntry> {
    let size = |rel: &str| {
        fs::metadata(lib.path(rel))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    };
    let dir = lib.path(&format!("packages/{}/{}", m.package, m.version));
    let mut manifest_deltas = Vec::new();
    for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = e?.file_name();
        let Some(from) = name
            .to_str()
            .and_then(|n| n.strip_prefix("manifest.from-"))
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        if let Some(len) = size(&layout::manifest_delta(&m.package, m.version, from)) {
            manifest_deltas.push(ManifestDelta { from, len });
        }
    }
    manifest_deltas.sort_by_key(|d| d.from);
    Ok(IndexEntry {
        version: m.version,
        manifest_hash: ContentHash::of(sealed),
        manifest_len: sealed.len() as u64,
        published_ms: m.published_ms,
        files: m.files().count() as u64,
        bytes: m.total_bytes(),
        manifest_zst_len: size(&layout::manifest_zst(&m.package, m.version)),
        manifest_deltas,
    })
}

pub(super) fn write_version(
    lib: &Library,
    package: &PackageName,
    version: u64,
    sealed: &[u8],
    extras: &[(String, Vec<u8>)],
) -> anyhow::Result<()> {
    let tmp = lib.tmp_path("version");
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    create_synced(&tmp.join("manifest"), sealed)?;
    for (name, bytes) in extras {
        create_synced(&tmp.join(name), bytes)?;
    }
    sync_dir(&tmp)?;
    let parent = lib.path(&format!("packages/{package}"));
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let dest = parent.join(version.to_string());
    if dest.exists() {
        bail!("{} already exists", dest.display());
    }
    fs::rename(&tmp, &dest)
        .with_context(|| format!("moving {} to {}", tmp.display(), dest.display()))?;
    sync_dir(&parent)
}

/// Step 6: the manifest of the new version (every path, mode, content,
/// signature, needs lists), signed; its extras (compressed, deltas from
/// the previous manifests); the version directory renamed into place; the
/// index re-signed. Returns the new version number.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_new_version(
    lib: &Library,
    key: &SigningKey,
    package: &PackageName,
    mut index: Option<PackageIndex>,
    tree: &[Scanned],
    files: &[&Scanned],
    hashes: &[ContentHash],
    sig_refs: &HashMap<ContentHash, Stored>,
    mut needs_by_path: HashMap<RelPath, Vec<NeedsRef>>,
    bundles: Vec<BundleRef>,
    params: LevelParams,
) -> anyhow::Result<u64> {
    let version = index
        .as_ref()
        .and_then(|i| i.latest())
        .map_or(1, |e| e.version + 1);
    let mut entries = Vec::with_capacity(tree.len());
    let mut hash_of: HashMap<&RelPath, ContentHash> = HashMap::new();
    for (f, h) in files.iter().zip(hashes) {
        hash_of.insert(&f.rel, *h);
    }
    for e in tree {
        let kind = match e.size {
            None => EntryKind::Dir,
            Some(size) => {
                let hash = hash_of[&e.rel];
                let stored = *sig_refs
                    .get(&hash)
                    .context("a content without signatures")?;
                EntryKind::File(FileEntry {
                    size,
                    hash,
                    sig: stored.sig,
                    needs: needs_by_path.remove(&e.rel).unwrap_or_default(),
                    pieces: stored.pieces,
                    zst_len: stored.zst_len,
                })
            }
        };
        entries.push(Entry {
            path: e.rel.clone(),
            mode: e.mode,
            kind,
        });
    }
    let manifest = Manifest {
        package: package.clone(),
        version,
        published_ms: now_ms(),
        params,
        entries,
        bundles,
    };
    manifest
        .validate()
        .context("the new manifest is inconsistent")?;
    let sealed = manifest::seal(MANIFEST_MAGIC, &manifest, key);
    peerdelta_store::fault::point("publish:before-version-dir");
    let previous: Vec<u64> = index
        .as_ref()
        .map(|i| {
            i.versions
                .iter()
                .rev()
                // As far back as the bundles: a receiver that far behind
                // gets the manifest as a delta too.
                .take(BUNDLE_VERSIONS)
                .map(|e| e.version)
                .collect()
        })
        .unwrap_or_default();
    let extras = manifest_extras(lib, package, &sealed, &previous)?;
    // Every file the manifest names is in place; make that durable first.
    lib.sync()?;
    write_version(lib, package, version, &sealed, &extras)?;
    peerdelta_store::fault::point("publish:after-version-dir");
    let entry = index_entry(lib, &manifest, &sealed)?;
    let mut index = match index.as_mut() {
        Some(i) => {
            i.versions.push(entry);
            i.clone()
        }
        None => new_index(package, vec![entry]),
    };
    lib.write_index(&mut index, key)?;
    peerdelta_store::fault::point("publish:after-index");
    Ok(version)
}
