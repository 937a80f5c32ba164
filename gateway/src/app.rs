//! The HTTP surface: `POST /webhooks/{source_id}`, `/healthz`, `/readyz`, `/metrics`.
//!
//! A webhook passes these checks in this order, each answered as the design says:
//! 404 unknown source → 403 address not allowed → 429 rate limited → 415 not JSON →
//! 413 too large → 408 body too slow → 401 not authenticated → 400 no event header or
//! body not a JSON object → 202 once the broker acked, or 503. Nothing is written to the
//! topic before every check has passed, so a refused request leaves no trace there.
//! What is written is the body without the members the source redacts (`redact`), its
//! `ce_id` computed over the body as received.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hookfold_proto::cloudevents::SourceKind;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use ipnet::IpNet;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::auth::{self, BuildkiteCredentials, Secret};
use crate::config::{GatewayConfig, SourceConfig};
use crate::metrics::Metrics;
use crate::publish::{Publisher, WebhookRecord};
use crate::rate_limit::TokenBucket;
use crate::redact::{self, JsonPath};
use crate::routing;

/// Longest event name accepted from `X-Buildkite-Event` / `X-Event-Key`.
const MAX_EVENT_NAME: usize = 128;

pub struct Source {
    pub id: String,
    pub kind: SourceKind,
    secrets: Vec<Secret>,
    allowed: Vec<IpNet>,
    bucket: Option<TokenBucket>,
    redact: Vec<JsonPath>,
}

impl Source {
    /// The source of a validated config (`GatewayConfig::validate` checked its paths).
    pub fn from_config(config: &SourceConfig) -> Self {
        Self {
            redact: config.redact_paths().unwrap_or_default(),
            id: config.id.clone(),
            kind: config.kind.into(),
            secrets: config.secrets.clone(),
            allowed: config.allowed_cidrs.clone(),
            bucket: config
                .rate_limit
                .map(|limit| TokenBucket::new(limit, Instant::now())),
        }
    }
}

pub struct AppState {
    sources: HashMap<String, Source>,
    publisher: Publisher,
    pub metrics: Metrics,
    max_body_bytes: usize,
    body_timeout: Duration,
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
            max_body_bytes: config.max_body_bytes,
            body_timeout: config.body_timeout,
            signature_window_secs: config.signature_window.as_secs(),
            readiness: Mutex::new(None),
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/webhooks/{source_id}", post(webhook))
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

/// A refusal: the status, a stable machine-readable code and a sentence for a person.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

async fn webhook(
    State(state): State<Arc<AppState>>,
    Path(source_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
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
    let (outcome, event) = accept(&state, &source_id, peer, &headers, body)
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

/// The checks and the append. Returns the event id, or the refusal; and the event name
/// once the request is authenticated (so that metrics never carry unauthenticated text).
async fn accept(
    state: &AppState,
    source_id: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
) -> (Result<String, Refusal>, Option<String>) {
    let Some(source) = state.sources.get(source_id) else {
        return (
            Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "unknown_source",
                "no webhook source is configured with this id",
            )),
            None,
        );
    };
    if let Err(refusal) = admit(source, peer) {
        return (Err(refusal), None);
    }
    if !is_json(headers) {
        return (
            Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Content-Type must be application/json",
            )),
            None,
        );
    }
    let body = match read_body(state, headers, body).await {
        Ok(body) => body,
        Err(refusal) => return (Err(refusal), None),
    };
    if let Err(e) = authenticate(state, source, headers, &body) {
        state
            .metrics
            .auth_failures
            .with_label_values(&[&source.id, e.reason()])
            .inc();
        return (
            Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                e.to_string(),
            )),
            None,
        );
    }
    let event = match event_name(source.kind, headers) {
        Ok(event) => event,
        Err(refusal) => return (Err(refusal), None),
    };
    tracing::Span::current().record("event", event.as_str());
    let result = append(state, source, &event, headers, &body).await;
    (result, Some(event))
}

fn admit(source: &Source, peer: SocketAddr) -> Result<(), Refusal> {
    // An IPv4 client on a dual-stack listener shows up as ::ffff:a.b.c.d.
    let ip = peer.ip().to_canonical();
    if !source.allowed.is_empty() && !source.allowed.iter().any(|net| net.contains(&ip)) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("address {ip} is not allowed to deliver to this source"),
        ));
    }
    if let Some(Err(wait)) = source.bucket.as_ref().map(|b| b.try_take(Instant::now())) {
        return Err(Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "this source is over its configured rate limit",
        )
        .retry_after(wait.as_secs_f64().ceil() as u64));
    }
    Ok(())
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, Refusal> {
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body is over the {} byte limit", state.max_body_bytes),
        )
    };
    // Refuse a declared oversize body before reading any of it.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|len| *len > state.max_body_bytes as u64) {
        // Read and drop a moderately oversized body before answering, so that a sender
        // still writing it reads the 413 instead of a reset connection. A body that is
        // hugely oversized is refused at once.
        if len <= 4 * state.max_body_bytes as u64 {
            let drain = Limited::new(body, 4 * state.max_body_bytes).collect();
            let _ = tokio::time::timeout(state.body_timeout, drain).await;
        }
        return Err(too_large());
    }
    let limited = Limited::new(body, state.max_body_bytes);
    match tokio::time::timeout(state.body_timeout, limited.collect()).await {
        Err(_) => Err(Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "body not received within {} s",
                state.body_timeout.as_secs_f64()
            ),
        )),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("body could not be read: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes().to_vec()),
    }
}

fn authenticate(
    state: &AppState,
    source: &Source,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), auth::AuthError> {
    match source.kind {
        SourceKind::Buildkite => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let credentials = BuildkiteCredentials {
                token: headers.get("x-buildkite-token").map(HeaderValue::as_bytes),
                signature: match headers.get("x-buildkite-signature") {
                    Some(v) => Some(
                        v.to_str()
                            .map_err(|_| auth::AuthError::Malformed("header is not ASCII"))?,
                    ),
                    None => None,
                },
            };
            auth::verify_buildkite(
                &source.secrets,
                credentials,
                body,
                now,
                state.signature_window_secs,
            )
        }
        SourceKind::Bitbucket => {
            let signature = match headers.get("x-hub-signature") {
                Some(v) => Some(
                    v.to_str()
                        .map_err(|_| auth::AuthError::Malformed("header is not ASCII"))?,
                ),
                None => None,
            };
            auth::verify_bitbucket(&source.secrets, signature, body)
        }
    }
}

fn event_name(kind: SourceKind, headers: &HeaderMap) -> Result<String, Refusal> {
    let name = match kind {
        SourceKind::Buildkite => "X-Buildkite-Event",
        SourceKind::Bitbucket => "X-Event-Key",
    };
    let value = headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default();
    let valid = !value.is_empty()
        && value.len() <= MAX_EVENT_NAME
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'_' | b'-'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "missing_event",
            format!("header {name} is missing or not an event name"),
        ))
    }
}

async fn append(
    state: &AppState,
    source: &Source,
    event: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, Refusal> {
    let parsed: Value = serde_json::from_slice(body).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("body is not JSON: {e}"),
        )
    })?;
    if !parsed.is_object() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "body is JSON but not an object",
        ));
    }
    let key = routing::routing_key(&source.id, source.kind, event, &parsed);
    let request_uuid = match source.kind {
        SourceKind::Bitbucket => headers.get("x-request-uuid").and_then(|v| v.to_str().ok()),
        SourceKind::Buildkite => None,
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
