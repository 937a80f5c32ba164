//! The end-to-end test harness: a real Apache Kafka (started here from the jars
//! `scripts/install-tools.sh` installs, or the Kafka named by `KAFKA_BOOTSTRAP_SERVERS`),
//! the real hookfold binaries as child processes, real HTTP, and an independent consumer
//! to read what landed on a topic.
//!
//! One module a job:
//! - the broker: [`kafka`] launches KRaft nodes, [`certs`] and [`oidc`] make a test CA and
//!   identity provider for secured listeners, [`broker`] picks the broker a test talks to,
//!   [`topics`] creates and reads topics and names a processor deployment's;
//! - the binaries: [`process`] runs children, [`gateway`], [`processor`] and [`view`] run
//!   the binaries on free ports, [`group`] follows processors sharing a consumer group;
//! - input: [`records`] and [`webhooks`] make it, [`load`] sends a load of it to a
//!   gateway, [`fuzz_seeds`] writes the fuzzers' seeds;
//! - outcome: [`runs`] collects a processor's run and makes the reference run,
//!   [`comparisons`] check a run against a reference run, [`logs`] reads what a process
//!   logged;
//! - [`wait`]: the one wait loop.
//!
//! Every wait here polls a condition with a deadline ([`wait`]); nothing sleeps for a fixed
//! time and hopes. No child binds a fixed port, so a test does not depend on what else
//! runs on the machine.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub mod broker;
pub mod certs;
pub mod comparisons;
pub mod fuzz_seeds;
pub mod gateway;
pub mod group;
pub mod kafka;
pub mod load;
pub mod logs;
pub mod oidc;
pub mod process;
pub mod processor;
pub mod records;
pub mod runs;
pub mod topics;
pub mod view;
pub mod wait;
pub mod webhooks;

pub use broker::Broker;
pub use comparisons::{assert_same_incidents, outputs_by_id};
pub use gateway::Gateway;
pub use process::{Process, Signal, workspace_binary};
pub use processor::{Processor, ProcessorSetup};
pub use runs::{Run, reference_run, stop_and_collect};
pub use topics::{Topics, create_topic, headers_of, read_all, read_all_uncommitted, watermarks};
pub use wait::{try_wait_for, wait_for, wait_until};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free loopback port")
}

/// A topic name no other test (or earlier run against the same Kafka) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// This crate's directory in the checkout being tested. Cargo sets `CARGO_MANIFEST_DIR`
/// when it runs a test or binary; the build-time value is only the fallback, because
/// cargo reuses a shared target directory's artifacts across checkouts at other paths
/// (a CI clone and a working copy), and then the built-in path is another checkout's.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `../shared/fixtures` beside the repository (override with `HOOKFOLD_FIXTURES`).
/// A binary run outside cargo from another checkout falls back to `../shared/fixtures`
/// from the working directory.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HOOKFOLD_FIXTURES") {
        return PathBuf::from(dir);
    }
    let built = manifest_dir().join("../../shared/fixtures");
    let here = Path::new("../shared/fixtures");
    if !built.is_dir() && here.is_dir() {
        return here.to_path_buf();
    }
    built
}

pub fn fixture(path: &str) -> Vec<u8> {
    let full = fixtures_dir().join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("reading fixture {}: {e}", full.display()))
}

/// Seconds since the epoch, for signature timestamps.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
