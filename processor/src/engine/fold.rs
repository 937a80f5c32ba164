//! Folding one partition's part of a batch: each record is parsed and folded (pure
//! `hookfold_rules::fold`) into the partition's clock and its keys' states, loaded from the
//! store on first use; the incident events and table rows go out as they come, and the
//! changed states, the clock's writes and the offset the partition moves to are returned for
//! the changelog and the store.
//!
//! With grouped routes (`hookfold_rules::groups`) a partition's part of a batch has two
//! stages: its webhook records, whose members' incident events go to the groups topic
//! instead of out (and, once folded, the partition's clock to every group partition); and
//! its records of the groups topic (the same partition number), taken into the group stage
//! and released by the low watermark into the groups' incident events. Both stages' states
//! are the partition's store's, so they commit together.
//!
//! Invariants: a record below the store's next offset was folded already (a redelivery
//! after a seek) and is skipped, and so is a groups-topic record below the group stage's
//! (but a change it still holds goes back into its memory: they are kept nowhere else);
//! a record that is not a webhook event (bad headers, a body that does not parse, a key
//! under the reserved prefix) or not a group record is counted as malformed and skipped,
//! never stops the partition.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use hookfold_events::LogRecord;
use hookfold_proto::cloudevents::CloudEventHeaders;
use hookfold_proto::v1::IncidentEvent;
use hookfold_rules::groups::{GROUP_PREFIX, GROUP_STAGE_KEY, GroupStage, GroupState, HeldChanges};
use hookfold_rules::{
    CLOCK_KEY, Cause, ClockWrite, GroupRecord, KeyState, PartitionClock, Position, RESERVED_PREFIX,
    Record, Rules, TIMER_PREFIX, TIMER_VALUE,
};
use rdkafka::message::{Headers, Message, OwnedMessage};
use time::OffsetDateTime;

use super::EngineError;
use super::outputs::Outputs;
use crate::codec;
use crate::store::PartitionStore;
use crate::task::PartitionTask;

/// One partition's part of a folded batch: its encoded changes (`None`: a deletion) and
/// the input offset it moves to.
pub struct PartitionBatch {
    pub partition: i32,
    pub changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub next_offset: i64,
}

/// What a fold needs besides the task.
pub struct Folder<'a> {
    pub rules: &'a Rules,
    pub outputs: Outputs<'a>,
    /// Whether incident events are produced (a rebuild may recompute state only).
    pub emit: bool,
    /// The input partitions (every group partition waits for all their clocks).
    pub sources: i32,
    /// Whether some route groups (`Rules::groups`), and whether some is a pool
    /// (`Rules::pools`): asked once per batch, not per record.
    pub grouped: bool,
    pub pooled: bool,
}

impl Folder<'_> {
    /// Folds `webhooks` (of `task`'s partition, in offset order), then takes `groups` (its
    /// records of the groups topic, in offset order) into the group stage, and produces
    /// their outputs and changelog records; `None` if every one was folded before.
    pub fn partition(
        &self,
        task: &mut PartitionTask,
        webhooks: Vec<OwnedMessage>,
        groups: Vec<OwnedMessage>,
    ) -> Result<Option<PartitionBatch>, EngineError> {
        let partition = task.partition();
        let clock = task.take_clock();
        let Some(store) = task.store() else {
            return Ok(None); // not active: the consumer reads these again
        };
        let mut clock = match clock {
            Some(clock) => clock,
            None => stored_clock(partition, store)?,
        };
        let stored_next = store.next_offset()?;
        let mut expected = stored_next.unwrap_or(0);
        let mut states = BatchStates {
            store,
            partition,
            states: HashMap::new(),
        };
        let mut next_offset = None;
        for message in webhooks {
            if message.offset() < expected {
                continue; // already folded (a redelivery after a seek)
            }
            expected = message.offset() + 1;
            next_offset = Some(expected);
            let emit = self.emit || task.emits_anyway(message.offset());
            self.record(partition, &message, &mut clock, &mut states, emit)?;
        }
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
                ClockWrite::Timer { key, present } => (key, present.then(|| TIMER_VALUE.to_vec())),
            });
        }
        if let Some(next) = next_offset {
            self.forward_clock(task, &clock, next - 1)?;
        }
        // Kept for the next batch now (unchanged if nothing new was folded, and it must
        // stay known, or the partition would get no more ticks): a failed batch either
        // stops the process or (an aborted transaction) forgets it again.
        task.keep_clock(clock);
        let mut held = task.take_held();
        let Some(store) = task.store() else {
            return Ok(None);
        };
        let stage = self.group_stage(partition, store, groups, &mut held, &mut changes);
        // Kept like the clock: an aborted batch forgets them, and they are read again.
        task.keep_held(held);
        let stage = stage?;
        if let Some(stage) = &stage {
            task.metrics().group_stage(stage, self.sources);
        }
        if next_offset.is_none() && stage.is_none() {
            return Ok(None);
        }
        // A batch of group records alone leaves the input where it was.
        let next_offset = next_offset.or(stored_next).unwrap_or(0);
        for (key, value) in &changes {
            self.outputs
                .state(partition, key, value.as_deref(), next_offset)?;
        }
        Ok(Some(PartitionBatch {
            partition,
            changes,
            next_offset,
        }))
    }

    /// Sends the partition's clock, as of its record at `last_offset`, to every group
    /// partition, if it moved since it was last sent (and some route groups).
    fn forward_clock(
        &self,
        task: &mut PartitionTask,
        clock: &PartitionClock,
        last_offset: i64,
    ) -> Result<(), EngineError> {
        if !self.grouped {
            return Ok(());
        }
        let Some(now) = clock.watermark() else {
            return Ok(());
        };
        if !task.clock_moved_since_forwarded(now) {
            return Ok(());
        }
        let record = GroupRecord::clock(task.partition(), Position::after(last_offset), now);
        for group_partition in 0..self.sources {
            self.outputs.group_record(&record, group_partition)?;
        }
        task.forwarded(now);
        Ok(())
    }

    /// The group stage of the partition: takes its groups-topic records (the changes it
    /// holds into `held`), releases what the low watermark allows, produces the groups'
    /// incident events and adds the stage's and the groups' changed states to `changes`.
    /// Returns the stage, if a new record was taken.
    fn group_stage(
        &self,
        partition: i32,
        store: &PartitionStore,
        records: Vec<OwnedMessage>,
        held: &mut HeldChanges,
        changes: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<Option<GroupStage>, EngineError> {
        if records.is_empty() {
            return Ok(None);
        }
        let mut stage: GroupStage = match store.get(GROUP_STAGE_KEY)? {
            None => GroupStage::default(),
            Some(bytes) => decode_stored(partition, GROUP_STAGE_KEY, &bytes)?,
        };
        let (before, lost_before) = (stage.next_offset(), stage.lost());
        // After a restart or an aborted batch: the held changes are to be read again.
        let reading_again = held.is_empty() && stage.pending() > 0;
        let mut groups = BatchGroups {
            store,
            partition,
            groups: HashMap::new(),
        };
        for message in records {
            let offset = message.offset();
            let replay = stage.next_offset().is_some_and(|next| offset < next);
            if replay && stage.pending() as usize == held.len() {
                continue; // read again after a seek, and nothing of it is still held
            }
            let payload = message.payload().unwrap_or_default();
            match codec::decode_value::<GroupRecord>(payload) {
                Ok(record) => {
                    stage.take(offset, record, held);
                }
                Err(e) => {
                    stage.skip(offset, held);
                    if !replay {
                        self.malformed(partition, &message, "hookfold.group", &e.to_string());
                    }
                }
            }
        }
        if reading_again && !held.is_empty() {
            tracing::info!(
                partition,
                held = held.len(),
                of = stage.pending(),
                replay_from = ?stage.replay_from(),
                "held group changes read again from the groups topic"
            );
        }
        if stage.next_offset() == before {
            return Ok(None);
        }
        if stage.lost() > lost_before {
            // Retention of the groups topic shorter than a change was held: its group never
            // sees it (docs/OPERATIONS.md, Groups).
            tracing::error!(
                partition,
                lost = stage.lost() - lost_before,
                replay_from = ?before,
                "held group changes were gone from the groups topic when read again"
            );
        }
        let incidents = stage.release(self.sources, held, &mut groups, self.rules)?;
        self.publish(&incidents, self.emit)?;
        for (key, group) in groups.groups {
            let key = group_key(&key);
            changes.push(if group.is_empty() {
                (key, None)
            } else {
                (key, Some(codec::encode_value(&group)))
            });
        }
        changes.push((GROUP_STAGE_KEY.to_vec(), Some(codec::encode_value(&stage))));
        Ok(Some(stage))
    }

    /// Incident events out (if `emit`) and into the open-incident table.
    fn publish(&self, incidents: &[IncidentEvent], emit: bool) -> Result<(), EngineError> {
        for incident in incidents {
            if emit {
                self.outputs.incident_event(incident)?;
            }
            // The table follows the state, emitted or not: a rebuild without `--emit`
            // still leaves it as the new state says.
            self.outputs.table_row(incident)?;
        }
        Ok(())
    }

    /// Folds one record into the partition's clock and its keys' states and produces its
    /// incident events (if `emit`) and table rows.
    fn record(
        &self,
        partition: i32,
        message: &OwnedMessage,
        clock: &mut PartitionClock,
        states: &mut BatchStates<'_>,
        emit: bool,
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
            topic: self.outputs.topics.input.clone(),
            partition,
            offset: message.offset(),
            ce_id: ce.id.clone(),
        };
        let record = match &parsed {
            LogRecord::Webhook(event) => Record::Webhook { key, event },
            LogRecord::Tick { time, .. } => Record::Tick { time: *time },
        };
        // A repeated delivery changes no state, and no pool's presence either.
        let repeat = match &parsed {
            LogRecord::Webhook(event) if self.pooled && self.rules.dedup_window > 0 => {
                hookfold_rules::States::state(states, key)?.has_seen(&event.id)
            }
            _ => false,
        };
        let incidents = hookfold_rules::fold(clock, states, record, &cause, self.rules)?;
        let now = clock.watermark().unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let (incidents, members) = hookfold_rules::groups::split_members(
            incidents,
            self.rules,
            partition,
            message.offset(),
            now,
        );
        let presence = match (&parsed, self.pooled && !repeat) {
            (LogRecord::Webhook(event), true) => hookfold_rules::groups::presence_record(
                event,
                hookfold_rules::States::state(states, key)?,
                self.rules,
                &cause,
                partition,
                Position {
                    offset: message.offset(),
                    seq: members.len() as u32,
                },
                now,
            ),
            _ => None,
        };
        for member in members.iter().chain(&presence) {
            let group = member.group().unwrap_or_default();
            let to = hookfold_rules::groups::group_partition(group, self.sources);
            self.outputs.group_record(member, to)?;
        }
        let outcome = match (&parsed, incidents.is_empty() && members.is_empty()) {
            (_, false) => "incident",
            (LogRecord::Tick { .. }, true) => "tick",
            (LogRecord::Webhook(_), true) => "no_change",
        };
        self.outputs
            .metrics
            .events
            .with_label_values(&[&ce.ty, outcome])
            .inc();
        self.publish(&incidents, emit)
    }

    fn malformed(&self, partition: i32, message: &OwnedMessage, ty: &str, why: &str) {
        self.outputs
            .metrics
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

/// The partition's clock as its store holds it: the watermark, and every timer key.
pub fn stored_clock(partition: i32, store: &PartitionStore) -> Result<PartitionClock, EngineError> {
    let watermark = match store.get(CLOCK_KEY)? {
        None => None,
        Some(bytes) => Some(
            codec::decode_clock(&bytes).map_err(|source| EngineError::State {
                partition,
                key: String::from_utf8_lossy(CLOCK_KEY).into_owned(),
                source,
            })?,
        ),
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

/// A stored value of the group stage, decoded.
fn decode_stored<T: serde::de::DeserializeOwned>(
    partition: i32,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, EngineError> {
    codec::decode_value(bytes).map_err(|source| EngineError::State {
        partition,
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

/// The store key of a group's state.
pub fn group_key(dedup_key: &str) -> Vec<u8> {
    let mut key = GROUP_PREFIX.to_vec();
    key.extend_from_slice(dedup_key.as_bytes());
    key
}

/// A batch's groups of one partition, loaded from the store on first use.
struct BatchGroups<'s> {
    store: &'s PartitionStore,
    partition: i32,
    groups: HashMap<String, GroupState>,
}

impl hookfold_rules::GroupStates for BatchGroups<'_> {
    type Error = EngineError;

    fn group(&mut self, dedup_key: &str) -> Result<&mut GroupState, EngineError> {
        match self.groups.entry(dedup_key.to_owned()) {
            Entry::Occupied(known) => Ok(known.into_mut()),
            Entry::Vacant(slot) => {
                let key = group_key(dedup_key);
                let state = match self.store.get(&key)? {
                    None => GroupState::default(),
                    Some(bytes) => decode_stored(self.partition, &key, &bytes)?,
                };
                Ok(slot.insert(state))
            }
        }
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
