//! `peerdelta dp serve`: the library over HTTP, read-only, plus status reports
//! and metrics.
//!
//! - `GET`/`HEAD` of any library path. Whole files and single ranges go
//!   through tower-http's `ServeDir`. Around it this module adds what ServeDir
//!   lacks: `ETag` and `If-None-Match` (content-addressed files are named by
//!   their hash, so their tag is their name), and multi-range requests
//!   (`multipart/byteranges`), which ServeDir answers with 416. Agents coalesce
//!   many origin runs into one multi-range request on long-RTT links; the
//!   rules that keep such a request from costing more than the file are in
//!   [`peerdelta_protocol::byteranges`].
//! - `POST /status`: receiver status reports, validated, size-limited,
//!   rate-limited per client address, appended durably to a bounded,
//!   rotating log in the private directory (`peerdelta dp status` lists them).
//! - `GET /metrics`: Prometheus text: bytes served and requests by kind
//!   (content, needs, signatures, manifests), status reports by event,
//!   connections refused.
//!
//! Connections are bounded in number, per client and in time ([`conn`]).
//! The same tree served by nginx must work the same for downloads; a test
//! checks it, and the README gives the nginx settings that bound ranges
//! the same way.

pub mod conn;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream;
use http_body_util::BodyExt;
use peerdelta_protocol::layout::Kind;
use peerdelta_protocol::status::{MAX_REPORT_BYTES, StatusReport};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tower::ServiceExt;
use tower_http::services::ServeDir;

use super::library::Library;
use super::status::{AppendError, StatusStore};
use conn::{Connections, RateLimit, ServeLimits, Stalling};
use peerdelta_protocol::byteranges::{self as ranges, Ranges, parse_ranges};

struct AppState {
    root: PathBuf,
    serve_dir: ServeDir,
    metrics: Metrics,
    status: StatusStore,
    limits: ServeLimits,
    reports: RateLimit,
}

#[derive(Default)]
struct Metrics {
    bytes: [AtomicU64; 5],
    payload: [AtomicU64; 5],
    requests: [AtomicU64; 5],
    not_modified: AtomicU64,
    reports: [AtomicU64; 3],
    reports_rejected: AtomicU64,
    reports_limited: AtomicU64,
    connections_refused: AtomicU64,
    connections: AtomicU64,
}

fn kind_index(k: Kind) -> usize {
    Kind::ALL.iter().position(|x| *x == k).unwrap_or(4)
}

/// Serves `lib` on `listen` until Ctrl-C or SIGTERM. Prints
/// `listening on http://ADDR` on stdout once bound (with the real port when
/// `listen` asks for port 0).
pub async fn serve(lib: Library, listen: SocketAddr, limits: ServeLimits) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!("serving {} on http://{addr}", lib.root.display());
    println!("listening on http://{addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    serve_with(lib, listener, limits, shutdown_signal()).await
}

/// Serves `lib` on a bound listener with the default limits until
/// `shutdown` resolves.
pub async fn serve_on(
    lib: Library,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(lib, listener, ServeLimits::default(), shutdown).await
}

/// Serves `lib` on a bound listener until `shutdown` resolves; then lets
/// the requests in progress finish (10 s at most).
pub async fn serve_with(
    lib: Library,
    listener: tokio::net::TcpListener,
    limits: ServeLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    lib.check()?;
    let status = StatusStore::open(&lib, limits.status_log_bytes, limits.status_min_free_bytes)?;
    let state = Arc::new(AppState {
        root: lib.root.clone(),
        serve_dir: ServeDir::new(&lib.root).append_index_html_on_directories(false),
        metrics: Metrics::default(),
        status,
        limits,
        reports: RateLimit::new(limits.status_per_minute),
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", post(post_status))
        .fallback(static_file)
        .with_state(state.clone());
    let conns = Connections::new(limits.max_connections, limits.max_connections_per_client);
    let (closing, _) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors or a connection reset before
                    // it was accepted: not fatal, but do not spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(admitted) = conns.admit(peer.ip()) else {
            state
                .metrics
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "connection refused: too many connections");
            drop(stream);
            continue;
        };
        state.metrics.connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let io = hyper_util::rt::TokioIo::new(Stalling::new(stream, limits.stall_timeout));
        let svc = app
            .clone()
            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.map(Body::new)
            });
        let svc = hyper_util::service::TowerToHyperService::new(svc);
        let mut closing = closing.subscribe();
        tokio::spawn(async move {
            let _admitted = admitted;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                // Room for a header of many ranges (answered 416 past
                // `ranges::MAX_RANGES`); larger headers get 431.
                .max_buf_size(128 * 1024);
            let conn = builder.serve_connection(io, svc);
            let mut conn = std::pin::pin!(conn);
            let r = tokio::select! {
                r = conn.as_mut() => r,
                _ = closing.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    let _ = closing.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), conns.drained()).await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let m = &s.metrics;
    let mut out = String::new();
    let mut by_kind = |name: &str, help: &str, values: &[AtomicU64; 5]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        for k in Kind::ALL {
            let v = values[kind_index(k)].load(Ordering::Relaxed);
            out.push_str(&format!("{name}{{kind=\"{}\"}} {v}\n", k.label()));
        }
    };
    by_kind(
        "peerdelta_dp_bytes_served_total",
        "Body bytes sent, by library path kind.",
        &m.bytes,
    );
    by_kind(
        "peerdelta_dp_payload_bytes_total",
        "File bytes sent (body bytes without multipart framing), by kind.",
        &m.payload,
    );
    by_kind(
        "peerdelta_dp_requests_total",
        "Library requests, by path kind.",
        &m.requests,
    );
    let mut one = |name: &str, help: &str, kind: &str, v: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    };
    one(
        "peerdelta_dp_not_modified_total",
        "Requests answered 304 Not Modified.",
        "counter",
        m.not_modified.load(Ordering::Relaxed),
    );
    one(
        "peerdelta_dp_status_reports_rejected_total",
        "Status reports refused as invalid.",
        "counter",
        m.reports_rejected.load(Ordering::Relaxed),
    );
    one(
        "peerdelta_dp_status_reports_limited_total",
        "Status reports refused by the per-client rate limit or for lack of disk space.",
        "counter",
        m.reports_limited.load(Ordering::Relaxed),
    );
    one(
        "peerdelta_dp_status_reports_dropped_total",
        "Old status reports dropped when the log rotated (since the library was created).",
        "counter",
        s.status.dropped(),
    );
    one(
        "peerdelta_dp_connections_total",
        "Connections accepted.",
        "counter",
        m.connections.load(Ordering::Relaxed),
    );
    one(
        "peerdelta_dp_connections_refused_total",
        "Connections closed at once: too many in all or from one client.",
        "counter",
        m.connections_refused.load(Ordering::Relaxed),
    );
    out.push_str("# HELP peerdelta_dp_status_reports_total Status reports accepted, by event.\n");
    out.push_str("# TYPE peerdelta_dp_status_reports_total counter\n");
    for (i, e) in ["completed", "hash_failure", "held"].iter().enumerate() {
        out.push_str(&format!(
            "peerdelta_dp_status_reports_total{{event=\"{e}\"}} {}\n",
            m.reports[i].load(Ordering::Relaxed)
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Reads a request body of at most `limit` bytes within the body timeout.
async fn read_body(s: &AppState, req: Request, limit: usize) -> Result<Bytes, Response> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a status report is at most {limit} bytes\n"),
        )
            .into_response()
    };
    if req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
    {
        return Err(too_large());
    }
    let body = http_body_util::Limited::new(req.into_body(), limit);
    match tokio::time::timeout(s.limits.body_timeout, body.collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err((StatusCode::BAD_REQUEST, "unreadable body\n").into_response()),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time\n",
        )
            .into_response()),
    }
}

async fn post_status(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    if let Err(wait) = s.reports.take(peer.ip()) {
        s.metrics.reports_limited.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, wait.to_string())],
            "too many status reports from this address\n",
        )
            .into_response();
    }
    let body = match read_body(&s, req, MAX_REPORT_BYTES).await {
        Ok(b) => b,
        Err(resp) => {
            s.metrics.reports_rejected.fetch_add(1, Ordering::Relaxed);
            return resp;
        }
    };
    let report = serde_json::from_slice::<StatusReport>(&body)
        .map_err(|e| e.to_string())
        .and_then(|r| r.validate().map(|()| r).map_err(|e| e.to_string()));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            s.metrics.reports_rejected.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid status report: {e}\n"),
            )
                .into_response();
        }
    };
    let slot = match report.kind() {
        "completed" => 0,
        "hash_failure" => 1,
        _ => 2,
    };
    if report.kind() == "hash_failure" {
        tracing::warn!(agent = %report.agent, package = %report.package, version = report.version, "hash failure reported: {:?}", report.event);
    }
    let state = s.clone();
    let stored =
        tokio::task::spawn_blocking(move || state.status.append(&report, &peer.to_string())).await;
    match stored {
        Ok(Ok(())) => {
            s.metrics.reports[slot].fetch_add(1, Ordering::Relaxed);
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(Err(AppendError::LowSpace { free })) => {
            s.metrics.reports_limited.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                free_bytes = free,
                "refusing status reports: the status log's disk is nearly full"
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "300")],
                "the DP's disk is nearly full; report later\n",
            )
                .into_response()
        }
        Ok(Err(e)) => {
            tracing::error!("storing a status report: {e:#}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not store the report\n",
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!("storing a status report: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Library paths are made of these characters only; anything else is not in
/// the library (and never reaches the filesystem).
fn safe_path(path: &str) -> Option<&str> {
    let rel = path.strip_prefix('/')?;
    let ok = !rel.is_empty()
        && rel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    ok.then_some(rel)
}

async fn static_file(State(s): State<Arc<AppState>>, req: Request) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
        )
            .into_response();
    }
    let Some(rel) = safe_path(req.uri().path()).map(str::to_owned) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let kind = Kind::of(&rel);
    s.metrics.requests[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
    let path = s.root.join(&rel);
    let meta = match tokio::fs::metadata(&path).await {
        Ok(m) if m.is_file() => m,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let etag = etag(&rel, kind, &meta);
    let cache = match kind {
        Kind::Content | Kind::Signatures | Kind::Needs => "public, max-age=31536000, immutable",
        _ if rel
            .rsplit('/')
            .next()
            .is_some_and(|n| n.starts_with("manifest")) =>
        {
            "public, max-age=31536000, immutable"
        }
        _ => "no-cache",
    };
    if if_none_match(req.headers(), &etag) {
        s.metrics.not_modified.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::CACHE_CONTROL, cache.to_owned()),
            ],
        )
            .into_response();
    }
    let len = meta.len();
    let ranges = match req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
    {
        Some(r) if if_range_ok(req.headers(), &etag) => parse_ranges(r, len),
        _ => Ranges::None,
    };
    let payload_in_body = !matches!(ranges, Ranges::Many(_));
    let mut resp = match ranges {
        Ranges::Many(ranges) => {
            let st = s.clone();
            let i = kind_index(kind);
            let count = move |n: u64| {
                st.metrics.payload[i].fetch_add(n, Ordering::Relaxed);
            };
            multipart(&path, len, ranges, req.method() == Method::HEAD, count).await
        }
        Ranges::Unsatisfiable => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{len}"))],
        )
            .into_response(),
        Ranges::One(a, b) => {
            // One range (possibly what merging left of several): ServeDir does it.
            let mut req = req;
            let v = HeaderValue::from_str(&format!("bytes={a}-{b}"))
                .unwrap_or(HeaderValue::from_static("bytes=0-"));
            req.headers_mut().insert(header::RANGE, v);
            req.headers_mut().remove(header::IF_RANGE);
            serve_dir(&s, req).await
        }
        Ranges::None => {
            let mut req = req;
            req.headers_mut().remove(header::RANGE);
            serve_dir(&s, req).await
        }
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    count_body(resp, &s, kind, payload_in_body)
}

async fn serve_dir(s: &AppState, req: Request) -> Response {
    match s.serve_dir.clone().oneshot(req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => match e {},
    }
}

/// Counts the body bytes actually sent, and as file payload too when the
/// body is nothing but file bytes (not multipart framing).
fn count_body(resp: Response, s: &Arc<AppState>, kind: Kind, payload: bool) -> Response {
    let state = s.clone();
    let i = kind_index(kind);
    let payload = payload && resp.status().is_success();
    resp.map(|body| {
        Body::new(body.map_frame(move |frame| {
            if let Some(d) = frame.data_ref() {
                state.metrics.bytes[i].fetch_add(d.len() as u64, Ordering::Relaxed);
                if payload {
                    state.metrics.payload[i].fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
            frame
        }))
    })
}

/// A strong tag: the name for content-addressed files (they never change),
/// else size, modification time and inode.
fn etag(rel: &str, kind: Kind, meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    match kind {
        Kind::Content | Kind::Signatures | Kind::Needs => {
            format!("\"{}\"", rel.rsplit('/').next().unwrap_or(rel))
        }
        _ => format!(
            "\"{:x}-{:x}{:08x}-{:x}\"",
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ino()
        ),
    }
}

fn tags(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(|t| t.trim().trim_start_matches("W/"))
}

/// Whether `If-None-Match` matches (weak comparison, RFC 9110 13.1.2).
fn if_none_match(h: &HeaderMap, etag: &str) -> bool {
    h.get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.trim() == "*" || tags(v).any(|t| t == etag))
}

/// Whether a `Range` applies: no `If-Range`, or one naming the current tag.
fn if_range_ok(h: &HeaderMap, etag: &str) -> bool {
    match h.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => v.trim() == etag,
    }
}

/// A `multipart/byteranges` response of disjoint ascending ranges, streamed
/// from the file; `count` is told the file bytes of each piece sent.
async fn multipart(
    path: &Path,
    len: u64,
    ranges: Vec<(u64, u64)>,
    head: bool,
    count: impl Fn(u64) + Send + Sync + 'static,
) -> Response {
    let boundary = ranges::boundary(len, &ranges);
    let part_head = |a: u64, b: u64| ranges::part_head(&boundary, a, b, len);
    let tail = ranges::tail(&boundary);
    let total = ranges::multipart_len(len, &ranges);
    let headers = [
        (
            header::CONTENT_TYPE,
            format!("multipart/byteranges; boundary={boundary}"),
        ),
        (header::CONTENT_LENGTH, total.to_string()),
    ];
    if head {
        return (StatusCode::PARTIAL_CONTENT, headers).into_response();
    }
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(_) => return StatusCode::NOT_FOUND.into_response(),
    };
    // State: the file, the parts still to send, the position in the current one.
    struct St {
        file: tokio::fs::File,
        parts: std::vec::IntoIter<(u64, u64)>,
        current: Option<(u64, u64)>,
        boundary_done: bool,
        tail: Option<String>,
        heads: Vec<String>,
        count: Box<dyn Fn(u64) + Send + Sync>,
    }
    let heads: Vec<String> = ranges.iter().rev().map(|&(a, b)| part_head(a, b)).collect();
    let st = St {
        file,
        parts: ranges.into_iter(),
        current: None,
        boundary_done: false,
        tail: Some(tail),
        heads,
        count: Box::new(count),
    };
    let body = stream::unfold(st, |mut st| async move {
        loop {
            if let Some((pos, end)) = st.current {
                if pos > end {
                    st.current = None;
                    continue;
                }
                if !st.boundary_done {
                    st.boundary_done = true;
                    let h = st.heads.pop().unwrap_or_default();
                    return Some((Ok::<Bytes, std::io::Error>(Bytes::from(h)), st));
                }
                let n = (end - pos + 1).min(64 * 1024) as usize;
                let mut buf = vec![0u8; n];
                let r = async {
                    st.file.seek(std::io::SeekFrom::Start(pos)).await?;
                    st.file.read_exact(&mut buf).await
                }
                .await;
                return match r {
                    Ok(_) => {
                        (st.count)(n as u64);
                        st.current = Some((pos + n as u64, end));
                        Some((Ok(Bytes::from(buf)), st))
                    }
                    Err(e) => {
                        st.tail = None;
                        st.parts = Vec::new().into_iter();
                        st.current = None;
                        Some((Err(e), st))
                    }
                };
            }
            match st.parts.next() {
                Some(r) => {
                    st.current = Some(r);
                    st.boundary_done = false;
                }
                None => return st.tail.take().map(|t| (Ok(Bytes::from(t)), st)),
            }
        }
    });
    (
        StatusCode::PARTIAL_CONTENT,
        headers,
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(safe_path("/content/ab/abc"), Some("content/ab/abc"));
        for bad in [
            "/", "/../x", "/a/../b", "/a//b", "/a%2e", "/a b", "relative",
        ] {
            assert_eq!(safe_path(bad), None, "{bad}");
        }
    }
}
