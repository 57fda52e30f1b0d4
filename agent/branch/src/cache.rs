//! The agent's content cache.
//!
//! ```text
//! CACHE/content/<shard>/<hash>            verified contents, by BLAKE3
//! CACHE/versions/<package>/<version>/manifest   signed manifest of a complete version
//! CACHE/versions/<package>/<version>/lock       held (shared) while the version is in use
//! CACHE/versions/<package>/<version>/pending    signed manifest of a version being downloaded
//! CACHE/partial/<hash>/                   a content being built: data, journal of verified runs
//! CACHE/quarantine/                       contents that failed verification
//! CACHE/tmp/                              files being written
//! ```
//!
//! Invariants: a file is in `content/` only if its BLAKE3 was checked (the
//! only way in is [`Cache::insert`], which takes a [`VerifiedContent`] that
//! only [`verify_file`] makes) and it was fsynced before the rename. A version
//! is recorded (its manifest written) only once every content it names is in
//! `content/`. So a crash or SIGKILL at any point leaves, at worst, files in
//! `tmp/` and `partial/`, never a corrupt file recorded as good.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, bail};
use ed25519_dalek::VerifyingKey;
use peerdelta_protocol::ContentHash;
use peerdelta_protocol::manifest::{self, Manifest, PackageName};
use serde::Serialize;

use peerdelta_store::content::{ContentStore, VerifiedContent, hash_reader};
use peerdelta_store::fsutil::sync_dir;

/// The cache.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    contents: ContentStore,
}

/// One version in the cache.
#[derive(Debug, Clone, Serialize)]
pub struct CachedVersion {
    /// The package.
    pub package: String,
    /// The version.
    pub version: u64,
    /// Files.
    pub files: u64,
    /// Bytes of its files.
    pub bytes: u64,
    /// Last used (ms since the Unix epoch).
    pub last_used_ms: u64,
    /// Some contents are missing (damaged and quarantined).
    pub incomplete: bool,
}

/// What `cache verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Always "cache_verify".
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Contents checked.
    pub checked: u64,
    /// Contents that failed and were quarantined.
    pub quarantined: Vec<String>,
    /// Versions no longer complete, removed from the cache (get them again).
    pub dropped_versions: Vec<String>,
}

/// What `cache gc` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Always "cache_gc".
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Bytes the cache took before: contents, kept library files, temporary,
    /// partial and quarantined data.
    pub bytes_before: u64,
    /// After.
    pub bytes_after: u64,
    /// Bytes of stale temporary files removed (their writer is gone).
    pub tmp_removed_bytes: u64,
    /// Bytes of quarantined contents removed.
    pub quarantine_removed_bytes: u64,
    /// Bytes of partial downloads removed (no download in progress needs them).
    pub partial_removed_bytes: u64,
    /// Versions evicted, least recently used first.
    pub evicted: Vec<String>,
    /// Versions kept although over the limit, and why.
    pub kept: Vec<String>,
}

impl Cache {
    /// Where a verified DP library file (needs list, pieces file) is kept so
    /// that peers can have it from us; `None` for a path that is not one.
    pub fn library_file(&self, rel: &str) -> Option<PathBuf> {
        peerdelta_protocol::layout::is_library_file(rel)
            .then(|| self.root.join("library").join(rel))
    }

    /// Keeps a verified library file (temporary file, fsync, rename).
    pub fn keep_library_file(&self, rel: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let Some(path) = self.library_file(rel) else {
            anyhow::bail!("{rel} is not a library file path");
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = self.tmp_path("library");
        peerdelta_store::fsutil::create_synced(&tmp, bytes)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// What this cache last verified of `package`'s index (rollback
    /// protection: `CACHE/indexes/<package>`).
    pub fn index_seen(&self, package: &PackageName) -> Option<manifest::IndexSeen> {
        let b = fs::read(self.root.join("indexes").join(package.as_str())).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Records a verified index, if it is newer than the one recorded.
    pub fn record_index_seen(
        &self,
        package: &PackageName,
        seen: manifest::IndexSeen,
    ) -> anyhow::Result<()> {
        if self
            .index_seen(package)
            .is_some_and(|old| old.generation >= seen.generation && old.latest >= seen.latest)
        {
            return Ok(());
        }
        let dir = self.root.join("indexes");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        peerdelta_store::fsutil::write_atomic(
            &dir.join(package.as_str()),
            &serde_json::to_vec(&seen)?,
        )
    }

    /// Opens (creating) the cache at `root`.
    pub fn open(root: &Path) -> anyhow::Result<Cache> {
        for d in ["content", "versions", "partial", "quarantine", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        Ok(Cache {
            root: root.to_owned(),
            contents: ContentStore::new(&root.join("content")),
        })
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a content is (or would be).
    pub fn content_path(&self, h: &ContentHash) -> PathBuf {
        self.contents.path(h)
    }

    /// Whether a content is present.
    pub fn has(&self, h: &ContentHash) -> bool {
        self.contents.has(h)
    }

    /// A new temporary path.
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}.{}.{n}", std::process::id()))
    }

    /// The work directory of a content being built.
    pub fn partial_dir(&self, h: &ContentHash) -> PathBuf {
        self.root.join("partial").join(h.to_hex())
    }

    /// Records a verified content (moving the file in).
    pub fn insert(&self, v: VerifiedContent) -> anyhow::Result<PathBuf> {
        self.contents.insert(v)
    }

    /// Moves a damaged content out of the cache.
    pub fn quarantine(&self, h: &ContentHash, why: &str) -> anyhow::Result<()> {
        let src = self.content_path(h);
        let dest = self.root.join("quarantine").join(format!(
            "{}.{}",
            h.to_hex(),
            peerdelta_store::util::now_ms()
        ));
        match fs::rename(&src, &dest) {
            Ok(()) => {
                tracing::warn!(content = %h, "quarantined a damaged content: {why}");
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("quarantining {}", src.display())),
        }
    }

    fn version_dir(&self, package: &PackageName, version: u64) -> PathBuf {
        self.root
            .join("versions")
            .join(package.as_str())
            .join(version.to_string())
    }

    /// Marks a version as being downloaded: its signed manifest is kept as
    /// `pending` and a shared lock is held (returned) until the download
    /// ends, so `gc` keeps every content it names, and the versions of the
    /// package already cached are locked too (their contents are the
    /// download's bases).
    pub fn begin_version(&self, m: &Manifest, signed: &[u8]) -> anyhow::Result<Vec<File>> {
        let mut locks = vec![self.use_version(&m.package, m.version)?];
        let dir = self.version_dir(&m.package, m.version);
        let tmp = self.tmp_path("pending");
        peerdelta_store::fsutil::create_synced(&tmp, signed)?;
        fs::rename(&tmp, dir.join("pending"))
            .with_context(|| format!("recording {} as pending", dir.display()))?;
        for v in self.versions_of(&m.package) {
            if v != m.version {
                locks.push(self.use_version(&m.package, v)?);
            }
        }
        Ok(locks)
    }

    /// Takes a shared lock marking a version as in use (gc will not evict it).
    pub fn use_version(&self, package: &PackageName, version: u64) -> anyhow::Result<File> {
        let dir = self.version_dir(package, version);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .with_context(|| format!("opening {}", dir.join("lock").display()))?;
        f.lock_shared()
            .with_context(|| format!("locking {}", dir.join("lock").display()))?;
        Ok(f)
    }

    /// Records a complete version: every content it names must be present.
    pub fn record_version(&self, m: &Manifest, signed: &[u8]) -> anyhow::Result<()> {
        for (e, f) in m.files() {
            if !self.has(&f.hash) {
                bail!(
                    "cannot record {} v{}: {} is missing",
                    m.package,
                    m.version,
                    e.path
                );
            }
        }
        let dir = self.version_dir(&m.package, m.version);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = self.tmp_path("manifest");
        peerdelta_store::fsutil::create_synced(&tmp, signed)?;
        fs::rename(&tmp, dir.join("manifest"))
            .with_context(|| format!("recording {}", dir.display()))?;
        let _ = fs::remove_file(dir.join("pending"));
        sync_dir(&dir)?;
        self.touch(&m.package, m.version);
        Ok(())
    }

    /// Contents named by the pending manifests of versions being downloaded
    /// now (their lock is held by someone).
    fn downloading(&self, key: &VerifyingKey) -> HashSet<ContentHash> {
        let mut out = HashSet::new();
        let Ok(packages) = fs::read_dir(self.root.join("versions")) else {
            return out;
        };
        for v in packages
            .flatten()
            .filter_map(|p| fs::read_dir(p.path()).ok())
            .flatten()
            .flatten()
        {
            let dir = v.path();
            let Ok(bytes) = fs::read(dir.join("pending")) else {
                continue;
            };
            let busy = OpenOptions::new()
                .write(true)
                .open(dir.join("lock"))
                .is_ok_and(|l| l.try_lock().is_err());
            if !busy {
                continue;
            }
            match manifest::open_manifest(&bytes, key) {
                Ok(m) => out.extend(m.files().map(|(_, f)| f.hash)),
                Err(e) => tracing::warn!("{}: {e}", dir.join("pending").display()),
            }
        }
        out
    }

    /// Marks a version as just used.
    pub fn touch(&self, package: &PackageName, version: u64) {
        let p = self.version_dir(package, version).join("used");
        let _ = fs::write(&p, peerdelta_store::util::now_ms().to_string());
    }

    fn last_used(&self, package: &PackageName, version: u64) -> u64 {
        fs::read_to_string(self.version_dir(package, version).join("used"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Recorded versions: `(package, version)`, sorted.
    pub fn versions(&self) -> anyhow::Result<Vec<(PackageName, u64)>> {
        let mut out = Vec::new();
        let root = self.root.join("versions");
        for p in fs::read_dir(&root).with_context(|| format!("listing {}", root.display()))? {
            let p = p?;
            let Some(name) = p
                .file_name()
                .to_str()
                .and_then(|n| PackageName::new(n).ok())
            else {
                continue;
            };
            for v in fs::read_dir(p.path())? {
                let v = v?;
                if let Some(n) = v.file_name().to_str().and_then(|n| n.parse::<u64>().ok())
                    && v.path().join("manifest").is_file()
                {
                    out.push((name.clone(), n));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// A recorded version's manifest and its signed bytes.
    pub fn manifest(
        &self,
        package: &PackageName,
        version: u64,
        key: &VerifyingKey,
    ) -> anyhow::Result<(Manifest, Vec<u8>)> {
        peerdelta_store::manifest_file::read_verified(
            &self.version_dir(package, version).join("manifest"),
            key,
            package,
            version,
        )
    }

    /// The recorded versions of `package`.
    pub fn versions_of(&self, package: &PackageName) -> std::collections::BTreeSet<u64> {
        self.versions()
            .unwrap_or_default()
            .into_iter()
            .filter(|(p, _)| p == package)
            .map(|(_, v)| v)
            .collect()
    }

    /// A recorded version's signed manifest as stored (not verified: callers
    /// check it against a signed hash).
    pub fn manifest_raw(&self, package: &PackageName, version: u64) -> Option<Vec<u8>> {
        fs::read(self.version_dir(package, version).join("manifest")).ok()
    }

    /// Every recorded version with its manifest (unreadable ones skipped).
    pub fn manifests(&self, key: &VerifyingKey) -> anyhow::Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for (p, v) in self.versions()? {
            match self.manifest(&p, v, key) {
                Ok((m, _)) => out.push(m),
                Err(e) => tracing::warn!("skipping cached {p} v{v}: {e:#}"),
            }
        }
        Ok(out)
    }

    /// The versions with sizes and use times.
    pub fn list(&self, key: &VerifyingKey) -> anyhow::Result<Vec<CachedVersion>> {
        let mut out = Vec::new();
        for m in self.manifests(key)? {
            out.push(CachedVersion {
                package: m.package.to_string(),
                version: m.version,
                files: m.files().count() as u64,
                bytes: m.total_bytes(),
                last_used_ms: self.last_used(&m.package, m.version),
                incomplete: m.files().any(|(_, f)| !self.has(&f.hash)),
            });
        }
        Ok(out)
    }

    fn all_contents(&self) -> anyhow::Result<Vec<(ContentHash, PathBuf, u64)>> {
        self.contents.list()
    }

    /// Re-hashes every content, quarantines the damaged ones, and removes the
    /// records of versions that are no longer complete.
    pub fn verify(&self, key: &VerifyingKey) -> anyhow::Result<VerifyReport> {
        let mut report = VerifyReport {
            kind: "cache_verify",
            ..Default::default()
        };
        for (h, path, _) in self.all_contents()? {
            report.checked += 1;
            let ok = File::open(&path)
                .and_then(hash_reader)
                .map(|(a, _)| a == h)
                .unwrap_or(false);
            if !ok {
                self.quarantine(&h, "cache verify")?;
                report.quarantined.push(h.to_hex());
            }
        }
        for m in self.manifests(key)? {
            if m.files().any(|(_, f)| !self.has(&f.hash)) {
                let dir = self.version_dir(&m.package, m.version);
                let _ = fs::remove_file(dir.join("manifest"));
                report
                    .dropped_versions
                    .push(format!("{} v{}", m.package, m.version));
            }
        }
        Ok(report)
    }

    /// Brings the cache down to at most `max_bytes`, counting everything it
    /// holds (contents, kept library files, temporary, partial and
    /// quarantined data). In order: temporary files whose writer is gone
    /// (always), quarantined contents, partial downloads no download in
    /// progress needs, then least recently used versions. Never a version in
    /// use or being downloaded (nor a content it names), nor the newest
    /// version of a package unless `include_newest`.
    pub fn gc(
        &self,
        key: &VerifyingKey,
        max_bytes: u64,
        include_newest: bool,
    ) -> anyhow::Result<GcReport> {
        let contents = self.all_contents()?;
        let mut total = self.used_bytes();
        let mut report = GcReport {
            kind: "cache_gc",
            bytes_before: total,
            ..Default::default()
        };
        // Temporary files of processes that are gone, whatever the size.
        report.tmp_removed_bytes = self.clean_tmp();
        total = total.saturating_sub(report.tmp_removed_bytes);
        if total > max_bytes {
            report.quarantine_removed_bytes =
                remove_children(&self.root.join("quarantine"), |_| true);
            total = total.saturating_sub(report.quarantine_removed_bytes);
        }
        let downloading = self.downloading(key);
        if total > max_bytes {
            report.partial_removed_bytes = remove_children(&self.root.join("partial"), |name| {
                name.parse::<ContentHash>()
                    .is_ok_and(|h| !downloading.contains(&h))
            });
            total = total.saturating_sub(report.partial_removed_bytes);
        }
        let mut manifests = self.manifests(key)?;
        let newest: BTreeMap<String, u64> = manifests.iter().fold(BTreeMap::new(), |mut acc, m| {
            let e = acc.entry(m.package.to_string()).or_insert(0);
            *e = (*e).max(m.version);
            acc
        });
        manifests.sort_by_key(|m| self.last_used(&m.package, m.version));
        let mut live: Vec<Manifest> = manifests.clone();
        let mut removed: HashSet<ContentHash> = HashSet::new();
        for m in manifests {
            if total <= max_bytes {
                break;
            }
            let name = format!("{} v{}", m.package, m.version);
            if !include_newest && newest.get(m.package.as_str()) == Some(&m.version) {
                report.kept.push(format!("{name}: newest version"));
                continue;
            }
            let dir = self.version_dir(&m.package, m.version);
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join("lock"))?;
            if lock.try_lock().is_err() {
                report.kept.push(format!("{name}: in use"));
                continue;
            }
            fs::remove_file(dir.join("manifest")).with_context(|| format!("evicting {name}"))?;
            let _ = fs::remove_file(dir.join("used"));
            live.retain(|x| !(x.package == m.package && x.version == m.version));
            let still: HashSet<ContentHash> = live
                .iter()
                .flat_map(|x| x.files().map(|(_, f)| f.hash))
                .chain(downloading.iter().copied())
                .collect();
            for (h, path, s) in &contents {
                if !still.contains(h) && !removed.contains(h) && path.exists() {
                    fs::remove_file(path)
                        .with_context(|| format!("removing {}", path.display()))?;
                    removed.insert(*h);
                    total = total.saturating_sub(*s);
                }
            }
            drop(lock);
            let _ = fs::remove_dir_all(&dir);
            report.evicted.push(name);
        }
        if !report.evicted.is_empty() {
            let still: HashSet<ContentHash> = live
                .iter()
                .flat_map(|x| x.files().map(|(_, f)| f.hash))
                .chain(downloading.iter().copied())
                .collect();
            self.prune_library(&still);
        }
        report.bytes_after = self.used_bytes();
        Ok(report)
    }

    /// Bytes the cache takes on disk: contents, kept library files,
    /// temporary, partial and quarantined data.
    pub fn used_bytes(&self) -> u64 {
        ["content", "library", "tmp", "partial", "quarantine"]
            .iter()
            .map(|d| dir_bytes(&self.root.join(d)))
            .sum()
    }

    /// Removes temporary files whose writing process is gone (the name
    /// carries its pid) or that are older than a day; returns their bytes.
    fn clean_tmp(&self) -> u64 {
        let me = std::process::id();
        remove_children_meta(&self.root.join("tmp"), |name, meta| {
            let pid = name.rsplit('.').nth(1).and_then(|p| p.parse::<u32>().ok());
            let gone = match pid {
                Some(p) if p == me => false,
                Some(p) => !Path::new(&format!("/proc/{p}")).exists(),
                None => true,
            };
            let old = meta
                .modified()
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|d| d.as_secs() > 24 * 3600);
            gone || old
        })
    }

    /// Removes kept needs lists whose target is no longer cached (they were
    /// kept only to pass to peers building that target).
    fn prune_library(&self, live: &HashSet<ContentHash>) {
        let Ok(shards) = fs::read_dir(self.root.join("library").join("needs")) else {
            return;
        };
        for file in shards
            .flatten()
            .filter_map(|d| fs::read_dir(d.path()).ok())
            .flatten()
            .flatten()
        {
            let name = file.file_name();
            let target = name
                .to_str()
                .and_then(|n| n.split('.').next())
                .and_then(|n| n.split('-').nth(1))
                .and_then(|t| t.parse::<ContentHash>().ok());
            if target.is_some_and(|t| !live.contains(&t)) {
                let _ = fs::remove_file(file.path());
            }
        }
    }
}

/// Bytes of the files under `dir` (blocks in use, so sparse files count
/// what they take).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Removes the entries of `dir` whose name passes `remove`; returns their bytes.
fn remove_children(dir: &Path, remove: impl Fn(&str) -> bool) -> u64 {
    remove_children_meta(dir, |name, _| remove(name))
}

fn remove_children_meta(dir: &Path, remove: impl Fn(&str, &fs::Metadata) -> bool) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    let mut freed = 0;
    for e in rd.flatten() {
        let (Some(name), Ok(meta)) = (e.file_name().to_str().map(str::to_owned), e.metadata())
        else {
            continue;
        };
        if !remove(&name, &meta) {
            continue;
        }
        let bytes = if meta.is_dir() {
            dir_bytes(&e.path())
        } else {
            use std::os::unix::fs::MetadataExt;
            meta.blocks() * 512
        };
        let gone = if meta.is_dir() {
            fs::remove_dir_all(e.path())
        } else {
            fs::remove_file(e.path())
        };
        if gone.is_ok() {
            freed += bytes;
        }
    }
    freed
}

/// Seconds since a file was modified (for stale partial work).
pub fn age_secs(path: &Path) -> Option<u64> {
    let m = fs::metadata(path).ok()?.modified().ok()?;
    SystemTime::now()
        .duration_since(m)
        .ok()
        .map(|d| d.as_secs())
}
