//! Comparing a run's incident records with a reference run's.

use std::collections::{HashMap, HashSet};

use anyhow::{Result, bail};
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
