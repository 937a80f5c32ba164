//! Knowing why a client cannot connect. librdkafka retries a broker that refuses it
//! forever and reports each failure only to the client context's error callback; a
//! process that waits on a metadata request just times out. [`LastError`] keeps what the
//! callback saw (and the last broker failure librdkafka logged), and [`wait_for_brokers`] fails fast, naming it, when the failure is one
//! that retrying cannot fix (authentication, TLS).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::client::Client;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// The last client-wide error librdkafka reported, and the last broker connection
/// failure it logged (a plaintext client on a TLS port shows only there: librdkafka logs
/// "Disconnected while requesting ApiVersion: might be caused by incorrect
/// security.protocol configuration" at info level and reports "1/1 brokers are down").
#[derive(Debug, Default)]
pub struct LastError(Mutex<Seen>);

#[derive(Debug, Default)]
struct Seen {
    error: Option<(Option<RDKafkaErrorCode>, String)>,
    broker_failure: Option<String>,
}

impl LastError {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Call from `ClientContext::error`.
    pub fn record(&self, error: &KafkaError, reason: &str) {
        let mut reason = reason.to_owned();
        // librdkafka quotes the identity provider's answer, which does not say where the
        // settings are.
        if reason.contains("Failed to acquire SASL OAUTHBEARER token") {
            reason.push_str(
                " (from the identity provider: check kafka.security.sasl.token_endpoint_url, \
                 client_id and the client secret)",
            );
        }
        self.seen().error = Some((error.rdkafka_error_code(), reason));
    }

    /// Call from `ClientContext::log`: keeps broker connection failures (facility `FAIL`).
    pub fn record_log(&self, facility: &str, message: &str) {
        if facility == "FAIL" {
            let mut failure = message.to_owned();
            // The broker closing the connection on the very first request is what a
            // protocol mismatch looks like (librdkafka says so only in some versions).
            if message.contains("Disconnected") && message.contains("APIVERSION_QUERY") {
                failure.push_str(
                    ": the listener probably expects another protocol (a plaintext client on \
                     a TLS port?): check kafka.security.protocol and the port",
                );
            }
            self.seen().broker_failure = Some(failure);
        }
    }

    /// librdkafka's words for it.
    pub fn reason(&self) -> Option<String> {
        let seen = self.seen();
        match (&seen.error, &seen.broker_failure) {
            (Some((_, error)), Some(failure)) => Some(format!("{error}; {failure}")),
            (Some((_, error)), None) => Some(error.clone()),
            (None, Some(failure)) => Some(failure.clone()),
            (None, None) => None,
        }
    }

    /// Whether it is a mistake in the settings or the credentials: retrying the same
    /// settings cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.seen().error.as_ref(),
            Some((
                Some(
                    RDKafkaErrorCode::Authentication
                        | RDKafkaErrorCode::SaslAuthenticationFailed
                        | RDKafkaErrorCode::SSL
                        | RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::GroupAuthorizationFailed
                        | RDKafkaErrorCode::ClusterAuthorizationFailed
                ),
                _
            ))
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("Kafka at {bootstrap} refuses this client: {reason}")]
    Refused { bootstrap: String, reason: String },
    #[error("Kafka at {bootstrap} did not answer within {timeout:?}: {reason}")]
    Unreachable {
        bootstrap: String,
        timeout: Duration,
        reason: String,
    },
}

/// Waits until a broker answers a metadata request. Fails at once on a permanent error
/// (see [`LastError::is_permanent`]), after `timeout` otherwise; either way naming the
/// last error librdkafka reported. `serve_events` runs between attempts: a consumer's
/// error and log callbacks run only while it is polled.
pub fn wait_for_brokers<C: ClientContext>(
    client: &Client<C>,
    last: &LastError,
    bootstrap: &str,
    timeout: Duration,
    mut serve_events: impl FnMut(),
) -> Result<(), ConnectError> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = client.fetch_metadata(None, Duration::from_millis(500));
        serve_events();
        if attempt.is_ok() {
            return Ok(());
        }
        if last.is_permanent() {
            return Err(ConnectError::Refused {
                bootstrap: bootstrap.to_owned(),
                reason: last.reason().unwrap_or_default(),
            });
        }
        if Instant::now() >= deadline {
            let reason = last.reason().unwrap_or_else(|| match attempt {
                Err(e) => e.to_string(),
                Ok(_) => String::new(),
            });
            return Err(ConnectError::Unreachable {
                bootstrap: bootstrap.to_owned(),
                timeout,
                reason,
            });
        }
    }
}

/// Whether `error` is the broker refusing an operation by ACL: retrying cannot help, the
/// principal needs a grant.
pub fn is_authorization_error(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
        )
    )
}

/// What rdkafka's default `ClientContext::log` does (librdkafka's syslog levels onto
/// `tracing`, target `librdkafka`), for contexts that also watch the log.
pub fn log_librdkafka(level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel::*;
    match level {
        Emerg | Alert | Critical | Error => {
            tracing::error!(target: "librdkafka", "librdkafka: {facility} {message}")
        }
        Warning => tracing::warn!(target: "librdkafka", "librdkafka: {facility} {message}"),
        Notice | Info => tracing::info!(target: "librdkafka", "librdkafka: {facility} {message}"),
        Debug => tracing::debug!(target: "librdkafka", "librdkafka: {facility} {message}"),
    }
}
