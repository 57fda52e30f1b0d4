//! A rogue subnet peer for tests, written apart from the agent: it speaks
//! the wire protocol (`peerdelta_protocol::wire` over libp2p, as agents do)
//! and misbehaves in one way, chosen on the command line:
//!
//! - `silent-master`: announces the best rank and claims the master role for
//!   every election it hears of, and never answers a request for data;
//! - `not-found`: announces the best rank (without claiming), says it holds
//!   every content whole (`Has`, `Coverage`, news), answers `NotFound`;
//! - `busy`: the same claims, answers `Busy` forever;
//! - `slow-reader`: asks every peer that announces holdings for ranges, as
//!   many at once as a holder lets one peer have, and reads the answers
//!   slowly (a few KiB a second), so they hold upload slots;
//! - `flapping`: as `silent-master`, but disconnects from everyone and comes
//!   back every second.
//!
//! `peerdelta-rogue MODE --listen MULTIADDR --peer MULTIADDR...`; it runs
//! until killed. What it learns (the deployment's DP key, the elections, the
//! contents) it takes from what the agents tell it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport};
use libp2p::core::upgrade::Version;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identity, noise, tcp, yamux};
use peerdelta_protocol::election::Rank;
use peerdelta_protocol::hash::ContentHash;
use peerdelta_protocol::manifest::PackageName;
use peerdelta_protocol::wire::{self, Announce, Candidacy, Have, MAX_RANGE, Request, Response};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    SilentMaster,
    NotFound,
    Busy,
    SlowReader,
    Flapping,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "silent-master" => Mode::SilentMaster,
            "not-found" => Mode::NotFound,
            "busy" => Mode::Busy,
            "slow-reader" => Mode::SlowReader,
            "flapping" => Mode::Flapping,
            _ => return None,
        })
    }

    /// What it announces: its rank, and whether it claims the role.
    fn rank(self) -> (Rank, bool) {
        let best = Rank {
            complete: true,
            held_permille: 1000,
            has_base: true,
            weight: u32::MAX,
            free_mib: u64::MAX,
        };
        match self {
            Mode::SilentMaster | Mode::Flapping => (best, true),
            Mode::NotFound | Mode::Busy => (best, false),
            Mode::SlowReader => (Rank::from_holdings(7, &[], 0, 0, 1, 1 << 30), false),
        }
    }

    /// Whether it claims to hold every content whole.
    fn claims_all(self) -> bool {
        matches!(self, Mode::NotFound | Mode::Busy)
    }
}

/// Bytes read per pause by a slow reader.
const SLOW_CHUNK: usize = 4 << 10;
/// The pause: 4 KiB every 50 ms, 80 KiB/s.
const SLOW_PAUSE: Duration = Duration::from_millis(50);
/// A claim of "everything": far past any content's end.
const EVERYTHING: (u64, u64) = (0, 1 << 50);
/// Requests it holds unanswered, at most (the oldest are let go).
const MAX_HELD: usize = 4096;
/// Range requests a slow reader keeps open at one holder: what a holder
/// lets one peer have (half of the default six upload slots).
const SLOW_PER_PEER: usize = (peerdelta_protocol::swarm::DEFAULT_UPLOAD_SLOTS / 2) as usize;

/// The agents' codec (postcard, one message per stream, size-limited);
/// a slow reader reads answers a few KiB at a time.
#[derive(Debug, Clone, Copy)]
struct Codec {
    slow: bool,
}

async fn read_limited<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
    slow: bool,
) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if !slow {
        io.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    } else {
        let mut chunk = vec![0u8; SLOW_CHUNK];
        loop {
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            if buf.len() > limit {
                break;
            }
            tokio::time::sleep(SLOW_PAUSE).await;
        }
    }
    if buf.len() > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "over the limit"));
    }
    Ok(buf)
}

fn invalid(e: wire::WireError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

#[async_trait::async_trait]
impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_limited(io, wire::MAX_REQUEST, false).await?;
        wire::decode_request(&buf).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_limited(io, wire::MAX_RESPONSE, self.slow).await?;
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

fn transport(key: &identity::Keypair) -> Result<Boxed<(PeerId, StreamMuxerBox)>, String> {
    let noise = noise::Config::new(key).map_err(|e| format!("noise: {e}"))?;
    Ok(
        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .map(|(p, m), _| (p, StreamMuxerBox::new(m)))
            .boxed(),
    )
}

/// A range a peer announced holding: (content, offset, len).
type Held = (ContentHash, u64, u64);

/// What the rogue learned from the agents.
#[derive(Default)]
struct Learned {
    /// The deployment's DP key (announcing another makes it incompatible).
    dp_key: Option<ContentHash>,
    /// Elections heard of: (package, version).
    elections: BTreeSet<(PackageName, u64)>,
    /// Contents heard of, and per peer the ranges it announced holding.
    contents: BTreeSet<ContentHash>,
    holdings: BTreeMap<PeerId, Vec<Held>>,
}

struct Rogue {
    mode: Mode,
    swarm: Swarm<request_response::Behaviour<Codec>>,
    peers: Vec<Multiaddr>,
    learned: Learned,
    /// Requests it never answers (held so their streams stay open).
    held: VecDeque<ResponseChannel<Response>>,
    /// Slow reads open per peer.
    reading: HashMap<PeerId, usize>,
    /// Slow reads in flight: which peer.
    reads: HashMap<request_response::OutboundRequestId, PeerId>,
    present: bool,
    connected: BTreeSet<PeerId>,
}

impl Rogue {
    fn announce(&mut self) {
        let Some(dp_key) = self.learned.dp_key else {
            return;
        };
        let (rank, claims) = self.mode.rank();
        let candidacies = self
            .learned
            .elections
            .iter()
            .take(wire::MAX_HAS)
            .map(|(package, version)| Candidacy {
                package: package.clone(),
                version: *version,
                rank,
                claims,
            })
            .collect();
        let have = if self.mode.claims_all() {
            self.learned
                .contents
                .iter()
                .take(wire::MAX_HAVE_RANGES)
                .map(|c| Have {
                    content: *c,
                    ranges: vec![EVERYTHING],
                })
                .collect()
        } else {
            Vec::new()
        };
        let a = Announce {
            wire_version: wire::WIRE_VERSION,
            agent: format!("rogue-{:?}", self.mode),
            dp_key,
            weight: rank.weight,
            candidacies,
            have,
        };
        let peers: Vec<PeerId> = self.connected.iter().copied().collect();
        for p in peers {
            self.swarm
                .behaviour_mut()
                .send_request(&p, Request::Announce(a.clone()));
        }
    }

    fn heard(&mut self, peer: PeerId, a: &Announce) {
        if a.wire_version != wire::WIRE_VERSION {
            return;
        }
        self.learned.dp_key = Some(a.dp_key);
        for c in a.candidacies.iter().take(64) {
            if self.learned.elections.len() < 256 {
                self.learned
                    .elections
                    .insert((c.package.clone(), c.version));
            }
        }
        for h in a.have.iter().take(64) {
            if self.learned.contents.len() < 4096 {
                self.learned.contents.insert(h.content);
            }
            let held = self.learned.holdings.entry(peer).or_default();
            for &(o, l) in h.ranges.iter().take(64) {
                if held.len() < 4096 {
                    held.push((h.content, o, l));
                }
            }
        }
    }

    /// Never answered: the stream stays open until the asker gives up.
    fn hold(&mut self, ch: ResponseChannel<Response>) {
        if self.held.len() >= MAX_HELD {
            self.held.pop_front();
        }
        self.held.push_back(ch);
    }

    fn request(&mut self, peer: PeerId, r: Request, ch: ResponseChannel<Response>) {
        if let Request::Announce(a) = &r {
            self.heard(peer, a);
            let _ = self.swarm.behaviour_mut().send_response(ch, Response::Ok);
            return;
        }
        let named: &[ContentHash] = match &r {
            Request::Has(v) => v,
            Request::Coverage(c) | Request::Range { content: c, .. } => std::slice::from_ref(c),
            _ => &[],
        };
        for c in named.iter().take(64) {
            if self.learned.contents.len() < 4096 {
                self.learned.contents.insert(*c);
            }
        }
        let answer = match (self.mode, r) {
            (Mode::SilentMaster | Mode::Flapping, _) => return self.hold(ch),
            (Mode::NotFound | Mode::Busy, Request::Has(v)) => Response::Has(vec![true; v.len()]),
            (Mode::NotFound | Mode::Busy, Request::Coverage(_)) => Response::Ranges {
                complete: true,
                ranges: vec![EVERYTHING],
            },
            (Mode::Busy, _) => Response::Busy,
            (Mode::SlowReader, Request::Has(v)) => Response::Has(vec![false; v.len()]),
            (Mode::SlowReader, Request::Coverage(_)) => Response::Ranges {
                complete: false,
                ranges: Vec::new(),
            },
            (Mode::NotFound | Mode::SlowReader, _) => Response::NotFound,
        };
        let _ = self.swarm.behaviour_mut().send_response(ch, answer);
    }

    /// A slow reader keeps its reads open at every holder.
    fn read_slowly(&mut self) {
        if self.mode != Mode::SlowReader {
            return;
        }
        let holders: Vec<(PeerId, Vec<Held>)> = self
            .learned
            .holdings
            .iter()
            .filter(|(p, _)| self.connected.contains(*p))
            .map(|(p, h)| (*p, h.clone()))
            .collect();
        for (p, held) in holders {
            let mut k = 0;
            while self.reading.get(&p).copied().unwrap_or(0) < SLOW_PER_PEER {
                let Some(&(content, offset, len)) = held.get(k % held.len().max(1)) else {
                    break;
                };
                k += 1;
                let req = Request::Range {
                    content,
                    offset,
                    len: len.min(MAX_RANGE),
                };
                let id = self.swarm.behaviour_mut().send_request(&p, req);
                self.reads.insert(id, p);
                *self.reading.entry(p).or_default() += 1;
            }
        }
    }

    fn read_done(&mut self, id: request_response::OutboundRequestId) {
        if let Some(p) = self.reads.remove(&id)
            && let Some(n) = self.reading.get_mut(&p)
        {
            *n = n.saturating_sub(1);
        }
    }

    fn dial_all(&mut self) {
        for a in self.peers.clone() {
            let _ = self.swarm.dial(a);
        }
    }

    async fn run(mut self) {
        let mut beat = tokio::time::interval(Duration::from_millis(200));
        let mut flap = tokio::time::interval(Duration::from_secs(1));
        let mut redial = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    if self.present {
                        self.announce();
                        self.read_slowly();
                    }
                }
                _ = redial.tick() => {
                    if self.present {
                        self.dial_all();
                    }
                }
                _ = flap.tick(), if self.mode == Mode::Flapping => {
                    self.present = !self.present;
                    if self.present {
                        self.dial_all();
                    } else {
                        self.held.clear();
                        for p in self.connected.clone() {
                            let _ = self.swarm.disconnect_peer_id(p);
                        }
                    }
                }
                ev = self.swarm.select_next_some() => match ev {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                        if self.present {
                            self.connected.insert(peer_id);
                        } else {
                            let _ = self.swarm.disconnect_peer_id(peer_id);
                        }
                    }
                    SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                        self.connected.remove(&peer_id);
                        self.reading.remove(&peer_id);
                    }
                    SwarmEvent::Behaviour(request_response::Event::Message { peer, message, .. }) => {
                        match message {
                            request_response::Message::Request { request, channel, .. } => {
                                if self.present {
                                    self.request(peer, request, channel);
                                }
                            }
                            request_response::Message::Response { request_id, .. } => {
                                self.read_done(request_id);
                            }
                        }
                    }
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure { request_id, .. }) => {
                        self.read_done(request_id);
                    }
                    _ => {}
                }
            }
        }
    }
}

fn usage() -> String {
    "usage: peerdelta-rogue silent-master|not-found|busy|slow-reader|flapping \
     --listen MULTIADDR [--peer MULTIADDR]..."
        .to_string()
}

fn parse() -> Result<(Mode, Vec<Multiaddr>, Vec<Multiaddr>), String> {
    let mut args = std::env::args().skip(1);
    let mode = args
        .next()
        .as_deref()
        .and_then(Mode::parse)
        .ok_or_else(usage)?;
    let (mut listen, mut peers) = (Vec::new(), Vec::new());
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(usage)?;
        let addr: Multiaddr = value.parse().map_err(|e| format!("{value}: {e}"))?;
        match flag.as_str() {
            "--listen" => listen.push(addr),
            "--peer" => peers.push(addr),
            _ => return Err(usage()),
        }
    }
    Ok((mode, listen, peers))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let (mode, listen, peers) = match parse() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let key = identity::Keypair::generate_ed25519();
    let local = key.public().to_peer_id();
    let transport = match transport(&key) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let behaviour = request_response::Behaviour::with_codec(
        Codec {
            slow: mode == Mode::SlowReader,
        },
        [(StreamProtocol::new(wire::PROTOCOL), ProtocolSupport::Full)],
        // A slow read of 4 MiB at 80 KiB/s takes about a minute.
        request_response::Config::default().with_request_timeout(Duration::from_secs(600)),
    );
    let mut swarm = Swarm::new(
        transport,
        behaviour,
        local,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(3600)),
    );
    for a in &listen {
        if let Err(e) = swarm.listen_on(a.clone()) {
            eprintln!("listening on {a}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    eprintln!("rogue {mode:?} {local}");
    let rogue = Rogue {
        mode,
        swarm,
        peers,
        learned: Learned::default(),
        held: VecDeque::new(),
        reading: HashMap::new(),
        reads: HashMap::new(),
        present: true,
        connected: BTreeSet::new(),
    };
    rogue.run().await;
    std::process::ExitCode::SUCCESS
}
