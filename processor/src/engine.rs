//! The engine: folds a batch of webhook records into their keys' states and commits it.
//!
//! Per batch, in this order (the processing guarantees in docs/OPERATIONS.md):
//! 1. every record is parsed and folded into its partition's clock and its keys' states
//!    (pure `hookfold_rules::fold`: a tick only moves the clock, which fires due timers);
//! 2. the incident events, the open-incident table's records (the latest event of an
//!    incident still open, a tombstone for one resolved; keyed by dedup key) and one
//!    changelog record per changed key (the clock's watermark under `CLOCK_KEY`, and each
//!    timer added, or a tombstone for each removed, among them) are produced;
//! 3. `effectively_once`: the engine waits until every one of them is acked (`delivery`),
//!    then produces each partition's batch marker and waits for it, or the batch fails;
//!    `exactly_once`: everything of step 2, the markers and the next input offsets
//!    (`send_offsets_to_transaction`, as the current group member) are one transaction,
//!    and the engine waits for its commit;
//! 4. per partition, the changed states and the next input offset are written in one
//!    RocksDB `WriteBatch`.
//!
//! A crash anywhere before 4 leaves the store at the previous batch. `effectively_once`:
//! the batch is read again and its outputs produced again, with the same deterministic
//! `event_id`s. `exactly_once`: a crash before the commit leaves an open transaction that
//! is aborted (nothing of it visible to `read_committed` readers); a crash between the
//! commit and 4 leaves the store one batch behind the group's committed offset, and the
//! restore brings it up from the changelog (read `read_committed`) before the partition
//! resumes (`restores`). A transaction that fails is aborted, and its partitions rewound
//! to their stores' offsets ([`Engine::take_rewinds`]): the batch is redone.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hookfold_events::LogRecord;
use hookfold_proto::Message as _;
use hookfold_proto::cloudevents::CloudEventHeaders;
use hookfold_proto::incident::PROCESSOR_SOURCE;
use hookfold_proto::v1::{IncidentEvent, Transition};
use hookfold_rules::{
    CLOCK_KEY, Cause, ClockWrite, KeyState, PartitionClock, RESERVED_PREFIX, Record, Rules,
    TIMER_PREFIX, TIMER_VALUE,
};
use rdkafka::TopicPartitionList;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::BaseRecord;

use crate::changelog::{self, BATCH_MARKER_KEY, RESET_MARKER_KEY};
use crate::codec::{self, CodecError};
use crate::config::BatchConfig;
use crate::delivery::{self, BatchProducers, DeliveryError, TrackedProducer};
use crate::metrics::Metrics;
use crate::store::{PartitionStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("partition {partition}, key `{key}`: {source}")]
    State {
        partition: i32,
        key: String,
        #[source]
        source: CodecError,
    },
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    #[error("producing: {0}")]
    Produce(#[source] KafkaError),
    #[error("incident event {0} has no valid headers (a bug in the rules)")]
    Headers(String),
    #[error("transaction: {0}")]
    Transaction(#[source] KafkaError),
    /// The batch's transaction failed and was aborted: nothing of it is visible, and its
    /// partitions are rewound to redo it.
    #[error("transaction aborted (the batch is redone): {source}")]
    Aborted {
        partitions: Vec<i32>,
        #[source]
        source: Box<EngineError>,
    },
    /// The transactional producer cannot go on: another producer took its
    /// `transactional.id`, or the coordinator fenced it.
    #[error(
        "the transactional producer {transactional_id} is fenced and can write nothing more \
         ({reason}): another processor with the same instance_id started, or this one was \
         paused past its session or transaction timeout; nothing it wrote since is visible \
         to read_committed readers"
    )]
    Fenced {
        transactional_id: String,
        reason: String,
    },
    #[error("exactly_once needs the consumer's group metadata, and there is none (not in a group)")]
    NoGroup,
}

pub struct Topics {
    pub input: String,
    pub output: String,
    pub changelog: String,
    /// The compacted table of open incidents (`kafka.open_incidents_topic`).
    pub open_incidents: String,
}

pub struct Engine {
    rules: Rules,
    topics: Topics,
    state_dir: PathBuf,
    producers: BatchProducers,
    ack_timeout: Duration,
    batch: BatchConfig,
    partitions: BTreeMap<i32, PartitionStore>,
    pending: Vec<OwnedMessage>,
    pending_since: Option<Instant>,
    /// Whether incident events are produced (a rebuild may recompute state only).
    emit: bool,
    /// Without `emit`: per partition, the offset from which incident events are produced
    /// anyway (records no processor had folded before a rebuild).
    emit_from: HashMap<i32, i64>,
    /// When each partition was assigned, until its first batch after that is committed.
    assigned_at: HashMap<i32, Instant>,
    /// Per owned partition, its clock (watermark and timers), loaded when the partition is
    /// adopted and kept up to date by every batch; a batch writes only what changed.
    clocks: HashMap<i32, PartitionClock>,
    /// Partitions whose batch was aborted: their records are dropped until the consumer
    /// has rewound them to their stores' offsets ([`Engine::take_rewinds`]).
    rewinding: std::collections::BTreeSet<i32>,
    /// Transactions aborted in a row: a failure that repeats each time (a record the broker
    /// always refuses) must end the process, not loop.
    consecutive_aborts: u32,
    metrics: Metrics,
}

/// Aborted transactions in a row after which the batch's error ends the process.
const MAX_CONSECUTIVE_ABORTS: u32 = 5;

/// What a committed batch moved each partition to.
pub type Committed = Vec<(i32, i64)>;

/// One partition's part of a folded batch: its encoded changes (`None`: a deletion) and
/// the input offset it moves to.
struct PartitionBatch {
    partition: i32,
    changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    next_offset: i64,
}

impl Engine {
    pub fn new(
        rules: Rules,
        topics: Topics,
        state_dir: &Path,
        producers: BatchProducers,
        ack_timeout: Duration,
        batch: BatchConfig,
        metrics: Metrics,
    ) -> Self {
        Self {
            rules,
            topics,
            state_dir: state_dir.to_owned(),
            producers,
            ack_timeout,
            batch,
            partitions: BTreeMap::new(),
            pending: Vec::new(),
            pending_since: None,
            emit: true,
            emit_from: HashMap::new(),
            assigned_at: HashMap::new(),
            clocks: HashMap::new(),
            rewinding: Default::default(),
            consecutive_aborts: 0,
            metrics,
        }
    }

    /// Incident events, table records and states go here (the transactional producer
    /// under `exactly_once`).
    fn outputs(&self) -> &TrackedProducer {
        match &self.producers {
            BatchProducers::EffectivelyOnce { outputs, .. } => outputs,
            BatchProducers::ExactlyOnce(transactional) => &transactional.producer,
        }
    }

    /// Batch and reset markers go here (into the batch's transaction under
    /// `exactly_once`).
    fn markers(&self) -> &TrackedProducer {
        match &self.producers {
            BatchProducers::EffectivelyOnce { markers, .. } => markers,
            BatchProducers::ExactlyOnce(transactional) => &transactional.producer,
        }
    }

    fn start_batch(&mut self) {
        match &mut self.producers {
            BatchProducers::EffectivelyOnce { outputs, markers } => {
                outputs.start_batch();
                markers.start_batch();
            }
            BatchProducers::ExactlyOnce(transactional) => transactional.producer.start_batch(),
        }
    }

    pub fn exactly_once(&self) -> bool {
        matches!(self.producers, BatchProducers::ExactlyOnce(_))
    }

    /// Recompute state without producing incident events (`rebuild` without `--emit`),
    /// except for records at or after [`Engine::emit_from`].
    pub fn without_incident_events(mut self) -> Self {
        self.emit = false;
        self
    }

    /// Without incident events, still produce those of `partition`'s records from `offset`
    /// on: they were never folded before, so nobody has seen their incidents.
    pub fn emit_from(&mut self, partition: i32, offset: i64) {
        self.emit_from.insert(partition, offset);
    }

    pub fn store_path(state_dir: &Path, input_topic: &str, partition: i32) -> PathBuf {
        state_dir.join(format!("{input_topic}-{partition}"))
    }

    /// Notes when `partition` was assigned: the first batch committed for it after that is
    /// reported as the time from assignment to the first processed event.
    pub fn await_first_event(&mut self, partition: i32, assigned_at: Instant) {
        self.assigned_at.insert(partition, assigned_at);
    }

    /// Gives up a partition's store without committing (it is handed back by `adopt`).
    pub fn take(&mut self, partition: i32) -> Option<PartitionStore> {
        self.partitions.remove(&partition)
    }

    /// Opens the partition's store without taking the partition on (the store is first
    /// restored from the changelog, then handed to [`Engine::adopt`]).
    pub fn open(&self, partition: i32) -> Result<PartitionStore, EngineError> {
        let path = Self::store_path(&self.state_dir, &self.topics.input, partition);
        Ok(PartitionStore::open(&path)?)
    }

    /// Opens the partition's store and takes the partition on; returns the offset to
    /// resume from (`None`: from the beginning of the topic, for a store that has seen
    /// nothing).
    pub fn assign(&mut self, partition: i32) -> Result<Option<i64>, EngineError> {
        let store = match self.partitions.remove(&partition) {
            Some(store) => store,
            None => self.open(partition)?,
        };
        self.adopt(partition, store)
    }

    /// Takes the partition on with its (restored) store; returns the offset to resume from.
    pub fn adopt(
        &mut self,
        partition: i32,
        store: PartitionStore,
    ) -> Result<Option<i64>, EngineError> {
        let clock = Self::stored_clock(partition, &store)?;
        self.record_clock_metrics(partition, &clock);
        self.clocks.insert(partition, clock);
        self.partitions.insert(partition, store);
        let store = &self.partitions[&partition];
        let next = store.next_offset()?;
        self.metrics
            .assigned
            .with_label_values(&[&partition.to_string()])
            .set(1);
        self.record_store_metrics(partition, next.unwrap_or(0), store);
        tracing::info!(partition, next_offset = next, path = %store.path().display(), "partition assigned");
        Ok(next)
    }

    /// Finishes and commits the pending batch, then closes the partitions' stores. `lost`:
    /// the group has already given them to another member (this one was out of the group
    /// too long); under `exactly_once` their pending records are then dropped, as no
    /// transaction of this member's generation can commit any more.
    pub fn revoke(
        &mut self,
        partitions: &[i32],
        lost: bool,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<Committed, EngineError> {
        if lost && self.exactly_once() {
            let before = self.pending.len();
            self.pending
                .retain(|m| !partitions.contains(&m.partition()));
            tracing::warn!(
                ?partitions,
                dropped = before - self.pending.len(),
                "partitions lost (this processor was out of its group): their pending records \
                 are dropped, the new owner folds them"
            );
        }
        let committed = match self.commit(group) {
            Ok(committed) => committed,
            // The partitions go anyway: their new owner redoes the batch.
            Err(EngineError::Aborted { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        for partition in partitions {
            if self.partitions.remove(partition).is_some() {
                let label = partition.to_string();
                self.metrics.assigned.with_label_values(&[&label]).set(0);
                // Another processor reports the partition now; stale values here would
                // add up wrong in sums over the group.
                for gauge in [
                    &self.metrics.next_offset,
                    &self.metrics.state_keys,
                    &self.metrics.state_bytes,
                    &self.metrics.consumer_lag,
                    &self.metrics.watermark_seconds,
                    &self.metrics.timers,
                ] {
                    let _ = gauge.remove_label_values(&[&label]);
                }
                self.assigned_at.remove(partition);
                self.clocks.remove(partition);
                self.rewinding.remove(partition);
                tracing::info!(partition, "partition revoked, store closed");
            }
        }
        Ok(committed)
    }

    /// The dedup keys of the incidents open in `partition`'s stored state.
    pub fn open_dedup_keys(
        &self,
        partition: i32,
    ) -> Result<std::collections::BTreeSet<String>, EngineError> {
        let mut open = std::collections::BTreeSet::new();
        let Some(store) = self.partitions.get(&partition) else {
            return Ok(open);
        };
        for entry in store.states() {
            let (key, bytes) = entry?;
            if key.starts_with(RESERVED_PREFIX) {
                continue;
            }
            let state = codec::decode(&bytes).map_err(|source| EngineError::State {
                partition,
                key: String::from_utf8_lossy(&key).into_owned(),
                source,
            })?;
            open.extend(
                state
                    .open_incidents()
                    .iter()
                    .map(|incident| incident.dedup_key.to_owned()),
            );
        }
        Ok(open)
    }

    pub fn assigned(&self) -> Vec<i32> {
        self.partitions.keys().copied().collect()
    }

    pub fn push(&mut self, message: OwnedMessage) {
        if self.rewinding.contains(&message.partition()) {
            return; // read before its aborted batch was rewound; read again after
        }
        self.pending_since.get_or_insert_with(Instant::now);
        self.pending.push(message);
    }

    /// Whether the pending batch is full or old enough to commit.
    pub fn due(&self) -> bool {
        self.pending.len() >= self.batch.max_records
            || self
                .pending_since
                .is_some_and(|since| since.elapsed() >= self.batch.max_wait)
    }

    /// The partition's committed offset and store size, as metrics.
    fn record_store_metrics(&self, partition: i32, next_offset: i64, store: &PartitionStore) {
        let label = partition.to_string();
        let (keys, bytes) = store.estimates();
        self.metrics
            .next_offset
            .with_label_values(&[&label])
            .set(next_offset);
        self.metrics
            .state_keys
            .with_label_values(&[&label])
            .set(keys as i64);
        self.metrics
            .state_bytes
            .with_label_values(&[&label])
            .set(bytes as i64);
    }

    /// Folds, produces, flushes and commits the pending batch. `group`: the consumer's
    /// group metadata, which `exactly_once` commits the input offsets as.
    pub fn commit(
        &mut self,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<Committed, EngineError> {
        self.pending_since = None;
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let pending = std::mem::take(&mut self.pending);
        let batches = if self.exactly_once() {
            self.produce_in_transaction(pending, group)?
        } else {
            self.produce_acked(pending)?
        };
        self.write_stores(batches)
    }

    /// `effectively_once`: folds and produces the batch, waits for every ack, then
    /// produces the markers and waits for theirs.
    fn produce_acked(
        &mut self,
        pending: Vec<OwnedMessage>,
    ) -> Result<(Vec<PartitionBatch>, HashMap<i32, i64>), EngineError> {
        self.start_batch();
        let batches = self.fold_batch(pending)?;
        // Only once every incident event and state of the batch is acked do the markers say
        // the batch is complete (see `changelog`): a marker acked beside a refused incident
        // event would let a restore skip the inputs whose events were lost.
        let started = Instant::now();
        self.outputs().wait(self.ack_timeout)?;
        for batch in &batches {
            self.send_marker(batch.partition, BATCH_MARKER_KEY, batch.next_offset)?;
        }
        self.markers().wait(self.ack_timeout)?;
        self.metrics
            .batch_commit_seconds
            .with_label_values(&["flush"])
            .observe(started.elapsed().as_secs_f64());
        Ok((batches, self.markers().take_markers()))
    }

    /// `exactly_once`: the batch, its markers and its input offsets in one transaction.
    /// A failure aborts it and rewinds its partitions ([`EngineError::Aborted`]), unless
    /// the producer is fenced ([`EngineError::Fenced`]).
    fn produce_in_transaction(
        &mut self,
        pending: Vec<OwnedMessage>,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<(Vec<PartitionBatch>, HashMap<i32, i64>), EngineError> {
        let group = group.ok_or(EngineError::NoGroup)?;
        let mut partitions: Vec<i32> = pending.iter().map(|m| m.partition()).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let started = Instant::now();
        match self.transact(pending, group) {
            Ok(batches) => {
                self.consecutive_aborts = 0;
                let markers = self.outputs().take_markers();
                self.metrics
                    .batch_commit_seconds
                    .with_label_values(&["transaction"])
                    .observe(started.elapsed().as_secs_f64());
                if !batches.is_empty() {
                    self.metrics
                        .transactions
                        .with_label_values(&["committed"])
                        .inc();
                }
                Ok((batches, markers))
            }
            Err(error) => Err(self.abort(partitions, error)),
        }
    }

    fn transactional(&self) -> &delivery::Transactional {
        match &self.producers {
            BatchProducers::ExactlyOnce(transactional) => transactional,
            BatchProducers::EffectivelyOnce { .. } => {
                unreachable!("only exactly_once batches are transactions")
            }
        }
    }

    fn transact(
        &mut self,
        pending: Vec<OwnedMessage>,
        group: &ConsumerGroupMetadata,
    ) -> Result<Vec<PartitionBatch>, EngineError> {
        self.start_batch();
        self.transactional()
            .begin()
            .map_err(EngineError::Transaction)?;
        let batches = self.fold_batch(pending)?;
        if batches.is_empty() {
            // Every record a redelivery: nothing to write, nothing to commit.
            self.transactional()
                .abort()
                .map_err(EngineError::Transaction)?;
            return Ok(batches);
        }
        let mut offsets = TopicPartitionList::new();
        for batch in &batches {
            self.send_marker(batch.partition, BATCH_MARKER_KEY, batch.next_offset)?;
            offsets
                .add_partition_offset(
                    &self.topics.input,
                    batch.partition,
                    rdkafka::Offset::Offset(batch.next_offset),
                )
                .map_err(EngineError::Transaction)?;
        }
        self.transactional()
            .send_offsets(&offsets, group)
            .map_err(EngineError::Transaction)?;
        // Every record acked (and where the markers landed known) before the commit: a
        // refused one fails the batch here, and the commit need not flush.
        self.outputs().wait(self.ack_timeout)?;
        crash_point::reached("before_commit");
        self.transactional()
            .commit()
            .map_err(EngineError::Transaction)?;
        crash_point::reached("after_commit");
        Ok(batches)
    }

    /// After a failed transaction: forgets what the fold changed in memory (the clocks
    /// are reloaded from the stores), aborts, and marks the partitions to be rewound.
    fn abort(&mut self, partitions: Vec<i32>, error: EngineError) -> EngineError {
        for partition in &partitions {
            self.clocks.remove(partition);
        }
        let transactional = self.transactional();
        let transactional_id = transactional.transactional_id.clone();
        if let Some(reason) = transactional.producer.fatal_error() {
            self.metrics
                .transactions
                .with_label_values(&["fenced"])
                .inc();
            tracing::error!(%transactional_id, %reason, error = %error, "transactional producer fenced");
            return EngineError::Fenced {
                transactional_id,
                reason,
            };
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
            return EngineError::Transaction(e);
        }
        if !redo {
            return error;
        }
        self.consecutive_aborts += 1;
        if self.consecutive_aborts >= MAX_CONSECUTIVE_ABORTS {
            tracing::error!(
                %transactional_id,
                aborts = self.consecutive_aborts,
                error = %error,
                "the same batch failed in every transaction: giving up"
            );
            return error;
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
        self.rewinding.extend(partitions.iter().copied());
        self.pending
            .retain(|m| !partitions.contains(&m.partition()));
        EngineError::Aborted {
            partitions,
            source: Box::new(error),
        }
    }

    /// The partitions to seek back to where their stores are (after an aborted batch),
    /// with the offset to seek to (`None`: the beginning); records of theirs are taken
    /// again from the next one polled.
    pub fn take_rewinds(&mut self) -> Result<Vec<(i32, Option<i64>)>, EngineError> {
        let mut rewinds = Vec::new();
        for partition in std::mem::take(&mut self.rewinding) {
            if let Some(store) = self.partitions.get(&partition) {
                rewinds.push((partition, store.next_offset()?));
            }
        }
        Ok(rewinds)
    }

    /// Folds the batch partition by partition, producing its incident events, table
    /// records and changelog states; returns what each partition's store is to write.
    fn fold_batch(
        &mut self,
        pending: Vec<OwnedMessage>,
    ) -> Result<Vec<PartitionBatch>, EngineError> {
        let mut by_partition: BTreeMap<i32, Vec<OwnedMessage>> = BTreeMap::new();
        for message in pending {
            by_partition
                .entry(message.partition())
                .or_default()
                .push(message);
        }
        let mut batches = Vec::new();
        for (partition, messages) in by_partition {
            let Some(store) = self.partitions.get(&partition) else {
                // Revoked while the records were in flight: the new owner reads them.
                continue;
            };
            let mut expected = store.next_offset()?.unwrap_or(0);
            let mut states = BatchStates {
                store,
                partition,
                states: HashMap::new(),
            };
            let mut clock = match self.clocks.remove(&partition) {
                Some(clock) => clock,
                None => Self::stored_clock(partition, store)?,
            };
            let mut next_offset = None;
            for message in messages {
                if message.offset() < expected {
                    continue; // already folded (a redelivery after a seek)
                }
                expected = message.offset() + 1;
                next_offset = Some(expected);
                self.fold(partition, &message, &mut clock, &mut states)?;
            }
            let Some(next_offset) = next_offset else {
                // Nothing new folded (every record a redelivery): the clock is unchanged,
                // and must stay known, or its partition would get no more ticks.
                self.clocks.insert(partition, clock);
                continue;
            };
            let mut changes: Vec<(Vec<u8>, Option<Vec<u8>>)> = states
                .states
                .iter()
                .map(|(key, state)| (key.clone(), Some(codec::encode(state))))
                .collect();
            for write in clock.take_changes() {
                changes.push(match write {
                    ClockWrite::Watermark(stored) => {
                        (CLOCK_KEY.to_vec(), Some(codec::encode_clock(&stored)))
                    }
                    ClockWrite::Timer { key, present } => {
                        (key, present.then(|| TIMER_VALUE.to_vec()))
                    }
                });
            }
            self.record_clock_metrics(partition, &clock);
            // Kept for the next batch now: a failed batch either stops the process or
            // (an aborted transaction) forgets it again.
            self.clocks.insert(partition, clock);
            for (key, value) in &changes {
                self.send_changelog(partition, key, value.as_deref(), next_offset)?;
            }
            batches.push(PartitionBatch {
                partition,
                changes,
                next_offset,
            });
        }
        Ok(batches)
    }

    /// Writes each partition's changes and next offset (and where its marker landed in
    /// the changelog) to its store: the batch is committed.
    fn write_stores(
        &mut self,
        (batches, markers): (Vec<PartitionBatch>, HashMap<i32, i64>),
    ) -> Result<Committed, EngineError> {
        let started = Instant::now();
        let mut committed = Vec::new();
        for PartitionBatch {
            partition,
            changes,
            next_offset,
        } in batches
        {
            let Some(store) = self.partitions.get(&partition) else {
                continue;
            };
            store.commit_changes(
                changes.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
                next_offset,
                markers.get(&partition).copied(),
            )?;
            self.record_store_metrics(partition, next_offset, store);
            tracing::debug!(
                partition,
                next_offset,
                keys = changes.len(),
                "batch committed"
            );
            if let Some(assigned_at) = self.assigned_at.remove(&partition) {
                let seconds = assigned_at.elapsed().as_secs_f64();
                self.metrics
                    .first_event_seconds
                    .with_label_values(&[&partition.to_string()])
                    .set(seconds);
                tracing::info!(
                    partition,
                    next_offset,
                    ms_since_assignment = (seconds * 1000.0) as u64,
                    "first events processed since the partition was assigned"
                );
            }
            committed.push((partition, next_offset));
        }
        self.metrics
            .batch_commit_seconds
            .with_label_values(&["store"])
            .observe(started.elapsed().as_secs_f64());
        Ok(committed)
    }

    /// Writes a reset marker to the partition's changelog (a rebuild starts the state over;
    /// see `changelog`) and waits for its ack.
    pub fn reset_changelog(&mut self, partition: i32) -> Result<(), EngineError> {
        self.start_batch();
        self.send_marker(partition, RESET_MARKER_KEY, 0)?;
        Ok(self.markers().wait(self.ack_timeout)?)
    }

    /// Produces a changelog state record (`None`: a tombstone).
    fn send_changelog(
        &self,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        next_offset: i64,
    ) -> Result<(), EngineError> {
        self.outputs()
            .send(changelog::record(
                &self.topics.changelog,
                partition,
                key,
                value,
                next_offset,
            ))
            .map_err(EngineError::Produce)
    }

    /// Produces a marker. Markers carry the offset as their value too: a record without a
    /// value is a tombstone, which compaction would delete.
    fn send_marker(&self, partition: i32, key: &[u8], next_offset: i64) -> Result<(), EngineError> {
        let offset = next_offset.to_string();
        self.markers()
            .send(changelog::record(
                &self.topics.changelog,
                partition,
                key,
                Some(offset.as_bytes()),
                next_offset,
            ))
            .map_err(EngineError::Produce)
    }

    /// Folds one record into the partition's clock and its keys' states (loaded on first
    /// use in the batch) and produces its incident events.
    fn fold(
        &self,
        partition: i32,
        message: &OwnedMessage,
        clock: &mut PartitionClock,
        states: &mut BatchStates<'_>,
    ) -> Result<(), EngineError> {
        let headers: Vec<(&str, Option<&[u8]>)> = message
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let ce = match CloudEventHeaders::from_pairs(headers) {
            Ok(ce) => ce,
            Err(e) => {
                self.malformed(partition, message, "invalid", &e.to_string());
                return Ok(());
            }
        };
        let parsed = match hookfold_events::parse_record(&ce, message.payload().unwrap_or_default())
        {
            Ok(parsed) => parsed,
            Err(e) => {
                self.malformed(partition, message, &ce.ty, &e.to_string());
                return Ok(());
            }
        };
        let key = message.key().unwrap_or_default();
        if matches!(parsed, LogRecord::Webhook(_)) && key.starts_with(RESERVED_PREFIX) {
            // The clock and the timers live under these keys beside the states.
            self.malformed(
                partition,
                message,
                &ce.ty,
                "record key uses the reserved prefix \\0hookfold/",
            );
            return Ok(());
        }
        let cause = Cause {
            topic: self.topics.input.clone(),
            partition,
            offset: message.offset(),
            ce_id: ce.id.clone(),
        };
        let record = match &parsed {
            LogRecord::Webhook(event) => Record::Webhook { key, event },
            LogRecord::Tick { time, .. } => Record::Tick { time: *time },
        };
        let outputs = hookfold_rules::fold(clock, states, record, &cause, &self.rules)?;
        let outcome = match (&parsed, outputs.is_empty()) {
            (_, false) => "incident",
            (LogRecord::Tick { .. }, true) => "tick",
            (LogRecord::Webhook(_), true) => "no_change",
        };
        self.metrics
            .events
            .with_label_values(&[&ce.ty, outcome])
            .inc();
        let emit = self.emit
            || self
                .emit_from
                .get(&partition)
                .is_some_and(|&from| message.offset() >= from);
        for incident in &outputs {
            if emit {
                self.emit(incident)?;
            }
            // The table follows the state, emitted or not: a rebuild without `--emit`
            // still leaves it as the new state says.
            self.table(incident)?;
        }
        Ok(())
    }

    /// The partition's clock as its store holds it: the watermark, and every timer key.
    fn stored_clock(partition: i32, store: &PartitionStore) -> Result<PartitionClock, EngineError> {
        let watermark = match store.get(CLOCK_KEY)? {
            None => None,
            Some(bytes) => {
                Some(
                    codec::decode_clock(&bytes).map_err(|source| EngineError::State {
                        partition,
                        key: String::from_utf8_lossy(CLOCK_KEY).into_owned(),
                        source,
                    })?,
                )
            }
        };
        let mut keys = Vec::new();
        for entry in store.states_with_prefix(TIMER_PREFIX) {
            keys.push(entry?.0);
        }
        let (clock, skipped) = PartitionClock::load(watermark, keys.iter().map(Vec::as_slice));
        if skipped > 0 {
            tracing::warn!(
                partition,
                skipped,
                "ignoring stored timer keys that do not read back"
            );
        }
        Ok(clock)
    }

    /// The owned partitions whose clock holds timers: ticks are only of use there.
    pub fn partitions_with_timers(&self) -> Vec<i32> {
        self.clocks
            .iter()
            .filter(|(partition, clock)| {
                clock.timers() > 0 && self.partitions.contains_key(partition)
            })
            .map(|(partition, _)| *partition)
            .collect()
    }

    fn record_clock_metrics(&self, partition: i32, clock: &PartitionClock) {
        let label = partition.to_string();
        if let Some(watermark) = clock.watermark() {
            self.metrics
                .watermark_seconds
                .with_label_values(&[&label])
                .set(watermark.unix_timestamp());
        }
        self.metrics
            .timers
            .with_label_values(&[&label])
            .set(clock.timers() as i64);
    }

    /// The incident's record in the open-incident table: the event while the incident is
    /// open, a tombstone once it is resolved (compaction then forgets the key).
    fn table(&self, incident: &IncidentEvent) -> Result<(), EngineError> {
        let resolved = incident.transition == Transition::Resolved as i32;
        let value = (!resolved).then(|| incident.encode_to_vec());
        let mut record: BaseRecord<'_, str, [u8]> =
            BaseRecord::to(&self.topics.open_incidents).key(incident.dedup_key.as_str());
        if let Some(value) = &value {
            record = record.payload(value.as_slice());
        }
        self.outputs().send(record).map_err(EngineError::Produce)
    }

    /// Tombstones in the open-incident table for `dedup_keys` (a rebuild's incidents that
    /// the new state no longer has open), acked before it returns.
    pub fn close_in_table(&mut self, dedup_keys: &[String]) -> Result<(), EngineError> {
        self.start_batch();
        for key in dedup_keys {
            self.outputs()
                .send(BaseRecord::<str, [u8]>::to(&self.topics.open_incidents).key(key.as_str()))
                .map_err(EngineError::Produce)?;
        }
        Ok(self.outputs().wait(self.ack_timeout)?)
    }

    fn emit(&self, incident: &IncidentEvent) -> Result<(), EngineError> {
        let ce = hookfold_proto::incident_event_headers(incident, PROCESSOR_SOURCE)
            .map_err(|_| EngineError::Headers(incident.event_id.clone()))?;
        let headers = hookfold_kafka::cloudevent_headers(&ce, 0);
        let transition = Transition::try_from(incident.transition)
            .map(|t| {
                t.as_str_name()
                    .trim_start_matches("TRANSITION_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_else(|_| "unknown".into());
        tracing::info!(
            event_id = %incident.event_id,
            incident_id = %incident.incident_id,
            dedup_key = %incident.dedup_key,
            transition = %transition,
            partition = incident.cause.as_ref().map(|c| c.partition),
            offset = incident.cause.as_ref().map(|c| c.offset),
            summary = %incident.summary,
            "incident event"
        );
        self.metrics
            .incidents
            .with_label_values(&[&transition])
            .inc();
        let value = incident.encode_to_vec();
        self.outputs()
            .send(
                BaseRecord::to(&self.topics.output)
                    .key(incident.dedup_key.as_str())
                    .payload(value.as_slice())
                    .headers(headers),
            )
            .map_err(EngineError::Produce)
    }

    fn malformed(&self, partition: i32, message: &OwnedMessage, ty: &str, why: &str) {
        self.metrics
            .events
            .with_label_values(&[ty, "malformed"])
            .inc();
        tracing::warn!(
            partition,
            offset = message.offset(),
            error = why,
            "skipping a record that is not a webhook event"
        );
    }
}

/// A batch's states of one partition: loaded from the store on first use, written back
/// (and to the changelog) when the batch commits.
struct BatchStates<'s> {
    store: &'s PartitionStore,
    partition: i32,
    states: HashMap<Vec<u8>, KeyState>,
}

impl hookfold_rules::States for BatchStates<'_> {
    type Error = EngineError;

    fn state(&mut self, key: &[u8]) -> Result<&mut KeyState, EngineError> {
        match self.states.entry(key.to_vec()) {
            Entry::Occupied(known) => Ok(known.into_mut()),
            Entry::Vacant(slot) => {
                let state = match self.store.get(key)? {
                    None => KeyState::default(),
                    Some(bytes) => codec::decode(&bytes).map_err(|source| EngineError::State {
                        partition: self.partition,
                        key: String::from_utf8_lossy(key).into_owned(),
                        source,
                    })?,
                };
                Ok(slot.insert(state))
            }
        }
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
