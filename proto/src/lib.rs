//! hookfold's wire contract, shared by the gateway and the processor.
//!
//! - [`cloudevents`]: the CloudEvents 1.0 Kafka binary-mode headers on both topics.
//! - [`v1`]: the prost types of `proto/hookfold/v1/*.proto`, above all [`v1::IncidentEvent`],
//!   the value of every record on the incident topic.
//! - [`incident`]: the CloudEvents headers of an incident record.
//! - [`json`]: a proto3-JSON rendering of an incident, for humans and tools.
//! - [`timestamp`]: RFC 3339 <-> `google.protobuf.Timestamp`.

pub mod cloudevents;
pub mod env;
pub mod incident;
pub mod json;
pub mod timestamp;

/// Generated from `proto/hookfold/v1/*.proto` (package `hookfold.v1`) by `build.rs`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/hookfold.v1.rs"));
}

pub use incident::incident_event_headers;

/// Re-exported so users need not depend on prost themselves to encode or decode.
pub use prost::{self, Message};
pub use prost_types;
