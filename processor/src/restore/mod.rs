//! Restores: bringing the stores of newly assigned partitions up to their changelog while
//! the consumer goes on serving the other partitions (and the group) with these paused.
//! Kafka Streams' `StoreChangelogReader` is the model: one restore consumer for every
//! restoring partition of the process, partitions assigned to it and unassigned as their
//! restores start and end.
//!
//! Three threads whatever the number of partitions: the restore thread ([`restorer`]: one
//! changelog reader, each partition's replay, the exactly-once reconciliation), the writer
//! ([`writer`]: each store's table files, in order), and under `exactly_once` the reader of
//! the group's committed offsets ([`committed`]).
//!
//! Invariants:
//! - a partition has at most one restore; each start has a generation, and only a finished
//!   restore of the generation still wanted is handed to the engine ([`Restores::take_finished`]),
//!   so a restore cancelled (its partition revoked) is never adopted, even one that finished
//!   just before the cancel;
//! - [`Restores::start`] and [`Restores::cancel`] only send a command: the rebalance callback
//!   never waits on a restore; the restore thread handles commands in order, so a partition
//!   revoked and assigned again has its old store closed before it is opened again;
//! - the metrics `restoring`, `restore_records`, `restore_remaining` and `restore_seconds`
//!   follow each restore.
//!
//! Under `exactly_once` the group's committed offset is the truth of what was committed
//! (it is written in the batch's transaction). A restore first reads it, then brings the
//! store up to the changelog, read `read_committed`; a store behind the committed offset
//! (a crash between a commit and its store write) is up to it then. A store ahead of it
//! cannot come from a transaction: it is cleared and restored from the whole changelog
//! ([`restorer`]'s `reconcile`).

mod committed;
mod restorer;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use rdkafka::ClientConfig;

use crate::metrics::Metrics;
use crate::store::PartitionStore;

pub use committed::GroupOffsets;

/// A restore that has finished: the partition's store, up to date with its changelog.
pub struct Finished {
    pub partition: i32,
    pub store: PartitionStore,
}

/// What the restore thread is told: by [`Restores`], and by its writer and committed-offset
/// threads, through one channel, so that it waits on one thing when it has nothing to read.
enum Command {
    Start {
        partition: i32,
        generation: u64,
        /// The store, if the engine still had it open; otherwise the restore opens it.
        store: Option<PartitionStore>,
        path: std::path::PathBuf,
    },
    Cancel {
        partition: i32,
    },
    /// From the writer: a partition's writes are all in its store.
    Written(writer::Done),
    /// From the writer: it has let go of a cancelled partition's store.
    Dropped {
        partition: i32,
    },
    /// From the committed-offset reader.
    Committed(committed::Answer),
    /// Cancel everything, close the stores and end.
    Stop,
}

/// What the restore thread hands back.
struct Outcome {
    partition: i32,
    generation: u64,
    result: anyhow::Result<PartitionStore>,
}

/// Settings of the restore thread.
pub struct RestoreSettings {
    /// Client settings of the changelog reader (`clients::reader_config`).
    pub client: ClientConfig,
    pub changelog_topic: String,
    /// How long the broker may send nothing before a restore fails.
    pub timeout: Duration,
    /// `exactly_once`: where the group's committed offsets are read.
    pub group_offsets: Option<GroupOffsets>,
    pub metrics: Metrics,
}

pub struct Restores {
    commands: Sender<Command>,
    outcomes: Mutex<Receiver<Outcome>>,
    /// The generation of each partition's restore still wanted.
    wanted: Mutex<HashMap<i32, u64>>,
    next_generation: AtomicU64,
    thread: Option<JoinHandle<()>>,
}

impl Restores {
    /// Starts the restore threads (they wait for work).
    pub fn new(settings: RestoreSettings) -> std::io::Result<Self> {
        let (commands, inbox) = std::sync::mpsc::channel();
        let (outcomes, outbox) = std::sync::mpsc::channel();
        let events = commands.clone();
        let thread = std::thread::Builder::new()
            .name("restore".into())
            .spawn(move || restorer::run(settings, inbox, events, outcomes))?;
        Ok(Self {
            commands,
            outcomes: Mutex::new(outbox),
            wanted: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(0),
            thread: Some(thread),
        })
    }

    fn wanted(&self) -> MutexGuard<'_, HashMap<i32, u64>> {
        // A poisoned lock only means a panic elsewhere; the map is still consistent.
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts restoring `partition` into its store at `path` (`store`: already open).
    pub fn start(
        &self,
        partition: i32,
        store: Option<PartitionStore>,
        path: std::path::PathBuf,
    ) -> anyhow::Result<()> {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.wanted().insert(partition, generation);
        self.commands
            .send(Command::Start {
                partition,
                generation,
                store,
                path,
            })
            .map_err(|_| anyhow!("the restore thread has stopped"))
    }

    /// Stops and forgets the restores of partitions given up before they finished. Returns
    /// at once: the restore thread closes their stores.
    pub fn cancel(&self, partitions: &[i32]) {
        let mut wanted = self.wanted();
        for &partition in partitions {
            if wanted.remove(&partition).is_some() {
                let _ = self.commands.send(Command::Cancel { partition });
            }
        }
    }

    /// [`Restores::cancel`] for every restore.
    pub fn cancel_all(&self) {
        let all: Vec<i32> = self.wanted().keys().copied().collect();
        self.cancel(&all);
    }

    /// The restores that have finished since the last call (of generations still wanted);
    /// fails on the first that failed.
    pub fn take_finished(&self) -> anyhow::Result<Vec<Finished>> {
        let outbox = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        let mut finished = Vec::new();
        loop {
            let outcome = match outbox.try_recv() {
                Ok(outcome) => outcome,
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    anyhow::bail!("the restore thread has stopped")
                }
            };
            let mut wanted = self.wanted();
            if wanted.get(&outcome.partition) != Some(&outcome.generation) {
                continue; // cancelled meanwhile: its store is dropped here
            }
            wanted.remove(&outcome.partition);
            let store = outcome
                .result
                .with_context(|| format!("restoring partition {}", outcome.partition))?;
            finished.push(Finished {
                partition: outcome.partition,
                store,
            });
        }
        Ok(finished)
    }
}

impl Drop for Restores {
    /// Cancels what still runs and waits for the restore thread to close its stores.
    fn drop(&mut self) {
        self.cancel_all();
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let started = Instant::now();
            let _ = thread.join();
            tracing::debug!(
                ms = started.elapsed().as_millis() as u64,
                "restore thread stopped"
            );
        }
    }
}
