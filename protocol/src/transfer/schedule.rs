//! The transfer's bookkeeping and scheduling: which requests to issue now,
//! what a failure costs a peer, and when the transfer ends.

use super::*;
use crate::swarm::{Holder, Scheduler, Source, View};

/// Requests each peer may still take, sorted by peer.
type Room<P> = Vec<(P, usize)>;

fn room_of<P: Ord>(room: &Room<P>, p: &P) -> usize {
    room.binary_search_by(|(q, _)| q.cmp(p))
        .ok()
        .and_then(|k| room.get(k))
        .map_or(0, |(_, free)| *free)
}

impl<P: Ord + Clone + std::fmt::Debug> Transfer<P> {
    /// Whether the DP may be used now: as master, or stalled.
    pub(super) fn may_use_dp(&self) -> bool {
        (self.master || self.stalled) && self.dp_retry_at.is_none()
    }

    pub(super) fn has_work(&self) -> bool {
        debug_assert_eq!(
            self.items_left,
            self.items.values().filter(|i| !i.done).count()
        );
        debug_assert_eq!(
            self.units_left,
            self.contents.values().map(|c| c.left).sum::<usize>()
        );
        self.items_left > 0 || self.units_left > 0 || !self.replanning.is_empty()
    }

    pub(super) fn tick(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
        let waiting =
            || !self.master && !self.stalled && !self.finished && !self.failed && self.has_work();
        match self.stall {
            Stall::Waiting
                if self.now.since(self.last_progress) >= self.cfg.stall_ms && waiting() =>
            {
                let id = self.id();
                self.stall = Stall::Probing(id);
                self.in_flight.insert(
                    id,
                    InFlight {
                        peer: None,
                        target: Target::Probe,
                        deadline: None,
                    },
                );
                self.actions.push_back(Action::ProbeDp { id });
            }
            Stall::Armed(until) if self.now >= until && waiting() => {
                self.stall = Stall::Waiting;
                self.stalled = true;
                self.stall_fallbacks += 1;
                self.actions.push_back(Action::Stalled {
                    waited_ms: self.now.since(self.last_progress),
                });
            }
            _ => {}
        }
        if self.peers_due.is_none_or(|t| t > self.now) {
            return;
        }
        let (now, patience) = (self.now, self.cfg.busy_patience_ms);
        let mut set_aside = false;
        let mut due = None;
        for p in self.peers.values_mut() {
            if p.ignored_until.is_some_and(|t| t <= now) {
                p.ignored_until = None;
                set_aside = true;
            }
            if p.busy_until.is_some_and(|t| t <= now) {
                p.busy_until = None;
            }
            // Busy all along: its claims are set aside, twice as long each
            // time (an honest holder's slots free up; a peer that claims and
            // is never free stops costing anything).
            if p.busy_since.is_some_and(|b| now.since(b) >= patience) {
                p.busy_since = None;
                p.set_aside = (p.set_aside + 1).min(8);
                p.ignored_until = Some(now.plus_ms(patience << (p.set_aside - 1)));
                set_aside = true;
            }
            due = [due, p.timer(patience)].into_iter().flatten().min();
        }
        self.peers_due = due;
        if set_aside {
            self.all_dirty = true;
            self.peers_gen += 1;
        }
    }

    pub(super) fn progress(&mut self) {
        self.last_progress = self.now;
        self.stalled = false;
        if matches!(self.stall, Stall::Armed(_)) {
            self.stall = Stall::Waiting;
        }
    }

    pub(super) fn id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId(self.next_id)
    }

    /// Forgets a request, freeing what it held.
    pub(super) fn end(&mut self, id: RequestId) -> Option<InFlight<P>> {
        let f = self.in_flight.remove(&id)?;
        match &f.peer {
            // Coverage questions and probes are small: they hold no slot.
            _ if matches!(f.target, Target::Probe) => {}
            Some(_) if matches!(f.target, Target::Coverage(_)) => {}
            Some(p) => {
                self.lan_in_flight = self.lan_in_flight.saturating_sub(1);
                if let Some(ps) = self.peers.get_mut(p) {
                    ps.in_flight = ps.in_flight.saturating_sub(1);
                }
            }
            None => self.dp_in_flight = self.dp_in_flight.saturating_sub(1),
        }
        match &f.target {
            Target::Runs(c, units, pack) => {
                if let Some(cs) = self.contents.get_mut(c) {
                    for &u in units {
                        if let Some(x) = cs.in_flight.get_mut(u) {
                            *x = false;
                        }
                        if *pack
                            && f.peer.is_none()
                            && let Some(fr) = cs.frame.get(u)
                        {
                            cs.frames_out.remove(fr);
                        }
                    }
                }
            }
            Target::Item(i) => {
                if let Some(is) = self.items.get_mut(i) {
                    is.in_flight = is.in_flight.saturating_sub(1);
                    if f.peer.is_none() {
                        is.dp_in_flight = false;
                    }
                }
            }
            Target::Coverage(_) | Target::Probe => {}
        }
        Some(f)
    }

    /// A claim not backed: the peer loses its claims (on `content`, or all
    /// for an item) and, at the limit, is banned.
    pub(super) fn strike(&mut self, peer: P, content: Option<ContentId>) {
        let limit = self.cfg.strikes_to_ban;
        let Some(ps) = self.peers.get_mut(&peer) else {
            return;
        };
        if ps.banned {
            return;
        }
        ps.strikes += 1;
        let strikes = ps.strikes;
        self.forget_claims(&peer, content);
        if strikes >= limit {
            self.ban(peer, BanReason::Unbacked { strikes });
        }
    }

    /// `peer` loses what it claimed of `content` (or of every content)
    /// until it says so again; it is asked again after
    /// [`Config::retry_ms`].
    pub(super) fn forget_claims(&mut self, peer: &P, content: Option<ContentId>) {
        let until = self.now.plus_ms(self.cfg.retry_ms);
        if !self.peers.contains_key(peer) {
            return;
        }
        // Every content concerned, asked about before or not: one that was
        // never answered is not asked again before `until` either.
        for (k, cs) in self.contents.iter_mut() {
            if content.is_none_or(|c| c == *k) {
                cs.covers.insert(
                    peer.clone(),
                    Cover {
                        ranges: RangeSet::new(),
                        has_base: false,
                        fresh_until: until,
                        quiet: 0,
                    },
                );
            }
        }
        self.all_dirty = true;
        self.peers_gen += 1;
    }

    /// Forgets what `peer` claimed of every content.
    pub(super) fn forget_covers(&mut self, peer: &P) {
        for cs in self.contents.values_mut() {
            cs.covers.remove(peer);
        }
    }

    /// Forgets every request in flight to `peer` (it left, or is banned).
    pub(super) fn end_requests_to(&mut self, peer: &P) {
        let ids: Vec<RequestId> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.peer.as_ref() == Some(peer))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.end(id);
        }
    }

    pub(super) fn ban(&mut self, peer: P, reason: BanReason) {
        let ps = self.peers.entry(peer.clone()).or_default();
        if ps.banned {
            return;
        }
        ps.banned = true;
        self.forget_covers(&peer);
        self.all_dirty = true;
        self.peers_gen += 1;
        self.end_requests_to(&peer);
        self.actions.push_back(Action::Ban { peer, reason });
    }

    /// The DP did not answer (a transient error): wait with backoff, or
    /// give up past [`Config::dp_give_up_ms`].
    pub(super) fn dp_down(&mut self, detail: String) {
        self.dp_errors += 1;
        let since = *self.dp_down_since.get_or_insert(self.now);
        let down_ms = self.now.0.saturating_sub(since.0);
        if self.cfg.dp_give_up_ms.is_some_and(|limit| down_ms >= limit) {
            self.fail(format!(
                "cannot reach the DP (for {} s): {detail}",
                down_ms / 1000
            ));
            return;
        }
        if self.stalled {
            // The DP is down: that explains the subnet's stall too. Wait
            // for the master (which retries) a whole stall period again
            // rather than race it when the DP returns.
            self.stalled = false;
            self.last_progress = self.now;
        }
        self.dp_backoff_ms =
            (self.dp_backoff_ms * 2).clamp(self.cfg.dp_backoff_min_ms, self.cfg.dp_backoff_max_ms);
        self.dp_retry_at = Some(self.now.plus_ms(self.dp_backoff_ms));
    }

    pub(super) fn fail(&mut self, reason: String) {
        if !self.failed {
            self.failed = true;
            let ids: Vec<RequestId> = self.in_flight.keys().copied().collect();
            for id in ids {
                self.end(id);
            }
            self.actions.push_back(Action::Failed { reason });
        }
    }

    /// Whether `peer` may be asked now.
    pub(super) fn usable(&self, p: &PeerState) -> bool {
        !p.banned && p.ignored_until.is_none()
    }

    /// Whether coverage questions about `c` are unanswered: the DP waits
    /// for them (the subnet's holders are asked before the WAN is used).
    pub(super) fn coverage_pending(&self, c: ContentId) -> bool {
        self.in_flight
            .values()
            .any(|f| f.target == Target::Coverage(c))
    }

    pub(super) fn peer_deadline(&self, bytes: u64) -> Timestamp {
        self.now.plus_ms(
            self.cfg.peer_deadline_ms + self.cfg.peer_deadline_ms_per_mib * bytes.div_ceil(1 << 20),
        )
    }

    /// Issues what can be issued now.
    pub(super) fn schedule(&mut self) {
        if self.failed || self.finished {
            return;
        }
        if !self.has_work() {
            let pending = self
                .in_flight
                .values()
                .any(|f| !matches!(f.target, Target::Probe | Target::Coverage(_)));
            if self.started && !pending {
                self.finished = true;
                self.actions.push_back(Action::Done);
            }
            return;
        }
        self.schedule_items();
        let ids: Vec<ContentId> = if std::mem::take(&mut self.all_dirty) {
            self.dirty.clear();
            self.contents.keys().copied().collect()
        } else {
            std::mem::take(&mut self.dirty).into_iter().collect()
        };
        for c in ids {
            if self.contents.get(&c).is_some_and(|cs| cs.left > 0) {
                self.schedule_content(c);
            }
        }
    }

    pub(super) fn schedule_items(&mut self) {
        if self.items_left == 0 {
            return;
        }
        let items: Vec<ItemId> = self
            .items
            .iter()
            .filter(|(_, i)| !i.done)
            .map(|(k, _)| *k)
            .collect();
        for item in items {
            // Peers first: every usable peer that did not say it lacks it,
            // in parallel within the caps.
            // A non-master asks again (the master may have it by now); the
            // master asks each peer once, then goes to the DP.
            let recent = |p: &PeerState| {
                p.lacks
                    .get(&item)
                    .is_some_and(|l| self.may_use_dp() || self.now < l.until(self.cfg.retry_ms))
            };
            let from = self.items[&item].from;
            let candidates: Vec<P> = self
                .peers
                .iter()
                .filter(|_| from != ItemFrom::DpOnly)
                .filter(|(_, p)| self.usable(p) && p.busy_until.is_none() && !recent(p))
                .filter(|(_, p)| p.in_flight < self.cfg.peer_in_flight)
                .map(|(k, _)| k.clone())
                .collect();
            let asking = self
                .in_flight
                .values()
                .filter(|f| f.target == Target::Item(item) && f.peer.is_some())
                .count();
            let mut asked = asking;
            for peer in candidates {
                if asked >= self.cfg.peer_in_flight.max(2)
                    || self.lan_in_flight >= self.cfg.lan_in_flight
                {
                    break;
                }
                let already = self
                    .in_flight
                    .values()
                    .any(|f| f.target == Target::Item(item) && f.peer.as_ref() == Some(&peer));
                if already {
                    continue;
                }
                let id = self.id();
                let deadline = self.peer_deadline(1 << 20);
                self.issue(id, Some(peer.clone()), Target::Item(item), Some(deadline));
                self.actions.push_back(Action::ItemFromPeer {
                    id,
                    item,
                    peer,
                    deadline,
                });
                asked += 1;
            }
            // The DP when no peer may still have it.
            let state = &self.items[&item];
            let peers_left = from != ItemFrom::DpOnly
                && self.peers.values().any(|p| {
                    // The master does not wait on a busy peer for an item.
                    self.usable(p)
                        && !p.lacks.contains_key(&item)
                        && !(self.may_use_dp() && p.busy_until.is_some())
                });
            // An optional item is worth no wait: an agent that may not use
            // the DP takes it only from a peer that has it now.
            let peers_only = from == ItemFrom::PeersOnly
                || (from == ItemFrom::Optional && !(self.master || self.stalled));
            if peers_only {
                if asked == 0 && !peers_left {
                    // Nobody has it: the driver goes on without it.
                    if let Some(i) = self.items.get_mut(&item)
                        && !i.done
                    {
                        i.done = true;
                        self.items_left -= 1;
                    }
                    self.actions.push_back(Action::ItemUnavailable { item });
                }
                continue;
            }
            if !state.dp_in_flight
                && asked == 0
                && !peers_left
                && self.may_use_dp()
                && self.dp_in_flight < self.cfg.dp_in_flight
            {
                let id = self.id();
                self.issue(id, None, Target::Item(item), None);
                self.actions.push_back(Action::ItemFromDp { id, item });
            }
        }
    }

    pub(super) fn issue(
        &mut self,
        id: RequestId,
        peer: Option<P>,
        target: Target,
        deadline: Option<Timestamp>,
    ) {
        match &peer {
            Some(p) => {
                self.lan_in_flight += 1;
                if let Some(ps) = self.peers.get_mut(p) {
                    ps.in_flight += 1;
                }
            }
            None => self.dp_in_flight += 1,
        }
        match &target {
            Target::Runs(c, units, pack) => {
                if let Some(cs) = self.contents.get_mut(c) {
                    for &u in units {
                        cs.in_flight[u] = true;
                        if *pack
                            && peer.is_none()
                            && let Some(&f) = cs.frame.get(u).filter(|f| **f != NO_FRAME)
                        {
                            cs.frames_out.insert(f);
                        }
                    }
                }
            }
            Target::Item(i) => {
                if let Some(is) = self.items.get_mut(i) {
                    is.in_flight += 1;
                    if peer.is_none() {
                        is.dp_in_flight = true;
                    }
                }
            }
            Target::Coverage(_) | Target::Probe => {}
        }
        self.in_flight.insert(
            id,
            InFlight {
                peer,
                target,
                deadline,
            },
        );
    }

    pub(super) fn schedule_content(&mut self, c: ContentId) {
        let Some(cs) = self.contents.get_mut(&c) else {
            return;
        };
        while cs.cursor < cs.units.len() && cs.done[cs.cursor] {
            cs.cursor += 1;
        }
        if self.waits_for_holders(c) {
            return;
        }
        let pending = self.coverage_pending(c);
        let cs = &self.contents[&c];
        // Where each waiting unit comes from (`swarm`'s rules), unit by
        // unit, until nothing more can be issued now.
        let mut view: View<'_, P> = View {
            have_base: cs.have_base,
            holders: Vec::with_capacity(cs.covers.len()),
            ..View::default()
        };
        // Requests each usable peer may still take, sorted by peer.
        let mut room: Room<P> = Vec::with_capacity(self.peers.len());
        let mut stale = false;
        // Something could not be issued for want of room.
        let mut blocked = false;
        // Peers and claims are both sorted by peer: one pass over both.
        let mut covers = cs.covers.iter().peekable();
        for (p, ps) in &self.peers {
            while covers.next_if(|(q, _)| *q < p).is_some() {}
            let cover = covers.next_if(|(q, _)| *q == p).map(|(_, c)| c);
            if !self.usable(ps) {
                continue;
            }
            let free = self.cfg.peer_in_flight.saturating_sub(ps.in_flight);
            match cover {
                Some(cover) => {
                    stale |= cover.fresh_until <= self.now;
                    if !cover.ranges.is_empty() {
                        blocked |= free == 0;
                        view.holders.push(Holder {
                            peer: p.clone(),
                            ranges: &cover.ranges,
                            busy: free == 0 || ps.busy_until.is_some(),
                        });
                    }
                    if cover.has_base {
                        view.base_holders.push(p.clone());
                    }
                }
                None => stale = true,
            }
            room.push((p.clone(), free));
        }
        // The WAN only once every peer's word on `c` is in and fresh.
        let may_use_dp = self.may_use_dp() && !pending && !stale;
        view.may_use_dp = may_use_dp;
        let lan_room = self.cfg.lan_in_flight.saturating_sub(self.lan_in_flight);
        let dp_room = self.cfg.dp_in_flight.saturating_sub(self.dp_in_flight);
        let mut sched = Scheduler::default();
        let mut local: Vec<usize> = Vec::new();
        // (from, units, next offset, bytes)
        let mut lan: Vec<(RunsFrom<P>, Vec<usize>, u64, u64)> = Vec::new();
        // (pack, units, bytes, its frames)
        let mut dp: Vec<(bool, Vec<usize>, u64, Vec<u32>)> = Vec::new();
        let mut hungry = false;
        // What some holder has: a unit outside it has no peer source, which
        // is known without asking each holder.
        if cs.held_gen != self.peers_gen {
            let mut all = RangeSet::new();
            for h in &view.holders {
                all.extend(h.ranges);
            }
            let stamp = self.peers_gen;
            drop(view);
            if let Some(c) = self.contents.get_mut(&c) {
                c.held = all;
                c.held_gen = stamp;
            }
            return self.schedule_content(c);
        }
        let held = &cs.held;
        let alt = !view.base_holders.is_empty();
        // Without the DP or seed runs to copy, only units within what peers
        // hold can move: those are looked at, not every unit.
        let seeds = (cs.have_base || alt) && cs.seeds_left > 0;
        let sparse = !may_use_dp && !seeds;
        let order: Box<dyn Iterator<Item = usize>> = if sparse {
            // One pass over the units waiting and the ranges held, both
            // sorted: those within a held range are candidates; any other
            // makes the content hungry.
            let mut v = Vec::new();
            let ranges = held.ranges();
            let mut r = 0;
            for i in cs.cursor..cs.units.len() {
                if cs.done[i] {
                    continue;
                }
                let u = cs.units[i];
                while r < ranges.len() && ranges[r].0 + ranges[r].1 <= u.offset {
                    r += 1;
                }
                match ranges.get(r) {
                    Some(&(o, l)) if o <= u.offset && u.offset + u.len <= o + l => v.push(i),
                    _ => hungry = true,
                }
            }
            Box::new(v.into_iter())
        } else {
            Box::new(cs.cursor..cs.units.len())
        };
        // Holders we may still send a request to; in the sparse case none
        // left means nothing more can be issued.
        let mut open = view.holders.iter().filter(|h| !h.busy).count();
        for i in order {
            if cs.done[i] || cs.in_flight[i] {
                continue;
            }
            if sparse && open == 0 {
                // Only the last request may still grow, by a unit that
                // follows it.
                let u = cs.units[i];
                let grows = lan.last().is_some_and(|b| match &b.0 {
                    RunsFrom::Peer(p) => {
                        b.2 == u.offset
                            && b.3 + u.len <= MAX_RANGE
                            && view
                                .ranges_of(p)
                                .is_some_and(|r| r.covers(u.offset, u.offset + u.len))
                    }
                    _ => false,
                });
                if !grows {
                    blocked = true;
                    break;
                }
            }
            let lan_full = lan.len() >= lan_room;
            let dp_full =
                dp.len() >= dp_room && dp.last().is_none_or(|b| b.2 >= self.cfg.dp_request_bytes);
            let local_full = !cs.have_base || cs.seeds_left == 0 || local.len() >= 1024;
            if lan_full && (dp_full || !may_use_dp) && local_full {
                // Nothing more can be issued now: not starving either.
                blocked = true;
                break;
            }
            let u = cs.units[i];
            let seed_source = u.seed_offset.is_some() && (cs.have_base || alt);
            if !may_use_dp && !seed_source && !held.covers(u.offset, u.offset + u.len) {
                hungry = true;
                continue;
            }
            match sched.decide(&u, &view) {
                Some(Source::Local) => {
                    if local.len() < 1024 {
                        local.push(i);
                    }
                }
                Some(Source::Peer(p)) => {
                    let was = room_of(&room, &p);
                    let from = RunsFrom::Peer(p.clone());
                    blocked |=
                        !self.batch_peer(&mut lan, &mut room, lan_room, from, i, u.offset, u.len);
                    if was > 0 && room_of(&room, &p) == 0 {
                        open = open.saturating_sub(1);
                    }
                }
                Some(Source::AltCopy(p)) => {
                    let at = u.seed_offset.unwrap_or(0);
                    let from = RunsFrom::AltCopy(p);
                    blocked |= !self.batch_peer(&mut lan, &mut room, lan_room, from, i, at, u.len);
                }
                Some(Source::Dp) => {
                    // Packs hold origin runs only.
                    let pack = cs.pack && !cs.raw_only[i] && u.seed_offset.is_none();
                    let frame = cs.frame.get(i).copied().filter(|f| pack && *f != NO_FRAME);
                    // Its frame is on its way: it comes with it.
                    if frame.is_some_and(|f| cs.frames_out.contains(&f)) {
                        continue;
                    }
                    // Its frame is in a request of this pass: that one.
                    let with_frame = frame.and_then(|f| dp.iter().position(|b| b.3.contains(&f)));
                    let fits = dp
                        .last()
                        .is_some_and(|b| b.0 == pack && b.2 + u.len <= self.cfg.dp_request_bytes);
                    let at = with_frame.or(fits.then(|| dp.len().saturating_sub(1)));
                    if let Some(b) = at.and_then(|k| dp.get_mut(k)) {
                        b.1.push(i);
                        b.2 += u.len;
                        b.3.extend(frame.filter(|f| !b.3.contains(f)));
                    } else if dp.len() < dp_room {
                        dp.push((pack, vec![i], u.len, frame.into_iter().collect()));
                    } else {
                        blocked = true;
                    }
                }
                None => hungry = true,
            }
        }
        let ask = stale && hungry;
        if let Some(cs) = self.contents.get_mut(&c) {
            cs.hungry = hungry;
        }
        if blocked {
            self.starved.insert(c);
        } else {
            self.starved.remove(&c);
        }

        // Issue what was decided.
        if !local.is_empty() {
            if let Some(cs) = self.contents.get_mut(&c) {
                for &i in &local {
                    cs.in_flight[i] = true;
                }
            }
            // Copies are local: marked in flight until reported done.
            self.actions.push_back(Action::CopySeeds {
                content: c,
                units: local,
            });
        }
        for (from, units, _, bytes) in lan {
            let peer = match &from {
                RunsFrom::Peer(p) | RunsFrom::AltCopy(p) => p.clone(),
                RunsFrom::Dp { .. } => continue,
            };
            let id = self.id();
            let deadline = self.peer_deadline(bytes);
            self.issue(
                id,
                Some(peer),
                Target::Runs(c, units.clone(), false),
                Some(deadline),
            );
            self.actions.push_back(Action::FetchRuns {
                id,
                content: c,
                from,
                units,
                deadline: Some(deadline),
            });
        }
        for (pack, units, _, _) in dp {
            let id = self.id();
            self.issue(id, None, Target::Runs(c, units.clone(), pack), None);
            self.actions.push_back(Action::FetchRuns {
                id,
                content: c,
                from: RunsFrom::Dp { pack },
                units,
                deadline: None,
            });
        }
        if ask {
            self.ask_coverage(c);
        }
    }

    /// The common case of a peer waiting on its subnet, decided without
    /// looking at each peer: no DP, no seed runs to copy, and no unit both
    /// waiting and held by some peer. Nothing can be issued; stale claims
    /// are asked again if some unit has no holder. False: the full pass
    /// decides.
    fn waits_for_holders(&mut self, c: ContentId) -> bool {
        let Some(cs) = self.contents.get(&c) else {
            return true;
        };
        if self.may_use_dp() || cs.held_gen != self.peers_gen {
            return false;
        }
        if cs.seeds_left > 0 && (cs.have_base || cs.covers.values().any(|x| x.has_base)) {
            return false;
        }
        let mut hungry = false;
        for i in cs.cursor..cs.units.len() {
            let (Some(u), Some(false)) = (cs.units.get(i), cs.done.get(i).copied()) else {
                continue;
            };
            if !cs.held.covers(u.offset, u.offset + u.len) {
                hungry = true;
            } else if cs.in_flight.get(i) == Some(&false) {
                return false;
            }
        }
        let now = self.now;
        let stale =
            cs.covers.len() < self.peers.len() || cs.covers.values().any(|x| x.fresh_until <= now);
        if let Some(cs) = self.contents.get_mut(&c) {
            cs.hungry = hungry;
        }
        self.starved.remove(&c);
        if hungry && stale {
            self.ask_coverage(c);
        }
        true
    }

    /// Adds unit `i` (at `at` in what the peer is asked for) to a batch for
    /// `from`: the last one if it is the same peer and contiguous and small
    /// enough, else a new one if the caps allow; false if they do not.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn batch_peer(
        &self,
        lan: &mut Vec<(RunsFrom<P>, Vec<usize>, u64, u64)>,
        room: &mut Room<P>,
        lan_room: usize,
        from: RunsFrom<P>,
        i: usize,
        at: u64,
        len: u64,
    ) -> bool {
        if let Some(b) = lan.last_mut()
            && b.0 == from
            && b.2 == at
            && b.3 + len <= MAX_RANGE
        {
            b.1.push(i);
            b.2 += len;
            b.3 += len;
            return true;
        }
        let peer = match &from {
            RunsFrom::Peer(p) | RunsFrom::AltCopy(p) => p,
            RunsFrom::Dp { .. } => return false,
        };
        let slot = room
            .binary_search_by(|(q, _)| q.cmp(peer))
            .ok()
            .and_then(|k| room.get_mut(k))
            .filter(|(_, free)| *free > 0);
        if lan.len() < lan_room
            && let Some((_, free)) = slot
        {
            *free -= 1;
            lan.push((from, vec![i], at + len, len));
            true
        } else {
            false
        }
    }

    /// Asks every usable peer whose coverage of `c` is stale (never heard,
    /// or nothing heard for [`Config::coverage_refresh_ms`]) what it holds.
    pub(super) fn ask_coverage(&mut self, c: ContentId) {
        let now = self.now;
        let peers: Vec<P> = self
            .peers
            .iter()
            .filter(|(_, p)| self.usable(p))
            .filter(|(k, _)| {
                self.contents
                    .get(&c)
                    .and_then(|cs| cs.covers.get(*k))
                    .is_none_or(|x| x.fresh_until <= now)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for peer in peers {
            let pending = self
                .in_flight
                .values()
                .any(|f| f.target == Target::Coverage(c) && f.peer.as_ref() == Some(&peer));
            if pending {
                continue;
            }
            let id = self.id();
            let deadline = self.peer_deadline(0);
            // Coverage questions are small: they hold no slot.
            self.in_flight.insert(
                id,
                InFlight {
                    peer: Some(peer.clone()),
                    target: Target::Coverage(c),
                    deadline: Some(deadline),
                },
            );
            self.actions.push_back(Action::AskCoverage {
                id,
                peer,
                content: c,
                deadline,
            });
        }
    }
}

impl<P> ContentState<P> {
    /// The units not done that `claims` cover whole: all a peer's claim is
    /// used for. Claims are kept clipped so, since a subnet's holdings are
    /// mostly what every agent already has (the seed runs), the claims kept
    /// per peer stay small.
    pub(super) fn waiting_in(&self, claims: &RangeSet) -> RangeSet {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &(o, l) in claims.ranges() {
            let end = o.saturating_add(l);
            let first = self
                .units
                .partition_point(|u| u.offset < o)
                .max(self.cursor);
            let units = self.units.get(first..).unwrap_or_default();
            let done = self.done.get(first..).unwrap_or_default();
            for (u, d) in units.iter().zip(done) {
                if u.offset.saturating_add(u.len) > end {
                    break;
                }
                if *d {
                    continue;
                }
                match out.last_mut() {
                    Some(last) if last.0 + last.1 == u.offset => last.1 += u.len,
                    _ => out.push((u.offset, u.len)),
                }
            }
        }
        RangeSet::from_ranges(&out)
    }

    /// Whether a unit neither done nor asked for overlaps
    /// `offset..offset + len`.
    pub(super) fn waits_within(&self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len);
        let first = self.units.partition_point(|u| u.offset + u.len <= offset);
        let units = self.units.get(first..).unwrap_or_default();
        let done = self.done.get(first..).unwrap_or_default();
        let asked = self.in_flight.get(first..).unwrap_or_default();
        units
            .iter()
            .zip(done.iter().zip(asked))
            .take_while(|(u, _)| u.offset < end)
            .any(|(_, (d, a))| !d && !a)
    }
}
