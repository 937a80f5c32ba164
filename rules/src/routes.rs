//! Routes: policy per pipeline, queue or repository (docs/RULES.md, Routes).
//!
//! Routes are ordered and the first whose every matcher matches an entity is its route;
//! none matching means the `[rules.*]` sections and no labels. A route sets labels (`team`,
//! `service`, …), a severity, and overrides of its kinds' rule options on top of those
//! sections. Invariants:
//! - a route is chosen from the webhook alone (its [`Subject`]), never from the machine or
//!   the order records arrive in, so a replay chooses the same routes;
//! - the options a route gives are the `[rules.*]` section's with the route's severity, then
//!   its overrides, laid over them ([`Route::builds`], [`Route::agents`],
//!   [`Route::bitbucket`]), and are valid whenever [`validate`] passed;
//! - a matcher a subject has nothing for (the pipeline of an agent) does not match it.
//!

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{
    AgentRules, BitbucketRules, BranchSeverity, BuildRules, BuildScope, Rules, RulesError,
    SeverityLevel,
};
use crate::glob;

/// One `[[rules.routes]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Route {
    /// Unique among the routes; every incident event of the route carries it.
    pub name: String,
    /// Patterns of the webhook's source id (the gateway's `[[sources]]` id).
    pub sources: Vec<String>,
    /// The entity kinds the route is for; empty: those its other matchers imply
    /// ([`Route::kinds`]).
    pub kinds: Vec<RouteKind>,
    /// Patterns of the Buildkite pipeline slug.
    pub pipelines: Vec<String>,
    /// Patterns of the branch (a build's, a pull request's source, a pushed branch).
    pub branches: Vec<String>,
    /// Patterns of the repository (a pipeline's repository URL, a Bitbucket full name).
    pub repositories: Vec<String>,
    /// `key=pattern` entries, every one of which an agent's `meta_data` must satisfy (as
    /// Buildkite's agent query rules do).
    pub agent_meta: Vec<String>,
    /// Carried on every incident event of the route.
    pub labels: BTreeMap<String, String>,
    /// The severity of every incident of the route (a kind's override may still set its own).
    pub severity: Option<SeverityLevel>,
    pub builds: Option<BuildOverrides>,
    pub agents: Option<AgentOverrides>,
    pub bitbucket: Option<BitbucketOverrides>,
    /// What makes the route's incidents one incident per group (`groups`): each entry is
    /// `source`, `kind`, `pipeline`, `branch`, `repository`, one of the route's labels, or,
    /// on a route only for agents, a meta-data key (`queue`). Empty: no groups.
    pub group_by: Vec<String>,
    /// How long a group waits after its first member went bad before it opens (default 30 s).
    #[serde(with = "humantime_serde")]
    pub group_wait: Option<Duration>,
    /// How often at most an open group is UPDATED as members join or recover (default 5 min).
    #[serde(with = "humantime_serde")]
    pub group_interval: Option<Duration>,
    /// A pool (an agent route with `group_by`): fewer agents of a group connected than this,
    /// once it had that many, opens one incident for the group (`group_wait` after).
    pub min_connected: Option<u32>,
}

/// Alertmanager's defaults.
pub const DEFAULT_GROUP_WAIT: Duration = Duration::from_secs(30);
pub const DEFAULT_GROUP_INTERVAL: Duration = Duration::from_secs(300);

/// The `group_by` fields every subject has; any other is a label of the route or an agent's
/// meta-data key.
const GROUP_FIELDS: [&str; 5] = ["source", "kind", "pipeline", "branch", "repository"];

/// What an incident is about, as routes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    /// A pipeline's builds (and their jobs).
    Build,
    Agent,
    /// A Bitbucket pull request.
    PullRequest,
    /// A Bitbucket pushed branch.
    Branch,
}

impl RouteKind {
    pub const ALL: [RouteKind; 4] = [Self::Build, Self::Agent, Self::PullRequest, Self::Branch];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Build => "build",
            Self::Agent => "agent",
            Self::PullRequest => "pull_request",
            Self::Branch => "branch",
        }
    }
}

/// What a route is matched against: taken from one webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    pub source_id: &'a str,
    pub kind: RouteKind,
    pub pipeline: Option<&'a str>,
    pub branch: Option<&'a str>,
    pub repository: Option<&'a str>,
    /// The agent's `meta_data`, `key=value` each.
    pub agent_meta: &'a [String],
}

/// `[rules.routes.builds]`: any `[rules.builds]` option.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildOverrides {
    pub enabled: Option<bool>,
    pub scope: Option<BuildScope>,
    pub include_branches: Option<Vec<String>>,
    pub exclude_branches: Option<Vec<String>>,
    pub default_severity: Option<SeverityLevel>,
    pub severity: Option<Vec<BranchSeverity>>,
    pub idle_branch_limit: Option<usize>,
    pub open_on_failing: Option<bool>,
    pub open_after_failures: Option<u32>,
}

/// `[rules.routes.agents]`: any `[rules.agents]` option.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentOverrides {
    pub enabled: Option<bool>,
    pub open_on: Option<Vec<String>>,
    pub severity: Option<SeverityLevel>,
    #[serde(with = "humantime_serde")]
    pub grace: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub resolve_after: Option<Duration>,
}

/// `[rules.routes.bitbucket]`: any `[rules.bitbucket]` option.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BitbucketOverrides {
    pub pull_requests: Option<bool>,
    pub branches: Option<bool>,
    pub include_branches: Option<Vec<String>>,
    pub exclude_branches: Option<Vec<String>>,
    pub pull_request_severity: Option<SeverityLevel>,
    pub branch_severity: Option<SeverityLevel>,
}

/// Sets `field` to the override's value when there is one.
fn over<T: Clone>(field: &mut T, value: &Option<T>) {
    if let Some(value) = value {
        *field = value.clone();
    }
}

impl Route {
    /// Whether the route is for `kind`: one of `kinds` when given, else a kind its
    /// matchers can match (a pipeline is a build's; agent meta-data an agent's; a branch or
    /// a repository a build's or Bitbucket's), else every kind. Asked for every route
    /// tried on every webhook, so it allocates nothing.
    pub fn is_for(&self, kind: RouteKind) -> bool {
        if !self.kinds.is_empty() {
            return self.kinds.contains(&kind);
        }
        (self.pipelines.is_empty() || kind == RouteKind::Build)
            && (self.agent_meta.is_empty() || kind == RouteKind::Agent)
            && ((self.branches.is_empty() && self.repositories.is_empty())
                || kind != RouteKind::Agent)
    }

    /// The kinds the route is for ([`Route::is_for`]).
    pub fn kinds(&self) -> BTreeSet<RouteKind> {
        RouteKind::ALL
            .into_iter()
            .filter(|kind| self.is_for(*kind))
            .collect()
    }

    /// Whether every matcher the route has matches `subject`.
    pub fn matches(&self, subject: &Subject<'_>) -> bool {
        fn field(patterns: &[String], value: Option<&str>) -> bool {
            patterns.is_empty() || value.is_some_and(|v| glob::any_matches(patterns, v))
        }
        self.is_for(subject.kind)
            && (self.sources.is_empty() || glob::any_matches(&self.sources, subject.source_id))
            && field(&self.pipelines, subject.pipeline)
            && field(&self.branches, subject.branch)
            && field(&self.repositories, subject.repository)
            && self
                .agent_meta
                .iter()
                .all(|rule| meta_matches(rule, subject.agent_meta))
    }

    /// The pool's minimum of connected agents, for a grouped route that has one.
    pub fn pool(&self) -> Option<u32> {
        self.min_connected.filter(|_| self.groups())
    }

    /// Whether the route's incidents are grouped (`group_by` is given).
    pub fn groups(&self) -> bool {
        !self.group_by.is_empty()
    }

    pub fn group_wait(&self) -> Duration {
        self.group_wait.unwrap_or(DEFAULT_GROUP_WAIT)
    }

    pub fn group_interval(&self) -> Duration {
        self.group_interval.unwrap_or(DEFAULT_GROUP_INTERVAL)
    }

    /// The group `subject` falls in: each `group_by` field with its value (empty when the
    /// subject has none, as Alertmanager groups a missing label); `None` if the route does
    /// not group.
    pub fn group_values(&self, subject: &Subject<'_>) -> Option<BTreeMap<String, String>> {
        if !self.groups() {
            return None;
        }
        let value = |field: &str| -> String {
            let given = match field {
                "source" => Some(subject.source_id),
                "kind" => Some(subject.kind.as_str()),
                "pipeline" => subject.pipeline,
                "branch" => subject.branch,
                "repository" => subject.repository,
                label if self.labels.contains_key(label) => {
                    self.labels.get(label).map(String::as_str)
                }
                key => subject.agent_meta.iter().find_map(|entry| {
                    entry
                        .split_once('=')
                        .and_then(|(k, v)| (k == key).then_some(v))
                }),
            };
            given.unwrap_or_default().to_owned()
        };
        Some(
            self.group_by
                .iter()
                .map(|field| (field.clone(), value(field)))
                .collect(),
        )
    }

    /// `[rules.builds]` as this route has it.
    pub fn builds<'a>(&self, base: &'a BuildRules) -> Cow<'a, BuildRules> {
        if self.severity.is_none() && self.builds.is_none() {
            return Cow::Borrowed(base);
        }
        let mut rules = base.clone();
        if let Some(severity) = self.severity {
            rules.default_severity = severity;
            rules.severity.clear();
        }
        if let Some(o) = &self.builds {
            over(&mut rules.enabled, &o.enabled);
            over(&mut rules.scope, &o.scope);
            over(&mut rules.include_branches, &o.include_branches);
            over(&mut rules.exclude_branches, &o.exclude_branches);
            over(&mut rules.default_severity, &o.default_severity);
            over(&mut rules.severity, &o.severity);
            over(&mut rules.idle_branch_limit, &o.idle_branch_limit);
            over(&mut rules.open_on_failing, &o.open_on_failing);
            over(&mut rules.open_after_failures, &o.open_after_failures);
        }
        Cow::Owned(rules)
    }

    /// `[rules.agents]` as this route has it.
    pub fn agents<'a>(&self, base: &'a AgentRules) -> Cow<'a, AgentRules> {
        if self.severity.is_none() && self.agents.is_none() {
            return Cow::Borrowed(base);
        }
        let mut rules = base.clone();
        over(&mut rules.severity, &self.severity);
        if let Some(o) = &self.agents {
            over(&mut rules.enabled, &o.enabled);
            over(&mut rules.open_on, &o.open_on);
            over(&mut rules.severity, &o.severity);
            over(&mut rules.grace, &o.grace);
            if o.resolve_after.is_some() {
                rules.resolve_after = o.resolve_after;
            }
        }
        Cow::Owned(rules)
    }

    /// `[rules.bitbucket]` as this route has it.
    pub fn bitbucket<'a>(&self, base: &'a BitbucketRules) -> Cow<'a, BitbucketRules> {
        if self.severity.is_none() && self.bitbucket.is_none() {
            return Cow::Borrowed(base);
        }
        let mut rules = base.clone();
        over(&mut rules.pull_request_severity, &self.severity);
        over(&mut rules.branch_severity, &self.severity);
        if let Some(o) = &self.bitbucket {
            over(&mut rules.pull_requests, &o.pull_requests);
            over(&mut rules.branches, &o.branches);
            over(&mut rules.include_branches, &o.include_branches);
            over(&mut rules.exclude_branches, &o.exclude_branches);
            over(&mut rules.pull_request_severity, &o.pull_request_severity);
            over(&mut rules.branch_severity, &o.branch_severity);
        }
        Cow::Owned(rules)
    }
}

/// Whether some `key=value` of `meta` has `rule`'s key and a value its pattern matches.
fn meta_matches(rule: &str, meta: &[String]) -> bool {
    let Some((key, pattern)) = rule.split_once('=') else {
        return false;
    };
    meta.iter().any(|entry| {
        entry
            .split_once('=')
            .is_some_and(|(k, v)| k == key && glob::matches(pattern, v))
    })
}

/// The subject of a build or job event: its pipeline's builds.
pub fn build_subject<'a>(
    source_id: &'a str,
    pipeline: &'a hookfold_events::Pipeline,
    build: &'a hookfold_events::Build,
) -> Subject<'a> {
    Subject {
        source_id,
        kind: RouteKind::Build,
        pipeline: Some(&pipeline.slug),
        branch: Some(&build.branch),
        repository: pipeline.repository.as_deref(),
        agent_meta: &[],
    }
}

/// The subject of an agent event: the agent, by its meta-data.
pub fn agent_subject<'a>(source_id: &'a str, agent: &'a hookfold_events::Agent) -> Subject<'a> {
    Subject {
        source_id,
        kind: RouteKind::Agent,
        pipeline: None,
        branch: None,
        repository: None,
        agent_meta: &agent.meta_data,
    }
}

/// The subject of a Bitbucket pull request or pushed branch of `repository`.
pub fn bitbucket_subject<'a>(
    source_id: &'a str,
    kind: RouteKind,
    repository: &'a str,
    branch: Option<&'a str>,
) -> Subject<'a> {
    Subject {
        source_id,
        kind,
        pipeline: None,
        branch,
        repository: Some(repository),
        agent_meta: &[],
    }
}

/// The first of `routes` that matches `subject`.
pub fn route_for<'r>(routes: &'r [Route], subject: &Subject<'_>) -> Option<&'r Route> {
    routes.iter().find(|route| route.matches(subject))
}

impl Rules {
    /// Whether some route groups its incidents (the processor then runs the group stage).
    pub fn groups(&self) -> bool {
        self.routes.iter().any(Route::groups)
    }

    /// Whether some route is a pool (`min_connected`): agents' presence goes to the groups.
    pub fn pools(&self) -> bool {
        self.routes.iter().any(|route| route.pool().is_some())
    }

    /// The route of `subject`: the first that matches.
    pub fn route(&self, subject: &Subject<'_>) -> Option<&Route> {
        route_for(&self.routes, subject)
    }

    /// `[rules.builds]` under `route` (none: the section).
    pub fn builds_under(&self, route: Option<&Route>) -> Cow<'_, BuildRules> {
        route.map_or(Cow::Borrowed(&self.builds), |r| r.builds(&self.builds))
    }

    /// `[rules.agents]` under `route`.
    pub fn agents_under(&self, route: Option<&Route>) -> Cow<'_, AgentRules> {
        route.map_or(Cow::Borrowed(&self.agents), |r| r.agents(&self.agents))
    }

    /// `[rules.bitbucket]` under `route`.
    pub fn bitbucket_under(&self, route: Option<&Route>) -> Cow<'_, BitbucketRules> {
        route.map_or(Cow::Borrowed(&self.bitbucket), |r| {
            r.bitbucket(&self.bitbucket)
        })
    }
}

/// A route that cannot mean what its author wants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("rules.routes[{0}]: every route needs a name")]
    NoName(usize),
    #[error("rules.routes: two routes are named `{0}`")]
    DuplicateName(String),
    #[error("rules.routes `{route}`.{field}: empty pattern (use \"*\" to match everything)")]
    EmptyPattern { route: String, field: &'static str },
    #[error(
        "rules.routes `{route}`.agent_meta: `{rule}` is not key=pattern (e.g. \"queue=spot-*\")"
    )]
    AgentMeta { route: String, rule: String },
    #[error(
        "rules.routes `{route}`.labels: a label name must be non-empty, of letters, digits, `_`, `-` and `.` (`{label}`)"
    )]
    LabelName { route: String, label: String },
    #[error(
        "rules.routes `{route}`.{section}: the route is only for {kinds}, and these options are not of its kinds"
    )]
    NotOfItsKinds {
        route: String,
        section: &'static str,
        kinds: String,
    },
    #[error(
        "rules.routes `{0}`: its matchers are of different kinds (`pipelines` is a build's, \
         `agent_meta` an agent's), so it can match nothing"
    )]
    NoKind(String),
    #[error(
        "rules.routes `{route}`.group_by: `{field}` is not source, kind, pipeline, branch, repository, a label of the route, or (on a route only for agents) an agent meta-data key"
    )]
    GroupBy { route: String, field: String },
    #[error("rules.routes `{route}`.{field}: only a route with group_by has it")]
    NotGrouped { route: String, field: &'static str },
    #[error("rules.routes `{route}`.{field}: {why}")]
    GroupTiming {
        route: String,
        field: &'static str,
        why: &'static str,
    },
    #[error("rules.routes `{route}`: {source}")]
    Rules {
        route: String,
        #[source]
        source: RulesError,
    },
}

/// Checks what serde cannot, once at start-up; `rules` holds the defaults the routes
/// override, which are checked by [`Rules::validate`] on their own.
pub fn validate(routes: &[Route], rules: &Rules) -> Result<(), RouteError> {
    let mut names = BTreeSet::new();
    for (index, route) in routes.iter().enumerate() {
        let name = route.name.clone();
        if name.is_empty() {
            return Err(RouteError::NoName(index));
        }
        if !names.insert(name.clone()) {
            return Err(RouteError::DuplicateName(name));
        }
        for (field, patterns) in [
            ("sources", &route.sources),
            ("pipelines", &route.pipelines),
            ("branches", &route.branches),
            ("repositories", &route.repositories),
        ] {
            if patterns.iter().any(String::is_empty) {
                return Err(RouteError::EmptyPattern { route: name, field });
            }
        }
        if let Some(rule) = route
            .agent_meta
            .iter()
            .find(|rule| rule.split_once('=').is_none_or(|(key, _)| key.is_empty()))
        {
            return Err(RouteError::AgentMeta {
                route: name,
                rule: rule.clone(),
            });
        }
        if let Some(label) = route.labels.keys().find(|label| {
            label.is_empty()
                || !label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        }) {
            return Err(RouteError::LabelName {
                route: name,
                label: label.clone(),
            });
        }
        let kinds = route.kinds();
        if kinds.is_empty() {
            return Err(RouteError::NoKind(name));
        }
        let sections = [
            ("builds", route.builds.is_some(), &[RouteKind::Build][..]),
            ("agents", route.agents.is_some(), &[RouteKind::Agent][..]),
            (
                "bitbucket",
                route.bitbucket.is_some(),
                &[RouteKind::PullRequest, RouteKind::Branch][..],
            ),
        ];
        for (section, given, of) in sections {
            if given && !of.iter().any(|kind| kinds.contains(kind)) {
                let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
                return Err(RouteError::NotOfItsKinds {
                    route: name,
                    section,
                    kinds: kinds.join(", "),
                });
            }
        }
        validate_groups(route, &kinds)?;
        // The options the route gives, checked as the sections themselves are.
        let effective = Rules {
            dedup_window: rules.dedup_window,
            builds: route.builds(&rules.builds).into_owned(),
            agents: route.agents(&rules.agents).into_owned(),
            bitbucket: route.bitbucket(&rules.bitbucket).into_owned(),
            routes: Vec::new(),
        };
        effective
            .validate_sections()
            .map_err(|source| RouteError::Rules {
                route: name.clone(),
                source,
            })?;
    }
    Ok(())
}

/// `group_by`, `group_wait` and `group_interval` of one route.
fn validate_groups(route: &Route, kinds: &BTreeSet<RouteKind>) -> Result<(), RouteError> {
    let name = || route.name.clone();
    let agents_only = kinds.iter().all(|kind| *kind == RouteKind::Agent);
    if let Some(field) = route.group_by.iter().find(|field| {
        field.is_empty()
            || !(GROUP_FIELDS.contains(&field.as_str())
                || route.labels.contains_key(field.as_str())
                || (agents_only && !field.contains('=')))
    }) {
        return Err(RouteError::GroupBy {
            route: name(),
            field: field.clone(),
        });
    }
    if let Some(min) = route.min_connected {
        let why = if !route.groups() {
            Some("only a route with group_by has it (a pool is a group of agents)")
        } else if !agents_only {
            Some("only a route only for agents has it (add kinds = [\"agent\"] or agent_meta)")
        } else if min == 0 {
            Some("must be at least 1")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(RouteError::GroupTiming {
                route: name(),
                field: "min_connected",
                why,
            });
        }
    }
    // Ten years, as the rules' other durations.
    const LONGEST: Duration = Duration::from_secs(10 * 366 * 24 * 3600);
    for (field, given) in [
        ("group_wait", route.group_wait),
        ("group_interval", route.group_interval),
    ] {
        let Some(duration) = given else { continue };
        if !route.groups() {
            return Err(RouteError::NotGrouped {
                route: name(),
                field,
            });
        }
        if duration > LONGEST {
            return Err(RouteError::GroupTiming {
                route: name(),
                field,
                why: "longer than ten years",
            });
        }
        if field == "group_interval" && duration.is_zero() {
            return Err(RouteError::GroupTiming {
                route: name(),
                field,
                why: "must be more than 0s",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An org's routes (payments, spot-fleet, docs, web-experiments, web).
    const EXAMPLE: &str = include_str!("../tests/fixtures/routes.toml");

    #[derive(Deserialize)]
    struct Config {
        routes: Vec<Route>,
    }

    fn example() -> Vec<Route> {
        toml::from_str::<Config>(EXAMPLE).unwrap().routes
    }

    fn build<'a>(pipeline: &'a str, branch: &'a str) -> Subject<'a> {
        Subject {
            source_id: "bk",
            kind: RouteKind::Build,
            pipeline: Some(pipeline),
            branch: Some(branch),
            repository: Some("git@github.com:acme/payments.git"),
            agent_meta: &[],
        }
    }

    fn agent(meta: &[String]) -> Subject<'_> {
        Subject {
            source_id: "bk",
            kind: RouteKind::Agent,
            pipeline: None,
            branch: None,
            repository: None,
            agent_meta: meta,
        }
    }

    fn name<'r>(routes: &'r [Route], subject: &Subject<'_>) -> Option<&'r str> {
        route_for(routes, subject).map(|r| r.name.as_str())
    }

    #[test]
    fn the_first_route_whose_every_matcher_matches_is_chosen() {
        let routes = example();
        validate(&routes, &Rules::default()).unwrap();
        assert_eq!(
            name(&routes, &build("payments-api", "main")),
            Some("payments")
        );
        assert_eq!(
            name(&routes, &build("payments-api", "release/2.1")),
            Some("payments")
        );
        // The pipeline matches, the branch does not: no route.
        assert_eq!(name(&routes, &build("payments-api", "feature/x")), None);
        assert_eq!(name(&routes, &build("docs-site", "main")), Some("docs"));
        assert_eq!(name(&routes, &build("search", "main")), None);
        let spot = ["os=linux".to_owned(), "queue=spot-a".to_owned()];
        let metal = ["queue=metal".to_owned()];
        assert_eq!(name(&routes, &agent(&spot)), Some("spot-fleet"));
        assert_eq!(name(&routes, &agent(&metal)), None);
        assert_eq!(name(&routes, &agent(&[])), None);
    }

    #[test]
    fn a_matcher_the_subject_has_nothing_for_does_not_match() {
        let routes = vec![Route {
            name: "by-branch".into(),
            branches: vec!["*".into()],
            ..Route::default()
        }];
        // An agent has no branch; the route is not even for agents.
        assert_eq!(name(&routes, &agent(&[])), None);
        let pr = Subject {
            kind: RouteKind::PullRequest,
            branch: Some("feature/x"),
            ..agent(&[])
        };
        assert_eq!(name(&routes, &pr), Some("by-branch"));
        let no_branch = Subject { branch: None, ..pr };
        assert_eq!(name(&routes, &no_branch), None);
    }

    #[test]
    fn every_agent_meta_rule_must_hold() {
        let route = Route {
            name: "linux-spot".into(),
            agent_meta: vec!["queue=spot-*".into(), "os=linux".into()],
            ..Route::default()
        };
        let both = ["queue=spot-b".to_owned(), "os=linux".to_owned()];
        let one = ["queue=spot-b".to_owned(), "os=windows".to_owned()];
        // A value with `=` in it: only the first `=` separates the key.
        let odd = ["queue=spot-=x".to_owned(), "os=linux".to_owned()];
        assert!(route.matches(&agent(&both)));
        assert!(!route.matches(&agent(&one)));
        assert!(route.matches(&agent(&odd)));
    }

    #[test]
    fn kinds_follow_from_the_matchers_unless_given() {
        let kinds = |route: Route| route.kinds().into_iter().collect::<Vec<_>>();
        assert_eq!(kinds(Route::default()), RouteKind::ALL.to_vec());
        let pipelines = Route {
            pipelines: vec!["a".into()],
            ..Route::default()
        };
        assert_eq!(kinds(pipelines), [RouteKind::Build]);
        let repositories = Route {
            repositories: vec!["acme/*".into()],
            ..Route::default()
        };
        assert_eq!(
            kinds(repositories),
            [RouteKind::Build, RouteKind::PullRequest, RouteKind::Branch]
        );
        let given = Route {
            kinds: vec![RouteKind::Agent],
            ..Route::default()
        };
        assert_eq!(kinds(given), [RouteKind::Agent]);
    }

    #[test]
    fn a_route_lays_its_severity_then_its_overrides_over_the_sections() {
        let routes = example();
        let defaults = Rules::default();
        let payments = &routes[0];
        let builds = payments.builds(&defaults.builds);
        assert_eq!(builds.open_after_failures, 2);
        assert_eq!(builds.default_severity, SeverityLevel::Critical);
        assert!(builds.severity.is_empty());
        assert_eq!(builds.scope, defaults.builds.scope);
        let spot = &routes[1];
        let agents = spot.agents(&defaults.agents);
        assert_eq!(agents.grace, Duration::ZERO);
        assert_eq!(agents.severity, defaults.agents.severity);
        assert_eq!(agents.open_on, defaults.agents.open_on);
        // Nothing to lay over: the section itself, not a copy.
        assert!(matches!(spot.builds(&defaults.builds), Cow::Borrowed(_)));
        assert!(!routes[2].builds(&defaults.builds).enabled);
        let critical = Route {
            severity: Some(SeverityLevel::Critical),
            bitbucket: Some(BitbucketOverrides {
                branch_severity: Some(SeverityLevel::Info),
                ..BitbucketOverrides::default()
            }),
            ..Route::default()
        };
        let bitbucket = critical.bitbucket(&defaults.bitbucket);
        assert_eq!(bitbucket.pull_request_severity, SeverityLevel::Critical);
        assert_eq!(bitbucket.branch_severity, SeverityLevel::Info);
    }

    #[test]
    fn a_group_is_the_values_of_its_fields_and_a_missing_one_is_empty() {
        let route = Route {
            group_by: vec!["queue".into(), "team".into(), "pipeline".into()],
            labels: [("team".to_owned(), "ci".to_owned())].into(),
            ..Route::default()
        };
        let meta = ["queue=spot-a".to_owned(), "os=linux".to_owned()];
        let values = route.group_values(&agent(&meta)).unwrap();
        let expected: BTreeMap<String, String> =
            [("queue", "spot-a"), ("team", "ci"), ("pipeline", "")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into();
        assert_eq!(values, expected);
        assert_eq!(Route::default().group_values(&agent(&meta)), None);
        assert_eq!(route.group_wait(), DEFAULT_GROUP_WAIT);
        assert_eq!(route.group_interval(), DEFAULT_GROUP_INTERVAL);
    }

    fn error(toml_text: &str) -> String {
        let routes = toml::from_str::<Config>(toml_text)
            .map_err(|e| e.message().to_owned())
            .map(|c| c.routes);
        match routes {
            Err(message) => message,
            Ok(routes) => validate(&routes, &Rules::default())
                .expect_err("invalid routes pass")
                .to_string(),
        }
    }

    #[test]
    fn each_mistake_gets_its_own_message() {
        let cases = [
            (
                "[[routes]]\npipelines = [\"a\"]",
                "rules.routes[0]: every route needs a name",
            ),
            (
                "[[routes]]\nname = \"a\"\n[[routes]]\nname = \"a\"",
                "rules.routes: two routes are named `a`",
            ),
            (
                "[[routes]]\nname = \"a\"\nbranches = [\"\"]",
                "rules.routes `a`.branches: empty pattern",
            ),
            (
                "[[routes]]\nname = \"a\"\nagent_meta = [\"spot\"]",
                "`spot` is not key=pattern",
            ),
            (
                "[[routes]]\nname = \"a\"\nlabels = { \"team name\" = \"x\" }",
                "rules.routes `a`.labels: a label name must be",
            ),
            (
                "[[routes]]\nname = \"a\"\nagent_meta = [\"queue=spot\"]\n[routes.builds]\nenabled = false",
                "rules.routes `a`.builds: the route is only for agent",
            ),
            (
                "[[routes]]\nname = \"a\"\npipelines = [\"p\"]\n[routes.bitbucket]\nbranches = false",
                "rules.routes `a`.bitbucket: the route is only for build",
            ),
            (
                "[[routes]]\nname = \"a\"\n[routes.builds]\nopen_after_failures = 0",
                "rules.routes `a`: rules.builds.open_after_failures: 0 is not between 1",
            ),
            (
                "[[routes]]\nname = \"a\"\n[routes.agents]\nopen_on = [\"agent.connected\"]",
                "rules.routes `a`: rules.agents.open_on: agent.connected resolves",
            ),
            (
                "[[routes]]\nname = \"a\"\npipelines = [\"p\"]\nagent_meta = [\"queue=q\"]",
                "rules.routes `a`: its matchers are of different kinds",
            ),
            (
                "[[routes]]\nname = \"a\"\ngroup_wait = \"20s\"",
                "rules.routes `a`.group_wait: only a route with group_by has it",
            ),
            (
                "[[routes]]\nname = \"a\"\npipelines = [\"p\"]\ngroup_by = [\"queue\"]",
                "rules.routes `a`.group_by: `queue` is not source, kind, pipeline",
            ),
            (
                "[[routes]]\nname = \"a\"\ngroup_by = [\"pipeline\"]\ngroup_interval = \"0s\"",
                "rules.routes `a`.group_interval: must be more than 0s",
            ),
            (
                "[[routes]]\nname = \"a\"\ngroup_by = [\"kind\"]\ngroup_wait = \"4000d\"",
                "rules.routes `a`.group_wait: longer than ten years",
            ),
            (
                "[[routes]]\nname = \"a\"\npipelines = [\"p\"]\ngroup_by = [\"pipeline\"]\nmin_connected = 2",
                "rules.routes `a`.min_connected: only a route only for agents has it",
            ),
            (
                "[[routes]]\nname = \"a\"\nkinds = [\"agent\"]\nmin_connected = 2",
                "rules.routes `a`.min_connected: only a route with group_by has it",
            ),
            (
                "[[routes]]\nname = \"a\"\nkinds = [\"agent\"]\ngroup_by = [\"queue\"]\nmin_connected = 0",
                "rules.routes `a`.min_connected: must be at least 1",
            ),
            (
                "[[routes]]\nname = \"a\"\ngroup_by = [\"pipeline\"]\nmin_connect = 1",
                "unknown field `min_connect`",
            ),
            (
                "[[routes]]\nname = \"a\"\n[routes.agents]\nscope = \"pipeline\"",
                "unknown field `scope`",
            ),
            (
                "[[routes]]\nname = \"a\"\nkinds = [\"test\"]",
                "unknown variant `test`",
            ),
        ];
        for (config, expected) in cases {
            let message = error(config);
            assert!(
                message.contains(expected),
                "{config:?}: {message:?} does not say {expected:?}"
            );
        }
    }
}
