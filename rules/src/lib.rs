//! hookfold's incident rules: the pure fold from webhook events to incident events.
//!
//! The processor keeps one [`KeyState`] per Kafka routing key of the webhook topic and one
//! [`PartitionClock`] per partition and, for every record, calls [`fold()`] with them, the
//! parsed record ([`hookfold_events::parse_record`]), where the record came from
//! ([`Cause`]) and the configuration ([`Rules`]). `fold` advances the clock, fires the
//! timers due and [`apply`]s a webhook to its key's state; the processor stores the states
//! and the clock and produces the returned [`IncidentEvent`]s. Nothing here does I/O or
//! reads a clock of the machine: time is the log's (see [`clock`]), so the same records
//! always give the same result, which is what makes replaying the webhook topic safe.
//!
//! The rules themselves are documented for users in `docs/RULES.md`.
//!
//! Modules: [`fold`] (one record: the clock, the timers, the key's state), [`state`] (the
//! per-key state), [`clock`] (the partition's time and timers), [`config`] (the rules'
//! settings), and the rules of each entity: `builds`, `agents`, `bitbucket`; `output`
//! builds incident events and their ids, `glob` the branch patterns; [`routes`] the
//! `[[rules.routes]]` configuration and which route an entity gets; [`groups`] the second
//! stage of grouped routes (members of a group from every partition, one incident).

mod agents;
mod bitbucket;
mod builds;
pub mod clock;
pub mod config;
pub mod fold;
mod glob;
pub mod groups;
mod output;
pub mod routes;
pub mod state;

use hookfold_events::{EventBody, WebhookEvent};
use hookfold_proto::v1::IncidentEvent;

pub use clock::{
    CLOCK_KEY, ClockWrite, PartitionClock, RESERVED_PREFIX, StoredClock, TIMER_PREFIX, TIMER_VALUE,
    read_timer_key,
};
pub use config::{
    AgentRules, BitbucketRules, BranchSeverity, BuildRules, BuildScope, MAX_OPEN_AFTER_FAILURES,
    Rules, RulesError, SeverityLevel,
};
pub use fold::{Record, States, fold};
pub use glob::matches as branch_pattern_matches;
pub use groups::{GroupRecord, GroupStage, GroupState, GroupStates, HeldChanges, Position};
pub use routes::{Route, RouteKind, Subject};
pub use state::{KeyState, OpenIncidentView, STATE_FORMAT_VERSION, StoredTime};

/// Where the webhook record being applied came from; copied into every output's `cause`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Cause {
    /// Input topic, partition and offset of the record.
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's `ce_id` (the same as the parsed event's `id`).
    pub ce_id: String,
}

/// Folds one webhook event into its routing key's state, without the partition's clock:
/// timers it arms are left in the state for [`fold()`] to fire (use that, unless the rules
/// have no timers: `rules.agents.grace = "0s"` and no `resolve_after`).
///
/// Returns the new state and the incident events to produce, in order (possibly none).
/// Never fails and never panics on any input: events no rule uses, stale events and repeated
/// deliveries return the state with at most the event's `ce_id` remembered, and no outputs.
pub fn apply(
    state: KeyState,
    event: &WebhookEvent,
    cause: &Cause,
    rules: &Rules,
) -> (KeyState, Vec<IncidentEvent>) {
    let mut state = state;
    if rules.dedup_window > 0 && state.seen.contains(&event.id) {
        return (state, Vec::new());
    }
    state.seen.insert(&event.id, rules.dedup_window);

    let input = output::Input {
        event,
        cause,
        route: None,
        group: None,
    };
    let source_id = event.source_id.as_str();
    let mut outputs = Vec::new();
    match &event.body {
        EventBody::Build(build) => {
            let subject = routes::build_subject(source_id, &build.pipeline, &build.build);
            let route = rules.route(&subject);
            let group = route.and_then(|r| r.group_values(&subject));
            let input = input.routed(route, group.as_ref());
            let builds = rules.builds_under(route);
            builds::apply_build(&mut state, &input, build, &builds, &mut outputs)
        }
        EventBody::Job(job) => {
            let subject = routes::build_subject(source_id, &job.pipeline, &job.build);
            let route = rules.route(&subject);
            let group = route.and_then(|r| r.group_values(&subject));
            let input = input.routed(route, group.as_ref());
            let builds = rules.builds_under(route);
            builds::apply_job(&mut state, &input, job, &builds, &mut outputs)
        }
        EventBody::Agent(agent) => {
            let subject = routes::agent_subject(source_id, &agent.agent);
            let route = rules.route(&subject);
            let group = route.and_then(|r| r.group_values(&subject));
            let input = input.routed(route, group.as_ref());
            let agents = rules.agents_under(route);
            agents::apply_agent(&mut state, &input, agent, &agents, &mut outputs)
        }
        EventBody::PullRequest(pull_request) => {
            bitbucket::apply_pull_request(&mut state, &input, pull_request, rules, &mut outputs)
        }
        EventBody::Push(push) => {
            bitbucket::apply_push(&mut state, &input, push, rules, &mut outputs)
        }
        // Test Engine's tests: kept in the log, folded by no rule yet (issue 26).
        EventBody::Test(_) | EventBody::Ping | EventBody::Unknown => {}
    }
    (state, outputs)
}

/// Dedup keys (also the incident topic's record keys), exactly as documented in the design.
pub mod dedup_key {
    pub fn pipeline_branch(source_id: &str, slug: &str, branch: &str) -> String {
        format!("buildkite/{source_id}/pipeline/{slug}/branch/{branch}")
    }

    pub fn pipeline(source_id: &str, slug: &str) -> String {
        format!("buildkite/{source_id}/pipeline/{slug}")
    }

    pub fn agent(source_id: &str, agent_name: &str) -> String {
        format!("buildkite/{source_id}/agent/{agent_name}")
    }

    pub fn pull_request(source_id: &str, full_name: &str, id: u64) -> String {
        format!("bitbucket/{source_id}/repo/{full_name}/pr/{id}")
    }

    pub fn branch(source_id: &str, full_name: &str, branch: &str) -> String {
        format!("bitbucket/{source_id}/repo/{full_name}/branch/{branch}")
    }
}
