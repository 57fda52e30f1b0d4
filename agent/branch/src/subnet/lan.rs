//! What one transfer (one package version) needs from the subnet: the
//! role the election gave us, and verified-by-the-caller data from peers
//! (the signed manifest, needs lists, content byte ranges). `get` uses it to
//! take from the LAN everything the subnet has before it asks the DP, and,
//! when we are not master, never to ask the DP at all.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libp2p::PeerId;
use peerdelta_protocol::ContentHash;
use peerdelta_protocol::manifest::PackageName;
use peerdelta_protocol::wire::{self, Request, Response};
use tokio::sync::watch;

use super::net::Net;

/// A peer's ranges, checked (no overflow) and merged: the scheduler
/// searches them, and a peer's answer is not trusted to be sorted.
fn wire_ranges(r: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let sane: Vec<(u64, u64)> = r
        .iter()
        .copied()
        .filter(|(o, l)| o.checked_add(*l).is_some())
        .collect();
    peerdelta_protocol::swarm::merge(&sane)
}

/// Counters shared by every transfer of the daemon (Prometheus).
#[derive(Debug, Default)]
pub struct LanCounters {
    /// Bytes received from peers.
    pub bytes_in: AtomicU64,
    /// Bytes sent to peers.
    pub bytes_out: AtomicU64,
    /// Peers banned for bad data.
    pub bans: AtomicU64,
}

/// The subnet, as one transfer sees it.
pub struct Lan {
    net: Net,
    package: PackageName,
    version: u64,
    master: watch::Receiver<bool>,
    banned: std::sync::Arc<Mutex<BTreeSet<PeerId>>>,
    counters: std::sync::Arc<LanCounters>,
    serving: std::sync::Arc<dyn Fn(&PeerId) -> bool + Send + Sync>,
    /// Bytes this transfer received from peers.
    pub lan_bytes: AtomicU64,
}

impl Lan {
    /// A transfer of `package` v`version`; `master` follows the election;
    /// `serving` says whether a peer may be asked for data (compatible, weight > 0).
    pub fn new(
        net: Net,
        package: PackageName,
        version: u64,
        master: watch::Receiver<bool>,
        counters: std::sync::Arc<LanCounters>,
        serving: std::sync::Arc<dyn Fn(&PeerId) -> bool + Send + Sync>,
        banned: std::sync::Arc<Mutex<BTreeSet<PeerId>>>,
    ) -> Lan {
        Lan {
            net,
            package,
            version,
            master,
            banned,
            counters,
            serving,
            lan_bytes: AtomicU64::new(0),
        }
    }

    /// Whether we are master now (may use the DP).
    pub fn is_master(&self) -> bool {
        *self.master.borrow()
    }

    /// Waits until we become master or `d` passes.
    pub async fn wait(&self, d: Duration) {
        let mut rx = self.master.clone();
        let _ = tokio::time::timeout(d, rx.wait_for(|m| *m)).await;
    }

    /// Peers we may ask for data.
    pub fn peers(&self) -> Vec<PeerId> {
        let banned = self
            .banned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.net
            .links()
            .into_iter()
            .filter(|(p, l)| l.incompatible.is_none() && !banned.contains(p) && (self.serving)(p))
            .map(|(p, _)| p)
            .collect()
    }

    /// Peers banned in this transfer.
    pub fn banned(&self) -> BTreeSet<PeerId> {
        self.banned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Bans a peer for this transfer (it also stops being a candidate in
    /// this version's election, so a master that serves bad data is replaced).
    /// Returns whether it is a new ban (report it once).
    pub fn ban(&self, peer: PeerId, why: &str) -> bool {
        let new = self
            .banned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer);
        if new {
            self.counters.bans.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, package = %self.package, version = self.version, "banned for this transfer: {why}");
        }
        new
    }

    async fn ask(&self, peer: PeerId, r: Request) -> Option<Response> {
        match tokio::time::timeout(Duration::from_secs(60), self.net.request(peer, r)).await {
            Ok(Ok(resp)) => Some(resp),
            Ok(Err(e)) => {
                tracing::debug!("{e:#}");
                None
            }
            Err(_) => None,
        }
    }

    fn got(&self, n: usize) {
        self.lan_bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.counters
            .bytes_in
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The signed manifest from any peer that has it (the caller verifies it).
    pub async fn manifest(&self) -> Option<(PeerId, Vec<u8>)> {
        self.manifest_of(self.version).await
    }

    /// The signed manifest of another version of the package (a delta base).
    pub async fn manifest_of(&self, version: u64) -> Option<(PeerId, Vec<u8>)> {
        for p in self.peers() {
            let r = Request::Manifest {
                package: self.package.clone(),
                version,
            };
            if let Some(Response::Bytes(b)) = self.ask(p, r).await {
                self.got(b.len());
                return Some((p, b));
            }
        }
        None
    }

    /// A library file from any peer whose copy hashes to `hash`; a peer
    /// sending another is banned.
    pub async fn file(&self, rel: &str, hash: &ContentHash) -> Option<Vec<u8>> {
        for p in self.peers() {
            let r = Request::File { rel: rel.into() };
            if let Some(Response::Bytes(b)) = self.ask(p, r).await {
                self.got(b.len());
                if ContentHash::of(&b) == *hash {
                    return Some(b);
                }
                self.ban(
                    p,
                    &format!("sent a copy of {rel} that does not match its hash"),
                );
            }
        }
        None
    }

    /// Which peers hold each of `contents` whole.
    pub async fn holders(&self, contents: &[ContentHash]) -> BTreeMap<ContentHash, Vec<PeerId>> {
        let mut out: BTreeMap<ContentHash, Vec<PeerId>> = BTreeMap::new();
        for p in self.peers() {
            for chunk in contents.chunks(wire::MAX_HAS) {
                if let Some(Response::Has(flags)) = self.ask(p, Request::Has(chunk.to_vec())).await
                {
                    for (h, f) in chunk.iter().zip(flags) {
                        if f {
                            out.entry(*h).or_default().push(p);
                        }
                    }
                }
            }
        }
        out
    }

    /// Per peer, the verified ranges of `content` it holds.
    pub async fn coverage(&self, content: &ContentHash) -> BTreeMap<PeerId, Vec<(u64, u64)>> {
        let mut out = BTreeMap::new();
        for p in self.peers() {
            if let Some(Response::Ranges { ranges, .. }) =
                self.ask(p, Request::Coverage(*content)).await
                && !ranges.is_empty()
            {
                out.insert(p, wire_ranges(&ranges));
            }
        }
        out
    }

    /// Bytes of a content from one peer (the caller verifies them), or
    /// whether it was busy.
    pub async fn range_or_busy(
        &self,
        peer: PeerId,
        content: ContentHash,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, bool> {
        let r = Request::Range {
            content,
            offset,
            len,
        };
        match self.ask(peer, r).await {
            Some(Response::Bytes(b)) => {
                self.got(b.len());
                Ok(b)
            }
            Some(Response::Busy) => Err(true),
            _ => Err(false),
        }
    }

    /// Bytes of a content from one peer (the caller verifies them).
    pub async fn range(
        &self,
        peer: PeerId,
        content: ContentHash,
        offset: u64,
        len: u64,
    ) -> Option<Vec<u8>> {
        self.range_or_busy(peer, content, offset, len).await.ok()
    }
}
