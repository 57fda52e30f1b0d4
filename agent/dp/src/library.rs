//! A DP library on disk: the served tree of plain static files (layout in
//! `protocol::layout`) and, beside it, a private directory the web server must
//! not serve (the signing key, the publish lock, status reports, temporary
//! files).
//!
//! Nothing in the served tree is modified in place: content-addressed files
//! are written once (temporary files in the private directory, one filesystem
//! sync for a whole batch, then renames: [`Staging`]), and versions become
//! visible by renaming a complete version directory into place, then
//! replacing the signed index.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, bail};
use ed25519_dalek::{SigningKey, VerifyingKey};
use peerdelta_protocol::layout;
use peerdelta_protocol::manifest::{self, Manifest, PackageIndex, PackageName};

use peerdelta_store::fsutil::{sync_dir, sync_filesystem};
use peerdelta_store::usage;

/// A library and its private directory.
#[derive(Debug, Clone)]
pub struct Library {
    /// The served tree.
    pub root: PathBuf,
    /// The private directory.
    pub private: PathBuf,
}

impl Library {
    /// The library at `root`; the private directory defaults to
    /// `<root>.private` beside it.
    pub fn at(root: &Path, private: Option<&Path>) -> Self {
        let private = match private {
            Some(p) => p.to_owned(),
            None => {
                let mut name = root
                    .file_name()
                    .map(|n| n.to_os_string())
                    .unwrap_or_else(|| "library".into());
                name.push(".private");
                root.with_file_name(name)
            }
        };
        Library {
            root: root.to_owned(),
            private,
        }
    }

    /// A library-relative path on disk.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Whether a library-relative file exists.
    pub fn has(&self, rel: &str) -> bool {
        self.path(rel).is_file()
    }

    fn key_path(&self) -> PathBuf {
        self.private.join("dp.key")
    }

    /// Directory for temporary files (same filesystem as the library).
    pub fn tmp_dir(&self) -> PathBuf {
        self.private.join("tmp")
    }

    /// Directory of status reports.
    pub fn status_dir(&self) -> PathBuf {
        self.private.join("status")
    }

    /// Creates the library and a new DP key pair. Refuses to touch an existing key.
    pub fn init(&self) -> anyhow::Result<VerifyingKey> {
        if self.key_path().exists() {
            bail!(usage!(
                "{} already has a DP key ({})",
                self.root.display(),
                self.key_path().display()
            ));
        }
        for d in ["content", "sigs", "needs", "packages"] {
            fs::create_dir_all(self.root.join(d))
                .with_context(|| format!("creating {}", self.root.join(d).display()))?;
        }
        fs::create_dir_all(&self.private)
            .with_context(|| format!("creating {}", self.private.display()))?;
        fs::set_permissions(&self.private, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", self.private.display()))?;
        for d in [self.tmp_dir(), self.status_dir()] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| anyhow::anyhow!("no system randomness for the key: {e}"))?;
        let key = SigningKey::from_bytes(&seed);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.key_path())
            .with_context(|| format!("creating {}", self.key_path().display()))?;
        writeln!(
            f,
            "# peerdelta DP private key (ed25519 seed); keep it secret\n{}",
            peerdelta_protocol::hex::encode(&seed)
        )
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", self.key_path().display()))?;
        let public = key.verifying_key();
        self.write_replace(
            layout::PUBLIC_KEY,
            manifest::format_public_key(&public).as_bytes(),
        )?;
        // Temporary files are renamed into the library: same filesystem needed.
        let probe = self.tmp_dir().join(".rename-probe");
        fs::write(&probe, b"").with_context(|| format!("writing {}", probe.display()))?;
        let target = self.root.join(".rename-probe");
        let renamed = fs::rename(&probe, &target);
        let _ = fs::remove_file(&probe);
        let _ = fs::remove_file(&target);
        if let Err(e) = renamed {
            bail!(usage!(
                "the private directory {} must be on the same filesystem as the library {}: {e}",
                self.private.display(),
                self.root.display()
            ));
        }
        Ok(public)
    }

    /// Checks that this is a library.
    pub fn check(&self) -> anyhow::Result<()> {
        if !self.path(layout::PUBLIC_KEY).is_file() {
            bail!(usage!(
                "{} is not a peerdelta library (no {}); run `peerdelta dp init`",
                self.root.display(),
                layout::PUBLIC_KEY
            ));
        }
        Ok(())
    }

    /// The DP's public key, from the library.
    pub fn public_key(&self) -> anyhow::Result<VerifyingKey> {
        self.check()?;
        let path = self.path(layout::PUBLIC_KEY);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        manifest::parse_public_key(&text)
            .with_context(|| format!("{} is not a DP public key", path.display()))
    }

    /// The DP's signing key. Refuses a key file readable by others.
    pub fn signing_key(&self) -> anyhow::Result<SigningKey> {
        self.check()?;
        let path = self.key_path();
        let meta = fs::metadata(&path)
            .with_context(|| format!("reading the DP key {}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!(usage!(
                "{} is readable by others (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let seed = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .and_then(peerdelta_protocol::hex::decode::<32>)
            .with_context(|| format!("{} is not a DP private key", path.display()))?;
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key() != self.public_key()? {
            bail!("{} does not match the library's public key", path.display());
        }
        Ok(key)
    }

    /// Takes the publish lock, waiting for another publish to finish.
    pub fn lock(&self) -> anyhow::Result<File> {
        let path = self.private.join("publish.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::warn!("another publish holds {}; waiting for it", path.display());
                f.lock()
                    .with_context(|| format!("locking {}", path.display()))?;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        Ok(f)
    }

    /// A new temporary file path in the private directory.
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{what}.{}.{n}", std::process::id()))
    }

    /// Makes every write and rename in the library durable (one filesystem
    /// sync).
    pub fn sync(&self) -> anyhow::Result<()> {
        sync_filesystem(&self.root)
    }

    /// Replaces `rel` atomically (the index and the public key only).
    pub fn write_replace(&self, rel: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let dest = self.path(rel);
        let dir = dest.parent().context("library path without a parent")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = self.tmp_path("replace");
        peerdelta_store::fsutil::create_synced(&tmp, bytes)?;
        fs::rename(&tmp, &dest)
            .with_context(|| format!("moving {} to {}", tmp.display(), dest.display()))?;
        sync_dir(dir)
    }

    /// The signed index of `package`, if it has one.
    pub fn index(
        &self,
        package: &PackageName,
        key: &VerifyingKey,
    ) -> anyhow::Result<Option<PackageIndex>> {
        let path = self.path(&layout::index(package));
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(
                manifest::open_index_any(&bytes, key)
                    .with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Seconds a newly signed index stays valid (`private/index-valid-secs`,
    /// set by `--index-valid-days`); `None`: indexes never expire (the default).
    pub fn index_validity_secs(&self) -> anyhow::Result<Option<u64>> {
        let path = self.private.join("index-valid-secs");
        match fs::read_to_string(&path) {
            Ok(t) => match t.trim().parse::<u64>() {
                Ok(0) => Ok(None),
                Ok(d) => Ok(Some(d)),
                Err(_) => bail!("{} does not hold a number of seconds", path.display()),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Sets the validity of indexes signed from now on (`None`: no expiry).
    pub fn set_index_validity_secs(&self, secs: Option<u64>) -> anyhow::Result<()> {
        peerdelta_store::fsutil::write_atomic(
            &self.private.join("index-valid-secs"),
            format!("{}\n", secs.unwrap_or(0)).as_bytes(),
        )
    }

    /// Signs `index` as the package's next generation (now, expiring after
    /// the library's validity if it has one) and installs it atomically.
    pub fn write_index(&self, index: &mut PackageIndex, key: &SigningKey) -> anyhow::Result<()> {
        let now = peerdelta_store::util::now_ms();
        index.generation += 1;
        index.signed_ms = now;
        index.expires_ms = self
            .index_validity_secs()?
            .map(|d| now.saturating_add(d.saturating_mul(1000)));
        self.write_replace(
            &layout::index(&index.package),
            &manifest::seal(manifest::INDEX_MAGIC, index, key),
        )
    }

    /// The verified manifest of `package` version `version`, with its raw bytes.
    pub fn manifest(
        &self,
        package: &PackageName,
        version: u64,
        key: &VerifyingKey,
    ) -> anyhow::Result<(Manifest, Vec<u8>)> {
        peerdelta_store::manifest_file::read_verified(
            &self.path(&layout::manifest(package, version)),
            key,
            package,
            version,
        )
    }

    /// Packages in the library.
    pub fn packages(&self) -> anyhow::Result<Vec<PackageName>> {
        let dir = self.root.join("packages");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            if let Some(name) = e.file_name().to_str()
                && let Ok(p) = PackageName::new(name)
                && e.path().join("index").is_file()
            {
                out.push(p);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Content-addressed files written as one batch. Each is written to a
/// temporary file without fsync; [`Staging::commit`] then syncs the
/// filesystem once and renames them all into place. A crash before the sync
/// leaves only temporary files (the next publish removes them), one after it
/// leaves complete files under their final names, never a partial one. One
/// sync per batch replaces an fsync per file and per directory, which made
/// publishing thousands of small files take seconds.
///
/// The renames themselves become durable at the next sync ([`Library::sync`]
/// before a version that names the files is written).
#[derive(Debug)]
pub struct Staging<'a> {
    lib: &'a Library,
    files: Mutex<Vec<(PathBuf, String)>>,
}

impl<'a> Staging<'a> {
    /// An empty batch.
    pub fn new(lib: &'a Library) -> Self {
        Staging {
            lib,
            files: Mutex::new(Vec::new()),
        }
    }

    /// The library the batch goes into.
    pub fn library(&self) -> &'a Library {
        self.lib
    }

    /// Takes a complete temporary file (written, not synced) to be installed
    /// as `rel`.
    pub fn add(&self, tmp: PathBuf, rel: String) {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((tmp, rel));
    }

    /// Writes `bytes` to be installed as `rel`, unless the library has it.
    pub fn write_new(&self, rel: &str, bytes: &[u8]) -> anyhow::Result<()> {
        if self.lib.has(rel) {
            return Ok(());
        }
        let tmp = self.lib.tmp_path("new");
        fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        self.add(tmp, rel.to_owned());
        Ok(())
    }

    /// Makes the batch durable, then moves each file into place (a file
    /// already there is kept: content-addressed files are never replaced).
    pub fn commit(mut self) -> anyhow::Result<()> {
        let files = std::mem::take(self.files.get_mut().unwrap_or_else(|e| e.into_inner()));
        if files.is_empty() {
            return Ok(());
        }
        let t = std::time::Instant::now();
        self.lib.sync()?;
        tracing::debug!(
            files = files.len(),
            sync_s = t.elapsed().as_secs_f64(),
            "staged files durable"
        );
        for (k, (tmp, rel)) in files.iter().enumerate() {
            let dest = self.lib.path(rel);
            if dest.exists() {
                let _ = fs::remove_file(tmp);
                continue;
            }
            let dir = dest.parent().context("library path without a parent")?;
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::rename(tmp, &dest)
                .with_context(|| format!("moving {} to {}", tmp.display(), dest.display()))?;
            if k == 0 {
                peerdelta_store::fault::point("publish:mid-install");
            }
        }
        Ok(())
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        // Not committed (an error on the way): remove the temporary files.
        let files = self.files.get_mut().unwrap_or_else(|e| e.into_inner());
        for (tmp, _) in files.drain(..) {
            let _ = fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn library() -> (tempfile::TempDir, Library) {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::at(&dir.path().join("lib"), None);
        lib.init().unwrap();
        (dir, lib)
    }

    fn tmp_files(lib: &Library) -> usize {
        fs::read_dir(lib.tmp_dir()).unwrap().count()
    }

    #[test]
    fn staged_files_appear_only_at_commit_and_never_replace() {
        let (_dir, lib) = library();
        fs::create_dir_all(lib.path("content/aa")).unwrap();
        fs::write(lib.path("content/aa/old"), b"first").unwrap();
        let staging = Staging::new(&lib);
        staging.write_new("content/aa/new", b"new bytes").unwrap();
        staging.write_new("content/aa/old", b"second").unwrap();
        let tmp = lib.tmp_path("content");
        fs::write(&tmp, b"added").unwrap();
        staging.add(tmp, "content/bb/added".into());
        assert!(!lib.has("content/aa/new") && !lib.has("content/bb/added"));
        staging.commit().unwrap();
        assert_eq!(fs::read(lib.path("content/aa/new")).unwrap(), b"new bytes");
        assert_eq!(fs::read(lib.path("content/bb/added")).unwrap(), b"added");
        assert_eq!(fs::read(lib.path("content/aa/old")).unwrap(), b"first");
        assert_eq!(tmp_files(&lib), 0);
    }

    #[test]
    fn an_abandoned_batch_leaves_nothing() {
        let (_dir, lib) = library();
        let staging = Staging::new(&lib);
        staging.write_new("content/cc/x", b"x").unwrap();
        assert_eq!(tmp_files(&lib), 1);
        drop(staging);
        assert_eq!(tmp_files(&lib), 0);
        assert!(!lib.has("content/cc/x"));
    }
}
