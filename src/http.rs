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
    /// Loopback listen address: only processes on this host.
    Local,
    /// `Authorization: Bearer <token>` required, the token read from this file on every request:
    /// a Secret rotated in place (the kubelet rewrites the mounted file) takes effect without a
    /// restart, and one created after the Pod started is picked up once the kubelet mounts it.
    Token(PathBuf),
    /// A non-loopback address without a token: `/check` refuses; probes and metrics still work.
    Refused,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read --check-token-file {path}: {reason}")]
pub struct TokenFileError {
    path: PathBuf,
    reason: String,
}

/// The token in `path`, without surrounding whitespace; an error when absent, unreadable,
/// empty or not UTF-8.
fn read_token(path: &Path) -> Result<Secret, TokenFileError> {
    let err = |reason: String| TokenFileError { path: path.to_path_buf(), reason };
    let bytes = Secret::new(std::fs::read(path).map_err(|e| err(e.to_string()))?);
    match bytes.expose_trimmed_str() {
        Some(t) if !t.is_empty() => Ok(Secret::new(t.as_bytes())),
        _ => Err(err("empty or not UTF-8".into())),
    }
}

impl CheckAccess {
    /// The access `--listen` and `--check-token-file` give. A token file that cannot be read yet
    /// (its Secret not created: the volume is optional) is a warning, not a failure to start:
    /// `/check` answers 403 until it can be read, and replication does not wait for it.
    pub fn from_args(listen: SocketAddr, token_file: Option<&Path>) -> CheckAccess {
        let Some(path) = token_file else {
            return if listen.ip().is_loopback() { CheckAccess::Local } else { CheckAccess::Refused };
        };
        if let Err(e) = read_token(path) {
            tracing::warn!(error = %e, "/check answers 403 until the token file holds a token");
        }
        CheckAccess::Token(path.to_path_buf())
    }

    /// Decides one request from its Authorization header.
    fn allows(&self, authorization: Option<&[u8]>) -> Result<(), (StatusCode, String)> {
        match self {
            CheckAccess::Local => Ok(()),
            CheckAccess::Refused => Err((StatusCode::FORBIDDEN, "/check is served on a non-loopback address only with --check-token-file\n".into())),
            CheckAccess::Token(path) => {
                let want = read_token(path).map_err(|e| (StatusCode::FORBIDDEN, format!("/check is refused: {e}; put a token there (README: /check)\n")))?;
                let given = authorization.and_then(|h| h.strip_prefix(b"Bearer ")).unwrap_or_default();
                // Compare digests: equal length, so the comparison time says nothing about the token.
                use sha2::Digest;
                if sha2::Sha256::digest(given) == sha2::Sha256::digest(want.expose()) {
                    Ok(())
                } else {
                    Err((StatusCode::UNAUTHORIZED, "/check needs Authorization: Bearer <token>\n".into()))
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
        let local = CheckAccess::from_args("127.0.0.1:8080".parse().expect("addr"), None);
        assert!(matches!(local, CheckAccess::Local));
        assert!(local.allows(None).is_ok());
        let open = CheckAccess::from_args("0.0.0.0:8080".parse().expect("addr"), None);
        assert_eq!(open.allows(Some(b"Bearer anything")).map_err(|e| e.0), Err(StatusCode::FORBIDDEN));
    }

    #[test]
    fn a_token_file_requires_the_bearer_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-token\n").expect("write");
        let a = CheckAccess::from_args("0.0.0.0:8080".parse().expect("addr"), Some(&path));
        assert!(a.allows(Some(b"Bearer s3cret-token")).is_ok());
        for bad in [None, Some(&b"Bearer wrong"[..]), Some(b"s3cret-token"), Some(b"Bearer s3cret-token ")] {
            assert_eq!(a.allows(bad).map_err(|e| e.0), Err(StatusCode::UNAUTHORIZED), "{bad:?}");
        }
        assert!(!format!("{a:?}").contains("s3cret"), "Debug shows no token");
    }

    /// Over real HTTP on a non-loopback address (what `kubectl port-forward` reaches in a Pod):
    /// no token file yet is 403, the token from the file is 200-or-no-check-yet, a rotated file
    /// is read at once, an emptied one refuses again.
    #[tokio::test]
    async fn the_token_file_is_read_per_request_so_it_can_appear_and_rotate_without_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        let probe = std::net::TcpListener::bind("0.0.0.0:0").expect("free port");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        let probes = Probes { metrics: Arc::new(Metrics::new("global-b")), watchdog: Arc::default(), sync: Arc::default(), ready: Arc::default() };
        let server = tokio::spawn(serve(addr, CheckAccess::from_args(addr, Some(&path)), probes));
        let get = |token: Option<&'static str>| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
            for _ in 0..100 {
                let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", addr.port())).await else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                s.write_all(format!("GET /check HTTP/1.0\r\nHost: drctl\r\n{auth}\r\n").as_bytes()).await.expect("write request");
                let mut resp = String::new();
                s.read_to_string(&mut resp).await.expect("read response");
                let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0u16);
                return (code, resp);
            }
            panic!("{addr} never answered")
        };
        let (code, body) = get(Some("first")).await;
        assert_eq!(code, 403, "{body}");
        assert!(body.contains(&path.display().to_string()), "the refusal names the file: {body}");
        std::fs::write(&path, "first\n").expect("write");
        assert_eq!(get(None).await.0, 401);
        assert_eq!(get(Some("first")).await.0, 404, "past access: no check has run on this idle server");
        std::fs::write(&path, "second").expect("rotate");
        assert_eq!(get(Some("first")).await.0, 401, "the old token is refused at once");
        assert_eq!(get(Some("second")).await.0, 404);
        std::fs::write(&path, "").expect("empty");
        assert_eq!(get(Some("second")).await.0, 403);
        server.abort();
    }
}
