//! hookfold's gateway: authenticates Buildkite and Bitbucket webhooks and appends them to a
//! Kafka topic (byte for byte, except the members its sources redact), answering 202 only
//! once the broker has the record.
//!
//! Pure parts have no I/O: [`auth`], [`routing`] and [`redact`] (in `hookfold-webhook`,
//! re-exported) and
//! [`rate_limit`]; [`checks`] are the request checks, each answering with a [`refusal`];
//! [`app`] is the HTTP adapter (router and handlers), [`publish`] the Kafka adapter and
//! [`server`] the listener.

pub mod app;
pub mod checks;
pub mod config;
pub mod metrics;
pub mod publish;
pub mod rate_limit;
pub mod refusal;
pub mod server;

pub use hookfold_webhook::{auth, redact, routing};
