//! One group's state: its members, the episode's first and latest change, and its
//! incident once open; the group's events (CREATED listing the members, UPDATED at most
//! every `group_interval`, RESOLVED by the last member).

use std::collections::BTreeMap;

use hookfold_proto::v1::{
    self, Entity, GroupMember, IncidentEvent, Link, ResolutionReason, Transition,
};
use serde::{Deserialize, Serialize};

use super::pool::PoolState;
use super::stage::Timing;
use super::{MAX_MEMBERS_LISTED, group_dedup_key, pool_dedup_key};
use crate::Rules;
use crate::output::{event_id, incident_id};
use crate::state::StoredTime;

/// One group: its members, and its incident once open. `Default`: nothing bad in it (the
/// engine deletes such a state).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub(super) route: String,
    /// The route's labels and the group's values.
    pub(super) labels: BTreeMap<String, String>,
    /// The `group_by` fields with their values, in `group_by` order.
    pub(super) values: Vec<(String, String)>,
    /// By the member's dedup key.
    pub(super) members: BTreeMap<String, Member>,
    /// The change that started the group's current episode (its incident's id and CREATED
    /// are attributed to it).
    pub(super) opened_by: Option<MemberCause>,
    /// The latest change (an UPDATED is attributed to it).
    pub(super) last: Option<MemberCause>,
    pub(super) open: Option<OpenGroup>,
    /// When the group opens (`group_wait`) or is next UPDATED (`group_interval`).
    pub(super) due: Option<StoredTime>,
    /// Members joined or recovered since the last event.
    pub(super) changed: bool,
    /// Most members the episode had at once (a group of one reads as its member).
    pub(super) peak: usize,
    /// A pool's agents (`min_connected`), and its incident.
    pub(super) pool: PoolState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Member {
    pub(super) summary: String,
    pub(super) severity: i32,
    pub(super) kind: i32,
    pub(super) entity_id: String,
    pub(super) entity_name: String,
    pub(super) since: StoredTime,
    pub(super) links: Vec<(String, String)>,
    pub(super) details: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MemberCause {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) ce_id: String,
    pub(super) ce_type: String,
    pub(super) source_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct OpenGroup {
    pub(super) incident_id: String,
    pub(super) created_at: StoredTime,
    pub(super) sequence: u32,
    pub(super) last_sent: StoredTime,
    pub(super) severity: i32,
}

/// What every event of a group (or pool) takes from the moment it is made: the incident, the
/// transition, when, and the member's webhook it is attributed to.
pub(super) struct Emit<'a> {
    pub(super) open: &'a OpenGroup,
    pub(super) transition: Transition,
    pub(super) at: StoredTime,
    pub(super) cause: &'a MemberCause,
}

impl MemberCause {
    /// As an event's `cause`.
    pub(super) fn to_proto(&self) -> v1::Cause {
        v1::Cause {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            ce_id: self.ce_id.clone(),
            ce_type: self.ce_type.clone(),
        }
    }

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

    /// The dedup keys of its incidents open now (the group's, the pool's).
    pub fn open_dedup_keys(&self, dedup_key: &str) -> Vec<String> {
        let mut open = Vec::new();
        if self.open.is_some() {
            open.push(dedup_key.to_owned());
        }
        if self.pool.open.is_some() {
            open.push(pool_dedup_key(dedup_key));
        }
        open
    }

    /// The group's next deadline: its own or its pool's.
    pub(super) fn next_due(&self) -> Option<StoredTime> {
        match (self.due, self.pool.due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn apply(
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
                    let emit = Emit {
                        open: &open,
                        transition: Transition::Resolved,
                        at: time,
                        cause: &cause,
                    };
                    out.push(self.event(dedup_key, emit, Some((event, reason))));
                }
                // Over (or over before it opened: nothing was sent); a pool goes on.
                let pool = std::mem::take(&mut self.pool);
                let (route, labels) = (
                    std::mem::take(&mut self.route),
                    std::mem::take(&mut self.labels),
                );
                *self = Self::default();
                if pool != PoolState::default() {
                    (self.pool, self.route, self.labels) = (pool, route, labels);
                }
            }
            Transition::Unspecified => {}
        }
    }

    /// A new episode: the route's labels and the group's values, as the member has them.
    pub(super) fn start(&mut self, event: &IncidentEvent, rules: &Rules) {
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
    pub(super) fn changed_at(&mut self, time: StoredTime, timing: Timing) {
        let Some(open) = &self.open else {
            return; // still waiting: the CREATED lists it
        };
        self.changed = true;
        if self.due.is_none() {
            self.due = Some(time.max(open.last_sent.plus(timing.interval)));
        }
    }

    /// The group's timer at `at`: it opens, or sends what changed; the pool's opens.
    pub(super) fn fire(&mut self, dedup_key: &str, at: StoredTime, out: &mut Vec<IncidentEvent>) {
        if self.pool.due.is_some_and(|due| due <= at) {
            self.fire_pool(dedup_key, at, out);
        }
        if self.due.is_none_or(|due| due > at) {
            return;
        }
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
                let emit = Emit {
                    open: &open,
                    transition: Transition::Created,
                    at,
                    cause: &opened_by,
                };
                out.push(self.event(&dedup_key, emit, None));
                self.open = Some(open);
            }
            Some(mut open) => {
                if self.changed {
                    open.sequence = open.sequence.saturating_add(1);
                    open.last_sent = at;
                    open.severity = open.severity.max(severity);
                    let cause = self.last.clone().unwrap_or(opened_by);
                    let emit = Emit {
                        open: &open,
                        transition: Transition::Updated,
                        at,
                        cause: &cause,
                    };
                    out.push(self.event(&dedup_key, emit, None));
                }
                self.open = Some(open);
            }
        }
        self.changed = false;
    }

    pub(super) fn dedup_key(&self) -> String {
        let values: Vec<&str> = self.values.iter().map(|(_, v)| v.as_str()).collect();
        group_dedup_key(&self.route, &values)
    }

    /// `queue=spot-a, team=payments`.
    pub(super) fn values_text(&self) -> String {
        let values: Vec<String> = self
            .values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        values.join(", ")
    }

    pub(super) fn event(
        &self,
        dedup_key: &str,
        emit: Emit<'_>,
        resolved: Option<(&IncidentEvent, ResolutionReason)>,
    ) -> IncidentEvent {
        let Emit {
            open,
            transition,
            at,
            cause,
        } = emit;
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
            cause: Some(cause.to_proto()),
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

    pub(super) fn group_entity(&self, kind: i32, values: &str) -> Entity {
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
