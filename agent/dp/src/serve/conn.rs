//! Connections to the DP, bounded: anyone who can reach a DP can open
//! connections to it, so none of them may hold a resource for long without
//! sending or taking bytes.
//!
//! - At most [`ServeLimits::max_connections`] connections at once, and at
//!   most [`ServeLimits::max_connections_per_client`] from one address;
//!   beyond, a new connection is closed at once (counted in `/metrics`).
//! - A request's header must arrive whole within
//!   [`ServeLimits::header_timeout`] of the server starting to wait for it,
//!   which is also how long an idle keep-alive connection stays open (hyper's
//!   header read timeout): a slowloris client trickling a header byte by byte
//!   is closed then.
//! - A request body (only `POST /status` has one, at most 16 KiB) must
//!   arrive within [`ServeLimits::body_timeout`].
//! - A response whose client stops reading is dropped once no byte could be
//!   written for [`ServeLimits::stall_timeout`] ([`Stalling`]); a slow but
//!   moving client (a branch on a thin link) is never cut.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// The DP's bounds on connections and the status endpoint.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections at once (default 1,024).
    pub max_connections: usize,
    /// Connections at once from one client address (default 64).
    pub max_connections_per_client: usize,
    /// Time for a request header to arrive, and idle keep-alive time (default 20 s).
    pub header_timeout: Duration,
    /// Time for a request body to arrive (default 20 s).
    pub body_timeout: Duration,
    /// Time a response may wait for its client to take a byte (default 60 s).
    pub stall_timeout: Duration,
    /// Status reports accepted per client address and minute, also the burst (default 60).
    pub status_per_minute: u32,
    /// Size of the status log before it rotates (default 64 MiB; the log
    /// keeps one rotated file, so it takes at most twice this).
    pub status_log_bytes: u64,
    /// Reports are refused while the status log's file system has less free
    /// space than this (default 256 MiB).
    pub status_min_free_bytes: u64,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 1024,
            max_connections_per_client: 64,
            header_timeout: Duration::from_secs(20),
            body_timeout: Duration::from_secs(20),
            stall_timeout: Duration::from_secs(60),
            status_per_minute: 60,
            status_log_bytes: 64 << 20,
            status_min_free_bytes: 256 << 20,
        }
    }
}

/// Open connections, in all and per client address.
#[derive(Debug)]
pub struct Connections {
    max: usize,
    per_client: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    idle: Notify,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    conns: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    /// A table for at most `max` connections, `per_client` from one address.
    pub fn new(max: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Connections {
            max: max.max(1),
            per_client: per_client.max(1),
            open: Mutex::new((0, HashMap::new())),
            idle: Notify::new(),
        })
    }

    /// Admits a connection from `ip`, or `None` when a limit is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut g = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *g;
        let mine = per.get(&ip).copied().unwrap_or(0);
        if *total >= self.max || mine >= self.per_client {
            return None;
        }
        *total += 1;
        per.insert(ip, mine + 1);
        Some(Admitted {
            conns: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Waits until no connection is open.
    pub async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut g = self.conns.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *g;
        *total = total.saturating_sub(1);
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
        let empty = *total == 0;
        drop(g);
        if empty {
            self.conns.idle.notify_waiters();
        }
    }
}

/// A stream whose writes fail with `TimedOut` once one has waited
/// `timeout` without the peer taking a byte.
pub struct Stalling<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Stalling<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Stalling {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Called when a write is pending: arms the timer, or fails once it fired.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took no byte for the stall timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stalling<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stalling<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Status reports per client address: a token bucket each, in a table of
/// bounded size (when full, the entries of clients whose bucket has refilled
/// are dropped first: they lose nothing).
#[derive(Debug)]
pub struct RateLimit {
    per_minute: u32,
    table: Mutex<HashMap<IpAddr, (f64, tokio::time::Instant)>>,
}

/// Clients tracked at once.
const RATE_TABLE: usize = 65_536;

impl RateLimit {
    /// `per_minute` reports per client and minute, bursts of as many.
    pub fn new(per_minute: u32) -> Self {
        RateLimit {
            per_minute: per_minute.max(1),
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one report from `ip`'s bucket: `Ok`, or `Err(seconds)` until
    /// one is available.
    pub fn take(&self, ip: IpAddr) -> Result<(), u64> {
        let now = tokio::time::Instant::now();
        let cap = f64::from(self.per_minute);
        let per_sec = cap / 60.0;
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() >= RATE_TABLE && !t.contains_key(&ip) {
            t.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < cap
            });
            if t.len() >= RATE_TABLE {
                // Every tracked client is mid-burst: a new one waits.
                return Err(60);
            }
        }
        let (tokens, at) = t.entry(ip).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(cap);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_is_bounded_in_all_and_per_client() {
        let c = Connections::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = c.admit(a).unwrap();
        let _a2 = c.admit(a).unwrap();
        assert!(c.admit(a).is_none(), "third from one client");
        let _b1 = c.admit(b).unwrap();
        assert!(c.admit(b).is_none(), "fourth in all");
        drop(a1);
        let _b2 = c.admit(b).unwrap();
        assert_eq!(c.open(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn reports_are_rate_limited_per_client_and_refill() {
        let r = RateLimit::new(6);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..6 {
            assert!(r.take(a).is_ok());
        }
        let wait = r.take(a).unwrap_err();
        assert!((1..=10).contains(&wait), "{wait}");
        assert!(r.take(b).is_ok(), "another client has its own bucket");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(r.take(a).is_ok(), "one report per 10 s refills");
        assert!(r.take(a).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_too_long_fails() {
        use tokio::io::AsyncWriteExt;
        let (client, server) = tokio::io::duplex(16);
        let mut s = Stalling::new(server, Duration::from_secs(5));
        s.write_all(b"0123456789abcdef").await.unwrap();
        let t = tokio::time::Instant::now();
        let e = s.write_all(b"more").await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(t.elapsed() >= Duration::from_secs(5));
        drop(client);
    }
}
