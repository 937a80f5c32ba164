//! How the processor's state is stored and replayed, with no I/O: [`codec`] turns a
//! [`hookfold_rules::KeyState`] into the bytes RocksDB and the changelog hold, and
//! [`changelog`] reads changelog records and folds a partition's sequence of them into store
//! writes. The processor's RocksDB and Kafka adapters wrap these; the fuzz targets
//! (`fuzz/`) exercise them on arbitrary bytes, so nothing here may panic on input.

pub mod changelog;
pub mod codec;
