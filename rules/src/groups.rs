//! Groups: a storm as one incident (issue 25; docs/RULES.md, Groups).
//!
//! A route with `group_by` makes its entities' incidents *members* of a group instead of
//! incidents of their own. The members of one group are spread over every input partition,
//! so grouping takes two stages joined by the groups topic, keyed by group (the
//! repartition of Kafka Streams' `groupBy`):
//!
//! 1. The entity's partition folds as ever, but a member's incident event is not published:
//!    it goes to the group's partition of the groups topic as a member record
//!    ([`member_record`]). After each batch, the partition's clock goes to every group
//!    partition ([`GroupRecord::clock`]).
//! 2. The group's partition takes both into its [`GroupStage`] ([`GroupStage::take`]), and
//!    [`GroupStage::release`]s the members' changes in event-time order once every input
//!    partition's clock has passed them (the low watermark); the groups' timers
//!    (`group_wait`, `group_interval`) run on that watermark too.
//!
//! Invariants:
//! - what a group emits depends on the input partitions' logs alone, never on how their
//!   records interleave on the groups topic: a change is applied only once nothing earlier
//!   can still arrive (a source's clock never goes back, and its changes are stamped with
//!   its clock), in (time, source partition, position) order, a timer before a change of
//!   the same time;
//! - a record of the groups topic is taken at most once: a source's records carry their
//!   position in its log (input offset, then a sequence), and one not past the source's
//!   last is a repeat (a batch redone after a crash) and is dropped;
//! - a group's incident id comes from its dedup key and the webhook of the member that
//!   started it; every event of it is attributed to a member's webhook (its `cause`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hookfold_proto::Message as _;
use hookfold_proto::v1::{
    self, Entity, GroupMember, IncidentEvent, Link, ResolutionReason, Transition,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::Rules;
use crate::output::{event_id, incident_id};
use crate::routes::{DEFAULT_GROUP_INTERVAL, DEFAULT_GROUP_WAIT};
use crate::state::StoredTime;

/// The key a group partition's [`GroupStage`] is stored under, beside the states.
pub const GROUP_STAGE_KEY: &[u8] = b"\0hookfold/groups";

/// The prefix of the groups' states' keys; then the group's dedup key.
pub const GROUP_PREFIX: &[u8] = b"\0hookfold/group/";

/// Most members an event lists (`details["members"]` has the count).
pub const MAX_MEMBERS_LISTED: usize = 1000;

/// Where a record of the groups topic comes from in its source's log: the input offset of
/// the record it came from, then its place among what that record gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub offset: i64,
    pub seq: u32,
}

impl Position {
    /// The position of a clock sent after the batch whose last record is at `offset`.
    pub fn after(offset: i64) -> Self {
        Self {
            offset,
            seq: u32::MAX,
        }
    }
}

/// A record of the groups topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupRecord {
    /// A member's incident changed (CREATED, UPDATED or RESOLVED).
    Member(MemberChange),
    /// The source partition's clock: nothing it sends later is earlier than `time`.
    Clock {
        source: i32,
        position: Position,
        time: StoredTime,
    },
}

/// A member's incident event, stamped with its source partition's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberChange {
    source: i32,
    position: Position,
    time: StoredTime,
    /// The group's dedup key.
    group: String,
    /// The member's incident event, protobuf.
    event: Vec<u8>,
}

impl GroupRecord {
    pub fn clock(source: i32, position: Position, time: OffsetDateTime) -> Self {
        Self::Clock {
            source,
            position,
            time: StoredTime::from(time),
        }
    }

    /// The group a member record is of (its record key); `None` for a clock, which goes to
    /// every group partition.
    pub fn group(&self) -> Option<&str> {
        match self {
            Self::Member(change) => Some(&change.group),
            Self::Clock { .. } => None,
        }
    }

    fn origin(&self) -> (i32, Position) {
        match self {
            Self::Member(change) => (change.source, change.position),
            Self::Clock {
                source, position, ..
            } => (*source, *position),
        }
    }
}

/// The group `event` is a member of (the group's dedup key), if its route groups.
pub fn group_of(event: &IncidentEvent, rules: &Rules) -> Option<String> {
    if event.route.is_empty() {
        return None;
    }
    let route = rules.routes.iter().find(|r| r.name == event.route)?;
    if !route.groups() {
        return None;
    }
    let values: Vec<&str> = route
        .group_by
        .iter()
        .map(|field| event.labels.get(field).map_or("", String::as_str))
        .collect();
    Some(group_dedup_key(&route.name, &values))
}

/// `route/<route>/group/<value>/...`, the values in `group_by` order.
pub fn group_dedup_key(route: &str, values: &[&str]) -> String {
    format!("route/{route}/group/{}", values.join("/"))
}

/// The partition of the groups topic a group's records go to (of `partitions`).
pub fn group_partition(group: &str, partitions: i32) -> i32 {
    let digest = Sha256::digest(group.as_bytes());
    let hash = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    (hash % partitions.max(1) as u32) as i32
}

/// Stage 1: the incident events of the record at `offset` of input partition `source`,
/// split into those published as they are and the member records of grouped routes,
/// stamped with the partition's clock `now` (its watermark once the record is folded).
pub fn split_members(
    events: Vec<IncidentEvent>,
    rules: &Rules,
    source: i32,
    offset: i64,
    now: OffsetDateTime,
) -> (Vec<IncidentEvent>, Vec<GroupRecord>) {
    if !rules.groups() {
        return (events, Vec::new());
    }
    let mut published = Vec::new();
    let mut members = Vec::new();
    for event in events {
        match group_of(&event, rules) {
            Some(group) => {
                let position = Position {
                    offset,
                    seq: members.len() as u32,
                };
                members.push(member_record(&event, group, source, position, now));
            }
            None => published.push(event),
        }
    }
    (published, members)
}

/// The member record of `event` (of `group`), stamped with its source partition's clock
/// `time`.
pub fn member_record(
    event: &IncidentEvent,
    group: String,
    source: i32,
    position: Position,
    time: OffsetDateTime,
) -> GroupRecord {
    GroupRecord::Member(MemberChange {
        source,
        position,
        time: StoredTime::from(time),
        group,
        event: event.encode_to_vec(),
    })
}

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
    released: Option<StoredTime>,
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
                state.fire(at, &mut out);
                if let Some(next) = state.due {
                    self.deadlines.insert((next, key));
                }
                continue;
            };
            self.held = self.held.saturating_sub(1);
            // Only this crate's stage 1 writes these; one that does not decode is
            // dropped rather than stop the partition.
            let Ok(event) = IncidentEvent::decode(change.event.as_slice()) else {
                continue;
            };
            let timing = Timing::of(rules, &event.route);
            let state = states.group(&change.group)?;
            let before = state.due;
            state.apply(&change.group, change.time, &event, rules, timing, &mut out);
            if state.due != before {
                if let Some(before) = before {
                    self.deadlines.remove(&(before, change.group.clone()));
                }
                if let Some(after) = state.due {
                    self.deadlines.insert((after, change.group));
                }
            }
        }
        self.released = Some(low);
        Ok(out)
    }
}

/// A route's `group_wait` and `group_interval` (the defaults for a route no longer
/// configured: its open groups still end).
#[derive(Debug, Clone, Copy)]
struct Timing {
    wait: Duration,
    interval: Duration,
}

impl Timing {
    fn of(rules: &Rules, route: &str) -> Self {
        match rules.routes.iter().find(|r| r.name == route) {
            Some(route) => Self {
                wait: route.group_wait(),
                interval: route.group_interval(),
            },
            None => Self {
                wait: DEFAULT_GROUP_WAIT,
                interval: DEFAULT_GROUP_INTERVAL,
            },
        }
    }
}

/// One group: its members, and its incident once open. `Default`: nothing bad in it (the
/// engine deletes such a state).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    route: String,
    /// The route's labels and the group's values.
    labels: BTreeMap<String, String>,
    /// The `group_by` fields with their values, in `group_by` order.
    values: Vec<(String, String)>,
    /// By the member's dedup key.
    members: BTreeMap<String, Member>,
    /// The change that started the group's current episode (its incident's id and CREATED
    /// are attributed to it).
    opened_by: Option<MemberCause>,
    /// The latest change (an UPDATED is attributed to it).
    last: Option<MemberCause>,
    open: Option<OpenGroup>,
    /// When the group opens (`group_wait`) or is next UPDATED (`group_interval`).
    due: Option<StoredTime>,
    /// Members joined or recovered since the last event.
    changed: bool,
    /// Most members the episode had at once (a group of one reads as its member).
    peak: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Member {
    summary: String,
    severity: i32,
    kind: i32,
    entity_id: String,
    entity_name: String,
    since: StoredTime,
    links: Vec<(String, String)>,
    details: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MemberCause {
    topic: String,
    partition: i32,
    offset: i64,
    ce_id: String,
    ce_type: String,
    source_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OpenGroup {
    incident_id: String,
    created_at: StoredTime,
    sequence: u32,
    last_sent: StoredTime,
    severity: i32,
}

impl MemberCause {
    fn of(event: &IncidentEvent) -> Self {
        let cause = event.cause.clone().unwrap_or_default();
        Self {
            topic: cause.topic,
            partition: cause.partition,
            offset: cause.offset,
            ce_id: cause.ce_id,
            ce_type: cause.ce_type,
            source_id: event.source_id.clone(),
        }
    }
}

impl Member {
    fn of(event: &IncidentEvent, since: StoredTime) -> Self {
        let entity = event.entity.clone().unwrap_or_default();
        Self {
            summary: event.summary.clone(),
            severity: event.severity,
            kind: entity.kind,
            entity_id: entity.id,
            entity_name: entity.name,
            since,
            links: event
                .links
                .iter()
                .map(|l| (l.rel.clone(), l.url.clone()))
                .collect(),
            details: event.details.clone().into_iter().collect(),
        }
    }

    fn entity(&self) -> Entity {
        Entity {
            kind: self.kind,
            id: self.entity_id.clone(),
            name: self.entity_name.clone(),
        }
    }

    fn links(&self) -> Vec<Link> {
        self.links
            .iter()
            .map(|(rel, url)| Link {
                rel: rel.clone(),
                url: url.clone(),
            })
            .collect()
    }
}

impl GroupState {
    /// Nothing bad in the group and nothing sent: the state can go.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the group's incident is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The group's dedup key and incident id, while its incident is open.
    pub fn open_incident(&self) -> Option<&str> {
        self.open.as_ref().map(|open| open.incident_id.as_str())
    }

    fn apply(
        &mut self,
        dedup_key: &str,
        time: StoredTime,
        event: &IncidentEvent,
        rules: &Rules,
        timing: Timing,
        out: &mut Vec<IncidentEvent>,
    ) {
        let cause = MemberCause::of(event);
        let transition = Transition::try_from(event.transition).unwrap_or(Transition::Unspecified);
        match transition {
            Transition::Created | Transition::Updated => {
                if self.members.is_empty() && self.open.is_none() {
                    self.start(event, rules);
                }
                let since = self.members.get(&event.dedup_key).map_or_else(
                    || event.created_at.as_ref().map_or(time, stored_time),
                    |member| member.since,
                );
                let mut member = Member::of(event, since);
                let alone = self.members.keys().all(|key| *key == event.dedup_key);
                if !alone {
                    // Only a group of one shows a member's details: a big group's state
                    // stays small (it is one changelog record).
                    member.details.clear();
                }
                self.members.insert(event.dedup_key.clone(), member);
                self.peak = self.peak.max(self.members.len());
                if self.opened_by.is_none() {
                    self.opened_by = Some(cause.clone());
                    self.due = Some(time.plus(timing.wait));
                } else {
                    self.changed_at(time, timing);
                }
                self.last = Some(cause);
            }
            Transition::Resolved => {
                if self.members.remove(&event.dedup_key).is_none() {
                    return; // a member from before the route grouped, or a repeat
                }
                self.last = Some(cause.clone());
                if !self.members.is_empty() {
                    self.changed_at(time, timing);
                    return;
                }
                if let Some(mut open) = self.open.take() {
                    open.sequence = open.sequence.saturating_add(1);
                    let reason = ResolutionReason::try_from(event.resolution_reason)
                        .unwrap_or(ResolutionReason::Unspecified);
                    out.push(self.event(
                        dedup_key,
                        &open,
                        Transition::Resolved,
                        time,
                        &cause,
                        Some((event, reason)),
                    ));
                }
                // Over (or over before it opened: nothing was sent).
                *self = Self::default();
            }
            Transition::Unspecified => {}
        }
    }

    /// A new episode: the route's labels and the group's values, as the member has them.
    fn start(&mut self, event: &IncidentEvent, rules: &Rules) {
        self.route = event.route.clone();
        self.labels = event.labels.clone().into_iter().collect();
        let group_by = rules
            .routes
            .iter()
            .find(|r| r.name == event.route)
            .map(|r| r.group_by.clone())
            .unwrap_or_default();
        self.values = group_by
            .into_iter()
            .map(|field| {
                let value = event.labels.get(&field).cloned().unwrap_or_default();
                (field, value)
            })
            .collect();
    }

    /// A member joined or recovered while the group is open: UPDATED at the next
    /// `group_interval` since the last event.
    fn changed_at(&mut self, time: StoredTime, timing: Timing) {
        let Some(open) = &self.open else {
            return; // still waiting: the CREATED lists it
        };
        self.changed = true;
        if self.due.is_none() {
            self.due = Some(time.max(open.last_sent.plus(timing.interval)));
        }
    }

    /// The group's timer at `at`: it opens, or sends what changed.
    fn fire(&mut self, at: StoredTime, out: &mut Vec<IncidentEvent>) {
        self.due = None;
        let Some(opened_by) = self.opened_by.clone() else {
            return;
        };
        if self.members.is_empty() {
            return;
        }
        let severity = self.members.values().map(|m| m.severity).max().unwrap_or(0);
        let dedup_key = self.dedup_key();
        match self.open.take() {
            None => {
                let open = OpenGroup {
                    incident_id: incident_id(&dedup_key, &opened_by.ce_id),
                    created_at: at,
                    sequence: 0,
                    last_sent: at,
                    severity,
                };
                out.push(self.event(&dedup_key, &open, Transition::Created, at, &opened_by, None));
                self.open = Some(open);
            }
            Some(mut open) => {
                if self.changed {
                    open.sequence = open.sequence.saturating_add(1);
                    open.last_sent = at;
                    open.severity = open.severity.max(severity);
                    let cause = self.last.clone().unwrap_or(opened_by);
                    out.push(self.event(&dedup_key, &open, Transition::Updated, at, &cause, None));
                }
                self.open = Some(open);
            }
        }
        self.changed = false;
    }

    fn dedup_key(&self) -> String {
        let values: Vec<&str> = self.values.iter().map(|(_, v)| v.as_str()).collect();
        group_dedup_key(&self.route, &values)
    }

    /// `queue=spot-a, team=payments`.
    fn values_text(&self) -> String {
        let values: Vec<String> = self
            .values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        values.join(", ")
    }

    fn event(
        &self,
        dedup_key: &str,
        open: &OpenGroup,
        transition: Transition,
        at: StoredTime,
        cause: &MemberCause,
        resolved: Option<(&IncidentEvent, ResolutionReason)>,
    ) -> IncidentEvent {
        let mut members: Vec<(&String, &Member)> = self.members.iter().collect();
        members.sort_by(|a, b| (a.1.since, a.0).cmp(&(b.1.since, b.0)));
        let values = self.values_text();
        let mut details: BTreeMap<String, String> = BTreeMap::new();
        let (summary, entity, links) = match (resolved, members.as_slice()) {
            (Some((last, _)), _) if self.peak <= 1 => {
                details.extend(last.details.clone());
                (
                    last.summary.clone(),
                    last.entity.clone(),
                    last.links.clone(),
                )
            }
            (Some((last, _)), _) => (
                format!(
                    "All {} incidents of {} ({values}) are resolved; the last: {}",
                    self.peak, self.route, last.summary
                ),
                Some(self.group_entity(last.entity.as_ref().map_or(0, |e| e.kind), &values)),
                Vec::new(),
            ),
            (None, [(_, only)]) => {
                details.extend(only.details.clone());
                (only.summary.clone(), Some(only.entity()), only.links())
            }
            (None, [(_, first), ..]) => (
                format!(
                    "{} incidents of {} ({values}): {}, and {} more",
                    members.len(),
                    self.route,
                    first.summary,
                    members.len() - 1
                ),
                Some(self.group_entity(first.kind, &values)),
                first.links(),
            ),
            (None, []) => (String::new(), None, Vec::new()),
        };
        details.insert("members".to_owned(), members.len().to_string());
        details.insert("group".to_owned(), values);
        let reason = resolved.map_or(ResolutionReason::Unspecified, |(_, reason)| reason);
        IncidentEvent {
            event_id: event_id(
                dedup_key,
                &open.incident_id,
                transition,
                open.sequence,
                &cause.ce_id,
            ),
            incident_id: open.incident_id.clone(),
            dedup_key: dedup_key.to_owned(),
            transition: transition as i32,
            sequence: open.sequence,
            severity: open.severity,
            summary,
            source_id: cause.source_id.clone(),
            entity,
            occurred_at: Some(at.to_timestamp()),
            created_at: Some(open.created_at.to_timestamp()),
            links,
            details: details.into_iter().collect(),
            resolution_reason: reason as i32,
            cause: Some(v1::Cause {
                topic: cause.topic.clone(),
                partition: cause.partition,
                offset: cause.offset,
                ce_id: cause.ce_id.clone(),
                ce_type: cause.ce_type.clone(),
            }),
            labels: self.labels.clone().into_iter().collect(),
            route: self.route.clone(),
            members: members
                .iter()
                .take(MAX_MEMBERS_LISTED)
                .map(|(key, member)| GroupMember {
                    dedup_key: (*key).clone(),
                    summary: member.summary.clone(),
                    severity: member.severity,
                    entity: Some(member.entity()),
                    since: Some(member.since.to_timestamp()),
                    links: member.links(),
                })
                .collect(),
        }
    }

    fn group_entity(&self, kind: i32, values: &str) -> Entity {
        Entity {
            kind,
            id: self.dedup_key(),
            name: values.to_owned(),
        }
    }
}

fn stored_time(ts: &hookfold_proto::prost_types::Timestamp) -> StoredTime {
    hookfold_proto::timestamp::to_offset_date_time(ts)
        .map(StoredTime::from)
        .unwrap_or_default()
}
