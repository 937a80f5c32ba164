//! CloudEvents attributes as Kafka record headers (the Kafka protocol binding, binary
//! mode), one conversion for every record hookfold writes with them: the gateway's webhook
//! records, the processor's incident events and its ticks.

use hookfold_proto::cloudevents::CloudEventHeaders;
use rdkafka::message::{Header, OwnedHeaders};

/// The record headers of `attributes`, `ce_specversion` first, with room for `extra`
/// headers the caller inserts after them.
pub fn cloudevent_headers(attributes: &CloudEventHeaders, extra: usize) -> OwnedHeaders {
    let pairs = attributes.pairs();
    let mut headers = OwnedHeaders::new_with_capacity(pairs.len() + extra);
    for (key, value) in pairs {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    headers
}
