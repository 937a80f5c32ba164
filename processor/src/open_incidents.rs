//! The open-incident table (`kafka.open_incidents_topic`, compacted, keyed by dedup key):
//! what is open right now, without replaying the incident topic. The processor writes the
//! latest [`IncidentEvent`] of an incident with each of its events and a tombstone when it
//! is resolved, in the same batch as the event (`engine`); `rebuild` tombstones what the
//! new state no longer has open.
//!
//! Invariants: reading the table from its beginning to its end and keeping the last value
//! of each key ([`Table::apply`]) gives exactly the incidents a fold of the incident topic
//! says are open; a record that is not an `IncidentEvent` is skipped and counted, never
//! taken as an open incident.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use hookfold_kafka::{AtEnd, NEVER, PartitionReader, Polled, Start};
use hookfold_proto::Message as _;
use hookfold_proto::v1::{EntityKind, IncidentEvent, Severity};
use rdkafka::ClientConfig;
use rdkafka::message::Message;

/// The table as read so far: open incidents by dedup key.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Table {
    pub open: BTreeMap<String, IncidentEvent>,
    /// Records skipped because they were not an `IncidentEvent` (or had no key).
    pub skipped: u64,
}

/// What one table record did.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Opened or updated: the incident's latest event.
    Open(Box<IncidentEvent>),
    /// Resolved (a tombstone), with the event it had before, if it was known.
    Closed(String, Option<Box<IncidentEvent>>),
    Skipped,
}

impl Table {
    /// Applies one record of the table topic.
    pub fn apply(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> Change {
        let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
            self.skipped += 1;
            return Change::Skipped;
        };
        match value {
            None => {
                let before = self.open.remove(key).map(Box::new);
                Change::Closed(key.to_owned(), before)
            }
            Some(bytes) => match IncidentEvent::decode(bytes) {
                Ok(event) if event.dedup_key == key => {
                    self.open.insert(key.to_owned(), event.clone());
                    Change::Open(Box::new(event))
                }
                _ => {
                    self.skipped += 1;
                    Change::Skipped
                }
            },
        }
    }
}

/// Which open incidents to show.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `source_id` equal to this.
    pub source: Option<String>,
    /// Entity kind: pipeline, agent, pull_request, branch.
    pub kind: Option<EntityKind>,
    /// At least this severity.
    pub min_severity: Option<Severity>,
    /// Dedup key starting with this.
    pub prefix: Option<String>,
    /// Every one of these labels, with this value (`team=payments`: the route's labels).
    pub labels: Vec<(String, String)>,
}

/// `team=payments`: a label and its value.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("{text:?} is not label=value (e.g. team=payments)")),
    }
}

/// `pipeline`, `agent`, `pull_request` (or `pull-request`), `branch`.
pub fn parse_kind(text: &str) -> Result<EntityKind, String> {
    let name = format!(
        "ENTITY_KIND_{}",
        text.trim().replace('-', "_").to_ascii_uppercase()
    );
    EntityKind::from_str_name(&name)
        .filter(|k| *k != EntityKind::Unspecified)
        .ok_or_else(|| format!("{text:?} is not pipeline, agent, pull_request or branch"))
}

/// `info`, `warning`, `error`, `critical`.
pub fn parse_severity(text: &str) -> Result<Severity, String> {
    let name = format!("SEVERITY_{}", text.trim().to_ascii_uppercase());
    Severity::from_str_name(&name)
        .filter(|s| *s != Severity::Unspecified)
        .ok_or_else(|| format!("{text:?} is not info, warning, error or critical"))
}

impl Filter {
    pub fn matches(&self, event: &IncidentEvent) -> bool {
        let kind = event.entity.as_ref().map(|e| e.kind);
        self.source.as_ref().is_none_or(|s| *s == event.source_id)
            && self.kind.is_none_or(|k| kind == Some(k as i32))
            && self.min_severity.is_none_or(|s| event.severity >= s as i32)
            && self
                .prefix
                .as_ref()
                .is_none_or(|p| event.dedup_key.starts_with(p.as_str()))
            && self
                .labels
                .iter()
                .all(|(key, value)| event.labels.get(key) == Some(value))
    }
}

/// The open incidents `filter` lets through, most severe first, then oldest first (by
/// `created_at`), then by dedup key.
pub fn listed<'a>(table: &'a Table, filter: &Filter) -> Vec<&'a IncidentEvent> {
    let mut open: Vec<&IncidentEvent> = table.open.values().filter(|e| filter.matches(e)).collect();
    let since = |e: &IncidentEvent| e.created_at.map(|t| (t.seconds, t.nanos));
    open.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| since(a).cmp(&since(b)))
            .then_with(|| a.dedup_key.cmp(&b.dedup_key))
    });
    open
}

/// The whole table as it is now.
pub fn load(
    client: ClientConfig,
    topic: &str,
    group: &str,
    timeout: Duration,
) -> anyhow::Result<Table> {
    let mut client = client;
    client.set("group.id", group);
    let mut reader =
        PartitionReader::whole_topic(client, topic, Start::Beginning, AtEnd::Stop, timeout)?;
    let mut table = Table::default();
    reader.read_to_end(&NEVER, |m| {
        table.apply(m.key(), m.payload());
    })?;
    Ok(table)
}

fn lower_name(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_ascii_lowercase()
}

/// When the incident was created, to the second: the table's column stays aligned (the
/// JSON keeps the full precision).
fn since(event: &IncidentEvent) -> String {
    event
        .created_at
        .as_ref()
        .map(|t| hookfold_proto::prost_types::Timestamp {
            seconds: t.seconds,
            nanos: 0,
        })
        .and_then(|t| hookfold_proto::timestamp::to_rfc3339(&t).ok())
        .unwrap_or_else(|| "?".into())
}

/// One line of the human table: severity, since when, kind, dedup key, summary.
pub fn human_line(event: &IncidentEvent) -> String {
    let severity = lower_name(event.severity().as_str_name(), "SEVERITY_");
    let kind = event
        .entity
        .as_ref()
        .map(|e| lower_name(e.kind().as_str_name(), "ENTITY_KIND_"))
        .unwrap_or_default();
    format!(
        "{severity:<9} {:<25} {kind:<13} {:<55} {}",
        since(event),
        event.dedup_key,
        event.summary
    )
}

pub const HUMAN_HEADER: &str = "SEVERITY  SINCE                     KIND          DEDUP KEY";

/// Options of `hookfold-processor incidents`.
#[derive(Debug, Clone, Default)]
pub struct IncidentsOptions {
    pub filter: Filter,
    pub json: bool,
    pub watch: bool,
}

/// `hookfold-processor incidents`: the open incidents now, then (with `watch`) every
/// change as it comes.
pub fn print(
    client: ClientConfig,
    topic: &str,
    options: &IncidentsOptions,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(30);
    let at_end = if options.watch {
        AtEnd::Follow
    } else {
        AtEnd::Stop
    };
    let mut reader =
        PartitionReader::whole_topic(client, topic, Start::Beginning, at_end, timeout)?;
    let mut table = Table::default();
    reader.read_to_end(&NEVER, |m| {
        table.apply(m.key(), m.payload());
    })?;
    let open = listed(&table, &options.filter);
    if options.json {
        for event in &open {
            writeln!(out, "{}", hookfold_proto::json::incident_to_json(event))?;
        }
    } else {
        writeln!(out, "{HUMAN_HEADER}")?;
        for event in &open {
            writeln!(out, "{}", human_line(event))?;
        }
        writeln!(out, "{} open", open.len())?;
    }
    if table.skipped > 0 {
        eprintln!(
            "hookfold-processor incidents: skipped {} record(s) of {topic} that are not incident events",
            table.skipped
        );
    }
    out.flush()?;
    if !options.watch {
        return Ok(());
    }
    loop {
        let Polled::Record(message) = reader.poll(Duration::from_millis(500))? else {
            continue;
        };
        let change = table.apply(message.key(), message.payload());
        let line = match &change {
            Change::Open(event) if options.filter.matches(event) => {
                if options.json {
                    serde_json::json!({"open": hookfold_proto::json::incident_to_json(event)})
                        .to_string()
                } else {
                    format!("open      {}", human_line(event))
                }
            }
            Change::Closed(key, before)
                if before.as_ref().is_none_or(|e| options.filter.matches(e))
                    && options
                        .filter
                        .prefix
                        .as_ref()
                        .is_none_or(|p| key.starts_with(p.as_str())) =>
            {
                if options.json {
                    serde_json::json!({"closed": key}).to_string()
                } else {
                    format!("closed    {key}")
                }
            }
            _ => continue,
        };
        writeln!(out, "{line}")?;
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hookfold_proto::v1::{Entity, Transition};

    fn event(key: &str, severity: Severity, kind: EntityKind, created: i64) -> IncidentEvent {
        IncidentEvent {
            dedup_key: key.into(),
            source_id: key.split('/').nth(1).unwrap_or_default().into(),
            severity: severity as i32,
            transition: Transition::Created as i32,
            entity: Some(Entity {
                kind: kind as i32,
                id: key.into(),
                name: key.into(),
            }),
            created_at: Some(hookfold_proto::prost_types::Timestamp {
                seconds: created,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_last_record_of_a_key_wins_and_a_tombstone_closes() {
        let mut table = Table::default();
        let a = event("bk/s1/agent/a", Severity::Warning, EntityKind::Agent, 1);
        let mut a2 = a.clone();
        a2.sequence = 2;
        table.apply(Some(b"bk/s1/agent/a"), Some(&a.encode_to_vec()));
        table.apply(Some(b"bk/s1/agent/a"), Some(&a2.encode_to_vec()));
        assert_eq!(table.open["bk/s1/agent/a"].sequence, 2);
        let change = table.apply(Some(b"bk/s1/agent/a"), None);
        assert!(matches!(change, Change::Closed(_, Some(_))));
        assert!(table.open.is_empty());
        // Garbage and a value under another key are skipped, not taken as open.
        assert_eq!(table.apply(Some(b"x"), Some(b"\xff\xff")), Change::Skipped);
        assert_eq!(
            table.apply(Some(b"other"), Some(&a.encode_to_vec())),
            Change::Skipped
        );
        assert_eq!(table.apply(None, Some(&a.encode_to_vec())), Change::Skipped);
        assert_eq!(table.skipped, 3);
        assert!(table.open.is_empty());
    }

    #[test]
    fn listed_is_filtered_and_sorted_by_severity_then_age() {
        let mut table = Table::default();
        for e in [
            event("bk/s1/agent/a", Severity::Warning, EntityKind::Agent, 5),
            event(
                "bk/s1/pipeline/p",
                Severity::Critical,
                EntityKind::Pipeline,
                9,
            ),
            event(
                "bk/s1/pipeline/q",
                Severity::Critical,
                EntityKind::Pipeline,
                3,
            ),
            event(
                "bb/s2/repo/r/pr/1",
                Severity::Info,
                EntityKind::PullRequest,
                1,
            ),
        ] {
            let mut e = e;
            if e.dedup_key.contains("pipeline") {
                e.labels.insert("team".into(), "payments".into());
            }
            if e.dedup_key.ends_with("/q") {
                e.labels.insert("service".into(), "api".into());
            }
            table.apply(Some(e.dedup_key.as_bytes()), Some(&e.encode_to_vec()));
        }
        let keys = |filter: &Filter| -> Vec<String> {
            listed(&table, filter)
                .iter()
                .map(|e| e.dedup_key.clone())
                .collect()
        };
        assert_eq!(
            keys(&Filter::default()),
            [
                "bk/s1/pipeline/q",
                "bk/s1/pipeline/p",
                "bk/s1/agent/a",
                "bb/s2/repo/r/pr/1"
            ]
        );
        let kind = Filter {
            kind: Some(parse_kind("agent").unwrap()),
            ..Default::default()
        };
        assert_eq!(keys(&kind), ["bk/s1/agent/a"]);
        let severe = Filter {
            min_severity: Some(parse_severity("warning").unwrap()),
            source: Some("s1".into()),
            ..Default::default()
        };
        assert_eq!(keys(&severe).len(), 3);
        let prefix = Filter {
            prefix: Some("bk/s1/pipeline/".into()),
            ..Default::default()
        };
        assert_eq!(keys(&prefix), ["bk/s1/pipeline/q", "bk/s1/pipeline/p"]);
        let team = Filter {
            labels: vec![parse_label("team=payments").unwrap()],
            ..Default::default()
        };
        assert_eq!(keys(&team), ["bk/s1/pipeline/q", "bk/s1/pipeline/p"]);
        let both = Filter {
            labels: vec![
                parse_label("team=payments").unwrap(),
                parse_label(" service = api ").unwrap(),
            ],
            ..Default::default()
        };
        assert_eq!(keys(&both), ["bk/s1/pipeline/q"]);
        let other = Filter {
            labels: vec![parse_label("team=web").unwrap()],
            ..Default::default()
        };
        assert!(keys(&other).is_empty());
        assert!(parse_label("team").is_err());
        assert!(parse_label("=x").is_err());
        assert!(parse_kind("pull-request").is_ok());
        assert!(parse_kind("build").is_err());
        assert!(parse_severity("unspecified").is_err());
    }
}
