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
//! A pool (`min_connected`) takes the agents' presence the same way ([`presence_record`]).
//! Files: `stage` (the stage and what it holds), `group` (a group's state and events),
//! `pool` (a pool's count and incident).
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
//! - a change held for the watermark is in memory only, and its offset in the stage: a
//!   process that takes the partition on reads it again from the groups topic
//!   ([`GroupStage::replay_from`]), and releases nothing until every one is back;
//! - a group's incident id comes from its dedup key and the webhook of the member that
//!   started it; every event of it is attributed to a member's webhook (its `cause`).

mod group;
mod pool;
mod stage;

use std::collections::BTreeMap;

use hookfold_events::{AgentAction, EventBody, WebhookEvent, entity_key};
use hookfold_proto::Message as _;
use hookfold_proto::v1::IncidentEvent;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::routes::Route;
use crate::state::{KeyState, StoredTime};
use crate::{Cause, Rules};
pub use group::GroupState;
use group::MemberCause;
pub use stage::{GroupStage, GroupStates, HeldChanges, MemoryGroups};

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
    what: Change,
}

/// What changed for a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Change {
    /// A member's incident event, protobuf.
    Incident(#[serde(with = "blob")] Vec<u8>),
    /// An agent of a pool connected or went away.
    Presence(Box<Presence>),
}

/// An agent of a pool (`min_connected`) connected or went away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Presence {
    agent: String,
    connected: bool,
    route: String,
    /// The route's labels and the group's values.
    labels: BTreeMap<String, String>,
    cause: MemberCause,
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
    Some(group_key(route, |field| {
        event.labels.get(field).map(String::as_str)
    }))
}

/// The dedup key of `route`'s group whose `group_by` fields have the values `value` gives
/// (a field without one groups as `""`).
pub fn group_key<'v>(route: &Route, value: impl Fn(&str) -> Option<&'v str>) -> String {
    let values: Vec<&str> = route
        .group_by
        .iter()
        .map(|field| value(field).unwrap_or_default())
        .collect();
    group_dedup_key(&route.name, &values)
}

/// A pool's incident's dedup key: its group's, then `/pool`.
pub fn pool_dedup_key(group: &str) -> String {
    format!("{group}/pool")
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
    // Most records give no incident: then the routes are not looked at.
    if events.is_empty() || !rules.groups() {
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
        what: Change::Incident(event.encode_to_vec()),
    })
}

/// Stage 1, for pools (`min_connected`): the presence record of the agent webhook `event`
/// of input partition `source` (folded into `state`, under `cause`) if its agent is of a
/// pool and it connects (`agent.connected`) or goes (`lost`, `disconnected`, `stopped`);
/// stamped with the partition's clock `now`. A superseded instance's news is none; the
/// caller leaves out a repeated delivery (`KeyState::has_seen` before the fold).
pub fn presence_record(
    event: &WebhookEvent,
    state: &KeyState,
    rules: &Rules,
    cause: &Cause,
    source: i32,
    position: Position,
    now: OffsetDateTime,
) -> Option<GroupRecord> {
    let EventBody::Agent(agent_event) = &event.body else {
        return None;
    };
    let agent = &agent_event.agent;
    let connected = match agent_event.action {
        AgentAction::Connected => true,
        AgentAction::Lost | AgentAction::Disconnected | AgentAction::Stopped => false,
        AgentAction::Stopping | AgentAction::Blocked => return None,
    };
    let subject = crate::routes::agent_subject(&event.source_id, agent);
    let route = rules
        .route(&subject)
        .filter(|route| route.pool().is_some())?;
    let values = route.group_values(&subject)?;
    let routing = entity_key(
        &event.source_id,
        hookfold_events::Entity::Agent(&agent.name),
    );
    if !connected && state.agent_superseded(&routing, &agent.id) {
        return None;
    }
    let mut labels = route.labels.clone();
    labels.extend(values.clone());
    Some(GroupRecord::Member(MemberChange {
        source,
        position,
        time: StoredTime::from(now),
        group: group_key(route, |field| values.get(field).map(String::as_str)),
        what: Change::Presence(Box::new(Presence {
            agent: agent.name.clone(),
            connected,
            route: route.name.clone(),
            labels,
            cause: MemberCause {
                topic: cause.topic.clone(),
                partition: cause.partition,
                offset: cause.offset,
                ce_id: cause.ce_id.clone(),
                ce_type: event.ce_type(),
                source_id: event.source_id.clone(),
            },
        })),
    }))
}

/// Bytes stored as one blob: postcard writes a plain `Vec<u8>` one element at a time, which
/// the member records' protobuf made a measurable part of the group stage's cost.
mod blob {
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct Blob;
        impl<'de> Visitor<'de> for Blob {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
                Ok(bytes.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(bytes)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut bytes = Vec::new();
                while let Some(byte) = seq.next_element()? {
                    bytes.push(byte);
                }
                Ok(bytes)
            }
        }
        deserializer.deserialize_bytes(Blob)
    }
}
