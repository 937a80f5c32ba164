//! The HTTP surface: `POST /webhooks/{source_id}` (and `/webhooks/{source_id}/{token}` for
//! a Test Engine source, whose only credential is the URL), `/healthz`, `/readyz`,
//! `/metrics`.
//!
//! A webhook passes these checks in this order, each answered as the design says:
//! 404 unknown source → 403 address not allowed → 429 rate limited → 415 not JSON →
//! 413 too large → 408 body too slow → 401 not authenticated → 400 no event header or
//! body not a JSON object → 202 once the broker acked, or 503. Nothing is written to the
//! topic before every check has passed, so a refused request leaves no trace there.
//! What is written is the body without the members the source redacts (`redact`), its
//! `ce_id` computed over the body as received.
//!
//! This module is the router and the handlers; the checks themselves are in
//! [`crate::checks`], the answer to a refused request in [`crate::refusal`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hookfold_proto::cloudevents::SourceKind;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::checks::{self, BodyLimits, Source};
use crate::config::GatewayConfig;
use crate::metrics::Metrics;
use crate::publish::{Publisher, WebhookRecord};
use crate::redact;
use crate::refusal::Refusal;
use crate::routing;

pub struct AppState {
    sources: HashMap<String, Source>,
    publisher: Publisher,
    pub metrics: Metrics,
    body_limits: BodyLimits,
    signature_window_secs: u64,
    readiness: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl AppState {
    pub fn new(config: &GatewayConfig, publisher: Publisher, metrics: Metrics) -> Self {
        Self {
            sources: config
                .sources
                .iter()
                .map(|s| (s.id.clone(), Source::from_config(s)))
                .collect(),
            publisher,
            metrics,
            body_limits: BodyLimits {
                max_bytes: config.max_body_bytes,
                timeout: config.body_timeout,
            },
            signature_window_secs: config.signature_window.as_secs(),
            readiness: Mutex::new(None),
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/webhooks/{source_id}", post(webhook))
        // Test Engine sends no credentials but the URL: the path's last segment is its token.
        .route("/webhooks/{source_id}/{token}", post(webhook_with_token))
        .route(
            "/healthz",
            get(|| async { Json200(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

struct Json200(Value);

impl IntoResponse for Json200 {
    fn into_response(self) -> Response {
        (StatusCode::OK, axum::Json(self.0)).into_response()
    }
}

async fn webhook(
    State(state): State<Arc<AppState>>,
    Path(source_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(state, source_id, None, peer, headers, body).await
}

async fn webhook_with_token(
    State(state): State<Arc<AppState>>,
    Path((source_id, token)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(state, source_id, Some(token), peer, headers, body).await
}

/// One webhook, answered and counted; `url_token` (a Test Engine source's) is never logged
/// nor a label.
async fn receive(
    state: Arc<AppState>,
    source_id: String,
    url_token: Option<String>,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    state.metrics.in_flight.inc();
    let known = state.sources.contains_key(&source_id);
    // Only configured ids become label values.
    let source_label = if known { source_id.as_str() } else { "unknown" };
    let span = tracing::info_span!(
        "webhook",
        source = source_label,
        peer = %peer.ip(),
        event = tracing::field::Empty,
        ce_id = tracing::field::Empty,
    );
    let (outcome, event) = accept(
        &state,
        &source_id,
        url_token.as_deref(),
        peer,
        &headers,
        body,
    )
    .instrument(span.clone())
    .await;
    let _entered = span.enter();
    let response = match outcome {
        Ok(id) => {
            tracing::debug!(status = 202, "appended");
            (StatusCode::ACCEPTED, axum::Json(json!({"id": id}))).into_response()
        }
        Err(refusal) => {
            if refusal.status.is_server_error() {
                tracing::warn!(status = refusal.status.as_u16(), error = refusal.code, message = %refusal.message, "refused");
            } else {
                tracing::info!(status = refusal.status.as_u16(), error = refusal.code, message = %refusal.message, "refused");
            }
            refusal.into_response()
        }
    };
    let status = response.status();
    state
        .metrics
        .requests
        .with_label_values(&[
            source_label,
            event.as_deref().unwrap_or("-"),
            status.as_str(),
        ])
        .inc();
    state
        .metrics
        .request_seconds
        .with_label_values(&[source_label])
        .observe(started.elapsed().as_secs_f64());
    state.metrics.in_flight.dec();
    response
}

/// The checks (in the order of [`crate::checks`]) and the append. Returns the event id,
/// or the refusal; and the event name once the request is authenticated (so that metrics
/// never carry unauthenticated text).
async fn accept(
    state: &AppState,
    source_id: &str,
    url_token: Option<&str>,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
) -> (Result<String, Refusal>, Option<String>) {
    let checked = async {
        let source = checks::find_source(&state.sources, source_id, url_token)?;
        checks::admit(source, peer)?;
        checks::require_json(headers)?;
        let body = checks::read_body(state.body_limits, headers, body).await?;
        if let Err(e) = checks::authenticate(
            source,
            headers,
            &body,
            state.signature_window_secs,
            url_token,
        ) {
            state
                .metrics
                .auth_failures
                .with_label_values(&[&source.id, e.reason()])
                .inc();
            return Err(checks::unauthorized(&e));
        }
        let event = checks::event_name(source.kind, headers, &body)?;
        Ok((source, body, event))
    };
    let (source, body, event) = match checked.await {
        Ok(checked) => checked,
        Err(refusal) => return (Err(refusal), None),
    };
    tracing::Span::current().record("event", event.as_str());
    let result = append(state, source, &event, headers, &body).await;
    (result, Some(event))
}

async fn append(
    state: &AppState,
    source: &Source,
    event: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, Refusal> {
    let parsed = checks::json_object(body)?;
    let key = routing::routing_key(&source.id, source.kind, event, &parsed);
    let request_uuid = match source.kind {
        SourceKind::Bitbucket => headers.get("x-request-uuid").and_then(|v| v.to_str().ok()),
        SourceKind::Buildkite | SourceKind::BuildkiteTestEngine => None,
    };
    // The id is over the body as received, so a repeated delivery is still recognised
    // whatever is redacted out of it.
    let id = routing::event_id(&source.id, event, body, request_uuid);
    tracing::Span::current().record("ce_id", id.as_str());
    let redacted = redact::redact(body, &source.redact);
    let (stored, removed) = match &redacted {
        Some(r) => (r.body.as_slice(), Some(r.header())),
        None => (body, None),
    };
    let ce = routing::webhook_headers(
        &source.id,
        source.kind,
        event,
        id.clone(),
        routing::now_rfc3339(),
    );
    let started = Instant::now();
    let result = state
        .publisher
        .publish(WebhookRecord {
            key: &key,
            headers: &ce,
            redacted: removed.as_deref(),
            body: stored,
        })
        .await;
    state
        .metrics
        .produce_seconds
        .with_label_values(&[&source.id])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok((partition, offset)) => {
            tracing::debug!(partition, offset, key = %key, redacted = removed.as_deref().unwrap_or(""), "broker acked");
            Ok(id)
        }
        Err(e) => {
            state
                .metrics
                .produce_errors
                .with_label_values(&[&source.id, &e.label()])
                .inc();
            Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                format!("{e}; nothing was stored, retry later"),
            )
            .retry_after(1))
        }
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    // One metadata request a second at most, however often probes come.
    let mut cached = state.readiness.lock().await;
    let fresh = cached
        .as_ref()
        .is_some_and(|(at, _)| at.elapsed() < Duration::from_secs(1));
    if !fresh {
        let result = state.publisher.broker_ready(Duration::from_secs(2)).await;
        // Said once per change, not per probe.
        let was_ready = cached.as_ref().map(|(_, r)| r.is_ok());
        match (&result, was_ready) {
            (Ok(()), Some(false) | None) => tracing::info!("ready: the broker answers"),
            (Err(why), Some(true) | None) => tracing::warn!(reason = %why, "not ready"),
            _ => {}
        }
        *cached = Some((Instant::now(), result));
    }
    match cached.as_ref().map(|(_, r)| r) {
        Some(Ok(())) => {
            Json200(json!({"status": "ready", "topic": state.publisher.topic()})).into_response()
        }
        Some(Err(why)) => Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why.clone())
            .retry_after(1)
            .into_response(),
        None => Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "not checked yet",
        )
        .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
        .into_response()
}
