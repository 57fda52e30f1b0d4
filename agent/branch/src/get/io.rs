//! What the transfer state machine's actions do in the world: requests to
//! the DP and to peers, reads of our own base, writes of verified runs.
//! Every function here does one action and returns the events it leads to;
//! none decides anything (where bytes come from, how long to wait, when to
//! give up: `protocol::transfer` decides). Bytes are verified before they
//! are written, always through [`Partial::write`], which takes only a
//! `VerifiedRun`.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use libp2p::PeerId;
use peerdelta_protocol::fetchplan::{self, RequestLimits};
use peerdelta_protocol::manifest::{self, PackageName};
use peerdelta_protocol::needsfile::{NeedsFile, PlacedRun, RunSource};
use peerdelta_protocol::rangeset::RangeSet;
use peerdelta_protocol::time::Timestamp;
use peerdelta_protocol::transfer::{ContentId, ItemId, Outcome, RequestId, RunsFrom};
use peerdelta_protocol::wire::{MAX_RANGE, Request, Response};
use peerdelta_protocol::{ContentHash, layout};
use peerdelta_store::content::verify_file;
use peerdelta_store::partial::Partial;
use peerdelta_store::progress::Progress;

use crate::cache::Cache;
use crate::client::{DpClient, FetchError};
use crate::subnet::net::Net;

/// What an action led to, for the job's owner to feed back.
#[derive(Debug)]
pub(crate) enum JobEvent {
    /// A request the transfer issued ended.
    End(RequestId, Outcome),
    /// Units of a content are verified and written.
    Units(ContentId, Vec<usize>),
    /// What a peer holds of a content.
    Coverage {
        /// The peer.
        peer: PeerId,
        /// The content.
        content: ContentId,
        /// Its verified ranges.
        ranges: RangeSet,
        /// Whether it holds the base whole.
        has_base: bool,
    },
    /// An item is verified (its bytes, for those the job reads).
    Item(ItemId, Option<Vec<u8>>),
    /// Client-side RDC of a content failed: it is built whole instead
    /// (the item is over either way).
    RdcFailed(ItemId, ContentId, String),
    /// A content whose units are all done was hashed whole.
    Verified(ContentId, Result<(), String>),
    /// The bundle was applied.
    BundleApplied(Result<super::bundle::Applied, String>),
    /// Our base of a content failed verification.
    BaseLost(ContentId, String),
    /// Bytes that failed verification, for a status report to the DP.
    HashFailure {
        /// The content being built.
        content: ContentHash,
        /// Where the bytes came from.
        source: String,
        /// What failed.
        detail: String,
    },
}

/// What one content's actions need to know.
pub(crate) struct ContentPlan {
    /// The content.
    pub hash: ContentHash,
    /// Its size.
    pub size: u64,
    /// The base its seed runs read, if any.
    pub base: Option<ContentHash>,
    /// Its units: the runs of its needs list or pieces file, or one run
    /// that is the whole content (a small content, verified by its hash).
    pub runs: Vec<PlacedRun>,
    /// The needs file, for its pack.
    pub nf: Option<NeedsFile>,
    /// Where the DP keeps the pack (and the compressed copy of a small one).
    pub pack_rel: Option<String>,
    /// Size of the compressed copy of a small content.
    pub zst_len: Option<u64>,
    /// The data being built.
    pub partial: Partial,
}

/// The job's means: the DP, the cache, the subnet, counters.
#[derive(Clone)]
pub(crate) struct Io {
    pub client: DpClient,
    pub cache: Cache,
    pub key: VerifyingKey,
    pub net: Option<Net>,
    pub limits: RequestLimits,
    pub package: PackageName,
    /// Bytes this job received from peers.
    pub lan_bytes: Arc<AtomicU64>,
    /// Bytes reused from the local cache (seed runs).
    pub reused: Arc<AtomicU64>,
    /// Bytes received from peers, all jobs (metrics).
    pub lan_total: Option<Arc<AtomicU64>>,
    /// Set once the manifest tells how much there is to do.
    pub progress: Arc<std::sync::OnceLock<Progress>>,
}

/// A DP error as the transfer sees it.
pub(crate) fn dp_outcome(e: &FetchError) -> Outcome {
    match e {
        FetchError::Unreachable { .. } => Outcome::Dp {
            transient: true,
            detail: e.to_string(),
        },
        FetchError::Status { status, .. } => Outcome::Dp {
            transient: status.is_server_error() || status.as_u16() == 429,
            detail: e.to_string(),
        },
        FetchError::Garbage { .. } => Outcome::BadData(e.to_string()),
        _ => Outcome::Dp {
            transient: false,
            detail: e.to_string(),
        },
    }
}

impl Io {
    /// Counts progress (nothing before the manifest is known).
    pub fn progress(&self, files: u64, bytes: u64) {
        if let Some(p) = self.progress.get() {
            p.add(files, bytes);
        }
    }

    fn got(&self, n: usize) {
        self.lan_bytes.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(t) = &self.lan_total {
            t.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Asks `peer`, answering by `deadline`; `None` on a transport error
    /// or after the deadline (the machine counts that itself).
    pub async fn ask(&self, peer: PeerId, r: Request, deadline: Timestamp) -> Option<Response> {
        let net = self.net.as_ref()?;
        let left = deadline.since(now());
        match tokio::time::timeout(Duration::from_millis(left.max(1)), net.request(peer, r)).await {
            Ok(Ok(resp)) => Some(resp),
            Ok(Err(e)) => {
                tracing::debug!("{e:#}");
                None
            }
            Err(_) => None,
        }
    }

    /// Coverage of a content (and whether the peer holds its base).
    pub async fn coverage(
        &self,
        id: RequestId,
        peer: PeerId,
        content: ContentId,
        plan: &ContentPlan,
        deadline: Timestamp,
    ) -> Vec<JobEvent> {
        let Some(Response::Ranges { ranges, .. }) =
            self.ask(peer, Request::Coverage(plan.hash), deadline).await
        else {
            return vec![JobEvent::End(id, Outcome::Unreachable)];
        };
        let has_base = match plan.base {
            Some(b) => matches!(
                self.ask(peer, Request::Has(vec![b]), deadline).await,
                Some(Response::Has(f)) if f.first() == Some(&true)
            ),
            None => false,
        };
        vec![
            JobEvent::Coverage {
                peer,
                content,
                ranges: RangeSet::from_ranges(&ranges),
                has_base,
            },
            JobEvent::End(id, Outcome::Ok),
        ]
    }

    /// Runs from a peer (target bytes, or the base's for an alt-copy),
    /// verified one by one and written.
    pub async fn runs_from_peer(
        &self,
        id: RequestId,
        content: ContentId,
        plan: &ContentPlan,
        from: &RunsFrom<PeerId>,
        units: &[usize],
        deadline: Timestamp,
    ) -> Vec<JobEvent> {
        let (peer, of, alt) = match from {
            RunsFrom::Peer(p) => (*p, plan.hash, false),
            RunsFrom::AltCopy(p) => match plan.base {
                Some(b) => (*p, b, true),
                None => return vec![JobEvent::End(id, Outcome::NotFound)],
            },
            RunsFrom::Dp { .. } => return vec![JobEvent::End(id, Outcome::NotFound)],
        };
        let runs: Vec<&PlacedRun> = units.iter().filter_map(|&u| plan.runs.get(u)).collect();
        let at = |r: &PlacedRun| match (alt, r.run.source) {
            (true, RunSource::Seed { offset }) => offset,
            _ => r.target_offset,
        };
        let Some(first) = runs.first() else {
            return vec![JobEvent::End(id, Outcome::Ok)];
        };
        let offset = at(first);
        let len: u64 = runs.iter().map(|r| u64::from(r.run.len)).sum();
        if len > MAX_RANGE {
            return vec![JobEvent::End(id, Outcome::NotFound)];
        }
        let req = Request::Range {
            content: of,
            offset,
            len,
        };
        let bytes = match self.ask(peer, req, deadline).await {
            Some(Response::Bytes(b)) => b,
            other => return vec![JobEvent::End(id, not_data(other))],
        };
        self.got(bytes.len());
        let mut out = Vec::new();
        let (done, bad) = self.write_runs(plan, &runs, &bytes);
        if !done.is_empty() {
            if let Err(e) = plan.partial.commit() {
                return vec![JobEvent::End(id, Outcome::Local(format!("{e:#}")))];
            }
            out.push(JobEvent::Units(content, done));
        }
        match bad {
            Some(detail) => {
                let detail = format!("peer {peer}: bytes of {of} failed verification: {detail}");
                out.push(JobEvent::HashFailure {
                    content: plan.hash,
                    source: format!("peer {peer}"),
                    detail: detail.clone(),
                });
                out.push(JobEvent::End(id, Outcome::BadData(detail)));
            }
            None => out.push(JobEvent::End(id, Outcome::Ok)),
        }
        out
    }

    /// Verifies `bytes` as the concatenation of `runs` and writes what
    /// verifies; returns the units written and what failed first.
    fn write_runs(
        &self,
        plan: &ContentPlan,
        runs: &[&PlacedRun],
        bytes: &[u8],
    ) -> (Vec<usize>, Option<String>) {
        let mut done = Vec::new();
        let mut pos = 0usize;
        for r in runs {
            let n = r.run.len as usize;
            let Some(slice) = bytes.get(pos..pos + n) else {
                return (
                    done,
                    Some(format!("{} bytes for a longer range", bytes.len())),
                );
            };
            pos += n;
            if plan.partial.covers(r.target_range()) {
                done.push(r.index);
                continue;
            }
            match r.verify(slice) {
                Ok(v) => match plan.partial.write(v) {
                    Ok(()) => {
                        self.progress(0, u64::from(r.run.len));
                        done.push(r.index);
                    }
                    Err(e) => return (done, Some(format!("{e:#}"))),
                },
                Err(e) => return (done, Some(e.to_string())),
            }
        }
        (done, None)
    }

    /// Runs from the DP: pack frames (decompressed against our base) or
    /// raw ranges of the content.
    pub async fn runs_from_dp(
        &self,
        id: RequestId,
        content: ContentId,
        plan: &ContentPlan,
        pack: bool,
        units: &[usize],
    ) -> Vec<JobEvent> {
        let result = if pack {
            self.frames_from_dp(plan, units).await
        } else {
            self.raw_from_dp(plan, units).await
        };
        let mut out = Vec::new();
        match result {
            Ok((done, bad)) => {
                if !done.is_empty() {
                    if let Err(e) = plan.partial.commit() {
                        return vec![JobEvent::End(id, Outcome::Local(format!("{e:#}")))];
                    }
                    out.push(JobEvent::Units(content, done));
                }
                match bad {
                    Some(detail) => {
                        out.push(JobEvent::HashFailure {
                            content: plan.hash,
                            source: "dp".into(),
                            detail: detail.clone(),
                        });
                        out.push(JobEvent::End(id, Outcome::BadData(detail)));
                    }
                    None => out.push(JobEvent::End(id, Outcome::Ok)),
                }
            }
            Err(outcome) => out.push(JobEvent::End(id, outcome)),
        }
        out
    }

    /// The DP file `rel` (of `file_len` bytes): the bytes of each unit
    /// `(id, offset, len)`, in requests the governor allows.
    async fn dp_units(
        &self,
        rel: &str,
        file_len: u64,
        units: &[(usize, u64, u64)],
    ) -> Result<Vec<(usize, Vec<u8>)>, Outcome> {
        let ranges: Vec<(u64, u64)> = units.iter().map(|u| (u.1, u.2)).collect();
        let mut asm = fetchplan::Assembler::new(units.iter().copied());
        let mut out = Vec::new();
        for req in fetchplan::plan_split(&ranges, self.client.limits(self.limits)) {
            let got = self
                .client
                .get_ranges(rel, &req.ranges, file_len)
                .await
                .map_err(|e| dp_outcome(&e))?;
            for ((start, _), bytes) in req.ranges.iter().zip(&got) {
                out.extend(asm.add(*start, bytes));
            }
        }
        Ok(out)
    }

    async fn raw_from_dp(
        &self,
        plan: &ContentPlan,
        units: &[usize],
    ) -> Result<(Vec<usize>, Option<String>), Outcome> {
        let rel = layout::content(&plan.hash);
        let wanted: Vec<(usize, u64, u64)> = units
            .iter()
            .filter_map(|&u| plan.runs.get(u))
            .map(|r| (r.index, r.target_offset, u64::from(r.run.len)))
            .collect();
        let got = self.dp_units(&rel, plan.size, &wanted).await?;
        let mut done = Vec::new();
        for (u, bytes) in got {
            let Some(r) = plan.runs.get(u) else { continue };
            let (d, bad) = self.write_runs(plan, &[r], &bytes);
            done.extend(d);
            if let Some(b) = bad {
                return Ok((done, Some(format!("{rel}: {b}"))));
            }
        }
        Ok((done, None))
    }

    async fn frames_from_dp(
        &self,
        plan: &ContentPlan,
        units: &[usize],
    ) -> Result<(Vec<usize>, Option<String>), Outcome> {
        // A small content: its compressed copy.
        let (Some(nf), Some(pack_rel)) = (&plan.nf, &plan.pack_rel) else {
            return self.zst_from_dp(plan).await;
        };
        let Some(pack) = &nf.pack else {
            return self.raw_from_dp(plan, units).await;
        };
        // Origin ordinals of the units, and the frames that hold them.
        let origin: Vec<usize> = plan
            .runs
            .iter()
            .filter(|r| r.run.source == RunSource::Origin)
            .map(|r| r.index)
            .collect();
        let wanted: std::collections::BTreeSet<usize> = units.iter().copied().collect();
        let frames: Vec<(usize, u64, u64)> = pack
            .frames
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                (f.first..f.first + f.count)
                    .any(|k| origin.get(k as usize).is_some_and(|u| wanted.contains(u)))
            })
            .map(|(k, f)| (k, f.offset, u64::from(f.len)))
            .collect();
        let got = self.dp_units(pack_rel, pack.len, &frames).await?;
        let base = plan
            .base
            .and_then(|b| std::fs::File::open(self.cache.content_path(&b)).ok());
        let mut done = Vec::new();
        for (k, bytes) in got {
            let Some(f) = pack.frames.get(k) else {
                continue;
            };
            let reference = match f.reference {
                Some(span) => {
                    let mut r = vec![0u8; span.len as usize];
                    match base.as_ref().map(|b| b.read_exact_at(&mut r, span.offset)) {
                        Some(Ok(())) => Some(r),
                        _ => {
                            return Ok((
                                done,
                                Some("the base span of a pack frame is not readable".into()),
                            ));
                        }
                    }
                }
                None => None,
            };
            let raw = match peerdelta_store::pack::unpack_frame(f, &bytes, reference.as_deref()) {
                Ok(raw) => raw,
                Err(e) => return Ok((done, Some(format!("{pack_rel}: frame {k}: {e:#}")))),
            };
            let runs: Vec<&PlacedRun> = (f.first..f.first + f.count)
                .filter_map(|o| origin.get(o as usize))
                .filter_map(|&u| plan.runs.get(u))
                .collect();
            let (d, bad) = self.write_runs(plan, &runs, &raw);
            done.extend(d);
            if let Some(b) = bad {
                return Ok((done, Some(format!("{pack_rel}: {b}"))));
            }
        }
        Ok((done, None))
    }

    async fn zst_from_dp(
        &self,
        plan: &ContentPlan,
    ) -> Result<(Vec<usize>, Option<String>), Outcome> {
        let Some(zlen) = plan.zst_len else {
            return self.raw_from_dp(plan, &[0]).await;
        };
        let z = self
            .client
            .get_sized(&layout::content_zst(&plan.hash), zlen)
            .await
            .map_err(|e| dp_outcome(&e))?;
        let raw = match zstd::bulk::decompress(&z, plan.size as usize) {
            Ok(raw) => raw,
            Err(e) => return Ok((Vec::new(), Some(format!("a bad compressed copy: {e}")))),
        };
        let runs: Vec<&PlacedRun> = plan.runs.iter().collect();
        Ok(self.write_runs(plan, &runs, &raw))
    }

    /// Seed runs from our own base, each verified before it is written.
    pub fn copy_seeds(
        &self,
        content: ContentId,
        plan: &ContentPlan,
        units: &[usize],
    ) -> Vec<JobEvent> {
        let Some(base) = plan.base else {
            return vec![JobEvent::BaseLost(content, "no base".into())];
        };
        let lost = |detail: String| {
            let _ = self.cache.quarantine(&base, &detail);
            JobEvent::BaseLost(content, detail)
        };
        let file = match std::fs::File::open(self.cache.content_path(&base)) {
            Ok(f) => f,
            Err(e) => return vec![lost(format!("cannot open it: {e}"))],
        };
        let mut done = Vec::new();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for r in units.iter().filter_map(|&u| plan.runs.get(u)) {
            let RunSource::Seed { offset } = r.run.source else {
                continue;
            };
            if plan.partial.covers(r.target_range()) {
                done.push(r.index);
                continue;
            }
            buf.resize(r.run.len as usize, 0);
            if let Err(e) = file.read_exact_at(&mut buf, offset) {
                out.push(lost(format!("reading it: {e}")));
                break;
            }
            match r.verify(&buf) {
                Ok(v) => {
                    if let Err(e) = plan.partial.write(v) {
                        tracing::warn!("{e:#}");
                        break;
                    }
                    self.reused
                        .fetch_add(u64::from(r.run.len), Ordering::Relaxed);
                    self.progress(0, u64::from(r.run.len));
                    done.push(r.index);
                }
                Err(e) => {
                    out.push(JobEvent::HashFailure {
                        content: plan.hash,
                        source: "local base".into(),
                        detail: format!("the local base {base} is damaged: {e}"),
                    });
                    out.push(lost(e.to_string()));
                    break;
                }
            }
        }
        if let Err(e) = plan.partial.commit() {
            tracing::warn!("{e:#}");
            done.clear();
        }
        out.insert(0, JobEvent::Units(content, done));
        out
    }

    /// A whole base content from a peer that holds it, in ranges, checked
    /// against its hash, into the cache.
    pub async fn base_from_peer(
        &self,
        id: RequestId,
        item: ItemId,
        peer: PeerId,
        base: ContentHash,
        deadline: Timestamp,
    ) -> Vec<JobEvent> {
        let len = match self.ask(peer, Request::Coverage(base), deadline).await {
            Some(Response::Ranges {
                complete: true,
                ranges,
            }) if ranges.len() == 1 && ranges[0].0 == 0 => ranges[0].1,
            Some(_) => return vec![JobEvent::End(id, Outcome::NotFound)],
            None => return vec![JobEvent::End(id, Outcome::Unreachable)],
        };
        let tmp = self.cache.tmp_path("base");
        let result: anyhow::Result<bool> = async {
            let out = std::fs::File::create(&tmp)?;
            let mut at = 0u64;
            while at < len {
                let n = (len - at).min(MAX_RANGE);
                // Each range has the deadline a range of its size has.
                let d = now().plus_ms(deadline.since(now()).max(5_000));
                let req = Request::Range {
                    content: base,
                    offset: at,
                    len: n,
                };
                match self.ask(peer, req, d).await {
                    Some(Response::Bytes(b)) if b.len() as u64 == n => {
                        self.got(b.len());
                        out.write_all_at(&b, at)?;
                        at += n;
                    }
                    _ => return Ok(false),
                }
            }
            Ok(true)
        }
        .await;
        match result {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                let _ = std::fs::remove_file(&tmp);
                return vec![JobEvent::End(id, Outcome::NotFound)];
            }
        }
        let cache = self.cache.clone();
        let verified = tokio::task::spawn_blocking(move || {
            let v = verify_file(&tmp, &base);
            if v.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            v.and_then(|v| cache.insert(v))
        })
        .await;
        match verified {
            Ok(Ok(_)) => {
                tracing::info!(%peer, %base, bytes = len, "base content copied from a peer");
                vec![JobEvent::Item(item, None), JobEvent::End(id, Outcome::Ok)]
            }
            Ok(Err(e)) => vec![JobEvent::End(
                id,
                Outcome::BadData(format!("base content {base}: {e:#}")),
            )],
            Err(e) => vec![JobEvent::End(id, Outcome::Local(e.to_string()))],
        }
    }

    /// A signed manifest from a peer, verified as the one asked for.
    pub async fn manifest_from_peer(
        &self,
        id: RequestId,
        item: ItemId,
        peer: PeerId,
        version: u64,
        deadline: Timestamp,
    ) -> Vec<JobEvent> {
        let req = Request::Manifest {
            package: self.package.clone(),
            version,
        };
        match self.ask(peer, req, deadline).await {
            Some(Response::Bytes(b)) => {
                self.got(b.len());
                match manifest::open_manifest_of(&b, &self.key, &self.package, version) {
                    Ok(_) => vec![
                        JobEvent::Item(item, Some(b)),
                        JobEvent::End(id, Outcome::Ok),
                    ],
                    Err(e) => vec![JobEvent::End(
                        id,
                        Outcome::BadData(format!("a manifest that does not verify: {e}")),
                    )],
                }
            }
            other => vec![JobEvent::End(id, not_data(other))],
        }
    }

    /// A library file (needs list, pieces file) from a peer, by its hash.
    pub async fn file_from_peer(
        &self,
        id: RequestId,
        item: ItemId,
        peer: PeerId,
        rel: &str,
        hash: ContentHash,
        deadline: Timestamp,
    ) -> Vec<JobEvent> {
        match self
            .ask(peer, Request::File { rel: rel.into() }, deadline)
            .await
        {
            Some(Response::Bytes(b)) => {
                self.got(b.len());
                if ContentHash::of(&b) == hash {
                    if let Err(e) = self.cache.keep_library_file(rel, &b) {
                        tracing::warn!("keeping {rel} for peers: {e:#}");
                    }
                    vec![
                        JobEvent::Item(item, Some(b)),
                        JobEvent::End(id, Outcome::Ok),
                    ]
                } else {
                    vec![JobEvent::End(
                        id,
                        Outcome::BadData(format!("a copy of {rel} that does not match its hash")),
                    )]
                }
            }
            other => vec![JobEvent::End(id, not_data(other))],
        }
    }

    /// A library file from the DP, checked against its hash and kept.
    pub async fn file_from_dp(
        &self,
        id: RequestId,
        item: ItemId,
        rel: &str,
        hash: ContentHash,
        len: u64,
    ) -> Vec<JobEvent> {
        match super::fetch_library_file(&self.client, &self.cache, rel, hash, len).await {
            Ok(b) => vec![
                JobEvent::Item(item, Some(b)),
                JobEvent::End(id, Outcome::Ok),
            ],
            Err(super::JobError::Dp(d)) => vec![JobEvent::End(id, Outcome::BadData(d))],
            Err(super::JobError::Fetch(e)) => vec![JobEvent::End(id, dp_outcome(&e))],
            Err(e) => vec![JobEvent::End(id, Outcome::Local(format!("{e}")))],
        }
    }

    /// Is the DP there? (Its package index: small, and useful.)
    pub async fn probe(&self, id: RequestId) -> Vec<JobEvent> {
        match self
            .client
            .get_bytes(&layout::index(&self.package), 64 << 20)
            .await
        {
            Ok(_) => vec![JobEvent::End(id, Outcome::Ok)],
            Err(e) => vec![JobEvent::End(id, dp_outcome(&e))],
        }
    }

    /// Hashes a content whose units are all done; on success it enters
    /// the cache. A content that does not verify has its partial data
    /// discarded: retrying from the same journal would fail the same way.
    pub async fn verify_content(
        &self,
        content: ContentId,
        plan: Arc<ContentPlan>,
    ) -> Vec<JobEvent> {
        let cache = self.cache.clone();
        let r = tokio::task::spawn_blocking(move || -> Result<(), String> {
            // Another transfer (of another version naming the same content)
            // may have finished it first, from the same partial.
            if cache.has(&plan.hash) {
                return Ok(());
            }
            let path = match plan.partial.finish() {
                Ok(p) => p,
                Err(_) if cache.has(&plan.hash) => return Ok(()),
                Err(e) => return Err(format!("{e:#}")),
            };
            match verify_file(&path, &plan.hash) {
                Ok(v) => {
                    cache.insert(v).map_err(|e| format!("{e:#}"))?;
                    let _ = std::fs::remove_dir_all(plan.partial.dir());
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(content = %plan.hash, "the rebuilt content does not verify ({e:#}); discarding its partial data");
                    let _ = std::fs::remove_dir_all(plan.partial.dir());
                    Err(format!("{e:#}"))
                }
            }
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        vec![JobEvent::Verified(content, r)]
    }
}

/// How a peer's answer that carries no data ends a request (`None`: no
/// answer in time).
fn not_data(r: Option<Response>) -> Outcome {
    match r {
        Some(Response::NotFound | Response::Refused(_)) => Outcome::NotFound,
        Some(Response::Busy) => Outcome::Busy,
        Some(_) => Outcome::BadData("an unexpected answer".into()),
        None => Outcome::Unreachable,
    }
}

/// Milliseconds since the Unix epoch: the agent's one mapping of wall time
/// to the state machines' [`Timestamp`].
pub(crate) fn now() -> Timestamp {
    Timestamp(peerdelta_store::util::now_ms())
}
