//! Restore management: the assigned partitions whose stores are being brought up to their
//! changelog, each on a thread of its own, while the consumer goes on serving the other
//! partitions (and the group) with these paused.
//!
//! Invariants: a partition has at most one restore running; a restore is either finished
//! (its store handed back once, by [`Restores::take_finished`]) or cancelled (its thread
//! told to stop and joined, its store closed with it), never both; the metrics
//! `restoring`, `restore_records`, `restore_remaining` and `restore_seconds` follow each one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;

use crate::changelog::{self, ChangelogError, ChangelogSource, RestoreReport};
use crate::metrics::Metrics;
use crate::store::PartitionStore;

/// A partition being restored.
struct Restore {
    assigned_at: Instant,
    cancel: Arc<AtomicBool>,
    handle: JoinHandle<Result<(PartitionStore, RestoreReport), ChangelogError>>,
}

/// A restore that has finished: the partition's store, up to date with its changelog.
pub struct Finished {
    pub partition: i32,
    /// When the partition was assigned (the restore started then).
    pub assigned_at: Instant,
    pub store: PartitionStore,
}

pub struct Restores {
    running: Mutex<BTreeMap<i32, Restore>>,
    /// Client settings for the changelog readers.
    client: ClientConfig,
    topic: String,
    timeout: Duration,
    metrics: Metrics,
}

impl Restores {
    pub fn new(client: ClientConfig, topic: String, timeout: Duration, metrics: Metrics) -> Self {
        Self {
            running: Mutex::new(BTreeMap::new()),
            client,
            topic,
            timeout,
            metrics,
        }
    }

    fn running(&self) -> MutexGuard<'_, BTreeMap<i32, Restore>> {
        // A poisoned lock only means a panic elsewhere; the map is still consistent.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether no restore is running (the processor is ready only then).
    pub fn is_empty(&self) -> bool {
        self.running().is_empty()
    }

    /// Starts restoring `partition` into `store` on a thread of its own.
    pub fn start(&self, partition: i32, store: PartitionStore) -> std::io::Result<()> {
        let cancel = Arc::new(AtomicBool::new(false));
        let client = self.client.clone();
        let topic = self.topic.clone();
        let timeout = self.timeout;
        let metrics = self.metrics.clone();
        let flag = cancel.clone();
        let handle = std::thread::Builder::new()
            .name(format!("restore-{partition}"))
            .spawn(move || {
                let label = partition.to_string();
                metrics.restoring.with_label_values(&[&label]).set(1);
                let mut counted = 0u64;
                let result = changelog::restore(
                    &store,
                    ChangelogSource {
                        client,
                        topic: &topic,
                        partition,
                        timeout,
                    },
                    &flag,
                    |progress| {
                        metrics
                            .restore_records
                            .with_label_values(&[&label])
                            .inc_by(progress.records - counted);
                        counted = progress.records;
                        metrics
                            .restore_remaining
                            .with_label_values(&[&label])
                            .set(progress.remaining);
                        let rate =
                            progress.records as f64 / progress.elapsed.as_secs_f64().max(1e-3);
                        tracing::info!(
                            partition,
                            records = progress.records,
                            remaining = progress.remaining,
                            records_per_second = rate as u64,
                            elapsed_ms = progress.elapsed.as_millis() as u64,
                            "restoring from the changelog"
                        );
                    },
                );
                metrics.restoring.with_label_values(&[&label]).set(0);
                metrics
                    .restore_remaining
                    .with_label_values(&[&label])
                    .set(0);
                let report = result?;
                metrics
                    .restore_records
                    .with_label_values(&[&label])
                    .inc_by(report.records - counted);
                metrics
                    .restore_seconds
                    .with_label_values(&[&label])
                    .set(report.elapsed.as_secs_f64());
                Ok((store, report))
            })?;
        self.running().insert(
            partition,
            Restore {
                assigned_at: Instant::now(),
                cancel,
                handle,
            },
        );
        Ok(())
    }

    /// Stops and forgets the restores of partitions given up before they finished.
    pub fn cancel(&self, partitions: &[i32]) {
        let cancelled: Vec<Restore> = {
            let mut running = self.running();
            partitions
                .iter()
                .filter_map(|p| running.remove(p))
                .collect()
        };
        for restore in cancelled {
            restore.cancel.store(true, Ordering::SeqCst);
            // The thread notices within one poll (100 ms); its store closes with it.
            let _ = restore.handle.join();
        }
    }

    /// [`Restores::cancel`] for every running restore.
    pub fn cancel_all(&self) {
        let all: Vec<i32> = self.running().keys().copied().collect();
        self.cancel(&all);
    }

    /// The restores that have finished since the last call, their reports logged; fails on
    /// the first that failed.
    pub fn take_finished(&self) -> anyhow::Result<Vec<Finished>> {
        let finished: Vec<(i32, Restore)> = {
            let mut running = self.running();
            let done: Vec<i32> = running
                .iter()
                .filter(|(_, r)| r.handle.is_finished())
                .map(|(p, _)| *p)
                .collect();
            done.into_iter()
                .filter_map(|p| running.remove(&p).map(|r| (p, r)))
                .collect()
        };
        let mut out = Vec::with_capacity(finished.len());
        for (partition, restore) in finished {
            let (store, report) = match restore.handle.join() {
                Ok(Ok(done)) => done,
                Ok(Err(e)) => {
                    return Err(e).with_context(|| format!("restoring partition {partition}"));
                }
                Err(_) => bail!("the restore thread of partition {partition} panicked"),
            };
            if report.records > 0 {
                tracing::info!(
                    partition,
                    records = report.records,
                    states = report.applied,
                    skipped = report.skipped,
                    next_offset = report.next_offset,
                    elapsed_ms = report.elapsed.as_millis() as u64,
                    records_per_second =
                        (report.records as f64 / report.elapsed.as_secs_f64().max(1e-3)) as u64,
                    waiting_for_broker_ms = report.waiting_for_broker.as_millis() as u64,
                    waiting_for_writer_ms = report.waiting_for_writer.as_millis() as u64,
                    writing_ms = report.writing.as_millis() as u64,
                    flushing_ms = report.flushing.as_millis() as u64,
                    "partition restored from the changelog"
                );
            }
            out.push(Finished {
                partition,
                assigned_at: restore.assigned_at,
                store,
            });
        }
        Ok(out)
    }
}
