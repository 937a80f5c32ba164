//! The records a batch writes besides its markers, each built in one place: an incident
//! event (protobuf, CloudEvents headers, keyed by dedup key) on the incident topic; its row
//! in the open-incident table (the event while open, a tombstone once resolved); a record
//! of the groups topic (a member of a grouped route, a partition's clock); and a changelog
//! record per changed key (`changelog::record`).

use hookfold_proto::Message as _;
use hookfold_proto::incident::PROCESSOR_SOURCE;
use hookfold_proto::v1::{IncidentEvent, Transition};
use rdkafka::producer::BaseRecord;

use super::transaction::BatchProducer;
use super::{EngineError, Topics};
use crate::changelog;
use crate::metrics::Metrics;

/// Where a batch's outputs go.
pub struct Outputs<'a> {
    pub producer: &'a BatchProducer,
    pub topics: &'a Topics,
    pub metrics: &'a Metrics,
}

impl Outputs<'_> {
    /// The incident event on the incident topic, logged and counted.
    pub fn incident_event(&self, incident: &IncidentEvent) -> Result<(), EngineError> {
        let ce = hookfold_proto::incident_event_headers(incident, PROCESSOR_SOURCE)
            .map_err(|_| EngineError::Headers(incident.event_id.clone()))?;
        let headers = hookfold_kafka::cloudevent_headers(&ce, 0);
        let transition = Transition::try_from(incident.transition)
            .map(|t| {
                t.as_str_name()
                    .trim_start_matches("TRANSITION_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_else(|_| "unknown".into());
        tracing::info!(
            event_id = %incident.event_id,
            incident_id = %incident.incident_id,
            dedup_key = %incident.dedup_key,
            transition = %transition,
            partition = incident.cause.as_ref().map(|c| c.partition),
            offset = incident.cause.as_ref().map(|c| c.offset),
            summary = %incident.summary,
            "incident event"
        );
        self.metrics
            .incidents
            .with_label_values(&[&transition])
            .inc();
        let value = incident.encode_to_vec();
        self.producer.send(
            BaseRecord::to(&self.topics.output)
                .key(incident.dedup_key.as_str())
                .payload(value.as_slice())
                .headers(headers),
        )
    }

    /// The incident's record in the open-incident table: the event while the incident is
    /// open, a tombstone once it is resolved (compaction then forgets the key).
    pub fn table_row(&self, incident: &IncidentEvent) -> Result<(), EngineError> {
        let resolved = incident.transition == Transition::Resolved as i32;
        let value = (!resolved).then(|| incident.encode_to_vec());
        let mut record: BaseRecord<'_, str, [u8]> =
            BaseRecord::to(&self.topics.open_incidents).key(incident.dedup_key.as_str());
        if let Some(value) = &value {
            record = record.payload(value.as_slice());
        }
        self.producer.send(record)
    }

    /// A record of the groups topic, to its group's partition (a member) or to each one
    /// (a clock): keyed by the group, value the state codec's.
    pub fn group_record(
        &self,
        record: &hookfold_rules::GroupRecord,
        partition: i32,
    ) -> Result<(), EngineError> {
        let value = crate::codec::encode_value(record);
        let mut out: BaseRecord<'_, str, [u8]> = BaseRecord::to(&self.topics.groups)
            .partition(partition)
            .payload(value.as_slice());
        if let Some(group) = record.group() {
            out = out.key(group);
        }
        self.producer.send(out)
    }

    /// A changelog state record (`None`: a tombstone).
    pub fn state(
        &self,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        next_offset: i64,
    ) -> Result<(), EngineError> {
        self.producer.send(changelog::record(
            &self.topics.changelog,
            partition,
            key,
            value,
            next_offset,
        ))
    }
}

/// A tombstone in the open-incident table (a rebuild's incident that the new state no
/// longer has open).
pub fn table_tombstone<'a>(topics: &'a Topics, dedup_key: &'a str) -> BaseRecord<'a, str, [u8]> {
    BaseRecord::to(&topics.open_incidents).key(dedup_key)
}
