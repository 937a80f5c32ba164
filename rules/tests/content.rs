//! What is inside the incident events (summary, entity, times, links, details, ids, cause),
//! the state encoding, and the configuration format.

mod support;

use std::collections::BTreeMap;

use hookfold_proto::json::incident_to_json;
use hookfold_proto::prost_types::Timestamp;
use hookfold_proto::v1::{EntityKind, IncidentEvent, ResolutionReason, Severity, Transition};
use hookfold_proto::{Message, incident_event_headers};
use hookfold_rules::{KeyState, Rules, RulesError, STATE_FORMAT_VERSION, SeverityLevel};
use serde_json::json;
use support::*;
use time::macros::datetime;

fn ts(at: time::OffsetDateTime) -> Option<Timestamp> {
    Some(hookfold_proto::timestamp::from_offset_date_time(at))
}

fn only(mut outputs: Vec<IncidentEvent>) -> IncidentEvent {
    assert_eq!(outputs.len(), 1, "{outputs:#?}");
    outputs.remove(0)
}

fn details(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn links(event: &IncidentEvent) -> Vec<(String, String)> {
    event
        .links
        .iter()
        .map(|l| (l.rel.clone(), l.url.clone()))
        .collect()
}

#[test]
fn failed_build_with_its_failed_job() {
    let mut run = Run::new(Rules::default());
    assert!(
        run.apply(&Hook::fixture(
            "buildkite.job.finished",
            "buildkite/job-finished-failed.json"
        ))
        .is_empty()
    );
    let created = only(
        run.apply(
            &Hook::fixture(
                "buildkite.build.finished",
                "buildkite/build-finished-failed.json",
            )
            .id("ce-build-42"),
        ),
    );

    assert_eq!(created.transition, Transition::Created as i32);
    assert_eq!(created.dedup_key, "buildkite/acme/pipeline/web/branch/main");
    assert_eq!(created.sequence, 0);
    assert_eq!(created.severity, Severity::Error as i32);
    assert_eq!(created.summary, "Build #42 of Web failed on main");
    assert_eq!(created.source_id, "acme");
    let entity = created.entity.clone().unwrap();
    assert_eq!(
        (entity.kind, entity.id.as_str(), entity.name.as_str()),
        (EntityKind::Pipeline as i32, "web", "Web")
    );
    // finished_at of the payload, not the record's time.
    assert_eq!(
        created.occurred_at,
        ts(datetime!(2026-11-20 10:03:27.512 UTC))
    );
    assert_eq!(created.created_at, created.occurred_at);
    assert_eq!(
        links(&created),
        vec![
            (
                "build".into(),
                "https://buildkite.com/acme-inc/web/builds/42".into()
            ),
            (
                "pipeline".into(),
                "https://buildkite.com/acme-inc/web".into()
            ),
            (
                "job".into(),
                "https://buildkite.com/acme-inc/web/builds/42#b63254c0-3271-4a98-8270-7cfbd6c2f14e"
                    .into()
            ),
        ]
    );
    assert_eq!(
        created.details,
        details(&[
            ("author", "Jane Doe"),
            ("branch", "main"),
            ("build_number", "42"),
            ("build_state", "failed"),
            ("commit", "1e69a602caef4b1c9b0e6dbb7f4b08d2a8e1f7c3"),
            ("event", "build.finished"),
            ("failed_jobs", ":rspec: RSpec"),
            ("message", "Bump rack to 3.1.8"),
            ("pipeline", "web"),
            ("pipeline_name", "Web"),
        ])
    );
    assert_eq!(
        created.resolution_reason,
        ResolutionReason::Unspecified as i32
    );
    let cause = created.cause.clone().unwrap();
    assert_eq!(cause.topic, "hookfold.webhooks");
    assert_eq!(cause.partition, 0);
    assert_eq!(cause.offset, 1);
    assert_eq!(cause.ce_id, "ce-build-42");
    assert_eq!(cause.ce_type, "buildkite.build.finished");

    let resolved = only(run.apply(&Hook::fixture(
        "buildkite.build.finished",
        "buildkite/build-finished-passed.json",
    )));
    assert_eq!(resolved.transition, Transition::Resolved as i32);
    assert_eq!(resolved.incident_id, created.incident_id);
    assert_ne!(resolved.event_id, created.event_id);
    assert_eq!(resolved.sequence, 1);
    assert_eq!(resolved.summary, "Build #43 of Web passed on main");
    assert_eq!(
        resolved.resolution_reason,
        ResolutionReason::BuildPassed as i32
    );
    assert_eq!(resolved.created_at, created.created_at);
    assert_eq!(resolved.occurred_at, ts(datetime!(2026-11-20 10:21:05 UTC)));
    assert_eq!(
        resolved.details.get("build_number").map(String::as_str),
        Some("43")
    );
    assert!(!resolved.details.contains_key("failed_jobs"));
}

#[test]
fn job_update_lists_the_builds_failed_jobs() {
    let mut run = Run::new(Rules::default());
    run.apply(&job(7, "main", "lint", "failed", Some(1)));
    run.apply(&build(7, "failed", "main"));
    let update = only(
        run.apply(
            &job(7, "main", "rspec", "failed", Some(2))
                .with("/job/finished_at", json!("2026-11-20T11:00:00Z")),
        ),
    );
    assert_eq!(update.transition, Transition::Updated as i32);
    assert_eq!(update.sequence, 1);
    assert_eq!(
        update.summary,
        "Job \"Job rspec\" failed in build #7 of WEB on main"
    );
    assert_eq!(
        update.details.get("failed_jobs").map(String::as_str),
        Some("Job rspec, Job lint")
    );
    assert_eq!(
        update.details.get("job_name").map(String::as_str),
        Some("Job rspec")
    );
    assert_eq!(
        update.details.get("job_state").map(String::as_str),
        Some("failed")
    );
    assert_eq!(
        update.details.get("exit_status").map(String::as_str),
        Some("2")
    );
    assert_eq!(update.occurred_at, ts(datetime!(2026-11-20 11:00:00 UTC)));
    let job_links: Vec<_> = links(&update)
        .into_iter()
        .filter(|(rel, _)| rel == "job")
        .map(|(_, url)| url)
        .collect();
    assert_eq!(
        job_links,
        vec![
            "https://buildkite.com/acme-inc/web/builds/7#rspec",
            "https://buildkite.com/acme-inc/web/builds/7#lint"
        ]
    );
}

#[test]
fn times_fall_back_to_the_record_time() {
    let mut run = Run::new(Rules::default());
    let at = datetime!(2026-12-24 18:30:00.25 UTC);
    let created = only(run.apply(&build(1, "failed", "main").at(at)));
    assert_eq!(created.occurred_at, ts(at));
    assert_eq!(created.created_at, ts(at));
    let later = datetime!(2026-12-25 08:00:00 UTC);
    let resolved = only(run.apply(&build(2, "passed", "main").at(later)));
    assert_eq!(resolved.occurred_at, ts(later));
    assert_eq!(resolved.created_at, ts(at));
}

#[test]
fn long_commit_messages_are_cut_to_their_first_line() {
    let mut run = Run::new(Rules::default());
    let long = format!("\n  {}\nsecond line", "é".repeat(300));
    let created = only(run.apply(&build(1, "failed", "main").with("/build/message", json!(long))));
    let message = &created.details["message"];
    assert_eq!(message.chars().count(), 201);
    assert!(message.starts_with("éé") && message.ends_with('…'));
}

#[test]
fn agent_incident_content() {
    let mut run = Run::new(no_grace());
    let created = only(run.apply(&Hook::fixture(
        "buildkite.agent.lost",
        "buildkite/agent-lost.json",
    )));
    assert_eq!(created.dedup_key, "buildkite/acme/agent/ci-agent-1");
    assert_eq!(
        created.summary,
        "Agent ci-agent-1 was lost (host ip-10-0-1-17)"
    );
    assert_eq!(created.severity, Severity::Warning as i32);
    let entity = created.entity.clone().unwrap();
    assert_eq!(
        (entity.kind, entity.id.as_str(), entity.name.as_str()),
        (
            EntityKind::Agent as i32,
            "0b461f65-e7be-4c80-888a-ef11d81fd971",
            "ci-agent-1"
        )
    );
    assert_eq!(
        created.details,
        details(&[
            ("agent_hostname", "ip-10-0-1-17"),
            ("agent_id", "0b461f65-e7be-4c80-888a-ef11d81fd971"),
            ("agent_ip", "144.132.19.12"),
            ("agent_name", "ci-agent-1"),
            ("agent_version", "3.87.0"),
            ("connection_state", "lost"),
            ("event", "agent.lost"),
        ])
    );
    assert_eq!(
        links(&created),
        vec![("agent".into(), "https://buildkite.com/organizations/acme-inc/agents/0b461f65-e7be-4c80-888a-ef11d81fd971".into())]
    );
    // Agent payloads carry no event time: the record's time is used.
    assert_eq!(created.occurred_at, ts(BASE_TIME));

    let resolved = only(run.apply(&Hook::fixture(
        "buildkite.agent.connected",
        "buildkite/agent-connected.json",
    )));
    assert_eq!(resolved.summary, "Agent ci-agent-1 connected again");
    assert_eq!(
        resolved.entity.unwrap().id,
        "7c2e5d1a-3b4f-4e6a-9c8d-1f2e3a4b5c6d"
    );
    assert_eq!(
        resolved.resolution_reason,
        ResolutionReason::AgentConnected as i32
    );
}

#[test]
fn pull_request_incident_content() {
    let mut run = Run::new(Rules::default());
    let created = only(run.apply(&Hook::fixture(
        "bitbucket.pullrequest:created",
        "bitbucket/pullrequest-created.json",
    )));
    assert_eq!(
        created.dedup_key,
        "bitbucket/acme/repo/lkysow/atlantis-example/pr/16"
    );
    assert_eq!(
        created.summary,
        "Pull request #16 \"main.tf edited online with Bitbucket\" opened by Luke in lkysow/atlantis-example"
    );
    assert_eq!(created.severity, Severity::Info as i32);
    let entity = created.entity.clone().unwrap();
    assert_eq!(
        (entity.kind, entity.id.as_str(), entity.name.as_str()),
        (
            EntityKind::PullRequest as i32,
            "16",
            "main.tf edited online with Bitbucket"
        )
    );
    assert_eq!(
        created.occurred_at,
        ts(datetime!(2019-06-13 13:37:58.1284 UTC))
    );
    assert_eq!(
        links(&created),
        vec![(
            "pull_request".into(),
            "https://bitbucket.org/lkysow/atlantis-example/pull-requests/16".into()
        )]
    );
    assert_eq!(
        created.details,
        details(&[
            ("author", "Luke"),
            ("commit", "1e69a602caef"),
            ("destination_branch", "main"),
            ("event", "pullrequest:created"),
            ("pull_request_id", "16"),
            ("repository", "lkysow/atlantis-example"),
            (
                "source_branch",
                "Luke/maintf-edited-online-with-bitbucket-1560433073473"
            ),
            ("state", "OPEN"),
            ("title", "main.tf edited online with Bitbucket"),
        ])
    );
    let resolved = only(run.apply(&Hook::fixture(
        "bitbucket.pullrequest:fulfilled",
        "bitbucket/pullrequest-fulfilled.json",
    )));
    assert_eq!(
        resolved.summary,
        "Pull request #16 \"main.tf edited online with Bitbucket\" merged in lkysow/atlantis-example"
    );
    assert_eq!(
        resolved.details.get("merge_commit").map(String::as_str),
        Some("981c4a02003b")
    );
    assert_eq!(
        resolved.details.get("closed_by").map(String::as_str),
        Some("Luke")
    );
    assert_eq!(
        resolved.occurred_at,
        ts(datetime!(2019-06-13 13:38:38.142188 UTC))
    );
    assert_eq!(resolved.created_at, created.occurred_at);
}

#[test]
fn branch_incident_content() {
    let mut run = Run::new(Rules::default());
    let created = only(run.apply(&Hook::fixture(
        "bitbucket.repo:push",
        "bitbucket/repo-push.json",
    )));
    assert_eq!(
        created.dedup_key,
        "bitbucket/acme/repo/nfalco79/test-repos/branch/feature/webhook"
    );
    assert_eq!(
        created.summary,
        "Branch feature/webhook pushed to nfalco79/test-repos by Nikolas Falco, not merged yet"
    );
    let entity = created.entity.clone().unwrap();
    assert_eq!(
        (entity.kind, entity.id.as_str()),
        (EntityKind::Branch as i32, "feature/webhook")
    );
    assert_eq!(
        links(&created),
        vec![
            ("branch".into(), "https://bitbucket.org/nfalco79/test-repos/branch/feature/webhook".into()),
            ("commit".into(), "https://bitbucket.org/nfalco79/test-repos/commits/d7f300a32270053bdfd97a6d64113f58202c33e7".into()),
        ]
    );
    assert_eq!(
        created.details,
        details(&[
            ("author", "Nikolas Falco"),
            ("branch", "feature/webhook"),
            ("commit", "d7f300a32270053bdfd97a6d64113f58202c33e7"),
            ("event", "repo:push"),
            ("message", "Test for webhook signature"),
            ("repository", "nfalco79/test-repos"),
        ])
    );
    // A push's commit date is when the commit was written, not pushed: the record time is used.
    assert_eq!(created.occurred_at, ts(BASE_TIME));
}

#[test]
fn ids_are_deterministic_and_distinct() {
    let hooks = [
        push(&[(
            "branch",
            "a",
            Some("1111111111111111111111111111111111111111"),
        )])
        .id("p1"),
        pull_request("created", 1, "a", "111111111111").id("c1"),
        pull_request("fulfilled", 1, "a", "111111111111").id("f1"),
    ];
    let outputs = |hooks: &[Hook]| {
        let mut run = Run::new(Rules::default());
        hooks
            .iter()
            .flat_map(|hook| run.apply(hook))
            .collect::<Vec<_>>()
    };
    let first = outputs(&hooks);
    assert_eq!(
        first,
        outputs(&hooks),
        "replaying gives the same events, ids included"
    );
    assert_eq!(first.len(), 4);
    // One webhook (the merge) resolved two incidents: their event ids still differ.
    assert_eq!(first[2].cause, first[3].cause);
    assert_ne!(first[2].event_id, first[3].event_id);
    assert!(first.iter().all(|e| {
        e.event_id.len() == 32
            && e.event_id
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    }));

    // Another opening webhook id gives another incident id, same dedup key.
    let mut other = hooks.clone();
    other[0] = other[0].clone().id("p2");
    let second = outputs(&other);
    assert_eq!(second[0].dedup_key, first[0].dedup_key);
    assert_ne!(second[0].incident_id, first[0].incident_id);
    assert_eq!(second[1].incident_id, first[1].incident_id);
}

#[test]
fn outputs_encode_and_get_headers() {
    let mut run = Run::new(Rules::default());
    let created = only(run.apply(&build(3, "failed", "main")));
    let bytes = created.encode_to_vec();
    assert_eq!(IncidentEvent::decode(bytes.as_slice()).unwrap(), created);
    let headers =
        incident_event_headers(&created, hookfold_proto::incident::PROCESSOR_SOURCE).unwrap();
    assert_eq!(headers.id, created.event_id);
    assert_eq!(headers.ty, "hookfold.incident.created");
    assert_eq!(headers.time, "2026-11-20T10:00:00Z");
    let rendered = incident_to_json(&created);
    assert_eq!(rendered["transition"], json!("TRANSITION_CREATED"));
    assert_eq!(rendered["details"]["build_number"], json!("3"));
}

fn busy_states() -> BTreeMap<String, KeyState> {
    let mut run = Run::new(Rules::default());
    for hook in [
        job(1, "main", "a", "failed", Some(1)),
        build(1, "failed", "main"),
        job(2, "main", "b", "failed", Some(1)),
        build(2, "passed", "feature/x"),
        agent("lost", "id-1", "ci-1"),
        agent("connected", "id-2", "ci-1"),
        agent("lost", "id-2", "ci-1"),
        pull_request("created", 1, "a", "aaaaaaaaaaaa"),
        pull_request("created", 2, "b", "bbbbbbbbbbbb"),
        pull_request("fulfilled", 2, "b", "bbbbbbbbbbbb"),
        push(&[(
            "branch",
            "c",
            Some("cccccccccccccccccccccccccccccccccccccccc"),
        )]),
        ping(),
    ] {
        run.apply(&hook);
    }
    run.states_by_key()
}

#[test]
fn state_round_trips_through_binary_and_text_codecs() {
    let states = busy_states();
    assert_eq!(states.len(), 4, "{:?}", states.keys());
    for (key, state) in &states {
        let bytes = postcard::to_stdvec(state).unwrap();
        let back: KeyState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(&back, state, "{key}");
        let text = serde_json::to_string(state).unwrap();
        let back: KeyState = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, state, "{key}");
    }
    assert_eq!(STATE_FORMAT_VERSION, 3);
}

#[test]
fn state_lists_open_incidents() {
    let states = busy_states();
    let open: Vec<(String, u32, SeverityLevel)> = states
        .values()
        .flat_map(|s| s.open_incidents())
        .map(|o| (o.dedup_key.to_owned(), o.sequence, o.severity))
        .collect();
    assert_eq!(
        open,
        vec![
            (
                "buildkite/acme/agent/ci-1".to_owned(),
                0,
                SeverityLevel::Warning
            ),
            (
                "buildkite/acme/pipeline/web/branch/main".to_owned(),
                1,
                SeverityLevel::Error
            ),
            (
                "bitbucket/acme/repo/acme/web/branch/c".to_owned(),
                0,
                SeverityLevel::Info
            ),
            (
                "bitbucket/acme/repo/acme/web/pr/1".to_owned(),
                0,
                SeverityLevel::Info
            ),
        ]
    );
}

#[test]
fn state_stays_small_on_a_busy_key() {
    let mut run = Run::new(Rules::default());
    // 3000 builds on 400 branches of one pipeline: the dedup window (1024 ids) and the idle
    // branches (256) are bounded.
    for n in 1..=3000u64 {
        let state = if n % 7 == 0 { "failed" } else { "passed" };
        run.apply(&build(n, state, &format!("branch-{}", n % 400)));
    }
    let state = &run.states[b"acme/pipeline/web".as_slice()];
    assert_eq!(state.remembered_ids(), 1024);
    let size = postcard::to_stdvec(state).unwrap().len();
    assert!(size < 24 * 1024, "{size} bytes");
}

#[test]
fn rules_from_toml() {
    #[derive(serde::Deserialize)]
    struct ProcessorConfig {
        // The processor's other keys (state_dir, [kafka], ...) are not ours to check here.
        #[serde(default)]
        rules: Rules,
    }
    let config: ProcessorConfig = toml::from_str(
        r#"
        state_dir = "./.data/processor"
        [rules]
        dedup_window = 64
        [rules.builds]
        scope = "pipeline"
        exclude_branches = ["dependabot/*"]
        default_severity = "warning"
        severity = [{ branch = "main", severity = "critical" }]
        open_on_failing = true
        open_after_failures = 2
        [rules.agents]
        open_on = ["agent.lost"]
        grace = "90s"
        resolve_after = "24h"
        [rules.bitbucket]
        exclude_branches = ["main", "master"]
        branches = false
        "#,
    )
    .unwrap();
    let rules = config.rules;
    assert_eq!(rules.dedup_window, 64);
    assert_eq!(rules.builds.scope, hookfold_rules::BuildScope::Pipeline);
    assert_eq!(rules.builds.severity_for("main"), SeverityLevel::Critical);
    assert_eq!(rules.builds.severity_for("dev"), SeverityLevel::Warning);
    assert!(!rules.builds.branch_included("dependabot/npm/x"));
    assert!(rules.builds.enabled, "unset fields keep their defaults");
    assert_eq!(rules.builds.idle_branch_limit, 256);
    assert_eq!(rules.agents.open_on, vec!["agent.lost"]);
    assert!(rules.builds.open_on_failing);
    assert_eq!(rules.builds.open_after_failures, 2);
    assert_eq!(rules.agents.grace, std::time::Duration::from_secs(90));
    assert_eq!(
        rules.agents.resolve_after,
        Some(std::time::Duration::from_secs(24 * 3600))
    );
    assert!(!rules.bitbucket.branches && rules.bitbucket.pull_requests);
    rules.validate().unwrap();

    let defaults = Rules::default();
    assert_eq!(defaults.agents.grace, std::time::Duration::from_secs(300));
    assert_eq!(defaults.agents.resolve_after, None);
    assert!(!defaults.builds.open_on_failing);
    assert_eq!(defaults.builds.open_after_failures, 1);
    let bad = toml::from_str::<ProcessorConfig>("[rules.agents]\ngrace = \"5 parsecs\"\n");
    assert!(bad.is_err());

    let empty: ProcessorConfig = toml::from_str("").unwrap();
    assert_eq!(empty.rules, Rules::default());

    let typo = toml::from_str::<ProcessorConfig>("[rules.builds]\nscop = \"pipeline\"\n");
    assert!(typo.is_err(), "unknown keys are rejected");
    let bad_scope = toml::from_str::<ProcessorConfig>("[rules.builds]\nscope = \"branch\"\n");
    assert!(bad_scope.is_err());
}

#[test]
fn rules_validation() {
    let mut rules = Rules::default();
    rules.validate().unwrap();
    rules.agents.open_on.push("agent.connected".into());
    assert_eq!(rules.validate(), Err(RulesError::ConnectedOpens));
    rules.agents.open_on = vec!["build.finished".into()];
    assert_eq!(
        rules.validate(),
        Err(RulesError::NotAnAgentEvent("build.finished".into()))
    );
    rules.agents.open_on = vec![];
    rules.bitbucket.exclude_branches = vec![String::new()];
    assert_eq!(
        rules.validate(),
        Err(RulesError::EmptyPattern("bitbucket.exclude_branches"))
    );
    let mut rules = Rules::default();
    rules.builds.open_after_failures = 0;
    assert_eq!(rules.validate(), Err(RulesError::OpenAfterFailures(0)));
    rules.builds.open_after_failures = 65;
    assert_eq!(rules.validate(), Err(RulesError::OpenAfterFailures(65)));
    rules.builds.open_after_failures = 64;
    rules.validate().unwrap();
    rules.agents.resolve_after = Some(std::time::Duration::ZERO);
    assert_eq!(rules.validate(), Err(RulesError::ZeroResolveAfter));
    rules.agents.resolve_after = None;
    rules.agents.grace = std::time::Duration::from_secs(u64::MAX / 2);
    assert!(matches!(
        rules.validate(),
        Err(RulesError::DurationTooLong("grace", _))
    ));
}

#[test]
fn an_incident_opened_after_its_grace_is_the_opening_webhooks() {
    let lost = agent("lost", "id-1", "ci-1").id("lost-1").at(at(0, 0));
    let mut at_once = Run::new(no_grace());
    let expected = only(at_once.apply(&lost));

    let mut run = Run::new(Rules::default());
    assert_eq!(run.apply(&lost), vec![]);
    assert_eq!(run.clock.timers(), 1);
    assert_eq!(run.clock.next_deadline(), Some(at(5, 0)));
    assert_eq!(run.tick(at(4, 59)), vec![]);
    let created = only(run.tick(at(5, 0)));
    // The same event, ids and cause included, as without a grace period: whenever the
    // clock passes the deadline, what is emitted is the lost event's.
    assert_eq!(created, expected);
    assert_eq!(created.cause.as_ref().unwrap().ce_id, "lost-1");
    assert_eq!(run.clock.timers(), 0);
}

#[test]
fn an_expired_incident_says_when_and_why() {
    let mut rules = no_grace();
    rules.agents.resolve_after = Some(std::time::Duration::from_secs(3600));
    let mut run = Run::new(rules);
    let created = only(run.apply(&agent("lost", "id-1", "ci-1").id("lost-1").at(at(0, 0))));
    let expired = only(run.tick(at(61, 0)));
    assert_eq!(expired.transition, Transition::Resolved as i32);
    assert_eq!(
        expired.resolution_reason,
        hookfold_proto::v1::ResolutionReason::Expired as i32
    );
    assert_eq!(expired.incident_id, created.incident_id);
    assert_eq!(expired.sequence, 1);
    // At the deadline, not at the tick that noticed it.
    assert_eq!(
        expired.occurred_at,
        Some(hookfold_proto::timestamp::from_offset_date_time(at(60, 0)))
    );
    assert_eq!(expired.cause, created.cause);
    assert_eq!(expired.details["expired_after"], "1h");
    assert_eq!(expired.details["agent_name"], "ci-1");
    assert_eq!(
        expired.summary,
        "Agent ci-1 did not come back within 1h: expired"
    );
    assert!(run.states.values().all(|s| s.open_incidents().is_empty()));
}

#[test]
fn an_incident_opened_after_several_failures_lists_them() {
    let mut rules = Rules::default();
    rules.builds.open_after_failures = 3;
    let mut run = Run::new(rules);
    assert_eq!(run.apply(&build(4, "failed", "main")), vec![]);
    assert_eq!(run.apply(&build(5, "failed", "main")), vec![]);
    let created = only(run.apply(&build(7, "failed", "main")));
    assert_eq!(created.details["failed_builds"], "#4, #5, #7");
    assert_eq!(
        created.summary,
        "Build #7 of WEB failed on main (3 failed builds in a row)"
    );
    let mut rules = Rules::default();
    rules.builds.open_on_failing = true;
    let mut run = Run::new(rules);
    let failing = only(run.apply(&build_event("build.failing", 9, "failing", "main")));
    assert_eq!(failing.summary, "Build #9 of WEB is failing on main");
    assert!(!failing.details.contains_key("failed_builds"));
    let finished = only(run.apply(&build(9, "failed", "main")));
    assert_eq!(finished.summary, "Build #9 of WEB finished failing on main");
}

#[test]
fn agent_connected_listed_in_open_on_still_resolves() {
    let mut rules = no_grace();
    rules.agents.open_on.push("agent.connected".into());
    let mut run = Run::new(rules);
    assert_eq!(run.apply(&agent("connected", "id-0", "ci-1")), vec![]);
    run.apply(&agent("lost", "id-1", "ci-1"));
    let resolved = only(run.apply(&agent("connected", "id-2", "ci-1")));
    assert_eq!(resolved.transition, Transition::Resolved as i32);
}
