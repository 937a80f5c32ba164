//! hookfold's processor: a consumer group member that folds webhook events into
//! per-entity state held in RocksDB (one store per input partition) and emits incident
//! events, effectively once or, in Kafka transactions, exactly once (see [`engine`]).
//!
//! The folding itself is pure and lives in `hookfold-rules`; this crate is the adapter
//! around it (docs/ARCHITECTURE.md maps it):
//! - the running processor: [`consumer`] (the loop), [`rebalance`] (what the group
//!   decides), [`task`] (one per owned partition, its states and transitions), [`engine`]
//!   (the batch: fold, outputs, the guarantee behind one seam), [`restore`] (stores brought
//!   up to their changelog), [`tick`] (time for quiet partitions);
//! - Kafka and RocksDB: [`clients`] (every client's settings), [`delivery`] (acks counted
//!   per batch, transactions), [`changelog`] (its records and where a partition is at),
//!   [`store`] (RocksDB), [`topics`] (creating and checking the topics);
//! - the subcommands: [`rebuild`], [`tail`], [`open_incidents`] (`incidents`), [`view`],
//!   [`route_check`] (`routes`),
//!   and [`http`] and [`metrics`] for `/metrics` and the probes; [`config`].

pub mod changelog;
pub mod clients;
pub mod config;
pub mod consumer;
pub mod delivery;
pub mod engine;
pub mod group_reader;
pub mod http;
pub mod metrics;
pub mod open_incidents;
pub mod rebalance;
pub mod rebuild;
pub mod restore;
pub mod route_check;
pub mod store;
pub mod tail;
pub mod task;
pub mod tick;
pub mod topics;
pub mod view;

/// The state codec, re-exported: the store, the engine and the benchmarks use it from here.
pub use hookfold_state::codec;
