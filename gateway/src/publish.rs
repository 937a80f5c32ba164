//! The Kafka side: one idempotent producer (acks=all) shared by every request. A request
//! is answered 202 only from the delivery report of its own record.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hookfold_kafka::LastError;
use hookfold_proto::cloudevents::{self, CloudEventHeaders};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, ClientContext};

use crate::config::KafkaConfig;

/// One webhook, ready for the topic.
pub struct WebhookRecord<'a> {
    pub key: &'a str,
    pub headers: &'a CloudEventHeaders,
    /// The paths redacted out of the body, comma-separated, when any were.
    pub redacted: Option<&'a str>,
    pub body: &'a [u8],
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker did not acknowledge the record: {0}")]
    NotAcknowledged(#[source] KafkaError),
}

impl PublishError {
    /// A short label for metrics.
    pub fn label(&self) -> String {
        match self {
            PublishError::NotAcknowledged(e) => match e.rdkafka_error_code() {
                Some(code) => format!("{code:?}"),
                None => "other".into(),
            },
        }
    }
}

/// The record headers for CloudEvents attributes, `ce_specversion` first, then
/// `hookfold-redacted` when the body was redacted.
pub fn kafka_headers(headers: &CloudEventHeaders, redacted: Option<&str>) -> OwnedHeaders {
    let mut out = hookfold_kafka::cloudevent_headers(headers, 1);
    if let Some(paths) = redacted {
        out = out.insert(Header {
            key: cloudevents::REDACTED,
            value: Some(paths),
        });
    }
    out
}

/// The producer's context: keeps librdkafka's last client-wide error, so that `/readyz`
/// can say why the broker does not answer (wrong credentials, a certificate).
#[derive(Default)]
pub struct GatewayContext {
    last_error: Arc<LastError>,
}

impl ClientContext for GatewayContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.last_error.record(&error, reason);
        tracing::error!(target: "librdkafka", error = %error, "Kafka client error: {reason}");
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.last_error.record_log(facility, message);
        hookfold_kafka::log_librdkafka(level, facility, message);
    }
}

type GatewayProducer = FutureProducer<GatewayContext>;

/// The producer and how many times it has been replaced.
struct Current {
    producer: GatewayProducer,
    /// Its context's last error (the context itself is wrapped out of reach).
    last_error: Arc<LastError>,
    generation: u64,
}

#[derive(Clone)]
pub struct Publisher {
    current: Arc<RwLock<Current>>,
    last_replaced: Arc<Mutex<Option<Instant>>>,
    client: ClientConfig,
    topic: String,
}

/// Room for the key and CloudEvents headers on top of the largest body accepted.
const RECORD_OVERHEAD: usize = 64 * 1024;

impl Publisher {
    /// The producer's client settings. Public so that the broker-ceiling benchmark runs
    /// a producer configured exactly like the gateway's.
    pub fn client_config(config: &KafkaConfig, max_body_bytes: usize) -> ClientConfig {
        let mut client = hookfold_kafka::client_config(
            &config.bootstrap_servers,
            &config.properties,
            &config.resolved_security,
        );
        // Records of concurrent requests share a batch. Both overridable through
        // kafka.properties.
        for (key, default) in [("client.id", "hookfold-gateway"), ("linger.ms", "2")] {
            if !config.properties.contains_key(key) {
                client.set(key, default);
            }
        }
        client
            // Durability is the gateway's promise; these are not negotiable by config.
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // The ack timeout bounds how long a webhook sender waits before its 503.
            .set(
                "message.timeout.ms",
                config.ack_timeout.as_millis().to_string(),
            )
            // librdkafka's default (1,000,000 bytes) is below the default body limit.
            .set(
                "message.max.bytes",
                (max_body_bytes + RECORD_OVERHEAD).to_string(),
            );
        client
    }

    pub fn new(config: &KafkaConfig, max_body_bytes: usize) -> Result<Self, KafkaError> {
        let client = Self::client_config(config, max_body_bytes);
        let (producer, last_error) = Self::create(&client)?;
        Ok(Self {
            current: Arc::new(RwLock::new(Current {
                producer,
                last_error,
                generation: 0,
            })),
            last_replaced: Arc::new(Mutex::new(None)),
            client,
            topic: config.topic.clone(),
        })
    }

    fn create(client: &ClientConfig) -> Result<(GatewayProducer, Arc<LastError>), KafkaError> {
        let context = GatewayContext::default();
        let last_error = context.last_error.clone();
        Ok((client.create_with_context(context)?, last_error))
    }

    fn producer(&self) -> (GatewayProducer, u64) {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        (current.producer.clone(), current.generation)
    }

    /// Errors after which this producer's idempotence session is unusable: every later
    /// record would fail too (seen with a broker restarted without its producer state,
    /// which answers with an unknown error). A new producer starts a new session.
    fn breaks_session(error: &KafkaError, producer: &GatewayProducer) -> bool {
        producer.client().fatal_error().is_some()
            || matches!(
                error.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::Unknown
                        | RDKafkaErrorCode::Fatal
                        | RDKafkaErrorCode::OutOfOrderSequenceNumber
                        | RDKafkaErrorCode::UnknownProducerId
                        | RDKafkaErrorCode::InvalidProducerEpoch
                        | RDKafkaErrorCode::InvalidProducerIdMapping
                        | RDKafkaErrorCode::ProducerFenced
                )
            )
    }

    /// Replaces the producer of `generation` (once; at most once a second).
    fn replace(&self, generation: u64) {
        let mut last = self.last_replaced.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return;
        }
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.generation != generation {
            return; // another request already replaced it
        }
        match Self::create(&self.client) {
            Ok((producer, last_error)) => {
                current.producer = producer;
                current.last_error = last_error;
                current.generation += 1;
                *last = Some(Instant::now());
                tracing::warn!(
                    generation = current.generation,
                    "replaced the Kafka producer after an error that breaks its session"
                );
            }
            Err(e) => tracing::error!(error = %e, "cannot create a new Kafka producer"),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Resolves once the broker has the record (acks=all), or fails.
    pub async fn publish(&self, record: WebhookRecord<'_>) -> Result<(i32, i64), PublishError> {
        let kafka_record = FutureRecord::to(&self.topic)
            .key(record.key)
            .payload(record.body)
            .headers(kafka_headers(record.headers, record.redacted));
        // Timeout::Never on the local queue: message.timeout.ms already bounds the wait.
        let (producer, generation) = self.producer();
        match producer.send(kafka_record, Timeout::Never).await {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((e, _)) => {
                if Self::breaks_session(&e, &producer) {
                    self.replace(generation);
                }
                Err(PublishError::NotAcknowledged(e))
            }
        }
    }

    /// Whether the broker answers and knows the topic, within `timeout`.
    pub async fn broker_ready(&self, timeout: Duration) -> Result<(), String> {
        let (producer, _) = self.producer();
        let last_error = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .last_error
            .clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| match last_error.reason() {
                    Some(reason) => format!("broker unreachable: {e}; last client error: {reason}"),
                    None => format!("broker unreachable: {e}"),
                })?;
            match metadata.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                Some(t)
                    if t.error().is_some_and(|e| {
                        RDKafkaErrorCode::from(e) == RDKafkaErrorCode::TopicAuthorizationFailed
                    }) =>
                {
                    Err(format!(
                        "not authorized to describe topic `{topic}`: grant what \
                         `hookfold-gateway --print-acls <its principal>` prints"
                    ))
                }
                _ => Err(format!("topic `{topic}` does not exist on the broker")),
            }
        })
        .await
        .map_err(|e| format!("readiness check panicked: {e}"))?
    }

    /// Waits for every queued record to be acked or to fail.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer().0.flush(Timeout::After(timeout))
    }
}
