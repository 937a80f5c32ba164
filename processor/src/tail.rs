//! `hookfold-processor tail`: the incident topic as JSON lines, for a person to read.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hookfold_proto::Message as _;
use hookfold_proto::v1::IncidentEvent;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Map, Value, json};

pub struct TailOptions {
    /// The client settings (`consumer::client_config`: bootstrap, properties, security).
    pub client: ClientConfig,
    pub bootstrap_servers: String,
    pub topic: String,
    pub from_beginning: bool,
    pub follow: bool,
    /// One human line per incident event instead of JSON.
    pub summary: bool,
}

/// Prints records until the end of every partition (or forever with `follow`).
pub fn tail(options: &TailOptions, out: &mut impl Write) -> anyhow::Result<u64> {
    let consumer: BaseConsumer = options
        .client
        .clone()
        .set("group.id", "hookfold-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .context("creating the Kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&options.topic), Duration::from_secs(10))
        .with_context(|| {
            format!(
                "reading metadata of {} from {}",
                options.topic, options.bootstrap_servers
            )
        })?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == options.topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .with_context(|| format!("topic {} does not exist", options.topic))?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in topic.partitions() {
        let id = partition.id();
        let (low, high) = consumer.fetch_watermarks(&options.topic, id, Duration::from_secs(10))?;
        let start = if options.from_beginning {
            Offset::Beginning
        } else {
            Offset::End
        };
        assignment.add_partition_offset(&options.topic, id, start)?;
        if options.from_beginning && high > low {
            ends.insert(id, high);
        }
    }
    consumer.assign(&assignment)?;
    let mut printed = 0;
    let mut idle_since = Instant::now();
    loop {
        if !options.follow && ends.is_empty() {
            return Ok(printed);
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                idle_since = Instant::now();
                if options.summary {
                    writeln!(out, "{}", summarize(&message))?;
                } else {
                    writeln!(out, "{}", render(&message))?;
                }
                printed += 1;
                if ends
                    .get(&message.partition())
                    .is_some_and(|end| message.offset() + 1 >= *end)
                {
                    ends.remove(&message.partition());
                }
            }
            // A topic written in transactions (exactly_once) ends in commit markers, never
            // delivered: the end is where librdkafka says (the last stable offset).
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                ends.remove(&partition);
            }
            Some(Err(e)) => bail!("reading {}: {e}", options.topic),
            None => {
                if !options.follow && idle_since.elapsed() > Duration::from_secs(30) {
                    bail!(
                        "no records for 30 s before the end of partitions {:?}",
                        ends.keys()
                    );
                }
            }
        }
    }
}

fn summarize(message: &impl Message) -> String {
    match IncidentEvent::decode(message.payload().unwrap_or_default()) {
        Ok(event) => {
            let transition = event
                .transition()
                .as_str_name()
                .trim_start_matches("TRANSITION_");
            let reason = match event.resolution_reason() {
                hookfold_proto::v1::ResolutionReason::Unspecified => String::new(),
                r => format!(
                    " ({})",
                    r.as_str_name()
                        .trim_start_matches("RESOLUTION_REASON_")
                        .to_ascii_lowercase()
                ),
            };
            format!(
                "{transition:<8} {:<55} {}{reason}",
                event.dedup_key, event.summary
            )
        }
        Err(e) => format!(
            "?        offset {}: not an IncidentEvent: {e}",
            message.offset()
        ),
    }
}

fn render(message: &impl Message) -> Value {
    let mut headers = Map::new();
    if let Some(h) = message.headers() {
        for header in h.iter() {
            let value = String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
            headers.insert(header.key.to_string(), Value::String(value));
        }
    }
    let event = match IncidentEvent::decode(message.payload().unwrap_or_default()) {
        Ok(event) => hookfold_proto::json::incident_to_json(&event),
        Err(e) => json!({"error": format!("not an IncidentEvent: {e}")}),
    };
    json!({
        "partition": message.partition(),
        "offset": message.offset(),
        "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        "headers": headers,
        "event": event,
    })
}
