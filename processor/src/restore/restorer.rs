//! The restore thread: one changelog reader ([`PartitionReader`]) for every restoring
//! partition, each partition's [`Replay`], and the steps of each restore:
//!
//! ```text
//!  Start ─► [Committed: exactly_once asks the group's offset] ─► Reading ─► Writing ─┐
//!                                   ▲                                                │
//!                                   └─── Waiting (behind the committed offset) ◄─────┤
//!                                                       finished, handed back ◄──────┘
//! ```
//!
//! A partition is read from just after its store's last marker (the beginning for an empty
//! store) to the changelog's end when its read started; its writes go to the writer thread;
//! once they are in the store, `reconcile` compares the store with the group's committed
//! offset (`exactly_once`) and either hands the store back, reads again (behind: a dead
//! producer's transaction holds the last stable offset back; ahead: cleared and read from
//! the beginning), or gives up waiting and hands it back as it is.
//!
//! Nothing here blocks on one partition for long: commands are taken between bursts of at
//! most [`BURST`] records, and a wait for the broker is at most [`POLL_WAIT`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use hookfold_kafka::PartitionReader;

mod reading;
mod reconcile;

use super::committed::{self, Request};
use super::writer::{self, Done, Job};
use super::{Command, Outcome, RestoreSettings};
use crate::changelog::Replay;
use crate::metrics::Metrics;
use crate::store::PartitionStore;

/// Records taken between two looks at the commands.
const BURST: usize = 4096;
/// The longest a poll waits for the broker.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// How often a restore's progress is logged and its metrics updated.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long a store behind the committed offset waits before the changelog is read again
/// (the broker aborts a dead producer's transaction on its own schedule).
const BEHIND_RETRY: Duration = Duration::from_millis(500);

enum Phase {
    /// `exactly_once`: waiting for the group's committed offset.
    Committed,
    /// Records are read and replayed.
    Reading { replay: Replay },
    /// The replay is done; the writer writes the rest and flushes.
    Writing,
    /// Behind the committed offset: read again at `until`.
    Waiting { until: Instant },
}

struct Restoring {
    generation: u64,
    store: Arc<PartitionStore>,
    phase: Phase,
    started: Instant,
    /// `exactly_once`: the group's committed offset (`None`: none committed).
    committed: Option<Option<i64>>,
    /// Until when a store behind the committed offset may wait for it.
    settle_deadline: Option<Instant>,
    /// Whether the store was cleared for being ahead of the committed offset.
    cleared: bool,
    records: u64,
    /// `records` already counted in the metric.
    counted: u64,
    applied: u64,
    skipped: u64,
    last_progress: Instant,
    waiting_for_writer: Duration,
    writing: Duration,
    flushing: Duration,
}

struct Restorer {
    reader: Result<PartitionReader, String>,
    jobs: Option<SyncSender<Job>>,
    requests: Option<Sender<Request>>,
    outcomes: Sender<Outcome>,
    restoring: HashMap<i32, Restoring>,
    /// Cancelled partitions whose store the writer may still hold; a start of the same
    /// partition waits for it to let go.
    closing: HashMap<i32, Arc<PartitionStore>>,
    deferred: HashMap<i32, Command>,
    settle: Duration,
    metrics: Metrics,
}

/// Runs the restore thread until [`Command::Stop`].
pub fn run(
    settings: RestoreSettings,
    inbox: Receiver<Command>,
    events: Sender<Command>,
    outcomes: Sender<Outcome>,
) {
    let RestoreSettings {
        client,
        changelog_topic,
        timeout,
        group_offsets,
        metrics,
    } = settings;
    let reader = PartitionReader::new(client, &changelog_topic, timeout)
        .map_err(|e| format!("creating the restore consumer: {e}"));
    let (jobs, pending_jobs) = writer::channel();
    let written = events.clone();
    let writer = std::thread::Builder::new()
        .name("restore-write".into())
        .spawn(move || writer::run(pending_jobs, written));
    let mut offsets = None;
    let mut requests = None;
    let settle = group_offsets.as_ref().map_or(Duration::ZERO, |g| g.settle);
    if let Some(group) = group_offsets {
        let (send, receive) = std::sync::mpsc::channel();
        let answers = events.clone();
        let fetch_for = group.settle.max(timeout);
        offsets = std::thread::Builder::new()
            .name("restore-offsets".into())
            .spawn(move || committed::run(group, fetch_for, receive, answers))
            .ok();
        requests = Some(send);
    }
    drop(events);
    let (reader, writer) = match writer {
        Ok(writer) => (reader, Some(writer)),
        Err(e) => (
            Err(format!("starting the restore writer thread: {e}")),
            None,
        ),
    };
    let mut restorer = Restorer {
        reader,
        jobs: Some(jobs),
        requests,
        outcomes,
        restoring: HashMap::new(),
        closing: HashMap::new(),
        deferred: HashMap::new(),
        settle,
        metrics,
    };
    restorer.serve(&inbox);
    // Stopping: the writer and the offset reader end when their channels close.
    let cancelled: Vec<i32> = restorer.restoring.keys().copied().collect();
    for partition in cancelled {
        restorer.cancel(partition);
    }
    restorer.jobs = None;
    restorer.requests = None;
    // Every store closed before the restores are gone: the writer lets go of the cancelled
    // ones as it ends (its last answers go into `inbox`, which no one reads now).
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    if let Some(offsets) = offsets {
        let _ = offsets.join();
    }
    drop(restorer);
}

impl Restorer {
    fn serve(&mut self, inbox: &Receiver<Command>) {
        loop {
            // Commands first; when nothing is being read, wait for one (or the next retry).
            let reading = self.reading();
            let first = if reading {
                inbox.try_recv().ok()
            } else {
                match inbox.recv_timeout(self.next_retry_in()) {
                    Ok(command) => Some(command),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            let mut command = first;
            while let Some(next) = command {
                if matches!(next, Command::Stop) {
                    return;
                }
                self.handle(next);
                command = inbox.try_recv().ok();
            }
            self.retry_due();
            if self.reading() {
                self.read_burst();
            }
        }
    }

    fn reading(&self) -> bool {
        self.restoring
            .values()
            .any(|r| matches!(r.phase, Phase::Reading { .. }))
    }

    /// How long until the earliest Waiting restore reads again (a second when none waits).
    fn next_retry_in(&self) -> Duration {
        let now = Instant::now();
        self.restoring
            .values()
            .filter_map(|r| match r.phase {
                Phase::Waiting { until } => Some(until.saturating_duration_since(now)),
                _ => None,
            })
            .min()
            .unwrap_or(Duration::from_secs(1))
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Start {
                partition,
                generation,
                store,
                path,
            } => {
                if self.closing.contains_key(&partition) {
                    // The writer still holds the old store: start once it lets go.
                    self.deferred.insert(
                        partition,
                        Command::Start {
                            partition,
                            generation,
                            store,
                            path,
                        },
                    );
                    return;
                }
                if let Err(e) = self.start(partition, generation, store, path) {
                    self.send(partition, generation, Err(e));
                }
            }
            Command::Cancel { partition } => {
                self.deferred.remove(&partition);
                self.cancel(partition);
            }
            Command::Written(Done { partition, result }) => {
                let Some(r) = self.restoring.get_mut(&partition) else {
                    return;
                };
                match result {
                    Ok((writing, flushing)) => {
                        r.writing += writing;
                        r.flushing += flushing;
                        self.reconcile(partition);
                    }
                    Err(e) => self.fail(partition, anyhow!(e).context("writing the restore")),
                }
            }
            Command::Dropped { partition } => {
                // The last handle of the cancelled store: it closes here.
                self.closing.remove(&partition);
                if let Some(start) = self.deferred.remove(&partition) {
                    self.handle(start);
                }
            }
            Command::Committed(committed::Answer {
                partition,
                committed,
            }) => {
                let Some(r) = self.restoring.get_mut(&partition) else {
                    return;
                };
                match committed {
                    Ok(committed) => {
                        r.committed = Some(committed);
                        self.read(partition);
                    }
                    Err(e) => self.fail(partition, e),
                }
            }
            Command::Stop => {}
        }
    }

    fn start(
        &mut self,
        partition: i32,
        generation: u64,
        store: Option<PartitionStore>,
        path: PathBuf,
    ) -> anyhow::Result<()> {
        let store = match store {
            Some(store) => store,
            None => PartitionStore::open(&path)?,
        };
        let label = partition.to_string();
        self.metrics.restoring.with_label_values(&[&label]).set(1);
        let now = Instant::now();
        self.restoring.insert(
            partition,
            Restoring {
                generation,
                store: Arc::new(store),
                phase: Phase::Committed,
                started: now,
                committed: None,
                settle_deadline: None,
                cleared: false,
                records: 0,
                counted: 0,
                applied: 0,
                skipped: 0,
                last_progress: now,
                waiting_for_writer: Duration::ZERO,
                writing: Duration::ZERO,
                flushing: Duration::ZERO,
            },
        );
        match &self.requests {
            Some(requests) => requests
                .send(Request::Read { partition })
                .map_err(|_| anyhow!("the committed-offset reader has stopped"))?,
            None => self.read(partition),
        }
        Ok(())
    }

    /// The restore is done: the store goes back to the engine.
    fn finish(&mut self, partition: i32) {
        let Some(r) = self.restoring.remove(&partition) else {
            return;
        };
        let elapsed = r.started.elapsed();
        let label = partition.to_string();
        self.metrics
            .restore_records
            .with_label_values(&[&label])
            .inc_by(r.records - r.counted);
        self.metrics
            .restore_seconds
            .with_label_values(&[&label])
            .set(elapsed.as_secs_f64());
        self.end_metrics(partition);
        let store = match Arc::try_unwrap(r.store) {
            Ok(store) => store,
            Err(_) => {
                let e = anyhow!("the restored store of partition {partition} is still in use");
                return self.send(partition, r.generation, Err(e));
            }
        };
        if r.records > 0 {
            tracing::info!(
                partition,
                records = r.records,
                states = r.applied,
                skipped = r.skipped,
                next_offset = store.next_offset().ok().flatten(),
                elapsed_ms = elapsed.as_millis() as u64,
                records_per_second = (r.records as f64 / elapsed.as_secs_f64().max(1e-3)) as u64,
                waiting_for_writer_ms = r.waiting_for_writer.as_millis() as u64,
                writing_ms = r.writing.as_millis() as u64,
                flushing_ms = r.flushing.as_millis() as u64,
                "partition restored from the changelog"
            );
        }
        self.send(partition, r.generation, Ok(store));
    }

    fn fail(&mut self, partition: i32, error: anyhow::Error) {
        let Some(generation) = self.restoring.get(&partition).map(|r| r.generation) else {
            return;
        };
        self.cancel(partition);
        self.send(partition, generation, Err(error));
    }

    /// Stops the partition's restore; its store closes once the writer lets go of it.
    fn cancel(&mut self, partition: i32) {
        let Some(r) = self.restoring.remove(&partition) else {
            return;
        };
        if let Ok(reader) = self.reader.as_mut()
            && let Err(e) = reader.remove(partition)
        {
            tracing::warn!(partition, error = %e, "unassigning a cancelled restore");
        }
        if let Some(requests) = &self.requests {
            let _ = requests.send(Request::Forget { partition });
        }
        let begun = !matches!(r.phase, Phase::Committed);
        if begun
            && let Some(jobs) = &self.jobs
            && jobs.send(Job::Drop { partition }).is_ok()
        {
            self.closing.insert(partition, r.store);
        }
        self.end_metrics(partition);
        tracing::info!(partition, "restore cancelled (partition revoked)");
    }

    fn end_metrics(&self, partition: i32) {
        let label = partition.to_string();
        self.metrics.restoring.with_label_values(&[&label]).set(0);
        self.metrics
            .restore_remaining
            .with_label_values(&[&label])
            .set(0);
    }

    fn send(&self, partition: i32, generation: u64, result: anyhow::Result<PartitionStore>) {
        let _ = self.outcomes.send(Outcome {
            partition,
            generation,
            result,
        });
    }
}
