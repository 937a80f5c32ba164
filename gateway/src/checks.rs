//! The checks a webhook passes before anything is written, one function each, in the
//! order [`crate::app`] runs them: [`find_source`] (404) → [`admit`] (403 address, 429
//! rate) → [`require_json`] (415) → [`read_body`] (413, 408) → [`authenticate`] (401) →
//! [`event_name`] (400) → [`json_object`] (400).
//!
//! Invariants: each check either passes or answers with the [`Refusal`] the design names
//! for it; none writes anywhere (the only state they touch is the source's rate-limit
//! bucket, of which [`admit`] takes a token); the body is read only from a source that
//! admitted the peer, and parsed only once it is authenticated.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use hookfold_proto::cloudevents::SourceKind;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use ipnet::IpNet;
use serde_json::Value;

use crate::auth::{self, BuildkiteCredentials, Secret};
use crate::config::SourceConfig;
use crate::rate_limit::TokenBucket;
use crate::redact::JsonPath;
use crate::refusal::Refusal;

/// Longest event name accepted from `X-Buildkite-Event` / `X-Event-Key`.
const MAX_EVENT_NAME: usize = 128;

/// A configured source, as its requests are checked (and its bodies redacted).
pub struct Source {
    pub id: String,
    pub kind: SourceKind,
    secrets: Vec<Secret>,
    allowed: Vec<IpNet>,
    bucket: Option<TokenBucket>,
    /// What its bodies lose before they are stored.
    pub redact: Vec<JsonPath>,
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

/// How much body a request may send, and how fast.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// The source the URL names: 404 when none is configured with that id.
/// `url_token` is the last segment of `/webhooks/<id>/<token>`, which only a Test Engine
/// source has: for any other the path is unknown, and answered as an unknown source.
pub fn find_source<'a>(
    sources: &'a HashMap<String, Source>,
    id: &str,
    url_token: Option<&str>,
) -> Result<&'a Source, Refusal> {
    sources
        .get(id)
        .filter(|source| url_token.is_none() || source.kind == SourceKind::BuildkiteTestEngine)
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::NOT_FOUND,
                "unknown_source",
                "no webhook source is configured with this id",
            )
        })
}

/// The peer's address against `allowed_cidrs` (403), then a token from the source's rate
/// limit (429 with the wait as `Retry-After`).
pub fn admit(source: &Source, peer: SocketAddr) -> Result<(), Refusal> {
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

/// `Content-Type: application/json` (parameters such as `charset` allowed), else 415.
pub fn require_json(headers: &HeaderMap) -> Result<(), Refusal> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        ))
    }
}

/// The whole body, within `limits`: 413 over the size (a declared oversize body before
/// any of it is read), 408 when it does not arrive in time, 400 when it cannot be read.
pub async fn read_body(
    limits: BodyLimits,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<u8>, Refusal> {
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body is over the {} byte limit", limits.max_bytes),
        )
    };
    // Refuse a declared oversize body before reading any of it.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|len| *len > limits.max_bytes as u64) {
        // Read and drop a moderately oversized body before answering, so that a sender
        // still writing it reads the 413 instead of a reset connection. A body that is
        // hugely oversized is refused at once.
        if len <= 4 * limits.max_bytes as u64 {
            let drain = Limited::new(body, 4 * limits.max_bytes).collect();
            let _ = tokio::time::timeout(limits.timeout, drain).await;
        }
        return Err(too_large());
    }
    let limited = Limited::new(body, limits.max_bytes);
    match tokio::time::timeout(limits.timeout, limited.collect()).await {
        Err(_) => Err(Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "body not received within {} s",
                limits.timeout.as_secs_f64()
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

/// The source's token or signature over `body` (a Buildkite signature's timestamp within
/// `signature_window_secs` of now). The error says why, for the 401 ([`unauthorized`])
/// and the metrics.
pub fn authenticate(
    source: &Source,
    headers: &HeaderMap,
    body: &[u8],
    signature_window_secs: u64,
    url_token: Option<&str>,
) -> Result<(), auth::AuthError> {
    match source.kind {
        SourceKind::BuildkiteTestEngine => auth::verify_test_engine(&source.secrets, url_token),
        SourceKind::Buildkite => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let credentials = BuildkiteCredentials {
                token: headers.get("x-buildkite-token").map(HeaderValue::as_bytes),
                signature: ascii_header(headers, "x-buildkite-signature")?,
            };
            auth::verify_buildkite(
                &source.secrets,
                credentials,
                body,
                now,
                signature_window_secs,
            )
        }
        SourceKind::Bitbucket => {
            let signature = ascii_header(headers, "x-hub-signature")?;
            auth::verify_bitbucket(&source.secrets, signature, body)
        }
    }
}

/// A header that must be ASCII when present.
fn ascii_header<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a str>, auth::AuthError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| auth::AuthError::Malformed("header is not ASCII"))
        })
        .transpose()
}

/// The 401 for a failed [`authenticate`].
pub fn unauthorized(error: &auth::AuthError) -> Refusal {
    Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", error.to_string())
}

/// The event name from `X-Buildkite-Event` or `X-Event-Key`, or for Test Engine (which
/// sends no event header) the body's `event`: letters, digits and `. : _ -`, at most 128
/// bytes; else 400.
pub fn event_name(kind: SourceKind, headers: &HeaderMap, body: &[u8]) -> Result<String, Refusal> {
    let header = match kind {
        SourceKind::Buildkite => Some("X-Buildkite-Event"),
        SourceKind::Bitbucket => Some("X-Event-Key"),
        SourceKind::BuildkiteTestEngine => None,
    };
    let (value, from) = match header {
        Some(name) => {
            let value = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .unwrap_or_default()
                .to_owned();
            (value, format!("header {name}"))
        }
        None => {
            let parsed = json_object(body)?;
            let value = parsed
                .get("event")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            (value, "the body's `event`".to_owned())
        }
    };
    let valid = !value.is_empty()
        && value.len() <= MAX_EVENT_NAME
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'_' | b'-'));
    if valid {
        Ok(value)
    } else {
        Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "missing_event",
            format!("{from} is missing or not an event name"),
        ))
    }
}

/// The body parsed, when it is a JSON object; else 400.
pub fn json_object(body: &[u8]) -> Result<Value, Refusal> {
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
    Ok(parsed)
}
