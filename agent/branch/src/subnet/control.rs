//! The daemon's loopback control API, and the client side the CLI uses.
//!
//! ```text
//! POST /v1/get      {"package": "p", "version": 3}   start (or join) a transfer (token)
//! GET  /v1/jobs/{package}/{version}                   one transfer
//! GET  /v1/status                                     peers, elections, transfers, cache
//! GET  /metrics                                       Prometheus
//! ```
//!
//! Loopback alone does not keep a web page out: a page the user opens can
//! make the browser send requests to `127.0.0.1`, and with DNS rebinding
//! read the answers. So:
//!
//! - every request must carry a `Host` naming the address the API listens
//!   on (`127.0.0.1:7117`, or `localhost:7117`); anything else (a rebound
//!   domain name) is answered 421;
//! - state-changing calls need `Authorization: Bearer TOKEN`, the token being
//!   32 random bytes the daemon writes at start (hex, mode 0600) to
//!   `CACHE/control.token` ([`TOKEN_FILE`]): only the daemon's user (and
//!   root) can read it. The CLI reads it from the cache it is configured
//!   with, or from the path the daemon's status names, and sends it only if
//!   the file holds exactly a token, so a fake daemon cannot make it send
//!   the contents of another file.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use peerdelta_protocol::manifest::PackageName;
use serde::{Deserialize, Serialize};

use super::Daemon;

/// A transfer request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetRequest {
    /// Package.
    pub package: String,
    /// Version (default: the newest the DP has).
    pub version: Option<u64>,
}

/// The answer to a transfer request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetAccepted {
    /// Package.
    pub package: String,
    /// Version.
    pub version: u64,
}

fn error(code: StatusCode, msg: String) -> Response {
    (code, Json(serde_json::json!({ "error": msg }))).into_response()
}

async fn start_get(State(d): State<Daemon>, Json(r): Json<GetRequest>) -> Response {
    let package = match PackageName::new(&r.package) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let version = match r.version {
        Some(v) => v,
        None => match newest(&d, &package).await {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_GATEWAY, format!("{e:#}")),
        },
    };
    d.request(package.clone(), version).await;
    Json(GetAccepted {
        package: package.to_string(),
        version,
    })
    .into_response()
}

/// The newest version in the DP's signed index (rollback and freeze
/// checked, as every index an agent reads).
async fn newest(d: &Daemon, package: &PackageName) -> anyhow::Result<u64> {
    let index = crate::get::fetch_index(d.client(), d.cache(), d.key(), package)
        .await
        .with_context(|| format!("reading the DP's index of {package}"))?;
    index
        .latest()
        .map(|e| e.version)
        .with_context(|| format!("package {package} has no versions"))
}

async fn job(State(d): State<Daemon>, Path((package, version)): Path<(String, u64)>) -> Response {
    let Ok(p) = PackageName::new(&package) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("bad package name {package:?}"),
        );
    };
    match d.job(&p, version).await {
        Some(j) => Json(j).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no transfer of {package} v{version}"),
        ),
    }
}

/// The token file's name in the cache.
pub const TOKEN_FILE: &str = "control.token";

/// Creates a new token file (mode 0600 from the start) in `dir`; returns the
/// token.
pub fn write_token(dir: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let token = peerdelta_protocol::hex::encode(&raw);
    let path = dir.join(TOKEN_FILE);
    let tmp = dir.join(format!("{TOKEN_FILE}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    writeln!(f, "{token}")
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("creating {}", path.display()))?;
    Ok(token)
}

/// Reads a token file; `None` unless it holds exactly one token.
pub fn read_token(path: &std::path::Path) -> Option<String> {
    let m = std::fs::symlink_metadata(path).ok()?;
    if !m.is_file() || m.len() > 65 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let t = text.strip_suffix('\n').unwrap_or(&text);
    (t.len() == 64
        && t.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| t.to_owned())
}

/// What a request must show.
#[derive(Clone)]
struct Guard {
    hosts: Arc<Vec<String>>,
    token: Arc<String>,
}

/// Constant-time equality, so timing does not tell a token's prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !g.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "the control API answers only to Host {}",
                g.hosts.join(" or ")
            ),
        );
    }
    if req.method() != axum::http::Method::GET && req.method() != axum::http::Method::HEAD {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.trim().as_bytes(), g.token.as_bytes()) {
            return error(
                StatusCode::UNAUTHORIZED,
                format!(
                    "this call needs the daemon's token (the file {TOKEN_FILE} in its cache, \
                     readable by the daemon's user)"
                ),
            );
        }
    }
    next.run(req).await
}

/// Serves the control API on `addr` (which must be a loopback address);
/// state-changing calls need `token`.
pub async fn serve(d: Daemon, addr: SocketAddr, token: String) -> anyhow::Result<()> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        peerdelta_store::usage!("agent.control must be a loopback address, not {addr}")
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the control API to {addr}"))?;
    let bound = listener
        .local_addr()
        .context("reading the control address")?;
    let hosts = vec![bound.to_string(), format!("localhost:{}", bound.port())];
    let g = Guard {
        hosts: Arc::new(hosts),
        token: Arc::new(token),
    };
    let app = axum::Router::new()
        .route("/v1/get", post(start_get))
        .route("/v1/jobs/{package}/{version}", get(job))
        .route(
            "/v1/status",
            get(|State(d): State<Daemon>| async move {
                match d.status().await {
                    Ok(s) => Json(s).into_response(),
                    Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(d): State<Daemon>| async move { d.metrics().await }),
        )
        .with_state(d)
        .layer(axum::middleware::from_fn_with_state(g, guard));
    tracing::info!("control API on http://{bound}");
    axum::serve(listener, app)
        .await
        .context("serving the control API")
}

/// The CLI's side of the control API.
pub struct ControlClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl ControlClient {
    /// A client for the daemon at `addr`.
    pub fn new(addr: &str) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(ControlClient {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            token: None,
        })
    }

    /// Finds the token for state-changing calls: the file `explicit` if
    /// given, else `CACHE/control.token` of the configured cache, else the
    /// file the daemon's status names. Errors say which file could not be
    /// read.
    pub async fn with_token(
        mut self,
        explicit: Option<&std::path::Path>,
        cache: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let unreadable = |p: &std::path::Path| {
            peerdelta_store::usage!(
                "cannot read the agent daemon's token from {}: run as the daemon's user, \
                 or point PEERDELTA_CONTROL_TOKEN at a copy",
                p.display()
            )
        };
        if let Some(p) = explicit {
            self.token = Some(read_token(p).ok_or_else(|| unreadable(p))?);
            return Ok(self);
        }
        if let Some(t) = cache.and_then(|c| read_token(&c.join(TOKEN_FILE))) {
            self.token = Some(t);
            return Ok(self);
        }
        let s = self.status().await?;
        let p = std::path::PathBuf::from(&s.control_token_file);
        self.token = Some(read_token(&p).ok_or_else(|| unreadable(&p))?);
        Ok(self)
    }

    /// Whether a daemon answers.
    pub async fn alive(&self) -> bool {
        self.http
            .get(format!("{}/v1/status", self.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        r: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let resp = r
            .send()
            .await
            .with_context(|| format!("the agent daemon at {} does not answer", self.base))?;
        let status = resp.status();
        let body = resp.bytes().await.context("reading the daemon's answer")?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            anyhow::bail!("the agent daemon: {msg}");
        }
        serde_json::from_slice(&body).context("the daemon's answer is not what was expected")
    }

    /// Starts a transfer (needs the token: [`ControlClient::with_token`]).
    pub async fn get(&self, r: &GetRequest) -> anyhow::Result<GetAccepted> {
        let mut req = self.http.post(format!("{}/v1/get", self.base)).json(r);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        self.json(req).await
    }

    /// One transfer.
    pub async fn job(&self, package: &str, version: u64) -> anyhow::Result<super::view::JobView> {
        self.json(
            self.http
                .get(format!("{}/v1/jobs/{package}/{version}", self.base)),
        )
        .await
    }

    /// The daemon's status.
    pub async fn status(&self) -> anyhow::Result<super::view::StatusView> {
        self.json(self.http.get(format!("{}/v1/status", self.base)))
            .await
    }
}
