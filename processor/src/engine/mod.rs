//! The engine: the owned partitions' tasks ([`PartitionTask`]), the pending batch, and how
//! a batch is folded and committed ([`Engine::fold_batch`]).
//!
//! Per batch, in this order (the processing guarantees in docs/OPERATIONS.md):
//! 1. [`BatchProducer::begin`] (a transaction under `exactly_once`);
//! 2. per partition, every record is parsed and folded into the partition's clock and its
//!    keys' states ([`fold`]); the incident events, the open-incident table's rows and one
//!    changelog record per changed key (the clock's watermark under `CLOCK_KEY`, each timer
//!    added, a tombstone for each removed) are produced ([`outputs`]);
//! 3. [`BatchProducer::finish`]: the batch markers (and, under `exactly_once`, the next
//!    input offsets), every ack waited for, the transaction committed ([`transaction`]);
//! 4. per partition, the changed states and the next input offset are written in one
//!    RocksDB `WriteBatch`.
//!
//! A crash anywhere before 4 leaves the store at the previous batch. `effectively_once`:
//! the batch is read again and its outputs produced again, with the same deterministic
//! `event_id`s. `exactly_once`: a crash before the commit leaves an open transaction that
//! is aborted (nothing of it visible to `read_committed` readers); a crash between the
//! commit and 4 leaves the store one batch behind the group's committed offset, and the
//! restore brings it up from the changelog before the partition resumes (`restore`). A
//! transaction that fails is aborted ([`BatchProducer::abort`]) and its tasks rewound
//! ([`Engine::take_rewinds`]): the batch is redone.

mod error;
mod fold;
mod outputs;
pub mod transaction;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use hookfold_rules::{RESERVED_PREFIX, Rules};
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::message::{Message, OwnedMessage};

use crate::codec;
use crate::config::BatchConfig;
use crate::metrics::Metrics;
use crate::store::PartitionStore;
use crate::task::{PartitionTask, TaskState};
pub use error::EngineError;
use fold::{Folder, PartitionBatch};
use outputs::Outputs;
use transaction::Aborted;
pub use transaction::BatchProducer;

pub struct Topics {
    pub input: String,
    pub output: String,
    pub changelog: String,
    /// The compacted table of open incidents (`kafka.open_incidents_topic`).
    pub open_incidents: String,
    /// The groups' repartition topic (`kafka.groups_topic`).
    pub groups: String,
}

/// What a committed batch moved each partition to.
pub type Committed = Vec<(i32, i64)>;

pub struct Engine {
    rules: Rules,
    topics: Topics,
    state_dir: PathBuf,
    producer: BatchProducer,
    batch: BatchConfig,
    /// One task per owned partition.
    tasks: BTreeMap<i32, PartitionTask>,
    pending: Vec<OwnedMessage>,
    pending_since: Option<Instant>,
    /// Whether incident events are produced (a rebuild may recompute state only).
    emit: bool,
    /// The input topic's partitions (the group stage waits for all their clocks).
    sources: i32,
    metrics: Metrics,
}

impl Engine {
    pub fn new(
        rules: Rules,
        topics: Topics,
        state_dir: &Path,
        producer: BatchProducer,
        batch: BatchConfig,
        metrics: Metrics,
    ) -> Self {
        Self {
            rules,
            topics,
            state_dir: state_dir.to_owned(),
            producer,
            batch,
            tasks: BTreeMap::new(),
            pending: Vec::new(),
            pending_since: None,
            emit: true,
            sources: 0,
            metrics,
        }
    }

    /// The input topic's partition count, as the topics check at start found it.
    pub fn set_input_partitions(&mut self, partitions: i32) {
        self.sources = partitions;
    }

    /// Whether some route groups (the groups topic is read and written).
    pub fn groups(&self) -> bool {
        self.rules.groups()
    }

    /// The groups-topic offset the partition's group stage reads from when its held
    /// changes are not in memory (`GroupStage::replay_from`; `None`: the beginning);
    /// `None` too for a partition without a store.
    pub fn group_offset(&self, partition: i32) -> Result<Option<i64>, EngineError> {
        let Some(store) = self.tasks.get(&partition).and_then(PartitionTask::store) else {
            return Ok(None);
        };
        let Some(bytes) = store.get(hookfold_rules::groups::GROUP_STAGE_KEY)? else {
            return Ok(None);
        };
        let stage: hookfold_rules::GroupStage =
            codec::decode_value(&bytes).map_err(|source| EngineError::State {
                partition,
                key: "group stage".into(),
                source,
            })?;
        Ok(stage.replay_from())
    }

    /// Whether the group's offsets are committed in each batch (`exactly_once`).
    pub fn commits_group_offsets(&self) -> bool {
        self.producer.commits_group_offsets()
    }

    /// Recompute state without producing incident events (`rebuild` without `--emit`),
    /// except for records at or after [`Engine::emit_from`].
    pub fn without_incident_events(mut self) -> Self {
        self.emit = false;
        self
    }

    /// Without incident events, still produce those of `partition`'s records from `offset`
    /// on: they were never folded before, so nobody has seen their incidents. The partition
    /// must be assigned (its task holds this).
    pub fn emit_from(&mut self, partition: i32, offset: i64) {
        if let Some(task) = self.tasks.get_mut(&partition) {
            task.emit_from(offset);
        }
    }

    pub fn store_path(state_dir: &Path, input_topic: &str, partition: i32) -> PathBuf {
        state_dir.join(format!("{input_topic}-{partition}"))
    }

    /// Where the partition's store is.
    pub fn store_path_of(&self, partition: i32) -> PathBuf {
        Self::store_path(&self.state_dir, &self.topics.input, partition)
    }

    /// Opens the partition's store (or creates it).
    pub fn open_store(&self, partition: i32) -> Result<PartitionStore, EngineError> {
        Ok(PartitionStore::open(&self.store_path_of(partition))?)
    }

    /// A partition was assigned: its task starts Restoring. Returns the store if the engine
    /// still held it (the restore then starts from it instead of opening it again).
    pub fn assign(&mut self, partition: i32) -> Option<PartitionStore> {
        match self.tasks.get_mut(&partition) {
            Some(task) => task.take_store(),
            None => {
                self.tasks
                    .insert(partition, PartitionTask::assigned(partition, &self.metrics));
                None
            }
        }
    }

    /// The partition's restore finished: its task becomes Active with the store and its
    /// clock. Returns the offset to resume from (`None`: the beginning).
    pub fn restored(
        &mut self,
        partition: i32,
        store: PartitionStore,
    ) -> Result<Option<i64>, EngineError> {
        // The clock now, not at the first batch: a partition with timers waiting gets ticks
        // (and so batches) only once its clock says it has them.
        let clock = fold::stored_clock(partition, &store)?;
        let task = self
            .tasks
            .entry(partition)
            .or_insert_with(|| PartitionTask::assigned(partition, &self.metrics));
        let next = task.restored(store)?;
        task.keep_clock(clock);
        Ok(next)
    }

    /// Opens the partition's store and makes its task Active at once, without a restore
    /// (a rebuild, which starts from an empty store).
    pub fn activate(&mut self, partition: i32) -> Result<Option<i64>, EngineError> {
        self.assign(partition);
        let store = self.open_store(partition)?;
        self.restored(partition, store)
    }

    /// Commits the pending batch, then closes the partitions' tasks. `lost`: the group has
    /// already given them to another member (this one was out of the group too long);
    /// under `exactly_once` their pending records are then dropped, as no transaction of
    /// this member's generation can commit any more.
    pub fn revoke(
        &mut self,
        partitions: &[i32],
        lost: bool,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<Committed, EngineError> {
        if lost && !self.producer.commits_for_lost_partitions() {
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
        let committed = match self.fold_batch(group) {
            Ok(committed) => committed,
            // The partitions go anyway: their new owner redoes the batch.
            Err(EngineError::Aborted { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        for partition in partitions {
            if let Some(task) = self.tasks.remove(partition) {
                task.close();
            }
        }
        Ok(committed)
    }

    /// The dedup keys of the incidents open in `partition`'s stored state.
    pub fn open_dedup_keys(&self, partition: i32) -> Result<BTreeSet<String>, EngineError> {
        let mut open = BTreeSet::new();
        let Some(store) = self.tasks.get(&partition).and_then(PartitionTask::store) else {
            return Ok(open);
        };
        for entry in store.states() {
            let (key, bytes) = entry?;
            if let Some(group) = key.strip_prefix(hookfold_rules::groups::GROUP_PREFIX) {
                let state: hookfold_rules::GroupState =
                    codec::decode_value(&bytes).map_err(|source| EngineError::State {
                        partition,
                        key: String::from_utf8_lossy(&key).into_owned(),
                        source,
                    })?;
                open.extend(state.open_dedup_keys(&String::from_utf8_lossy(group)));
                continue;
            }
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

    /// Every assigned partition, whatever its task's state.
    pub fn assigned(&self) -> Vec<i32> {
        self.tasks.keys().copied().collect()
    }

    /// Whether some assigned partition is still being restored.
    pub fn restoring(&self) -> bool {
        self.tasks
            .values()
            .any(|task| task.state() == TaskState::Restoring)
    }

    /// Takes a polled record into the pending batch, unless its task does not take records
    /// now (rewinding: it was read before its aborted batch was rewound, and is read again).
    pub fn push(&mut self, message: OwnedMessage) {
        if !self
            .tasks
            .get(&message.partition())
            .is_some_and(PartitionTask::takes_records)
        {
            return;
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

    /// Folds the pending batch, produces its outputs and commits it (module header).
    /// `group`: the consumer's group metadata, which `exactly_once` commits the input
    /// offsets as.
    pub fn fold_batch(
        &mut self,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<Committed, EngineError> {
        self.pending_since = None;
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let pending = std::mem::take(&mut self.pending);
        let mut partitions: Vec<i32> = pending.iter().map(|m| m.partition()).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let produced = self
            .producer
            .begin()
            .and_then(|()| self.fold_and_produce(pending))
            .and_then(|batches| {
                let ends: Vec<(i32, i64)> = batches
                    .iter()
                    .map(|b| (b.partition, b.next_offset))
                    .collect();
                let markers = self.producer.finish(&ends, group)?;
                Ok((batches, markers))
            });
        match produced {
            Ok((batches, markers)) => self.write_stores(batches, &markers),
            Err(error) => Err(self.aborted(partitions, error)),
        }
    }

    /// Folds the batch partition by partition (each partition's records in offset order),
    /// producing its outputs; returns what each partition's store is to write.
    fn fold_and_produce(
        &mut self,
        pending: Vec<OwnedMessage>,
    ) -> Result<Vec<PartitionBatch>, EngineError> {
        // Per partition: its webhook records, and its records of the groups topic.
        let mut by_partition: BTreeMap<i32, (Vec<OwnedMessage>, Vec<OwnedMessage>)> =
            BTreeMap::new();
        for message in pending {
            let entry = by_partition.entry(message.partition()).or_default();
            if message.topic() == self.topics.groups {
                entry.1.push(message);
            } else {
                entry.0.push(message);
            }
        }
        let folder = Folder {
            rules: &self.rules,
            outputs: Outputs {
                producer: &self.producer,
                topics: &self.topics,
                metrics: &self.metrics,
            },
            emit: self.emit,
            sources: self.sources,
            grouped: self.rules.groups(),
            pooled: self.rules.pools(),
        };
        let mut batches = Vec::new();
        for (partition, (webhooks, groups)) in by_partition {
            // Revoked while the records were in flight: the new owner reads them.
            let Some(task) = self.tasks.get_mut(&partition) else {
                continue;
            };
            if let Some(batch) = folder.partition(task, webhooks, groups)? {
                batches.push(batch);
            }
        }
        Ok(batches)
    }

    /// After a failed batch: the producer aborts what can be aborted; a batch that can be
    /// redone rewinds its tasks (their records dropped until the consumer has sought them
    /// back), one that cannot is the process's end.
    fn aborted(&mut self, partitions: Vec<i32>, error: EngineError) -> EngineError {
        match self.producer.abort(&partitions, error) {
            Aborted::Fail(error) => error,
            Aborted::Redo(error) => {
                for partition in &partitions {
                    if let Some(task) = self.tasks.get_mut(partition) {
                        task.aborted();
                    }
                }
                self.pending
                    .retain(|m| !partitions.contains(&m.partition()));
                EngineError::Aborted {
                    partitions,
                    source: Box::new(error),
                }
            }
        }
    }

    /// The partitions to seek back to where their stores are (after an aborted batch),
    /// with the offset to seek to (`None`: the beginning); their tasks take records again
    /// from the next one polled.
    pub fn take_rewinds(&mut self) -> Result<Vec<(i32, Option<i64>)>, EngineError> {
        let mut rewinds = Vec::new();
        for task in self.tasks.values_mut() {
            if task.state() == TaskState::Rewinding {
                rewinds.push((task.partition(), task.rewound()?));
                // As it is in the store: what the aborted batch did to it is forgotten.
                if let Some(store) = task.store() {
                    let clock = fold::stored_clock(task.partition(), store)?;
                    task.keep_clock(clock);
                }
            }
        }
        Ok(rewinds)
    }

    /// Writes each partition's changes and next offset (and where its marker landed in
    /// the changelog) to its store: the batch is committed.
    fn write_stores(
        &mut self,
        batches: Vec<PartitionBatch>,
        markers: &std::collections::HashMap<i32, i64>,
    ) -> Result<Committed, EngineError> {
        let started = Instant::now();
        let mut committed = Vec::new();
        for PartitionBatch {
            partition,
            changes,
            next_offset,
        } in batches
        {
            let Some(task) = self.tasks.get_mut(&partition) else {
                continue;
            };
            let Some(store) = task.store() else {
                continue;
            };
            store.commit_changes(
                changes.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
                next_offset,
                markers.get(&partition).copied(),
            )?;
            tracing::debug!(
                partition,
                next_offset,
                keys = changes.len(),
                "batch committed"
            );
            task.committed(next_offset);
            committed.push((partition, next_offset));
        }
        self.metrics
            .batch_commit_seconds
            .with_label_values(&["store"])
            .observe(started.elapsed().as_secs_f64());
        Ok(committed)
    }

    /// Starts the partition's group stage at `offset` of the groups topic, committed as a
    /// batch of its own (changelog record and marker, then the store): a rebuild's stores
    /// fold only the member records the rebuild itself sends, none from before it.
    pub fn start_group_stage(&mut self, partition: i32, offset: i64) -> Result<(), EngineError> {
        let next_offset = match self.tasks.get(&partition).and_then(PartitionTask::store) {
            Some(store) => store.next_offset()?.unwrap_or(0),
            None => return Ok(()),
        };
        let value = codec::encode_value(&hookfold_rules::GroupStage::starting_at(offset));
        let key = hookfold_rules::groups::GROUP_STAGE_KEY.to_vec();
        self.producer.begin()?;
        Outputs {
            producer: &self.producer,
            topics: &self.topics,
            metrics: &self.metrics,
        }
        .state(partition, &key, Some(&value), next_offset)?;
        let markers = self.producer.finish(&[(partition, next_offset)], None)?;
        let batch = PartitionBatch {
            partition,
            changes: vec![(key, Some(value))],
            next_offset,
        };
        self.write_stores(vec![batch], &markers)?;
        Ok(())
    }

    /// Writes a reset marker to the partition's changelog (a rebuild starts the state over;
    /// see `changelog`) and waits for its ack.
    pub fn reset_changelog(&mut self, partition: i32) -> Result<(), EngineError> {
        self.producer.write_reset_marker(partition)
    }

    /// Tombstones in the open-incident table for `dedup_keys` (a rebuild's incidents that
    /// the new state no longer has open), acked before it returns.
    pub fn close_in_table(&mut self, dedup_keys: &[String]) -> Result<(), EngineError> {
        let topics = &self.topics;
        self.producer.send_and_wait(
            dedup_keys
                .iter()
                .map(|key| outputs::table_tombstone(topics, key)),
        )
    }

    /// The active partitions whose clock holds timers: ticks are only of use there. With
    /// grouped routes, every active partition: the group partitions wait for every input
    /// partition's clock, a quiet one's too.
    pub fn partitions_with_timers(&self) -> Vec<i32> {
        let every = self.rules.groups();
        self.tasks
            .values()
            .filter(|task| task.has_timers() || (every && task.state() == TaskState::Active))
            .map(PartitionTask::partition)
            .collect()
    }
}
