//! The HTTP client that talks to a DP (`peerdelta dp serve`, nginx, or any
//! server with Range support).
//!
//! - Whole small files (index, manifests, needs lists) with a size limit.
//! - Range requests, several ranges per request (`multipart/byteranges`), with
//!   servers that merge ranges, answer one part, or ignore Range altogether.
//! - Every body byte is counted (WAN bytes) and paced by the WAN governor as
//!   it is read, so the server is slowed by TCP flow control, not bursts.
//! - Transient failures (connection refused or reset, timeouts, 5xx) are
//!   retried with backoff for a while (a DP restart, a network blip), then
//!   reported with the URL and the cause.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use peerdelta_protocol::byteranges;
use peerdelta_protocol::fetchplan::RequestLimits;
use peerdelta_protocol::governor::{Governor, GovernorConfig, Slot};
use peerdelta_protocol::status::StatusReport;
use peerdelta_protocol::time::Timestamp;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE, RANGE};

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// 404.
    #[error("{url}: not found on the DP")]
    NotFound {
        /// The URL.
        url: String,
    },
    /// Another error status.
    #[error("{url}: the DP answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// The DP could not be reached (after retries).
    #[error("cannot reach the DP at {url}: {detail}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Cause.
        detail: String,
    },
    /// The answer does not make sense.
    #[error("{url}: the DP answered garbage: {what}")]
    Garbage {
        /// The URL.
        url: String,
        /// What was wrong.
        what: String,
    },
}

impl FetchError {
    fn transient(&self) -> bool {
        match self {
            FetchError::Unreachable { .. } => true,
            FetchError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// Counters of one client.
#[derive(Debug, Default)]
pub struct Counters {
    /// Body bytes received from the DP.
    pub wan_bytes: AtomicU64,
    /// Requests sent (retries included).
    pub requests: AtomicU64,
}

/// How long to keep retrying transient failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Give up after this long without progress.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            give_up_after: Duration::from_secs(60),
        }
    }
}

/// A DP client.
#[derive(Clone)]
pub struct DpClient {
    base: String,
    http: reqwest::Client,
    governor: Arc<Mutex<Governor>>,
    /// Counters.
    pub counters: Arc<Counters>,
    retry: RetryPolicy,
}

/// The local weekday and hour, for the governor's schedule.
#[allow(unsafe_code)]
pub fn local_slot() -> Slot {
    let secs = peerdelta_store::util::now_ms() / 1000;
    let t = secs as libc::time_t;
    let mut tm = std::mem::MaybeUninit::<libc::tm>::zeroed();
    // SAFETY: `localtime_r` writes a `struct tm` into the buffer we own and
    // reads only `t`; the zeroed buffer is a valid `tm` even if it fails.
    let tm = unsafe {
        libc::localtime_r(&t, tm.as_mut_ptr());
        tm.assume_init()
    };
    Slot {
        weekday: ((tm.tm_wday + 6) % 7) as u8,
        hour: tm.tm_hour.clamp(0, 23) as u8,
    }
}

impl DpClient {
    /// A client for the DP at `base` (`http://host:port` or with a path prefix).
    pub fn new(base: &str, governor: GovernorConfig, retry: RetryPolicy) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!(peerdelta_store::usage!(
                "the DP URL must start with http:// or https://: {base}"
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(30))
            .user_agent(concat!("peerdelta/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(DpClient {
            base,
            http,
            governor: Arc::new(Mutex::new(Governor::new(governor))),
            counters: Arc::new(Counters::default()),
            retry,
        })
    }

    /// The URL of a library path.
    pub fn url(&self, rel: &str) -> String {
        format!("{}/{}", self.base, rel.trim_start_matches('/'))
    }

    /// Bytes received from the DP so far.
    pub fn wan_bytes(&self) -> u64 {
        self.counters.wan_bytes.load(Ordering::Relaxed)
    }

    /// Retries `op` on transient failures with exponential backoff.
    async fn retrying<T, F, Fut>(&self, url: &str, mut op: F) -> Result<T, FetchError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, FetchError>>,
    {
        let start = Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.transient() && start.elapsed() < self.retry.give_up_after => {
                    tracing::warn!("{url}: {e}; retrying in {} ms", delay.as_millis());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one GET, measures the time to the first byte for the governor.
    async fn send(&self, url: &str, range: Option<&str>) -> Result<reqwest::Response, FetchError> {
        let mut req = self.http.get(url);
        if let Some(r) = range {
            req = req.header(RANGE, r);
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let t = Instant::now();
        let resp = req.send().await.map_err(|e| FetchError::Unreachable {
            url: url.to_owned(),
            detail: chain(&e),
        })?;
        let rtt = t.elapsed().as_millis() as u64;
        self.governor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .handle_rtt(
                Timestamp(peerdelta_store::util::now_ms()),
                rtt,
                local_slot(),
            );
        Ok(resp)
    }

    /// Reads a body up to `limit` bytes, counting it, and pacing what goes
    /// beyond the `prepaid` bytes reserved before the request.
    async fn body(
        &self,
        url: &str,
        mut resp: reqwest::Response,
        limit: usize,
        prepaid: u64,
    ) -> Result<Vec<u8>, FetchError> {
        if let Some(len) = resp.content_length()
            && len as usize > limit
        {
            return Err(FetchError::Garbage {
                url: url.to_owned(),
                what: format!("{len} bytes, more than the {limit} expected"),
            });
        }
        let mut out = Vec::new();
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    return Err(FetchError::Unreachable {
                        url: url.to_owned(),
                        detail: chain(&e),
                    });
                }
            };
            self.counters
                .wan_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if out.len() + chunk.len() > limit {
                return Err(FetchError::Garbage {
                    url: url.to_owned(),
                    what: format!("more than the {limit} bytes expected"),
                });
            }
            let before = out.len() as u64;
            out.extend_from_slice(&chunk);
            let unpaid = (out.len() as u64).saturating_sub(prepaid.max(before));
            if unpaid > 0 {
                self.pace(unpaid).await;
            }
        }
        Ok(out)
    }

    /// Waits until the governor admits `bytes` more.
    async fn pace(&self, bytes: u64) {
        loop {
            let wait = self
                .governor
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reserve(
                    Timestamp(peerdelta_store::util::now_ms()),
                    local_slot(),
                    bytes,
                );
            match wait {
                Some(0) => return,
                Some(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    return;
                }
                None => {
                    // Paused by the schedule: look again in a minute.
                    tracing::info!("the governor's schedule pauses DP transfers now; waiting");
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            }
        }
    }

    /// The largest request the governor's current rate allows for smooth
    /// traffic: a quarter of a second's worth (at least 64 KiB), so that no
    /// one-second window carries more than the cap plus a quarter.
    pub fn limits(&self, base: RequestLimits) -> RequestLimits {
        let rate = self
            .governor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rate(local_slot());
        match rate {
            Some(r) if r > 0 => RequestLimits {
                max_bytes: base.max_bytes.min((r / 4).max(64 * 1024)),
                ..base
            },
            _ => base,
        }
    }

    /// A whole file of unknown size, at most `limit` bytes, paced as it is read.
    pub async fn get_bytes(&self, rel: &str, limit: usize) -> Result<Vec<u8>, FetchError> {
        self.get_whole(rel, limit, false).await
    }

    /// A whole file of exactly `len` bytes (from a manifest), its transfer
    /// reserved with the governor before the request.
    pub async fn get_sized(&self, rel: &str, len: u64) -> Result<Vec<u8>, FetchError> {
        let body = self.get_whole(rel, len as usize, true).await?;
        if body.len() as u64 != len {
            return Err(FetchError::Garbage {
                url: self.url(rel),
                what: format!("{} bytes where {len} were expected", body.len()),
            });
        }
        Ok(body)
    }

    async fn get_whole(&self, rel: &str, limit: usize, sized: bool) -> Result<Vec<u8>, FetchError> {
        let url = self.url(rel);
        let prepaid = if sized { limit as u64 } else { 0 };
        self.retrying(&url, || async {
            if sized {
                self.pace(prepaid).await;
            }
            let resp = self.send(&url, None).await?;
            match resp.status() {
                StatusCode::OK => self.body(&url, resp, limit, prepaid).await,
                StatusCode::NOT_FOUND => Err(FetchError::NotFound { url: url.clone() }),
                s => Err(FetchError::Status {
                    url: url.clone(),
                    status: s,
                }),
            }
        })
        .await
    }

    /// The bytes of each range `(offset, len)` of a file of `file_len` bytes,
    /// in the order asked, with as few requests as the server allows.
    pub async fn get_ranges(
        &self,
        rel: &str,
        ranges: &[(u64, u64)],
        file_len: u64,
    ) -> Result<Vec<Bytes>, FetchError> {
        let url = self.url(rel);
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let spec: Vec<String> = ranges
            .iter()
            .map(|&(o, l)| format!("{}-{}", o, o + l - 1))
            .collect();
        let header = format!("bytes={}", spec.join(","));
        let wanted: u64 = ranges.iter().map(|r| r.1).sum();
        self.retrying(&url, || async {
            // Reserved before asking, so the DP sends no more than the cap.
            self.pace(wanted).await;
            let resp = self.send(&url, Some(&header)).await?;
            let status = resp.status();
            let garbage = |what: String| FetchError::Garbage {
                url: url.clone(),
                what,
            };
            match status {
                StatusCode::PARTIAL_CONTENT => {
                    let ctype = resp
                        .headers()
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let crange = resp
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    // Multipart framing adds ~100 bytes per part.
                    let limit = (wanted + 256 * ranges.len() as u64 + 4096) as usize;
                    let body = self.body(&url, resp, limit, wanted).await?;
                    let parts = if let Some(b) = ctype.strip_prefix("multipart/byteranges") {
                        let boundary = b
                            .split(';')
                            .find_map(|p| p.trim().strip_prefix("boundary="))
                            .map(|s| s.trim_matches('"').to_owned())
                            .ok_or_else(|| garbage("multipart without a boundary".into()))?;
                        let body = Bytes::from(body);
                        byteranges::parse_multipart(&body, &boundary)
                            .map_err(|e| garbage(e.to_string()))?
                            .into_iter()
                            .map(|(start, r)| (start, body.slice(r)))
                            .collect::<Vec<_>>()
                    } else {
                        let (start, _, _) =
                            byteranges::parse_content_range(crange.as_deref().unwrap_or(""))
                                .ok_or_else(|| garbage("206 without Content-Range".into()))?;
                        vec![(start, Bytes::from(body))]
                    };
                    slice_parts(&parts, ranges).map_err(garbage)
                }
                StatusCode::OK => {
                    // The server ignored Range: take what we need from the whole file.
                    let body = self.body(&url, resp, file_len as usize, wanted).await?;
                    slice_parts(&[(0, Bytes::from(body))], ranges).map_err(garbage)
                }
                StatusCode::NOT_FOUND => Err(FetchError::NotFound { url: url.clone() }),
                s => Err(FetchError::Status {
                    url: url.clone(),
                    status: s,
                }),
            }
        })
        .await
    }

    /// Sends a status report to the DP; failures are logged, not returned.
    pub async fn report(&self, report: &StatusReport) {
        let url = self.url("status");
        let body = match serde_json::to_vec(report) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("status report: cannot encode it: {e}");
                return;
            }
        };
        let r = self
            .http
            .post(&url)
            .timeout(Duration::from_secs(10))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => {}
            Ok(resp) => tracing::warn!("status report to {url}: the DP answered {}", resp.status()),
            Err(e) => tracing::warn!("status report to {url}: {}", chain(&e)),
        }
    }
}

/// The error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Cuts each wanted range out of the parts received (`(file offset, bytes)`,
/// in any order, as a server may have merged them).
fn slice_parts(parts: &[(u64, Bytes)], ranges: &[(u64, u64)]) -> Result<Vec<Bytes>, String> {
    let spans: Vec<(u64, u64)> = parts.iter().map(|(s, b)| (*s, b.len() as u64)).collect();
    ranges
        .iter()
        .map(|&(o, l)| {
            let (i, at) = byteranges::find_range(&spans, o, l)
                .ok_or_else(|| format!("the answer lacks bytes {o}-{}", o.saturating_add(l) - 1))?;
            let at = at as usize;
            Ok(parts[i].1.slice(at..at + l as usize))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slicing_finds_ranges_in_merged_parts() {
        let parts = vec![
            (10, Bytes::from_static(b"klmno")),
            (0, Bytes::from_static(b"abcd")),
        ];
        let got = slice_parts(&parts, &[(1, 2), (10, 5), (12, 1)]).unwrap();
        assert_eq!(
            got,
            vec![
                Bytes::from_static(b"bc"),
                Bytes::from_static(b"klmno"),
                Bytes::from_static(b"m")
            ]
        );
        assert!(slice_parts(&parts, &[(4, 2)]).is_err());
    }

    #[test]
    fn local_slot_is_in_range() {
        let s = local_slot();
        assert!(s.weekday < 7 && s.hour < 24);
    }
}
