//! Building [`IncidentEvent`]s: deterministic ids, and the fields every event shares.

use std::collections::BTreeMap;

use hookfold_events::WebhookEvent;
use hookfold_proto::v1::{
    self, Entity, EntityKind, IncidentEvent, Link, ResolutionReason, Transition,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::Cause;
use crate::config::SeverityLevel;
use crate::routes::Route;
use crate::state::{OpenIncident, RouteTag, StoredTime};

/// Lower-case hex of the first 128 bits of SHA-256 over `parts`, each followed by a NUL
/// (no part contains NUL where it matters, so the concatenation is unambiguous).
fn digest_hex(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(&hasher.finalize()[..16])
}

/// `incident_id`: from the dedup key and the `ce_id` of the webhook that opened it.
pub(crate) fn incident_id(dedup_key: &str, opening_ce_id: &str) -> String {
    digest_hex(&["hookfold.incident", dedup_key, opening_ce_id])
}

/// `event_id`: from the incident, the transition, the event's sequence number and the
/// `ce_id` of the webhook that caused it, so several events caused by one webhook (a push
/// of two branches; a merge resolving a pull request and its branch) still differ.
pub(crate) fn event_id(
    dedup_key: &str,
    incident_id: &str,
    transition: Transition,
    sequence: u32,
    ce_id: &str,
) -> String {
    digest_hex(&[
        "hookfold.event",
        dedup_key,
        incident_id,
        transition.as_str_name(),
        &sequence.to_string(),
        ce_id,
    ])
}

/// The human text of an event and what it is about.
pub(crate) struct Description {
    pub(crate) summary: String,
    pub(crate) entity: Entity,
    pub(crate) links: Vec<Link>,
    pub(crate) details: BTreeMap<String, String>,
}

impl Description {
    pub(crate) fn new(kind: EntityKind, id: &str, name: &str) -> Self {
        Self {
            summary: String::new(),
            entity: Entity {
                kind: kind as i32,
                id: id.to_owned(),
                name: name.to_owned(),
            },
            links: Vec::new(),
            details: BTreeMap::new(),
        }
    }

    pub(crate) fn link(&mut self, rel: &str, url: Option<&str>) {
        if let Some(url) = url.filter(|url| !url.is_empty()) {
            self.links.push(Link {
                rel: rel.to_owned(),
                url: url.to_owned(),
            });
        }
    }

    pub(crate) fn detail(&mut self, key: &str, value: Option<&str>) {
        if let Some(value) = value.filter(|value| !value.is_empty()) {
            self.details.insert(key.to_owned(), value.to_owned());
        }
    }
}

/// The webhook being applied, with what every output of it needs.
#[derive(Clone, Copy)]
pub(crate) struct Input<'a> {
    pub(crate) event: &'a WebhookEvent,
    pub(crate) cause: &'a Cause,
    /// The route of the entity the outputs are about (`routes::route_for`).
    pub(crate) route: Option<&'a Route>,
    /// The entity's group under that route (`Route::group_values`), if it groups.
    pub(crate) group: Option<&'a BTreeMap<String, String>>,
}

impl<'a> Input<'a> {
    /// The same webhook, for an entity of `route` in `group`.
    pub(crate) fn routed(
        self,
        route: Option<&'a Route>,
        group: Option<&'a BTreeMap<String, String>>,
    ) -> Self {
        Self {
            route,
            group,
            ..self
        }
    }

    /// Who the outputs of this webhook are by.
    pub(crate) fn by(&self) -> By<'_> {
        By {
            ce_id: &self.event.id,
            source_id: &self.event.source_id,
            event_name: &self.event.name,
            ce_type: self.event.ce_type(),
            cause: self.cause,
            route: self.route,
            group: self.group,
        }
    }

    /// What a timer needs to emit for this webhook later (see [`Origin`]).
    pub(crate) fn origin(&self) -> Origin {
        Origin {
            ce_id: self.event.id.clone(),
            source_id: self.event.source_id.clone(),
            event_name: self.event.name.clone(),
            ce_type: self.event.ce_type(),
            cause: self.cause.clone(),
        }
    }
}

/// The webhook an event is attributed to, kept in the state for a timer that fires later
/// (an expiry): the event's ids, `cause` and `details.event` stay those of that webhook,
/// so they do not depend on which record happened to move the partition's clock past the
/// deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Origin {
    pub(crate) ce_id: String,
    pub(crate) source_id: String,
    pub(crate) event_name: String,
    pub(crate) ce_type: String,
    pub(crate) cause: Cause,
}

impl Origin {
    pub(crate) fn by(&self) -> By<'_> {
        By {
            ce_id: &self.ce_id,
            source_id: &self.source_id,
            event_name: &self.event_name,
            ce_type: self.ce_type.clone(),
            cause: &self.cause,
            route: None,
            group: None,
        }
    }
}

/// Everything an incident event takes from the webhook it is attributed to.
pub(crate) struct By<'a> {
    ce_id: &'a str,
    source_id: &'a str,
    event_name: &'a str,
    ce_type: String,
    cause: &'a Cause,
    /// The route a new incident opens under (an existing one keeps its own).
    route: Option<&'a Route>,
    /// Its group under that route: the values join the route's labels.
    group: Option<&'a BTreeMap<String, String>>,
}

impl By<'_> {
    /// Opens a new incident on `dedup_key` at `occurred_at`, under the webhook's route, and
    /// returns it with its CREATED event.
    pub(crate) fn create(
        &self,
        dedup_key: String,
        severity: SeverityLevel,
        occurred_at: OffsetDateTime,
        description: Description,
    ) -> (OpenIncident, IncidentEvent) {
        let open = OpenIncident {
            incident_id: incident_id(&dedup_key, self.ce_id),
            dedup_key,
            created_at: StoredTime::from(occurred_at),
            sequence: 0,
            severity,
            route: self.route.map(|route| RouteTag {
                name: route.name.clone(),
                labels: match self.group {
                    Some(group) => {
                        let mut labels = route.labels.clone();
                        labels.extend(group.iter().map(|(k, v)| (k.clone(), v.clone())));
                        labels
                    }
                    None => route.labels.clone(),
                },
            }),
        };
        let event = self.emit(&open, Transition::Created, occurred_at, description, None);
        (open, event)
    }

    /// The UPDATED event of `open` (whose sequence and severity it advances).
    pub(crate) fn update(
        &self,
        open: &mut OpenIncident,
        severity: SeverityLevel,
        occurred_at: OffsetDateTime,
        description: Description,
    ) -> IncidentEvent {
        open.sequence = open.sequence.saturating_add(1);
        open.severity = open.severity.max(severity);
        self.emit(open, Transition::Updated, occurred_at, description, None)
    }

    /// The RESOLVED event of `open`, which the caller then drops.
    pub(crate) fn resolve(
        &self,
        mut open: OpenIncident,
        reason: ResolutionReason,
        occurred_at: OffsetDateTime,
        description: Description,
    ) -> IncidentEvent {
        open.sequence = open.sequence.saturating_add(1);
        self.emit(
            &open,
            Transition::Resolved,
            occurred_at,
            description,
            Some(reason),
        )
    }

    fn emit(
        &self,
        open: &OpenIncident,
        transition: Transition,
        occurred_at: OffsetDateTime,
        description: Description,
        reason: Option<ResolutionReason>,
    ) -> IncidentEvent {
        let mut details = description.details;
        details.insert("event".to_owned(), self.event_name.to_owned());
        IncidentEvent {
            event_id: event_id(
                &open.dedup_key,
                &open.incident_id,
                transition,
                open.sequence,
                self.ce_id,
            ),
            incident_id: open.incident_id.clone(),
            dedup_key: open.dedup_key.clone(),
            transition: transition as i32,
            sequence: open.sequence,
            severity: v1::Severity::from(open.severity) as i32,
            summary: description.summary,
            source_id: self.source_id.to_owned(),
            entity: Some(description.entity),
            occurred_at: Some(StoredTime::from(occurred_at).to_timestamp()),
            created_at: Some(open.created_at.to_timestamp()),
            links: description.links,
            details,
            resolution_reason: reason.unwrap_or(ResolutionReason::Unspecified) as i32,
            cause: Some(v1::Cause {
                topic: self.cause.topic.clone(),
                partition: self.cause.partition,
                offset: self.cause.offset,
                ce_id: self.cause.ce_id.clone(),
                ce_type: self.ce_type.clone(),
            }),
            labels: open
                .route
                .as_ref()
                .map(|route| route.labels.clone().into_iter().collect())
                .unwrap_or_default(),
            route: open
                .route
                .as_ref()
                .map(|route| route.name.clone())
                .unwrap_or_default(),
            members: Vec::new(),
        }
    }
}

/// The first line of a (commit) message, at most 200 characters: details are for a glance,
/// the link has the rest.
pub(crate) fn first_line(message: &str) -> String {
    const MAX_CHARS: usize = 200;
    let line = message
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("");
    match line.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}
