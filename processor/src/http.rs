//! `/metrics`, `/healthz` and `/readyz` on `metrics_listen`, served from a thread of its
//! own so that a slow scrape never stalls the consumer loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;

/// Binds now (so a taken port fails at start-up) and serves in the background.
pub fn spawn(listen: SocketAddr, metrics: Metrics, ready: Arc<AtomicBool>) -> anyhow::Result<()> {
    let listener =
        std::net::TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "metrics server: no runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let app = Router::new()
                    .route(
                        "/metrics",
                        get(move || {
                            let metrics = metrics.clone();
                            async move { metrics.render() }
                        }),
                    )
                    .route("/healthz", get(|| async { "ok" }))
                    .route(
                        "/readyz",
                        get(move || {
                            let ready = ready.clone();
                            async move {
                                if ready.load(Ordering::SeqCst) {
                                    (StatusCode::OK, "ready")
                                } else {
                                    (
                                        StatusCode::SERVICE_UNAVAILABLE,
                                        "not ready: joining the group or restoring partitions",
                                    )
                                }
                            }
                        }),
                    );
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        if let Err(e) = axum::serve(listener, app).await {
                            tracing::error!(error = %e, "metrics server stopped");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "metrics server: listener"),
                }
            });
        })
        .context("starting the metrics thread")?;
    Ok(())
}
