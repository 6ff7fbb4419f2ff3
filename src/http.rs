//! The controller's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, `/check`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::controller::replication::SyncManager;
use crate::controller::watchdog::Watchdog;
use crate::metrics::Metrics;
use crate::secret::Secret;

/// Who may read `/check`. The report lists keys (namespaces and object names) of the whole
/// replicated keyspace, so it is not served to the network without a token.
#[derive(Clone, Debug)]
pub enum CheckAccess {
    /// Loopback listen address: only processes on this host (and `kubectl port-forward`).
    Local,
    /// `Authorization: Bearer <token>` required.
    Token(Arc<Secret>),
    /// A non-loopback address without a token: `/check` refuses; probes and metrics still work.
    Refused,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read --check-token-file {path}: {reason}")]
pub struct TokenFileError {
    path: PathBuf,
    reason: String,
}

impl CheckAccess {
    pub fn from_args(listen: SocketAddr, token_file: Option<&Path>) -> Result<CheckAccess, TokenFileError> {
        let Some(path) = token_file else {
            return Ok(if listen.ip().is_loopback() { CheckAccess::Local } else { CheckAccess::Refused });
        };
        let err = |reason: String| TokenFileError { path: path.to_path_buf(), reason };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let token = Secret::new(bytes);
        match token.expose_trimmed_str() {
            Some(t) if !t.is_empty() => Ok(CheckAccess::Token(Arc::new(Secret::new(t.as_bytes())))),
            _ => Err(err("empty or not UTF-8".into())),
        }
    }

    /// Decides one request from its Authorization header.
    fn allows(&self, authorization: Option<&[u8]>) -> Result<(), (StatusCode, &'static str)> {
        match self {
            CheckAccess::Local => Ok(()),
            CheckAccess::Refused => Err((StatusCode::FORBIDDEN, "/check is served on a non-loopback address only with --check-token-file\n")),
            CheckAccess::Token(want) => {
                let given = authorization.and_then(|h| h.strip_prefix(b"Bearer ")).unwrap_or_default();
                // Compare digests: equal length, so the comparison time says nothing about the token.
                use sha2::Digest;
                if sha2::Sha256::digest(given) == sha2::Sha256::digest(want.expose()) {
                    Ok(())
                } else {
                    Err((StatusCode::UNAUTHORIZED, "/check needs Authorization: Bearer <token>\n"))
                }
            }
        }
    }
}

/// What the endpoints read: the metrics, whether reconciles progress, the mirror's last check
/// and whether this replica leads.
#[derive(Clone)]
pub struct Probes {
    pub metrics: Arc<Metrics>,
    pub watchdog: Arc<Watchdog>,
    pub sync: Arc<SyncManager>,
    pub ready: Arc<AtomicBool>,
}

#[derive(Clone)]
struct AppState {
    probes: Probes,
    check_access: CheckAccess,
}

pub async fn serve(addr: SocketAddr, check_access: CheckAccess, probes: Probes) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/check", get(check))
        .with_state(AppState { probes, check_access });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics /healthz /readyz /check");
    axum::serve(listener, app).await
}

async fn metrics_handler(State(s): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.probes.metrics.encode()).into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    let stalled = s.probes.watchdog.stalled(std::time::Instant::now());
    readiness(s.probes.ready.load(Ordering::SeqCst), stalled).into_response()
}

/// Ready once this replica leads and its reconciles make progress. A follower is alive but not
/// ready, so a Service routes `/check` to the replica that actually mirrors; a leader whose
/// reconcile is stuck is not ready either, so the stall shows in probes and alerts.
fn readiness(leading: bool, stalled: Option<std::time::Duration>) -> (StatusCode, String) {
    match (leading, stalled) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not leading".into()),
        (true, Some(d)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("reconcile stalled: its current step has run {}s, past its budget; see the controller log", d.as_secs()))
        }
        (true, None) => (StatusCode::OK, "ok".into()),
    }
}

/// The last consistency check of the in-process mirror, as `drctl check --json` prints it.
async fn check(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(denied) = s.check_access.allows(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
        return denied.into_response();
    }
    match s.probes.sync.last_check().await {
        Some(report) => axum::Json(report).into_response(),
        None => (StatusCode::NOT_FOUND, "no check has run: this cluster is not mirroring, or its mirror (re)started since the last one\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_is_unavailable_when_not_leading_or_stalled() {
        let stall = Some(std::time::Duration::from_secs(300));
        assert_eq!(readiness(true, None).0, StatusCode::OK);
        assert_eq!(readiness(false, None), (StatusCode::SERVICE_UNAVAILABLE, "not leading".into()));
        let (code, body) = readiness(true, stall);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("reconcile stalled: its current step has run 300s"), "{body}");
    }

    #[test]
    fn check_is_local_by_default_and_refused_on_the_network_without_a_token() {
        let local = CheckAccess::from_args("127.0.0.1:8080".parse().expect("addr"), None).expect("access");
        assert!(matches!(local, CheckAccess::Local));
        assert!(local.allows(None).is_ok());
        let open = CheckAccess::from_args("0.0.0.0:8080".parse().expect("addr"), None).expect("access");
        assert_eq!(open.allows(Some(b"Bearer anything")).map_err(|e| e.0), Err(StatusCode::FORBIDDEN));
    }

    #[test]
    fn a_token_file_requires_the_bearer_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-token\n").expect("write");
        let a = CheckAccess::from_args("0.0.0.0:8080".parse().expect("addr"), Some(&path)).expect("access");
        assert!(a.allows(Some(b"Bearer s3cret-token")).is_ok());
        for bad in [None, Some(&b"Bearer wrong"[..]), Some(b"s3cret-token"), Some(b"Bearer s3cret-token ")] {
            assert_eq!(a.allows(bad).map_err(|e| e.0), Err(StatusCode::UNAUTHORIZED), "{bad:?}");
        }
        assert!(!format!("{a:?}").contains("s3cret"), "Debug redacts the token");
        std::fs::write(&path, "\n").expect("write");
        assert!(CheckAccess::from_args("0.0.0.0:8080".parse().expect("addr"), Some(&path)).is_err());
    }
}
