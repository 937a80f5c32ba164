//! `HOOKFOLD_*` environment variables that are not configuration keys.
//!
//! The gateway and the processor take every `HOOKFOLD_<KEY>` variable as a configuration
//! key and refuse an unknown one (so a misspelt key is an error, not a silent default). The
//! project's own scripts and tools read a few `HOOKFOLD_` variables of their own, which a
//! developer may well have exported; both binaries skip these.

/// The variables (without the `HOOKFOLD_` prefix) that configuration skips: `CONFIG` names
/// the file (`--config`); the rest belong to `scripts/`, the justfile and the test harness.
pub const NOT_CONFIG_KEYS: &[&str] = &[
    "CONFIG",
    "CACHE",
    "TOOLS",
    "BIN_DIR",
    "EXTERNAL_KAFKA",
    "KAFKA_HEAP",
    "KAFKA_LIBS",
    "BROKER_PORT",
    "PARTITIONS",
    "VENV",
    "VALIDATE_SKIP_BINARIES",
    "FIXTURES",
    // The processor's crash points for the exactly-once tests (processor/src/engine.rs).
    "TEST_CRASH_AT",
];
