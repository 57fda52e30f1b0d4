//! Links as FIFO servers at request granularity: the DP's uplink (shared
//! by every branch), each branch's WAN link (shared by its flows; packet
//! loss caps a flow at the Mathis et al. TCP rate), each agent's LAN port
//! (a switched LAN: a transfer holds the sender's and the receiver's
//! ports), and the windows when the DP or a branch's link is down.

/// Microseconds of simulated time.
pub type Us = u64;

/// Microseconds in a second.
pub const SEC: f64 = 1e6;

/// The DP client's own retries: a DP that comes back within this long is
/// waited for by the request itself; after it, the request fails with a
/// transient error (the transfer then backs off).
pub const CLIENT_GIVE_UP: Us = 60_000_000;

/// A connection attempt over a cut link fails after this long.
pub const CONNECT_TIMEOUT: Us = 10_000_000;

/// A link: a FIFO server with a rate and a latency.
#[derive(Debug, Clone)]
pub struct Link {
    us_per_byte: f64,
    latency: Us,
    busy: Us,
}

impl Link {
    /// `mbps` megabits per second, `latency_ms` one way.
    pub fn new(mbps: f64, latency_ms: f64) -> Link {
        Link {
            us_per_byte: 8.0 / mbps,
            latency: (latency_ms * 1000.0) as Us,
            busy: 0,
        }
    }

    /// One-way latency.
    pub fn latency(&self) -> Us {
        self.latency
    }
}

/// A branch's WAN link.
#[derive(Debug, Clone)]
pub struct Wan {
    /// The link.
    pub link: Link,
    /// Per byte, the slowest a single flow goes with the link's loss.
    pub loss_cap_us_per_byte: f64,
    /// Windows when it is cut.
    pub cuts: Vec<(Us, Us)>,
}

impl Wan {
    /// A link of `mbps` with `latency_ms` one way and `loss` (0..1).
    pub fn new(mbps: f64, latency_ms: f64, loss: f64) -> Wan {
        let rtt_s = 2.0 * latency_ms / 1000.0;
        let loss_cap_us_per_byte = if loss > 0.0 && rtt_s > 0.0 {
            // Mathis: rate <= MSS / RTT * 1.22 / sqrt(p), bytes/s.
            let rate = 1460.0 / rtt_s * 1.22 / loss.sqrt();
            SEC / rate
        } else {
            0.0
        };
        Wan {
            link: Link::new(mbps, latency_ms),
            loss_cap_us_per_byte,
            cuts: Vec::new(),
        }
    }
}

/// A transfer from the DP: when the link starts and stops carrying it
/// (to account for a receiver that dies mid-way) and when it arrives.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// The branch link starts carrying it.
    pub start: Us,
    /// The branch link is done with it.
    pub end: Us,
    /// The last byte arrives.
    pub arrive: Us,
}

/// Reserves the DP uplink and a branch's WAN link for `bytes` at `now`.
pub fn dp_send(dp: &mut Link, wan: &mut Wan, now: Us, bytes: u64) -> Sent {
    let dp_start = now.max(dp.busy);
    dp.busy = dp_start + (bytes as f64 * dp.us_per_byte) as Us;
    let l = &mut wan.link;
    let start = dp_start.max(l.busy);
    let on_link = (bytes as f64 * l.us_per_byte) as Us;
    l.busy = start + on_link;
    let flow = (bytes as f64 * wan.loss_cap_us_per_byte.max(l.us_per_byte)) as Us;
    Sent {
        start,
        end: start + on_link,
        arrive: start + on_link.max(flow) + l.latency + dp.latency,
    }
}

/// When every window containing `at` (and those it runs into) is over, if
/// `at` is in one.
pub fn up_again<'a>(at: Us, windows: impl Iterator<Item = &'a (Us, Us)> + Clone) -> Option<Us> {
    let mut t = at;
    loop {
        let next = windows
            .clone()
            .filter(|(s, e)| t >= *s && t < *e)
            .map(|w| w.1)
            .max();
        match next {
            Some(e) => t = e,
            None => break,
        }
    }
    (t > at).then_some(t)
}

/// The LAN: per agent, when its port is free sending and receiving.
#[derive(Debug, Default)]
pub struct Ports(Vec<(Us, Us)>);

impl Ports {
    /// Reserves `from`'s uplink and `to`'s downlink for `bytes` at `mbps`;
    /// returns the arrival time.
    pub fn send(
        &mut self,
        now: Us,
        from: usize,
        to: usize,
        bytes: u64,
        mbps: f64,
        latency: Us,
    ) -> Us {
        let n = from.max(to) + 1;
        if self.0.len() < n {
            self.0.resize(n, (0, 0));
        }
        let dur = (bytes as f64 * 8.0 / mbps) as Us;
        let start = now.max(self.0[from].0).max(self.0[to].1);
        self.0[from].0 = start + dur;
        self.0[to].1 = start + dur;
        start + dur + latency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_chain() {
        let w = [(10, 20), (15, 30), (40, 50)];
        assert_eq!(up_again(5, w.iter()), None);
        assert_eq!(up_again(12, w.iter()), Some(30));
        assert_eq!(up_again(30, w.iter()), None);
        assert_eq!(up_again(45, w.iter()), Some(50));
    }

    #[test]
    fn ports_queue() {
        let mut p = Ports::default();
        // 1000 bytes at 8 Mbit/s: 1000 us.
        assert_eq!(p.send(0, 0, 1, 1000, 8.0, 5), 1005);
        // The sender's port is busy until 1000.
        assert_eq!(p.send(0, 0, 2, 1000, 8.0, 5), 2005);
        // Another pair is not.
        assert_eq!(p.send(0, 3, 4, 1000, 8.0, 5), 1005);
    }
}
