//! A proto3-JSON rendering of [`IncidentEvent`] (what `hookfold-processor tail` prints).
//!
//! Follows the proto3 JSON mapping: lowerCamelCase field names, enums as their full value
//! names (`"TRANSITION_CREATED"`; an unknown number stays a number), timestamps as RFC 3339
//! UTC text, `int64` as a decimal string, `map<string,string>` as an object. Unlike the
//! canonical encoder it writes every field, defaults included, so the output always has the
//! same shape; an absent message (or a timestamp out of RFC 3339's range) is `null`.

use serde_json::{Map, Value, json};

use crate::timestamp;
use crate::v1::{
    Cause, Entity, EntityKind, GroupMember, IncidentEvent, Link, ResolutionReason, Severity,
    Transition,
};

/// The event as a proto3-JSON object.
pub fn incident_to_json(event: &IncidentEvent) -> Value {
    json!({
        "eventId": event.event_id,
        "incidentId": event.incident_id,
        "dedupKey": event.dedup_key,
        "transition": enum_name(event.transition, |n| Transition::try_from(n).ok().map(|v| v.as_str_name())),
        "sequence": event.sequence,
        "severity": enum_name(event.severity, |n| Severity::try_from(n).ok().map(|v| v.as_str_name())),
        "summary": event.summary,
        "sourceId": event.source_id,
        "entity": event.entity.as_ref().map_or(Value::Null, entity_json),
        "occurredAt": timestamp_json(event.occurred_at.as_ref()),
        "createdAt": timestamp_json(event.created_at.as_ref()),
        "links": event.links.iter().map(link_json).collect::<Vec<_>>(),
        "details": event.details.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>(),
        "resolutionReason": enum_name(event.resolution_reason, |n| ResolutionReason::try_from(n).ok().map(|v| v.as_str_name())),
        "cause": event.cause.as_ref().map_or(Value::Null, cause_json),
        "labels": event.labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>(),
        "route": event.route,
        "members": event.members.iter().map(member_json).collect::<Vec<_>>(),
    })
}

fn member_json(member: &GroupMember) -> Value {
    json!({
        "dedupKey": member.dedup_key,
        "summary": member.summary,
        "severity": enum_name(member.severity, |n| Severity::try_from(n).ok().map(|v| v.as_str_name())),
        "entity": member.entity.as_ref().map_or(Value::Null, entity_json),
        "since": timestamp_json(member.since.as_ref()),
        "links": member.links.iter().map(link_json).collect::<Vec<_>>(),
    })
}

fn enum_name(number: i32, name: impl Fn(i32) -> Option<&'static str>) -> Value {
    name(number).map_or_else(|| Value::from(number), Value::from)
}

fn timestamp_json(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.and_then(|ts| timestamp::to_rfc3339(ts).ok())
        .map_or(Value::Null, Value::String)
}

fn entity_json(entity: &Entity) -> Value {
    json!({
        "kind": enum_name(entity.kind, |n| EntityKind::try_from(n).ok().map(|v| v.as_str_name())),
        "id": entity.id,
        "name": entity.name,
    })
}

fn link_json(link: &Link) -> Value {
    json!({ "rel": link.rel, "url": link.url })
}

fn cause_json(cause: &Cause) -> Value {
    json!({
        "topic": cause.topic,
        "partition": cause.partition,
        // proto3 JSON writes int64 as a string: JSON numbers lose precision past 2^53.
        "offset": cause.offset.to_string(),
        "ceId": cause.ce_id,
        "ceType": cause.ce_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    #[test]
    fn renders_every_field_in_proto3_style() {
        let event = IncidentEvent {
            event_id: "e".into(),
            incident_id: "i".into(),
            dedup_key: "buildkite/acme/pipeline/web/branch/main".into(),
            transition: Transition::Resolved as i32,
            sequence: 2,
            severity: Severity::Critical as i32,
            summary: "Build #43 of web passed on main".into(),
            source_id: "acme".into(),
            entity: Some(Entity {
                kind: EntityKind::Pipeline as i32,
                id: "web".into(),
                name: "Web".into(),
            }),
            occurred_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            created_at: None,
            links: vec![Link {
                rel: "build".into(),
                url: "https://b/1".into(),
            }],
            details: [("branch".to_owned(), "main".to_owned())]
                .into_iter()
                .collect(),
            resolution_reason: ResolutionReason::BuildPassed as i32,
            cause: Some(Cause {
                topic: "hookfold.webhooks".into(),
                partition: 3,
                offset: 9_007_199_254_740_993,
                ce_id: "c".into(),
                ce_type: "buildkite.build.finished".into(),
            }),
            labels: [("team".to_owned(), "payments".to_owned())]
                .into_iter()
                .collect(),
            route: "payments".into(),
            members: Vec::new(),
        };
        let expected = json!({
            "eventId": "e", "incidentId": "i",
            "dedupKey": "buildkite/acme/pipeline/web/branch/main",
            "transition": "TRANSITION_RESOLVED", "sequence": 2, "severity": "SEVERITY_CRITICAL",
            "summary": "Build #43 of web passed on main", "sourceId": "acme",
            "entity": {"kind": "ENTITY_KIND_PIPELINE", "id": "web", "name": "Web"},
            "occurredAt": "2023-11-14T22:13:20Z", "createdAt": null,
            "links": [{"rel": "build", "url": "https://b/1"}],
            "details": {"branch": "main"},
            "resolutionReason": "RESOLUTION_REASON_BUILD_PASSED",
            "cause": {"topic": "hookfold.webhooks", "partition": 3, "offset": "9007199254740993",
                      "ceId": "c", "ceType": "buildkite.build.finished"},
            "labels": {"team": "payments"}, "route": "payments", "members": [],
        });
        assert_eq!(incident_to_json(&event), expected);
    }

    #[test]
    fn unknown_enum_numbers_stay_numbers() {
        let event = IncidentEvent {
            transition: 42,
            ..Default::default()
        };
        let rendered = incident_to_json(&event);
        assert_eq!(rendered["transition"], json!(42));
        assert_eq!(rendered["severity"], json!("SEVERITY_UNSPECIFIED"));
        assert_eq!(rendered["entity"], Value::Null);
    }
}
