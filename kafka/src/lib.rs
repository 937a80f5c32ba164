//! The settings every Kafka client hookfold builds starts from: the gateway's producer, the
//! processor's consumers and producers, `tail`, `topics`, `rebuild`, `state`, `incidents`,
//! `view` and the benchmarks' clients; the reader of partitions to their end ([`PartitionReader`]); and
//! CloudEvents attributes as record headers ([`cloudevent_headers`]).
//! One function ([`client_config`]) so that no client connects with less than the operator
//! configured (before it, `tail` ignored `kafka.properties`).
//!
//! Invariants:
//! - secrets (SASL passwords, key passwords) are read from a file or an environment
//!   variable when the configuration is loaded, never written inline, and never appear in
//!   `Debug` output or error messages;
//! - `[kafka.security]` is checked as a whole before anything connects ([`Security::resolve`]),
//!   with one message per mistake; `[kafka.properties]` still passes anything else through,
//!   but may not set what `[kafka.security]` owns.
//!
//! Modules: [`security`] (`[kafka.security]`: TLS, SASL, secrets), [`connect`] (the startup
//! wait for the brokers and librdkafka's last error), [`acl`] (the ACLs a configuration needs),
//! [`reader`] (reading partitions to their end), [`headers`] (CloudEvents as record headers).

pub mod acl;
pub mod connect;
pub mod headers;
pub mod reader;
pub mod security;

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;

pub use connect::{
    ConnectError, LastError, is_authorization_error, log_librdkafka, wait_for_brokers,
};
pub use headers::cloudevent_headers;
pub use reader::{AtEnd, NEVER, PartitionReader, Polled, ReadError, Start};
pub use security::{Mechanism, Protocol, ResolvedSecurity, Sasl, Security, SecurityError};

/// A client with the operator's `properties`, then the resolved security settings, then
/// `bootstrap.servers`. Callers add what their role needs (group, acks, ...).
pub fn client_config(
    bootstrap_servers: &str,
    properties: &BTreeMap<String, String>,
    security: &ResolvedSecurity,
) -> ClientConfig {
    let mut client = ClientConfig::new();
    // librdkafka reports a broker connection failure (a plaintext client on a TLS port,
    // say) only as an info-level log line, and drops lines below the level it is given,
    // which rdkafka takes from the `log` filter: keep at least info, so that
    // `LastError` sees them (what is printed is still up to RUST_LOG).
    if (client.log_level as i32) < (RDKafkaLogLevel::Info as i32) {
        client.set_log_level(RDKafkaLogLevel::Info);
    }
    for (key, value) in properties {
        client.set(key, value);
    }
    security.apply(&mut client);
    client.set("bootstrap.servers", bootstrap_servers);
    client
}
