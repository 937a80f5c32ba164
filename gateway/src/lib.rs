//! hookfold's gateway: authenticates Buildkite and Bitbucket webhooks and appends them,
//! byte for byte, to a Kafka topic, answering 202 only once the broker has the record.
//!
//! Pure parts ([`auth`], [`routing`], [`rate_limit`]) have no I/O; [`app`] is the HTTP
//! adapter, [`publish`] the Kafka adapter and [`server`] the listener.

pub mod app;
pub mod auth;
pub mod config;
pub mod metrics;
pub mod publish;
pub mod rate_limit;
pub mod routing;
pub mod server;
