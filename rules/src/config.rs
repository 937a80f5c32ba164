//! The rules configuration: what opens, updates and resolves incidents, and the bounds of
//! the per-key state. Maps onto the processor's TOML `[rules]` section; every field has a
//! default, so an empty or missing section means the documented defaults (docs/RULES.md).
//!
//! ```toml
//! [rules]
//! dedup_window = 1024
//!
//! [rules.builds]
//! enabled = true
//! scope = "pipeline_branch"          # or "pipeline"
//! include_branches = []              # empty: every branch
//! exclude_branches = ["dependabot/*"]
//! default_severity = "error"
//! severity = [{ branch = "main", severity = "critical" }]
//! idle_branch_limit = 256
//! open_on_failing = false            # open at `build.failing`, not only at `build.finished`
//! open_after_failures = 1            # open at the N-th consecutive failed build
//!
//! [rules.agents]
//! enabled = true
//! open_on = ["agent.lost", "agent.disconnected", "agent.stopped"]
//! severity = "warning"
//! grace = "5m"                       # open only if the agent is not back by then; "0s": at once
//! resolve_after = "24h"              # default: never; resolve (EXPIRED) what is still open then
//!
//! [rules.bitbucket]
//! pull_requests = true
//! branches = true
//! include_branches = []
//! exclude_branches = ["main", "master"]
//! pull_request_severity = "info"
//! branch_severity = "info"
//! ```

use std::time::Duration;

use hookfold_proto::v1::Severity;
use serde::{Deserialize, Serialize};

use crate::glob;
use crate::routes::{self, Route, RouteError};

/// All incident rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// How many of the most recent `ce_id`s each routing key remembers, to drop repeated
    /// deliveries of the same webhook. 0 turns the check off. Default 1024. A repeat older
    /// than the window is applied again; builds, pull requests and pushes are idempotent
    /// anyway (see docs/RULES.md), agent events are not (a repeated `agent.lost` updates).
    pub dedup_window: usize,
    pub builds: BuildRules,
    pub agents: AgentRules,
    pub bitbucket: BitbucketRules,
    /// `[[rules.routes]]`: policy per pipeline, queue or repository over the sections
    /// above, first match wins ([`crate::routes`]). Default none.
    pub routes: Vec<Route>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            dedup_window: 1024,
            builds: BuildRules::default(),
            agents: AgentRules::default(),
            bitbucket: BitbucketRules::default(),
            routes: Vec::new(),
        }
    }
}

/// Buildkite build and job rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildRules {
    /// Whether build and job events open incidents at all. Default true.
    pub enabled: bool,
    /// What one incident covers. Default `pipeline_branch`.
    pub scope: BuildScope,
    /// Branch patterns whose builds count; empty (the default) means every branch.
    pub include_branches: Vec<String>,
    /// Branch patterns whose builds are ignored, even when included. Default none.
    pub exclude_branches: Vec<String>,
    /// Severity of a build incident when no `severity` pattern matches. Default `error`.
    pub default_severity: SeverityLevel,
    /// Severity by branch pattern, first match wins, e.g.
    /// `[{ branch = "main", severity = "critical" }]`. Default none.
    pub severity: Vec<BranchSeverity>,
    /// How many branches without an open incident a pipeline's state remembers (their
    /// highest build number, for stale-build detection); beyond it the least recently
    /// active are forgotten. Default 256. Only matters for scope `pipeline_branch`.
    pub idle_branch_limit: usize,
    /// Whether `build.failing` (a job failed, the build still runs) opens the incident at
    /// once; the same build's `build.finished` failed then updates it. Default false.
    pub open_on_failing: bool,
    /// The incident opens only at the N-th consecutive failed build of its scope (a pass
    /// in between starts the count again); its CREATED event lists the failed builds.
    /// Default 1 (the first failure opens); at most [`MAX_OPEN_AFTER_FAILURES`].
    pub open_after_failures: u32,
}

/// The largest `rules.builds.open_after_failures`: the failed builds counted are kept in
/// the state, so the count is bounded.
pub const MAX_OPEN_AFTER_FAILURES: u32 = 64;

impl Default for BuildRules {
    fn default() -> Self {
        Self {
            enabled: true,
            scope: BuildScope::PipelineBranch,
            include_branches: Vec::new(),
            exclude_branches: Vec::new(),
            default_severity: SeverityLevel::Error,
            severity: Vec::new(),
            idle_branch_limit: 256,
            open_on_failing: false,
            open_after_failures: 1,
        }
    }
}

impl BuildRules {
    /// Whether builds of `branch` count at all.
    pub fn branch_included(&self, branch: &str) -> bool {
        branch_included(&self.include_branches, &self.exclude_branches, branch)
    }

    /// The severity of a build incident on `branch`.
    pub fn severity_for(&self, branch: &str) -> SeverityLevel {
        self.severity
            .iter()
            .find(|rule| glob::matches(&rule.branch, branch))
            .map_or(self.default_severity, |rule| rule.severity)
    }
}

/// What one build incident covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildScope {
    /// One incident per pipeline and branch; only a pass on the same branch resolves.
    /// Dedup key `buildkite/<source_id>/pipeline/<slug>/branch/<branch>`.
    PipelineBranch,
    /// One incident per pipeline; a pass on any (included) branch resolves.
    /// Dedup key `buildkite/<source_id>/pipeline/<slug>`.
    Pipeline,
}

/// A severity for the branches matching a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchSeverity {
    pub branch: String,
    pub severity: SeverityLevel,
}

/// Buildkite agent rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentRules {
    /// Whether agent events open incidents at all. Default true.
    pub enabled: bool,
    /// Agent event names that open (or update) the incident of the agent's name. Default
    /// `agent.lost`, `agent.disconnected`, `agent.stopped`. `agent.connected` always resolves
    /// and may not be listed.
    pub open_on: Vec<String>,
    /// Severity of agent incidents. Default `warning`.
    pub severity: SeverityLevel,
    /// How long after an opening event the agent has to connect again before its incident
    /// is created (with the opening event's time as `occurred_at`); an `agent.connected` in
    /// time means no incident at all. Default `5m`; `0s` opens at once. Measured in the
    /// partition's event time (see docs/RULES.md, Time).
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// An agent incident still open this long after it was created is resolved with
    /// reason EXPIRED (the agent was replaced, or is gone for good). Default: never.
    #[serde(with = "humantime_serde")]
    pub resolve_after: Option<Duration>,
}

impl Default for AgentRules {
    fn default() -> Self {
        Self {
            enabled: true,
            open_on: ["agent.lost", "agent.disconnected", "agent.stopped"]
                .map(str::to_owned)
                .to_vec(),
            severity: SeverityLevel::Warning,
            grace: Duration::from_secs(300),
            resolve_after: None,
        }
    }
}

/// Bitbucket rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BitbucketRules {
    /// Whether pull requests open incidents (created opens, merged or declined resolves).
    /// Default true.
    pub pull_requests: bool,
    /// Whether pushed branches open incidents (a push opens, merging a pull request from the
    /// branch resolves). Default true.
    pub branches: bool,
    /// Branch patterns whose pushes count; empty (the default) means every branch.
    pub include_branches: Vec<String>,
    /// Branch patterns whose pushes are ignored, e.g. `["main", "master"]`. Default none.
    pub exclude_branches: Vec<String>,
    /// Default `info`.
    pub pull_request_severity: SeverityLevel,
    /// Default `info`.
    pub branch_severity: SeverityLevel,
}

impl Default for BitbucketRules {
    fn default() -> Self {
        Self {
            pull_requests: true,
            branches: true,
            include_branches: Vec::new(),
            exclude_branches: Vec::new(),
            pull_request_severity: SeverityLevel::Info,
            branch_severity: SeverityLevel::Info,
        }
    }
}

impl BitbucketRules {
    /// Whether pushes to `branch` count at all.
    pub fn branch_included(&self, branch: &str) -> bool {
        branch_included(&self.include_branches, &self.exclude_branches, branch)
    }
}

fn branch_included(include: &[String], exclude: &[String], branch: &str) -> bool {
    (include.is_empty() || glob::any_matches(include, branch))
        && !glob::any_matches(exclude, branch)
}

/// An incident's severity, as written in the configuration (`"info"`, `"warning"`,
/// `"error"`, `"critical"`). Ordered: an update only ever raises an incident's severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeverityLevel {
    Info,
    Warning,
    Error,
    Critical,
}

impl From<SeverityLevel> for Severity {
    fn from(level: SeverityLevel) -> Self {
        match level {
            SeverityLevel::Info => Severity::Info,
            SeverityLevel::Warning => Severity::Warning,
            SeverityLevel::Error => Severity::Error,
            SeverityLevel::Critical => Severity::Critical,
        }
    }
}

/// A rules configuration that cannot mean what its author wants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error(
        "rules.agents.open_on: `{0}` is not an agent event (agent.lost, agent.disconnected, agent.stopped, agent.stopping, agent.blocked)"
    )]
    NotAnAgentEvent(String),
    #[error("rules.agents.open_on: agent.connected resolves agent incidents and cannot open them")]
    ConnectedOpens,
    #[error("rules.{0}: empty branch pattern (use \"*\" for every branch)")]
    EmptyPattern(&'static str),
    #[error("rules.builds.open_after_failures: {0} is not between 1 and {MAX_OPEN_AFTER_FAILURES}")]
    OpenAfterFailures(u32),
    #[error("rules.agents.resolve_after: must be longer than 0s (leave it out to never expire)")]
    ZeroResolveAfter,
    #[error("rules.agents.{0}: {1:?} is beyond what a timestamp can hold")]
    DurationTooLong(&'static str, Duration),
    #[error(transparent)]
    Route(Box<RouteError>),
}

impl Rules {
    /// Checks what serde cannot: call it once at start-up. `apply` never fails, whatever
    /// the rules; with invalid ones it does what docs/RULES.md says (e.g. `agent.connected`
    /// resolves even if listed in `open_on`).
    pub fn validate(&self) -> Result<(), RulesError> {
        self.validate_sections()?;
        routes::validate(&self.routes, self).map_err(|e| RulesError::Route(Box::new(e)))
    }

    /// [`Rules::validate`] without the routes (which it checks with each route's options).
    pub(crate) fn validate_sections(&self) -> Result<(), RulesError> {
        for name in &self.agents.open_on {
            match name.as_str() {
                "agent.connected" => return Err(RulesError::ConnectedOpens),
                "agent.lost" | "agent.disconnected" | "agent.stopped" | "agent.stopping"
                | "agent.blocked" => {}
                _ => return Err(RulesError::NotAnAgentEvent(name.clone())),
            }
        }
        let pattern_lists = [
            ("builds.include_branches", &self.builds.include_branches),
            ("builds.exclude_branches", &self.builds.exclude_branches),
            (
                "bitbucket.include_branches",
                &self.bitbucket.include_branches,
            ),
            (
                "bitbucket.exclude_branches",
                &self.bitbucket.exclude_branches,
            ),
        ];
        for (field, patterns) in pattern_lists {
            if patterns.iter().any(String::is_empty) {
                return Err(RulesError::EmptyPattern(field));
            }
        }
        if self
            .builds
            .severity
            .iter()
            .any(|rule| rule.branch.is_empty())
        {
            return Err(RulesError::EmptyPattern("builds.severity"));
        }
        let failures = self.builds.open_after_failures;
        if !(1..=MAX_OPEN_AFTER_FAILURES).contains(&failures) {
            return Err(RulesError::OpenAfterFailures(failures));
        }
        if self.agents.resolve_after == Some(Duration::ZERO) {
            return Err(RulesError::ZeroResolveAfter);
        }
        // Ten years is more than any grace or expiry means; beyond it, adding the duration
        // to a timestamp could overflow.
        const LONGEST: Duration = Duration::from_secs(10 * 366 * 24 * 3600);
        for (field, duration) in [
            ("grace", Some(self.agents.grace)),
            ("resolve_after", self.agents.resolve_after),
        ] {
            if let Some(duration) = duration.filter(|d| *d > LONGEST) {
                return Err(RulesError::DurationTooLong(field, duration));
            }
        }
        Ok(())
    }
}
