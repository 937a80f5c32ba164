//! The fold step of one input partition: record + states + clock → states + clock + outputs.
//!
//! The processor's engine, `rebuild`, the benchmarks and the rules' own tests all fold
//! through [`fold`], so what they compute cannot drift apart. Per record, in this order:
//! 1. the record's `ce_time` advances the partition's [`PartitionClock`] (if later);
//! 2. every timer now due fires, earliest deadline first (ties by key), on its key's state;
//! 3. a webhook is applied to its key's state ([`crate::apply`]); a tick stops at 2;
//! 4. a timer that webhook armed already in the past (a late delivery) fires at once.
//!
//! The outputs of a fired timer are attributed to the webhook that armed it (ids, cause),
//! never to the record that moved the clock: inserting ticks anywhere, with times not ahead
//! of the webhooks that follow them, changes at most when a timer fires, not what it emits.
//! A tick ahead of a later webhook (a clock that runs fast, a webhook delayed) makes that
//! webhook late: it then meets the timers as they are at the tick's time.

use hookfold_events::WebhookEvent;
use hookfold_proto::v1::IncidentEvent;
use time::OffsetDateTime;

use crate::clock::PartitionClock;
use crate::state::{KeyState, StoredTime};
use crate::{Cause, Rules, agents, apply};

/// One record of the webhook topic, as the fold sees it.
#[derive(Debug, Clone, Copy)]
pub enum Record<'a> {
    /// A webhook, with its record key (the routing key its state is kept under).
    Webhook {
        key: &'a [u8],
        event: &'a WebhookEvent,
    },
    /// A `hookfold.tick`: only its time matters.
    Tick { time: OffsetDateTime },
}

/// Where the fold finds the states of a partition's keys (the engine: a batch's states
/// over RocksDB; tests: a map). A key never seen has `KeyState::default()`.
pub trait States {
    type Error;
    fn state(&mut self, key: &[u8]) -> Result<&mut KeyState, Self::Error>;
}

impl States for std::collections::BTreeMap<Vec<u8>, KeyState> {
    type Error = std::convert::Infallible;
    fn state(&mut self, key: &[u8]) -> Result<&mut KeyState, Self::Error> {
        Ok(self.entry(key.to_vec()).or_default())
    }
}

/// Folds one record of a partition; returns its incident events, in order. Fails only
/// when `states` does (a store that cannot be read).
pub fn fold<S: States>(
    clock: &mut PartitionClock,
    states: &mut S,
    record: Record<'_>,
    cause: &Cause,
    rules: &Rules,
) -> Result<Vec<IncidentEvent>, S::Error> {
    let time = match record {
        Record::Webhook { event, .. } => event.time,
        Record::Tick { time } => time,
    };
    let mut outputs = Vec::new();
    if clock.advance(StoredTime::from(time)) {
        fire_due(clock, states, &mut outputs)?;
    }
    if let Record::Webhook { key, event } = record {
        let state = states.state(key)?;
        let before = state.deadlines();
        let (after_state, events) = apply(std::mem::take(state), event, cause, rules);
        *state = after_state;
        outputs.extend(events);
        let after = state.deadlines();
        clock.reschedule(key, &before, &after);
        fire_due(clock, states, &mut outputs)?;
    }
    Ok(outputs)
}

/// Fires every timer at or before the watermark, one deadline at a time in deadline order
/// (ties by key): a key with two deadlines passed at once (an agent's grace, then its
/// expiry) fires the second only after the other keys' earlier ones.
fn fire_due<S: States>(
    clock: &mut PartitionClock,
    states: &mut S,
    outputs: &mut Vec<IncidentEvent>,
) -> Result<(), S::Error> {
    while let Some((at, key)) = clock.pop_due() {
        let state = states.state(&key)?;
        let before = state.deadlines();
        agents::fire(state, at, outputs);
        // `fire` leaves nothing due at `at`; the filter only keeps a broken state from
        // firing the same key forever.
        let after: Vec<StoredTime> = state
            .deadlines()
            .into_iter()
            .filter(|deadline| *deadline > at)
            .collect();
        clock.reschedule(&key, &before, &after);
    }
    Ok(())
}
