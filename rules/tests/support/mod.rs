//! Webhook bodies as the senders deliver them, and a tiny processor: parse each record,
//! keep one `KeyState` per routing key and the partition's clock, and fold
//! (`hookfold_rules::fold`, the processor's own step).
#![allow(dead_code)] // each test crate uses a different part

use std::collections::BTreeMap;

use hookfold_events::parse;
use hookfold_proto::cloudevents::CloudEventHeaders;
use hookfold_proto::prost_types::Timestamp;
use hookfold_proto::v1::{IncidentEvent, ResolutionReason, Severity, Transition};
use hookfold_rules::{Cause, KeyState, PartitionClock, Record, Rules, fold};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;

pub const SOURCE: &str = "acme";
pub const BASE_TIME: OffsetDateTime = datetime!(2026-11-20 10:00:00 UTC);

/// One webhook record: ce_type, body, and optionally a fixed ce_id / time / offset (else the
/// harness derives them from the record's position).
#[derive(Debug, Clone)]
pub struct Hook {
    pub ce_type: String,
    pub body: Value,
    pub raw_body: Option<Vec<u8>>,
    pub ce_id: Option<String>,
    pub time: Option<OffsetDateTime>,
    pub offset: Option<i64>,
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

impl Hook {
    pub fn new(ce_type: &str, body: Value) -> Self {
        Self {
            ce_type: ce_type.into(),
            body,
            raw_body: None,
            ce_id: None,
            time: None,
            offset: None,
        }
    }

    /// A record whose body is a file from the events crate's fixtures, byte for byte.
    pub fn fixture(ce_type: &str, path: &str) -> Self {
        // Cargo sets CARGO_MANIFEST_DIR when it runs the test; the build-time value is
        // another checkout's when a shared target directory's binary is reused.
        let dir = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
        let path = format!("{dir}/../events/tests/fixtures/{path}");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Self {
            raw_body: Some(bytes),
            ..Self::new(ce_type, Value::Null)
        }
    }

    pub fn id(mut self, ce_id: &str) -> Self {
        self.ce_id = Some(ce_id.into());
        self
    }

    pub fn at(mut self, time: OffsetDateTime) -> Self {
        self.time = Some(time);
        self
    }

    /// Sets a field inside the body, by a JSON pointer to an existing parent.
    pub fn with(mut self, pointer: &str, value: Value) -> Self {
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        let target = if parent.is_empty() {
            &mut self.body
        } else {
            self.body.pointer_mut(parent).unwrap()
        };
        target.as_object_mut().unwrap().insert(field.into(), value);
        self
    }

    /// Removes a field from the body.
    pub fn without(mut self, pointer: &str) -> Self {
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        let target = if parent.is_empty() {
            &mut self.body
        } else {
            self.body.pointer_mut(parent).unwrap()
        };
        target.as_object_mut().unwrap().remove(field);
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.raw_body
            .clone()
            .unwrap_or_else(|| serde_json::to_vec(&self.body).unwrap())
    }
}

fn pipeline_json(slug: &str) -> Value {
    json!({
        "id": format!("pipeline-{slug}"),
        "slug": slug,
        "name": slug.to_uppercase(),
        "web_url": format!("https://buildkite.com/acme-inc/{slug}"),
        "repository": "git@github.com:acme-inc/web.git",
    })
}

fn build_json(slug: &str, number: u64, state: &str, branch: &str) -> Value {
    json!({
        "id": format!("build-{slug}-{number}"),
        "number": number,
        "state": state,
        "blocked": false,
        "branch": branch,
        "commit": format!("{number:0>4}c0ffee"),
        "message": format!("Change number {number}\n\nWith a longer body."),
        "web_url": format!("https://buildkite.com/acme-inc/{slug}/builds/{number}"),
        "author": {"username": "jdoe", "name": "Jane Doe", "email": "jane@acme.example"},
        "creator": {"id": "u-1", "name": "Build Bot", "email": "bot@acme.example"},
        "source": "webhook",
        "created_at": "2026-11-20T09:00:00.000Z",
        "started_at": "2026-11-20T09:00:05.000Z",
        "finished_at": null,
    })
}

/// `build.finished` of pipeline `web`, with `finished_at` left out (the record's time is used).
pub fn build(number: u64, state: &str, branch: &str) -> Hook {
    build_of("web", number, state, branch)
}

pub fn build_of(slug: &str, number: u64, state: &str, branch: &str) -> Hook {
    Hook::new(
        "buildkite.build.finished",
        json!({
            "event": "build.finished",
            "build": build_json(slug, number, state, branch),
            "pipeline": pipeline_json(slug),
            "sender": {"id": "u-1", "name": "Jane Doe"},
        }),
    )
}

/// Another `build.*` event (running, failing, ...).
pub fn build_event(event: &str, number: u64, state: &str, branch: &str) -> Hook {
    let mut hook = build(number, state, branch);
    hook.ce_type = format!("buildkite.{event}");
    hook.with("/event", json!(event))
}

/// `job.finished` of a job of build `number` of pipeline `web`.
pub fn job(number: u64, branch: &str, job_id: &str, state: &str, exit_status: Option<i64>) -> Hook {
    Hook::new(
        "buildkite.job.finished",
        json!({
            "event": "job.finished",
            "job": {
                "id": job_id,
                "type": "script",
                "name": format!("Job {job_id}"),
                "step_key": job_id,
                "state": state,
                "web_url": format!("https://buildkite.com/acme-inc/web/builds/{number}#{job_id}"),
                "exit_status": exit_status,
                "soft_failed": false,
                "finished_at": null,
            },
            "build": build_json("web", number, "failing", branch),
            "pipeline": pipeline_json("web"),
            "sender": {"id": "u-1", "name": "Jane Doe"},
        }),
    )
}

/// `agent.<action>` of the agent `name` whose current process has id `id`.
pub fn agent(action: &str, id: &str, name: &str) -> Hook {
    let state = match action {
        "connected" => "connected",
        "lost" => "lost",
        _ => "disconnected",
    };
    Hook::new(
        &format!("buildkite.agent.{action}"),
        json!({
            "event": format!("agent.{action}"),
            "agent": {
                "id": id,
                "name": name,
                "connection_state": state,
                "hostname": format!("host-{name}"),
                "ip_address": "10.0.0.7",
                "version": "3.87.0",
                "web_url": format!("https://buildkite.com/organizations/acme-inc/agents/{id}"),
                "meta_data": ["queue=default"],
            },
            "sender": {"id": "u-1", "name": "Jane Doe"},
        }),
    )
}

pub const REPO: &str = "acme/web";

/// `pullrequest:<action>` of pull request `id` in `acme/web` from `branch` at `commit`.
pub fn pull_request(action: &str, id: u64, branch: &str, commit: &str) -> Hook {
    let state = match action {
        "fulfilled" => "MERGED",
        "rejected" => "DECLINED",
        _ => "OPEN",
    };
    let endpoint = |branch: &str, commit: &str| {
        json!({
            "branch": {"name": branch},
            "commit": {"hash": commit, "type": "commit"},
            "repository": {"full_name": REPO, "name": "web", "type": "repository"},
        })
    };
    Hook::new(
        &format!("bitbucket.pullrequest:{action}"),
        json!({
            "pullrequest": {
                "id": id,
                "title": format!("Change {id}"),
                "state": state,
                "source": endpoint(branch, commit),
                "destination": endpoint("main", "aaaaaaaaaaaa"),
                "author": {"display_name": "Jane Doe", "nickname": "jane"},
                "merge_commit": if action == "fulfilled" { json!({"hash": "ffffffffffff"}) } else { Value::Null },
                "closed_by": Value::Null,
                "links": {"html": {"href": format!("https://bitbucket.org/{REPO}/pull-requests/{id}")}},
                "created_on": "2026-11-20T09:00:00.000000+00:00",
                "updated_on": null,
            },
            "repository": {"full_name": REPO, "name": "web", "type": "repository"},
            "actor": {"display_name": "Jane Doe"},
        }),
    )
}

/// One ref change of a push: `(kind, name, Some(head))` for a new or moved ref, or
/// `(kind, name, None)` for a deleted one.
pub fn push(changes: &[(&str, &str, Option<&str>)]) -> Hook {
    let changes: Vec<Value> = changes
        .iter()
        .map(|(kind, name, head)| match head {
            Some(head) => json!({
                "new": {
                    "type": kind,
                    "name": name,
                    "target": {
                        "type": "commit",
                        "hash": head,
                        "date": "2026-11-20T09:30:00+00:00",
                        "message": format!("Work on {name}\n"),
                        "author": {"raw": "Jane Doe <jane@acme.example>", "user": {"display_name": "Jane Doe"}},
                        "links": {"html": {"href": format!("https://bitbucket.org/{REPO}/commits/{head}")}},
                    },
                    "links": {"html": {"href": format!("https://bitbucket.org/{REPO}/branch/{name}")}},
                },
                "old": null,
                "created": false, "closed": false, "forced": false, "truncated": false,
            }),
            None => json!({
                "new": null,
                "old": {"type": kind, "name": name, "target": {"hash": "0000000000000000000000000000000000000000"}},
                "created": false, "closed": true, "forced": false, "truncated": false,
            }),
        })
        .collect();
    Hook::new(
        "bitbucket.repo:push",
        json!({
            "push": {"changes": changes},
            "repository": {"full_name": REPO, "name": "web", "type": "repository",
                           "links": {"html": {"href": format!("https://bitbucket.org/{REPO}")}}},
            "actor": {"display_name": "Jane Doe"},
        }),
    )
}

/// A `hookfold.tick` at `time`, as a step of a scenario ([`Run::apply`] folds it as a tick).
pub fn tick(time: OffsetDateTime) -> Hook {
    Hook::new(hookfold_proto::cloudevents::TICK_TYPE, Value::Null).at(time)
}

/// `BASE_TIME` plus `minutes` (and `seconds`).
pub fn at(minutes: i64, seconds: i64) -> OffsetDateTime {
    BASE_TIME + time::Duration::minutes(minutes) + time::Duration::seconds(seconds)
}

pub fn ping() -> Hook {
    Hook::new(
        "buildkite.ping",
        json!({"event": "ping", "service": {"id": "s"}, "sender": {"name": "x"}}),
    )
}

pub fn unknown() -> Hook {
    Hook::new("buildkite.build.exploded", json!({"whatever": true}))
}

/// The default rules, except that agent incidents open at once (`grace = "0s"`): for tests
/// of what opens and resolves an agent incident rather than when.
pub fn no_grace() -> Rules {
    let mut rules = Rules::default();
    rules.agents.grace = std::time::Duration::ZERO;
    rules
}

/// The processor in miniature, for one partition: parse, route by routing key, fold.
pub struct Run {
    pub rules: Rules,
    pub states: BTreeMap<Vec<u8>, KeyState>,
    pub clock: PartitionClock,
    /// Position of the next webhook (ticks take none, so adding ticks changes no webhook's
    /// derived `ce_id`, time or offset).
    pub position: i64,
    /// The input partition the records are of (their `cause`).
    pub partition: i32,
    /// The last webhook applied, parsed, and its cause (for what the processor derives from
    /// it besides the fold: a pool's presence).
    pub last: Option<(hookfold_events::WebhookEvent, Cause)>,
}

impl Run {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            states: BTreeMap::new(),
            clock: PartitionClock::default(),
            position: 0,
            partition: 0,
            last: None,
        }
    }

    /// The time a hook is stamped with: its own, or one minute per position after BASE_TIME.
    pub fn time_of(&self, hook: &Hook) -> OffsetDateTime {
        hook.time
            .unwrap_or(BASE_TIME + time::Duration::minutes(self.position))
    }

    pub fn apply(&mut self, hook: &Hook) -> Vec<IncidentEvent> {
        if hook.ce_type == hookfold_proto::cloudevents::TICK_TYPE {
            return self.tick(self.time_of(hook));
        }
        let position = self.position;
        let time = self.time_of(hook);
        self.position += 1;
        let ce_id = hook
            .ce_id
            .clone()
            .unwrap_or_else(|| format!("ce-{position}"));
        let headers = CloudEventHeaders {
            id: ce_id.clone(),
            source: format!("/sources/{SOURCE}"),
            ty: hook.ce_type.clone(),
            time: rfc3339(time),
            content_type: "application/json".into(),
        };
        let event =
            parse(&headers, &hook.bytes()).unwrap_or_else(|e| panic!("{}: {e}", hook.ce_type));
        let key = event
            .routing_key()
            .unwrap_or_else(|| format!("{SOURCE}/org"));
        let cause = Cause {
            topic: "hookfold.webhooks".into(),
            partition: self.partition,
            offset: hook.offset.unwrap_or(position),
            ce_id,
        };
        let record = Record::Webhook {
            key: key.as_bytes(),
            event: &event,
        };
        let Ok(outputs) = fold(
            &mut self.clock,
            &mut self.states,
            record,
            &cause,
            &self.rules,
        );
        self.last = Some((event, cause));
        outputs
    }

    /// A `hookfold.tick` at `time`.
    pub fn tick(&mut self, time: OffsetDateTime) -> Vec<IncidentEvent> {
        self.last = None;
        let cause = Cause {
            topic: "hookfold.webhooks".into(),
            partition: self.partition,
            offset: -1,
            ce_id: format!("tick-{time}"),
        };
        let record = Record::Tick { time };
        let Ok(outputs) = fold(
            &mut self.clock,
            &mut self.states,
            record,
            &cause,
            &self.rules,
        );
        outputs
    }

    /// The states by routing key, as text.
    pub fn states_by_key(&self) -> BTreeMap<String, KeyState> {
        self.states
            .iter()
            .map(|(key, state)| (String::from_utf8_lossy(key).into_owned(), state.clone()))
            .collect()
    }
}

/// "created error buildkite/acme/pipeline/web/branch/main",
/// "resolved:build_passed critical ...": what the scenario tables compare.
pub fn brief(event: &IncidentEvent) -> String {
    let transition = match Transition::try_from(event.transition) {
        Ok(Transition::Created) => "created".to_owned(),
        Ok(Transition::Updated) => "updated".to_owned(),
        Ok(Transition::Resolved) => {
            let reason = ResolutionReason::try_from(event.resolution_reason)
                .map(|r| {
                    r.as_str_name()
                        .trim_start_matches("RESOLUTION_REASON_")
                        .to_lowercase()
                })
                .unwrap_or_else(|_| "?".into());
            format!("resolved:{reason}")
        }
        _ => "?".to_owned(),
    };
    let severity = Severity::try_from(event.severity)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("SEVERITY_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "?".into());
    format!("{transition} {severity} {}", event.dedup_key)
}

/// Checks the lifecycle of every incident in `outputs` (in order): CREATED only on a key
/// with nothing open; UPDATED and RESOLVED only for the open incident of their key, with
/// sequence numbers counting up by one and created_at unchanged; a resolution reason on
/// RESOLVED only; event ids unique. Returns the incidents still open, by dedup key.
pub fn check_lifecycle(outputs: &[IncidentEvent]) -> Result<BTreeMap<String, String>, String> {
    let mut open: BTreeMap<String, (String, u32, Option<Timestamp>)> = BTreeMap::new();
    let mut event_ids = std::collections::BTreeSet::new();
    for event in outputs {
        if !event_ids.insert(event.event_id.clone()) {
            return Err(format!("event_id {} repeated", event.event_id));
        }
        if event.event_id.len() != 32 || event.incident_id.len() != 32 {
            return Err(format!("ids are not 32 hex characters: {event:?}"));
        }
        let transition = Transition::try_from(event.transition).map_err(|e| e.to_string())?;
        let reason =
            ResolutionReason::try_from(event.resolution_reason).map_err(|e| e.to_string())?;
        if (transition == Transition::Resolved) != (reason != ResolutionReason::Unspecified) {
            return Err(format!("reason {reason:?} on {transition:?}"));
        }
        let created_at = event.created_at;
        match transition {
            Transition::Created => {
                if let Some((id, _, _)) = open.get(&event.dedup_key) {
                    return Err(format!("{} created while {id} is open", event.dedup_key));
                }
                if event.sequence != 0 || event.created_at != event.occurred_at {
                    return Err(format!("bad CREATED {event:?}"));
                }
                open.insert(
                    event.dedup_key.clone(),
                    (event.incident_id.clone(), 0, created_at),
                );
            }
            Transition::Updated | Transition::Resolved => {
                let Some((id, sequence, opened_at)) = open.get_mut(&event.dedup_key) else {
                    return Err(format!(
                        "{transition:?} of {} with nothing open",
                        event.dedup_key
                    ));
                };
                if *id != event.incident_id
                    || event.sequence != *sequence + 1
                    || *opened_at != created_at
                {
                    return Err(format!("{transition:?} does not continue {id}: {event:?}"));
                }
                *sequence += 1;
                if transition == Transition::Resolved {
                    open.remove(&event.dedup_key);
                }
            }
            Transition::Unspecified => return Err("unspecified transition".into()),
        }
    }
    Ok(open
        .into_iter()
        .map(|(key, (id, _, _))| (key, id))
        .collect())
}

/// The incidents open in all states, by dedup key.
pub fn open_in_states(states: &BTreeMap<String, KeyState>) -> BTreeMap<String, String> {
    states
        .values()
        .flat_map(|state| state.open_incidents())
        .map(|open| (open.dedup_key.to_owned(), open.incident_id.to_owned()))
        .collect()
}
