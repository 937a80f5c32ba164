//! CloudEvents 1.0, Kafka protocol binding, binary content mode.
//!
//! Both topics carry their payload as the record value and the event's attributes as
//! `ce_*` record headers. The gateway writes them, the processor reads them; keeping the
//! names and the parsing here means the two cannot drift apart.

use std::fmt;

/// Header names (CloudEvents Kafka binding, binary mode).
pub const SPECVERSION: &str = "ce_specversion";
pub const ID: &str = "ce_id";
pub const SOURCE: &str = "ce_source";
pub const TYPE: &str = "ce_type";
pub const TIME: &str = "ce_time";
pub const CONTENT_TYPE: &str = "content-type";

/// Not a CloudEvents attribute: on a webhook record whose body the gateway redacted, the
/// paths it removed, comma-separated (e.g. `pipeline.env,build.env`). Absent when the
/// record is the body as received.
pub const REDACTED: &str = "hookfold-redacted";

/// The only CloudEvents version hookfold writes or accepts.
pub const SPEC_VERSION: &str = "1.0";

pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_TYPE_PROTOBUF: &str = "application/protobuf";

/// The attributes of one CloudEvent as carried in Kafka record headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEventHeaders {
    pub id: String,
    pub source: String,
    pub ty: String,
    /// RFC 3339 timestamp.
    pub time: String,
    pub content_type: String,
}

/// Why a record's headers are not a CloudEvent hookfold understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("record has no `{0}` header")]
    Missing(&'static str),
    #[error("header `{0}` is not UTF-8")]
    NotUtf8(&'static str),
    #[error("unsupported CloudEvents specversion `{0}` (expected 1.0)")]
    SpecVersion(String),
}

impl CloudEventHeaders {
    /// The headers in the order they are written, `ce_specversion` first.
    pub fn pairs(&self) -> [(&'static str, &str); 6] {
        [
            (SPECVERSION, SPEC_VERSION),
            (ID, &self.id),
            (SOURCE, &self.source),
            (TYPE, &self.ty),
            (TIME, &self.time),
            (CONTENT_TYPE, &self.content_type),
        ]
    }

    /// Reads the attributes back from record headers. Unknown headers are ignored; when a
    /// header repeats, the last one wins (as Kafka clients commonly do).
    pub fn from_pairs<'a>(
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<Self, HeaderError> {
        let mut spec = None;
        let (mut id, mut source, mut ty, mut time, mut content_type) =
            (None, None, None, None, None);
        for (name, value) in headers {
            let slot = match name {
                SPECVERSION => (&mut spec, SPECVERSION),
                ID => (&mut id, ID),
                SOURCE => (&mut source, SOURCE),
                TYPE => (&mut ty, TYPE),
                TIME => (&mut time, TIME),
                CONTENT_TYPE => (&mut content_type, CONTENT_TYPE),
                _ => continue,
            };
            let Some(value) = value else { continue };
            let text = std::str::from_utf8(value).map_err(|_| HeaderError::NotUtf8(slot.1))?;
            *slot.0 = Some(text.to_owned());
        }
        let spec = spec.ok_or(HeaderError::Missing(SPECVERSION))?;
        if spec != SPEC_VERSION {
            return Err(HeaderError::SpecVersion(spec));
        }
        Ok(Self {
            id: id.ok_or(HeaderError::Missing(ID))?,
            source: source.ok_or(HeaderError::Missing(SOURCE))?,
            ty: ty.ok_or(HeaderError::Missing(TYPE))?,
            time: time.ok_or(HeaderError::Missing(TIME))?,
            content_type: content_type.ok_or(HeaderError::Missing(CONTENT_TYPE))?,
        })
    }
}

/// `ce_source` of a webhook record: `/sources/<source_id>`.
pub fn webhook_source(source_id: &str) -> String {
    format!("/sources/{source_id}")
}

/// The source id back from a webhook record's `ce_source`.
pub fn webhook_source_id(ce_source: &str) -> Option<&str> {
    ce_source
        .strip_prefix("/sources/")
        .filter(|id| !id.is_empty())
}

/// `ce_type` of a tick: a record the processor owning a webhook-topic partition appends to
/// it when the partition has been quiet for `tick_interval`, so that time passes in the log
/// (the rules' timers) without webhooks. Its value is `{}`; only `ce_time` matters.
pub const TICK_TYPE: &str = "hookfold.tick";
/// `ce_source` of a tick. Never `/sources/...`, so no webhook source can be taken for it.
pub const TICK_SOURCE: &str = "/hookfold/processor/tick";

/// The headers of a tick record written at `time` (RFC 3339).
pub fn tick_headers(id: String, time: String) -> CloudEventHeaders {
    CloudEventHeaders {
        id,
        source: TICK_SOURCE.to_owned(),
        ty: TICK_TYPE.to_owned(),
        time,
        content_type: CONTENT_TYPE_JSON.to_owned(),
    }
}

/// The kind of system that sends a webhook source's deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// Buildkite Pipelines (builds, jobs, agents, cluster tokens).
    Buildkite,
    /// Buildkite Test Engine (a suite's tests): no event header, the event is the body's.
    BuildkiteTestEngine,
    Bitbucket,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Buildkite => "buildkite",
            SourceKind::BuildkiteTestEngine => "buildkite_test_engine",
            SourceKind::Bitbucket => "bitbucket",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ce_type` of a webhook record: `<kind>.<event>`, e.g. `buildkite.build.finished` or
/// `bitbucket.pullrequest:fulfilled`.
pub fn webhook_type(kind: SourceKind, event: &str) -> String {
    format!("{}.{event}", kind.as_str())
}

/// Splits a webhook record's `ce_type` into the source kind and the sender's event name.
pub fn parse_webhook_type(ce_type: &str) -> Option<(SourceKind, &str)> {
    let (kind, event) = ce_type.split_once('.')?;
    let kind = match kind {
        "buildkite" => SourceKind::Buildkite,
        "buildkite_test_engine" => SourceKind::BuildkiteTestEngine,
        "bitbucket" => SourceKind::Bitbucket,
        _ => return None,
    };
    (!event.is_empty()).then_some((kind, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CloudEventHeaders {
        CloudEventHeaders {
            id: "abc".into(),
            source: webhook_source("acme"),
            ty: webhook_type(SourceKind::Buildkite, "build.finished"),
            time: "2026-11-22T10:00:00Z".into(),
            content_type: CONTENT_TYPE_JSON.into(),
        }
    }

    #[test]
    fn headers_round_trip() {
        let h = sample();
        let pairs = h.pairs();
        let back =
            CloudEventHeaders::from_pairs(pairs.iter().map(|(k, v)| (*k, Some(v.as_bytes()))))
                .unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn missing_or_wrong_specversion_is_rejected() {
        let h = sample();
        let without: Vec<_> = h
            .pairs()
            .into_iter()
            .filter(|(k, _)| *k != SPECVERSION)
            .collect();
        assert_eq!(
            CloudEventHeaders::from_pairs(without.iter().map(|(k, v)| (*k, Some(v.as_bytes())))),
            Err(HeaderError::Missing(SPECVERSION))
        );
        let wrong = [(SPECVERSION, Some(&b"0.3"[..]))];
        assert_eq!(
            CloudEventHeaders::from_pairs(wrong),
            Err(HeaderError::SpecVersion("0.3".into()))
        );
    }

    #[test]
    fn webhook_type_round_trips_with_colons_and_dots() {
        assert_eq!(
            parse_webhook_type("bitbucket.pullrequest:fulfilled"),
            Some((SourceKind::Bitbucket, "pullrequest:fulfilled"))
        );
        assert_eq!(
            parse_webhook_type("buildkite.build.finished"),
            Some((SourceKind::Buildkite, "build.finished"))
        );
        assert_eq!(
            parse_webhook_type("buildkite_test_engine.test.state_changed"),
            Some((SourceKind::BuildkiteTestEngine, "test.state_changed"))
        );
        assert_eq!(
            webhook_type(SourceKind::BuildkiteTestEngine, "test.label_added"),
            "buildkite_test_engine.test.label_added"
        );
        assert_eq!(parse_webhook_type("gitlab.push"), None);
        assert_eq!(parse_webhook_type("buildkite."), None);
        assert_eq!(webhook_source_id("/sources/acme"), Some("acme"));
        assert_eq!(webhook_source_id("/sources/"), None);
    }
}
