//! Restore management: the assigned partitions whose stores are being brought up to their
//! changelog, each on a thread of its own, while the consumer goes on serving the other
//! partitions (and the group) with these paused.
//!
//! Invariants: a partition has at most one restore running; a restore is either finished
//! (its store handed back once, by [`Restores::take_finished`]) or cancelled (its thread
//! told to stop and joined, its store closed with it), never both; the metrics
//! `restoring`, `restore_records`, `restore_remaining` and `restore_seconds` follow each one.
//!
//! Under `exactly_once` the group's committed offset is the truth of what was committed
//! (it is written in the batch's transaction). A restore first reads it (a fetch that
//! waits while a transaction holding offsets for the partition is still open), then brings
//! the store up to the changelog, read `read_committed`; a store behind the committed
//! offset (a crash between a commit and its store write) is up to it then. A store ahead
//! of it cannot come from a transaction: it is cleared and restored from the whole
//! changelog ([`reconcile`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::changelog::{self, ChangelogError, ChangelogSource, RestoreReport};
use crate::metrics::Metrics;
use crate::store::PartitionStore;

/// A partition being restored.
struct Restore {
    assigned_at: Instant,
    cancel: Arc<AtomicBool>,
    handle: JoinHandle<anyhow::Result<(PartitionStore, RestoreReport)>>,
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
    /// `exactly_once`: where the group's committed offsets are read.
    group_offsets: Option<GroupOffsets>,
    metrics: Metrics,
}

/// The consumer group whose committed offsets a restore checks its store against.
#[derive(Clone)]
pub struct GroupOffsets {
    /// Client settings with the processors' `group.id` (the reader never joins it).
    pub client: ClientConfig,
    pub input_topic: String,
    /// How long a store behind the committed offset may wait for the changelog's last
    /// stable offset to pass it (a dead producer's open transaction being aborted).
    pub settle: Duration,
}

impl GroupOffsets {
    /// The group's committed offset of `partition` (`None`: none committed). librdkafka
    /// reads it with RequireStable (isolation.level=read_committed): while a transaction
    /// that commits offsets for the partition is open, the fetch waits for its end.
    ///
    /// Asks in steps of a second, so that a revoked partition's restore (`cancel`) ends at
    /// once rather than at the end of such a wait; gives up after `settle`.
    fn committed(
        &self,
        partition: i32,
        settle: Duration,
        cancel: &AtomicBool,
    ) -> anyhow::Result<Option<i64>> {
        let consumer: BaseConsumer = self
            .client
            .clone()
            .set("enable.auto.commit", "false")
            .create()
            .context("creating the committed-offset reader")?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.input_topic, partition);
        let deadline = Instant::now() + settle;
        let committed = loop {
            if cancel.load(Ordering::SeqCst) {
                bail!("restore of partition {partition} cancelled (partition revoked)");
            }
            match consumer.committed_offsets(tpl.clone(), Duration::from_secs(1)) {
                Ok(committed) => break committed,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| {
                        format!("reading the group's committed offset of partition {partition}")
                    });
                }
                Err(_) => {} // an open transaction holds it, or the coordinator moves
            }
        };
        Ok(committed
            .find_partition(&self.input_topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            }))
    }
}

impl Restores {
    pub fn new(
        client: ClientConfig,
        topic: String,
        timeout: Duration,
        group_offsets: Option<GroupOffsets>,
        metrics: Metrics,
    ) -> Self {
        Self {
            running: Mutex::new(BTreeMap::new()),
            client,
            topic,
            timeout,
            group_offsets,
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
        let group_offsets = self.group_offsets.clone();
        let settle = group_offsets.as_ref().map_or(Duration::ZERO, |g| g.settle);
        let flag = cancel.clone();
        let handle = std::thread::Builder::new()
            .name(format!("restore-{partition}"))
            .spawn(move || {
                let label = partition.to_string();
                metrics.restoring.with_label_values(&[&label]).set(1);
                let committed = match &group_offsets {
                    Some(group) => group.committed(partition, settle.max(timeout), &flag),
                    None => Ok(None),
                };
                let mut counted = 0u64;
                let restore = |store: &PartitionStore, counted: &mut u64| {
                    changelog::restore(
                        store,
                        ChangelogSource {
                            client: client.clone(),
                            topic: &topic,
                            partition,
                            timeout,
                        },
                        &flag,
                        |progress| {
                            metrics
                                .restore_records
                                .with_label_values(&[&label])
                                .inc_by(progress.records.saturating_sub(*counted));
                            *counted = progress.records;
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
                    )
                    .inspect(|report| {
                        metrics
                            .restore_records
                            .with_label_values(&[&label])
                            .inc_by(report.records.saturating_sub(*counted));
                        *counted = 0;
                    })
                };
                let result = committed.and_then(|committed| {
                    let report = restore(&store, &mut counted)?;
                    match committed {
                        Some(committed) => reconcile(
                            partition,
                            &store,
                            committed,
                            report,
                            (settle, &flag),
                            &metrics,
                            |store| restore(store, &mut counted),
                        ),
                        None => Ok(report),
                    }
                });
                metrics.restoring.with_label_values(&[&label]).set(0);
                metrics
                    .restore_remaining
                    .with_label_values(&[&label])
                    .set(0);
                let report = result?;
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
                    return Err(e.context(format!("restoring partition {partition}")));
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

/// `exactly_once`: after the store is brought up to the changelog, compares it with the
/// group's committed offset. Equal is the rule.
///
/// Behind: the committed batch is in the changelog, past the last stable offset, behind a
/// transaction a crashed producer left open (its `transactional.id` used by nobody now):
/// the restore is repeated until the broker has aborted that transaction and the store is
/// up to the committed offset, for at most `settle`. If it is still behind then, the
/// changelog lacks committed batches (its records deleted): the store is kept and the
/// records after it are folded again, their incident events produced again with their ids.
///
/// Ahead: cannot come from a transaction: the store is cleared and restored from the whole
/// changelog, which holds committed batches only; if it is still ahead then, the changelog
/// itself is (batches of `effectively_once`, whose group offsets lag, or offsets reset by
/// hand), and the store is kept. Both conflicts are logged and counted.
fn reconcile(
    partition: i32,
    store: &PartitionStore,
    committed: i64,
    mut report: RestoreReport,
    (settle, cancel): (Duration, &AtomicBool),
    metrics: &Metrics,
    mut restore: impl FnMut(&PartitionStore) -> Result<RestoreReport, ChangelogError>,
) -> anyhow::Result<RestoreReport> {
    let deadline = Instant::now() + settle;
    let mut waited = false;
    loop {
        if cancel.load(Ordering::SeqCst) {
            bail!("restore of partition {partition} cancelled (partition revoked)");
        }
        let local = store.next_offset()?.unwrap_or(0);
        if local == committed {
            if waited {
                tracing::info!(
                    partition,
                    committed,
                    "the store reached the committed offset once the open transaction ended"
                );
            }
            return Ok(report);
        }
        if local > committed {
            break;
        }
        if Instant::now() >= deadline {
            metrics
                .resume_conflicts
                .with_label_values(&["behind"])
                .inc();
            tracing::error!(
                partition,
                store_next_offset = local,
                committed,
                waited_ms = settle.as_millis() as u64,
                "the changelog does not reach the group's committed offset (its records were \
                 deleted?): resuming from the state, so the records in between are folded again \
                 and their incident events produced again, with the same ids"
            );
            return Ok(report);
        }
        if !waited {
            tracing::info!(
                partition,
                store_next_offset = local,
                committed,
                "the store is behind the committed offset and the changelog's readable end: \
                 waiting for the broker to end an open transaction (a crashed processor's)"
            );
            waited = true;
        }
        // The broker aborts a dead producer's transaction after its timeout, on its own
        // schedule: look again every half second.
        std::thread::sleep(Duration::from_millis(500));
        report = restore(store)?;
    }
    let local = store.next_offset()?.unwrap_or(0);
    tracing::warn!(
        partition,
        store_next_offset = local,
        committed,
        "the store is ahead of the group's committed offset; restoring it from the whole changelog"
    );
    store.clear()?;
    let report = restore(store)?;
    let restored = store.next_offset()?.unwrap_or(0);
    if restored > committed {
        metrics.resume_conflicts.with_label_values(&["ahead"]).inc();
        tracing::warn!(
            partition,
            next_offset = restored,
            committed,
            "the changelog is ahead of the group's committed offset too (batches committed \
             under effectively_once, or group offsets reset by hand): resuming from the state"
        );
    }
    Ok(report)
}
