//! One package version's transfer on a subnet, as a sans-IO state machine:
//! where every item and every run comes from, how long a request may take,
//! when a peer loses its claims or is banned, when the DP is used, and how
//! long a DP outage is waited out. The agent daemon and simnet drive the
//! same machine; neither decides any of this.
//!
//! # What is transferred
//!
//! - *Items* ([`ItemId`]): whole things the driver verifies itself, the
//!   signed manifest and the needs lists or pieces files (by the hash the
//!   manifest gives). From any peer that has one, else from the DP.
//! - *Contents* ([`ContentId`]): a content being built, as its units (the
//!   runs of its needs list or pieces file, [`Unit`]), each verified by the
//!   driver against its run hash. Per unit, cheapest source first, as
//!   [`crate::swarm`] documents: our own base (seed runs), a peer holding the
//!   target bytes, a peer holding the base (alt-copy of a seed run), the DP.
//!
//! # Liveness: every wait has a deadline
//!
//! - Every request carries a [`RequestId`] and, to a peer, a deadline
//!   (a fixed part plus one per byte). Past it the request is abandoned and
//!   its units are scheduled again.
//! - A claim must be backed: a peer that claimed what it was asked for
//!   (coverage of a content, or a request in flight for an item) and answers
//!   "not found", or does not answer before the deadline, gets a strike and
//!   loses its claims until it announces them again; at
//!   [`Config::strikes_to_ban`] strikes it is banned for the transfer
//!   ([`Action::Ban`], with the reason): the driver drops it from the
//!   election too, so a master that claims everything and serves nothing is
//!   replaced. A peer that sends bytes that do not verify is banned at once.
//! - A peer that answers "busy" (its upload slots are full) is asked again
//!   after [`Config::retry_ms`], and units only it holds wait, as `swarm`
//!   says; but a peer busy for [`Config::busy_patience_ms`] without
//!   delivering anything has its claims set aside for as long, twice as
//!   long each time it happens again, so a peer busy forever holds nothing.
//! - Only the master uses the DP, except that an agent that made no progress
//!   (nor heard the master announce any, [`Transfer::handle_master_progress`])
//!   for [`Config::stall_ms`] takes what no usable peer holds from the DP
//!   itself ([`Action::Stalled`] says so once; [`Transfer::stall_fallbacks`]
//!   counts it). A subnet always finishes.
//! - DP errors that may pass (unreachable, 5xx) are retried with capped
//!   exponential backoff, forever: an outage of any length is waited out,
//!   and nothing verified is fetched again. An error that will not pass
//!   (the DP lacks a file the manifest names, sends bytes that fail twice,
//!   a local disk error) fails the transfer ([`Action::Failed`]): the driver
//!   steps down as master and stops claiming, and the job may be asked for
//!   again.
//!
//! # Bounds
//!
//! Requests in flight: [`Config::lan_in_flight`] to peers in all,
//! [`Config::peer_in_flight`] to one peer, [`Config::dp_in_flight`] to the
//! DP. Peers tracked: [`MAX_PEERS`]. A request to a peer carries at most
//! [`crate::wire::MAX_RANGE`] bytes.
//!
//! # Driving it
//!
//! Feed every event with the current time (`handle_*`), then drain
//! [`Transfer::poll_action`] until it returns `None` (decisions are taken
//! there, once for a burst of events), and call
//! [`Transfer::handle_timeout`] when [`Transfer::poll_timeout`] is reached
//! (a spurious call is harmless); ask `poll_timeout` after draining. Answer every request action with
//! [`Transfer::handle_request_end`] (once, whatever happened); report
//! verified units with [`Transfer::handle_units_done`] and verified items
//! with [`Transfer::handle_item_done`] as they land (a late answer to an
//! abandoned request still counts as progress).

mod schedule;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::rangeset::RangeSet;
use crate::swarm::Unit;
use crate::time::Timestamp;
use crate::wire::MAX_RANGE;

/// Peers one transfer tracks at most; more are ignored.
pub const MAX_PEERS: usize = 512;

/// A unit in no DP pack frame.
const NO_FRAME: u32 = u32::MAX;

/// A request the machine issued; it comes back in
/// [`Transfer::handle_request_end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// An item of the transfer, numbered by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemId(pub u32);

/// A content of the transfer, numbered by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentId(pub u32);

/// Timing and bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Fixed part of a peer request's deadline.
    pub peer_deadline_ms: u64,
    /// Per MiB asked, added to the deadline (a slow LAN is not a lie).
    pub peer_deadline_ms_per_mib: u64,
    /// Requests to peers in flight at once, in all.
    pub lan_in_flight: usize,
    /// Requests in flight to one peer.
    pub peer_in_flight: usize,
    /// Requests to the DP in flight at once.
    pub dp_in_flight: usize,
    /// Most target bytes in one DP request.
    pub dp_request_bytes: u64,
    /// Strikes (claims not backed) before a ban.
    pub strikes_to_ban: u32,
    /// A peer busy this long without delivering loses its claims as long.
    pub busy_patience_ms: u64,
    /// A non-master without progress this long uses the DP itself (at
    /// least twice [`Config::dp_backoff_max_ms`], so that after an outage
    /// the master, retrying, gets there first).
    pub stall_ms: u64,
    /// A peer's coverage is asked again when nothing was heard of it for
    /// this long while units wait (news, [`Transfer::handle_have`], keeps it
    /// fresh: the question is a safety net); twice as long after each
    /// answer that told nothing new, up to [`RETRY_DOUBLINGS`] times.
    pub coverage_refresh_ms: u64,
    /// A failed question (coverage, or an item a peer lacked) is asked
    /// again after this long.
    pub retry_ms: u64,
    /// First wait after a transient DP error; doubled up to the cap.
    pub dp_backoff_min_ms: u64,
    /// Longest wait between DP retries.
    pub dp_backoff_max_ms: u64,
    /// Fail when the DP has answered nothing for this long (a one-shot
    /// command); `None` waits out an outage of any length (the daemon).
    pub dp_give_up_ms: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            peer_deadline_ms: 5_000,
            peer_deadline_ms_per_mib: 2_000,
            lan_in_flight: 8,
            peer_in_flight: 2,
            dp_in_flight: 4,
            dp_request_bytes: 4 << 20,
            strikes_to_ban: 2,
            busy_patience_ms: 20_000,
            stall_ms: 60_000,
            coverage_refresh_ms: 10_000,
            retry_ms: 500,
            dp_backoff_min_ms: 500,
            dp_backoff_max_ms: 30_000,
            dp_give_up_ms: None,
        }
    }
}

/// Where a request for runs goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunsFrom<P> {
    /// A peer holding the target bytes.
    Peer(P),
    /// A peer holding the base: the seed runs' base bytes (alt-copy).
    AltCopy(P),
    /// The DP: from the compressed pack when `pack`, else raw.
    Dp {
        /// From the pack's frames.
        pack: bool,
    },
}

/// What the driver is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Ask `peer` which ranges of `content` it holds verified, and whether
    /// it holds the content's base; answer with [`Transfer::handle_coverage`]
    /// and [`Transfer::handle_request_end`].
    AskCoverage {
        /// The request.
        id: RequestId,
        /// Whom.
        peer: P,
        /// Which content.
        content: ContentId,
        /// Answer by then.
        deadline: Timestamp,
    },
    /// Fetch an item from a peer.
    ItemFromPeer {
        /// The request.
        id: RequestId,
        /// The item.
        item: ItemId,
        /// Whom.
        peer: P,
        /// Answer by then.
        deadline: Timestamp,
    },
    /// Ask the DP something cheap (the package index): does it answer?
    /// End it with [`Transfer::handle_request_end`] (`Ok`, or the DP error).
    ProbeDp {
        /// The request.
        id: RequestId,
    },
    /// No peer has this peers-only item, or the DP cannot give this
    /// optional one: go on without it.
    ItemUnavailable {
        /// The item.
        item: ItemId,
    },
    /// Fetch an item from the DP.
    ItemFromDp {
        /// The request.
        id: RequestId,
        /// The item.
        item: ItemId,
    },
    /// Copy seed runs from our own base (local; report the units done).
    CopySeeds {
        /// The content.
        content: ContentId,
        /// Unit indexes.
        units: Vec<usize>,
    },
    /// Fetch runs: from a peer, units contiguous in what is asked for
    /// (target offsets, or base offsets for an alt-copy) and at most
    /// [`MAX_RANGE`] bytes; from the DP, at most
    /// [`Config::dp_request_bytes`].
    FetchRuns {
        /// The request.
        id: RequestId,
        /// The content.
        content: ContentId,
        /// From where.
        from: RunsFrom<P>,
        /// Unit indexes, ascending.
        units: Vec<usize>,
        /// For a peer: answer by then.
        deadline: Option<Timestamp>,
    },
    /// Ban `peer` for this transfer (drop it from the election, report it).
    Ban {
        /// Whom.
        peer: P,
        /// Why.
        reason: BanReason,
    },
    /// No progress for this long: this non-master now takes what no
    /// usable peer holds from the DP (log it; counted).
    Stalled {
        /// Milliseconds without progress.
        waited_ms: u64,
    },
    /// Build `content` again from nothing, from its whole form (pieces
    /// file, or the content itself), not from a base (the base may be what
    /// was wrong): plan it and add it again with
    /// [`Transfer::add_content`] (or its items first).
    Rebuild {
        /// The content.
        content: ContentId,
    },
    /// Every item and every unit is done.
    Done,
    /// The transfer cannot finish (step down, report, let it be asked again).
    Failed {
        /// Why.
        reason: String,
    },
}

/// Why a peer was banned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BanReason {
    /// It sent bytes that failed verification.
    BadData(String),
    /// It claimed data and, this many times, did not deliver it (answered
    /// "not found" or nothing before the deadline).
    Unbacked {
        /// Strikes.
        strikes: u32,
    },
}

impl std::fmt::Display for BanReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BanReason::BadData(d) => write!(f, "sent bytes that failed verification: {d}"),
            BanReason::Unbacked { strikes } => write!(
                f,
                "claimed data it did not deliver ({strikes} times: not found, or no answer in time)"
            ),
        }
    }
}

/// How a request ended, as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered; what it brought was reported (units or item done).
    Ok,
    /// The peer does not have what it claimed.
    NotFound,
    /// The peer's upload slots are full.
    Busy,
    /// The bytes failed verification.
    BadData(String),
    /// The peer could not be reached (disconnected, refused).
    Unreachable,
    /// The DP failed; `transient` errors (unreachable, 5xx, timeouts) are
    /// waited out, others fail the transfer.
    Dp {
        /// May pass.
        transient: bool,
        /// What happened.
        detail: String,
    },
    /// A local error (disk full): the transfer fails.
    Local(String),
}

/// Why a content must be built again from nothing
/// ([`Transfer::handle_content_failed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebuild {
    /// Every unit verified, the whole content did not: the partial was
    /// discarded. Rebuilt once; a second failure fails the transfer (the
    /// DP's own bytes are wrong).
    Unverified(String),
    /// Verified earlier, it is no longer in the store at the end. Rebuilt
    /// at most [`MAX_REBUILDS`] times.
    Lost,
}

/// Most times one content is built again from nothing.
pub const MAX_REBUILDS: u32 = 2;

/// A non-master's way to the DP when the subnet makes no progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    /// Progress is recent enough.
    Waiting,
    /// No progress for the stall time: is the DP up? (A DP outage
    /// explains the stall: then we wait again.)
    Probing(RequestId),
    /// The DP is up: the master, which retries at most every backoff cap,
    /// has until then to show progress.
    Armed(Timestamp),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Probe,
    Coverage(ContentId),
    Item(ItemId),
    Runs(ContentId, Vec<usize>, bool),
}

#[derive(Debug, Clone)]
struct InFlight<P> {
    peer: Option<P>,
    target: Target,
    deadline: Option<Timestamp>,
}

/// What a peer told us it holds of one content.
#[derive(Debug, Clone)]
struct Cover {
    /// Verified target ranges.
    ranges: RangeSet,
    /// Whether it holds the content's base.
    has_base: bool,
    /// It is asked again from then on; news pushes this back.
    fresh_until: Timestamp,
    /// Answers in a row that told nothing new: each doubles the time before
    /// the next question (up to [`RETRY_DOUBLINGS`] times), so a subnet
    /// waiting on its master does not poll every peer at a fixed rate.
    quiet: u32,
}

#[derive(Debug, Clone, Default)]
struct PeerState {
    strikes: u32,
    banned: bool,
    /// Since when it has answered "busy" without delivering.
    busy_since: Option<Timestamp>,
    /// It answered "busy": not asked again before then.
    busy_until: Option<Timestamp>,
    /// Its claims are set aside until then.
    ignored_until: Option<Timestamp>,
    /// Times its claims were set aside (busy all along).
    set_aside: u32,
    in_flight: usize,
    /// "Busy" answers in a row: each doubles the pause before it is asked
    /// again (up to [`RETRY_DOUBLINGS`] times).
    busy_count: u32,
    /// Items it was asked for and did not deliver ("not found", or no
    /// answer in time): it is asked again after a pause (it may have it
    /// by then), but once every peer failed once the master goes to the DP.
    lacks: BTreeMap<ItemId, Lack>,
}

/// How many times a pause doubles: after "busy" or "not found" from
/// [`Config::retry_ms`] (500 ms to 4 s by default), before a coverage
/// question that keeps getting the same answer from
/// [`Config::coverage_refresh_ms`] (10 s to 80 s): a subnet of peers
/// waiting on one holder does not poll at a fixed rate.
pub const RETRY_DOUBLINGS: u32 = 3;

/// The pause after `tries` failed asks in a row.
fn retry_pause(retry_ms: u64, tries: u32) -> u64 {
    retry_ms << tries.saturating_sub(1).min(RETRY_DOUBLINGS)
}

/// A peer lacked an item when asked.
#[derive(Debug, Clone, Copy)]
struct Lack {
    /// When it last said so.
    at: Timestamp,
    /// Times in a row.
    tries: u32,
}

impl Lack {
    /// When it may be asked again.
    fn until(&self, retry_ms: u64) -> Timestamp {
        self.at.plus_ms(retry_pause(retry_ms, self.tries))
    }
}

impl PeerState {
    /// When its busy or set-aside state next changes.
    fn timer(&self, patience_ms: u64) -> Option<Timestamp> {
        [
            self.ignored_until,
            self.busy_until,
            self.busy_since.map(|b| b.plus_ms(patience_ms)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// It lacked `item` now (once more).
    fn lacked(&mut self, item: ItemId, now: Timestamp) {
        let l = self.lacks.entry(item).or_insert(Lack { at: now, tries: 0 });
        l.at = now;
        l.tries = l.tries.saturating_add(1);
    }
}

#[derive(Debug, Clone)]
struct ContentState<P> {
    /// What each peer claims to hold of it (kept with the content, not the
    /// peer: a scheduling pass reads every peer's claim on one content).
    covers: BTreeMap<P, Cover>,
    /// Shared: a simulation of thousands of agents holds one list.
    units: Arc<[Unit]>,
    done: Vec<bool>,
    left: usize,
    in_flight: Vec<bool>,
    /// Units whose pack frame failed: raw from the DP.
    raw_only: Vec<bool>,
    /// Units before it are done.
    cursor: usize,
    /// Seed runs not done yet.
    seeds_left: usize,
    /// What usable peers hold of it in all, as of `held_gen`.
    held: RangeSet,
    held_gen: u64,
    /// Some unit waits with no source: stale coverage is asked again.
    hungry: bool,
    /// DP bytes of a unit that failed verification once.
    dp_bad: Vec<bool>,
    /// Per unit, the DP pack frame that holds it ([`NO_FRAME`]: none): a
    /// frame brings all its units, so it is asked for once at a time.
    frame: Vec<u32>,
    /// Frames asked of the DP, not answered yet.
    frames_out: BTreeSet<u32>,
    have_base: bool,
    pack: bool,
}

#[derive(Debug, Clone)]
struct ItemState {
    done: bool,
    in_flight: usize,
    dp_in_flight: bool,
    from: ItemFrom,
}

/// Where an item may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemFrom {
    /// Peers first, then the DP (the manifest, needs lists).
    Anywhere,
    /// Peers only: when none has it, [`Action::ItemUnavailable`] (a base
    /// to copy, worth having but not worth the WAN).
    PeersOnly,
    /// The DP only (what only the DP can make, e.g. client-side RDC).
    DpOnly,
    /// Peers first, then the DP, but worth no failure and no wait: when
    /// the DP's copy does not verify or is not there, or, for an agent that
    /// may not use the DP, when no peer has it, [`Action::ItemUnavailable`]
    /// (a bundle: its contents then come their usual way, from the peers
    /// that built them).
    Optional,
}

/// One package version's transfer.
#[derive(Debug, Clone)]
pub struct Transfer<P> {
    cfg: Config,
    now: Timestamp,
    master: bool,
    peers: BTreeMap<P, PeerState>,
    items: BTreeMap<ItemId, ItemState>,
    contents: BTreeMap<ContentId, ContentState<P>>,
    in_flight: BTreeMap<RequestId, InFlight<P>>,
    lan_in_flight: usize,
    dp_in_flight: usize,
    actions: VecDeque<Action<P>>,
    next_id: u64,
    last_progress: Timestamp,
    stall: Stall,
    stalled: bool,
    stall_fallbacks: u64,
    started: bool,
    dp_backoff_ms: u64,
    dp_retry_at: Option<Timestamp>,
    dp_errors: u64,
    finished: bool,
    failed: bool,
    /// Contents whose scheduling may have changed since the last look.
    dirty: BTreeSet<ContentId>,
    all_dirty: bool,
    /// Contents that had units to issue and no room (a cap, a peer at its
    /// in-flight limit): looked at again when any request ends.
    starved: BTreeSet<ContentId>,
    /// Since when the DP has answered nothing but transient errors.
    dp_down_since: Option<Timestamp>,
    /// Runs came over the WAN since [`Transfer::take_news_due`].
    news_due: bool,
    /// Bumped when a peer's claims shrink or it stops being usable: the
    /// contents' `held` are worked out again.
    peers_gen: u64,
    /// Events came in since the last decisions: the next
    /// [`Transfer::poll_action`] decides (once for a burst of events).
    unsettled: bool,
    /// Items not done, and units not done over all contents.
    items_left: usize,
    units_left: usize,
    /// When some peer's busy or set-aside state next changes (none: no
    /// peer has such a timer); [`Transfer::tick`] looks at peers only then.
    peers_due: Option<Timestamp>,
    /// Times each content was built again from nothing.
    rebuilds: BTreeMap<ContentId, u32>,
    /// Contents the driver is planning again ([`Action::Rebuild`]): the
    /// transfer is not done before they are added again.
    replanning: BTreeSet<ContentId>,
}

impl<P: Ord + Clone + std::fmt::Debug> Transfer<P> {
    /// A transfer with nothing to do yet; `master` is our role now.
    pub fn new(mut cfg: Config, master: bool, now: Timestamp) -> Self {
        // A stalled agent must not retry the DP before the master, which
        // waits at most the backoff cap: see the module doc.
        cfg.stall_ms = cfg.stall_ms.max(2 * cfg.dp_backoff_max_ms);
        Transfer {
            cfg,
            now,
            master,
            peers: BTreeMap::new(),
            items: BTreeMap::new(),
            contents: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            lan_in_flight: 0,
            dp_in_flight: 0,
            actions: VecDeque::new(),
            next_id: 0,
            last_progress: now,
            stall: Stall::Waiting,
            stalled: false,
            stall_fallbacks: 0,
            started: false,
            dp_backoff_ms: 0,
            dp_retry_at: None,
            dp_errors: 0,
            finished: false,
            failed: false,
            dirty: BTreeSet::new(),
            all_dirty: true,
            starved: BTreeSet::new(),
            dp_down_since: None,
            news_due: false,
            peers_gen: 0,
            unsettled: false,
            items_left: 0,
            units_left: 0,
            peers_due: None,
            rebuilds: BTreeMap::new(),
            replanning: BTreeSet::new(),
        }
    }

    /// Adds an item to fetch, from peers first, then the DP.
    pub fn add_item(&mut self, now: Timestamp, item: ItemId) {
        self.add_item_from(now, item, ItemFrom::Anywhere);
    }

    /// Adds an item to fetch from where `from` says.
    pub fn add_item_from(&mut self, now: Timestamp, item: ItemId, from: ItemFrom) {
        self.tick(now);
        if let std::collections::btree_map::Entry::Vacant(v) = self.items.entry(item) {
            v.insert(ItemState {
                done: false,
                in_flight: 0,
                dp_in_flight: false,
                from,
            });
            self.items_left += 1;
        }
        self.finished = false;
        self.started = true;
        self.unsettled = true;
    }

    /// Adds a content to build: its units, which are already done (from a
    /// journal), whether we hold its base (seed runs are local), and
    /// whether the DP keeps its origin runs compressed (a pack).
    pub fn add_content(
        &mut self,
        now: Timestamp,
        content: ContentId,
        units: impl Into<Arc<[Unit]>>,
        done: impl Fn(&Unit) -> bool,
        have_base: bool,
        pack: bool,
    ) {
        self.tick(now);
        let units: Arc<[Unit]> = units.into();
        let done: Vec<bool> = units.iter().map(done).collect();
        let n = units.len();
        let left = done.iter().filter(|d| !**d).count();
        let seeds_left = units
            .iter()
            .zip(&done)
            .filter(|(u, d)| u.seed_offset.is_some() && !**d)
            .count();
        self.units_left += left;
        self.replanning.remove(&content);
        if let Some(old) = self.contents.get(&content) {
            self.units_left -= old.left;
        }
        self.contents.insert(
            content,
            ContentState {
                covers: BTreeMap::new(),
                units,
                left,
                done,
                in_flight: vec![false; n],
                raw_only: vec![false; n],
                cursor: 0,
                seeds_left,
                held: RangeSet::new(),
                held_gen: u64::MAX,
                hungry: true,
                dp_bad: vec![false; n],
                frame: vec![NO_FRAME; n],
                frames_out: BTreeSet::new(),
                have_base,
                pack,
            },
        );
        self.finished = false;
        self.started = true;
        self.dirty.insert(content);
        self.unsettled = true;
    }

    /// A content's needs list names a base we lack; `item` would copy it
    /// from a peer. The master fetches origin runs as DP pack frames,
    /// which decompress against the base: a peer's copy of it keeps the
    /// WAN bytes those of one agent holding it, so the base becomes a
    /// peers-only item and this returns `true`: the content waits for it
    /// ([`Transfer::handle_item_done`], or [`Action::ItemUnavailable`]
    /// when no peer has it, and the content goes whole). A non-master
    /// takes runs from peers, and without a pack the seed runs are
    /// fetched like any other: `false`, build without it.
    pub fn want_base_copy(&mut self, now: Timestamp, item: ItemId, pack: bool) -> bool {
        if !(self.master && pack) {
            return false;
        }
        self.add_item_from(now, item, ItemFrom::PeersOnly);
        true
    }

    /// Content `content` must be built again from nothing (see
    /// [`Rebuild`]): its units and requests go, and [`Action::Rebuild`]
    /// asks the driver to plan it again; past the limit the transfer fails.
    pub fn handle_content_failed(&mut self, now: Timestamp, content: ContentId, why: Rebuild) {
        self.tick(now);
        let count = self.rebuilds.get(&content).copied().unwrap_or(0);
        let (limit, what) = match &why {
            Rebuild::Unverified(e) => (1, format!("failed verification twice: {e}")),
            Rebuild::Lost => (MAX_REBUILDS, "went missing from the store again".to_owned()),
        };
        if count >= limit {
            self.fail(format!("a content built again from nothing {what}"));
            return;
        }
        self.rebuilds.insert(content, count + 1);
        let ids: Vec<RequestId> = self
            .in_flight
            .iter()
            .filter(|(_, f)| {
                matches!(f.target, Target::Coverage(c) | Target::Runs(c, _, _) if c == content)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.end(id);
        }
        if let Some(old) = self.contents.remove(&content) {
            self.units_left -= old.left;
        }
        self.replanning.insert(content);
        self.finished = false;
        self.actions.push_back(Action::Rebuild { content });
        self.unsettled = true;
    }

    /// Which DP pack frame holds each unit of `content` (a pack request
    /// brings whole frames, and the driver reports every unit of the
    /// frames it fetched): units of a frame already asked for wait for it,
    /// and those of one frame go in one request. Without it, a frame whose
    /// units were asked for in two requests (after a peer failed them one
    /// by one) crossed the WAN twice.
    pub fn set_pack_frames(&mut self, content: ContentId, frame_of: impl Fn(usize) -> Option<u32>) {
        if let Some(cs) = self.contents.get_mut(&content) {
            for (i, f) in cs.frame.iter_mut().enumerate() {
                *f = frame_of(i).unwrap_or(NO_FRAME);
            }
        }
    }

    /// Our role changed. A new master asks every peer what it holds
    /// before it uses the DP (what news has not told yet).
    pub fn handle_role(&mut self, now: Timestamp, master: bool) {
        self.tick(now);
        if master && !self.master {
            let now = self.now;
            for c in self
                .contents
                .values_mut()
                .flat_map(|c| c.covers.values_mut())
            {
                c.fresh_until = now;
            }
        }
        self.master = master;
        self.all_dirty = true;
        self.unsettled = true;
    }

    /// A peer we may ask (connected, compatible, serving).
    pub fn handle_peer(&mut self, now: Timestamp, peer: P) {
        self.tick(now);
        if self.peers.len() < MAX_PEERS && !self.peers.contains_key(&peer) {
            self.peers.entry(peer).or_default();
            self.all_dirty = true;
        }
        self.unsettled = true;
    }

    /// A peer left: its claims go, its requests are abandoned.
    pub fn handle_peer_gone(&mut self, now: Timestamp, peer: P) {
        self.tick(now);
        if self.peers.contains_key(&peer) {
            self.forget_covers(&peer);
            self.peers_gen += 1;
        }
        self.end_requests_to(&peer);
        if self.peers.get(&peer).is_some_and(|p| !p.banned) {
            self.peers.remove(&peer);
        }
        self.all_dirty = true;
        self.unsettled = true;
    }

    /// What `peer` holds of `content`: its answer to
    /// [`Action::AskCoverage`], its verified target ranges and whether it
    /// holds the base.
    pub fn handle_coverage(
        &mut self,
        now: Timestamp,
        peer: P,
        content: ContentId,
        ranges: RangeSet,
        has_base: bool,
    ) {
        self.tick(now);
        if let Some(p) = self.peers.get(&peer)
            && !p.banned
            && let Some(cs) = self.contents.get_mut(&content)
        {
            let ranges = cs.waiting_in(&ranges);
            let old = cs.covers.get(&peer);
            // What it held before and we still wait for (units done since
            // are no news).
            let same = old.is_some_and(|c| {
                c.has_base == has_base && (c.ranges == ranges || cs.waiting_in(&c.ranges) == ranges)
            });
            let quiet = match old {
                Some(c) if same => c.quiet.saturating_add(1),
                _ => 0,
            };
            let fresh_until = self.now.plus_ms(retry_pause(
                self.cfg.coverage_refresh_ms,
                quiet.saturating_add(1),
            ));
            // Claims usually grow: what all peers hold grows with them.
            let grows = old.is_none_or(|c| {
                c.ranges
                    .ranges()
                    .iter()
                    .all(|&(o, l)| ranges.covers(o, o + l))
            });
            let usable = p.ignored_until.is_none();
            if !same {
                self.dirty.insert(content);
                if grows && usable && cs.held_gen == self.peers_gen {
                    cs.held.extend(&ranges);
                } else {
                    self.peers_gen += 1;
                }
            }
            cs.covers.insert(
                peer,
                Cover {
                    ranges,
                    has_base,
                    fresh_until,
                    quiet,
                },
            );
        }
        self.unsettled = true;
    }

    /// News: `peer` now also holds these verified ranges of `content`
    /// (what it verified since its last announcement). They are claims
    /// like a coverage answer's, and keep its coverage fresh without a
    /// question.
    pub fn handle_have(&mut self, now: Timestamp, peer: P, content: ContentId, ranges: &RangeSet) {
        self.tick(now);
        let fresh_until = self.now.plus_ms(self.cfg.coverage_refresh_ms);
        let Some(cs) = self.contents.get_mut(&content) else {
            return;
        };
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        if p.banned {
            return;
        }
        let now = self.now;
        let ranges = &cs.waiting_in(ranges);
        let c = cs.covers.entry(peer).or_insert_with(|| Cover {
            ranges: RangeSet::new(),
            has_base: false,
            // Only part is known: the whole is still asked.
            fresh_until: now,
            quiet: 0,
        });
        c.ranges.extend(ranges);
        if c.fresh_until > now {
            c.fresh_until = c.fresh_until.max(fresh_until);
        }
        if p.ignored_until.is_none() && cs.held_gen == self.peers_gen {
            cs.held.extend(ranges);
        }
        // Worth a look only if it holds a unit we still wait for and have
        // not asked for (a request that fails makes the content looked at).
        if cs.left > 0 && ranges.ranges().iter().any(|&(s, l)| cs.waits_within(s, l)) {
            self.dirty.insert(content);
            self.unsettled = true;
        }
    }

    /// These units of `content` are verified and written.
    pub fn handle_units_done(&mut self, now: Timestamp, content: ContentId, units: &[usize]) {
        self.tick(now);
        if let Some(c) = self.contents.get_mut(&content) {
            let mut any = false;
            for &i in units {
                if let Some(d) = c.done.get_mut(i)
                    && !*d
                {
                    *d = true;
                    c.left -= 1;
                    self.units_left -= 1;
                    if c.units[i].seed_offset.is_some() {
                        c.seeds_left -= 1;
                    }
                    any = true;
                }
            }
            if any {
                self.progress();
            }
        }
        self.dirty.insert(content);
        self.unsettled = true;
    }

    /// Our base of `content` turned out damaged (or gone): its seed runs
    /// come from elsewhere now.
    pub fn handle_base_lost(&mut self, now: Timestamp, content: ContentId) {
        self.tick(now);
        if let Some(c) = self.contents.get_mut(&content) {
            c.have_base = false;
            let copying: Vec<usize> = (0..c.units.len())
                .filter(|&i| !c.done[i] && c.in_flight[i])
                .collect();
            let held: BTreeSet<usize> = self
                .in_flight
                .values()
                .filter_map(|f| match &f.target {
                    Target::Runs(k, u, _) if *k == content => Some(u.clone()),
                    _ => None,
                })
                .flatten()
                .collect();
            for i in copying {
                if !held.contains(&i) {
                    c.in_flight[i] = false;
                }
            }
        }
        self.dirty.insert(content);
        self.unsettled = true;
    }

    /// The master announced more of the target held: the subnet
    /// progresses, so this agent's stall clock starts again (a master
    /// rebuilding a content by client-side RDC shows nothing else for
    /// minutes).
    pub fn handle_master_progress(&mut self, now: Timestamp) {
        self.tick(now);
        self.progress();
        // Items a peer lacked may be there now: no need to wait out the pause.
        for p in self.peers.values_mut() {
            p.lacks.clear();
        }
        self.unsettled = true;
    }

    /// An item is verified and kept.
    pub fn handle_item_done(&mut self, now: Timestamp, item: ItemId) {
        self.tick(now);
        if let Some(i) = self.items.get_mut(&item)
            && !i.done
        {
            i.done = true;
            self.items_left -= 1;
            self.progress();
            for p in self.peers.values_mut() {
                p.lacks.remove(&item);
            }
        }
        // Answers still in flight for it are of no use now.
        let ids: Vec<RequestId> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.target == Target::Item(item))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.end(id);
        }
        self.unsettled = true;
    }

    /// A request ended. Units or items it brought are reported separately.
    pub fn handle_request_end(&mut self, now: Timestamp, id: RequestId, outcome: Outcome) {
        self.tick(now);
        let Some(f) = self.end(id) else {
            return;
        };
        // "Done" without every run asked for is no delivery.
        let outcome = match (&f.target, outcome) {
            (Target::Runs(c, units, _), Outcome::Ok)
                if self.contents.get(c).is_some_and(|cs| {
                    units
                        .iter()
                        .any(|&u| !cs.done.get(u).copied().unwrap_or(true))
                }) =>
            {
                Outcome::BadData("the answer lacked runs it was asked for".into())
            }
            (_, o) => o,
        };
        if !matches!(f.target, Target::Coverage(_) | Target::Probe) {
            // Its room is free again.
            let starved = std::mem::take(&mut self.starved);
            self.dirty.extend(starved);
        }
        // An optional item the DP cannot give: the driver goes on without it.
        if let (Target::Item(item), None) = (&f.target, &f.peer)
            && matches!(
                outcome,
                Outcome::BadData(_)
                    | Outcome::NotFound
                    | Outcome::Dp {
                        transient: false,
                        ..
                    }
            )
            && let Some(i) = self.items.get_mut(item)
            && i.from == ItemFrom::Optional
        {
            if !i.done {
                i.done = true;
                self.items_left -= 1;
                self.actions
                    .push_back(Action::ItemUnavailable { item: *item });
            }
            self.all_dirty = true;
            self.unsettled = true;
            return;
        }
        match (&f.target, &outcome) {
            (Target::Runs(c, _, _), Outcome::Ok) => {
                self.dirty.insert(*c);
            }
            // The DP may have waited for this answer.
            (Target::Coverage(c), Outcome::Ok) => {
                self.dirty.insert(*c);
            }
            _ => self.all_dirty = true,
        }
        if f.target == Target::Probe {
            if self.stall == Stall::Probing(id) {
                self.stall = if outcome == Outcome::Ok {
                    // The DP answers: give the master, which retries at
                    // most every backoff cap, that long to show progress.
                    Stall::Armed(
                        self.now
                            .plus_ms(self.cfg.dp_backoff_max_ms + self.cfg.peer_deadline_ms),
                    )
                } else {
                    // The DP is down: that explains the stall.
                    self.last_progress = self.now;
                    Stall::Waiting
                };
            }
            self.unsettled = true;
            return;
        }
        match (outcome, f.peer) {
            (Outcome::Ok, Some(p)) => {
                // It delivered (an answer to a question is no delivery).
                if !matches!(f.target, Target::Coverage(_))
                    && let Some(ps) = self.peers.get_mut(&p)
                {
                    ps.busy_since = None;
                    ps.busy_until = None;
                    ps.busy_count = 0;
                }
            }
            (Outcome::Ok, None) => {
                self.dp_backoff_ms = 0;
                self.dp_down_since = None;
                self.news_due |= matches!(f.target, Target::Runs(..));
            }
            (Outcome::NotFound, Some(p)) => match f.target {
                // Asked blind for an item: not having it is no lie.
                Target::Item(item) => {
                    let now = self.now;
                    if let Some(ps) = self.peers.get_mut(&p) {
                        ps.lacked(item, now);
                    }
                }
                Target::Runs(c, _, _) | Target::Coverage(c) => self.strike(p, Some(c)),
                Target::Probe => {}
            },
            (Outcome::Busy, Some(p)) => {
                // Asked again after a pause that doubles while it stays
                // busy; busy all along, see `tick`.
                let (now, retry) = (self.now, self.cfg.retry_ms);
                if let Some(ps) = self.peers.get_mut(&p) {
                    ps.busy_since.get_or_insert(now);
                    ps.busy_count = ps.busy_count.saturating_add(1);
                    ps.busy_until = Some(now.plus_ms(retry_pause(retry, ps.busy_count)));
                    let t = ps.timer(self.cfg.busy_patience_ms);
                    self.peers_due = [self.peers_due, t].into_iter().flatten().min();
                }
            }
            (Outcome::BadData(d), Some(p)) => self.ban(p, BanReason::BadData(d)),
            (Outcome::Unreachable, Some(p)) => self.forget_claims(&p, None),
            (Outcome::BadData(d), None) => {
                // From the DP: a pack frame is retried raw, raw bytes once
                // more, then the DP is blamed.
                if let Target::Runs(c, units, pack) = &f.target
                    && let Some(cs) = self.contents.get_mut(c)
                {
                    for &u in units {
                        if *pack {
                            cs.raw_only[u] = true;
                        } else if cs.dp_bad[u] {
                            self.fail(format!(
                                "the DP sent bytes that failed verification twice: {d}"
                            ));
                            return;
                        } else {
                            cs.dp_bad[u] = true;
                        }
                    }
                } else {
                    self.fail(format!("the DP sent an item that does not verify: {d}"));
                    return;
                }
            }
            (
                Outcome::Dp {
                    transient: true,
                    detail,
                },
                _,
            ) => self.dp_down(detail),
            (Outcome::Unreachable, None) => self.dp_down("no answer".into()),
            (Outcome::Dp { detail, .. }, _) => {
                self.fail(format!("the DP: {detail}"));
                return;
            }
            (Outcome::Local(d), _) => {
                self.fail(d);
                return;
            }
            (Outcome::NotFound | Outcome::Busy, None) => {
                self.fail("the DP lacks what the manifest names".into());
                return;
            }
        }
        self.unsettled = true;
    }

    /// Time passed: deadlines, stalls, retries.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.tick(now);
        self.all_dirty = true;
        let late: Vec<(RequestId, Option<P>, Target)> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline.is_some_and(|d| d <= self.now))
            .map(|(id, f)| (*id, f.peer.clone(), f.target.clone()))
            .collect();
        for (id, peer, target) in late {
            self.end(id);
            if let Some(p) = peer {
                let content = match target {
                    Target::Coverage(c) | Target::Runs(c, _, _) => Some(c),
                    Target::Item(item) => {
                        let now = self.now;
                        if let Some(ps) = self.peers.get_mut(&p) {
                            ps.lacked(item, now);
                        }
                        None
                    }
                    Target::Probe => continue,
                };
                self.strike(p, content);
            }
        }
        if self.dp_retry_at.is_some_and(|t| t <= self.now) {
            self.dp_retry_at = None;
        }
        self.unsettled = true;
    }

    /// The next action, if any. Decisions are taken here, once for all
    /// the events fed since the last call.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        if std::mem::take(&mut self.unsettled) {
            self.schedule();
        }
        self.actions.pop_front()
    }

    /// When [`Transfer::handle_timeout`] is next due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.finished || self.failed {
            return None;
        }
        let deadlines = self.in_flight.values().filter_map(|f| f.deadline);
        let waiting = !self.master && !self.stalled && self.has_work();
        let stall = match self.stall {
            Stall::Waiting if waiting => Some(self.last_progress.plus_ms(self.cfg.stall_ms)),
            Stall::Armed(t) if waiting => Some(t),
            _ => None,
        };
        // Hungry contents ask a peer again when its coverage goes stale
        // (a peer whose claims are set aside has a timer of its own).
        let refresh = self
            .contents
            .values()
            .filter(|c| c.left > 0 && c.hungry)
            .flat_map(|c| c.covers.values())
            .map(|c| c.fresh_until)
            .filter(|t| *t > self.now);
        let busy = self.peers_due;
        // Items a peer lacked are asked again (lacks of done items are gone).
        let asks_again = !self.may_use_dp() && self.items_left > 0;
        let lacks = self
            .peers
            .values()
            .filter(|_| asks_again)
            .flat_map(|p| p.lacks.values())
            .map(|l| l.until(self.cfg.retry_ms))
            .filter(|t| *t > self.now);
        deadlines
            .chain(stall)
            .chain(self.dp_retry_at)
            .chain(refresh)
            .chain(busy)
            .chain(lacks)
            .min()
    }

    /// Whether every item and unit is done.
    pub fn is_done(&self) -> bool {
        self.finished
    }

    /// Whether the transfer failed.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Times this agent used the DP because the subnet stalled.
    pub fn stall_fallbacks(&self) -> u64 {
        self.stall_fallbacks
    }

    /// Transient DP errors waited out.
    pub fn dp_errors(&self) -> u64 {
        self.dp_errors
    }

    /// Peers banned in this transfer.
    pub fn banned(&self) -> impl Iterator<Item = &P> {
        self.peers.iter().filter(|(_, p)| p.banned).map(|(k, _)| k)
    }

    /// Whether runs came from the DP since the last call. Their news is
    /// told at once, not at the next heartbeat: until a peer holds them the
    /// subnet would fetch them again if this agent dropped out. (News of
    /// runs from peers waits for the heartbeat: others hold them already.)
    pub fn take_news_due(&mut self) -> bool {
        std::mem::take(&mut self.news_due)
    }

    /// Unit `i` of `content`, as added.
    pub fn unit(&self, content: ContentId, i: usize) -> Option<&Unit> {
        self.contents.get(&content).and_then(|c| c.units.get(i))
    }

    /// Units of `content` done and in all.
    pub fn progress_of(&self, content: ContentId) -> Option<(usize, usize)> {
        self.contents
            .get(&content)
            .map(|c| (c.units.len() - c.left, c.units.len()))
    }
}
