//! Buildkite agents, matched by name: a restarted agent gets a new id but keeps its name.

//!
//! With a grace period, an opening event does not create its incident: it leaves a
//! [`PendingIncident`] (its CREATED event already built, so its ids are those of the opening
//! webhook) that an `agent.connected` cancels and the partition's clock turns into the
//! incident at its deadline ([`fire`]). With `resolve_after`, an open incident carries an
//! [`Expiry`] that the clock resolves as EXPIRED.

use hookfold_events::{AgentAction, AgentEvent, Entity, entity_key};
use hookfold_proto::Message as _;
use hookfold_proto::v1::{EntityKind, IncidentEvent, ResolutionReason};

use crate::config::AgentRules;
use crate::dedup_key;
use crate::output::{Description, Input, Origin};
use crate::state::{
    AgentState, Expiry, KeyState, MAX_LIVE_AGENT_IDS, MAX_SUPERSEDED_AGENT_IDS, OpenIncident,
    PendingIncident, StoredTime,
};

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
        // Back within the grace period: nothing happened, as far as anyone is paged.
        agent_state.pending = None;
        agent_state.expiry = None;
        if let Some(open) = agent_state.open.take() {
            let mut description = describe(event);
            description.summary = format!("Agent {} connected again", agent.name);
            out.push(input.by().resolve(
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
        Some(open) => out.push(
            input
                .by()
                .update(open, rules.severity, occurred_at, description),
        ),
        // Already waiting out the grace of an earlier opening event: that one's incident,
        // with its time, is what opens if the agent does not come back.
        None if agent_state.pending.is_some() => {}
        None => {
            let key = dedup_key::agent(source_id, &agent.name);
            let (open, created) = input
                .by()
                .create(key, rules.severity, occurred_at, description);
            if rules.grace.is_zero() {
                open_now(agent_state, open, input.origin(), rules.resolve_after);
                out.push(created);
            } else {
                agent_state.pending = Some(PendingIncident {
                    deadline: StoredTime::from(occurred_at).plus(rules.grace),
                    open,
                    created: created.encode_to_vec(),
                    origin: input.origin(),
                    resolve_after: rules.resolve_after,
                });
            }
        }
    }
}

/// Makes `open` the agent's open incident, with its expiry if `resolve_after` is set (by
/// the route the incident opened under).
fn open_now(
    agent: &mut AgentState,
    open: OpenIncident,
    origin: Origin,
    resolve_after: Option<std::time::Duration>,
) {
    agent.expiry = resolve_after.map(|after| Expiry {
        at: open.created_at.plus(after),
        origin,
    });
    agent.open = Some(open);
}

/// Fires the agents' timers due at `now` (the deadline being fired; the fold fires the
/// partition's deadlines one at a time, in order): a grace period that ran out creates its
/// incident, an expiry resolves one. Afterwards no deadline of `state` is at or before
/// `now`. What a timer does was decided when it was armed (by the route
/// of that time), so it needs no rules now.
pub(crate) fn fire(state: &mut KeyState, now: StoredTime, out: &mut Vec<IncidentEvent>) {
    for (routing, agent) in &mut state.agents {
        if let Some(pending) = agent.pending.take_if(|pending| pending.deadline <= now) {
            // The CREATED event was encoded by `apply_agent`; one that does not decode is a
            // state this code did not write, and there is nothing to emit for it.
            if let Ok(created) = IncidentEvent::decode(pending.created.as_slice()) {
                open_now(agent, pending.open, pending.origin, pending.resolve_after);
                out.push(created);
            }
        }
        let Some(expiry) = agent.expiry.take_if(|expiry| expiry.at <= now) else {
            continue;
        };
        let Some(open) = agent.open.take() else {
            continue;
        };
        let prefix = format!("{}/agent/", expiry.origin.source_id);
        let name = routing.strip_prefix(&prefix).unwrap_or(routing);
        let id = agent.live_ids.last().map_or("", String::as_str);
        let mut description = Description::new(EntityKind::Agent, id, name);
        description.detail("agent_name", Some(name));
        description.detail("agent_id", Some(id));
        // The expiry was set `resolve_after` after the creation.
        let after = std::time::Duration::try_from(
            expiry.at.to_offset_date_time() - open.created_at.to_offset_date_time(),
        )
        .ok()
        .map(|after| humantime::format_duration(after).to_string());
        description.detail("expired_after", after.as_deref());
        description.summary = match &after {
            Some(after) => format!("Agent {name} did not come back within {after}: expired"),
            None => format!("Agent {name} did not come back: expired"),
        };
        out.push(expiry.origin.by().resolve(
            open,
            ResolutionReason::Expired,
            expiry.at.to_offset_date_time(),
            description,
        ));
    }
}
