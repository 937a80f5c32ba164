//! Buildkite Test Engine webhook payloads (a suite's Settings → Notifications).
//!
//! Test Engine sends flat JSON bodies and no event header: the event name is the body's
//! `event` (the gateway puts it in `ce_type`, so [`parse_body`] is given it like any other
//! source's). Its documentation shows one example per event and no schema, so only what the
//! rules cannot do without is required: `test_id`, and the state change's new state or the
//! label. A state hookfold does not know (`enabled`, `muted` and `skipped` are documented)
//! reads as [`EventBody::Unknown`], as an unknown event does: skipped, never an error.

use serde::Deserialize;
use time::OffsetDateTime;

use crate::{EventBody, ParseError, from_body, lenient};

/// A test's state as Test Engine manages it (quarantine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TestState {
    Enabled,
    /// Runs, but its failures do not fail the build.
    Muted,
    /// Does not run.
    Skipped,
}

impl TestState {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "enabled" => Some(Self::Enabled),
            "muted" => Some(Self::Muted),
            "skipped" => Some(Self::Skipped),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Muted => "muted",
            Self::Skipped => "skipped",
        }
    }
}

/// What happened to the test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestAction {
    /// `test.state_changed`; `from` is absent if the body did not say or named a state
    /// hookfold does not know.
    StateChanged {
        from: Option<TestState>,
        to: TestState,
    },
    /// `test.label_added`.
    LabelAdded(String),
    /// `test.label_removed`.
    LabelRemoved(String),
}

/// `test.*` of Test Engine.
#[derive(Debug, Clone, PartialEq)]
pub struct TestEvent {
    pub action: TestAction,
    pub test: Test,
    /// Who made the change: a person, or a system such as "auto quarantine".
    pub actor: Actor,
    /// When Test Engine made the change (`timestamp`): it orders a test's events.
    pub timestamp: Option<OffsetDateTime>,
}

/// The test an event is about.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Test {
    #[serde(rename = "test_id", default)]
    pub id: String,
    #[serde(rename = "test_full_name", default)]
    pub full_name: Option<String>,
    #[serde(rename = "test_location", default)]
    pub location: Option<String>,
    /// The test's page, which names the organization and the suite.
    #[serde(rename = "test_url", default)]
    pub url: Option<String>,
}

impl Test {
    /// The suite's slug, from the test's URL (`…/suites/<slug>/tests/<id>`).
    pub fn suite(&self) -> Option<&str> {
        self.url
            .as_deref()
            .and_then(hookfold_webhook::routing::suite_of_test_url)
    }

    /// The name to show: the full name, else the location, else the id.
    pub fn display_name(&self) -> &str {
        self.full_name
            .as_deref()
            .or(self.location.as_deref())
            .filter(|name| !name.is_empty())
            .unwrap_or(&self.id)
    }
}

/// Who changed the test (`actor_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Actor {
    /// `user` or `system`, as Test Engine says.
    #[serde(rename = "actor_type", default)]
    pub kind: Option<String>,
    /// For a system actor, which one (`auto quarantine`).
    #[serde(rename = "actor_system", default)]
    pub system: Option<String>,
    #[serde(rename = "actor_name", default)]
    pub name: Option<String>,
    #[serde(rename = "actor_email", default)]
    pub email: Option<String>,
}

impl Actor {
    /// How to name the actor in a summary: the system, else the name, else the email.
    pub fn display_name(&self) -> Option<&str> {
        [&self.system, &self.name, &self.email]
            .into_iter()
            .filter_map(|field| field.as_deref())
            .find(|name| !name.is_empty())
    }
}

#[derive(Deserialize)]
struct Payload {
    #[serde(flatten)]
    test: Test,
    #[serde(flatten)]
    actor: Actor,
    #[serde(default, deserialize_with = "lenient::time")]
    timestamp: Option<OffsetDateTime>,
    #[serde(default)]
    test_old_state: Option<String>,
    #[serde(default)]
    test_new_state: Option<String>,
    #[serde(default)]
    label: Option<String>,
}

/// The typed body of the Test Engine event `event`.
pub(crate) fn parse_body(event: &str, value: &[u8]) -> Result<EventBody, ParseError> {
    if !matches!(
        event,
        "test.state_changed" | "test.label_added" | "test.label_removed"
    ) {
        return Ok(EventBody::Unknown);
    }
    let payload: Payload = from_body(event, value)?;
    let missing = |field| ParseError::MissingField {
        event: event.to_owned(),
        field,
    };
    if payload.test.id.is_empty() {
        return Err(missing("test_id"));
    }
    let action = match event {
        "test.state_changed" => {
            let to = payload
                .test_new_state
                .as_deref()
                .ok_or_else(|| missing("test_new_state"))?;
            let Some(to) = TestState::parse(to) else {
                return Ok(EventBody::Unknown);
            };
            let from = payload.test_old_state.as_deref().and_then(TestState::parse);
            TestAction::StateChanged { from, to }
        }
        _ => {
            let label = payload
                .label
                .filter(|label| !label.is_empty())
                .ok_or_else(|| missing("label"))?;
            if event == "test.label_added" {
                TestAction::LabelAdded(label)
            } else {
                TestAction::LabelRemoved(label)
            }
        }
    };
    Ok(EventBody::Test(TestEvent {
        action,
        test: payload.test,
        actor: payload.actor,
        timestamp: payload.timestamp,
    }))
}
