//! One task per owned input partition: what the processor knows of that partition, and the
//! one place its life is decided (Kafka Streams' `StreamTask` is the model).
//!
//! ```text
//!   assigned ──► Restoring ──restored()──► Active ◄──rewound()── Rewinding
//!                   │                        │ ──aborted()──────────►│
//!                   └────────── close() ◄────┴───────────────────────┘
//! ```
//!
//! - **Restoring**: the consumer has the partition paused while `restore` brings its store up
//!   to the changelog (and, under `exactly_once`, to the group's committed offset). The task
//!   has no store: the restore holds it.
//! - **Active**: its records are folded in batches; it holds its store and its clock (the
//!   watermark and timer index, loaded when it became active and kept by every batch).
//! - **Rewinding**: its last batch's transaction was aborted; its records are dropped until
//!   the consumer has sought it back to its store's offset, then it is active again (its
//!   clock reloaded from the store, as the aborted fold's changes are forgotten).
//! - **closed** ([`PartitionTask::close`]): given up; its gauges are cleared (another
//!   processor reports the partition now) and its store closes with it.
//!
//! Invariants: a task holds a store exactly when it is Active or Rewinding; its `assigned`
//! gauge is 1 from creation to `close` and set nowhere else; the time to its first event is
//! reported once, by the first batch committed after it was assigned.

use std::time::Instant;

use hookfold_rules::PartitionClock;

use crate::metrics::Metrics;
use crate::store::PartitionStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Restoring,
    Active,
    Rewinding,
}

pub struct PartitionTask {
    partition: i32,
    state: TaskState,
    /// Held while Active or Rewinding.
    store: Option<PartitionStore>,
    /// `None`: to be loaded from the store (a new task, or after an aborted batch).
    clock: Option<PartitionClock>,
    /// The group stage's held changes, in memory only; empty whenever the groups topic is
    /// (re)read from the stage's `replay_from` (a new task, or after an aborted batch).
    held: hookfold_rules::HeldChanges,
    /// When the partition was assigned, until its first batch after that is committed.
    assigned_at: Option<Instant>,
    /// Without incident events (a rebuild): the offset from which they are produced anyway.
    emit_from: Option<i64>,
    /// The clock last sent to the group partitions (`None`: not since it became active).
    forwarded: Option<time::OffsetDateTime>,
    metrics: TaskMetrics,
}

/// The task's view of the processor's per-partition metrics.
pub struct TaskMetrics {
    metrics: Metrics,
    label: String,
}

impl TaskMetrics {
    fn labels(&self) -> [&str; 1] {
        [self.label.as_str()]
    }

    pub fn store(&self, next_offset: i64, store: &PartitionStore) {
        let (keys, bytes) = store.estimates();
        let labels = self.labels();
        let m = &self.metrics;
        m.next_offset.with_label_values(&labels).set(next_offset);
        m.state_keys.with_label_values(&labels).set(keys as i64);
        m.state_bytes.with_label_values(&labels).set(bytes as i64);
    }

    pub fn clock(&self, clock: &PartitionClock) {
        let labels = self.labels();
        if let Some(watermark) = clock.watermark() {
            self.metrics
                .watermark_seconds
                .with_label_values(&labels)
                .set(watermark.unix_timestamp());
        }
        self.metrics
            .timers
            .with_label_values(&labels)
            .set(clock.timers() as i64);
    }
}

impl TaskMetrics {
    /// The group stage as the last batch left it.
    pub fn group_stage(&self, stage: &hookfold_rules::GroupStage, sources: i32) {
        let labels = self.labels();
        let m = &self.metrics;
        if let Some(next) = stage.next_offset() {
            m.group_next_offset.with_label_values(&labels).set(next);
        }
        m.group_pending
            .with_label_values(&labels)
            .set(stage.pending() as i64);
        m.group_lost
            .with_label_values(&labels)
            .set(stage.lost() as i64);
        if let Some(low) = stage.low_watermark(sources) {
            m.group_low_watermark_seconds
                .with_label_values(&labels)
                .set(low.unix_timestamp());
        }
    }
}

impl PartitionTask {
    /// A partition just assigned: Restoring.
    pub fn assigned(partition: i32, metrics: &Metrics) -> Self {
        let metrics = TaskMetrics {
            metrics: metrics.clone(),
            label: partition.to_string(),
        };
        metrics
            .metrics
            .assigned
            .with_label_values(&metrics.labels())
            .set(1);
        Self {
            partition,
            state: TaskState::Restoring,
            store: None,
            clock: None,
            held: Default::default(),
            assigned_at: Some(Instant::now()),
            emit_from: None,
            forwarded: None,
            metrics,
        }
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn state(&self) -> TaskState {
        self.state
    }

    /// Restoring → Active, with the restored store; returns the offset to resume from
    /// (`None`: the beginning, for a store that has seen nothing).
    pub fn restored(
        &mut self,
        store: PartitionStore,
    ) -> Result<Option<i64>, crate::store::StoreError> {
        debug_assert_eq!(self.state, TaskState::Restoring);
        let next = store.next_offset()?;
        self.metrics.store(next.unwrap_or(0), &store);
        tracing::info!(
            partition = self.partition,
            next_offset = next,
            path = %store.path().display(),
            "partition assigned"
        );
        self.store = Some(store);
        self.clock = None;
        self.held = Default::default();
        self.forwarded = None;
        self.state = TaskState::Active;
        Ok(next)
    }

    /// Active → Rewinding: the batch's transaction was aborted; what the fold changed in
    /// memory (the clock, the held changes) is forgotten.
    pub fn aborted(&mut self) {
        if self.state == TaskState::Active {
            self.state = TaskState::Rewinding;
            self.clock = None;
            self.held = Default::default();
            // The aborted batch's clock never reached the group partitions.
            self.forwarded = None;
        }
    }

    /// Rewinding → Active; returns the offset to seek back to (`None`: the beginning).
    pub fn rewound(&mut self) -> Result<Option<i64>, crate::store::StoreError> {
        self.state = TaskState::Active;
        match &self.store {
            Some(store) => store.next_offset(),
            None => Ok(None),
        }
    }

    /// Whether records of this partition go into the batch now.
    pub fn takes_records(&self) -> bool {
        self.state == TaskState::Active
    }

    /// The store, while Active or Rewinding.
    pub fn store(&self) -> Option<&PartitionStore> {
        self.store.as_ref()
    }

    /// Hands the store back without closing the task's books (a restore starts again).
    pub fn take_store(&mut self) -> Option<PartitionStore> {
        self.state = TaskState::Restoring;
        self.clock = None;
        self.held = Default::default();
        self.store.take()
    }

    /// The clock for the next batch, taken out (the batch puts it back with
    /// [`PartitionTask::keep_clock`]); `None` if it must be loaded from the store.
    pub fn take_clock(&mut self) -> Option<PartitionClock> {
        self.clock.take()
    }

    /// The group stage's held changes for the next batch, taken out (the batch puts them
    /// back with [`PartitionTask::keep_held`]).
    pub fn take_held(&mut self) -> hookfold_rules::HeldChanges {
        std::mem::take(&mut self.held)
    }

    pub fn keep_held(&mut self, held: hookfold_rules::HeldChanges) {
        self.held = held;
    }

    /// Keeps the clock as the batch left it.
    pub fn keep_clock(&mut self, clock: PartitionClock) {
        self.metrics.clock(&clock);
        self.clock = Some(clock);
    }

    /// Timers waiting: ticks are of use to this partition.
    pub fn has_timers(&self) -> bool {
        self.state == TaskState::Active && self.clock.as_ref().is_some_and(|c| c.timers() > 0)
    }

    /// Whether the clock is past what was last sent to the group partitions.
    pub fn clock_moved_since_forwarded(&self, now: time::OffsetDateTime) -> bool {
        self.forwarded.is_none_or(|sent| now > sent)
    }

    /// The clock `now` was sent to the group partitions.
    pub fn forwarded(&mut self, now: time::OffsetDateTime) {
        self.forwarded = Some(now);
    }

    pub fn emit_from(&mut self, offset: i64) {
        self.emit_from = Some(offset);
    }

    /// Whether incident events of the record at `offset` are produced though the engine
    /// produces none (a rebuild without `--emit`).
    pub fn emits_anyway(&self, offset: i64) -> bool {
        self.emit_from.is_some_and(|from| offset >= from)
    }

    pub fn metrics(&self) -> &TaskMetrics {
        &self.metrics
    }

    /// A batch was committed to the store at `next_offset`: the first one since the
    /// partition was assigned is reported as the time to its first event.
    pub fn committed(&mut self, next_offset: i64) {
        if let Some(store) = &self.store {
            self.metrics.store(next_offset, store);
        }
        if let Some(assigned_at) = self.assigned_at.take() {
            let seconds = assigned_at.elapsed().as_secs_f64();
            self.metrics
                .metrics
                .first_event_seconds
                .with_label_values(&self.metrics.labels())
                .set(seconds);
            tracing::info!(
                partition = self.partition,
                next_offset,
                ms_since_assignment = (seconds * 1000.0) as u64,
                "first events processed since the partition was assigned"
            );
        }
    }

    /// Closes the task: its store closes, and its gauges go (another processor reports the
    /// partition now; stale values here would add up wrong in sums over the group).
    pub fn close(self) {
        let labels = self.metrics.labels();
        let m = &self.metrics.metrics;
        m.assigned.with_label_values(&labels).set(0);
        for gauge in [
            &m.next_offset,
            &m.state_keys,
            &m.state_bytes,
            &m.consumer_lag,
            &m.watermark_seconds,
            &m.timers,
            &m.group_next_offset,
            &m.group_pending,
            &m.group_low_watermark_seconds,
        ] {
            let _ = gauge.remove_label_values(&labels);
        }
        tracing::info!(
            partition = self.partition,
            had_store = self.store.is_some(),
            "partition revoked, store closed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &tempfile::TempDir, next_offset: Option<i64>) -> PartitionStore {
        let store = PartitionStore::open(&dir.path().join("store")).unwrap();
        if let Some(next) = next_offset {
            store.commit_changes([], next, None).unwrap();
        }
        store
    }

    fn assigned_gauge(metrics: &Metrics, partition: i32) -> i64 {
        metrics
            .assigned
            .with_label_values(&[&partition.to_string()])
            .get()
    }

    #[test]
    fn a_task_takes_records_only_while_active_and_its_gauge_follows_its_life() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let mut task = PartitionTask::assigned(4, &metrics);
        assert_eq!(task.state(), TaskState::Restoring);
        assert!(!task.takes_records() && task.store().is_none());
        assert_eq!(assigned_gauge(&metrics, 4), 1);

        assert_eq!(task.restored(store(&dir, Some(17))).unwrap(), Some(17));
        assert_eq!(task.state(), TaskState::Active);
        assert!(task.takes_records() && task.store().is_some());

        task.keep_clock(PartitionClock::default());
        task.aborted();
        assert_eq!(task.state(), TaskState::Rewinding);
        assert!(
            !task.takes_records(),
            "records read before the rewind are dropped"
        );
        assert!(
            task.take_clock().is_none(),
            "the aborted fold's clock is forgotten"
        );
        assert_eq!(
            task.rewound().unwrap(),
            Some(17),
            "sought back to the store's offset"
        );
        assert!(task.takes_records());

        task.close();
        assert_eq!(assigned_gauge(&metrics, 4), 0);
    }

    #[test]
    fn the_first_event_is_reported_once_and_emit_from_counts_from_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let mut task = PartitionTask::assigned(0, &metrics);
        task.restored(store(&dir, None)).unwrap();
        let first = || metrics.first_event_seconds.with_label_values(&["0"]).get();
        task.committed(5);
        let reported = first();
        assert!(reported > 0.0);
        task.committed(9);
        assert_eq!(
            first(),
            reported,
            "only the first batch after the assignment"
        );

        assert!(!task.emits_anyway(3));
        task.emit_from(7);
        assert!(!task.emits_anyway(6) && task.emits_anyway(7));
    }
}
