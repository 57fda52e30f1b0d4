//! The LAN transport: libp2p over TCP with noise and yamux (and an optional
//! pre-shared subnet key), mDNS discovery, a static peer list, and one
//! request-response protocol carrying [`peerdelta_protocol::wire`] messages.
//!
//! The swarm runs in one task; the rest of the agent talks to it through a
//! [`Net`] handle (send a request, await the answer) and receives incoming
//! requests on a channel, answering through the handle.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport};
use libp2p::core::upgrade::Version;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identity, mdns, noise, pnet, tcp, yamux};
use peerdelta_protocol::wire::{self, Request, Response};
use tokio::sync::{mpsc, oneshot};

/// Postcard messages, one per stream, size-limited both ways.
#[derive(Debug, Clone, Copy, Default)]
pub struct WireCodec;

async fn read_limited<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message over the limit of {limit} bytes"),
        ));
    }
    Ok(buf)
}

fn invalid(e: wire::WireError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

#[async_trait::async_trait]
impl request_response::Codec for WireCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_limited(io, wire::MAX_REQUEST).await?;
        wire::decode_request(&buf).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_limited(io, wire::MAX_RESPONSE).await?;
        wire::decode_response(&buf).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&wire::encode_request(&r)).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&wire::encode_response(&r)).await?;
        io.close().await
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    rr: request_response::Behaviour<WireCodec>,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// How the transport is set up.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial (and redial) whatever discovery finds.
    pub peers: Vec<Multiaddr>,
    /// Discover peers with mDNS.
    pub mdns: bool,
    /// Subnet pre-shared key: only agents holding it can connect.
    pub psk: Option<[u8; 32]>,
    /// Request timeout.
    pub request_timeout: Duration,
}

/// A connected peer, as the transport sees it.
#[derive(Debug, Clone, Default)]
pub struct PeerLink {
    /// Its addresses.
    pub addrs: Vec<Multiaddr>,
    /// Open connections.
    pub connections: u32,
    /// Why it cannot work with us, if it cannot.
    pub incompatible: Option<String>,
}

/// An incoming request, to be answered with [`Net::respond`].
pub struct Incoming {
    /// From whom.
    pub peer: PeerId,
    /// What.
    pub request: Request,
    /// Where the answer goes.
    pub channel: ResponseChannel<Response>,
}

enum Cmd {
    Send(PeerId, Request, oneshot::Sender<Result<Response, String>>),
    Respond(ResponseChannel<Response>, Response),
}

/// Handle on the running transport.
#[derive(Clone)]
pub struct Net {
    /// Our peer id.
    pub local: PeerId,
    tx: mpsc::UnboundedSender<Cmd>,
    links: Arc<Mutex<BTreeMap<PeerId, PeerLink>>>,
    listening: Arc<Mutex<Vec<Multiaddr>>>,
    uploads: Arc<Mutex<Uploads>>,
}

/// Range requests being answered (upload slots in use), per peer. A slot is
/// free again when its answer was sent, failed, or, for a reader too slow
/// to take it, after [`SLOT_HOLD`]: a slow reader cannot hold slots forever.
#[derive(Debug, Default)]
struct Uploads {
    by_request: HashMap<request_response::InboundRequestId, (PeerId, std::time::Instant)>,
    by_peer: BTreeMap<PeerId, u32>,
}

/// Longest an answer holds an upload slot.
const SLOT_HOLD: Duration = Duration::from_secs(30);

impl Uploads {
    fn take(&mut self, id: request_response::InboundRequestId, peer: PeerId) {
        self.by_request
            .insert(id, (peer, std::time::Instant::now()));
        *self.by_peer.entry(peer).or_default() += 1;
    }

    fn free(&mut self, id: request_response::InboundRequestId) {
        if let Some((peer, _)) = self.by_request.remove(&id)
            && let Some(n) = self.by_peer.get_mut(&peer)
        {
            *n -= 1;
            if *n == 0 {
                self.by_peer.remove(&peer);
            }
        }
    }

    fn expire(&mut self) {
        let old: Vec<_> = self
            .by_request
            .iter()
            .filter(|(_, (_, t))| t.elapsed() >= SLOT_HOLD)
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            self.free(id);
        }
    }
}

impl Net {
    /// Upload slots in use: in all, and by `peer` (range requests received
    /// and not yet answered to the end).
    pub fn uploads(&self, peer: &PeerId) -> (u32, u32) {
        let u = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        (
            u.by_request.len() as u32,
            u.by_peer.get(peer).copied().unwrap_or(0),
        )
    }

    /// Sends a request and waits for the answer.
    pub async fn request(&self, peer: PeerId, r: Request) -> anyhow::Result<Response> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Send(peer, r, tx))
            .map_err(|_| anyhow::anyhow!("the network task stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the network task stopped"))?
            .map_err(|e| anyhow::anyhow!("peer {peer}: {e}"))
    }

    /// Answers an incoming request.
    pub fn respond(&self, channel: ResponseChannel<Response>, r: Response) {
        let _ = self.tx.send(Cmd::Respond(channel, r));
    }

    /// Connected peers.
    pub fn links(&self) -> BTreeMap<PeerId, PeerLink> {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Marks a peer incompatible (or compatible again with `None`).
    pub fn set_incompatible(&self, peer: PeerId, why: Option<String>) {
        let mut l = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(link) = l.get_mut(&peer) {
            link.incompatible = why;
        }
    }

    /// Addresses we listen on.
    pub fn listening(&self) -> Vec<Multiaddr> {
        self.listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn transport(
    key: &identity::Keypair,
    psk: Option<[u8; 32]>,
) -> anyhow::Result<Boxed<(PeerId, StreamMuxerBox)>> {
    let noise = noise::Config::new(key).context("setting up noise")?;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    Ok(match psk {
        Some(psk) => {
            let psk = pnet::PreSharedKey::new(psk);
            tcp.and_then(move |socket, _| pnet::PnetConfig::new(psk).handshake(socket))
                .upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .map(|(p, m), _| (p, StreamMuxerBox::new(m)))
                .boxed()
        }
        None => tcp
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .map(|(p, m), _| (p, StreamMuxerBox::new(m)))
            .boxed(),
    })
}

/// Whether a connection error is only "nobody listens there" (a peer that
/// is down), not a failed handshake.
fn refused(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("connection refused") || e.contains("os error 111")
}

/// What to suspect when a handshake fails.
fn key_hint(has_psk: bool) -> &'static str {
    if has_psk {
        "the handshake failed: does the other side hold the same subnet key (agent.psk)? \
         Agents without it, or with another, cannot connect"
    } else {
        "the handshake failed: the other side may use a subnet key (agent.psk) this agent \
         does not have, or not be a peerdelta agent"
    }
}

/// Keys (addresses, errors) already logged in the last minute; bounded.
#[derive(Default)]
struct Warned(HashMap<String, std::time::Instant>);

impl Warned {
    /// Whether `key` should be logged now (not logged in the last minute).
    fn first(&mut self, key: &str) -> bool {
        let now = std::time::Instant::now();
        if self.0.len() > 1024 {
            self.0
                .retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
        }
        match self.0.get(key) {
            Some(t) if now.duration_since(*t) < Duration::from_secs(60) => false,
            _ => {
                self.0.insert(key.to_owned(), now);
                self.0.len() <= 4096
            }
        }
    }
}

/// Starts the transport; incoming requests arrive on the returned channel.
pub fn start(
    key: identity::Keypair,
    cfg: NetConfig,
) -> anyhow::Result<(Net, mpsc::Receiver<Incoming>)> {
    let local = key.public().to_peer_id();
    let transport = transport(&key, cfg.psk)?;
    let mdns = if cfg.mdns {
        let c = mdns::Config {
            query_interval: Duration::from_secs(5),
            ttl: Duration::from_secs(60),
            ..Default::default()
        };
        Some(mdns::tokio::Behaviour::new(c, local).context("starting mDNS")?)
    } else {
        None
    };
    let behaviour = Behaviour {
        rr: request_response::Behaviour::with_codec(
            WireCodec,
            [(StreamProtocol::new(wire::PROTOCOL), ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(cfg.request_timeout),
        ),
        mdns: Toggle::from(mdns),
    };
    let mut swarm = libp2p::Swarm::new(
        transport,
        behaviour,
        local,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(3600)),
    );
    for addr in &cfg.listen {
        swarm
            .listen_on(addr.clone())
            .with_context(|| format!("listening on {addr}"))?;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Cmd>();
    let (in_tx, in_rx) = mpsc::channel::<Incoming>(1024);
    let net = Net {
        local,
        tx,
        links: Arc::default(),
        listening: Arc::default(),
        uploads: Arc::default(),
    };
    let handle = net.clone();
    let statics = cfg.peers.clone();
    let has_psk = cfg.psk.is_some();
    if let Some(k) = cfg.psk {
        tracing::info!(
            fingerprint = %pnet::PreSharedKey::new(k).fingerprint(),
            "subnet key set (agent.psk): only agents holding it can connect"
        );
    }
    tokio::spawn(async move {
        let mut pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, String>>> =
            HashMap::new();
        // Static peers we reached, by address: redial those not connected.
        let mut static_peer: HashMap<Multiaddr, PeerId> = HashMap::new();
        // Peers mDNS found (until their records expire): mDNS reports a peer
        // once, so one failed dial must not lose it; redialed like statics.
        let mut found_by_mdns: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        let mut redial = tokio::time::interval(Duration::from_secs(3));
        // Failed handshakes are logged once per address and minute (peers
        // redial every few seconds).
        let mut warned = Warned::default();
        let uploads = handle.uploads.clone();
        let slot_freed = |id| uploads.lock().unwrap_or_else(|e| e.into_inner()).free(id);
        loop {
            tokio::select! {
                _ = redial.tick() => {
                    handle.uploads.lock().unwrap_or_else(|e| e.into_inner()).expire();
                    let links = handle.links();
                    for a in &statics {
                        let connected = static_peer.get(a).is_some_and(|p| links.contains_key(p));
                        if !connected && let Err(e) = swarm.dial(a.clone()) {
                            tracing::debug!("dialing {a}: {e}");
                        }
                    }
                    for (peer, addrs) in &found_by_mdns {
                        if !links.contains_key(peer) {
                            for a in addrs {
                                if let Err(e) = swarm.dial(a.clone()) {
                                    tracing::debug!("dialing {a}: {e}");
                                }
                            }
                        }
                    }
                }
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Cmd::Send(peer, r, reply)) => {
                        let id = swarm.behaviour_mut().rr.send_request(&peer, r);
                        pending.insert(id, reply);
                    }
                    Some(Cmd::Respond(ch, r)) => {
                        let _ = swarm.behaviour_mut().rr.send_response(ch, r);
                    }
                },
                ev = swarm.select_next_some() => match ev {
                    SwarmEvent::NewListenAddr { address, .. } => {
                        tracing::info!("listening on {address}/p2p/{local}");
                        handle.listening.lock().unwrap_or_else(|e| e.into_inner()).push(address);
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                        let addr = endpoint.get_remote_address().clone();
                        if endpoint.is_dialer() {
                            let plain: Multiaddr = addr
                                .iter()
                                .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                                .collect();
                            static_peer.insert(plain, peer_id);
                        }
                        let mut l = handle.links.lock().unwrap_or_else(|e| e.into_inner());
                        let link = l.entry(peer_id).or_default();
                        link.connections += 1;
                        if !link.addrs.contains(&addr) {
                            link.addrs.push(addr);
                        }
                        tracing::debug!(peer = %peer_id, "connected");
                    }
                    SwarmEvent::ConnectionClosed { peer_id, num_established, .. } => {
                        if num_established == 0 {
                            handle.links.lock().unwrap_or_else(|e| e.into_inner()).remove(&peer_id);
                            tracing::debug!(peer = %peer_id, "disconnected");
                        } else if let Some(link) = handle.links.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&peer_id) {
                            link.connections = num_established;
                        }
                    }
                    SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                        let text = error.to_string();
                        if refused(&text) {
                            tracing::debug!(?peer_id, "connection failed: {text}");
                        } else if warned.first(&text) {
                            tracing::warn!(?peer_id, "could not connect: {text}; {}", key_hint(has_psk));
                        }
                    }
                    SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                        let who = send_back_addr.to_string();
                        if warned.first(&who) {
                            tracing::warn!("incoming connection from {who} failed: {error}; {}", key_hint(has_psk));
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                        let links = handle.links();
                        for (peer, addr) in found {
                            if peer == local {
                                continue;
                            }
                            let known = found_by_mdns.entry(peer).or_default();
                            if !known.contains(&addr) {
                                known.push(addr.clone());
                            }
                            if !links.contains_key(&peer) {
                                tracing::info!(%peer, %addr, "discovered by mDNS");
                                let _ = swarm.dial(addr);
                            }
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(gone))) => {
                        for (peer, addr) in gone {
                            if let Some(known) = found_by_mdns.get_mut(&peer) {
                                known.retain(|a| *a != addr);
                                if known.is_empty() {
                                    found_by_mdns.remove(&peer);
                                }
                            }
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Rr(e)) => match e {
                        request_response::Event::Message { peer, message, .. } => match message {
                            request_response::Message::Request { request, channel, request_id } => {
                                if matches!(request, Request::Range { .. }) {
                                    handle.uploads.lock().unwrap_or_else(|e| e.into_inner()).take(request_id, peer);
                                }
                                // Bounded: when the daemon is that far behind, say so.
                                if let Err(e) = in_tx.try_send(Incoming { peer, request, channel }) {
                                    let i = e.into_inner();
                                    let _ = swarm.behaviour_mut().rr.send_response(
                                        i.channel,
                                        Response::Refused("overloaded; ask again later".into()),
                                    );
                                }
                            }
                            request_response::Message::Response { request_id, response } => {
                                if let Some(tx) = pending.remove(&request_id) {
                                    let _ = tx.send(Ok(response));
                                }
                            }
                        },
                        request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                            let msg = error.to_string();
                            if matches!(error, request_response::OutboundFailure::UnsupportedProtocols) {
                                let why = format!("does not speak {}", wire::PROTOCOL);
                                tracing::warn!(%peer, "incompatible peer: {why}");
                                handle.set_incompatible(peer, Some(why));
                            }
                            if let Some(tx) = pending.remove(&request_id) {
                                let _ = tx.send(Err(msg));
                            }
                        }
                        request_response::Event::InboundFailure { peer, error, request_id, .. } => {
                            tracing::debug!(%peer, "inbound request failed: {error}");
                            slot_freed(request_id);
                        }
                        request_response::Event::ResponseSent { request_id, .. } => {
                            slot_freed(request_id);
                        }
                    },
                    _ => {}
                }
            }
        }
    });
    Ok((net, in_rx))
}
