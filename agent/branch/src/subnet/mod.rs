//! The branch agent daemon (`peerdelta agent run`): subnet cooperation.
//!
//! - [`net`]: libp2p transport, discovery and the request-response protocol;
//! - [`lan`]: what one transfer takes from the subnet;
//! - this module: the elections (driving [`peerdelta_protocol::election`]),
//!   the transfers (driving `get` with the subnet), answering peers, and the
//!   loopback control API (`peerdelta get`, `peerdelta status`, metrics).

pub mod control;
pub mod lan;
pub mod net;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ed25519_dalek::VerifyingKey;
use libp2p::{Multiaddr, PeerId, identity};
use peerdelta_protocol::ContentHash;
use peerdelta_protocol::election::{Action, Election, Event, Rank, Timing};
use peerdelta_protocol::manifest::{Manifest, PackageName};
use peerdelta_protocol::wire::{self, Announce, Candidacy, Request, Response};
use serde::Serialize;
use tokio::sync::watch;

use crate::cache::Cache;
use crate::client::DpClient;
use crate::get::{GetOptions, GetSummary};
use crate::settings::AgentFile;
use lan::{Lan, LanCounters};
use net::{Incoming, Net, NetConfig};

/// Everything the daemon needs to start.
pub struct DaemonConfig {
    /// Agent name.
    pub name: String,
    /// The cache.
    pub cache: Cache,
    /// The DP's public key.
    pub key: VerifyingKey,
    /// The DP client (with its governor).
    pub client: DpClient,
    /// The `[agent]` settings.
    pub agent: AgentFile,
    /// Transfer options (limits, concurrency, reports).
    pub get: GetOptions,
}

/// One election and transfer, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    /// Package.
    pub package: String,
    /// Version.
    pub version: u64,
    /// "master", "peer" or "holder" (holds it complete, answers elections).
    pub role: &'static str,
    /// The master as we see it.
    pub master: Option<String>,
    /// waiting, running, done, failed.
    pub phase: String,
    /// Our rank.
    pub rank: Rank,
    /// Masters seen for this version.
    pub elections: u64,
    /// Election log: candidates, ranks, winner, reason.
    pub log: Vec<String>,
    /// The last error.
    pub error: Option<String>,
    /// The summary once done.
    pub summary: Option<GetSummary>,
    /// Bytes of the target held (cached or verified in progress).
    pub held_bytes: u64,
    /// Bytes of the target.
    pub total_bytes: u64,
}

struct Job {
    election: Election<PeerId>,
    role: watch::Sender<bool>,
    view: JobView,
    manifest: Option<Manifest>,
    /// Its signed bytes, for peers asking before it is recorded.
    signed: Option<Vec<u8>>,
    /// Asked for locally (else we only answer as a holder).
    requested: bool,
    /// Peers banned in this transfer: no data from them, and not candidates.
    banned: Arc<Mutex<std::collections::BTreeSet<PeerId>>>,
}

/// A peer as its announcements describe it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    /// Peer id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its addresses.
    pub addrs: Vec<String>,
    /// Its election weight.
    pub weight: u32,
    /// Why it cannot work with us.
    pub incompatible: Option<String>,
    /// Milliseconds since it was last heard.
    pub last_heard_ms: Option<u64>,
}

struct PeerInfo {
    name: String,
    weight: u32,
    heard: Instant,
}

/// Shared daemon state.
pub struct Daemon {
    name: String,
    cache: Cache,
    key: VerifyingKey,
    key_fp: ContentHash,
    client: DpClient,
    cfg: AgentFile,
    timing: Timing,
    get_opts: GetOptions,
    net: Net,
    lan: Arc<LanCounters>,
    jobs: Mutex<BTreeMap<(PackageName, u64), Job>>,
    peers: Mutex<BTreeMap<PeerId, PeerInfo>>,
    elections: AtomicU64,
    reelections: AtomicU64,
    epoch: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Loads (or creates, mode 0600) the agent's libp2p identity in the cache,
/// so its peer id survives restarts.
fn identity(cache: &Cache) -> anyhow::Result<identity::Keypair> {
    let path = cache.root().join("agent.key");
    if let Ok(b) = std::fs::read(&path) {
        return identity::Keypair::from_protobuf_encoding(&b)
            .with_context(|| format!("{} is not an agent key", path.display()));
    }
    let k = identity::Keypair::generate_ed25519();
    let bytes = k.to_protobuf_encoding().context("encoding the agent key")?;
    // Created 0600, never readable by others, not even between create and chmod.
    let tmp = cache.tmp_path("agent-key");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("creating {}", path.display()))?;
    peerdelta_store::fsutil::sync_dir(cache.root())?;
    Ok(k)
}

fn parse_psk(s: &str) -> anyhow::Result<[u8; 32]> {
    peerdelta_protocol::hex::decode::<32>(s.trim())
        .ok_or_else(|| peerdelta_store::usage!("agent.psk must be 64 hex digits"))
}

impl Daemon {
    /// Starts the transport and the background tasks; returns the daemon.
    pub fn start(c: DaemonConfig) -> anyhow::Result<Arc<Daemon>> {
        let parse = |v: &[String], what: &str| -> anyhow::Result<Vec<Multiaddr>> {
            v.iter()
                .map(|a| {
                    a.parse::<Multiaddr>()
                        .map_err(|e| peerdelta_store::usage!("agent.{what}: {a}: {e}"))
                })
                .collect()
        };
        let net_cfg = NetConfig {
            listen: parse(&c.agent.listen, "listen")?,
            peers: parse(&c.agent.peers, "peers")?,
            mdns: c.agent.mdns,
            psk: c.agent.psk.as_deref().map(parse_psk).transpose()?,
            request_timeout: Duration::from_secs(60),
        };
        let key = identity(&c.cache)?;
        let (net, incoming) = net::start(key, net_cfg)?;
        tracing::info!(peer = %net.local, name = %c.name, "agent started");
        let timing = Timing {
            heartbeat_ms: c.agent.heartbeat_ms.max(50),
            master_timeout_ms: c.agent.master_timeout_ms.max(200),
            settle_ms: c.agent.settle_ms,
            reelect_ms: c.agent.reelect_secs.max(1) * 1000,
        };
        let d = Arc::new(Daemon {
            name: c.name,
            cache: c.cache,
            key_fp: ContentHash::of(c.key.as_bytes()),
            key: c.key,
            client: c.client,
            cfg: c.agent,
            timing,
            get_opts: c.get,
            net,
            lan: Arc::default(),
            jobs: Mutex::default(),
            peers: Mutex::default(),
            elections: AtomicU64::new(0),
            reelections: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        tokio::spawn(serve_peers(d.clone(), incoming));
        tokio::spawn(heartbeats(d.clone()));
        Ok(d)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.net.local
    }

    /// Starts (or joins) the transfer of `package` v`version`.
    pub fn request(self: &Arc<Self>, package: PackageName, version: u64) {
        let mut jobs = lock(&self.jobs);
        let key = (package.clone(), version);
        if let Some(j) = jobs.get_mut(&key) {
            if j.requested || j.view.phase == "done" {
                return;
            }
            j.requested = true;
        } else {
            jobs.insert(key, self.new_job(&package, version, true));
        }
        drop(jobs);
        tokio::spawn(transfer(self.clone(), package, version));
    }

    fn new_job(&self, package: &PackageName, version: u64, requested: bool) -> Job {
        // A holder knows the manifest from its cache, if it verifies as this
        // version's.
        let (signed, manifest) = self.verified_manifest(package, version).unzip();
        let rank = self.rank(package, version, None);
        let (role, _) = watch::channel(false);
        Job {
            election: Election::new(self.net.local, rank, self.timing, self.now_ms()),
            role,
            view: JobView {
                package: package.to_string(),
                version,
                role: "peer",
                master: None,
                phase: if rank.complete { "done" } else { "waiting" }.into(),
                rank,
                elections: 0,
                log: Vec::new(),
                error: None,
                summary: None,
                held_bytes: 0,
                total_bytes: 0,
            },
            manifest,
            signed,
            requested,
            banned: Arc::default(),
        }
    }

    /// The cached manifest of `package` `version`, raw and opened, if it
    /// verifies as that version's.
    fn verified_manifest(
        &self,
        package: &PackageName,
        version: u64,
    ) -> Option<(Vec<u8>, Manifest)> {
        let raw = self.cache.manifest_raw(package, version)?;
        let m = peerdelta_protocol::manifest::open_manifest_of(&raw, &self.key, package, version)
            .ok()?;
        Some((raw, m))
    }

    /// Our rank for a version: from the cache and, once known, the manifest.
    fn rank(&self, package: &PackageName, version: u64, m: Option<&Manifest>) -> Rank {
        self.rank_and_held(package, version, m).0
    }

    /// Our rank, and the target bytes held and in all (for `status`).
    fn rank_and_held(
        &self,
        package: &PackageName,
        version: u64,
        m: Option<&Manifest>,
    ) -> (Rank, u64, u64) {
        let (held, total) = m.map_or((0, 0), |m| self.held_bytes(m));
        let rank = Rank::from_holdings(
            version,
            &self
                .cache
                .versions_of(package)
                .into_iter()
                .collect::<Vec<_>>(),
            held,
            total,
            self.cfg.weight,
            peerdelta_store::fsutil::free_bytes(self.cache.root()).unwrap_or(0),
        );
        (rank, held, total)
    }

    fn held_bytes(&self, m: &Manifest) -> (u64, u64) {
        let mut seen = std::collections::BTreeSet::new();
        let (mut held, mut total) = (0u64, 0u64);
        for (_, f) in m.files() {
            if !seen.insert(f.hash) {
                continue;
            }
            total += f.size;
            if self.cache.has(&f.hash) {
                held += f.size;
            } else {
                held += crate::get::partial_coverage(&self.cache, &f.hash)
                    .0
                    .iter()
                    .map(|r| r.1)
                    .sum::<u64>();
            }
        }
        (held, total)
    }

    /// Feeds an event to one election and acts on the decisions.
    fn elect(&self, job: &mut Job, ev: Event<PeerId>) {
        let now = self.now_ms();
        for a in job.election.handle(ev, now) {
            match a {
                Action::BecomeMaster => {
                    tracing::info!(package = %job.view.package, version = job.view.version, "this agent is now master");
                    let _ = job.role.send(true);
                }
                Action::StepDown => {
                    tracing::info!(package = %job.view.package, version = job.view.version, "this agent steps down as master");
                    let _ = job.role.send(false);
                }
                Action::MasterChanged {
                    from,
                    to,
                    reason,
                    candidates,
                } => {
                    let names = lock(&self.peers);
                    let who = |p: &PeerId| {
                        if *p == self.net.local {
                            format!("{} (this agent)", self.name)
                        } else {
                            names
                                .get(p)
                                .map_or_else(|| p.to_string(), |i| i.name.clone())
                        }
                    };
                    let cands: Vec<String> = candidates
                        .iter()
                        .map(|(p, r)| {
                            format!(
                                "{}: complete={} held={}‰ base={} weight={} free={}MiB",
                                who(p),
                                r.complete,
                                r.held_permille,
                                r.has_base,
                                r.weight,
                                r.free_mib
                            )
                        })
                        .collect();
                    let line = format!(
                        "master {} -> {} ({reason:?}); candidates: [{}]",
                        from.as_ref().map_or("none".into(), &who),
                        to.as_ref().map_or("none".into(), &who),
                        cands.join("; ")
                    );
                    tracing::info!(package = %job.view.package, version = job.view.version, "election: {line}");
                    if to.is_some() {
                        if job.view.elections > 0 {
                            self.reelections.fetch_add(1, Ordering::Relaxed);
                        }
                        self.elections.fetch_add(1, Ordering::Relaxed);
                    }
                    job.view.log.push(line);
                    if job.view.log.len() > 50 {
                        job.view.log.remove(0);
                    }
                    job.view.master = to.as_ref().map(&who);
                    job.view.elections = job.election.elections();
                }
            }
        }
        job.view.rank = job.election.rank();
        job.view.role = if job.election.is_master() {
            "master"
        } else if !job.requested {
            "holder"
        } else {
            "peer"
        };
    }

    /// What `status` shows.
    pub fn status(&self) -> serde_json::Value {
        let links = self.net.links();
        let peers = lock(&self.peers);
        let mut views: Vec<PeerView> = links
            .iter()
            .map(|(p, l)| {
                let info = peers.get(p);
                PeerView {
                    id: p.to_string(),
                    name: info.map_or_else(String::new, |i| i.name.clone()),
                    addrs: l.addrs.iter().map(|a| a.to_string()).collect(),
                    weight: info.map_or(0, |i| i.weight),
                    incompatible: l.incompatible.clone(),
                    last_heard_ms: info.map(|i| i.heard.elapsed().as_millis() as u64),
                }
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        drop(peers);
        let jobs: Vec<JobView> = lock(&self.jobs).values().map(|j| j.view.clone()).collect();
        let versions: Vec<String> = self
            .cache
            .versions()
            .unwrap_or_default()
            .into_iter()
            .map(|(p, v)| format!("{p} v{v}"))
            .collect();
        serde_json::json!({
            "agent": self.name,
            "peer_id": self.net.local.to_string(),
            "listening": self.net.listening().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "peers": views,
            "jobs": jobs,
            "cache": { "root": self.cache.root(), "versions": versions },
            "control_token_file": self.cache.root().join(control::TOKEN_FILE),
            "dp_key": peerdelta_protocol::hex::encode(self.key.as_bytes()),
            "wan_bytes": self.client.wan_bytes(),
            "lan_bytes_in": self.lan.bytes_in.load(Ordering::Relaxed),
            "lan_bytes_out": self.lan.bytes_out.load(Ordering::Relaxed),
            "elections": self.elections.load(Ordering::Relaxed),
            "reelections": self.reelections.load(Ordering::Relaxed),
            "bans": self.lan.bans.load(Ordering::Relaxed),
        })
    }

    /// Prometheus metrics.
    pub fn metrics(&self) -> String {
        let mut s = String::new();
        let mut m = |name: &str, help: &str, kind: &str, v: u64| {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        m(
            "peerdelta_agent_wan_bytes_total",
            "Bytes received from the DP.",
            "counter",
            self.client.wan_bytes(),
        );
        m(
            "peerdelta_agent_lan_bytes_in_total",
            "Bytes received from peers.",
            "counter",
            self.lan.bytes_in.load(Ordering::Relaxed),
        );
        m(
            "peerdelta_agent_lan_bytes_out_total",
            "Bytes sent to peers.",
            "counter",
            self.lan.bytes_out.load(Ordering::Relaxed),
        );
        m(
            "peerdelta_agent_elections_total",
            "Masters elected (first elections and re-elections).",
            "counter",
            self.elections.load(Ordering::Relaxed),
        );
        m(
            "peerdelta_agent_reelections_total",
            "Masters elected after a previous one.",
            "counter",
            self.reelections.load(Ordering::Relaxed),
        );
        m(
            "peerdelta_agent_bans_total",
            "Peers banned for bad data.",
            "counter",
            self.lan.bans.load(Ordering::Relaxed),
        );
        m(
            "peerdelta_agent_peers",
            "Connected peers.",
            "gauge",
            self.net.links().len() as u64,
        );
        s
    }

    /// Peers heard from (they announced themselves and are compatible).
    pub fn peers_heard(&self) -> usize {
        lock(&self.peers).len()
    }

    /// One job's view.
    pub fn job(&self, package: &PackageName, version: u64) -> Option<JobView> {
        lock(&self.jobs)
            .get(&(package.clone(), version))
            .map(|j| j.view.clone())
    }

    /// The DP client (the control API resolves "newest" with it).
    pub fn client(&self) -> &DpClient {
        &self.client
    }

    /// The cache directory.
    pub fn cache_root(&self) -> &std::path::Path {
        self.cache.root()
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The DP key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    fn serving(&self, p: &PeerId) -> bool {
        lock(&self.peers).get(p).is_none_or(|i| i.weight > 0)
    }
}

/// Runs one transfer to completion (retrying after errors).
async fn transfer(d: Arc<Daemon>, package: PackageName, version: u64) {
    let Some((role, banned)) = lock(&d.jobs)
        .get(&(package.clone(), version))
        .map(|j| (j.role.subscribe(), j.banned.clone()))
    else {
        return;
    };
    let dd = d.clone();
    let lan = Lan::new(
        d.net.clone(),
        package.clone(),
        version,
        role,
        d.lan.clone(),
        Arc::new(move |p: &PeerId| dd.serving(p)),
        banned,
    );
    let mut opts = d.get_opts.clone();
    opts.package = package.clone();
    opts.version = Some(version);
    let set = |f: &dyn Fn(&mut Job)| {
        if let Some(j) = lock(&d.jobs).get_mut(&(package.clone(), version)) {
            f(j);
        }
    };
    let mut failures = 0u32;
    loop {
        set(&|j| j.view.phase = "running".into());
        let m = crate::get::lan_manifest(&d.client, &d.cache, &d.key, &opts, &lan).await;
        let r = match m {
            Ok(known) => {
                set(&|j| {
                    j.manifest = Some(known.0.clone());
                    j.signed = Some(known.1.clone());
                });
                crate::get::get_with(&d.client, &d.cache, &d.key, &opts, Some(&lan), Some(known))
                    .await
            }
            Err(e) => Err(e),
        };
        match r {
            Ok(s) => {
                tracing::info!(package = %package, version, wan_bytes = s.dp_bytes, lan_bytes = s.lan_bytes, "transfer done");
                set(&|j| {
                    j.view.phase = "done".into();
                    j.view.error = None;
                    j.view.summary = Some(s.clone());
                });
                return;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(package = %package, version, "transfer failed: {e:#}");
                let msg = format!("{e:#}");
                set(&|j| j.view.error = Some(msg.clone()));
                if failures >= 5 {
                    set(&|j| j.view.phase = "failed".into());
                    return;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Announces our candidacies to every peer once per heartbeat and ticks
/// the elections.
async fn heartbeats(d: Arc<Daemon>) {
    let mut every = tokio::time::interval(Duration::from_millis(d.timing.heartbeat_ms));
    let mut round = 0u64;
    loop {
        every.tick().await;
        round += 1;
        let links = d.net.links();
        let mut cands = Vec::new();
        {
            let mut jobs = lock(&d.jobs);
            for ((p, v), job) in jobs.iter_mut() {
                // Ranks read the cache; the election says how often.
                if job.election.rerank_due(round) {
                    let (r, h, t) = d.rank_and_held(p, *v, job.manifest.as_ref());
                    job.view.held_bytes = h;
                    job.view.total_bytes = t;
                    d.elect(job, Event::Rank(r));
                }
                let banned = lock(&job.banned).clone();
                let gone: Vec<PeerId> = job
                    .election
                    .candidates()
                    .into_iter()
                    .map(|c| c.0)
                    .filter(|p| *p != d.net.local && (!links.contains_key(p) || banned.contains(p)))
                    .collect();
                for p in gone {
                    d.elect(job, Event::Gone(p));
                }
                d.elect(job, Event::Tick);
                cands.push(Candidacy {
                    package: p.clone(),
                    version: *v,
                    rank: job.election.rank(),
                    claims: job.election.claims(),
                });
            }
        }
        let a = Announce {
            wire_version: wire::WIRE_VERSION,
            agent: d.name.clone(),
            dp_key: d.key_fp,
            weight: d.cfg.weight,
            candidacies: cands,
        };
        for (peer, link) in links {
            if link.incompatible.is_some() {
                continue;
            }
            let (d, a) = (d.clone(), a.clone());
            tokio::spawn(async move {
                match d.net.request(peer, Request::Announce(a)).await {
                    Ok(Response::Incompatible(why)) => {
                        tracing::warn!(%peer, "incompatible peer: {why}");
                        d.net.set_incompatible(peer, Some(why));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!("announce: {e:#}"),
                }
            });
        }
    }
}

/// Answers peers' requests.
async fn serve_peers(d: Arc<Daemon>, mut incoming: tokio::sync::mpsc::UnboundedReceiver<Incoming>) {
    while let Some(i) = incoming.recv().await {
        let d = d.clone();
        tokio::spawn(async move {
            let peer = i.peer;
            let rel = match &i.request {
                Request::File { rel } => Some(rel.clone()),
                _ => None,
            };
            let r = tokio::task::spawn_blocking({
                let d = d.clone();
                move || answer(&d, peer, i.request)
            })
            .await
            .unwrap_or_else(|e| Response::Refused(format!("internal error: {e}")));
            let r = match (r, rel) {
                (Response::NotFound, Some(rel)) => match fetch_for_peers(&d, &rel).await {
                    Some(b) => Response::Bytes(b),
                    None => Response::NotFound,
                },
                (r, _) => r,
            };
            if let Response::Bytes(b) = &r {
                d.lan.bytes_out.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            d.net.respond(i.channel, r);
        });
    }
}

/// A needs list or pieces file a peer asked for and we do not keep: as
/// master of a version whose manifest lists it, we fetch it from the DP
/// (once for the subnet), verify it and keep it. A master that holds the
/// target complete, e.g., got it alone, has no needs lists until a peer asks.
async fn fetch_for_peers(d: &Daemon, rel: &str) -> Option<Vec<u8>> {
    let listed = lock(&d.jobs)
        .values()
        .filter(|j| j.election.is_master())
        .find_map(|j| library_entry(j.manifest.as_ref()?, rel))?;
    match crate::get::fetch_library_file(&d.client, &d.cache, rel, listed.0, listed.1).await {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!("fetching {rel} for peers: {e:#}");
            None
        }
    }
}

/// The hash and length of library file `rel` if manifest `m` lists it.
fn library_entry(m: &Manifest, rel: &str) -> Option<(ContentHash, u64)> {
    use peerdelta_protocol::layout;
    m.files().find_map(|(_, f)| {
        f.needs
            .iter()
            .find(|n| layout::needs(&n.base, &f.hash) == rel)
            .map(|n| (n.file_hash, n.file_len))
            .or_else(|| {
                f.pieces
                    .filter(|_| layout::needs(&ContentHash::EMPTY, &f.hash) == rel)
                    .map(|p| (p.file_hash, p.file_len))
            })
    })
}

fn answer(d: &Daemon, peer: PeerId, r: Request) -> Response {
    match r {
        Request::Announce(a) => {
            let why = if a.wire_version != wire::WIRE_VERSION {
                Some(format!(
                    "speaks wire version {}, this agent {}",
                    a.wire_version,
                    wire::WIRE_VERSION
                ))
            } else if a.dp_key != d.key_fp {
                Some("pins another DP key (another deployment)".to_string())
            } else {
                None
            };
            if let Some(why) = why {
                let first = d
                    .net
                    .links()
                    .get(&peer)
                    .is_some_and(|l| l.incompatible.is_none());
                if first {
                    tracing::warn!(%peer, agent = %a.agent, "incompatible peer: {why}");
                }
                d.net.set_incompatible(peer, Some(why.clone()));
                return Response::Incompatible(why);
            }
            lock(&d.peers).insert(
                peer,
                PeerInfo {
                    name: a.agent.clone(),
                    weight: a.weight,
                    heard: Instant::now(),
                },
            );
            let mut jobs = lock(&d.jobs);
            for c in a.candidacies {
                let key = (c.package.clone(), c.version);
                if !jobs.contains_key(&key) {
                    // We take part only if we hold the version: then we win.
                    if !d.cache.versions_of(&c.package).contains(&c.version) {
                        continue;
                    }
                    let job = d.new_job(&c.package, c.version, false);
                    jobs.insert(key.clone(), job);
                }
                if let Some(job) = jobs.get_mut(&key)
                    && !lock(&job.banned).contains(&peer)
                {
                    d.elect(
                        job,
                        Event::Heard {
                            from: peer,
                            rank: c.rank,
                            claims: c.claims,
                        },
                    );
                }
            }
            Response::Ok
        }
        _ if d.cfg.weight == 0 => Response::Refused("weight 0: this agent does not serve".into()),
        Request::Manifest { package, version } => {
            let working = lock(&d.jobs)
                .get(&(package.clone(), version))
                .and_then(|j| j.signed.clone());
            let cached = || d.verified_manifest(&package, version).map(|(raw, _)| raw);
            match working.or_else(cached) {
                Some(b) => Response::Bytes(b),
                None => Response::NotFound,
            }
        }
        Request::File { rel } => match d.cache.library_file(&rel).map(std::fs::read) {
            Some(Ok(b)) => Response::Bytes(b),
            _ => Response::NotFound,
        },
        Request::Has(list) => Response::Has(list.iter().map(|h| d.cache.has(h)).collect()),
        Request::Coverage(h) => {
            if d.cache.has(&h) {
                let len = std::fs::metadata(d.cache.content_path(&h)).map_or(0, |m| m.len());
                Response::Ranges {
                    complete: true,
                    ranges: vec![(0, len)],
                }
            } else {
                Response::Ranges {
                    complete: false,
                    ranges: crate::get::partial_coverage(&d.cache, &h).0,
                }
            }
        }
        // This request holds a slot already: the others are one fewer.
        Request::Range { .. }
            if peerdelta_protocol::swarm::busy(
                d.net.uploads().saturating_sub(1),
                d.cfg.upload_slots,
            ) =>
        {
            Response::Busy
        }
        Request::Range {
            content,
            offset,
            len,
        } => {
            let path: PathBuf = if d.cache.has(&content) {
                d.cache.content_path(&content)
            } else {
                let (ranges, data) = crate::get::partial_coverage(&d.cache, &content);
                if !peerdelta_protocol::swarm::covers(&ranges, offset, offset + len) {
                    return Response::NotFound;
                }
                data
            };
            let mut buf = vec![0u8; len as usize];
            match File::open(&path).and_then(|f| f.read_exact_at(&mut buf, offset)) {
                Ok(()) => {
                    if peerdelta_store::fault::active("serve-corrupt")
                        && let Some(b) = buf.get_mut(len as usize / 2)
                    {
                        *b ^= 0x5a;
                    }
                    Response::Bytes(buf)
                }
                Err(_) => Response::NotFound,
            }
        }
    }
}
