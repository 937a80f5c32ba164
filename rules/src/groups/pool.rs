//! Pools (`min_connected`): the agents of a group connected now, and one incident while
//! fewer than the minimum are, opened `group_wait` after the pool fell short (once it had
//! the minimum: a fleet starting up is no outage) and resolved when enough are back.

use std::collections::{BTreeMap, BTreeSet};

use hookfold_proto::v1::{self, Entity, IncidentEvent, ResolutionReason, Transition};
use serde::{Deserialize, Serialize};

use super::group::{Emit, GroupState, MemberCause, OpenGroup};
use super::stage::Timing;
use super::{Presence, pool_dedup_key};
use crate::output::{event_id, incident_id};
use crate::state::StoredTime;

/// A pool: the agents of the group connected now, and its incident when fewer than
/// `min_connected` are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PoolState {
    pub(super) connected: BTreeSet<String>,
    /// It had `min_connected` at least once (a fleet starting up is no outage).
    pub(super) armed: bool,
    /// The minimum as the pool last saw it.
    pub(super) min: u32,
    pub(super) severity: i32,
    /// When it opens (`group_wait` after it fell short), with the change that made it.
    pub(super) due: Option<StoredTime>,
    pub(super) opened_by: Option<MemberCause>,
    pub(super) open: Option<OpenGroup>,
}

impl GroupState {
    /// An agent of the pool connected or went away at `time`.
    pub(super) fn presence(
        &mut self,
        dedup_key: &str,
        time: StoredTime,
        presence: &Presence,
        timing: Timing,
        out: &mut Vec<IncidentEvent>,
    ) {
        if self.route.is_empty() {
            self.route = presence.route.clone();
            self.labels = presence.labels.clone();
        }
        let Some(min) = timing.min_connected else {
            return; // no longer a pool: its open incident ends with its agents' return
        };
        let pool = &mut self.pool;
        pool.min = min;
        pool.severity = timing.pool_severity;
        if presence.connected {
            pool.connected.insert(presence.agent.clone());
        } else {
            pool.connected.remove(&presence.agent);
        }
        let connected = pool.connected.len() as u64;
        if connected >= u64::from(min) {
            pool.armed = true;
            pool.due = None;
            pool.opened_by = None;
            if let Some(mut open) = pool.open.take() {
                open.sequence = open.sequence.saturating_add(1);
                let emit = Emit {
                    open: &open,
                    transition: Transition::Resolved,
                    at: time,
                    cause: &presence.cause,
                };
                out.push(self.pool_event(dedup_key, emit));
            }
        } else if pool.armed && pool.open.is_none() && pool.due.is_none() {
            pool.due = Some(time.plus(timing.wait));
            pool.opened_by = Some(presence.cause.clone());
        }
    }

    /// The pool's timer at `at`: still short of its minimum, it opens.
    pub(super) fn fire_pool(
        &mut self,
        dedup_key: &str,
        at: StoredTime,
        out: &mut Vec<IncidentEvent>,
    ) {
        let pool = &mut self.pool;
        pool.due = None;
        let Some(opened_by) = pool.opened_by.take() else {
            return;
        };
        if pool.open.is_some() || pool.connected.len() as u64 >= u64::from(pool.min) {
            return;
        }
        let key = pool_dedup_key(dedup_key);
        let open = OpenGroup {
            incident_id: incident_id(&key, &opened_by.ce_id),
            created_at: at,
            sequence: 0,
            last_sent: at,
            severity: pool.severity,
        };
        let emit = Emit {
            open: &open,
            transition: Transition::Created,
            at,
            cause: &opened_by,
        };
        out.push(self.pool_event(dedup_key, emit));
        self.pool.open = Some(open);
    }

    pub(super) fn pool_event(&self, dedup_key: &str, emit: Emit<'_>) -> IncidentEvent {
        let (open, transition, at, cause) = (emit.open, emit.transition, emit.at, emit.cause);
        let key = pool_dedup_key(dedup_key);
        let values = self.values_text_or(dedup_key);
        let connected = self.pool.connected.len();
        let min = self.pool.min;
        let summary = match transition {
            Transition::Resolved => {
                format!("{values}: {connected} agents connected again (at least {min} wanted)")
            }
            _ => format!("{values}: {connected} of at least {min} agents connected"),
        };
        let details: BTreeMap<String, String> = [
            ("connected", connected.to_string()),
            ("min_connected", min.to_string()),
            ("group", values.clone()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into();
        let reason = match transition {
            Transition::Resolved => ResolutionReason::AgentConnected,
            _ => ResolutionReason::Unspecified,
        };
        IncidentEvent {
            event_id: event_id(
                &key,
                &open.incident_id,
                transition,
                open.sequence,
                &cause.ce_id,
            ),
            incident_id: open.incident_id.clone(),
            dedup_key: key.clone(),
            transition: transition as i32,
            sequence: open.sequence,
            severity: open.severity,
            summary,
            source_id: cause.source_id.clone(),
            entity: Some(Entity {
                kind: v1::EntityKind::Agent as i32,
                id: key,
                name: values,
            }),
            occurred_at: Some(at.to_timestamp()),
            created_at: Some(open.created_at.to_timestamp()),
            links: Vec::new(),
            details: details.into_iter().collect(),
            resolution_reason: reason as i32,
            cause: Some(cause.to_proto()),
            labels: self.labels.clone().into_iter().collect(),
            route: self.route.clone(),
            members: Vec::new(),
        }
    }

    /// The group's values as text, or (a pool that never had a member) its dedup key's.
    pub(super) fn values_text_or(&self, dedup_key: &str) -> String {
        if self.values.is_empty() {
            return dedup_key
                .split_once("/group/")
                .map_or(dedup_key, |(_, values)| values)
                .to_owned();
        }
        self.values_text()
    }
}
