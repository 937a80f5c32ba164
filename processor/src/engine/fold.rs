//! Folding one partition's part of a batch: each record is parsed and folded (pure
//! `hookfold_rules::fold`) into the partition's clock and its keys' states, loaded from the
//! store on first use; the incident events and table rows go out as they come, and the
//! changed states, the clock's writes and the offset the partition moves to are returned for
//! the changelog and the store.
//!
//! Invariants: a record below the store's next offset was folded already (a redelivery
//! after a seek) and is skipped; a record that is not a webhook event (bad headers, a body
//! that does not parse, a key under the reserved prefix) is counted as malformed and
//! skipped, never stops the partition.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use hookfold_events::LogRecord;
use hookfold_proto::cloudevents::CloudEventHeaders;
use hookfold_rules::{
    CLOCK_KEY, Cause, ClockWrite, KeyState, PartitionClock, RESERVED_PREFIX, Record, Rules,
    TIMER_PREFIX, TIMER_VALUE,
};
use rdkafka::message::{Headers, Message, OwnedMessage};

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
}

impl Folder<'_> {
    /// Folds `messages` (of `task`'s partition, in offset order) and produces their outputs
    /// and changelog records; `None` if every one was folded before.
    pub fn partition(
        &self,
        task: &mut PartitionTask,
        messages: Vec<OwnedMessage>,
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
        let mut expected = store.next_offset()?.unwrap_or(0);
        let mut states = BatchStates {
            store,
            partition,
            states: HashMap::new(),
        };
        let mut next_offset = None;
        for message in messages {
            if message.offset() < expected {
                continue; // already folded (a redelivery after a seek)
            }
            expected = message.offset() + 1;
            next_offset = Some(expected);
            let emit = self.emit || task.emits_anyway(message.offset());
            self.record(partition, &message, &mut clock, &mut states, emit)?;
        }
        let changes = next_offset.map(|next_offset| {
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
            (changes, next_offset)
        });
        // Kept for the next batch now (unchanged if nothing new was folded, and it must
        // stay known, or the partition would get no more ticks): a failed batch either
        // stops the process or (an aborted transaction) forgets it again.
        task.keep_clock(clock);
        let Some((changes, next_offset)) = changes else {
            return Ok(None);
        };
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
        let incidents = hookfold_rules::fold(clock, states, record, &cause, self.rules)?;
        let outcome = match (&parsed, incidents.is_empty()) {
            (_, false) => "incident",
            (LogRecord::Tick { .. }, true) => "tick",
            (LogRecord::Webhook(_), true) => "no_change",
        };
        self.outputs
            .metrics
            .events
            .with_label_values(&[&ce.ty, outcome])
            .inc();
        for incident in &incidents {
            if emit {
                self.outputs.incident_event(incident)?;
            }
            // The table follows the state, emitted or not: a rebuild without `--emit`
            // still leaves it as the new state says.
            self.outputs.table_row(incident)?;
        }
        Ok(())
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
