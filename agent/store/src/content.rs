//! Contents by hash: `ROOT/<shard>/<hash>`, the layout of the DP library's
//! `content/` and of the branch cache's. A file enters only as a
//! [`VerifiedContent`], which only [`verify_file`] makes (it hashed the file
//! after an fsync), so nothing unverified is ever stored under a hash.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use peerdelta_protocol::ContentHash;

use crate::fsutil::sync_dir;

/// A file whose BLAKE3 was just checked; [`ContentStore::insert`] accepts nothing else.
#[derive(Debug)]
pub struct VerifiedContent {
    path: PathBuf,
    hash: ContentHash,
}

impl VerifiedContent {
    /// The verified hash.
    pub fn hash(&self) -> ContentHash {
        self.hash
    }
}

/// Why a file failed verification.
#[derive(Debug, thiserror::Error)]
#[error("{path}: BLAKE3 {actual}, expected {expected}")]
pub struct HashMismatch {
    /// The file.
    pub path: String,
    /// Expected hash.
    pub expected: ContentHash,
    /// Hash found.
    pub actual: ContentHash,
}

/// Hashes `path` (fsynced first) and checks it against `expected`.
pub fn verify_file(path: &Path, expected: &ContentHash) -> anyhow::Result<VerifiedContent> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    let (actual, _) = hash_reader(f).with_context(|| format!("reading {}", path.display()))?;
    if actual != *expected {
        return Err(HashMismatch {
            path: path.display().to_string(),
            expected: *expected,
            actual,
        }
        .into());
    }
    Ok(VerifiedContent {
        path: path.to_owned(),
        hash: actual,
    })
}

/// BLAKE3 and length of everything `r` yields.
pub fn hash_reader(mut r: impl Read) -> std::io::Result<(ContentHash, u64)> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((h.finalize().into(), len))
}

/// A directory of contents by hash.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// The contents under `root` (created when the first one is inserted).
    pub fn new(root: &Path) -> Self {
        ContentStore {
            root: root.to_owned(),
        }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a content is (or would be).
    pub fn path(&self, h: &ContentHash) -> PathBuf {
        self.root.join(h.shard()).join(h.to_hex())
    }

    /// Whether a content is present.
    pub fn has(&self, h: &ContentHash) -> bool {
        self.path(h).is_file()
    }

    /// Moves a verified file in (fsynced by [`verify_file`]; the directory
    /// entry fsynced here). A content already present stays; the file is
    /// removed.
    pub fn insert(&self, v: VerifiedContent) -> anyhow::Result<PathBuf> {
        let dest = self.path(&v.hash);
        let dir = dest.parent().context("content path without parent")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if dest.exists() {
            let _ = std::fs::remove_file(&v.path);
        } else {
            std::fs::rename(&v.path, &dest)
                .with_context(|| format!("moving {} into the store", v.path.display()))?;
            sync_dir(dir)?;
        }
        Ok(dest)
    }

    /// Every content present: hash, path, bytes it takes on disk.
    pub fn list(&self) -> anyhow::Result<Vec<(ContentHash, PathBuf, u64)>> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("listing {}", self.root.display())),
        };
        for shard in rd {
            let shard = shard?.path();
            if !shard.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&shard)? {
                let f = f?;
                let Some(h) = f
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<ContentHash>().ok())
                else {
                    continue;
                };
                let size = f.metadata().map_or(0, |m| m.blocks() * 512);
                out.push((h, f.path(), size));
            }
        }
        Ok(out)
    }
}
