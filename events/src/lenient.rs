//! serde helpers for payload fields whose shape varies between senders and versions.

use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// An optional RFC 3339 timestamp: absent, `null`, a non-string or an unparsable string all
/// read as `None`. Payload times only refine event times (the record's `ce_time` is the
/// fallback), so a strange one is not worth rejecting the whole webhook.
pub fn time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OffsetDateTime>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .and_then(|text| OffsetDateTime::parse(text, &Rfc3339).ok()))
}

/// A list of strings (Buildkite's agent `meta_data`, `key=value` each): absent, `null` or
/// not a list read as empty, and entries that are not strings are left out.
pub fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match value {
        Some(serde_json::Value::Array(items)) => items
            .into_iter()
            .filter_map(|item| match item {
                serde_json::Value::String(text) => Some(text),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    })
}

/// A boolean that may be `null` (read as false).
pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// `links.html.href` of a Bitbucket object (`{"html": {"href": "..."}, ...}`).
pub fn html_href<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Href {
        href: Option<String>,
    }
    #[derive(Deserialize)]
    struct Links {
        html: Option<Href>,
    }
    Ok(Option::<Links>::deserialize(d)?
        .and_then(|links| links.html)
        .and_then(|html| html.href))
}

/// The `hash` of a Bitbucket commit object (`{"hash": "...", "type": "commit", ...}`).
pub fn commit_hash<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Commit {
        hash: Option<String>,
    }
    Ok(Option::<Commit>::deserialize(d)?.and_then(|commit| commit.hash))
}

/// The `name` of a nested object, e.g. Bitbucket's `"branch": {"name": "main"}`.
pub fn branch_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Named {
        name: Option<String>,
    }
    Ok(Option::<Named>::deserialize(d)?.and_then(|named| named.name))
}

/// The `full_name` of a nested Bitbucket repository object.
pub fn repository_full_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Repository {
        full_name: Option<String>,
    }
    Ok(Option::<Repository>::deserialize(d)?.and_then(|repository| repository.full_name))
}
