//! The daemon's loopback control API, and the client side the CLI uses.
//!
//! ```text
//! POST /v1/get      {"package": "p", "version": 3}   start (or join) a transfer
//! GET  /v1/jobs/{package}/{version}                   one transfer
//! GET  /v1/status                                     peers, elections, transfers, cache
//! GET  /metrics                                       Prometheus
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use peerdelta_protocol::layout;
use peerdelta_protocol::manifest::{self, PackageName};
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

async fn start_get(State(d): State<Arc<Daemon>>, Json(r): Json<GetRequest>) -> Response {
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
    d.request(package.clone(), version);
    Json(GetAccepted {
        package: package.to_string(),
        version,
    })
    .into_response()
}

/// The newest version in the DP's signed index.
async fn newest(d: &Daemon, package: &PackageName) -> anyhow::Result<u64> {
    let b = d
        .client()
        .get_bytes(&layout::index(package), 64 << 20)
        .await
        .with_context(|| format!("reading the DP's index of {package}"))?;
    let index = manifest::open_index(&b, d.key()).context("the DP's package index")?;
    index
        .latest()
        .map(|e| e.version)
        .with_context(|| format!("package {package} has no versions"))
}

async fn job(
    State(d): State<Arc<Daemon>>,
    Path((package, version)): Path<(String, u64)>,
) -> Response {
    let Ok(p) = PackageName::new(&package) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("bad package name {package:?}"),
        );
    };
    match d.job(&p, version) {
        Some(j) => Json(j).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no transfer of {package} v{version}"),
        ),
    }
}

/// Serves the control API on `addr` (which must be a loopback address).
pub async fn serve(d: Arc<Daemon>, addr: SocketAddr) -> anyhow::Result<()> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        crate::usage!("agent.control must be a loopback address, not {addr}")
    );
    let app = axum::Router::new()
        .route("/v1/get", post(start_get))
        .route("/v1/jobs/{package}/{version}", get(job))
        .route(
            "/v1/status",
            get(|State(d): State<Arc<Daemon>>| async move { Json(d.status()) }),
        )
        .route(
            "/metrics",
            get(|State(d): State<Arc<Daemon>>| async move { d.metrics() }),
        )
        .with_state(d);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the control API to {addr}"))?;
    tracing::info!("control API on http://{addr}");
    axum::serve(listener, app)
        .await
        .context("serving the control API")
}

/// The CLI's side of the control API.
pub struct ControlClient {
    base: String,
    http: reqwest::Client,
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
        })
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

    /// Starts a transfer.
    pub async fn get(&self, r: &GetRequest) -> anyhow::Result<GetAccepted> {
        self.json(self.http.post(format!("{}/v1/get", self.base)).json(r))
            .await
    }

    /// One transfer.
    pub async fn job(&self, package: &str, version: u64) -> anyhow::Result<serde_json::Value> {
        self.json(
            self.http
                .get(format!("{}/v1/jobs/{package}/{version}", self.base)),
        )
        .await
    }

    /// The daemon's status.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        self.json(self.http.get(format!("{}/v1/status", self.base)))
            .await
    }
}
