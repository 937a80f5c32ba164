//! Reading partitions to their end: the one reader every "read what is there" of hookfold
//! goes through (the restore of a store from its changelog, `last_position`, `rebuild`,
//! `tail`, `incidents`, the view and the tests).
//!
//! A [`PartitionReader`] is one consumer, never in a group and committing nothing, on which
//! partitions of one topic are added (each from an offset of its own) and removed while it
//! reads. Each added partition has an end: the high watermark when it was added. What
//! happens at the end is the partition's [`AtEnd`]: `Stop` (the restore, rebuild: records
//! past it are not delivered, and the partition is dropped), or `Follow` (the view, `tail
//! --follow`: the partition counts as loaded, and later records keep coming).
//!
//! Invariants:
//! - a partition is read through when a record at `end - 1` or later was delivered, or
//!   when librdkafka reports its end (partition EOF): a topic written in transactions ends
//!   in commit markers, which are never delivered, and for a `read_committed` reader the end
//!   is the last stable offset;
//! - no record of a partition removed (or stopped at its end) is delivered, even one
//!   librdkafka had already fetched;
//! - consumer errors are reports (librdkafka reconnects and retries): the reader keeps the
//!   last one, and fails only when no record has come for the stall timeout while a
//!   partition is still short of its end ([`ReadError::Stalled`], naming that error).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("creating a Kafka consumer: {0}")]
    Create(#[source] KafkaError),
    #[error("reading the metadata of {topic}: {source}")]
    Metadata {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("topic {0} does not exist; create it with `hookfold-processor topics --create`")]
    Missing(String),
    #[error("reading the watermarks of {topic}[{partition}]: {source}")]
    Watermarks {
        topic: String,
        partition: i32,
        #[source]
        source: KafkaError,
    },
    #[error("assigning {topic}: {source}")]
    Assign {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error(
        "no record from {topic} for {timeout:?} before the end of partitions {partitions:?} \
         (last error: {last_error})"
    )]
    Stalled {
        topic: String,
        timeout: Duration,
        /// The partitions not read through, each with the records it still lacked.
        partitions: Vec<(i32, i64)>,
        last_error: String,
    },
    #[error("reading {topic} cancelled")]
    Cancelled { topic: String },
}

/// What happens when a partition reaches the end it had when it was added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtEnd {
    /// Records past the end are not delivered; the partition is dropped.
    Stop,
    /// The partition counts as loaded, and later records keep coming.
    Follow,
}

/// Where an added partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The first offset the partition still has.
    Beginning,
    /// This offset (or the first one the partition still has, if that is later).
    Offset(i64),
    /// The end: only records written from now on (with [`AtEnd::Follow`]).
    End,
}

/// One poll's outcome.
pub enum Polled<'a> {
    Record(BorrowedMessage<'a>),
    /// The partition reached its end (with [`AtEnd::Stop`], it is no longer read): reported
    /// once per partition added, after its last record.
    Ended(i32),
    /// Nothing within the wait.
    Nothing,
}

struct Span {
    /// The high watermark when the partition was added; `None` once reached.
    end: Option<i64>,
    /// The offset after the last record delivered.
    next: i64,
    at_end: AtEnd,
}

pub struct PartitionReader {
    consumer: BaseConsumer,
    topic: String,
    spans: HashMap<i32, Span>,
    /// How long the broker may send nothing while a partition is short of its end.
    stall: Duration,
    last_record: Instant,
    last_error: Option<String>,
    /// Partitions whose last record was delivered: their end is reported by the next poll.
    ended: Vec<i32>,
    /// Polls since the clock was last read: a restore polls a million times, and reading
    /// the clock for each cost more than the replay, so it is read only when the queue is
    /// empty and every few thousand records.
    since_clock: u32,
}

impl PartitionReader {
    /// A reader of `topic` with `client`'s connection settings ([`crate::client_config`]);
    /// a `group.id` is only librdkafka's requirement, never joined. `stall`: how long
    /// the broker may answer nothing (watermarks, metadata, records) before the read fails.
    pub fn new(mut client: ClientConfig, topic: &str, stall: Duration) -> Result<Self, ReadError> {
        if client.get("group.id").is_none() {
            client.set("group.id", "hookfold-reader");
        }
        let consumer: BaseConsumer = client
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(ReadError::Create)?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            spans: HashMap::new(),
            stall,
            last_record: Instant::now(),
            last_error: None,
            ended: Vec::new(),
            since_clock: 0,
        })
    }

    /// A reader of every partition of `topic` from `from`, each to its end and then
    /// `at_end`.
    pub fn whole_topic(
        client: ClientConfig,
        topic: &str,
        from: Start,
        at_end: AtEnd,
        stall: Duration,
    ) -> Result<Self, ReadError> {
        let mut reader = Self::new(client, topic, stall)?;
        let partitions = reader.partitions()?;
        reader.add_all((0..partitions as i32).map(|p| (p, from)), at_end)?;
        Ok(reader)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// How many partitions the topic has ([`ReadError::Missing`] if it does not exist).
    pub fn partitions(&self) -> Result<usize, ReadError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), self.stall)
            .map_err(|source| ReadError::Metadata {
                topic: self.topic.clone(),
                source,
            })?;
        match metadata.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(t.partitions().len())
            }
            _ => Err(ReadError::Missing(self.topic.clone())),
        }
    }

    /// Whether the brokers answer a metadata request for the topic now (a poll does not
    /// fail while they are away: librdkafka reconnects quietly).
    pub fn reachable(&self, timeout: Duration) -> Result<(), ReadError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(|source| ReadError::Metadata {
                topic: self.topic.clone(),
                source,
            })?;
        match metadata.topics().first() {
            Some(t) if t.error().is_none() => Ok(()),
            _ => Err(ReadError::Missing(self.topic.clone())),
        }
    }

    /// The partition's low and high watermarks.
    pub fn watermarks(&self, partition: i32) -> Result<(i64, i64), ReadError> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, self.stall)
            .map_err(|source| ReadError::Watermarks {
                topic: self.topic.clone(),
                partition,
                source,
            })
    }

    /// Starts reading `partition` from `from` to its high watermark now; returns the
    /// records before that end, as far as the watermarks tell (0: it is at its end already,
    /// and with [`AtEnd::Stop`] it is not read at all).
    pub fn add(&mut self, partition: i32, from: Start, at_end: AtEnd) -> Result<i64, ReadError> {
        self.add_all([(partition, from)], at_end)
            .map(|counts| counts[0])
    }

    /// [`PartitionReader::add`] for several partitions in one assignment.
    pub fn add_all(
        &mut self,
        partitions: impl IntoIterator<Item = (i32, Start)>,
        at_end: AtEnd,
    ) -> Result<Vec<i64>, ReadError> {
        let mut tpl = TopicPartitionList::new();
        let mut counts = Vec::new();
        let assign = |source| ReadError::Assign {
            topic: self.topic.clone(),
            source,
        };
        let mut added = Vec::new();
        for (partition, from) in partitions {
            let (low, high) = self.watermarks(partition)?;
            let (start, offset) = match from {
                Start::Beginning => (low, Offset::Beginning),
                Start::Offset(offset) => (offset.max(low), Offset::Offset(offset.max(low))),
                Start::End => (high, Offset::End),
            };
            let remaining = (high - start).max(0);
            counts.push(remaining);
            if remaining == 0 && at_end == AtEnd::Stop {
                continue;
            }
            tpl.add_partition_offset(&self.topic, partition, offset)
                .map_err(assign)?;
            added.push((
                partition,
                Span {
                    end: (remaining > 0).then_some(high),
                    next: start,
                    at_end,
                },
            ));
        }
        if tpl.count() > 0 {
            self.consumer.incremental_assign(&tpl).map_err(assign)?;
        }
        if !added.is_empty() {
            // A partition just added has not had its chance to stall yet.
            self.last_record = Instant::now();
        }
        // A partition added again before its last end was reported: that end is stale.
        self.ended.retain(|p| !added.iter().any(|(a, _)| a == p));
        self.spans.extend(added);
        Ok(counts)
    }

    /// Stops reading `partition` (nothing more of it is delivered).
    pub fn remove(&mut self, partition: i32) -> Result<(), ReadError> {
        self.ended.retain(|&p| p != partition);
        if self.spans.remove(&partition).is_none() {
            return Ok(());
        }
        unassign(&self.consumer, &self.topic, partition)
    }

    /// Whether every partition has been read up to the end it had when it was added.
    pub fn loaded(&self) -> bool {
        self.spans.values().all(|span| span.end.is_none())
    }

    /// The partitions being read.
    pub fn reading(&self) -> impl Iterator<Item = i32> + '_ {
        self.spans.keys().copied()
    }

    /// The records `partition` lacks before its end (0 once there, or not read).
    pub fn remaining(&self, partition: i32) -> i64 {
        self.spans
            .get(&partition)
            .and_then(|span| span.end.map(|end| end - span.next))
            .unwrap_or(0)
    }

    /// The last consumer error librdkafka reported, if any.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The next record, or a partition reaching its end, waiting at most `wait`; fails when
    /// nothing has come for the stall timeout while a partition is short of its end.
    pub fn poll(&mut self, wait: Duration) -> Result<Polled<'_>, ReadError> {
        if let Some(partition) = self.ended.pop() {
            if self
                .spans
                .get(&partition)
                .is_some_and(|s| s.at_end == AtEnd::Stop)
            {
                self.spans.remove(&partition);
            }
            return Ok(Polled::Ended(partition));
        }
        self.since_clock += 1;
        let mut now = None;
        if self.since_clock >= 4096 {
            self.since_clock = 0;
            now = Some(Instant::now());
        }
        let polled = match self.consumer.poll(Duration::ZERO) {
            Some(polled) => Some(polled),
            None if wait.is_zero() => None,
            None => {
                let polled = self.consumer.poll(wait);
                now = Some(Instant::now());
                polled
            }
        };
        match polled {
            Some(Ok(message)) => {
                let partition = message.partition();
                let offset = message.offset();
                let Some(span) = self.spans.get_mut(&partition) else {
                    return Ok(Polled::Nothing); // fetched before it was removed
                };
                if span.at_end == AtEnd::Stop && span.end.is_none() {
                    return Ok(Polled::Nothing); // read through; its end is being reported
                }
                if span.at_end == AtEnd::Stop && span.end.is_some_and(|end| offset >= end) {
                    return end_reached(&self.consumer, &self.topic, &mut self.spans, partition);
                }
                if let Some(now) = now {
                    self.last_record = now;
                }
                span.next = offset + 1;
                let last = span.end.is_some_and(|end| span.next >= end);
                if last {
                    span.end = None;
                    if span.at_end == AtEnd::Stop {
                        // Fetching stops now; the partition goes once its end is reported.
                        unassign(&self.consumer, &self.topic, partition)?;
                    }
                    self.ended.push(partition);
                }
                Ok(Polled::Record(message))
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                end_reached(&self.consumer, &self.topic, &mut self.spans, partition)
            }
            Some(Err(e)) => {
                tracing::warn!(topic = %self.topic, error = %e, "reading");
                self.last_error = Some(e.to_string());
                self.check_stall(now.unwrap_or_else(Instant::now))?;
                Ok(Polled::Nothing)
            }
            None => {
                if let Some(now) = now {
                    self.check_stall(now)?;
                }
                Ok(Polled::Nothing)
            }
        }
    }

    fn check_stall(&self, now: Instant) -> Result<(), ReadError> {
        if self.loaded() || now.duration_since(self.last_record) <= self.stall {
            return Ok(());
        }
        let mut partitions: Vec<(i32, i64)> = self
            .spans
            .iter()
            .filter_map(|(p, span)| span.end.map(|end| (*p, end - span.next)))
            .collect();
        partitions.sort_unstable();
        Err(ReadError::Stalled {
            topic: self.topic.clone(),
            timeout: self.stall,
            partitions,
            last_error: self.last_error.clone().unwrap_or_else(|| "none".into()),
        })
    }

    /// Hands every record up to the partitions' ends to `each`, until they are all loaded,
    /// `cancel` is set, or the read stalls.
    pub fn read_to_end(
        &mut self,
        cancel: &AtomicBool,
        mut each: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<(), ReadError> {
        while !self.loaded() {
            if cancel.load(Ordering::Relaxed) {
                return Err(ReadError::Cancelled {
                    topic: self.topic.clone(),
                });
            }
            if let Polled::Record(message) = self.poll(Duration::from_millis(100))? {
                each(&message);
            }
        }
        Ok(())
    }
}

/// Marks `partition` read through (and, with [`AtEnd::Stop`], stops reading it), unless
/// it was already.
fn end_reached<'a>(
    consumer: &BaseConsumer,
    topic: &str,
    spans: &mut HashMap<i32, Span>,
    partition: i32,
) -> Result<Polled<'a>, ReadError> {
    let Some(span) = spans.get_mut(&partition) else {
        return Ok(Polled::Nothing);
    };
    if span.end.take().is_none() {
        return Ok(Polled::Nothing);
    }
    if span.at_end == AtEnd::Stop {
        spans.remove(&partition);
        unassign(consumer, topic, partition)?;
    }
    Ok(Polled::Ended(partition))
}

fn unassign(consumer: &BaseConsumer, topic: &str, partition: i32) -> Result<(), ReadError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    consumer
        .incremental_unassign(&tpl)
        .map_err(|source| ReadError::Assign {
            topic: topic.to_owned(),
            source,
        })
}

/// A reader's `cancel` that is never set.
pub static NEVER: AtomicBool = AtomicBool::new(false);
