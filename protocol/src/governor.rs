//! The WAN governor: how fast an agent may pull from the DP, decided from a
//! hard cap, an hourly schedule per weekday (like 1E Nomad's MaxWorkRates),
//! and, in background mode, a delay-based controller after LEDBAT (RFC 6817)
//! that backs off when round-trip time rises above its baseline, so that a
//! branch's interactive traffic is not hurt.
//!
//! Pacing is by reservation: a transfer of `n` bytes is scheduled to start when
//! the previous one has had its share of time at the current rate, and idle
//! time earns no credit. Over any interval the bytes admitted are at most the
//! rate times the interval plus one reservation, so there are no bursts above
//! the cap; the caller keeps reservations small (a read of a few KiB).
//!
//! Sans-IO: time and RTT samples come in, waits and rates go out. The agent
//! drives it with real reads; simnet with simulated links.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Queueing delay LEDBAT aims for (RFC 6817 §2.4: TARGET = 100 ms).
pub const TARGET_DELAY_MS: u64 = 100;
/// Base delay history: minima of this many one-minute buckets (RFC 6817 uses 10 minutes).
const BASE_HISTORY: usize = 10;
/// Current delay: minimum of the last few samples, to filter noise.
const CURRENT_SAMPLES: usize = 4;

/// An hourly schedule per weekday: the cap in bytes per second for each hour,
/// `None` for no cap, `Some(0)` to pause. Monday is day 0.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Schedule {
    /// `days[weekday][hour]`.
    pub days: [[Option<u64>; 24]; 7],
}

/// Governor settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GovernorConfig {
    /// Hard cap in bytes per second.
    pub max_rate_bps: Option<u64>,
    /// Caps by hour of the week.
    pub schedule: Option<Schedule>,
    /// Back off when round-trip time rises (LEDBAT-style).
    pub background: bool,
}

/// A local time slot for the schedule: weekday (Monday = 0) and hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// 0 = Monday … 6 = Sunday.
    pub weekday: u8,
    /// 0..=23.
    pub hour: u8,
}

/// Delay-based rate control (background mode).
#[derive(Debug, Clone)]
struct Ledbat {
    /// Minimum RTT per minute, newest last.
    base: Vec<(u64, u64)>,
    current: Vec<u64>,
    rate_bps: f64,
    last_decrease: Option<Timestamp>,
}

/// Lowest rate background mode goes down to.
const MIN_BACKGROUND_BPS: f64 = 16.0 * 1024.0;
/// Where background mode starts.
const START_BACKGROUND_BPS: f64 = 256.0 * 1024.0;

impl Ledbat {
    fn new() -> Self {
        Ledbat {
            base: Vec::new(),
            current: Vec::new(),
            rate_bps: START_BACKGROUND_BPS,
            last_decrease: None,
        }
    }

    fn base_delay(&self) -> Option<u64> {
        self.base.iter().map(|&(_, d)| d).min()
    }

    fn on_sample(&mut self, now: Timestamp, rtt_ms: u64, cap: Option<u64>) {
        let minute = now.0 / 60_000;
        match self.base.last_mut() {
            Some((m, d)) if *m == minute => *d = (*d).min(rtt_ms),
            _ => {
                self.base.push((minute, rtt_ms));
                if self.base.len() > BASE_HISTORY {
                    self.base.remove(0);
                }
            }
        }
        self.current.push(rtt_ms);
        if self.current.len() > CURRENT_SAMPLES {
            self.current.remove(0);
        }
        let current = self.current.iter().copied().min().unwrap_or(rtt_ms);
        let queuing = current.saturating_sub(self.base_delay().unwrap_or(current));
        let off_target = (TARGET_DELAY_MS as f64 - queuing as f64) / TARGET_DELAY_MS as f64;
        if off_target >= 0.0 {
            // Below target: grow additively, faster the further below.
            self.rate_bps += (self.rate_bps * 0.1 * off_target).max(8.0 * 1024.0 * off_target);
        } else {
            // Above target: back off multiplicatively, at most once per base delay.
            let base = self.base_delay().unwrap_or(rtt_ms).max(10);
            if self.last_decrease.is_none_or(|t| now.since(t) >= base) {
                self.rate_bps *= (1.0 + 0.5 * off_target.max(-1.0)).max(0.5);
                self.last_decrease = Some(now);
            }
        }
        let ceiling = cap.map_or(f64::MAX, |c| c as f64);
        self.rate_bps = self.rate_bps.clamp(
            MIN_BACKGROUND_BPS.min(ceiling),
            ceiling.max(MIN_BACKGROUND_BPS),
        );
    }
}

/// The governor of one agent's DP traffic.
#[derive(Debug, Clone)]
pub struct Governor {
    cfg: GovernorConfig,
    /// When the link is next free, in microseconds on the caller's clock.
    next_free_us: u64,
    ledbat: Option<Ledbat>,
}

impl Governor {
    /// A governor with `cfg`.
    pub fn new(cfg: GovernorConfig) -> Self {
        let ledbat = cfg.background.then(Ledbat::new);
        Governor {
            cfg,
            next_free_us: 0,
            ledbat,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GovernorConfig {
        &self.cfg
    }

    /// The cap from the configuration alone at `slot` (`None`: no cap).
    fn static_cap(&self, slot: Slot) -> Option<u64> {
        let scheduled = self
            .cfg
            .schedule
            .as_ref()
            .and_then(|s| {
                s.days
                    .get(usize::from(slot.weekday))
                    .and_then(|d| d.get(usize::from(slot.hour)))
                    .copied()
            })
            .flatten();
        match (self.cfg.max_rate_bps, scheduled) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The rate in force at `slot`, in bytes per second (`None`: no limit).
    pub fn rate(&self, slot: Slot) -> Option<u64> {
        let cap = self.static_cap(slot);
        match &self.ledbat {
            Some(l) => Some(match cap {
                Some(0) => 0,
                Some(c) => (l.rate_bps as u64).min(c),
                None => l.rate_bps as u64,
            }),
            None => cap,
        }
    }

    /// Reserves `bytes` of transfer at `now`; returns how many milliseconds to
    /// wait before doing it (0: go now). With the rate at 0 (paused by the
    /// schedule) returns `None`: try again later (the next hour).
    pub fn reserve(&mut self, now: Timestamp, slot: Slot, bytes: u64) -> Option<u64> {
        let Some(rate) = self.rate(slot) else {
            return Some(0);
        };
        if rate == 0 {
            return None;
        }
        let now_us = now.0.saturating_mul(1000);
        let start_us = self.next_free_us.max(now_us);
        self.next_free_us = start_us + bytes.saturating_mul(1_000_000) / rate;
        Some((start_us - now_us).div_ceil(1000))
    }

    /// Feeds a round-trip time sample (background mode uses it).
    pub fn handle_rtt(&mut self, now: Timestamp, rtt_ms: u64, slot: Slot) {
        let cap = self.static_cap(slot);
        if let Some(l) = &mut self.ledbat {
            l.on_sample(now, rtt_ms, cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOT: Slot = Slot {
        weekday: 0,
        hour: 0,
    };

    #[test]
    fn no_config_no_wait() {
        let mut g = Governor::new(GovernorConfig::default());
        assert_eq!(g.rate(SLOT), None);
        assert_eq!(g.reserve(Timestamp(5), SLOT, 1 << 30), Some(0));
    }

    #[test]
    fn cap_paces_without_bursts() {
        let mut g = Governor::new(GovernorConfig {
            max_rate_bps: Some(100_000),
            ..Default::default()
        });
        // A reader reading 10 kB at a time as fast as allowed, for 10 s.
        let mut now = Timestamp(0);
        let mut log = Vec::new();
        while now.0 < 10_000 {
            let wait = g.reserve(now, SLOT, 10_000).unwrap();
            now = now.plus_ms(wait);
            log.push(now.0);
        }
        // Every one-second window admits at most rate + one reservation.
        for (i, &t) in log.iter().enumerate() {
            let in_window = log[i..].iter().take_while(|&&u| u < t + 1000).count() as u64;
            assert!(
                in_window * 10_000 <= 110_000,
                "window at {t}: {in_window} reservations"
            );
        }
        assert!(
            (95..=101).contains(&log.len()),
            "{} reservations in 10 s",
            log.len()
        );
        // Idle time earns no credit.
        let wait = g.reserve(Timestamp(60_000), SLOT, 10_000).unwrap();
        assert_eq!(wait, 0);
        assert_eq!(g.reserve(Timestamp(60_000), SLOT, 10_000), Some(100));
    }

    #[test]
    fn schedule_caps_and_pauses() {
        let mut s = Schedule::default();
        s.days[2][9] = Some(50_000);
        s.days[2][10] = Some(0);
        let g = Governor::new(GovernorConfig {
            max_rate_bps: Some(80_000),
            schedule: Some(s),
            background: false,
        });
        assert_eq!(
            g.rate(Slot {
                weekday: 2,
                hour: 8
            }),
            Some(80_000)
        );
        assert_eq!(
            g.rate(Slot {
                weekday: 2,
                hour: 9
            }),
            Some(50_000)
        );
        assert_eq!(
            g.rate(Slot {
                weekday: 2,
                hour: 10
            }),
            Some(0)
        );
        let mut g = g;
        assert_eq!(
            g.reserve(
                Timestamp(0),
                Slot {
                    weekday: 2,
                    hour: 10
                },
                1
            ),
            None
        );
    }

    #[test]
    fn background_backs_off_when_delay_rises_and_recovers() {
        let mut g = Governor::new(GovernorConfig {
            background: true,
            ..Default::default()
        });
        let mut now = Timestamp(0);
        // Quiet link: 20 ms RTT; the rate grows.
        for _ in 0..200 {
            now = now.plus_ms(50);
            g.handle_rtt(now, 20, SLOT);
        }
        let grown = g.rate(SLOT).unwrap();
        assert!(grown > 1_000_000, "grew to {grown}");
        // Queues build: 20 + 250 ms. The rate falls fast.
        for _ in 0..40 {
            now = now.plus_ms(50);
            g.handle_rtt(now, 270, SLOT);
        }
        let backed_off = g.rate(SLOT).unwrap();
        assert!(
            backed_off < grown / 10,
            "backed off to {backed_off} from {grown}"
        );
        assert!(backed_off >= MIN_BACKGROUND_BPS as u64);
        // Queues drain: it recovers.
        for _ in 0..200 {
            now = now.plus_ms(50);
            g.handle_rtt(now, 22, SLOT);
        }
        assert!(g.rate(SLOT).unwrap() > backed_off * 4);
        // A hard cap still applies.
        let mut capped = Governor::new(GovernorConfig {
            background: true,
            max_rate_bps: Some(300_000),
            ..Default::default()
        });
        for _ in 0..500 {
            now = now.plus_ms(50);
            capped.handle_rtt(now, 20, SLOT);
        }
        assert_eq!(capped.rate(SLOT), Some(300_000));
    }
}
