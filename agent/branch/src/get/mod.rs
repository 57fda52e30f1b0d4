//! Updating one package version into the cache, alone (`peerdelta get
//! --dp …`) or with the subnet (the agent daemon).
//!
//! For each content of the version:
//!
//! - in the cache already: nothing crosses the network;
//! - a needs list starts from a content in the cache: seed runs are copied
//!   from it, the others taken from peers or fetched (from the pack when the
//!   DP compressed them, else raw), every run checked against its hash before
//!   it is written;
//! - an older version of the same file is in the cache but no needs list
//!   fits (more than four versions behind): client-side recursive RDC
//!   against the content's signatures ([`rdc`]);
//! - otherwise the whole content, run by run with its pieces file (or in
//!   one piece, compressed, for a small one).
//!
//! Where each item and run comes from, and every deadline and retry, is
//! `protocol::transfer`'s decision; [`job`] drives it and [`io`] does what
//! it asks. Progress is durable: verified runs go to a partial content
//! (`peerdelta_store::partial`), journaled once fsynced, so an interrupted
//! get starts again where it stopped and never fetches verified bytes twice.
//! Every content is checked against its BLAKE3 before it enters the cache,
//! and a version is recorded only when all its contents are there.

pub mod bundle;
pub(crate) mod io;
pub(crate) mod job;
pub mod rdc;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;

use anyhow::{Context, bail};
use ed25519_dalek::VerifyingKey;
use peerdelta_protocol::fetchplan::RequestLimits;
use peerdelta_protocol::manifest::{self, Manifest, ManifestFetch, PackageName};
use peerdelta_protocol::transfer::{Config, Outcome};
use peerdelta_protocol::{ContentHash, layout};
use serde::Serialize;

use crate::cache::Cache;
use crate::client::{DpClient, FetchError};
use io::{Io, now};
use job::{Job, Output};

/// What to get.
#[derive(Debug, Clone)]
pub struct GetOptions {
    /// The package.
    pub package: PackageName,
    /// A version, or the newest.
    pub version: Option<u64>,
    /// Materialise the version into this directory.
    pub out: Option<PathBuf>,
    /// Materialise with hard links into the cache instead of copies.
    pub link: bool,
    /// Materialise into a directory peerdelta did not create (its other
    /// files are kept), and replace files changed since peerdelta wrote them.
    pub force: bool,
    /// Requests to the DP in flight at once.
    pub concurrency: usize,
    /// Size of one request.
    pub limits: RequestLimits,
    /// Show progress.
    pub progress: bool,
    /// Name in status reports.
    pub agent: String,
    /// Send status reports to the DP.
    pub report: bool,
    /// Give up when the DP has not answered for this long (a command);
    /// `None` waits out an outage of any length (the daemon).
    pub dp_give_up: Option<std::time::Duration>,
}

/// What a get did (`--json` prints it).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct GetSummary {
    /// Always "get".
    #[serde(rename = "type")]
    pub kind: std::borrow::Cow<'static, str>,
    /// The package.
    pub package: String,
    /// The version.
    pub version: u64,
    /// Files in the version.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes received from the DP (index, manifest, needs lists, data).
    pub dp_bytes: u64,
    /// Bytes reused from the local cache (whole contents and seed runs).
    pub reused_bytes: u64,
    /// Bytes received from peers on the subnet.
    pub lan_bytes: u64,
    /// Contents already in the cache.
    pub cached_contents: u64,
    /// Contents rebuilt with a needs list.
    pub delta_contents: u64,
    /// Contents rebuilt by client-side recursive RDC.
    pub rdc_contents: u64,
    /// Contents downloaded whole.
    pub whole_contents: u64,
    /// Contents taken from the version's bundle (small changed contents,
    /// patched against a version held, in one download).
    pub bundle_contents: u64,
    /// Runs or contents that failed verification (and were refetched).
    pub hash_failures: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Why getting a library file failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Bytes from the DP did not verify.
    #[error("data from the DP failed verification: {0}")]
    Dp(String),
    /// The DP could not be asked.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// Anything else (the disk).
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

/// Gets a version into the cache (and `--out`), one agent alone: the same
/// job the daemon runs, with no peers, always master.
pub async fn get(
    client: &DpClient,
    cache: &Cache,
    key: &VerifyingKey,
    opts: &GetOptions,
) -> anyhow::Result<GetSummary> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let io = Io {
        client: client.clone(),
        cache: cache.clone(),
        key: *key,
        net: None,
        limits: opts.limits,
        package: opts.package.clone(),
        lan_bytes: Default::default(),
        reused: Default::default(),
        lan_total: None,
        progress: Default::default(),
    };
    let mut job = Job::new(0, io, opts.clone(), true, transfer_config(opts), tx);
    loop {
        for out in job.drive() {
            match out {
                Output::Done(s) => return Ok(s),
                Output::Failed(e) => return Err(e),
                Output::Ban(..) => {}
            }
        }
        let wake = job.poll_timeout().map(|t| {
            tokio::time::Instant::now() + std::time::Duration::from_millis(t.since(now()))
        });
        tokio::select! {
            ev = rx.recv() => match ev {
                Some((_, ev)) => job.handle(now(), ev),
                None => bail!("internal: the job's channel closed"),
            },
            () = async {
                match wake {
                    Some(w) => tokio::time::sleep_until(w).await,
                    None => std::future::pending().await,
                }
            } => job.handle_timeout(now()),
        }
    }
}

/// The transfer machine's settings for these options.
pub fn transfer_config(opts: &GetOptions) -> Config {
    Config {
        dp_in_flight: opts.concurrency.clamp(1, 64),
        dp_request_bytes: opts.limits.max_bytes.max(64 * 1024),
        dp_give_up_ms: opts.dp_give_up.map(|d| d.as_millis() as u64),
        ..Config::default()
    }
}

/// How a failed manifest fetch counts for the transfer: waited out while
/// the DP may come back, else the end.
pub(crate) fn manifest_outcome(e: &anyhow::Error) -> Outcome {
    match e.chain().find_map(|c| c.downcast_ref::<FetchError>()) {
        Some(f) => io::dp_outcome(f),
        None => Outcome::Dp {
            transient: false,
            detail: format!("{e:#}"),
        },
    }
}

/// The signed manifests of `package` the cache holds, by version (bases for
/// manifest deltas).
pub fn cached_manifests(cache: &Cache, package: &PackageName) -> BTreeMap<u64, Vec<u8>> {
    cache
        .versions_of(package)
        .into_iter()
        .filter_map(|v| Some((v, cache.manifest_raw(package, v)?)))
        .collect()
}

/// Fetches and verifies the package index: signed by the pinned key, of
/// this package, not older than one this cache verified before (rollback),
/// not expired (a frozen mirror); warns when it is about to expire.
pub async fn fetch_index(
    client: &DpClient,
    cache: &Cache,
    key: &VerifyingKey,
    package: &PackageName,
) -> anyhow::Result<manifest::PackageIndex> {
    let index_bytes = match client.get_bytes(&layout::index(package), 64 << 20).await {
        Ok(b) => b,
        Err(FetchError::NotFound { .. }) => bail!("the DP has no package {package}"),
        Err(e) => return Err(e.into()),
    };
    let index = manifest::open_index(&index_bytes, key).context("the DP's package index")?;
    anyhow::ensure!(
        index.package == *package,
        "the DP's index for {package} describes {}",
        index.package
    );
    match index.check_fresh(cache.index_seen(package), peerdelta_store::util::now_ms())? {
        manifest::Freshness::Fresh => {}
        manifest::Freshness::ExpiresSoon { left_s } => tracing::warn!(
            "the DP's index of {package} expires in {} h: the DP should have re-signed it \
             (`peerdelta dp refresh-index`); a mirror that stopped updating looks like this",
            left_s / 3600
        ),
    }
    cache.record_index_seen(package, index.seen())?;
    Ok(index)
}

/// Fetches and verifies the index ([`fetch_index`]) and the manifest of
/// `version` (or the newest); `older` are manifests of the package at hand
/// (a delta from one of them is fetched when the DP has it; each is checked
/// by hash).
pub async fn fetch_manifest(
    client: &DpClient,
    cache: &Cache,
    key: &VerifyingKey,
    package: &PackageName,
    version: Option<u64>,
    older: &BTreeMap<u64, Vec<u8>>,
) -> anyhow::Result<(Manifest, Vec<u8>)> {
    let index = fetch_index(client, cache, key, package).await?;
    let entry = match version {
        Some(v) => index.get(v).with_context(|| {
            let latest = index.latest().map_or(0, |e| e.version);
            format!("package {package} has no version {v} (the newest is {latest})")
        })?,
        None => index
            .latest()
            .with_context(|| format!("package {package} has no versions"))?,
    };
    // Held already, or as a delta from a held manifest, or compressed; any
    // of these that does not give the indexed hash falls back to the plain file.
    let raw = |v: u64| older.get(&v).cloned().unwrap_or_default();
    let fetch = entry.manifest_fetch(|v| older.contains_key(&v));
    let (v, limit) = (entry.version, entry.manifest_len as usize);
    let first: anyhow::Result<Vec<u8>> = match fetch {
        ManifestFetch::Held => Ok(raw(v)),
        ManifestFetch::Delta(d) => {
            let z = client
                .get_sized(&layout::manifest_delta(package, v, d.from), d.len)
                .await?;
            peerdelta_store::pack::decompress(&z, Some(&raw(d.from)), limit)
        }
        ManifestFetch::Compressed(len) => {
            let z = client
                .get_sized(&layout::manifest_zst(package, v), len)
                .await?;
            peerdelta_store::pack::decompress(&z, None, limit)
        }
        ManifestFetch::Plain(_) => Ok(Vec::new()),
    };
    let bytes = match first {
        Ok(b) if ContentHash::of(&b) == entry.manifest_hash => b,
        other => {
            if !matches!(fetch, ManifestFetch::Plain(_)) {
                tracing::warn!(
                    ?fetch,
                    "the manifest of {package} v{v} did not come out right ({:?}); fetching it whole",
                    other.err()
                );
            }
            let b = client
                .get_sized(&layout::manifest(package, v), entry.manifest_len)
                .await?;
            anyhow::ensure!(
                ContentHash::of(&b) == entry.manifest_hash,
                "the manifest of {package} v{v} does not match the index"
            );
            b
        }
    };
    let m = manifest::open_manifest_of(&bytes, key, package, entry.version)
        .with_context(|| format!("the manifest of {package} v{}", entry.version))?;
    Ok((m, bytes))
}

/// For each path of the package in the cached versions, a cached content at
/// that path (the newest), for client-side RDC.
pub(crate) fn older_files(
    cache: &Cache,
    key: &VerifyingKey,
    target: &Manifest,
) -> HashMap<String, ContentHash> {
    let mut out = HashMap::new();
    let mut versions: Vec<Manifest> = cache
        .manifests(key)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.package == target.package && m.version != target.version)
        .collect();
    versions.sort_by_key(|m| m.version);
    for m in versions {
        for (e, f) in m.files() {
            if cache.has(&f.hash) {
                out.insert(e.path.to_string(), f.hash);
            }
        }
    }
    out
}

/// A library file kept in `cache` that hashes to `hash`.
pub(crate) fn kept_library_file(cache: &Cache, rel: &str, hash: &ContentHash) -> Option<Vec<u8>> {
    let b = fs::read(cache.library_file(rel)?).ok()?;
    (ContentHash::of(&b) == *hash).then_some(b)
}

/// Kept: a daemon on this machine serves it to peers.
fn keep_library_file(cache: &Cache, rel: &str, b: &[u8]) {
    if let Err(e) = cache.keep_library_file(rel, b) {
        tracing::warn!("keeping {rel} for peers: {e:#}");
    }
}

/// A needs list or pieces file from the DP, checked against the manifest's
/// hash and kept in the cache (unless it was kept meanwhile).
/// One library-file fetch from the DP at a time in this process: a master
/// fetching a needs list for itself and for peers asking at the same moment
/// fetches it once.
static LIBRARY_FETCH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A needs list or pieces file from the DP, checked against the manifest's
/// hash and kept in the cache (unless it was kept meanwhile).
pub async fn fetch_library_file(
    client: &DpClient,
    cache: &Cache,
    rel: &str,
    hash: ContentHash,
    len: u64,
) -> Result<Vec<u8>, JobError> {
    let _one = LIBRARY_FETCH.lock().await;
    if let Some(b) = kept_library_file(cache, rel, &hash) {
        return Ok(b);
    }
    let b = client.get_sized(rel, len).await?;
    if ContentHash::of(&b) != hash {
        return Err(JobError::Dp(format!("{rel} does not match the manifest")));
    }
    keep_library_file(cache, rel, &b);
    Ok(b)
}

/// The verified ranges of a content being built in `cache` (what we can
/// give peers before it is finished), merged and sorted, and the file that
/// holds them.
pub fn partial_coverage(cache: &Cache, h: &ContentHash) -> (Vec<(u64, u64)>, PathBuf) {
    let dir = cache.partial_dir(h);
    let ranges = peerdelta_store::partial::read(&dir.join("journal"), h)
        .map(|p| p.ranges)
        .unwrap_or_default();
    (ranges, dir.join("data"))
}
