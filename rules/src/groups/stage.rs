//! The group stage of one partition of the groups topic: what it took from each source,
//! the changes it holds until every source's clock has passed them, and their release in
//! event time into the groups ([`GroupStage::release`]; the invariants are the module's).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hookfold_proto::Message as _;
use hookfold_proto::v1::{self, IncidentEvent};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Change, GroupRecord, GroupState, MemberChange, Position};
use crate::Rules;
use crate::routes::{DEFAULT_GROUP_INTERVAL, DEFAULT_GROUP_WAIT};
use crate::state::StoredTime;

/// Where the group stage keeps the groups' states and the changes it holds until the low
/// watermark passes them (the engine: a batch's over the store; tests: [`MemoryGroups`]).
/// A group never seen, or whose incident is over, is the default. Held changes are kept one
/// per key ([`held_key`]), never in one value: a stalled partition makes them many.
pub trait GroupStates {
    type Error;
    fn group(&mut self, dedup_key: &str) -> Result<&mut GroupState, Self::Error>;
    /// Holds `change` until it is released.
    fn hold(&mut self, change: MemberChange) -> Result<(), Self::Error>;
    /// Takes out the earliest change held (by [`held_key`]), if it is at or before `low`.
    fn take_first(&mut self, low: StoredTime) -> Result<Option<MemberChange>, Self::Error>;
}

/// The prefix of the keys of held changes; then [`held_key`]'s order.
pub const HELD_PREFIX: &[u8] = b"\0hookfold/held/";

/// A held change's key: [`HELD_PREFIX`], then its time, source and position, each encoded
/// so that the keys sort as (time, source, position) do.
pub fn held_key(change: &MemberChange) -> Vec<u8> {
    let (seconds, nanos) = change.time.parts();
    let mut key = HELD_PREFIX.to_vec();
    key.extend_from_slice(&((seconds as u64) ^ (1 << 63)).to_be_bytes());
    key.extend_from_slice(&nanos.to_be_bytes());
    key.extend_from_slice(&((change.source as u32) ^ (1 << 31)).to_be_bytes());
    key.extend_from_slice(&((change.position.offset as u64) ^ (1 << 63)).to_be_bytes());
    key.extend_from_slice(&change.position.seq.to_be_bytes());
    key
}

impl MemberChange {
    /// When its source's clock stamped it.
    pub fn time(&self) -> StoredTime {
        self.time
    }

    /// The group's dedup key.
    pub fn group(&self) -> &str {
        &self.group
    }
}

/// [`GroupStates`] in memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryGroups {
    pub groups: BTreeMap<String, GroupState>,
    pub held: BTreeMap<Vec<u8>, MemberChange>,
}

impl GroupStates for MemoryGroups {
    type Error = std::convert::Infallible;
    fn group(&mut self, dedup_key: &str) -> Result<&mut GroupState, Self::Error> {
        Ok(self.groups.entry(dedup_key.to_owned()).or_default())
    }
    fn hold(&mut self, change: MemberChange) -> Result<(), Self::Error> {
        self.held.insert(held_key(&change), change);
        Ok(())
    }
    fn take_first(&mut self, low: StoredTime) -> Result<Option<MemberChange>, Self::Error> {
        if self
            .held
            .first_key_value()
            .is_some_and(|(_, c)| c.time <= low)
        {
            return Ok(self.held.pop_first().map(|(_, change)| change));
        }
        Ok(None)
    }
}

/// What a group partition knows besides its groups and held changes: each source's last
/// position and clock, how many changes it holds, and the groups' deadlines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStage {
    sources: BTreeMap<i32, SourceMark>,
    /// Changes held (in [`GroupStates`]) until the low watermark passes them.
    held: u64,
    /// `(deadline, group dedup key)`.
    deadlines: BTreeSet<(StoredTime, String)>,
    /// The groups topic's offset to read from next.
    next_offset: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SourceMark {
    position: Option<Position>,
    clock: Option<StoredTime>,
}

impl GroupStage {
    /// A stage that reads the groups topic from `offset` on (a rebuild's: what is before
    /// it is the old state's).
    pub fn starting_at(offset: i64) -> Self {
        Self {
            next_offset: Some(offset),
            ..Self::default()
        }
    }

    /// The offset of the groups topic to read from (`None`: its beginning).
    pub fn next_offset(&self) -> Option<i64> {
        self.next_offset
    }

    /// Changes taken but not released yet.
    pub fn pending(&self) -> u64 {
        self.held
    }

    /// Groups with a timer waiting.
    pub fn deadlines(&self) -> usize {
        self.deadlines.len()
    }

    /// The low watermark: every one of the `sources` input partitions has sent a clock
    /// at or past it.
    pub fn low_watermark(&self, sources: i32) -> Option<OffsetDateTime> {
        self.low(sources).map(StoredTime::to_offset_date_time)
    }

    fn low(&self, sources: i32) -> Option<StoredTime> {
        let mut low: Option<StoredTime> = None;
        for source in 0..sources {
            let clock = self.sources.get(&source).and_then(|mark| mark.clock)?;
            low = Some(low.map_or(clock, |low| low.min(clock)));
        }
        low
    }

    /// Moves past a record of the groups topic at `offset` that is not a group record.
    pub fn skip(&mut self, offset: i64) {
        if self.next_offset.is_none_or(|next| offset >= next) {
            self.next_offset = Some(offset + 1);
        }
    }

    /// Takes the groups topic's record at `offset` (records come in offset order), holding
    /// a member's change in `states`; false if it was taken before (read again after a
    /// seek) or repeats one of its source's.
    pub fn take<S: GroupStates>(
        &mut self,
        offset: i64,
        record: GroupRecord,
        states: &mut S,
    ) -> Result<bool, S::Error> {
        if self.next_offset.is_some_and(|next| offset < next) {
            return Ok(false);
        }
        self.next_offset = Some(offset + 1);
        let (source, position) = record.origin();
        let mark = self.sources.entry(source).or_default();
        if mark.position.is_some_and(|last| position <= last) {
            return Ok(false);
        }
        mark.position = Some(position);
        match record {
            GroupRecord::Member(change) => {
                states.hold(change)?;
                self.held += 1;
            }
            GroupRecord::Clock { time, .. } => {
                mark.clock = Some(mark.clock.map_or(time, |clock| clock.max(time)));
            }
        }
        Ok(true)
    }

    /// Applies every change and fires every timer up to the low watermark, in time order;
    /// returns the groups' incident events.
    pub fn release<S: GroupStates>(
        &mut self,
        sources: i32,
        states: &mut S,
        rules: &Rules,
    ) -> Result<Vec<IncidentEvent>, S::Error> {
        let mut out = Vec::new();
        let Some(low) = self.low(sources) else {
            return Ok(out);
        };
        loop {
            // A deadline fires after the changes before it and before those of its own time.
            let due = self.deadlines.first().map(|d| d.0).filter(|t| *t <= low);
            let bound = due.map_or(low, StoredTime::just_before);
            let Some(change) = states.take_first(bound)? else {
                let Some((at, key)) = due.and_then(|_| self.deadlines.pop_first()) else {
                    break;
                };
                let state = states.group(&key)?;
                state.fire(&key, at, &mut out);
                if let Some(next) = state.next_due() {
                    self.deadlines.insert((next, key));
                }
                continue;
            };
            self.held = self.held.saturating_sub(1);
            let state = states.group(&change.group)?;
            let before = state.next_due();
            match &change.what {
                Change::Incident(bytes) => {
                    // Only this crate's stage 1 writes these; one that does not decode is
                    // dropped rather than stop the partition.
                    let Ok(event) = IncidentEvent::decode(bytes.as_slice()) else {
                        continue;
                    };
                    let timing = Timing::of(rules, &event.route);
                    state.apply(&change.group, change.time, &event, rules, timing, &mut out);
                }
                Change::Presence(presence) => {
                    let timing = Timing::of(rules, &presence.route);
                    state.presence(&change.group, change.time, presence, timing, &mut out);
                }
            }
            if state.next_due() != before {
                if let Some(before) = before {
                    self.deadlines.remove(&(before, change.group.clone()));
                }
                if let Some(after) = state.next_due() {
                    self.deadlines.insert((after, change.group));
                }
            }
        }
        Ok(out)
    }
}

/// A route's `group_wait` and `group_interval` (the defaults for a route no longer
/// configured: its open groups still end).
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub(super) wait: Duration,
    pub(super) interval: Duration,
    /// The pool's minimum (none: the route is no pool, or no longer configured).
    pub(super) min_connected: Option<u32>,
    /// A pool incident's severity: the route's agents'.
    pub(super) pool_severity: i32,
}

impl Timing {
    fn of(rules: &Rules, route: &str) -> Self {
        match rules.routes.iter().find(|r| r.name == route) {
            Some(route) => Self {
                wait: route.group_wait(),
                interval: route.group_interval(),
                min_connected: route.pool(),
                pool_severity: v1::Severity::from(route.agents(&rules.agents).severity) as i32,
            },
            None => Self {
                wait: DEFAULT_GROUP_WAIT,
                interval: DEFAULT_GROUP_INTERVAL,
                min_connected: None,
                pool_severity: v1::Severity::from(rules.agents.severity) as i32,
            },
        }
    }
}
