//! The CloudEvents headers of a record on the incident topic.

use crate::cloudevents::{CONTENT_TYPE_PROTOBUF, CloudEventHeaders};
use crate::timestamp::{self, TimestampError};
use crate::v1::{IncidentEvent, Transition};

/// `ce_source` the processor writes on incident records.
pub const PROCESSOR_SOURCE: &str = "/hookfold/processor";

pub const TYPE_CREATED: &str = "hookfold.incident.created";
pub const TYPE_UPDATED: &str = "hookfold.incident.updated";
pub const TYPE_RESOLVED: &str = "hookfold.incident.resolved";

/// Why an incident event cannot be given CloudEvents headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncidentHeaderError {
    #[error("incident event {0} has no transition")]
    NoTransition(String),
    #[error("incident event {0} has no occurred_at")]
    NoOccurredAt(String),
    #[error("incident event {event_id}: {source}")]
    Time {
        event_id: String,
        source: TimestampError,
    },
}

/// `ce_type` of an incident record, `None` for `TRANSITION_UNSPECIFIED`.
pub fn incident_type(transition: Transition) -> Option<&'static str> {
    match transition {
        Transition::Created => Some(TYPE_CREATED),
        Transition::Updated => Some(TYPE_UPDATED),
        Transition::Resolved => Some(TYPE_RESOLVED),
        Transition::Unspecified => None,
    }
}

/// The headers of the incident-topic record carrying `event`: `ce_id` = `event_id`,
/// `ce_type` = `hookfold.incident.<transition>`, `ce_time` = `occurred_at` (RFC 3339),
/// `content-type: application/protobuf`. `ce_source` is usually [`PROCESSOR_SOURCE`].
///
/// Fails only for events the rules never produce: no transition or no valid `occurred_at`.
pub fn incident_event_headers(
    event: &IncidentEvent,
    ce_source: &str,
) -> Result<CloudEventHeaders, IncidentHeaderError> {
    // An unknown enum number decodes as Unspecified, which has no ce_type either.
    let transition = Transition::try_from(event.transition).unwrap_or(Transition::Unspecified);
    let ty = incident_type(transition)
        .ok_or_else(|| IncidentHeaderError::NoTransition(event.event_id.clone()))?;
    let occurred_at = event
        .occurred_at
        .as_ref()
        .ok_or_else(|| IncidentHeaderError::NoOccurredAt(event.event_id.clone()))?;
    let time = timestamp::to_rfc3339(occurred_at).map_err(|source| IncidentHeaderError::Time {
        event_id: event.event_id.clone(),
        source,
    })?;
    Ok(CloudEventHeaders {
        id: event.event_id.clone(),
        source: ce_source.to_owned(),
        ty: ty.to_owned(),
        time,
        content_type: CONTENT_TYPE_PROTOBUF.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    #[test]
    fn headers_follow_the_event() {
        let mut event = IncidentEvent {
            event_id: "e1".into(),
            transition: Transition::Resolved as i32,
            occurred_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 5_000_000,
            }),
            ..Default::default()
        };
        let headers = incident_event_headers(&event, PROCESSOR_SOURCE).unwrap();
        assert_eq!(headers.id, "e1");
        assert_eq!(headers.source, "/hookfold/processor");
        assert_eq!(headers.ty, "hookfold.incident.resolved");
        assert_eq!(headers.time, "2023-11-14T22:13:20.005Z");
        assert_eq!(headers.content_type, "application/protobuf");

        event.transition = Transition::Created as i32;
        assert_eq!(
            incident_event_headers(&event, "/x").unwrap().ty,
            "hookfold.incident.created"
        );
        event.transition = Transition::Updated as i32;
        assert_eq!(
            incident_event_headers(&event, "/x").unwrap().ty,
            "hookfold.incident.updated"
        );

        event.transition = 99;
        assert_eq!(
            incident_event_headers(&event, "/x"),
            Err(IncidentHeaderError::NoTransition("e1".into()))
        );
        event.transition = Transition::Created as i32;
        event.occurred_at = None;
        assert_eq!(
            incident_event_headers(&event, "/x"),
            Err(IncidentHeaderError::NoOccurredAt("e1".into()))
        );
    }
}
