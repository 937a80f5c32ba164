//! Knowing why a client cannot connect. librdkafka retries a broker that refuses it
//! forever and reports each failure only to the client context's error callback; a
//! process that waits on a metadata request just times out. [`LastError`] keeps what the
//! callback saw, and [`wait_for_brokers`] fails fast, naming it, when the failure is one
//! that retrying cannot fix (authentication, TLS).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::client::Client;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// The last client-wide error librdkafka reported.
#[derive(Debug, Default)]
pub struct LastError(Mutex<Option<(Option<RDKafkaErrorCode>, String)>>);

impl LastError {
    /// Call from `ClientContext::error`.
    pub fn record(&self, error: &KafkaError, reason: &str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((error.rdkafka_error_code(), reason.to_owned()));
    }

    /// librdkafka's words for it.
    pub fn reason(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, reason)| reason.clone())
    }

    /// Whether it is a mistake in the settings or the credentials: retrying the same
    /// settings cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref(),
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
/// last error librdkafka reported.
pub fn wait_for_brokers<C: ClientContext>(
    client: &Client<C>,
    last: &LastError,
    bootstrap: &str,
    timeout: Duration,
) -> Result<(), ConnectError> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = client.fetch_metadata(None, Duration::from_millis(500));
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
