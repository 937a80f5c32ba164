//! The Kafka side: one idempotent producer (acks=all) shared by every request. A request
//! is answered 202 only from the delivery report of its own record.

use std::time::Duration;

use hookfold_proto::cloudevents::CloudEventHeaders;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::config::KafkaConfig;

/// One webhook, ready for the topic.
pub struct WebhookRecord<'a> {
    pub key: &'a str,
    pub headers: &'a CloudEventHeaders,
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

#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
}

impl Publisher {
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        let mut client = ClientConfig::new();
        client.set("client.id", "hookfold-gateway");
        for (key, value) in &config.properties {
            client.set(key, value);
        }
        client
            .set("bootstrap.servers", &config.bootstrap_servers)
            // Durability is the gateway's promise; these are not negotiable by config.
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // The ack timeout bounds how long a webhook sender waits before its 503.
            .set(
                "message.timeout.ms",
                config.ack_timeout.as_millis().to_string(),
            )
            .set("linger.ms", "2");
        Ok(Self {
            producer: client.create()?,
            topic: config.topic.clone(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Resolves once the broker has the record (acks=all), or fails.
    pub async fn publish(&self, record: WebhookRecord<'_>) -> Result<(i32, i64), PublishError> {
        let mut headers = OwnedHeaders::new_with_capacity(6);
        for (key, value) in record.headers.pairs() {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let kafka_record = FutureRecord::to(&self.topic)
            .key(record.key)
            .payload(record.body)
            .headers(headers);
        // Timeout::Never on the local queue: message.timeout.ms already bounds the wait.
        let delivery = self
            .producer
            .send(kafka_record, Timeout::Never)
            .await
            .map_err(|(e, _)| PublishError::NotAcknowledged(e))?;
        Ok((delivery.partition, delivery.offset))
    }

    /// Whether the broker answers and knows the topic, within `timeout`.
    pub async fn broker_ready(&self, timeout: Duration) -> Result<(), String> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| format!("broker unreachable: {e}"))?;
            match metadata.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                _ => Err(format!("topic `{topic}` does not exist on the broker")),
            }
        })
        .await
        .map_err(|e| format!("readiness check panicked: {e}"))?
    }

    /// Waits for every queued record to be acked or to fail.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(Timeout::After(timeout))
    }
}
