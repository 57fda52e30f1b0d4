//! The branch agent daemon (`peerdelta agent run`): subnet cooperation.
//!
//! One task, the event loop, owns every state machine: per package version
//! an election (`protocol::election`) and, once asked for, a job driving
//! the transfer (`protocol::transfer`); and the table of peers. Nothing
//! else holds decision state. Other tasks talk to it:
//!
//! - the control API and the demo send [`Command`]s with a reply channel
//!   through a cheap [`Daemon`] handle;
//! - the transport ([`net`]) delivers peers' requests;
//! - a job's I/O runs in spawned tasks that send their results back.
//!
//! The loop waits for the first of those or the machines' next deadline,
//! feeds it in, then carries out what the machines decided. Peers' requests
//! for data are answered by spawned tasks reading the cache ([`serve`]).
//!
//! Bounds: peers tracked ([`MAX_PEERS`], pruned when silent), elections
//! joined as a holder ([`MAX_HOLDER_SLOTS`]), candidacies in one
//! announcement ([`MAX_CANDIDACIES`], requested versions first), commands
//! and events queued (bounded channels).

pub mod control;
pub mod net;
mod serve;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ed25519_dalek::VerifyingKey;
use libp2p::{Multiaddr, PeerId, identity};
use peerdelta_protocol::ContentHash;
use peerdelta_protocol::election::{Action, Election, Rank, Timing};
use peerdelta_protocol::manifest::PackageName;
use peerdelta_protocol::status::{StatusEvent, StatusReport};
use peerdelta_protocol::time::Timestamp;
use peerdelta_protocol::transfer::BanReason;
use peerdelta_protocol::wire::{self, Announce, Candidacy, Request, Response};
use tokio::sync::{mpsc, oneshot};

use crate::cache::Cache;
use crate::client::DpClient;
use crate::get::io::{Io, JobEvent, now};
use crate::get::job::{Job, Output};
use crate::get::{GetOptions, transfer_config};
use crate::settings::AgentFile;
use net::{Incoming, Net, NetConfig};
use view::{CacheView, JobView, PeerView, Phase, Role, StatusView};

/// Peers tracked at most.
pub const MAX_PEERS: usize = 1024;
/// Elections joined only as a holder (not asked for) at most.
pub const MAX_HOLDER_SLOTS: usize = 256;
/// Candidacies in one announcement at most.
pub const MAX_CANDIDACIES: usize = 64;

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

/// What other tasks ask of the event loop.
enum Command {
    Request(PackageName, u64),
    Job(PackageName, u64, oneshot::Sender<Option<JobView>>),
    Status(oneshot::Sender<StatusView>),
    Metrics(oneshot::Sender<String>),
}

/// A handle on the running daemon.
#[derive(Clone)]
pub struct Daemon {
    tx: mpsc::Sender<Command>,
    key: VerifyingKey,
    cache: Cache,
    client: DpClient,
    peer_id: PeerId,
}

/// Loads (or creates, mode 0600 from the start) the agent's libp2p
/// identity in the cache, so its peer id survives restarts.
fn identity(cache: &Cache) -> anyhow::Result<identity::Keypair> {
    let path = cache.root().join("agent.key");
    if let Ok(b) = std::fs::read(&path) {
        return identity::Keypair::from_protobuf_encoding(&b)
            .with_context(|| format!("{} is not an agent key", path.display()));
    }
    let k = identity::Keypair::generate_ed25519();
    let bytes = k.to_protobuf_encoding().context("encoding the agent key")?;
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
    /// Starts the transport and the event loop (inside a tokio runtime).
    pub fn start(c: DaemonConfig) -> anyhow::Result<Daemon> {
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
        let (tx, rx) = mpsc::channel(256);
        let (job_tx, job_rx) = mpsc::channel(4096);
        let handle = Daemon {
            tx,
            key: c.key,
            cache: c.cache.clone(),
            client: c.client.clone(),
            peer_id: net.local,
        };
        let lp = EventLoop {
            key_fp: ContentHash::of(c.key.as_bytes()),
            name: c.name,
            cache: c.cache,
            key: c.key,
            client: c.client,
            cfg: c.agent,
            timing,
            get_opts: c.get,
            net,
            slots: BTreeMap::new(),
            tags: BTreeMap::new(),
            next_tag: 1,
            peers: BTreeMap::new(),
            links: BTreeSet::new(),
            lan_in: Arc::default(),
            lan_out: Arc::default(),
            bans: 0,
            elections: 0,
            reelections: 0,
            job_tx,
            next_beat: now(),
            beat_due: false,
        };
        tokio::spawn(lp.run(rx, job_rx, incoming));
        Ok(handle)
    }

    /// Starts (or joins) the transfer of `package` v`version`.
    pub async fn request(&self, package: PackageName, version: u64) {
        let _ = self.tx.send(Command::Request(package, version)).await;
    }

    /// One transfer's view.
    pub async fn job(&self, package: &PackageName, version: u64) -> Option<JobView> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Job(package.clone(), version, tx))
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    /// What `peerdelta status` shows.
    pub async fn status(&self) -> anyhow::Result<StatusView> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Status(tx))
            .await
            .map_err(|_| anyhow::anyhow!("the daemon stopped"))?;
        rx.await.map_err(|_| anyhow::anyhow!("the daemon stopped"))
    }

    /// Prometheus metrics.
    pub async fn metrics(&self) -> String {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Metrics(tx)).await.is_err() {
            return String::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Peers heard from (they announced themselves and are compatible).
    pub async fn peers_heard(&self) -> usize {
        self.status().await.map_or(0, |s| s.peers.len())
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The DP client (the control API resolves "newest" with it).
    pub fn client(&self) -> &DpClient {
        &self.client
    }

    /// The DP key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The cache directory.
    pub fn cache_root(&self) -> &std::path::Path {
        self.cache.root()
    }
}

/// One version: its election, and its job once asked for.
struct Slot {
    election: Election<PeerId>,
    job: Option<Job>,
    tag: u64,
    requested: bool,
    view: JobView,
    banned: BTreeMap<PeerId, String>,
    /// Last time a peer announced it or we asked for it.
    interest: Instant,
    /// The signed manifest, for peers asking (a holder's, from the cache).
    signed: Option<Vec<u8>>,
    manifest: Option<peerdelta_protocol::manifest::Manifest>,
}

struct PeerInfo {
    name: String,
    weight: u32,
    heard: Instant,
}

struct EventLoop {
    name: String,
    cache: Cache,
    key: VerifyingKey,
    key_fp: ContentHash,
    client: DpClient,
    cfg: AgentFile,
    timing: Timing,
    get_opts: GetOptions,
    net: Net,
    slots: BTreeMap<(PackageName, u64), Slot>,
    tags: BTreeMap<u64, (PackageName, u64)>,
    next_tag: u64,
    peers: BTreeMap<PeerId, PeerInfo>,
    /// Peers we may ask for data, as last told to the jobs.
    links: BTreeSet<PeerId>,
    lan_in: Arc<AtomicU64>,
    lan_out: Arc<AtomicU64>,
    bans: u64,
    elections: u64,
    reelections: u64,
    job_tx: mpsc::Sender<(u64, JobEvent)>,
    /// When we next announce ourselves even without elections (peers learn
    /// our name and weight, and that we are alive).
    next_beat: Timestamp,
    beat_due: bool,
}

impl EventLoop {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut job_events: mpsc::Receiver<(u64, JobEvent)>,
        mut incoming: mpsc::Receiver<Incoming>,
    ) {
        loop {
            let wake = self
                .next_deadline()
                .map(|t| tokio::time::Instant::now() + Duration::from_millis(t.since(now())));
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => return,
                },
                ev = job_events.recv() => {
                    if let Some((tag, ev)) = ev {
                        self.job_event(tag, ev);
                    }
                }
                inc = incoming.recv() => match inc {
                    Some(i) => self.incoming(i),
                    None => return,
                },
                () = async {
                    match wake {
                        Some(w) => tokio::time::sleep_until(w).await,
                        None => std::future::pending().await,
                    }
                } => self.timeout(),
            }
            self.drive();
        }
    }

    fn next_deadline(&self) -> Option<Timestamp> {
        self.slots
            .values()
            .flat_map(|s| {
                s.election
                    .poll_timeout()
                    .into_iter()
                    .chain(s.job.as_ref().and_then(Job::poll_timeout))
            })
            .chain(std::iter::once(self.next_beat))
            .min()
    }

    /// Time passed: heartbeats (with the peer table refreshed first) and
    /// the jobs' deadlines.
    fn timeout(&mut self) {
        let t = now();
        if self.next_beat <= t {
            self.beat_due = true;
            let hb = self.timing.heartbeat_ms;
            self.next_beat = Timestamp(t.0 - t.0 % hb + hb);
        }
        let beat = self.beat_due
            || self
                .slots
                .values()
                .any(|s| s.election.poll_timeout().is_some_and(|d| d <= t));
        if beat {
            self.refresh_peers(t);
        }
        let free = peerdelta_store::fsutil::free_bytes(self.cache.root()).unwrap_or(0);
        let keys: Vec<(PackageName, u64)> = self.slots.keys().cloned().collect();
        for k in keys {
            let Some(s) = self.slots.get(&k) else {
                continue;
            };
            if s.election.poll_timeout().is_some_and(|d| d <= t) && s.election.rank_due() {
                let (rank, held, total) = self.rank_of(&k.0, k.1, free);
                if let Some(s) = self.slots.get_mut(&k) {
                    s.view.held_bytes = held;
                    s.view.total_bytes = total;
                    s.election.handle_rank(t, rank);
                }
            }
            if let Some(s) = self.slots.get_mut(&k) {
                if s.election.poll_timeout().is_some_and(|d| d <= t) {
                    s.election.handle_timeout(t);
                }
                if let Some(j) = s.job.as_mut()
                    && j.poll_timeout().is_some_and(|d| d <= t)
                {
                    j.handle_timeout(t);
                }
            }
        }
        self.prune();
    }

    /// Our rank for a version, and the target bytes held and in all.
    fn rank_of(&self, package: &PackageName, version: u64, free: u64) -> (Rank, u64, u64) {
        let (held, total) = self
            .slots
            .get(&(package.clone(), version))
            .and_then(|s| s.job.as_ref())
            .map_or((0, 0), Job::held_bytes);
        let versions: Vec<u64> = self.cache.versions_of(package).into_iter().collect();
        let rank = Rank::from_holdings(version, &versions, held, total, self.cfg.weight, free);
        (rank, held, total)
    }

    /// Peers connected and compatible since the last look: elections hear
    /// who is gone, jobs who may be asked.
    fn refresh_peers(&mut self, t: Timestamp) {
        let links = self.net.links();
        let usable: BTreeSet<PeerId> = links
            .iter()
            .filter(|(p, l)| {
                l.incompatible.is_none() && self.peers.get(p).is_none_or(|i| i.weight > 0)
            })
            .map(|(p, _)| *p)
            .collect();
        let gone: Vec<PeerId> = self.links.difference(&usable).copied().collect();
        let new: Vec<PeerId> = usable.difference(&self.links).copied().collect();
        for s in self.slots.values_mut() {
            for (p, _) in s.election.candidates() {
                if p != self.net.local && !links.contains_key(&p) {
                    s.election.handle_gone(t, p);
                }
            }
            if let Some(j) = s.job.as_mut() {
                for p in &gone {
                    j.handle_peer_gone(t, *p);
                }
                for p in &new {
                    if !s.banned.contains_key(p) {
                        j.handle_peer(t, *p);
                    }
                }
            }
        }
        self.links = usable;
    }

    /// Drops what is bounded: silent peers, idle holder elections.
    fn prune(&mut self) {
        let forget = Duration::from_secs(600);
        self.peers.retain(|_, p| p.heard.elapsed() < forget);
        let idle = Duration::from_millis(10 * self.timing.master_timeout_ms.max(1000));
        let drop: Vec<(PackageName, u64)> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.job.is_none()
                    && (!s.requested || s.view.phase == Phase::Done)
                    && s.interest.elapsed() > idle
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in drop {
            if let Some(s) = self.slots.remove(&k) {
                self.tags.remove(&s.tag);
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Request(package, version) => self.request(package, version),
            Command::Job(package, version, reply) => {
                let _ = reply.send(self.slots.get(&(package, version)).map(|s| s.view.clone()));
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Metrics(reply) => {
                let _ = reply.send(self.metrics());
            }
        }
    }

    fn new_slot(&mut self, package: &PackageName, version: u64, requested: bool) -> Slot {
        let t = now();
        // Elections of this daemon beat together: one announcement each heartbeat.
        let aligned = Timestamp(t.0 - t.0 % self.timing.heartbeat_ms);
        let free = peerdelta_store::fsutil::free_bytes(self.cache.root()).unwrap_or(0);
        let (rank, _, _) = self.rank_of(package, version, free);
        let tag = self.next_tag;
        self.next_tag += 1;
        self.tags.insert(tag, (package.clone(), version));
        let (signed, manifest) = self
            .cache
            .manifest_raw(package, version)
            .and_then(|raw| {
                let m = peerdelta_store::manifest_file::open_verified(
                    &raw, &self.key, package, version,
                )?;
                Some((raw, m))
            })
            .unzip();
        Slot {
            election: Election::new(self.net.local, rank, self.timing, aligned),
            job: None,
            tag,
            requested,
            view: JobView {
                package: package.to_string(),
                version,
                role: if requested { Role::Peer } else { Role::Holder },
                master: None,
                phase: if rank.complete {
                    Phase::Done
                } else {
                    Phase::Waiting
                },
                rank,
                elections: 0,
                log: Vec::new(),
                error: None,
                summary: None,
                held_bytes: 0,
                total_bytes: 0,
                banned: Vec::new(),
                stall_fallbacks: 0,
            },
            banned: BTreeMap::new(),
            interest: Instant::now(),
            signed,
            manifest,
        }
    }

    fn request(&mut self, package: PackageName, version: u64) {
        let key = (package.clone(), version);
        if !self.slots.contains_key(&key) {
            let slot = self.new_slot(&package, version, true);
            self.slots.insert(key.clone(), slot);
        }
        let t = now();
        let links: Vec<PeerId> = self.links.iter().copied().collect();
        let Some(s) = self.slots.get_mut(&key) else {
            return;
        };
        s.interest = Instant::now();
        s.requested = true;
        if s.job.is_some() || s.view.phase == Phase::Done {
            return;
        }
        // Asked again after a failure: take part again.
        s.election.handle_withdraw(t, false);
        s.view.phase = Phase::Running;
        s.view.error = None;
        if s.view.role == Role::Holder {
            s.view.role = Role::Peer;
        }
        let mut opts = self.get_opts.clone();
        opts.package = package;
        opts.version = Some(version);
        let io = Io {
            client: self.client.clone(),
            cache: self.cache.clone(),
            key: self.key,
            net: Some(self.net.clone()),
            limits: opts.limits,
            package: opts.package.clone(),
            lan_bytes: Arc::default(),
            reused: Arc::default(),
            lan_total: Some(self.lan_in.clone()),
            progress: Arc::default(),
        };
        let cfg = transfer_config(&opts);
        let mut job = Job::new(
            s.tag,
            io,
            opts,
            s.election.is_master(),
            cfg,
            self.job_tx.clone(),
        );
        for p in links {
            if !s.banned.contains_key(&p) {
                job.handle_peer(t, p);
            }
        }
        s.job = Some(job);
    }

    fn job_event(&mut self, tag: u64, ev: JobEvent) {
        let Some(key) = self.tags.get(&tag).cloned() else {
            return;
        };
        if let Some(j) = self.slots.get_mut(&key).and_then(|s| s.job.as_mut()) {
            j.handle(now(), ev);
        }
    }

    /// Carries out what the machines decided.
    fn drive(&mut self) {
        let mut announce: Vec<(bool, Candidacy)> = Vec::new();
        let keys: Vec<(PackageName, u64)> = self.slots.keys().cloned().collect();
        for k in keys {
            let actions: Vec<Action<PeerId>> = match self.slots.get_mut(&k) {
                Some(s) => std::iter::from_fn(|| s.election.poll_action()).collect(),
                None => continue,
            };
            for a in actions {
                self.election_action(&k, a, &mut announce);
            }
            let outputs = match self.slots.get_mut(&k).and_then(|s| s.job.as_mut()) {
                Some(j) => {
                    let out = j.drive();
                    self.beat_due |= j.take_news_due();
                    out
                }
                None => continue,
            };
            for o in outputs {
                self.job_output(&k, o);
            }
        }
        if !announce.is_empty() || self.beat_due {
            self.beat_due = false;
            self.announce(announce);
        }
    }

    fn election_action(
        &mut self,
        k: &(PackageName, u64),
        a: Action<PeerId>,
        announce: &mut Vec<(bool, Candidacy)>,
    ) {
        let names: BTreeMap<PeerId, String> = self
            .peers
            .iter()
            .map(|(p, i)| (*p, i.name.clone()))
            .collect();
        let me = self.net.local;
        let my_name = self.name.clone();
        let who = |p: &PeerId| {
            if *p == me {
                format!("{my_name} (this agent)")
            } else {
                names.get(p).cloned().unwrap_or_else(|| p.to_string())
            }
        };
        let Some(s) = self.slots.get_mut(k) else {
            return;
        };
        match a {
            Action::Announce { rank, claims } => announce.push((
                s.requested,
                Candidacy {
                    package: k.0.clone(),
                    version: k.1,
                    rank,
                    claims,
                },
            )),
            Action::BecomeMaster => {
                tracing::info!(package = %k.0, version = k.1, "this agent is now master");
                if let Some(j) = s.job.as_mut() {
                    j.handle_role(now(), true);
                }
            }
            Action::StepDown => {
                tracing::info!(package = %k.0, version = k.1, "this agent steps down as master");
                if let Some(j) = s.job.as_mut() {
                    j.handle_role(now(), false);
                }
            }
            // The master's progress restarts our stall clock (a master
            // rebuilding by client-side RDC shows nothing else).
            Action::MasterProgress => {
                if let Some(j) = s.job.as_mut() {
                    j.handle_master_progress(now());
                }
            }
            Action::MasterChanged {
                from,
                to,
                reason,
                candidates,
            } => {
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
                tracing::info!(package = %k.0, version = k.1, "election: {line}");
                if to.is_some() {
                    if s.view.elections > 0 {
                        self.reelections += 1;
                    }
                    self.elections += 1;
                }
                s.view.log.push(line);
                if s.view.log.len() > 50 {
                    s.view.log.remove(0);
                }
                s.view.master = to.as_ref().map(&who);
                s.view.elections = s.election.elections();
            }
        }
        s.view.rank = s.election.rank();
        s.view.role = if s.election.is_master() {
            Role::Master
        } else if s.requested {
            Role::Peer
        } else {
            Role::Holder
        };
    }

    fn job_output(&mut self, k: &(PackageName, u64), o: Output) {
        let t = now();
        let Some(s) = self.slots.get_mut(k) else {
            return;
        };
        match o {
            Output::Ban(peer, reason) => {
                let name = self
                    .peers
                    .get(&peer)
                    .map_or_else(|| peer.to_string(), |i| i.name.clone());
                tracing::warn!(%peer, package = %k.0, version = k.1, "banned {name} for this transfer: {reason}");
                s.banned.insert(peer, reason.to_string());
                s.view.banned.push(format!("{name}: {reason}"));
                s.election.handle_banned(t, peer);
                self.bans += 1;
                if self.get_opts.report {
                    let r = StatusReport {
                        agent: self.get_opts.agent.clone(),
                        package: k.0.clone(),
                        version: k.1,
                        event: StatusEvent::HashFailure {
                            content: ContentHash::EMPTY,
                            source: format!("peer {peer}"),
                            detail: match &reason {
                                BanReason::BadData(d) => d.chars().take(900).collect(),
                                BanReason::Unbacked { .. } => format!("banned: {reason}"),
                            },
                        },
                        time_ms: peerdelta_store::util::now_ms(),
                    };
                    let client = self.client.clone();
                    tokio::spawn(async move { client.report(&r).await });
                }
            }
            Output::Done(summary) => {
                tracing::info!(package = %k.0, version = k.1, wan_bytes = summary.dp_bytes, lan_bytes = summary.lan_bytes, "transfer done");
                if let Some(j) = s.job.take() {
                    s.view.stall_fallbacks = j.stall_fallbacks();
                    if let Some((m, signed)) = j.manifest().cloned() {
                        s.manifest = Some(m);
                        s.signed = Some(signed);
                    }
                }
                s.view.phase = Phase::Done;
                s.view.error = None;
                s.view.summary = Some(summary);
                s.view.held_bytes = s.view.total_bytes.max(s.view.held_bytes);
            }
            Output::Failed(e) => {
                let e = format!("{e:#}");
                tracing::warn!(package = %k.0, version = k.1, "transfer failed: {e}");
                if let Some(j) = s.job.take() {
                    s.view.stall_fallbacks = j.stall_fallbacks();
                }
                s.view.phase = Phase::Failed;
                s.view.error = Some(e);
                // Stop claiming; asking again takes part again.
                s.election.handle_withdraw(t, true);
            }
        }
    }

    /// Sends our candidacies (requested versions first, bounded) to every
    /// compatible peer.
    fn announce(&mut self, mut cands: Vec<(bool, Candidacy)>) {
        cands.sort_by_key(|(requested, _)| !requested);
        cands.truncate(MAX_CANDIDACIES);
        let mut budget = wire::MAX_HAVE_RANGES;
        let mut have = Vec::new();
        for s in self.slots.values_mut() {
            if let Some(j) = s.job.as_mut() {
                have.extend(j.take_news(&mut budget));
            }
        }
        let a = Announce {
            wire_version: wire::WIRE_VERSION,
            agent: self.name.clone(),
            dp_key: self.key_fp,
            weight: self.cfg.weight,
            candidacies: cands.into_iter().map(|c| c.1).collect(),
            have,
        };
        for (peer, link) in self.net.links() {
            if link.incompatible.is_some() {
                continue;
            }
            let (net, a) = (self.net.clone(), a.clone());
            tokio::spawn(async move {
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    net.request(peer, Request::Announce(a)),
                )
                .await;
                match r {
                    Ok(Ok(Response::Incompatible(why))) => {
                        tracing::warn!(%peer, "incompatible peer: {why}");
                        net.set_incompatible(peer, Some(why));
                    }
                    Ok(Err(e)) => tracing::debug!("announce: {e:#}"),
                    _ => {}
                }
            });
        }
    }

    /// A peer's request.
    fn incoming(&mut self, i: Incoming) {
        let peer = i.peer;
        let respond = |net: &Net, ch, r: Response, out: &AtomicU64| {
            if let Response::Bytes(b) = &r {
                out.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            net.respond(ch, r);
        };
        match i.request {
            Request::Announce(a) => {
                let r = self.heard(peer, a);
                self.net.respond(i.channel, r);
            }
            _ if self.cfg.weight == 0 => self.net.respond(
                i.channel,
                Response::Refused("weight 0: this agent does not serve".into()),
            ),
            Request::Manifest { package, version } => {
                let working = self.slots.get(&(package.clone(), version)).and_then(|s| {
                    s.signed
                        .clone()
                        .or_else(|| s.job.as_ref()?.manifest().map(|m| m.1.clone()))
                });
                let (net, cache, key, out) = (
                    self.net.clone(),
                    self.cache.clone(),
                    self.key,
                    self.lan_out.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    let r = match working {
                        Some(b) => Response::Bytes(b),
                        None => serve::manifest(&cache, &key, &package, version),
                    };
                    respond(&net, i.channel, r, &out);
                });
            }
            Request::File { rel } => {
                // As master of a version whose manifest lists it, fetch it
                // from the DP for the subnet (once) if we do not keep it.
                let listed = self
                    .slots
                    .values()
                    .filter(|s| s.election.is_master())
                    .find_map(|s| {
                        let m = s
                            .manifest
                            .as_ref()
                            .or(s.job.as_ref()?.manifest().map(|m| &m.0))?;
                        serve::library_entry(m, &rel)
                    });
                let (net, cache, client, out) = (
                    self.net.clone(),
                    self.cache.clone(),
                    self.client.clone(),
                    self.lan_out.clone(),
                );
                tokio::spawn(async move {
                    let kept = {
                        let (cache, rel) = (cache.clone(), rel.clone());
                        tokio::task::spawn_blocking(move || serve::file(&cache, &rel))
                            .await
                            .ok()
                            .flatten()
                    };
                    let r = match (kept, listed) {
                        (Some(b), _) => Response::Bytes(b),
                        (None, Some((hash, len))) => {
                            match crate::get::fetch_library_file(&client, &cache, &rel, hash, len)
                                .await
                            {
                                Ok(b) => Response::Bytes(b),
                                Err(e) => {
                                    tracing::warn!("fetching {rel} for peers: {e}");
                                    Response::NotFound
                                }
                            }
                        }
                        (None, None) => Response::NotFound,
                    };
                    respond(&net, i.channel, r, &out);
                });
            }
            Request::Has(list) => {
                let (net, cache, out) =
                    (self.net.clone(), self.cache.clone(), self.lan_out.clone());
                tokio::task::spawn_blocking(move || {
                    respond(&net, i.channel, serve::has(&cache, &list), &out);
                });
            }
            Request::Coverage(h) => {
                let (net, cache, out) =
                    (self.net.clone(), self.cache.clone(), self.lan_out.clone());
                tokio::task::spawn_blocking(move || {
                    respond(&net, i.channel, serve::coverage(&cache, &h), &out);
                });
            }
            Request::Range {
                content,
                offset,
                len,
            } => {
                // This request holds a slot already: the others are one fewer.
                let (all, of_peer) = self.net.uploads(&peer);
                let slots = self.cfg.upload_slots;
                if peerdelta_protocol::swarm::busy(
                    all.saturating_sub(1),
                    of_peer.saturating_sub(1),
                    slots,
                ) {
                    self.net.respond(i.channel, Response::Busy);
                    return;
                }
                let (net, cache, out) =
                    (self.net.clone(), self.cache.clone(), self.lan_out.clone());
                tokio::task::spawn_blocking(move || {
                    respond(
                        &net,
                        i.channel,
                        serve::range(&cache, &content, offset, len),
                        &out,
                    );
                });
            }
        }
    }

    /// A peer's announcement: who it is, and its candidacies.
    fn heard(&mut self, peer: PeerId, a: Announce) -> Response {
        let why = if a.wire_version != wire::WIRE_VERSION {
            Some(format!(
                "speaks wire version {}, this agent {}",
                a.wire_version,
                wire::WIRE_VERSION
            ))
        } else if a.dp_key != self.key_fp {
            Some("pins another DP key (another deployment)".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            let first = self
                .net
                .links()
                .get(&peer)
                .is_some_and(|l| l.incompatible.is_none());
            if first {
                tracing::warn!(%peer, agent = %a.agent, "incompatible peer: {why}");
            }
            self.net.set_incompatible(peer, Some(why.clone()));
            return Response::Incompatible(why);
        }
        if self.peers.len() < MAX_PEERS || self.peers.contains_key(&peer) {
            self.peers.insert(
                peer,
                PeerInfo {
                    name: a.agent.chars().take(128).collect(),
                    weight: a.weight,
                    heard: Instant::now(),
                },
            );
        }
        let t = now();
        for c in a.candidacies.into_iter().take(MAX_CANDIDACIES) {
            let key = (c.package.clone(), c.version);
            if !self.slots.contains_key(&key) {
                // We take part only if we hold the version: then we win.
                let holders = self.slots.values().filter(|s| !s.requested).count();
                if holders >= MAX_HOLDER_SLOTS
                    || !self.cache.versions_of(&c.package).contains(&c.version)
                {
                    continue;
                }
                let slot = self.new_slot(&c.package, c.version, false);
                self.slots.insert(key.clone(), slot);
            }
            if let Some(s) = self.slots.get_mut(&key)
                && !s.banned.contains_key(&peer)
            {
                s.interest = Instant::now();
                s.election.handle_heard(t, peer, c.rank, c.claims);
            }
        }
        let mut budget = wire::MAX_HAVE_RANGES;
        for h in &a.have {
            if budget < h.ranges.len() {
                break;
            }
            budget -= h.ranges.len();
            for s in self.slots.values_mut() {
                if s.banned.contains_key(&peer) {
                    continue;
                }
                if let Some(j) = s.job.as_mut() {
                    j.handle_have(t, peer, h);
                }
            }
        }
        Response::Ok
    }

    fn status(&self) -> StatusView {
        let links = self.net.links();
        let mut peers: Vec<PeerView> = links
            .iter()
            .map(|(p, l)| {
                let info = self.peers.get(p);
                PeerView {
                    id: p.to_string(),
                    name: info.map_or_else(String::new, |i| i.name.clone()),
                    addrs: l.addrs.iter().map(|a| a.to_string()).collect(),
                    weight: info.map_or(0, |i| i.weight),
                    incompatible: l.incompatible.clone(),
                    last_heard_ms: info.map(|i| i.heard.elapsed().as_millis() as u64),
                }
            })
            .filter(|p| !p.name.is_empty() || p.incompatible.is_some())
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let jobs = self
            .slots
            .values()
            .map(|s| {
                let mut v = s.view.clone();
                if let Some(j) = &s.job {
                    let (h, t) = j.held_bytes();
                    v.held_bytes = h;
                    v.total_bytes = t;
                    v.stall_fallbacks = j.stall_fallbacks();
                }
                v
            })
            .collect();
        let versions = self
            .cache
            .versions()
            .unwrap_or_default()
            .into_iter()
            .map(|(p, v)| format!("{p} v{v}"))
            .collect();
        StatusView {
            agent: self.name.clone(),
            peer_id: self.net.local.to_string(),
            listening: self.net.listening().iter().map(|a| a.to_string()).collect(),
            peers,
            jobs,
            cache: CacheView {
                root: self.cache.root().display().to_string(),
                versions,
            },
            control_token_file: self
                .cache
                .root()
                .join(control::TOKEN_FILE)
                .display()
                .to_string(),
            dp_key: peerdelta_protocol::hex::encode(self.key.as_bytes()),
            wan_bytes: self.client.wan_bytes(),
            lan_bytes_in: self.lan_in.load(Ordering::Relaxed),
            lan_bytes_out: self.lan_out.load(Ordering::Relaxed),
            elections: self.elections,
            reelections: self.reelections,
            bans: self.bans,
        }
    }

    fn metrics(&self) -> String {
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
            self.lan_in.load(Ordering::Relaxed),
        );
        m(
            "peerdelta_agent_lan_bytes_out_total",
            "Bytes sent to peers.",
            "counter",
            self.lan_out.load(Ordering::Relaxed),
        );
        m(
            "peerdelta_agent_elections_total",
            "Masters elected (first elections and re-elections).",
            "counter",
            self.elections,
        );
        m(
            "peerdelta_agent_reelections_total",
            "Masters elected after a previous one.",
            "counter",
            self.reelections,
        );
        m(
            "peerdelta_agent_bans_total",
            "Peers banned (bad data, or claims not backed).",
            "counter",
            self.bans,
        );
        m(
            "peerdelta_agent_stall_fallbacks_total",
            "Times the subnet stalled and this agent used the DP itself.",
            "counter",
            self.slots
                .values()
                .map(|s| {
                    s.job
                        .as_ref()
                        .map_or(s.view.stall_fallbacks, Job::stall_fallbacks)
                })
                .sum(),
        );
        m(
            "peerdelta_agent_peers",
            "Connected peers.",
            "gauge",
            self.net.links().len() as u64,
        );
        s
    }
}
