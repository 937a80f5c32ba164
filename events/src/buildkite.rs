//! Buildkite webhook payloads.
//!
//! Buildkite documents its webhook events but publishes no complete payloads; the objects
//! inside them (`build`, `job`, `agent`, `pipeline`) are the ones of its REST API. So every
//! field is optional except those the rules need: a build's `number`, `state` and `branch`,
//! a pipeline `slug` (top-level `pipeline.slug`, else `build.pipeline.slug`), a job's `id` and
//! `state`, an agent's `id` and `name`.

use serde::Deserialize;
use time::OffsetDateTime;

use crate::{EventBody, ParseError, from_body, lenient};

/// Buildkite's event names for builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildAction {
    Scheduled,
    Running,
    /// A job failed but the build is still running.
    Failing,
    /// The build reached a final state (passed, failed, canceled, skipped, not_run, ...).
    Finished,
    Skipped,
}

/// Buildkite's event names for jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobAction {
    Scheduled,
    Started,
    Finished,
    /// A block step was unblocked.
    Activated,
}

/// Buildkite's event names for agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentAction {
    Connected,
    Disconnected,
    /// The agent stopped sending heartbeats.
    Lost,
    Stopping,
    Stopped,
    /// The agent was refused (e.g. by an IP allow-list).
    Blocked,
}

/// `build.*`: a build and its pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildEvent {
    pub action: BuildAction,
    pub build: Build,
    pub pipeline: Pipeline,
    pub sender: Option<Person>,
}

/// `job.*`: a job, its build and its pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    pub action: JobAction,
    pub job: Job,
    pub build: Build,
    pub pipeline: Pipeline,
    pub sender: Option<Person>,
}

/// `agent.*`: an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentEvent {
    pub action: AgentAction,
    pub agent: Agent,
    pub sender: Option<Person>,
}

/// A build, as in Buildkite's REST API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Build {
    #[serde(default)]
    pub id: Option<String>,
    /// Increases with every build of the pipeline (across branches).
    pub number: u64,
    pub state: BuildState,
    /// True while (or when) the build waits on a block step. Buildkite may report such a
    /// build as `passed` with `blocked: true`.
    #[serde(default, deserialize_with = "lenient::flag")]
    pub blocked: bool,
    pub branch: String,
    #[serde(default)]
    pub commit: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub web_url: Option<String>,
    /// The commit's author.
    #[serde(default)]
    pub author: Option<Person>,
    /// The user who created the build.
    #[serde(default)]
    pub creator: Option<Person>,
    /// What triggered the build: `webhook`, `api`, `ui`, `trigger_job`, `schedule`, ...
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default, deserialize_with = "lenient::time")]
    pub created_at: Option<OffsetDateTime>,
    #[serde(default, deserialize_with = "lenient::time")]
    pub scheduled_at: Option<OffsetDateTime>,
    #[serde(default, deserialize_with = "lenient::time")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(default, deserialize_with = "lenient::time")]
    pub finished_at: Option<OffsetDateTime>,
}

/// A build's state. Unknown states are kept as [`BuildState::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(from = "String")]
pub enum BuildState {
    Creating,
    Scheduled,
    Running,
    Passed,
    Failing,
    Failed,
    Blocked,
    Canceling,
    Canceled,
    Skipped,
    NotRun,
    Other(String),
}

impl From<String> for BuildState {
    fn from(state: String) -> Self {
        match state.as_str() {
            "creating" => Self::Creating,
            "scheduled" => Self::Scheduled,
            "running" => Self::Running,
            "passed" => Self::Passed,
            "failing" => Self::Failing,
            "failed" => Self::Failed,
            "blocked" => Self::Blocked,
            "canceling" => Self::Canceling,
            // Buildkite spells it "canceled"; accept the British spelling too.
            "canceled" | "cancelled" => Self::Canceled,
            "skipped" => Self::Skipped,
            "not_run" => Self::NotRun,
            _ => Self::Other(state),
        }
    }
}

impl BuildState {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Creating => "creating",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Passed => "passed",
            Self::Failing => "failing",
            Self::Failed => "failed",
            Self::Blocked => "blocked",
            Self::Canceling => "canceling",
            Self::Canceled => "canceled",
            Self::Skipped => "skipped",
            Self::NotRun => "not_run",
            Self::Other(state) => state,
        }
    }
}

/// A job of a build, as in Buildkite's REST API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Job {
    pub id: String,
    /// `script`, `waiter`, `manual`, `trigger`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub step_key: Option<String>,
    pub state: JobState,
    #[serde(default)]
    pub web_url: Option<String>,
    /// The command's exit status; absent or `null` until the job finished.
    #[serde(default)]
    pub exit_status: Option<i64>,
    /// True when the step allows this failure (`soft_fail`): it does not fail the build.
    #[serde(default, deserialize_with = "lenient::flag")]
    pub soft_failed: bool,
    #[serde(default)]
    pub agent: Option<JobAgent>,
    #[serde(default, deserialize_with = "lenient::time")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(default, deserialize_with = "lenient::time")]
    pub finished_at: Option<OffsetDateTime>,
}

impl Job {
    /// What to call the job: its name, else label, else step key, else its id.
    pub fn display_name(&self) -> &str {
        [&self.name, &self.label, &self.step_key]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .find(|name| !name.trim().is_empty())
            .unwrap_or(&self.id)
    }
}

/// A job's state. Unknown states are kept as [`JobState::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(from = "String")]
pub enum JobState {
    Pending,
    Waiting,
    Blocked,
    Scheduled,
    Assigned,
    Accepted,
    Running,
    Passed,
    Failed,
    Canceling,
    Canceled,
    TimingOut,
    TimedOut,
    Skipped,
    Broken,
    Expired,
    Finished,
    Other(String),
}

impl From<String> for JobState {
    fn from(state: String) -> Self {
        match state.as_str() {
            "pending" => Self::Pending,
            "waiting" => Self::Waiting,
            "blocked" => Self::Blocked,
            "scheduled" => Self::Scheduled,
            "assigned" => Self::Assigned,
            "accepted" => Self::Accepted,
            "running" => Self::Running,
            "passed" => Self::Passed,
            "failed" => Self::Failed,
            "canceling" => Self::Canceling,
            "canceled" | "cancelled" => Self::Canceled,
            "timing_out" => Self::TimingOut,
            "timed_out" => Self::TimedOut,
            "skipped" => Self::Skipped,
            "broken" => Self::Broken,
            "expired" => Self::Expired,
            "finished" => Self::Finished,
            _ => Self::Other(state),
        }
    }
}

impl JobState {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Pending => "pending",
            Self::Waiting => "waiting",
            Self::Blocked => "blocked",
            Self::Scheduled => "scheduled",
            Self::Assigned => "assigned",
            Self::Accepted => "accepted",
            Self::Running => "running",
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Canceling => "canceling",
            Self::Canceled => "canceled",
            Self::TimingOut => "timing_out",
            Self::TimedOut => "timed_out",
            Self::Skipped => "skipped",
            Self::Broken => "broken",
            Self::Expired => "expired",
            Self::Finished => "finished",
            Self::Other(state) => state,
        }
    }
}

/// The agent a job ran on, as embedded in the job.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JobAgent {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
}

/// A pipeline, resolved from the payload's top-level `pipeline` or else `build.pipeline`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub slug: String,
    pub id: Option<String>,
    pub name: Option<String>,
    pub web_url: Option<String>,
    pub repository: Option<String>,
}

impl Pipeline {
    /// What to call the pipeline: its name, else its slug.
    pub fn display_name(&self) -> &str {
        self.name
            .as_deref()
            .filter(|name| !name.trim().is_empty())
            .unwrap_or(&self.slug)
    }
}

/// A Buildkite agent, as in Buildkite's REST API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Agent {
    /// Changes when the agent restarts.
    pub id: String,
    /// Stays the same across restarts (hookfold matches agents by name).
    pub name: String,
    #[serde(default)]
    pub connection_state: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub ip_address: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub user_agent: Option<String>,
    #[serde(default)]
    pub web_url: Option<String>,
    #[serde(default, deserialize_with = "lenient::time")]
    pub created_at: Option<OffsetDateTime>,
    /// The agent's tags, `key=value` each (`queue=spot`), which routes match on.
    #[serde(default, deserialize_with = "lenient::strings")]
    pub meta_data: Vec<String>,
}

/// A Buildkite user (`sender`, `build.author`, `build.creator`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Person {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

#[derive(Deserialize)]
struct RawPipeline {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    slug: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    web_url: Option<String>,
    #[serde(default, deserialize_with = "repository_url")]
    repository: Option<String>,
}

/// A pipeline's `repository`: a URL string in the REST API, an object in some payloads.
fn repository_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value.and_then(|value| match value {
        serde_json::Value::String(url) => Some(url),
        serde_json::Value::Object(object) => object
            .get("url")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
        _ => None,
    }))
}

#[derive(Deserialize)]
struct RawBuild {
    #[serde(flatten)]
    build: Build,
    #[serde(default)]
    pipeline: Option<RawPipeline>,
}

#[derive(Deserialize)]
struct BuildPayload {
    build: RawBuild,
    #[serde(default)]
    pipeline: Option<RawPipeline>,
    #[serde(default)]
    sender: Option<Person>,
}

#[derive(Deserialize)]
struct JobPayload {
    job: Job,
    build: RawBuild,
    #[serde(default)]
    pipeline: Option<RawPipeline>,
    #[serde(default)]
    sender: Option<Person>,
}

#[derive(Deserialize)]
struct AgentPayload {
    agent: Agent,
    #[serde(default)]
    sender: Option<Person>,
}

/// The top-level pipeline if it has a slug, else the one inside the build.
fn resolve_pipeline(
    event: &str,
    top: Option<RawPipeline>,
    in_build: Option<RawPipeline>,
) -> Result<Pipeline, ParseError> {
    let has_slug = |p: &RawPipeline| p.slug.as_deref().is_some_and(|slug| !slug.is_empty());
    let raw = [top, in_build]
        .into_iter()
        .flatten()
        .find(has_slug)
        .ok_or_else(|| ParseError::MissingField {
            event: event.to_owned(),
            field: "pipeline.slug",
        })?;
    Ok(Pipeline {
        slug: raw.slug.unwrap_or_default(),
        id: raw.id,
        name: raw.name,
        web_url: raw.web_url,
        repository: raw.repository,
    })
}

/// The typed body of a Buildkite event named `event` (`build.finished`, ...).
pub(crate) fn parse_body(event: &str, value: &[u8]) -> Result<EventBody, ParseError> {
    let build_action = match event {
        "build.scheduled" => Some(BuildAction::Scheduled),
        "build.running" => Some(BuildAction::Running),
        "build.failing" => Some(BuildAction::Failing),
        "build.finished" => Some(BuildAction::Finished),
        "build.skipped" => Some(BuildAction::Skipped),
        _ => None,
    };
    if let Some(action) = build_action {
        let payload: BuildPayload = from_body(event, value)?;
        let pipeline = resolve_pipeline(event, payload.pipeline, payload.build.pipeline)?;
        return Ok(EventBody::Build(BuildEvent {
            action,
            build: payload.build.build,
            pipeline,
            sender: payload.sender,
        }));
    }
    let job_action = match event {
        "job.scheduled" => Some(JobAction::Scheduled),
        "job.started" => Some(JobAction::Started),
        "job.finished" => Some(JobAction::Finished),
        "job.activated" => Some(JobAction::Activated),
        _ => None,
    };
    if let Some(action) = job_action {
        let payload: JobPayload = from_body(event, value)?;
        let pipeline = resolve_pipeline(event, payload.pipeline, payload.build.pipeline)?;
        return Ok(EventBody::Job(JobEvent {
            action,
            job: payload.job,
            build: payload.build.build,
            pipeline,
            sender: payload.sender,
        }));
    }
    let agent_action = match event {
        "agent.connected" => Some(AgentAction::Connected),
        "agent.disconnected" => Some(AgentAction::Disconnected),
        "agent.lost" => Some(AgentAction::Lost),
        "agent.stopping" => Some(AgentAction::Stopping),
        "agent.stopped" => Some(AgentAction::Stopped),
        "agent.blocked" => Some(AgentAction::Blocked),
        _ => None,
    };
    if let Some(action) = agent_action {
        let payload: AgentPayload = from_body(event, value)?;
        return Ok(EventBody::Agent(AgentEvent {
            action,
            agent: payload.agent,
            sender: payload.sender,
        }));
    }
    if event == "ping" {
        // Nothing in a ping is used, but a known event must still be JSON.
        from_body::<serde::de::IgnoredAny>(event, value)?;
        return Ok(EventBody::Ping);
    }
    Ok(EventBody::Unknown)
}
