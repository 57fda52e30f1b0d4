//! Applying a bundle (`protocol::bundle`): each entry the version needs
//! and whose base is in the cache is decompressed against the base,
//! checked against its content hash and stored. An entry that fails (base
//! gone or damaged, bytes that do not verify) is skipped: the content is
//! then got its usual way, so a bad bundle costs bytes, never data.

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::Context;
use peerdelta_protocol::ContentHash;
use peerdelta_protocol::bundle::{self, MAX_BASE, MAX_TARGET};
use peerdelta_store::content::verify_file;
use peerdelta_store::pack::decompress;

use crate::cache::Cache;

/// What applying a bundle gave.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Contents stored.
    pub contents: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Entries whose bytes did not give their content (skipped).
    pub failed: u64,
}

/// How one entry went.
enum Entry {
    Stored,
    /// Its base is not in the cache (collected): got its usual way.
    NoBase,
}

/// Applies the bundle `bytes` (already checked against the manifest's
/// hash) for the contents in `needed`, into `cache`.
pub fn apply(
    cache: &Cache,
    bytes: &[u8],
    needed: &BTreeSet<ContentHash>,
) -> anyhow::Result<Applied> {
    let b = bundle::decode(bytes).context("reading a bundle")?;
    let mut out = Applied::default();
    for e in &b.entries {
        if !needed.contains(&e.target) || cache.has(&e.target) {
            continue;
        }
        match apply_entry(cache, e) {
            Ok(Entry::Stored) => {
                out.contents += 1;
                out.bytes += e.target_len;
            }
            Ok(Entry::NoBase) => {}
            Err(err) => {
                out.failed += 1;
                tracing::warn!(content = %e.target, "a bundle entry did not give its content ({err:#}); getting it its usual way");
            }
        }
    }
    Ok(out)
}

fn apply_entry(cache: &Cache, e: &bundle::BundleEntry) -> anyhow::Result<Entry> {
    let base = match e.base {
        Some((h, _)) if !cache.has(&h) => return Ok(Entry::NoBase),
        Some((h, len)) => {
            let path = cache.content_path(&h);
            let data = std::fs::read(&path).with_context(|| format!("reading the base {h}"))?;
            anyhow::ensure!(
                data.len() as u64 == len && len <= MAX_BASE,
                "the base {h} has {} bytes, the bundle says {len}",
                data.len()
            );
            Some(data)
        }
        None => None,
    };
    let limit = usize::try_from(e.target_len.min(MAX_TARGET))?;
    let data = decompress(&e.data, base.as_deref(), limit)?;
    anyhow::ensure!(
        data.len() as u64 == e.target_len,
        "{} bytes, expected {}",
        data.len(),
        e.target_len
    );
    anyhow::ensure!(
        ContentHash::of(&data) == e.target,
        "the bytes do not match the content hash"
    );
    let tmp = cache.tmp_path("bundle");
    let write = || -> anyhow::Result<()> {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&data)
            .with_context(|| format!("writing {}", tmp.display()))?;
        let v = verify_file(&tmp, &e.target)?;
        cache.insert(v)?;
        Ok(())
    };
    let r = write();
    let _ = std::fs::remove_file(&tmp);
    r.map(|()| Entry::Stored)
}
