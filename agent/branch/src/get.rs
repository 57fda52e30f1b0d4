//! Updating one package version from the DP into the cache, as cheaply and
//! safely as one agent alone can (`peerdelta get --dp …`).
//!
//! For each content of the version:
//!
//! - in the cache already: nothing crosses the network;
//! - a needs list starts from a content in the cache: seed runs are copied
//!   from it, origin runs fetched (from the pack when the DP compressed them,
//!   else from the content itself by Range), every run checked against its
//!   hash before it is written;
//! - an older version of the same file is in the cache but no needs list
//!   fits (the receiver is more than five versions behind): client-side
//!   recursive RDC against the content's signatures;
//! - otherwise the whole content, run by run with its pieces file (or
//!   compressed, for a small one).
//!
//! Progress is durable: verified runs are written to `partial/<hash>/data`,
//! fsynced, then recorded in a journal of verified byte ranges. An
//! interrupted get (killed, network cut, DP restarted) starts again where it
//! stopped and never fetches verified bytes twice. Every content is checked
//! against its BLAKE3 before it enters the cache, and a version is recorded
//! only when all its contents are there.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ed25519_dalek::VerifyingKey;
use futures_util::{StreamExt, stream};
use peerdelta_protocol::fetchplan::{self, RequestLimits};
use peerdelta_protocol::getplan::{self, Source};
use peerdelta_protocol::manifest::{self, FileEntry, Manifest, ManifestFetch, PackageName};
use peerdelta_protocol::needs::{Need, RecursivePlan, SeedLevels};
use peerdelta_protocol::needsfile::{self, PlacedRun, RunSource};
use peerdelta_protocol::rdc::{MAX_LEVELS, SignatureBuilder};
use peerdelta_protocol::status::{StatusEvent, StatusReport};
use peerdelta_protocol::{ContentHash, layout, sigstore};
use serde::Serialize;

use crate::cache::Cache;
use crate::client::{DpClient, FetchError};
use crate::subnet::lan::Lan;
use peerdelta_store::content::{VerifiedContent, verify_file};
use peerdelta_store::partial::Journal;
use peerdelta_store::progress::Progress;
use peerdelta_store::util::now_ms;

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
}

/// What a get did (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct GetSummary {
    /// Always "get".
    #[serde(rename = "type")]
    pub kind: &'static str,
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
    /// Runs or contents that failed verification (and were refetched).
    pub hash_failures: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Why building one content failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A run read from the local base did not verify: the base is damaged.
    #[error("the local base {base} is damaged: {detail}")]
    BaseCorrupt { base: ContentHash, detail: String },
    /// Bytes from the DP did not verify, twice.
    #[error("data from the DP failed verification: {0}")]
    Dp(String),
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<FetchError> for JobError {
    fn from(e: FetchError) -> Self {
        JobError::Other(e.into())
    }
}

struct Ctx<'a> {
    client: &'a DpClient,
    cache: &'a Cache,
    opts: &'a GetOptions,
    manifest: &'a Manifest,
    lan: Option<&'a Lan>,
    reused: AtomicU64,
    failures: AtomicU64,
    progress: Progress,
}

/// Gets a version into the cache (and `--out`), one agent alone.
pub async fn get(
    client: &DpClient,
    cache: &Cache,
    key: &VerifyingKey,
    opts: &GetOptions,
) -> anyhow::Result<GetSummary> {
    get_with(client, cache, key, opts, None, None).await
}

/// Gets a version into the cache, on a subnet when `lan` is given: then
/// everything the subnet holds comes over the LAN, and the DP is used only
/// while the election makes us master.
pub async fn get_with(
    client: &DpClient,
    cache: &Cache,
    key: &VerifyingKey,
    opts: &GetOptions,
    lan: Option<&Lan>,
    known: Option<(Manifest, Vec<u8>)>,
) -> anyhow::Result<GetSummary> {
    let started = Instant::now();
    let (manifest, signed) = match (known, lan) {
        (Some(k), _) => k,
        (None, Some(lan)) => lan_manifest(client, cache, key, opts, lan).await?,
        (None, None) => {
            let older = cached_manifests(cache, &opts.package);
            fetch_manifest(client, cache, key, &opts.package, opts.version, &older).await?
        }
    };
    // gc keeps what this download needs and makes until it ends.
    let _in_use = cache.begin_version(&manifest, &signed)?;
    let older = older_files(cache, key, &manifest);
    let sizes: HashMap<ContentHash, &FileEntry> =
        manifest.files().map(|(_, f)| (f.hash, f)).collect();
    // Bases a peer holds count as held (seed runs are alt-copied); a target
    // content a peer holds is still to be obtained (from that peer).
    let subnet: std::collections::BTreeSet<ContentHash> = match lan {
        Some(lan) => {
            let bases: Vec<ContentHash> = manifest
                .files()
                .flat_map(|(_, f)| f.needs.iter().map(|n| n.base))
                .filter(|b| !cache.has(b) && !sizes.contains_key(b))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            lan.holders(&bases).await.into_keys().collect()
        }
        None => Default::default(),
    };
    let plans: Vec<(ContentHash, &FileEntry, Source)> = getplan::plan(
        &manifest,
        |h| cache.has(h) || subnet.contains(h),
        |p| older.get(p).copied(),
    )
    .into_iter()
    .filter_map(|p| Some((p.hash, *sizes.get(&p.hash)?, p.source)))
    .collect();
    let todo: u64 = plans
        .iter()
        .filter(|p| !matches!(p.2, Source::Held))
        .map(|p| p.1.size)
        .sum();
    let ctx = Ctx {
        client,
        cache,
        opts,
        manifest: &manifest,
        lan,
        reused: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        progress: Progress::new("get", plans.len() as u64, todo, opts.progress),
    };
    let mut held = 0u64;
    for (h, f, p) in &plans {
        if matches!(p, Source::Held) {
            held += 1;
            ctx.reused.fetch_add(f.size, Ordering::Relaxed);
        }
        tracing::debug!(content = %h, plan = ?p, "plan");
    }
    // Contents run a few at a time; requests are bounded per content.
    // (The futures are made up front: a lazy stream of closures over
    // borrowed plans defeats the Send proof when the daemon spawns this.)
    let mut jobs = Vec::new();
    for (h, f, p) in &plans {
        if !matches!(p, Source::Held) {
            jobs.push(obtain(&ctx, *h, f, p.clone()));
        }
    }
    let results: Vec<anyhow::Result<How>> = stream::iter(jobs)
        .buffer_unordered(opts.concurrency.clamp(1, 8))
        .collect()
        .await;
    ctx.progress.finish();
    let mut counts = [0u64; 3];
    for r in results {
        counts[r? as usize] += 1;
    }
    cache.record_version(&manifest, &signed)?;
    if let Some(out) = &opts.out {
        crate::materialize::materialize(
            cache,
            &manifest,
            out,
            crate::materialize::Options {
                link: opts.link,
                force: opts.force,
            },
        )?;
    }
    let summary = GetSummary {
        kind: "get",
        package: manifest.package.to_string(),
        version: manifest.version,
        files: manifest.files().count() as u64,
        bytes: manifest.total_bytes(),
        dp_bytes: client.wan_bytes(),
        reused_bytes: ctx.reused.load(Ordering::Relaxed),
        lan_bytes: lan.map_or(0, |l| l.lan_bytes.load(Ordering::Relaxed)),
        cached_contents: held,
        delta_contents: counts[How::Delta as usize],
        rdc_contents: counts[How::Rdc as usize],
        whole_contents: counts[How::Whole as usize],
        hash_failures: ctx.failures.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    };
    if opts.report {
        client
            .report(&StatusReport {
                agent: opts.agent.clone(),
                package: manifest.package.clone(),
                version: manifest.version,
                event: StatusEvent::Completed {
                    wan_bytes: summary.dp_bytes,
                    lan_bytes: summary.lan_bytes,
                    reused_bytes: summary.reused_bytes,
                },
                time_ms: now_ms(),
            })
            .await;
    }
    Ok(summary)
}

/// The manifest on a subnet: from a peer (checked against the DP key like
/// any manifest), or from the DP once we are master.
pub async fn lan_manifest(
    client: &DpClient,
    cache: &Cache,
    key: &VerifyingKey,
    opts: &GetOptions,
    lan: &Lan,
) -> anyhow::Result<(Manifest, Vec<u8>)> {
    let version = opts
        .version
        .context("internal: a subnet transfer needs an explicit version")?;
    if let Some(raw) = cache.manifest_raw(&opts.package, version)
        && let Ok(m) = manifest::open_manifest_of(&raw, key, &opts.package, version)
    {
        return Ok((m, raw));
    }
    loop {
        if let Some((peer, b)) = lan.manifest().await {
            match manifest::open_manifest_of(&b, key, &opts.package, version) {
                Ok(m) => return Ok((m, b)),
                Err(e @ manifest::ManifestError::Other { .. }) => {
                    lan.ban(peer, &format!("sent {e}"));
                }
                Err(e) => {
                    lan.ban(peer, &format!("sent a manifest that does not verify: {e}"));
                }
            }
        }
        if lan.is_master() {
            // Older manifests peers hold make the WAN carry a manifest delta.
            let mut older = cached_manifests(cache, &opts.package);
            let window =
                version.saturating_sub(peerdelta_protocol::publish::WINDOW as u64)..version;
            let wanted: Vec<u64> = window
                .filter(|v| *v > 0 && !older.contains_key(v))
                .collect();
            for v in wanted {
                if let Some((peer, b)) = lan.manifest_of(v).await {
                    match manifest::open_manifest_of(&b, key, &opts.package, v) {
                        Ok(_) => {
                            older.insert(v, b);
                        }
                        Err(_) => {
                            lan.ban(peer, &format!("sent a bad manifest for v{v}"));
                        }
                    }
                }
            }
            return fetch_manifest(client, cache, key, &opts.package, Some(version), &older).await;
        }
        lan.wait(Duration::from_millis(300)).await;
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
    match index.check_fresh(cache.index_seen(package), now_ms())? {
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
fn older_files(
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

/// How a content was finally obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Delta = 0,
    Rdc = 1,
    Whole = 2,
}

/// Obtains one content, falling back to a whole download when a local base
/// turns out damaged or client-side RDC does not produce the content. Runs
/// already verified stay (the journal is of content ranges, whatever built
/// them), so a fallback fetches only the rest.
async fn obtain(ctx: &Ctx<'_>, hash: ContentHash, f: &FileEntry, p: Source) -> anyhow::Result<How> {
    let mut how = match &p {
        Source::Delta(_) => How::Delta,
        Source::Rdc(_) => How::Rdc,
        _ => How::Whole,
    };
    let r = match &p {
        Source::Delta(n) => {
            rebuild(
                ctx,
                f,
                layout::needs(&n.base, &hash),
                n.file_hash,
                n.file_len,
                Some(n.base),
            )
            .await
        }
        Source::Rdc(_) if ctx.lan.is_some_and(|l| !l.is_master()) => {
            how = How::Whole;
            whole(ctx, f).await
        }
        Source::Rdc(seed) => match rdc(ctx, f, *seed).await {
            Ok(v) => Ok(v),
            Err(e) => {
                tracing::warn!(content = %hash, "client-side RDC failed ({e}); downloading the whole content");
                how = How::Whole;
                whole(ctx, f).await
            }
        },
        Source::Pieces | Source::Small => whole(ctx, f).await,
        Source::Held => bail!("internal: nothing to obtain for {hash}"),
    };
    let v = match r {
        Ok(v) => v,
        Err(JobError::BaseCorrupt { base, detail }) => {
            ctx.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(content = %hash, "the local base {base} is damaged ({detail}); downloading the whole content");
            ctx.cache.quarantine(&base, &detail)?;
            report_failure(ctx, hash, "local base", &detail).await;
            how = How::Whole;
            match whole(ctx, f).await {
                Ok(v) => v,
                Err(e) => return Err(job_error(ctx, hash, f, e).await),
            }
        }
        Err(e) => return Err(job_error(ctx, hash, f, e).await),
    };
    ctx.cache.insert(v)?;
    let _ = fs::remove_dir_all(ctx.cache.partial_dir(&hash));
    ctx.progress.add(1, 0);
    Ok(how)
}

/// The error a failed job ends `get` with; bad DP data is reported first.
async fn job_error(ctx: &Ctx<'_>, hash: ContentHash, f: &FileEntry, e: JobError) -> anyhow::Error {
    match e {
        JobError::Dp(detail) => {
            ctx.failures.fetch_add(1, Ordering::Relaxed);
            report_failure(ctx, hash, "dp", &detail).await;
            anyhow::anyhow!(
                "content {hash} ({} bytes): data from the DP failed verification: {detail}",
                f.size
            )
        }
        JobError::BaseCorrupt { base, detail } => {
            anyhow::anyhow!("content {hash}: the local base {base} is damaged: {detail}")
        }
        JobError::Other(e) => e,
    }
}

async fn report_failure(ctx: &Ctx<'_>, content: ContentHash, source: &str, detail: &str) {
    if ctx.opts.report {
        let detail: String = detail.chars().take(1000).collect();
        ctx.client
            .report(&StatusReport {
                agent: ctx.opts.agent.clone(),
                package: ctx.manifest.package.clone(),
                version: ctx.manifest.version,
                event: StatusEvent::HashFailure {
                    content,
                    source: source.to_owned(),
                    detail,
                },
                time_ms: now_ms(),
            })
            .await;
    }
}

/// The whole content: run by run with its pieces file, or in one piece.
async fn whole(ctx: &Ctx<'_>, f: &FileEntry) -> Result<VerifiedContent, JobError> {
    if let Some(p) = f.pieces {
        return rebuild(
            ctx,
            f,
            layout::needs(&ContentHash::EMPTY, &f.hash),
            p.file_hash,
            p.file_len,
            None,
        )
        .await;
    }
    if let Some(lan) = ctx.lan {
        loop {
            if let Some(v) = small_from_lan(ctx, lan, f).await? {
                return Ok(v);
            }
            if lan.is_master() {
                break;
            }
            lan.wait(Duration::from_millis(300)).await;
        }
    }
    let content_rel = layout::content(&f.hash);
    let first = match f.zst_len {
        Some(zlen) => {
            let z = ctx
                .client
                .get_sized(&layout::content_zst(&f.hash), zlen)
                .await?;
            zstd::bulk::decompress(&z, f.size as usize)
                .map_err(|e| {
                    tracing::warn!("{}: bad compressed copy: {e}", layout::content_zst(&f.hash))
                })
                .ok()
        }
        None => Some(ctx.client.get_sized(&content_rel, f.size).await?),
    };
    let raw = match first {
        Some(raw) if ContentHash::of(&raw) == f.hash => raw,
        _ => {
            // One more try, plain bytes, before blaming the DP.
            ctx.failures.fetch_add(1, Ordering::Relaxed);
            let raw = ctx.client.get_sized(&content_rel, f.size).await?;
            let got = ContentHash::of(&raw);
            if got != f.hash {
                return Err(JobError::Dp(format!("{content_rel} has BLAKE3 {got}")));
            }
            raw
        }
    };
    write_verified(ctx, f, &raw)
}

/// A small content from a peer that holds it whole, checked against its hash.
async fn small_from_lan(
    ctx: &Ctx<'_>,
    lan: &Lan,
    f: &FileEntry,
) -> Result<Option<VerifiedContent>, JobError> {
    if f.size > peerdelta_protocol::wire::MAX_RANGE {
        return Ok(None);
    }
    let holders = lan.holders(&[f.hash]).await;
    for p in holders.get(&f.hash).into_iter().flatten() {
        let Some(b) = lan.range(*p, f.hash, 0, f.size).await else {
            continue;
        };
        if ContentHash::of(&b) == f.hash {
            return write_verified(ctx, f, &b).map(Some);
        }
        ctx.failures.fetch_add(1, Ordering::Relaxed);
        let detail = format!("peer {p} sent content {} with the wrong hash", f.hash);
        if lan.ban(*p, &detail) {
            report_failure(ctx, f.hash, &format!("peer {p}"), &detail).await;
        }
    }
    Ok(None)
}

/// A needs list or pieces file: kept in the cache, else from a peer, else
/// from the DP (on a subnet, only as master; until then we wait).
async fn library_file(
    ctx: &Ctx<'_>,
    rel: &str,
    hash: ContentHash,
    len: u64,
) -> Result<Vec<u8>, JobError> {
    if let Some(b) = kept_library_file(ctx.cache, rel, &hash) {
        return Ok(b);
    }
    if let Some(lan) = ctx.lan {
        loop {
            if let Some(b) = lan.file(rel, &hash).await {
                keep_library_file(ctx.cache, rel, &b);
                return Ok(b);
            }
            if lan.is_master() {
                break;
            }
            lan.wait(Duration::from_millis(300)).await;
        }
    }
    fetch_library_file(ctx.client, ctx.cache, rel, hash, len).await
}

/// A library file kept in `cache` that hashes to `hash`.
fn kept_library_file(cache: &Cache, rel: &str, hash: &ContentHash) -> Option<Vec<u8>> {
    let b = fs::read(cache.library_file(rel)?).ok()?;
    (ContentHash::of(&b) == *hash).then_some(b)
}

/// Kept: a daemon on this machine serves it to peers.
fn keep_library_file(cache: &Cache, rel: &str, b: &[u8]) {
    if let Err(e) = cache.keep_library_file(rel, b) {
        tracing::warn!("keeping {rel} for peers: {e:#}");
    }
}

/// One library-file fetch from the DP at a time in this process: a master
/// fetching a needs list for itself and for a peer asking at the same
/// moment fetches it once.
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

fn write_verified(ctx: &Ctx<'_>, f: &FileEntry, raw: &[u8]) -> Result<VerifiedContent, JobError> {
    let tmp = ctx.cache.tmp_path("content");
    blocking(|| peerdelta_store::fsutil::create_synced(&tmp, raw))?;
    ctx.progress.add(0, f.size);
    Ok(blocking(|| verify_file(&tmp, &f.hash))?)
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

/// Builds a content from a needs list (or its pieces file, `base = None`).
async fn rebuild(
    ctx: &Ctx<'_>,
    f: &FileEntry,
    needs_rel: String,
    needs_hash: ContentHash,
    needs_len: u64,
    base: Option<ContentHash>,
) -> Result<VerifiedContent, JobError> {
    let dir = ctx.cache.partial_dir(&f.hash);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The needs list, kept while the content is built so a resume does not fetch it again.
    let saved = dir.join(format!("needs-{}.bin", needs_hash));
    let bytes = match fs::read(&saved) {
        Ok(b) if ContentHash::of(&b) == needs_hash => b,
        _ => {
            let b = library_file(ctx, &needs_rel, needs_hash, needs_len).await?;
            peerdelta_store::fsutil::create_synced(&saved, &b)?;
            b
        }
    };
    let nf = needsfile::decode(&bytes).map_err(|e| JobError::Dp(format!("{needs_rel}: {e}")))?;
    if nf.target != f.hash || nf.target_len != f.size {
        return Err(JobError::Dp(format!("{needs_rel} builds another content")));
    }
    let data_path = dir.join("data");
    let data = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&data_path)
        .with_context(|| format!("opening {}", data_path.display()))?;
    data.set_len(f.size)
        .with_context(|| format!("sizing {}", data_path.display()))?;
    let journal = Journal::open(&dir.join("journal"), &f.hash, f.size)?;
    let runs: Vec<PlacedRun> = nf.placed().collect();
    let already: u64 = runs
        .iter()
        .filter(|r| journal.covers(r.target_range()))
        .map(|r| u64::from(r.run.len))
        .sum();
    ctx.progress.add(0, already);

    // Seed runs from the local base.
    if let Some(base) = base.filter(|b| ctx.cache.has(b)) {
        blocking(|| copy_seed_runs(ctx, base, &runs, &journal, &data, &data_path))?;
    }

    // The subnet: every run a peer holds, seed runs alt-copied from a peer
    // holding the base; a non-master waits here until the subnet has it all.
    // A master without the base copies it from a holder first: the pack's
    // frames are compressed against base bytes, so building like an agent
    // that holds the base keeps the WAN bytes those of the single run.
    let origin = nf.origin_runs();
    let origin_left = |j: &Journal| origin.iter().any(|r| !j.covers(r.target_range()));
    if let Some(lan) = ctx.lan {
        if let Some(b) = base
            && lan.is_master()
            && nf.pack.is_some()
            && origin_left(&journal)
            && base_from_lan(ctx, lan, b).await?
        {
            blocking(|| copy_seed_runs(ctx, b, &runs, &journal, &data, &data_path))?;
        }
        lan_runs(ctx, lan, f, base, &runs, &journal, &data).await?;
        // Master only now (re-elected mid-transfer): the same.
        if let Some(b) = base
            && nf.pack.is_some()
            && origin_left(&journal)
            && base_from_lan(ctx, lan, b).await?
        {
            blocking(|| copy_seed_runs(ctx, b, &runs, &journal, &data, &data_path))?;
        }
    }

    // Origin runs: from the pack when there is one, then raw for whatever is left.
    let missing: Vec<usize> = (0..origin.len())
        .filter(|&i| !journal.covers(origin[i].target_range()))
        .collect();
    let mut raw_needed: Vec<usize> = Vec::new();
    if let (Some(pack), false) = (&nf.pack, missing.is_empty()) {
        let pack_rel = layout::pack(&nf.base, &nf.target);
        // Frames compressed against the base read it (a pieces file has none).
        let base_file = base.and_then(|b| File::open(ctx.cache.content_path(&b)).ok());
        let frames: Vec<(usize, u64, u64)> = pack
            .frames
            .iter()
            .enumerate()
            .filter(|(_, fr)| {
                (fr.first..fr.first + fr.count).any(|i| {
                    origin
                        .get(i as usize)
                        .is_some_and(|r| !journal.covers(r.target_range()))
                })
            })
            .map(|(k, fr)| (k, fr.offset, u64::from(fr.len)))
            .collect();
        let failed = fetch_units(
            ctx,
            &pack_rel,
            pack.len,
            &frames,
            &data,
            &journal,
            |k, bytes| {
                let mut out = Outcome::default();
                let Some(fr) = pack.frames.get(k) else {
                    return Ok(out);
                };
                let runs = fr.first as usize..(fr.first + fr.count) as usize;
                let reference = match fr.reference {
                    Some(span) => {
                        let mut r = vec![0u8; span.len as usize];
                        match base_file.as_ref().map(|b| b.read_exact_at(&mut r, span.offset)) {
                            Some(Ok(())) => Some(r),
                            _ => {
                                tracing::warn!("cannot read the base span of a pack frame; fetching its runs raw");
                                out.failed.extend(runs);
                                return Ok(out);
                            }
                        }
                    }
                    None => None,
                };
                let raw = match peerdelta_store::pack::unpack_frame(fr, bytes, reference.as_deref()) {
                    Ok(raw) => raw,
                    Err(e) => {
                        tracing::warn!("pack frame at {} of {pack_rel}: {e:#}", fr.offset);
                        out.failed.extend(runs);
                        return Ok(out);
                    }
                };
                let mut pos = 0usize;
                for i in runs {
                    let Some(r) = origin.get(i) else { continue };
                    let len = r.run.len as usize;
                    match raw.get(pos..pos + len) {
                        Some(slice) if !journal.covers(r.target_range()) => {
                            put_run(ctx, &data, &origin, i, slice, &pack_rel, &mut out)?
                        }
                        Some(_) => {}
                        None => out.failed.push(i),
                    }
                    pos += len;
                }
                Ok(out)
            },
        )
        .await?;
        if !failed.is_empty() {
            ctx.failures.fetch_add(1, Ordering::Relaxed);
            let detail = format!(
                "{} runs from {pack_rel} failed verification; fetching them raw",
                failed.len()
            );
            tracing::warn!("{detail}");
            report_failure(ctx, f.hash, "dp", &detail).await;
        }
        raw_needed.extend(failed);
        // Runs of frames that could not be used at all.
        raw_needed.extend(
            missing
                .iter()
                .copied()
                .filter(|&i| !journal.covers(origin[i].target_range())),
        );
    } else {
        raw_needed = missing;
    }
    raw_needed.sort_unstable();
    raw_needed.dedup();
    fetch_raw_runs(ctx, f, &origin, &raw_needed, &journal, &data).await?;
    // Seed runs nobody on the subnet could supply (the base holder left).
    let seeds: Vec<PlacedRun> = runs
        .iter()
        .filter(|r| matches!(r.run.source, RunSource::Seed { .. }))
        .filter(|r| !journal.covers(r.target_range()))
        .cloned()
        .collect();
    let all: Vec<usize> = (0..seeds.len()).collect();
    fetch_raw_runs(ctx, f, &seeds, &all, &journal, &data).await?;
    if let Some(r) = runs.iter().find(|r| !journal.covers(r.target_range())) {
        return Err(JobError::Other(anyhow::anyhow!(
            "bytes {}..{} of {} never arrived",
            r.target_offset,
            r.target_range().end,
            f.hash
        )));
    }

    // Everything verified run by run; now the whole content. If it still
    // does not hash right, the partial is discarded: retrying from the same
    // journal would only fail the same way.
    data.sync_all().context("syncing")?;
    drop(data);
    match blocking(|| verify_file(&data_path, &f.hash)) {
        Ok(v) => Ok(v),
        Err(e) => {
            tracing::warn!(content = %f.hash, "the rebuilt content does not verify ({e:#}); discarding its partial data");
            let _ = fs::remove_dir_all(&dir);
            Err(JobError::Dp(format!("{e:#}")))
        }
    }
}

/// Takes from the subnet what [`swarm::assign`] says it can give, until
/// every run is done, or (as master) only runs the DP must give are left.
async fn lan_runs(
    ctx: &Ctx<'_>,
    lan: &Lan,
    f: &FileEntry,
    base: Option<ContentHash>,
    runs: &[PlacedRun],
    journal: &Journal,
    data: &File,
) -> Result<(), JobError> {
    use peerdelta_protocol::swarm::{self, From};
    let local_base = base.is_some_and(|b| ctx.cache.has(&b));
    let units: Vec<swarm::Unit> = runs
        .iter()
        .map(|r| swarm::Unit {
            offset: r.target_offset,
            len: u64::from(r.run.len),
            seed_offset: match r.run.source {
                RunSource::Seed { offset } => Some(offset),
                _ => None,
            },
        })
        .collect();
    let done = |_: usize, u: &swarm::Unit| journal.covers(u.offset..u.offset + u.len);
    // Peers that answered "busy" in the last round.
    let mut busy = std::collections::BTreeSet::new();
    loop {
        if units.iter().all(|u| done(0, u)) {
            return Ok(());
        }
        let mut base_holders = std::collections::BTreeSet::new();
        if let Some(b) = base.filter(|_| !local_base) {
            base_holders.extend(lan.holders(&[b]).await.remove(&b).unwrap_or_default());
        }
        let view = swarm::View {
            have_base: local_base,
            may_use_dp: lan.is_master(),
            holders: lan.coverage(&f.hash).await,
            base_holders,
            banned: lan.banned(),
            busy: std::mem::take(&mut busy),
        };
        let plan = swarm::assign(&units, done, &view);
        let from_lan: Vec<(usize, From<libp2p::PeerId>)> = plan
            .iter()
            .filter(|(_, from)| matches!(from, From::Peer(_) | From::AltCopy(_)))
            .cloned()
            .collect();
        if from_lan.is_empty() {
            if plan.iter().any(|(_, from)| *from == From::Dp) {
                return Ok(());
            }
            lan.wait(Duration::from_millis(100)).await;
            continue;
        }
        // Batches: consecutive units from one peer, contiguous where they are read.
        let mut batches: Vec<(libp2p::PeerId, ContentHash, u64, u64, Vec<usize>)> = Vec::new();
        for (i, from) in from_lan {
            let (peer, content, at) = match (&from, units.get(i)) {
                (From::Peer(p), Some(u)) => (*p, f.hash, u.offset),
                (From::AltCopy(p), Some(u)) => match (base, u.seed_offset) {
                    (Some(b), Some(o)) => (*p, b, o),
                    _ => continue,
                },
                _ => continue,
            };
            let len = units.get(i).map_or(0, |u| u.len);
            match batches.last_mut() {
                Some(b)
                    if b.0 == peer
                        && b.1 == content
                        && b.2 + b.3 == at
                        && b.3 + len <= peerdelta_protocol::wire::MAX_RANGE =>
                {
                    b.3 += len;
                    b.4.push(i);
                }
                _ => batches.push((peer, content, at, len, vec![i])),
            }
        }
        let results: Vec<Result<(u64, Option<libp2p::PeerId>), JobError>> = stream::iter(batches)
            .map(|(peer, content, at, len, idx)| async move {
                let bytes = match lan.range_or_busy(peer, content, at, len).await {
                    Ok(b) => b,
                    Err(true) => return Ok((0, Some(peer))),
                    Err(false) => return Ok((0, None)),
                };
                let mut written = Vec::new();
                let mut pos = 0usize;
                let mut bad = None;
                for i in idx {
                    let Some(r) = runs.get(i) else { continue };
                    let n = r.run.len as usize;
                    let Some(slice) = bytes.get(pos..pos + n) else {
                        bad = Some(format!("sent {} bytes for a range of {len}", bytes.len()));
                        break;
                    };
                    pos += n;
                    match r.verify(slice) {
                        Ok(v) => {
                            data.write_all_at(v.bytes(), v.target_offset())
                                .context("writing the content being built")?;
                            written.push((r.target_offset, u64::from(r.run.len)));
                        }
                        Err(e) => {
                            bad = Some(e.to_string());
                            break;
                        }
                    }
                }
                let n: u64 = written.iter().map(|w| w.1).sum();
                if !written.is_empty() {
                    data.sync_data().context("syncing")?;
                    journal.record(&written)?;
                    ctx.progress.add(0, n);
                }
                if let Some(detail) = bad {
                    ctx.failures.fetch_add(1, Ordering::Relaxed);
                    let detail =
                        format!("peer {peer}: bytes of {content} failed verification: {detail}");
                    if lan.ban(peer, &detail) {
                        report_failure(ctx, f.hash, &format!("peer {peer}"), &detail).await;
                    }
                }
                Ok((n, None))
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut progress = 0;
        for r in results {
            let (n, was_busy) = r?;
            progress += n;
            busy.extend(was_busy);
        }
        if progress == 0 {
            lan.wait(Duration::from_millis(100)).await;
        }
    }
}

/// Makes `base` local: already cached, or copied whole from a peer that
/// holds it, verified against its hash (a peer whose copy fails is banned).
/// `false` when no peer could give it.
async fn base_from_lan(ctx: &Ctx<'_>, lan: &Lan, base: ContentHash) -> Result<bool, JobError> {
    if ctx.cache.has(&base) {
        return Ok(true);
    }
    // Peers that hold it whole (not a prefix being built), and its length.
    let holders = lan.holders(&[base]).await.remove(&base).unwrap_or_default();
    let mut coverage = lan.coverage(&base).await;
    for peer in holders {
        let len = match coverage.remove(&peer).as_deref() {
            Some([(0, len)]) => *len,
            _ => continue,
        };
        let tmp = ctx.cache.tmp_path("base");
        let out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(peerdelta_protocol::wire::MAX_RANGE);
            match lan.range(peer, base, at, n).await {
                Some(b) if b.len() as u64 == n => {
                    out.write_all_at(&b, at)
                        .with_context(|| format!("writing {}", tmp.display()))?;
                    at += n;
                }
                _ => break,
            }
        }
        drop(out);
        if at < len {
            let _ = fs::remove_file(&tmp);
            continue;
        }
        match blocking(|| verify_file(&tmp, &base)) {
            Ok(v) => {
                ctx.cache.insert(v)?;
                tracing::info!(%peer, %base, bytes = len, "base content copied from a peer");
                return Ok(true);
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                ctx.failures.fetch_add(1, Ordering::Relaxed);
                let detail = format!("peer {peer}: base content {base} failed verification: {e:#}");
                if lan.ban(peer, &detail) {
                    report_failure(ctx, base, &format!("peer {peer}"), &detail).await;
                }
            }
        }
    }
    Ok(false)
}

/// Copies the seed runs not yet journaled from the local base into `data`,
/// each verified against its hash first (a mismatch means the base is damaged).
fn copy_seed_runs(
    ctx: &Ctx<'_>,
    base: ContentHash,
    runs: &[PlacedRun],
    journal: &Journal,
    data: &File,
    data_path: &Path,
) -> Result<(), JobError> {
    let base_path = ctx.cache.content_path(&base);
    let base_file = File::open(&base_path).map_err(|e| JobError::BaseCorrupt {
        base,
        detail: format!("cannot open it: {e}"),
    })?;
    let mut pending: Vec<(u64, u64)> = Vec::new();
    let mut pending_bytes = 0u64;
    let mut buf = Vec::new();
    for r in runs
        .iter()
        .filter(|r| matches!(r.run.source, RunSource::Seed { .. }))
    {
        if journal.covers(r.target_range()) {
            continue;
        }
        let RunSource::Seed { offset } = r.run.source else {
            continue;
        };
        buf.resize(r.run.len as usize, 0);
        base_file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| JobError::BaseCorrupt {
                base,
                detail: format!("reading it: {e}"),
            })?;
        let v = r.verify(&buf).map_err(|e| JobError::BaseCorrupt {
            base,
            detail: e.to_string(),
        })?;
        data.write_all_at(v.bytes(), v.target_offset())
            .with_context(|| format!("writing {}", data_path.display()))?;
        pending.push((r.target_offset, u64::from(r.run.len)));
        pending_bytes += u64::from(r.run.len);
        ctx.reused
            .fetch_add(u64::from(r.run.len), Ordering::Relaxed);
        ctx.progress.add(0, u64::from(r.run.len));
        if pending_bytes >= 64 << 20 {
            data.sync_data().context("syncing")?;
            journal.record(&pending)?;
            pending.clear();
            pending_bytes = 0;
        }
    }
    data.sync_data().context("syncing")?;
    journal.record(&pending)?;
    Ok(())
}

/// Runs blocking file work (copying, hashing gigabytes) without stalling the
/// async runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// What using one unit gave: runs written (verified), runs that failed.
#[derive(Debug, Default)]
struct Outcome {
    written: Vec<(u64, u64)>,
    failed: Vec<usize>,
}

/// Verifies `bytes` as origin run `i` and writes them into `data`.
fn put_run(
    ctx: &Ctx<'_>,
    data: &File,
    origin: &[PlacedRun],
    i: usize,
    bytes: &[u8],
    from: &str,
    out: &mut Outcome,
) -> Result<(), JobError> {
    let Some(r) = origin.get(i) else {
        return Ok(());
    };
    match r.verify(bytes) {
        Ok(v) => {
            data.write_all_at(v.bytes(), v.target_offset())
                .with_context(|| {
                    format!(
                        "writing bytes at {} of the content being built",
                        r.target_offset
                    )
                })?;
            ctx.progress.add(0, u64::from(r.run.len));
            out.written.push((r.target_offset, u64::from(r.run.len)));
        }
        Err(e) => {
            tracing::warn!("{from}: {e}");
            out.failed.push(i);
        }
    }
    Ok(())
}

/// Fetches units `(id, offset, len)` of the DP file `rel` in requests the
/// governor allows (the pieces of a unit may come in different answers),
/// hands each complete unit to `use_unit`, and after each answer syncs the
/// data and journals the runs written. Returns the runs that failed.
async fn fetch_units(
    ctx: &Ctx<'_>,
    rel: &str,
    file_len: u64,
    units: &[(usize, u64, u64)],
    data: &File,
    journal: &Journal,
    use_unit: impl Fn(usize, &[u8]) -> Result<Outcome, JobError>,
) -> Result<Vec<usize>, JobError> {
    if units.is_empty() {
        return Ok(Vec::new());
    }
    let ranges: Vec<(u64, u64)> = units.iter().map(|u| (u.1, u.2)).collect();
    let requests = fetchplan::plan_split(&ranges, ctx.client.limits(ctx.opts.limits));
    let asm = Mutex::new(fetchplan::Assembler::new(units.iter().copied()));
    let results: Vec<Result<Vec<usize>, JobError>> = stream::iter(requests)
        .map(|req| {
            let (asm, use_unit) = (&asm, &use_unit);
            async move {
                let got = ctx.client.get_ranges(rel, &req.ranges, file_len).await?;
                let complete: Vec<(usize, Vec<u8>)> = {
                    let mut a = asm.lock().unwrap_or_else(|e| e.into_inner());
                    req.ranges
                        .iter()
                        .zip(&got)
                        .flat_map(|((start, _), bytes)| a.add(*start, bytes))
                        .collect()
                };
                let mut all = Outcome::default();
                for (id, bytes) in &complete {
                    let o = use_unit(*id, bytes)?;
                    all.written.extend(o.written);
                    all.failed.extend(o.failed);
                }
                if !all.written.is_empty() {
                    data.sync_data().context("syncing")?;
                    journal.record(&all.written)?;
                }
                Ok(all.failed)
            }
        })
        .buffer_unordered(ctx.opts.concurrency.max(1))
        .collect()
        .await;
    let mut failed = Vec::new();
    for r in results {
        failed.extend(r?);
    }
    Ok(failed)
}

/// Fetches origin runs by Range from the content itself; the runs that fail
/// verification are fetched once more before the DP is blamed.
async fn fetch_raw_runs(
    ctx: &Ctx<'_>,
    f: &FileEntry,
    origin: &[PlacedRun],
    which: &[usize],
    journal: &Journal,
    data: &File,
) -> Result<(), JobError> {
    let content_rel = layout::content(&f.hash);
    let mut which: Vec<usize> = which.to_vec();
    for attempt in 0..2 {
        let units: Vec<(usize, u64, u64)> = which
            .iter()
            .filter_map(|&i| {
                origin
                    .get(i)
                    .map(|r| (i, r.target_offset, u64::from(r.run.len)))
            })
            .collect();
        let failed = fetch_units(
            ctx,
            &content_rel,
            f.size,
            &units,
            data,
            journal,
            |i, bytes| {
                let mut o = Outcome::default();
                put_run(ctx, data, origin, i, bytes, &content_rel, &mut o)?;
                Ok(o)
            },
        )
        .await?;
        if failed.is_empty() {
            return Ok(());
        }
        ctx.failures
            .fetch_add(failed.len() as u64, Ordering::Relaxed);
        if attempt == 1 {
            let r = &origin[failed[0]];
            return Err(JobError::Dp(format!(
                "{content_rel}: bytes {}..{} failed verification twice ({} runs)",
                r.target_offset,
                r.target_range().end,
                failed.len()
            )));
        }
        which = failed;
    }
    Ok(())
}

/// Client-side recursive RDC from a cached seed: the content's signature
/// levels are fetched top down, only the parts that differ from the seed's,
/// then the file's differing ranges. Checked against the content's BLAKE3.
async fn rdc(ctx: &Ctx<'_>, f: &FileEntry, seed: ContentHash) -> Result<VerifiedContent, JobError> {
    let sig_rel = layout::sigs(&f.hash);
    let head_len = sigstore::HEADER_FETCH.min(f.sig.len);
    let head = ctx
        .client
        .get_ranges(&sig_rel, &[(0, head_len)], f.sig.len)
        .await?;
    let (header, start) =
        sigstore::decode_header(&head[0]).map_err(|e| JobError::Dp(format!("{sig_rel}: {e}")))?;
    // Levels, parameters and lengths must be what the signed manifest says
    // before any of them sizes a request or a buffer.
    header
        .check_against(start, &f.sig, &ctx.manifest.params, f.size)
        .map_err(|e| JobError::Dp(format!("{sig_rel}: {e}")))?;
    let seed_path = ctx.cache.content_path(&seed);
    let params = header.params;
    let seed_levels = {
        let p = seed_path.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<SeedLevels> {
            let src = peerdelta_store::fsutil::FileSource::open(&p)?;
            let mut b = SignatureBuilder::new(params, MAX_LEVELS);
            let mut buf = vec![0u8; 1 << 20];
            let mut pos = 0u64;
            use peerdelta_protocol::rdc::ReadAt;
            while pos < src.len() {
                let n = (src.len() - pos).min(buf.len() as u64) as usize;
                src.read_exact_at(&mut buf[..n], pos)?;
                b.push(&buf[..n], &mut |_, _| {});
                pos += n as u64;
            }
            Ok(SeedLevels::from_files(b.finish(&mut |_, _| {}))?)
        })
        .await
        .map_err(|e| anyhow::anyhow!("signing the seed: {e}"))??
    };
    let depth = header.depth();
    let level_range = |level: usize| {
        header
            .level_range(start, level)
            .ok_or_else(|| JobError::Dp(format!("{sig_rel}: no level {level}")))
    };
    let top_r = level_range(depth)?;
    let top = ctx
        .client
        .get_ranges(
            &sig_rel,
            &[(top_r.start, top_r.end - top_r.start)],
            f.sig.len,
        )
        .await?;
    let mut plan = RecursivePlan::new(params, depth, &top[0], &seed_levels)
        .map_err(|e| JobError::Dp(format!("{e}")))?;
    while plan.level() > 1 {
        let below = plan.level() - 1;
        let r = level_range(below)?;
        let seed_file = seed_levels.file(below).unwrap_or_default();
        let mut rebuilt = Vec::with_capacity((r.end - r.start) as usize);
        let wanted: Vec<(u64, u64)> = plan
            .needs()
            .iter()
            .filter_map(|n| match *n {
                Need::Source { offset, len } => Some((r.start + offset, len)),
                Need::Seed { .. } => None,
            })
            .collect();
        // Each needed range is a unit, whatever requests carry its pieces.
        let units: Vec<(usize, u64, u64)> = wanted
            .iter()
            .enumerate()
            .map(|(k, &(o, l))| (k, o, l))
            .collect();
        let mut asm = fetchplan::Assembler::new(units);
        let mut fetched: HashMap<usize, Vec<u8>> = HashMap::new();
        for req in fetchplan::plan_split(&wanted, ctx.client.limits(ctx.opts.limits)) {
            let got = ctx
                .client
                .get_ranges(&sig_rel, &req.ranges, f.sig.len)
                .await?;
            for ((o, _), b) in req.ranges.iter().zip(got) {
                fetched.extend(asm.add(*o, &b));
            }
        }
        let mut next_source = 0usize;
        for n in plan.needs() {
            match *n {
                Need::Seed { offset, len } => {
                    let s = seed_file
                        .get(offset as usize..(offset + len) as usize)
                        .ok_or_else(|| JobError::Dp("seed range".into()))?;
                    rebuilt.extend_from_slice(s);
                }
                Need::Source { .. } => {
                    let b = fetched
                        .remove(&next_source)
                        .ok_or_else(|| JobError::Dp(format!("{sig_rel}: a range never arrived")))?;
                    rebuilt.extend_from_slice(&b);
                    next_source += 1;
                }
            }
        }
        plan.descend(&rebuilt, &seed_levels)
            .map_err(|e| JobError::Dp(format!("{sig_rel}: {e}")))?;
    }
    // Level 1: the file.
    let dir = ctx.cache.partial_dir(&f.hash);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let data_path = dir.join("rdc-data");
    let data =
        File::create(&data_path).with_context(|| format!("creating {}", data_path.display()))?;
    data.set_len(f.size).context("sizing")?;
    let seed_file =
        File::open(&seed_path).with_context(|| format!("opening {}", seed_path.display()))?;
    let mut at = 0u64;
    let mut source: Vec<(u64, u64, u64)> = Vec::new(); // (target offset, source offset, len)
    let mut buf = Vec::new();
    for n in plan.needs() {
        match *n {
            Need::Seed { offset, len } => {
                let mut done = 0;
                while done < len {
                    let k = (len - done).min(1 << 20);
                    buf.resize(k as usize, 0);
                    seed_file
                        .read_exact_at(&mut buf, offset + done)
                        .context("reading the seed")?;
                    data.write_all_at(&buf, at + done).context("writing")?;
                    done += k;
                }
                ctx.reused.fetch_add(len, Ordering::Relaxed);
            }
            Need::Source { offset, len } => source.push((at, offset, len)),
        }
        at += n.len();
    }
    let content_rel = layout::content(&f.hash);
    let ranges: Vec<(u64, u64)> = source.iter().map(|&(_, o, l)| (o, l)).collect();
    for req in fetchplan::plan_split(&ranges, ctx.client.limits(ctx.opts.limits)) {
        let got = ctx
            .client
            .get_ranges(&content_rel, &req.ranges, f.size)
            .await?;
        for ((o, _), b) in req.ranges.iter().zip(got) {
            // Target offset == source offset: the needs list rebuilds the source.
            data.write_all_at(&b, *o).context("writing")?;
        }
    }
    data.sync_all().context("syncing")?;
    drop(data);
    ctx.progress.add(0, f.size);
    blocking(|| verify_file(&data_path, &f.hash))
        .map_err(|e| JobError::Dp(format!("client-side RDC result: {e:#}")))
}
