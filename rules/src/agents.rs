//! Buildkite agents, matched by name: a restarted agent gets a new id but keeps its name.

use hookfold_events::{AgentAction, AgentEvent, Entity, entity_key};
use hookfold_proto::v1::{EntityKind, IncidentEvent, ResolutionReason};

use crate::config::AgentRules;
use crate::dedup_key;
use crate::output::{Description, Input};
use crate::state::{KeyState, MAX_LIVE_AGENT_IDS, MAX_SUPERSEDED_AGENT_IDS};

fn describe(event: &AgentEvent) -> Description {
    let agent = &event.agent;
    let mut description = Description::new(EntityKind::Agent, &agent.id, &agent.name);
    description.detail("agent_id", Some(&agent.id));
    description.detail("agent_name", Some(&agent.name));
    description.detail("agent_hostname", agent.hostname.as_deref());
    description.detail("agent_version", agent.version.as_deref());
    description.detail("agent_ip", agent.ip_address.as_deref());
    description.detail("connection_state", agent.connection_state.as_deref());
    description.link("agent", agent.web_url.as_deref());
    description
}

/// "Agent ci-1 was lost (host ip-10-0-1-17)".
fn problem_summary(event_name: &str, event: &AgentEvent) -> String {
    let what = match event.action {
        AgentAction::Lost => "was lost".to_owned(),
        AgentAction::Disconnected => "disconnected".to_owned(),
        AgentAction::Stopped => "stopped".to_owned(),
        AgentAction::Stopping => "is stopping".to_owned(),
        AgentAction::Blocked => "was blocked".to_owned(),
        AgentAction::Connected => format!("sent {event_name}"),
    };
    match event.agent.hostname.as_deref() {
        Some(host) if !host.is_empty() => {
            format!("Agent {} {what} (host {host})", event.agent.name)
        }
        _ => format!("Agent {} {what}", event.agent.name),
    }
}

pub(crate) fn apply_agent(
    state: &mut KeyState,
    input: &Input<'_>,
    event: &AgentEvent,
    rules: &AgentRules,
    out: &mut Vec<IncidentEvent>,
) {
    let agent = &event.agent;
    // `agent.connected` always resolves, even if (invalidly) listed in `open_on`.
    let connected = event.action == AgentAction::Connected;
    let opens = !connected && rules.open_on.contains(&input.event.name);
    if !rules.enabled || !(connected || opens) {
        return;
    }
    let source_id = &input.event.source_id;
    let routing = entity_key(source_id, Entity::Agent(&agent.name));
    if let Some(known) = state.agents.get(&routing) {
        // An instance that a later `agent.connected` replaced: whatever it reports now
        // is old news about a process that no longer exists.
        if known.superseded_ids.contains(&agent.id) {
            return;
        }
    }
    let agent_state = state.agents.entry(routing).or_default();
    let occurred_at = input.event.time;

    if connected {
        for id in std::mem::take(&mut agent_state.live_ids) {
            if id != agent.id && !agent_state.superseded_ids.contains(&id) {
                agent_state.superseded_ids.push_back(id);
            }
        }
        while agent_state.superseded_ids.len() > MAX_SUPERSEDED_AGENT_IDS {
            agent_state.superseded_ids.pop_front();
        }
        agent_state.live_ids.push(agent.id.clone());
        if let Some(open) = agent_state.open.take() {
            let mut description = describe(event);
            description.summary = format!("Agent {} connected again", agent.name);
            out.push(input.resolve(
                open,
                ResolutionReason::AgentConnected,
                occurred_at,
                description,
            ));
        }
        return;
    }

    if !agent_state.live_ids.contains(&agent.id) {
        agent_state.live_ids.push(agent.id.clone());
        if agent_state.live_ids.len() > MAX_LIVE_AGENT_IDS {
            agent_state.live_ids.remove(0);
        }
    }
    let mut description = describe(event);
    description.summary = problem_summary(&input.event.name, event);
    match &mut agent_state.open {
        Some(open) => out.push(input.update(open, rules.severity, occurred_at, description)),
        None => {
            let key = dedup_key::agent(source_id, &agent.name);
            let (open, created) = input.create(key, rules.severity, occurred_at, description);
            agent_state.open = Some(open);
            out.push(created);
        }
    }
}
