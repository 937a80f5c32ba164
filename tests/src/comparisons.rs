//! Comparing a run's incident records with a reference run's, and the open-incident table
//! with what a fold of the incident topic says is open.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context, Result, bail};
use hookfold_proto::Message as _;
use hookfold_proto::v1::{IncidentEvent, Transition};
use rdkafka::message::{Message, OwnedMessage};

use crate::topics::headers_of;

/// Incident records by `ce_id`, with every distinct payload seen under that id.
pub fn outputs_by_id(records: &[OwnedMessage]) -> HashMap<String, HashSet<Vec<u8>>> {
    let mut map: HashMap<String, HashSet<Vec<u8>>> = HashMap::new();
    for record in records {
        let id = headers_of(record).get("ce_id").cloned().unwrap_or_default();
        map.entry(id)
            .or_default()
            .insert(record.payload().unwrap_or_default().to_vec());
    }
    map
}

/// Checks `actual` against a `reference` run's incident records: the same set of event
/// ids, and an id repeated only with the reference's exact payload. Returns the number of
/// repeats in `actual`.
pub fn assert_same_incidents(reference: &[OwnedMessage], actual: &[OwnedMessage]) -> Result<usize> {
    let reference_ids = outputs_by_id(reference);
    let actual_ids = outputs_by_id(actual);
    if reference_ids.len() != reference.len() {
        bail!(
            "the reference run repeated events: {} records, {} ids",
            reference.len(),
            reference_ids.len()
        );
    }
    let lost: Vec<&String> = reference_ids
        .keys()
        .filter(|id| !actual_ids.contains_key(*id))
        .collect();
    let extra: Vec<&String> = actual_ids
        .keys()
        .filter(|id| !reference_ids.contains_key(*id))
        .collect();
    if !lost.is_empty() || !extra.is_empty() {
        bail!(
            "{} event(s) lost (e.g. {:?}), {} event(s) the reference does not have (e.g. {:?})",
            lost.len(),
            lost.first(),
            extra.len(),
            extra.first()
        );
    }
    for (id, payloads) in &actual_ids {
        if payloads != &reference_ids[id] {
            bail!("event {id} was emitted with content that differs from the reference");
        }
    }
    Ok(actual.len() - reference.len())
}

/// The incidents open after the incident topic's `records` (in each partition's order; a
/// dedup key always lands in one partition): the last event of each incident whose last
/// event is not RESOLVED.
pub fn open_by_fold(records: &[OwnedMessage]) -> Result<BTreeMap<String, IncidentEvent>> {
    let mut open = BTreeMap::new();
    for record in records {
        let event = IncidentEvent::decode(record.payload().unwrap_or_default())
            .with_context(|| format!("incident record at offset {}", record.offset()))?;
        if event.transition == Transition::Resolved as i32 {
            open.remove(&event.dedup_key);
        } else {
            open.insert(event.dedup_key.clone(), event);
        }
    }
    Ok(open)
}

/// What the open-incident table's `records` hold: the last value of each key, a tombstone
/// removing it.
pub fn table_contents(records: &[OwnedMessage]) -> Result<BTreeMap<String, IncidentEvent>> {
    let mut table = BTreeMap::new();
    for record in records {
        let key = String::from_utf8(record.key().unwrap_or_default().to_vec())
            .context("a table key that is not UTF-8")?;
        match record.payload() {
            None => {
                table.remove(&key);
            }
            Some(bytes) => {
                let event = IncidentEvent::decode(bytes)
                    .with_context(|| format!("table record at offset {}", record.offset()))?;
                if event.dedup_key != key {
                    bail!("table key {key} holds the event of {}", event.dedup_key);
                }
                table.insert(key, event);
            }
        }
    }
    Ok(table)
}

/// The table holds exactly the incidents the fold of the incident topic says are open,
/// each with its latest event; returns how many are open.
pub fn assert_table_matches(incidents: &[OwnedMessage], table: &[OwnedMessage]) -> Result<usize> {
    let expected = open_by_fold(incidents)?;
    let actual = table_contents(table)?;
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .collect();
    let extra: Vec<&String> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        bail!(
            "the open-incident table differs from the fold of the incident topic: {} missing \
             (e.g. {:?}), {} that are not open (e.g. {:?})",
            missing.len(),
            missing.first(),
            extra.len(),
            extra.first()
        );
    }
    for (key, event) in &expected {
        if &actual[key] != event {
            bail!(
                "the table's event for {key} is {} (sequence {}), the incident's latest is {} \
                 (sequence {})",
                actual[key].event_id,
                actual[key].sequence,
                event.event_id,
                event.sequence
            );
        }
    }
    Ok(expected.len())
}

/// [`assert_same_incidents`] with no repeat at all: every event of the reference exactly
/// once (what a `read_committed` consumer must see under `exactly_once`).
pub fn assert_exactly_once(reference: &[OwnedMessage], actual: &[OwnedMessage]) -> Result<()> {
    let repeats = assert_same_incidents(reference, actual)?;
    if repeats != 0 {
        let ids = outputs_by_id(actual);
        let mut counts: HashMap<String, usize> = HashMap::new();
        for record in actual {
            let id = headers_of(record).get("ce_id").cloned().unwrap_or_default();
            *counts.entry(id).or_default() += 1;
        }
        let repeated: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
        bail!(
            "{repeats} repeated record(s) over {} ids, e.g. {:?}",
            ids.len(),
            repeated.first()
        );
    }
    Ok(())
}

/// Two `hookfold-processor state` dumps are equal; otherwise fails with the number of
/// lines only one side has and the first few of them (shortened: states are long).
pub fn assert_same_state(actual: &[String], expected: &[String], what: &str) -> Result<()> {
    if actual == expected {
        return Ok(());
    }
    let short = |line: &String| line.chars().take(400).collect::<String>();
    let expected_set: HashSet<&String> = expected.iter().collect();
    let actual_set: HashSet<&String> = actual.iter().collect();
    let only_actual: Vec<String> = actual
        .iter()
        .filter(|l| !expected_set.contains(l))
        .take(3)
        .map(short)
        .collect();
    let only_expected: Vec<String> = expected
        .iter()
        .filter(|l| !actual_set.contains(l))
        .take(3)
        .map(short)
        .collect();
    bail!(
        "{what}: the state differs ({} lines, expected {}); only here: {only_actual:#?}; only expected: {only_expected:#?}",
        actual.len(),
        expected.len()
    )
}
