//! Reading changelogs: a partition's read starts after its store's last marker and goes to
//! the changelog's end at that moment; the records of every partition being read come from the
//! one reader in bursts, each replayed into writes for the writer thread.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use hookfold_kafka::{AtEnd, Polled, ReadError, Start};
use rdkafka::message::Message;

use super::{BURST, POLL_WAIT, PROGRESS_EVERY, Phase, Restorer, Restoring};
use crate::changelog::{self, Replay};
use crate::metrics::Metrics;
use crate::restore::writer::Job;

impl Restorer {
    /// Starts (or starts again) reading the partition's changelog after its store's last
    /// marker.
    pub(super) fn read(&mut self, partition: i32) {
        if let Err(e) = self.try_read(partition) {
            self.fail(partition, e);
        }
    }

    pub(super) fn try_read(&mut self, partition: i32) -> anyhow::Result<()> {
        let Some(r) = self.restoring.get_mut(&partition) else {
            return Ok(());
        };
        let reader = self.reader.as_mut().map_err(|e| anyhow!("{e}"))?;
        let local = r.store.next_offset()?;
        let start = match r.store.changelog_offset()? {
            Some(marker) if local.is_some() => Start::Offset(marker + 1),
            _ => Start::Beginning,
        };
        let remaining = reader.add(partition, start, AtEnd::Stop)?;
        if remaining == 0 {
            r.phase = Phase::Writing;
            self.reconcile(partition);
            return Ok(());
        }
        tracing::info!(
            topic = reader.topic(),
            partition,
            remaining,
            local_next_offset = local,
            "restoring partition state from the changelog"
        );
        self.metrics
            .restore_remaining
            .with_label_values(&[&partition.to_string()])
            .set(remaining);
        r.store.begin_restore()?;
        let jobs = self
            .jobs
            .as_ref()
            .context("the restore writer has stopped")?;
        jobs.send(Job::Begin {
            partition,
            store: r.store.clone(),
        })
        .map_err(|_| anyhow!("the restore writer has stopped"))?;
        r.phase = Phase::Reading {
            replay: Replay::new(local),
        };
        Ok(())
    }

    /// Reads up to [`BURST`] records of the partitions being read.
    pub(super) fn read_burst(&mut self) {
        let Ok(reader) = self.reader.as_mut() else {
            return;
        };
        let mut failed: Vec<(i32, anyhow::Error)> = Vec::new();
        let mut ended = Vec::new();
        let jobs = self.jobs.as_ref();
        for i in 0..BURST {
            let wait = if i == 0 { POLL_WAIT } else { Duration::ZERO };
            let message = match reader.poll(wait) {
                Ok(Polled::Record(message)) => message,
                Ok(Polled::Ended(partition)) => {
                    ended.push(partition);
                    continue;
                }
                Ok(Polled::Nothing) => break,
                Err(e) => {
                    // A stall names the partitions short of their end; anything else
                    // (an assignment refused) fails every partition being read.
                    let partitions: Vec<i32> = match &e {
                        ReadError::Stalled { partitions, .. } => {
                            partitions.iter().map(|(p, _)| *p).collect()
                        }
                        _ => reader.reading().collect(),
                    };
                    let why = e.to_string();
                    for partition in partitions {
                        failed.push((partition, anyhow!("{why}")));
                    }
                    break;
                }
            };
            let partition = message.partition();
            let Some(r) = self.restoring.get_mut(&partition) else {
                continue;
            };
            let Phase::Reading { replay } = &mut r.phase else {
                continue;
            };
            r.records += 1;
            let record = match changelog::read(&message) {
                Ok(record) => record,
                Err(e) => {
                    failed.push((partition, anyhow!(e)));
                    continue;
                }
            };
            if let Some(write) = replay.push(message.offset(), record) {
                let handed = Instant::now();
                let sent = jobs.map(|jobs| jobs.send(Job::Write { partition, write }));
                r.waiting_for_writer += handed.elapsed();
                if !matches!(sent, Some(Ok(()))) {
                    failed.push((partition, anyhow!("the restore writer has stopped")));
                }
            }
        }
        let now = Instant::now();
        for (partition, r) in &mut self.restoring {
            if now.duration_since(r.last_progress) >= PROGRESS_EVERY
                && matches!(r.phase, Phase::Reading { .. })
            {
                r.last_progress = now;
                let remaining = reader.remaining(*partition);
                progress(&self.metrics, *partition, r, remaining);
            }
        }
        for partition in ended {
            self.replayed(partition);
        }
        for (partition, error) in failed {
            self.fail(partition, error);
        }
    }

    /// The partition's changelog is read to its end: the writer writes the rest.
    pub(super) fn replayed(&mut self, partition: i32) {
        let Some(r) = self.restoring.get_mut(&partition) else {
            return;
        };
        let Phase::Reading { replay } = &mut r.phase else {
            return;
        };
        replay.finish();
        r.applied += replay.applied;
        r.skipped += replay.skipped;
        let position = replay.position();
        r.phase = Phase::Writing;
        let sent = self.jobs.as_ref().map(|jobs| {
            jobs.send(Job::Finish {
                partition,
                position,
            })
        });
        if !matches!(sent, Some(Ok(()))) {
            self.fail(partition, anyhow!("the restore writer has stopped"));
        }
    }
}

fn progress(metrics: &Metrics, partition: i32, r: &mut Restoring, remaining: i64) {
    let label = partition.to_string();
    metrics
        .restore_records
        .with_label_values(&[&label])
        .inc_by(r.records - r.counted);
    r.counted = r.records;
    metrics
        .restore_remaining
        .with_label_values(&[&label])
        .set(remaining);
    let elapsed = r.started.elapsed();
    tracing::info!(
        partition,
        records = r.records,
        remaining,
        records_per_second = (r.records as f64 / elapsed.as_secs_f64().max(1e-3)) as u64,
        elapsed_ms = elapsed.as_millis() as u64,
        "restoring from the changelog"
    );
}
