//! The controller's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, `/check`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::controller::Context;
use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ctx: Arc<Context>,
    ready: Arc<AtomicBool>,
}

pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, ctx: Arc<Context>, ready: Arc<AtomicBool>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/check", get(check))
        .with_state(AppState { metrics, ctx, ready });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics /healthz /readyz /check");
    axum::serve(listener, app).await
}

async fn metrics_handler(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        s.metrics.encode(),
    )
        .into_response()
}

/// Ready once this replica leads; a follower is alive but not ready, so a Service routes
/// `/check` to the replica that actually mirrors.
async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not leading").into_response()
    }
}

/// The last consistency check of the in-process mirror, as `drctl check --json` prints it.
async fn check(State(s): State<AppState>) -> Response {
    match s.ctx.sync.last_check().await {
        Some(report) => axum::Json(report).into_response(),
        None => (StatusCode::NOT_FOUND, "no check has run: this cluster is not mirroring\n").into_response(),
    }
}
