//! `peerdelta dp publish`: a directory tree becomes the next version of a
//! package.
//!
//! 1. Under the publish lock, recover from a publish that died: versions
//!    renamed into place but missing from the index are added, temporary files
//!    removed.
//! 2. Scan the tree, refusing symlinks, special files, names that are not
//!    UTF-8 and paths that could escape the package root, naming the path.
//! 3. Find each file's content. Small files are hashed (BLAKE3, several at
//!    once). A large file of a size that a recent version holds is compared
//!    with those contents run by run (their pieces hashes), so an unchanged,
//!    renamed or moved one costs one hashing pass and a changed one the runs
//!    up to its first change. Any other large file is new to the recent
//!    versions and is hashed by the copy that stores it (step 4), unless
//!    several such files have one size (they are hashed, so that one copy
//!    stores their content) or the recent contents' runs cannot be read
//!    (it is hashed). Contents already in the library cost nothing more,
//!    and a re-publish of the same tree only reads it once.
//! 4. Copy each new content into the library and sign it (MS-RDC, all levels
//!    its size needs): small files on all cores at once, large files one at
//!    a time on all cores. A hashed content must copy to the same hash; a
//!    large file copied first is named by the copy's hash, must not have
//!    been written to during the copy, and is dropped if the library held
//!    it after all. Zeros are left as holes. Nothing is fsynced file by
//!    file: the batch is written to temporary files, made durable with one
//!    filesystem sync, then renamed into place (`library::Staging`).
//! 5. Plan needs lists against the previous versions (`protocol::publish`),
//!    compute the missing ones, and keep those that save at least
//!    `--min-saving` bytes over sending the whole file (a second batch).
//!    Then one bundle per earlier version (up to `protocol::bundle::
//!    BUNDLE_VERSIONS` back) of the small contents it lacks, patched
//!    against their bases there (`bundles`).
//! 6. Sync the filesystem (the renames), write the signed manifest into a new
//!    version directory, rename it into place, then replace the signed index.
//!    A reader never sees a partial version: until the rename there is no
//!    version directory, and every file a manifest names is durable before it.

mod bundles;
mod known;
mod needs;
mod scan;
mod store;
mod version;

use bundles::{BUNDLE_LEVEL, FAR_BUNDLE_LEVEL, make_bundles};
use known::Previous;
use needs::make_needs;
use scan::{Scanned, find_contents, scan};
use store::store_all;
use version::{recover, write_new_version};
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Instant;

use peerdelta_protocol::bundle::BUNDLE_VERSIONS;
use peerdelta_protocol::manifest::PackageName;
use peerdelta_protocol::publish::{NewFile, WINDOW};
use peerdelta_protocol::rdc::LevelParams;
use serde::Serialize;

use crate::library::Library;

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The package.
    pub package: PackageName,
    /// The directory tree.
    pub source: PathBuf,
    /// A needs list must save at least this many bytes over the whole file.
    pub min_saving: u64,
    /// Worker threads.
    pub threads: usize,
    /// Show progress.
    pub progress: bool,
    /// zstd level of the packs of needs lists (0: no packs). Pieces packs
    /// (whole contents) use at most [`PIECES_LEVEL`], for publish speed.
    pub pack_level: i32,
    /// Versions back that get needs lists for contents of at most
    /// `protocol::publish::FAR_MAX` bytes (at least the window;
    /// `protocol::publish::FAR_VERSIONS` by default).
    pub far_versions: usize,
}

/// zstd level of whole-content packs (fast; they are large).
pub const PIECES_LEVEL: i32 = 3;

/// What a publish did (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct PublishSummary {
    /// Always "publish".
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The package.
    pub package: String,
    /// The new version.
    pub version: u64,
    /// Files in the version.
    pub files: u64,
    /// Directories in the version.
    pub dirs: u64,
    /// Bytes of the files.
    pub bytes: u64,
    /// Contents not in the library before.
    pub new_contents: u64,
    /// Their bytes.
    pub new_content_bytes: u64,
    /// Bytes read and hashed before storing: small files, and large files
    /// of several at one new size (so that one copy stores them all) or
    /// whose recent contents' runs could not be read.
    pub hashed_bytes: u64,
    /// Bytes of large files hashed run by run to compare them with the
    /// contents of their size that recent versions hold.
    pub compared_bytes: u64,
    /// Bytes copied into the library: the new contents, and any large file
    /// copied before its hash was known that the library held after all
    /// (from an older version, or another package).
    pub copied_bytes: u64,
    /// Signature bytes written for them.
    pub signature_bytes: u64,
    /// Needs lists computed and written.
    pub needs_lists_written: u64,
    /// Needs lists that already existed.
    pub needs_lists_reused: u64,
    /// Needs lists not written because the whole file is about as cheap.
    pub needs_lists_skipped: u64,
    /// Bundles made (one per earlier version whose receivers lack small
    /// contents of this one).
    pub bundles: u64,
    /// Their bytes.
    pub bundle_bytes: u64,
    /// Versions found complete but missing from the index, and added.
    pub recovered_versions: Vec<u64>,
    /// Wall time in seconds, in total and per phase.
    pub seconds: f64,
    /// Seconds hashing the tree (and comparing large files' runs).
    pub hash_seconds: f64,
    /// Seconds copying and signing new contents (and hashing the large
    /// files copied first).
    pub store_seconds: f64,
    /// Seconds computing needs lists.
    pub needs_seconds: f64,
    /// Seconds computing bundles.
    pub bundle_seconds: f64,
    /// Tree bytes per second over the whole publish, in MB/s.
    pub mb_per_s: f64,
}

/// Publishes `opts.source` as the next version of `opts.package`, in the
/// steps of the module doc.
pub fn publish(lib: &Library, opts: &PublishOptions) -> anyhow::Result<PublishSummary> {
    let started = Instant::now();
    let key = lib.signing_key()?;
    let public = key.verifying_key();
    let params = LevelParams::default();
    let _lock = lib.lock()?;
    let (index, recovered) = recover(lib, &opts.package, &public)?;

    let tree = scan(&opts.source)?;
    let files: Vec<&Scanned> = tree.iter().filter(|e| e.size.is_some()).collect();
    let total: u64 = files.iter().filter_map(|f| f.size).sum();
    tracing::info!(package = %opts.package, files = files.len(), bytes = total, "publishing {}", opts.source.display());
    let depth = opts.far_versions.max(BUNDLE_VERSIONS).max(WINDOW);
    let previous = Previous::load(lib, &opts.package, index.as_ref(), &public, depth)?;

    let t = Instant::now();
    let found = find_contents(lib, &files, &previous, opts)?;
    let (hashed_bytes, compared_bytes) = (found.hashed_bytes, found.compared_bytes);
    let hash_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let stored = store_all(lib, &files, found.hashes, &previous.known, opts, params)?;
    let store_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let needs = make_needs(
        lib,
        &files,
        &stored.hashes,
        &previous.manifests,
        &stored.sig_refs,
        &stored.added,
        opts,
    )?;
    let needs_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let new_files: Vec<NewFile> = files
        .iter()
        .zip(&stored.hashes)
        .map(|(f, h)| NewFile {
            path: f.rel.clone(),
            hash: *h,
            size: f.size.unwrap_or(0),
        })
        .collect();
    let bundles = make_bundles(
        lib,
        &new_files,
        &previous.manifests,
        opts.threads,
        if opts.pack_level > 0 { BUNDLE_LEVEL } else { 0 },
        FAR_BUNDLE_LEVEL.min(BUNDLE_LEVEL).max(opts.pack_level),
    )?;
    let bundle_seconds = t.elapsed().as_secs_f64();

    let version = write_new_version(
        lib,
        &key,
        &opts.package,
        index,
        &tree,
        &files,
        &stored.hashes,
        &stored.sig_refs,
        needs.by_path,
        bundles.refs.clone(),
        params,
    )?;

    let seconds = started.elapsed().as_secs_f64();
    let summary = PublishSummary {
        kind: "publish",
        package: opts.package.to_string(),
        version,
        files: files.len() as u64,
        dirs: (tree.len() - files.len()) as u64,
        bytes: total,
        new_contents: stored.added.len() as u64,
        new_content_bytes: stored.new_bytes,
        hashed_bytes,
        compared_bytes,
        copied_bytes: stored.copied_bytes,
        signature_bytes: stored.signature_bytes,
        needs_lists_written: needs.written,
        needs_lists_reused: needs.reused,
        needs_lists_skipped: needs.skipped,
        bundles: bundles.refs.len() as u64,
        bundle_bytes: bundles.bytes,
        recovered_versions: recovered,
        seconds,
        hash_seconds,
        store_seconds,
        needs_seconds,
        bundle_seconds,
        mb_per_s: total as f64 / seconds.max(1e-9) / 1e6,
    };
    tracing::info!(package = %opts.package, version, new_bytes = stored.new_bytes, needs = needs.written, "published");
    Ok(summary)
}
