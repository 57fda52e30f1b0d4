//! `peerdelta dp prune` and `peerdelta dp verify`.

use std::collections::HashSet;
use std::fs;

use anyhow::Context;
use ed25519_dalek::VerifyingKey;
use peerdelta_protocol::manifest::{EntryKind, PackageName};
use peerdelta_protocol::publish::WINDOW;
use peerdelta_protocol::{ContentHash, bundle, layout, needsfile};
use serde::Serialize;

use super::library::Library;

/// What `dp prune` removed (or would remove).
#[derive(Debug, Clone, Serialize)]
pub struct PruneSummary {
    /// Always "prune".
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Signature containers removed.
    pub removed: u64,
    /// Their bytes.
    pub removed_bytes: u64,
    /// Signature containers kept.
    pub kept: u64,
    /// Nothing was deleted.
    pub dry_run: bool,
}

/// Removes the signatures of contents that no package's newest `WINDOW + 1`
/// versions use. Older versions stay downloadable (contents and needs lists
/// are kept); receivers further behind than the window use client-side RDC
/// against the newest version's signatures, which are kept.
pub fn prune(lib: &Library, key: &VerifyingKey, dry_run: bool) -> anyhow::Result<PruneSummary> {
    let _lock = lib.lock()?;
    let mut keep: HashSet<String> = HashSet::new();
    for p in lib.packages()? {
        let Some(index) = lib.index(&p, key)? else {
            continue;
        };
        for e in index.versions.iter().rev().take(WINDOW + 1) {
            let (m, _) = lib.manifest(&p, e.version, key)?;
            for (_, f) in m.files() {
                keep.insert(format!("{}.rdc", f.hash));
            }
        }
    }
    let (mut removed, mut removed_bytes, mut kept) = (0, 0, 0);
    let dir = lib.path("sigs");
    for shard in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let shard = shard?.path();
        if !shard.is_dir() {
            continue;
        }
        for f in fs::read_dir(&shard).with_context(|| format!("listing {}", shard.display()))? {
            let f = f?;
            let name = f.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                kept += 1;
                continue;
            }
            removed += 1;
            removed_bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
            if !dry_run {
                fs::remove_file(f.path())
                    .with_context(|| format!("removing {}", f.path().display()))?;
            }
        }
    }
    Ok(PruneSummary {
        kind: "prune",
        removed,
        removed_bytes,
        kept,
        dry_run,
    })
}

/// One problem found by `dp verify`.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The package and version that names the file.
    pub package: String,
    /// Version.
    pub version: u64,
    /// What is wrong.
    pub problem: String,
}

/// Checks every version of every package: the signed index and manifests,
/// and that every content, signature container and needs list they name is
/// present (with `full`, also that its BLAKE3 matches).
pub fn verify(
    lib: &Library,
    key: &VerifyingKey,
    full: bool,
) -> anyhow::Result<(u64, Vec<Problem>)> {
    let mut problems = Vec::new();
    let mut checked: HashSet<String> = HashSet::new();
    let mut versions = 0;
    for p in lib.packages()? {
        let index = match lib.index(&p, key) {
            Ok(Some(i)) => i,
            Ok(None) => continue,
            Err(e) => {
                problems.push(Problem {
                    package: p.to_string(),
                    version: 0,
                    problem: format!("{e:#}"),
                });
                continue;
            }
        };
        for e in &index.versions {
            versions += 1;
            let mut report = |problem: String| {
                problems.push(Problem {
                    package: p.to_string(),
                    version: e.version,
                    problem,
                })
            };
            let (m, raw) = match lib.manifest(&p, e.version, key) {
                Ok(x) => x,
                Err(err) => {
                    report(format!("{err:#}"));
                    continue;
                }
            };
            if ContentHash::of(&raw) != e.manifest_hash {
                report("manifest does not match the index".into());
            }
            // The compressed forms must give the manifest back.
            let mut forms: Vec<(String, Option<Vec<u8>>, u64)> = Vec::new();
            if let Some(len) = e.manifest_zst_len {
                forms.push((layout::manifest_zst(&p, e.version), None, len));
            }
            for d in &e.manifest_deltas {
                let reference = std::fs::read(lib.path(&layout::manifest(&p, d.from))).ok();
                forms.push((
                    layout::manifest_delta(&p, e.version, d.from),
                    reference,
                    d.len,
                ));
            }
            for (rel, reference, len) in forms {
                let ok = std::fs::read(lib.path(&rel))
                    .ok()
                    .filter(|z| z.len() as u64 == len)
                    .and_then(|z| {
                        peerdelta_store::pack::decompress(&z, reference.as_deref(), raw.len()).ok()
                    });
                if ok.as_deref() != Some(&raw[..]) {
                    report(format!("{rel} does not give the manifest back"));
                }
            }
            for b in &m.bundles {
                let rel = layout::bundle(&b.hash);
                if !checked.insert(rel.clone()) {
                    continue;
                }
                match fs::read(lib.path(&rel)) {
                    Err(_) => report(format!("{rel} is missing (the bundle from v{})", b.from)),
                    Ok(bytes) if bytes.len() as u64 != b.len => report(format!(
                        "{rel} has {} bytes, expected {}",
                        bytes.len(),
                        b.len
                    )),
                    Ok(bytes) if full && ContentHash::of(&bytes) != b.hash => {
                        report(format!("{rel} has BLAKE3 {}", ContentHash::of(&bytes)))
                    }
                    Ok(bytes) if full => {
                        if let Err(err) = bundle::decode(&bytes) {
                            report(format!("{rel}: {err}"));
                        }
                    }
                    Ok(_) => {}
                }
            }
            for entry in &m.entries {
                let EntryKind::File(f) = &entry.kind else {
                    continue;
                };
                let mut files = vec![(layout::content(&f.hash), Some(f.hash), Some(f.size))];
                files.push((layout::sigs(&f.hash), Some(f.sig.hash), Some(f.sig.len)));
                for n in &f.needs {
                    files.push((
                        layout::needs(&n.base, &f.hash),
                        Some(n.file_hash),
                        Some(n.file_len),
                    ));
                    if let Some(len) = n.pack_len {
                        files.push((layout::pack(&n.base, &f.hash), None, Some(len)));
                    }
                }
                if let Some(p) = f.pieces {
                    files.push((
                        layout::needs(&ContentHash::EMPTY, &f.hash),
                        Some(p.file_hash),
                        Some(p.file_len),
                    ));
                    if let Some(len) = p.pack_len {
                        files.push((layout::pack(&ContentHash::EMPTY, &f.hash), None, Some(len)));
                    }
                }
                if let Some(len) = f.zst_len {
                    files.push((layout::content_zst(&f.hash), None, Some(len)));
                }
                for (rel, hash, size) in files {
                    if !checked.insert(rel.clone()) {
                        continue;
                    }
                    let path = lib.path(&rel);
                    match fs::metadata(&path) {
                        Err(_) if rel.starts_with("sigs/") => {} // may have been pruned
                        Err(_) => report(format!("{rel} is missing ({})", entry.path)),
                        Ok(meta) if size.is_some_and(|s| s != meta.len()) => report(format!(
                            "{rel} has {} bytes, expected {}",
                            meta.len(),
                            size.unwrap_or(0)
                        )),
                        Ok(_) if full && hash.is_some() => {
                            match peerdelta_store::fsutil::FileSource::open(&path)
                                .and_then(|f| f.hash(peerdelta_store::util::cores()))
                            {
                                Ok(h) if Some(h) == hash => {
                                    if rel.starts_with("needs/")
                                        && let Err(err) = fs::read(&path)
                                            .map_err(anyhow::Error::from)
                                            .and_then(|b| {
                                                needsfile::decode(&b)
                                                    .map(|_| ())
                                                    .map_err(anyhow::Error::from)
                                            })
                                    {
                                        report(format!("{rel}: {err:#}"));
                                    }
                                }
                                Ok(h) => report(format!("{rel} has BLAKE3 {h}")),
                                Err(err) => report(format!("{rel}: {err:#}")),
                            }
                        }
                        Ok(_) => {}
                    }
                }
            }
        }
    }
    Ok((versions, problems))
}

/// What `dp refresh-index` did.
#[derive(Debug, Clone, Serialize)]
pub struct RefreshSummary {
    /// Always "refresh_index".
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Packages whose index was re-signed, with the new generation.
    pub packages: Vec<(String, u64)>,
    /// When the new indexes expire (ms since the Unix epoch), if they do.
    pub expires_ms: Option<u64>,
}

/// Re-signs the index of `package` (or of every package) as a new
/// generation, valid for the library's configured days from now: run it
/// more often than that validity (from cron) so receivers never see an
/// expired index from a DP that is alive.
pub fn refresh_index(
    lib: &Library,
    key: &VerifyingKey,
    package: Option<&PackageName>,
) -> anyhow::Result<RefreshSummary> {
    let signing = lib.signing_key()?;
    let _lock = lib.lock()?;
    let packages = match package {
        Some(p) => vec![p.clone()],
        None => lib.packages()?,
    };
    let mut out = RefreshSummary {
        kind: "refresh_index",
        packages: Vec::new(),
        expires_ms: None,
    };
    for p in packages {
        let Some(mut index) = lib.index(&p, key)? else {
            anyhow::bail!(peerdelta_store::usage!(
                "package {p} has no index in the library"
            ));
        };
        lib.write_index(&mut index, &signing)?;
        out.expires_ms = index.expires_ms;
        out.packages.push((p.to_string(), index.generation));
    }
    Ok(out)
}
