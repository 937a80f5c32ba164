//! Typed parsing of the records on hookfold's webhook topic.
//!
//! The gateway appends every authenticated webhook to Kafka verbatim (value = request body)
//! with CloudEvents headers (`ce_id`, `ce_source=/sources/<source_id>`,
//! `ce_type=<kind>.<event>`, `ce_time`). [`parse`] turns such a record into a
//! [`WebhookEvent`]: the typed payload of the events hookfold's rules use, [`EventBody::Unknown`]
//! for every other event name, and a typed [`ParseError`] (never a panic) for a record that
//! is not what its headers say.
//!
//! Parsing is lenient about payload shape, because neither Buildkite nor Bitbucket
//! publishes a schema: unknown fields are ignored, optional fields may be absent or `null`,
//! and a timestamp that is not RFC 3339 reads as absent. Only the fields the rules cannot do
//! without are required (see each type).
//!
//! Modules: [`buildkite`], [`test_engine`] and [`bitbucket`] (each source's events), `lenient` (the
//! deserializers that read absent, `null` or odd fields as absent).

pub mod bitbucket;
pub mod buildkite;
mod lenient;
pub mod test_engine;

use hookfold_proto::cloudevents::{self, CloudEventHeaders};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use bitbucket::{
    Endpoint, PullRequest, PullRequestAction, PullRequestEvent, PullRequestState, PushCommit,
    PushEvent, RefChange, RefKind, RefState, Repository, User,
};
pub use buildkite::{
    Agent, AgentAction, AgentEvent, Build, BuildAction, BuildEvent, BuildState, Job, JobAction,
    JobAgent, JobEvent, JobState, Person, Pipeline,
};
pub use hookfold_proto::cloudevents::SourceKind;
/// The routing key contract, re-exported for the rules (see `hookfold_webhook::routing`).
pub use hookfold_webhook::routing::{Entity, entity_key};
pub use test_engine::{Actor, Test, TestAction, TestEvent, TestState};

/// One record of the webhook topic, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEvent {
    /// `ce_id`: the Bitbucket delivery id (`X-Request-UUID`), or for Buildkite a SHA-256 of
    /// source, event name and body, so a repeated delivery keeps its id.
    pub id: String,
    /// The gateway's source id, from `ce_source=/sources/<source_id>`.
    pub source_id: String,
    /// `ce_time`: when the gateway received the webhook.
    pub time: OffsetDateTime,
    /// Who sent it, from `ce_type`.
    pub kind: SourceKind,
    /// The sender's event name, from `ce_type` (`build.finished`, `pullrequest:fulfilled`).
    pub name: String,
    pub body: EventBody,
}

impl WebhookEvent {
    /// The record's `ce_type` again, e.g. `buildkite.build.finished`.
    pub fn ce_type(&self) -> String {
        cloudevents::webhook_type(self.kind, &self.name)
    }

    /// The Kafka record key the design gives this event, as the gateway computes it:
    /// `<source_id>/pipeline/<slug>` (builds, jobs), `<source_id>/agent/<name>` (agents),
    /// `<source_id>/repo/<full_name>` (pull requests, pushes),
    /// `<source_id>/suite/<slug>/test/<id>` (Test Engine), `<source_id>/org` (ping).
    /// `None` for [`EventBody::Unknown`]: its body was not read, so the key cannot be known
    /// here (the gateway may still have derived one from the raw body).
    pub fn routing_key(&self) -> Option<String> {
        let entity = match &self.body {
            EventBody::Build(build) => Entity::Pipeline(&build.pipeline.slug),
            EventBody::Job(job) => Entity::Pipeline(&job.pipeline.slug),
            EventBody::Agent(agent) => Entity::Agent(&agent.agent.name),
            EventBody::PullRequest(pr) => Entity::Repo(&pr.repository.full_name),
            EventBody::Push(push) => Entity::Repo(&push.repository.full_name),
            EventBody::Test(event) => match event.test.suite() {
                Some(suite) => Entity::Test {
                    suite,
                    id: &event.test.id,
                },
                None => Entity::Org,
            },
            EventBody::Ping => Entity::Org,
            EventBody::Unknown => return None,
        };
        Some(entity_key(&self.source_id, entity))
    }
}

/// The typed payload of a webhook.
// Variants differ in size, but events are parsed and applied one at a time, so boxing would
// only add an indirection to every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    /// Buildkite `build.*` events.
    Build(BuildEvent),
    /// Buildkite `job.*` events.
    Job(JobEvent),
    /// Buildkite `agent.*` events.
    Agent(AgentEvent),
    /// Buildkite `ping` (sent when a webhook is saved).
    Ping,
    /// Bitbucket `pullrequest:*` events.
    PullRequest(PullRequestEvent),
    /// Bitbucket `repo:push`.
    Push(PushEvent),
    /// Buildkite Test Engine `test.*`.
    Test(TestEvent),
    /// Any event name hookfold does not model; its body is not even read.
    Unknown,
}

/// Why a webhook record cannot be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("ce_source `{0}` is not `/sources/<source_id>`")]
    Source(String),
    #[error(
        "ce_type `{0}` is not `buildkite.<event>`, `buildkite_test_engine.<event>` or `bitbucket.<event>`"
    )]
    Type(String),
    #[error("ce_time `{0}` is not an RFC 3339 timestamp")]
    Time(String),
    #[error("body of `{event}` is not the JSON hookfold expects: {source}")]
    Body {
        event: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("body of `{event}` has no `{field}`")]
    MissingField { event: String, field: &'static str },
}

/// One record of the webhook topic: a webhook, or a tick (see
/// [`hookfold_proto::cloudevents::TICK_TYPE`]).
// Records are parsed and folded one at a time (as `EventBody`), so boxing the webhook would
// only add an allocation to every one.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum LogRecord {
    Webhook(WebhookEvent),
    Tick { id: String, time: OffsetDateTime },
}

/// Parses any record of the webhook topic: a tick by its `ce_type` and `ce_source`, anything
/// else as a webhook ([`parse`]).
pub fn parse_record(headers: &CloudEventHeaders, value: &[u8]) -> Result<LogRecord, ParseError> {
    if headers.ty == cloudevents::TICK_TYPE && headers.source == cloudevents::TICK_SOURCE {
        let time = OffsetDateTime::parse(&headers.time, &Rfc3339)
            .map_err(|_| ParseError::Time(headers.time.clone()))?;
        return Ok(LogRecord::Tick {
            id: headers.id.clone(),
            time,
        });
    }
    parse(headers, value).map(LogRecord::Webhook)
}

/// Parses one webhook-topic record from its (already parsed) CloudEvents headers and value.
pub fn parse(headers: &CloudEventHeaders, value: &[u8]) -> Result<WebhookEvent, ParseError> {
    let source_id = cloudevents::webhook_source_id(&headers.source)
        .ok_or_else(|| ParseError::Source(headers.source.clone()))?;
    let (kind, name) = cloudevents::parse_webhook_type(&headers.ty)
        .ok_or_else(|| ParseError::Type(headers.ty.clone()))?;
    let time = OffsetDateTime::parse(&headers.time, &Rfc3339)
        .map_err(|_| ParseError::Time(headers.time.clone()))?;
    let body = match kind {
        SourceKind::Buildkite => buildkite::parse_body(name, value)?,
        SourceKind::Bitbucket => bitbucket::parse_body(name, value)?,
        SourceKind::BuildkiteTestEngine => test_engine::parse_body(name, value)?,
    };
    Ok(WebhookEvent {
        id: headers.id.clone(),
        source_id: source_id.to_owned(),
        time,
        kind,
        name: name.to_owned(),
        body,
    })
}

/// Deserializes a body, naming the event in the error.
fn from_body<'a, T: serde::Deserialize<'a>>(event: &str, value: &'a [u8]) -> Result<T, ParseError> {
    serde_json::from_slice(value).map_err(|source| ParseError::Body {
        event: event.to_owned(),
        source,
    })
}
