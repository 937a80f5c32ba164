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

/// Where the group stage keeps the groups' states (the engine: a batch's over the store;
/// tests: [`MemoryGroups`]). A group never seen, or whose incident is over, is the default.
pub trait GroupStates {
    type Error;
    fn group(&mut self, dedup_key: &str) -> Result<&mut GroupState, Self::Error>;
}

/// The changes a group partition holds until the low watermark passes them, in memory
/// only, in release order (time, source, position). The stage stores just their offsets:
/// a process that takes the partition on (or redoes an aborted batch) starts with none and
/// reads them again from the groups topic, from [`GroupStage::replay_from`]. So holding a
/// change costs no store write and no changelog record, and releasing it none either.
#[derive(Debug, Clone, Default)]
pub struct HeldChanges {
    by_time: BTreeMap<(StoredTime, i32, Position), (i64, MemberChange)>,
}

impl HeldChanges {
    fn insert(&mut self, offset: i64, change: MemberChange) {
        let key = (change.time, change.source, change.position);
        self.by_time.insert(key, (offset, change));
    }

    /// Takes out the earliest change held, with its offset, if it is at or before `low`.
    fn take_first(&mut self, low: StoredTime) -> Option<(i64, MemberChange)> {
        let (key, _) = self.by_time.first_key_value()?;
        if key.0 > low {
            return None;
        }
        self.by_time.pop_first().map(|(_, held)| held)
    }

    /// How many changes are held in memory.
    pub fn len(&self) -> usize {
        self.by_time.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_time.is_empty()
    }

    fn offsets(&self) -> BTreeSet<i64> {
        self.by_time.values().map(|(offset, _)| *offset).collect()
    }
}

/// [`GroupStates`] in memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryGroups {
    pub groups: BTreeMap<String, GroupState>,
}

impl GroupStates for MemoryGroups {
    type Error = std::convert::Infallible;
    fn group(&mut self, dedup_key: &str) -> Result<&mut GroupState, Self::Error> {
        Ok(self.groups.entry(dedup_key.to_owned()).or_default())
    }
}

/// A set of offsets of the groups topic, as ranges: held changes come in runs (a source's
/// batch), broken by clocks, so a stalled source makes the set long but its ranges few.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Offsets {
    /// start → end (exclusive); ranges neither overlap nor touch.
    ranges: BTreeMap<i64, i64>,
    count: u64,
}

impl Offsets {
    fn contains(&self, offset: i64) -> bool {
        self.ranges
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, end)| offset < *end)
    }

    fn insert(&mut self, offset: i64) {
        if self.contains(offset) {
            return;
        }
        self.count += 1;
        let joins_before = self
            .ranges
            .range(..offset)
            .next_back()
            .filter(|(_, end)| **end == offset)
            .map(|(start, _)| *start);
        let end = self.ranges.remove(&(offset + 1)).unwrap_or(offset + 1);
        self.ranges.insert(joins_before.unwrap_or(offset), end);
    }

    fn remove(&mut self, offset: i64) {
        let Some((&start, &end)) = self.ranges.range(..=offset).next_back() else {
            return;
        };
        if offset >= end {
            return;
        }
        self.count -= 1;
        self.ranges.remove(&start);
        if start < offset {
            self.ranges.insert(start, offset);
        }
        if offset + 1 < end {
            self.ranges.insert(offset + 1, end);
        }
    }

    fn first(&self) -> Option<i64> {
        self.ranges.keys().next().copied()
    }

    fn len(&self) -> u64 {
        self.count
    }
}

/// What a group partition knows besides its groups and held changes: each source's last
/// position and clock, the offsets of the changes it holds, and the groups' deadlines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStage {
    sources: BTreeMap<i32, SourceMark>,
    /// The offsets of the changes held (in [`HeldChanges`]) until the low watermark
    /// passes them.
    held: Offsets,
    /// Held changes that could not be read again (gone from the groups topic).
    lost: u64,
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

    /// Where to read the groups topic from when the held changes are not in memory: the
    /// first held change's offset, or the next record's (`None`: its beginning).
    pub fn replay_from(&self) -> Option<i64> {
        self.held.first().or(self.next_offset)
    }

    /// Changes taken but not released yet.
    pub fn pending(&self) -> u64 {
        self.held.len()
    }

    /// Held changes that were gone from the groups topic when they were to be read again
    /// (its retention shorter than they were held), so were never applied.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Whether every held change is in `held` (read again, after a seek back).
    fn replayed(&self, held: &HeldChanges) -> bool {
        held.len() as u64 == self.held.len()
    }

    /// The groups topic is read past `offset` (a new record): a held change not read again
    /// by now is gone from it, and forgotten.
    fn passed(&mut self, offset: i64, held: &HeldChanges) {
        if self.replayed(held) {
            return;
        }
        let in_memory = held.offsets();
        let mut missing = Vec::new();
        for (&start, &end) in &self.held.ranges {
            if start >= offset {
                break;
            }
            missing.extend((start..end.min(offset)).filter(|o| !in_memory.contains(o)));
        }
        for gone in missing {
            self.held.remove(gone);
            self.lost += 1;
        }
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
    pub fn skip(&mut self, offset: i64, held: &HeldChanges) {
        if self.next_offset.is_none_or(|next| offset >= next) {
            self.passed(offset, held);
            self.next_offset = Some(offset + 1);
        }
    }

    /// Takes the groups topic's record at `offset` (records come in offset order), holding
    /// a member's change in `held`; false if it was taken before (read again after a seek:
    /// then a change still held goes back into `held`) or repeats one of its source's.
    pub fn take(&mut self, offset: i64, record: GroupRecord, held: &mut HeldChanges) -> bool {
        if self.next_offset.is_some_and(|next| offset < next) {
            if self.held.contains(offset)
                && let GroupRecord::Member(change) = record
            {
                held.insert(offset, change);
            }
            return false;
        }
        self.passed(offset, held);
        self.next_offset = Some(offset + 1);
        let (source, position) = record.origin();
        let mark = self.sources.entry(source).or_default();
        if mark.position.is_some_and(|last| position <= last) {
            return false;
        }
        mark.position = Some(position);
        match record {
            GroupRecord::Member(change) => {
                held.insert(offset, change);
                self.held.insert(offset);
            }
            GroupRecord::Clock { time, .. } => {
                mark.clock = Some(mark.clock.map_or(time, |clock| clock.max(time)));
            }
        }
        true
    }

    /// Applies every change held and fires every timer up to the low watermark, in time
    /// order; returns the groups' incident events. Nothing is released while held changes
    /// are still to be read again (a later batch has them).
    pub fn release<S: GroupStates>(
        &mut self,
        sources: i32,
        held: &mut HeldChanges,
        states: &mut S,
        rules: &Rules,
    ) -> Result<Vec<IncidentEvent>, S::Error> {
        let mut out = Vec::new();
        let Some(low) = self.low(sources) else {
            return Ok(out);
        };
        if !self.replayed(held) {
            return Ok(out);
        }
        loop {
            // A deadline fires after the changes before it and before those of its own time.
            let due = self.deadlines.first().map(|d| d.0).filter(|t| *t <= low);
            let bound = due.map_or(low, StoredTime::just_before);
            let Some((offset, change)) = held.take_first(bound) else {
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
            self.held.remove(offset);
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

#[cfg(test)]
mod tests {
    use super::Offsets;

    #[test]
    fn offsets_join_into_ranges_and_split_when_one_in_the_middle_goes() {
        let mut set = Offsets::default();
        for offset in [3, 4, 5, 9, 7, 8] {
            set.insert(offset);
        }
        set.insert(4);
        assert_eq!(
            set.ranges.iter().map(|(s, e)| (*s, *e)).collect::<Vec<_>>(),
            [(3, 6), (7, 10)]
        );
        assert_eq!(set.len(), 6);
        set.insert(6);
        assert_eq!(set.ranges.len(), 1, "6 joins both ranges");
        set.remove(5);
        set.remove(5);
        set.remove(42);
        assert_eq!(
            set.ranges.iter().map(|(s, e)| (*s, *e)).collect::<Vec<_>>(),
            [(3, 5), (6, 10)]
        );
        assert_eq!(set.len(), 6);
        assert!(set.contains(4) && !set.contains(5) && set.contains(9) && !set.contains(10));
        for offset in [3, 4, 6, 7, 8, 9] {
            set.remove(offset);
        }
        assert_eq!((set.first(), set.len()), (None, 0));
    }
}
