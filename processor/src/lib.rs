//! hookfold's processor: a consumer group member that folds webhook events into
//! per-entity state held in RocksDB (one store per input partition) and emits incident
//! events, effectively once or, in Kafka transactions, exactly once (see [`engine`]).
//!
//! The folding itself is pure and lives in `hookfold-rules`; this crate is the adapter
//! around it: [`store`] (RocksDB), [`consumer`] and [`engine`] (Kafka), [`tail`].

pub mod changelog;
pub mod config;
pub mod consumer;
pub mod delivery;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod open_incidents;
pub mod rebuild;
pub mod restores;
pub mod store;
pub mod tail;
pub mod tick;
pub mod topics;
pub mod view;

/// The state codec, re-exported: the store, the engine and the benchmarks use it from here.
pub use hookfold_state::codec;
