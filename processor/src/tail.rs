//! `hookfold-processor tail`: the incident topic as JSON lines, for a person to read.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use hookfold_kafka::{AtEnd, PartitionReader, Polled, Start};
use hookfold_proto::Message as _;
use hookfold_proto::v1::IncidentEvent;
use rdkafka::ClientConfig;
use rdkafka::message::{Headers, Message};
use serde_json::{Map, Value, json};

pub struct TailOptions {
    /// The client settings (`clients::client_config`: bootstrap, properties, security).
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
    let (start, at_end) = match (options.from_beginning, options.follow) {
        (true, false) => (Start::Beginning, AtEnd::Stop),
        (true, true) => (Start::Beginning, AtEnd::Follow),
        // Only what comes from now on: there is nothing to read to an end.
        (false, _) => (Start::End, AtEnd::Follow),
    };
    let mut client = options.client.clone();
    client.set("group.id", "hookfold-tail");
    let mut reader = PartitionReader::whole_topic(client, &options.topic, start, at_end, STALL)
        .with_context(|| {
            format!(
                "reading {} from {}",
                options.topic, options.bootstrap_servers
            )
        })?;
    let mut printed = 0;
    loop {
        if !options.follow && reader.loaded() {
            return Ok(printed);
        }
        if let Polled::Record(message) = reader.poll(Duration::from_millis(200))? {
            if options.summary {
                writeln!(out, "{}", summarize(&message))?;
            } else {
                writeln!(out, "{}", render(&message))?;
            }
            printed += 1;
        }
    }
}

/// How long the brokers may send nothing before the end of a partition.
const STALL: Duration = Duration::from_secs(30);

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
