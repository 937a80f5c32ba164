//! `exactly_once`: the group's committed offsets of partitions being restored, read on one
//! thread with one client for every restore.
//!
//! librdkafka reads a committed offset with RequireStable (isolation.level=read_committed):
//! while a transaction that commits offsets for the partition is open, the fetch waits for
//! its end. Each waiting partition is asked in turn, a second at a time, so that one held by
//! an open transaction delays the others by at most a second a round, and a partition
//! forgotten (revoked) stops being asked within a second.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The consumer group whose committed offsets a restore checks its store against.
#[derive(Clone)]
pub struct GroupOffsets {
    /// Client settings with the processors' `group.id` (the reader never joins it).
    pub client: ClientConfig,
    pub input_topic: String,
    /// How long a store behind the committed offset may wait for the changelog's last
    /// stable offset to pass it (a dead producer's open transaction being aborted); also
    /// the longest a committed-offset fetch is retried.
    pub settle: Duration,
}

pub enum Request {
    /// Read `partition`'s committed offset.
    Read { partition: i32 },
    /// Stop asking for it (its restore was cancelled).
    Forget { partition: i32 },
}

/// A committed offset read (`Ok(None)`: none committed), or why not.
pub struct Answer {
    pub partition: i32,
    pub committed: anyhow::Result<Option<i64>>,
}

/// Serves [`Request`]s until the requests channel closes, answering into the restore
/// thread's inbox; a partition's fetch is retried for `fetch_for` at most.
pub fn run(
    group: GroupOffsets,
    fetch_for: Duration,
    requests: Receiver<Request>,
    answers: Sender<super::Command>,
) {
    let consumer: anyhow::Result<BaseConsumer> = group
        .client
        .clone()
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the committed-offset reader");
    // Partition → until when to keep asking.
    let mut waiting: BTreeMap<i32, Instant> = BTreeMap::new();
    loop {
        let request = if waiting.is_empty() {
            match requests.recv() {
                Ok(request) => Some(request),
                Err(_) => return,
            }
        } else {
            match requests.recv_timeout(Duration::ZERO) {
                Ok(request) => Some(request),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        };
        match request {
            Some(Request::Read { partition }) => {
                waiting.insert(partition, Instant::now() + fetch_for);
                continue; // take every request already sent before asking
            }
            Some(Request::Forget { partition }) => {
                waiting.remove(&partition);
                continue;
            }
            None => {}
        }
        let consumer = match &consumer {
            Ok(consumer) => consumer,
            Err(e) => {
                for partition in std::mem::take(&mut waiting).into_keys() {
                    let committed = Err(anyhow::anyhow!("{e:#}"));
                    let _ = answers.send(super::Command::Committed(Answer {
                        partition,
                        committed,
                    }));
                }
                continue;
            }
        };
        let asked: Vec<(i32, Instant)> = waiting.iter().map(|(p, d)| (*p, *d)).collect();
        for (partition, deadline) in asked {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&group.input_topic, partition);
            let committed = match consumer.committed_offsets(tpl, Duration::from_secs(1)) {
                Ok(committed) => Ok(committed
                    .find_partition(&group.input_topic, partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(offset) => Some(offset),
                        _ => None,
                    })),
                Err(e) if Instant::now() >= deadline => Err(anyhow::Error::new(e).context(
                    format!("reading the group's committed offset of partition {partition}"),
                )),
                Err(_) => continue, // an open transaction holds it, or the coordinator moves
            };
            waiting.remove(&partition);
            let _ = answers.send(super::Command::Committed(Answer {
                partition,
                committed,
            }));
        }
    }
}
