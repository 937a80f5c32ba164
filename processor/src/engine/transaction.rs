//! The processing guarantee behind one seam (Kafka Streams' `StreamsProducer` is the
//! model): the batch path calls [`BatchProducer::begin`], [`BatchProducer::send`] for every
//! output, [`BatchProducer::finish`] with where each partition's batch ends, and, when
//! anything failed, [`BatchProducer::abort`]. `effectively_once` and `exactly_once` differ
//! only inside this file.
//!
//! - `effectively_once`: incident events, table records and states go through one idempotent
//!   producer; `finish` waits until every one of them is acked, then produces each
//!   partition's batch marker on a producer of its own (no linger) and waits for those: a
//!   marker acked beside a refused output would let a restore skip inputs whose outputs
//!   were lost. Nothing can be aborted: a failed batch ends the process, and its records are
//!   read again after the restart, their outputs produced again with the same ids.
//! - `exactly_once`: one transactional producer; `begin` opens a transaction, `finish` adds
//!   the markers and the next input offsets (as the current group member, KIP-447), waits
//!   for every ack and commits; `abort` aborts it, and tells whether the batch can be redone
//!   (the producer usable, fewer than [`MAX_CONSECUTIVE_ABORTS`] in a row) or the producer is
//!   fenced.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::message::ToBytes;
use rdkafka::producer::BaseRecord;

use super::EngineError;
use crate::changelog::{self, BATCH_MARKER_KEY, RESET_MARKER_KEY};
use crate::delivery::{self, TrackedProducer, Transactional};
use crate::metrics::Metrics;

/// Aborted transactions in a row after which the batch's error ends the process.
pub const MAX_CONSECUTIVE_ABORTS: u32 = 5;

enum Guarantee {
    EffectivelyOnce {
        /// Incident events, table records and states.
        outputs: TrackedProducer,
        /// Batch and reset markers, sent only once the batch's outputs are acked: without
        /// linger, so the batch does not wait `linger.ms` a second time.
        markers: TrackedProducer,
    },
    /// Everything a batch writes, markers included: the transaction, not the order of
    /// acks, makes the batch all or nothing.
    ExactlyOnce(Transactional),
}

pub struct BatchProducer {
    guarantee: Guarantee,
    input_topic: String,
    changelog_topic: String,
    ack_timeout: Duration,
    /// Transactions aborted in a row: a failure that repeats each time (a record the broker
    /// always refuses) must end the process, not loop.
    consecutive_aborts: u32,
    metrics: Metrics,
}

/// What an abort leaves.
pub enum Aborted {
    /// Nothing of the batch is visible; it can be redone.
    Redo(EngineError),
    /// The batch's error (or the producer's) ends the process.
    Fail(EngineError),
}

impl BatchProducer {
    pub fn effectively_once(
        outputs: TrackedProducer,
        markers: TrackedProducer,
        topics: &super::Topics,
        ack_timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        Self::new(
            Guarantee::EffectivelyOnce { outputs, markers },
            topics,
            ack_timeout,
            metrics,
        )
    }

    pub fn exactly_once(
        transactional: Transactional,
        topics: &super::Topics,
        ack_timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        Self::new(
            Guarantee::ExactlyOnce(transactional),
            topics,
            ack_timeout,
            metrics,
        )
    }

    fn new(
        guarantee: Guarantee,
        topics: &super::Topics,
        ack_timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            guarantee,
            input_topic: topics.input.clone(),
            changelog_topic: topics.changelog.clone(),
            ack_timeout,
            consecutive_aborts: 0,
            metrics,
        }
    }

    /// Whether the group's offsets are committed in each batch (the transaction); otherwise
    /// the consumer commits them now and then, for lag tools.
    pub fn commits_group_offsets(&self) -> bool {
        matches!(self.guarantee, Guarantee::ExactlyOnce(_))
    }

    /// Whether a batch can still be committed for partitions the group has already given
    /// to another member: not in a transaction of this member's generation.
    pub fn commits_for_lost_partitions(&self) -> bool {
        !self.commits_group_offsets()
    }

    fn outputs(&self) -> &TrackedProducer {
        match &self.guarantee {
            Guarantee::EffectivelyOnce { outputs, .. } => outputs,
            Guarantee::ExactlyOnce(transactional) => &transactional.producer,
        }
    }

    fn markers(&self) -> &TrackedProducer {
        match &self.guarantee {
            Guarantee::EffectivelyOnce { markers, .. } => markers,
            Guarantee::ExactlyOnce(transactional) => &transactional.producer,
        }
    }

    fn start_counting(&mut self) {
        match &mut self.guarantee {
            Guarantee::EffectivelyOnce { outputs, markers } => {
                outputs.start_batch();
                markers.start_batch();
            }
            Guarantee::ExactlyOnce(transactional) => transactional.producer.start_batch(),
        }
    }

    /// Starts a batch (a transaction under `exactly_once`).
    pub fn begin(&mut self) -> Result<(), EngineError> {
        self.start_counting();
        match &self.guarantee {
            Guarantee::EffectivelyOnce { .. } => Ok(()),
            Guarantee::ExactlyOnce(transactional) => {
                transactional.begin().map_err(EngineError::Transaction)
            }
        }
    }

    /// Produces one of the batch's outputs (incident event, table record, state).
    pub fn send<K, P>(&self, record: BaseRecord<'_, K, P>) -> Result<(), EngineError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        self.outputs().send(record).map_err(EngineError::Produce)
    }

    /// Produces a marker. Markers carry the offset as their value too: a record without a
    /// value is a tombstone, which compaction would delete.
    fn send_marker(&self, partition: i32, key: &[u8], next_offset: i64) -> Result<(), EngineError> {
        let offset = next_offset.to_string();
        self.markers()
            .send(changelog::record(
                &self.changelog_topic,
                partition,
                key,
                Some(offset.as_bytes()),
                next_offset,
            ))
            .map_err(EngineError::Produce)
    }

    /// Ends the batch whose partitions end at `ends` (partition, next input offset):
    /// returns where each partition's batch marker landed in the changelog.
    pub fn finish(
        &mut self,
        ends: &[(i32, i64)],
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<HashMap<i32, i64>, EngineError> {
        let started = Instant::now();
        match &self.guarantee {
            Guarantee::EffectivelyOnce { outputs, markers } => {
                outputs.wait(self.ack_timeout)?;
                for &(partition, next_offset) in ends {
                    self.send_marker(partition, BATCH_MARKER_KEY, next_offset)?;
                }
                markers.wait(self.ack_timeout)?;
                self.metrics
                    .batch_commit_seconds
                    .with_label_values(&["flush"])
                    .observe(started.elapsed().as_secs_f64());
                Ok(markers.take_markers())
            }
            Guarantee::ExactlyOnce(transactional) => {
                if ends.is_empty() {
                    // Every record a redelivery: nothing to write, nothing to commit.
                    transactional.abort().map_err(EngineError::Transaction)?;
                    return Ok(HashMap::new());
                }
                let group = group.ok_or(EngineError::NoGroup)?;
                let mut offsets = TopicPartitionList::new();
                for &(partition, next_offset) in ends {
                    self.send_marker(partition, BATCH_MARKER_KEY, next_offset)?;
                    offsets
                        .add_partition_offset(
                            &self.input_topic,
                            partition,
                            rdkafka::Offset::Offset(next_offset),
                        )
                        .map_err(EngineError::Transaction)?;
                }
                transactional
                    .send_offsets(&offsets, group)
                    .map_err(EngineError::Transaction)?;
                // Every record acked (and where the markers landed known) before the commit:
                // a refused one fails the batch here, and the commit need not flush.
                transactional.producer.wait(self.ack_timeout)?;
                crash_point::reached("before_commit");
                transactional.commit().map_err(EngineError::Transaction)?;
                crash_point::reached("after_commit");
                self.consecutive_aborts = 0;
                self.metrics
                    .batch_commit_seconds
                    .with_label_values(&["transaction"])
                    .observe(started.elapsed().as_secs_f64());
                self.metrics
                    .transactions
                    .with_label_values(&["committed"])
                    .inc();
                Ok(transactional.producer.take_markers())
            }
        }
    }

    /// After a failure between `begin` and the end of `finish`: under `exactly_once`, aborts
    /// the transaction and says whether the batch can be redone; under `effectively_once`
    /// the error stands.
    pub fn abort(&mut self, partitions: &[i32], error: EngineError) -> Aborted {
        let Guarantee::ExactlyOnce(transactional) = &self.guarantee else {
            return Aborted::Fail(error);
        };
        let transactional_id = transactional.transactional_id.clone();
        if let Some(reason) = transactional.producer.fatal_error() {
            self.metrics
                .transactions
                .with_label_values(&["fenced"])
                .inc();
            tracing::error!(%transactional_id, %reason, error = %error, "transactional producer fenced");
            return Aborted::Fail(EngineError::Fenced {
                transactional_id,
                reason,
            });
        }
        let redo = match &error {
            EngineError::Transaction(e) | EngineError::Produce(e) => delivery::abortable(e),
            EngineError::Delivery(_) => true,
            _ => false,
        };
        let aborted = transactional.abort();
        self.metrics
            .transactions
            .with_label_values(&["aborted"])
            .inc();
        if let Err(e) = aborted {
            tracing::error!(%transactional_id, error = %e, "aborting the transaction failed");
            return Aborted::Fail(EngineError::Transaction(e));
        }
        if !redo {
            return Aborted::Fail(error);
        }
        self.consecutive_aborts += 1;
        if self.consecutive_aborts >= MAX_CONSECUTIVE_ABORTS {
            tracing::error!(
                %transactional_id,
                aborts = self.consecutive_aborts,
                error = %error,
                "the same batch failed in every transaction: giving up"
            );
            return Aborted::Fail(error);
        }
        // A broker that refuses now may accept in a moment: back off a little more each time.
        std::thread::sleep(Duration::from_millis(100) * self.consecutive_aborts);
        tracing::warn!(
            %transactional_id,
            ?partitions,
            error = %error,
            "transaction aborted: nothing of the batch is visible; its partitions are rewound \
             to redo it"
        );
        Aborted::Redo(error)
    }

    /// Writes a reset marker to the partition's changelog (a rebuild starts the state over;
    /// see `changelog`) and waits for its ack. Only outside transactions (a rebuild).
    pub fn write_reset_marker(&mut self, partition: i32) -> Result<(), EngineError> {
        self.start_counting();
        self.send_marker(partition, RESET_MARKER_KEY, 0)?;
        Ok(self.markers().wait(self.ack_timeout)?)
    }

    /// Produces `records` and waits for their acks. Only outside transactions (a rebuild).
    pub fn send_and_wait<'r>(
        &mut self,
        records: impl IntoIterator<Item = BaseRecord<'r, str, [u8]>>,
    ) -> Result<(), EngineError> {
        self.start_counting();
        for record in records {
            self.send(record)?;
        }
        Ok(self.outputs().wait(self.ack_timeout)?)
    }
}

/// Crash points for the tests of `exactly_once`: `HOOKFOLD_TEST_CRASH_AT=<point>:<n>` makes
/// the process SIGKILL itself the n-th time it reaches `<point>` (`before_commit`: with the
/// batch's records and offsets in an open transaction; `after_commit`: committed, the
/// stores not yet written). A SIGKILL sent from outside cannot aim at such a moment. Unset
/// (as in every deployment), a point costs one comparison.
mod crash_point {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);

    pub fn reached(point: &str) {
        let target = TARGET.get_or_init(|| {
            let value = std::env::var("HOOKFOLD_TEST_CRASH_AT").ok()?;
            let (name, n) = value.split_once(':')?;
            Some((name.to_owned(), n.parse().ok()?))
        });
        if let Some((name, n)) = target
            && name == point
            && COUNT.fetch_add(1, Ordering::SeqCst) + 1 == *n
        {
            tracing::warn!(point, "HOOKFOLD_TEST_CRASH_AT: killing this process");
            let _ = signal_hook::low_level::raise(signal_hook::consts::SIGKILL);
        }
    }
}
