//! Every fixture parses to the expected typed event; bad records give typed errors.

use std::path::PathBuf;

use hookfold_events::{
    AgentAction, BuildAction, BuildState, EventBody, JobAction, JobState, ParseError,
    PullRequestAction, PullRequestState, RefKind, SourceKind, TestAction, TestEvent, TestState,
    WebhookEvent, parse,
};
use hookfold_proto::cloudevents::CloudEventHeaders;
use time::macros::datetime;

/// The crate's directory: cargo sets it when it runs the test (the build-time value is
/// another checkout's when a shared target directory's binary is reused).
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn fixture_dir() -> PathBuf {
    manifest_dir().join("tests/fixtures")
}

fn fixture(path: &str) -> Vec<u8> {
    let path = fixture_dir().join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn headers(ce_type: &str) -> CloudEventHeaders {
    CloudEventHeaders {
        id: "ce-1".into(),
        source: "/sources/acme".into(),
        ty: ce_type.into(),
        time: "2026-11-20T10:03:28Z".into(),
        content_type: "application/json".into(),
    }
}

fn parse_fixture(ce_type: &str, path: &str) -> WebhookEvent {
    parse(&headers(ce_type), &fixture(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn envelope_comes_from_the_headers() {
    let event = parse_fixture("buildkite.ping", "buildkite/ping.json");
    assert_eq!(event.id, "ce-1");
    assert_eq!(event.source_id, "acme");
    assert_eq!(event.kind, SourceKind::Buildkite);
    assert_eq!(event.name, "ping");
    assert_eq!(event.time, datetime!(2026-11-20 10:03:28 UTC));
    assert_eq!(event.ce_type(), "buildkite.ping");
    assert_eq!(event.body, EventBody::Ping);
    assert_eq!(event.routing_key().as_deref(), Some("acme/org"));
}

#[test]
fn routing_keys_follow_the_design() {
    let cases = [
        (
            "buildkite.build.finished",
            "buildkite/build-finished-failed.json",
            "acme/pipeline/web",
        ),
        (
            "buildkite.job.finished",
            "buildkite/job-finished-failed.json",
            "acme/pipeline/web",
        ),
        (
            "buildkite.agent.lost",
            "buildkite/agent-lost.json",
            "acme/agent/ci-agent-1",
        ),
        (
            "bitbucket.pullrequest:created",
            "bitbucket/pullrequest-created.json",
            "acme/repo/lkysow/atlantis-example",
        ),
        (
            "bitbucket.repo:push",
            "bitbucket/repo-push.json",
            "acme/repo/nfalco79/test-repos",
        ),
    ];
    for (ce_type, path, key) in cases {
        assert_eq!(
            parse_fixture(ce_type, path).routing_key().as_deref(),
            Some(key),
            "{path}"
        );
    }
    let unknown = parse(&headers("bitbucket.repo:fork"), b"{}").unwrap();
    assert_eq!(unknown.routing_key(), None);
}

#[test]
fn buildkite_failed_build() {
    let event = parse_fixture(
        "buildkite.build.finished",
        "buildkite/build-finished-failed.json",
    );
    let EventBody::Build(build) = event.body else {
        panic!("{:?}", event.body)
    };
    assert_eq!(build.action, BuildAction::Finished);
    assert_eq!(build.build.number, 42);
    assert_eq!(build.build.state, BuildState::Failed);
    assert_eq!(build.build.branch, "main");
    assert!(!build.build.blocked);
    assert_eq!(
        build.build.commit.as_deref(),
        Some("1e69a602caef4b1c9b0e6dbb7f4b08d2a8e1f7c3")
    );
    assert_eq!(
        build.build.web_url.as_deref(),
        Some("https://buildkite.com/acme-inc/web/builds/42")
    );
    assert_eq!(
        build.build.author.as_ref().and_then(|a| a.name.as_deref()),
        Some("Jane Doe")
    );
    assert_eq!(
        build.build.finished_at,
        Some(datetime!(2026-11-20 10:03:27.512 UTC))
    );
    assert_eq!(build.pipeline.slug, "web");
    assert_eq!(build.pipeline.display_name(), "Web");
    assert_eq!(
        build.pipeline.repository.as_deref(),
        Some("git@github.com:acme-inc/web.git")
    );
    assert_eq!(
        build.sender.and_then(|s| s.name).as_deref(),
        Some("Jane Doe")
    );
}

#[test]
fn buildkite_pipeline_falls_back_to_the_one_inside_the_build() {
    let event = parse_fixture(
        "buildkite.build.finished",
        "buildkite/build-finished-passed.json",
    );
    let EventBody::Build(build) = event.body else {
        panic!("{:?}", event.body)
    };
    assert_eq!(build.build.number, 43);
    assert_eq!(build.build.state, BuildState::Passed);
    assert_eq!(build.pipeline.slug, "web");
    assert_eq!(
        build.pipeline.web_url.as_deref(),
        Some("https://buildkite.com/acme-inc/web")
    );
}

#[test]
fn buildkite_running_build_has_no_finish_time() {
    let event = parse_fixture("buildkite.build.running", "buildkite/build-running.json");
    let EventBody::Build(build) = event.body else {
        panic!("{:?}", event.body)
    };
    assert_eq!(build.action, BuildAction::Running);
    assert_eq!(build.build.state, BuildState::Running);
    assert_eq!(build.build.branch, "feature/checkout");
    assert_eq!(build.build.finished_at, None);
}

#[test]
fn buildkite_failed_job() {
    let event = parse_fixture(
        "buildkite.job.finished",
        "buildkite/job-finished-failed.json",
    );
    let EventBody::Job(job) = event.body else {
        panic!("{:?}", event.body)
    };
    assert_eq!(job.action, JobAction::Finished);
    assert_eq!(job.job.id, "b63254c0-3271-4a98-8270-7cfbd6c2f14e");
    assert_eq!(job.job.display_name(), ":rspec: RSpec");
    assert_eq!(job.job.state, JobState::Failed);
    assert_eq!(job.job.exit_status, Some(1));
    assert!(!job.job.soft_failed);
    assert_eq!(job.job.kind.as_deref(), Some("script"));
    assert_eq!(
        job.job.agent.and_then(|a| a.name).as_deref(),
        Some("ci-agent-1")
    );
    assert_eq!(job.build.number, 42);
    assert_eq!(job.build.state, BuildState::Failing);
    assert_eq!(job.pipeline.slug, "web");
}

#[test]
fn buildkite_agents() {
    let event = parse_fixture("buildkite.agent.lost", "buildkite/agent-lost.json");
    let EventBody::Agent(lost) = event.body else {
        panic!("{:?}", event.body)
    };
    assert_eq!(lost.action, AgentAction::Lost);
    assert_eq!(lost.agent.name, "ci-agent-1");
    assert_eq!(lost.agent.id, "0b461f65-e7be-4c80-888a-ef11d81fd971");
    assert_eq!(lost.agent.connection_state.as_deref(), Some("lost"));
    assert_eq!(lost.agent.hostname.as_deref(), Some("ip-10-0-1-17"));
    assert_eq!(lost.agent.version.as_deref(), Some("3.87.0"));
    assert_eq!(lost.agent.meta_data, ["queue=default", "os=linux"]);

    let event = parse_fixture(
        "buildkite.agent.connected",
        "buildkite/agent-connected.json",
    );
    let EventBody::Agent(connected) = event.body else {
        panic!("{:?}", event.body)
    };
    assert_eq!(connected.action, AgentAction::Connected);
    assert_eq!(connected.agent.name, "ci-agent-1");
    assert_ne!(
        connected.agent.id, lost.agent.id,
        "a restarted agent has a new id"
    );
}

#[test]
fn bitbucket_pull_request_created() {
    let event = parse_fixture(
        "bitbucket.pullrequest:created",
        "bitbucket/pullrequest-created.json",
    );
    assert_eq!(event.kind, SourceKind::Bitbucket);
    let EventBody::PullRequest(pr) = event.body else {
        panic!("{:?}", event.body)
    };
    assert_eq!(pr.action, PullRequestAction::Created);
    assert_eq!(pr.repository.full_name, "lkysow/atlantis-example");
    assert_eq!(pr.pull_request.id, 16);
    assert_eq!(
        pr.pull_request.title.as_deref(),
        Some("main.tf edited online with Bitbucket")
    );
    assert_eq!(pr.pull_request.state, Some(PullRequestState::Open));
    let source = pr.pull_request.source.as_ref().unwrap();
    assert_eq!(
        source.branch.as_deref(),
        Some("Luke/maintf-edited-online-with-bitbucket-1560433073473")
    );
    assert_eq!(source.commit.as_deref(), Some("1e69a602caef"));
    assert_eq!(
        source.repository.as_deref(),
        Some("lkysow-fork/atlantis-example")
    );
    let destination = pr.pull_request.destination.as_ref().unwrap();
    assert_eq!(destination.branch.as_deref(), Some("main"));
    assert_eq!(
        pr.pull_request.author.as_ref().and_then(|a| a.display()),
        Some("Luke")
    );
    assert_eq!(
        pr.pull_request.html_url.as_deref(),
        Some("https://bitbucket.org/lkysow/atlantis-example/pull-requests/16")
    );
    assert_eq!(pr.pull_request.merge_commit, None);
    assert_eq!(
        pr.pull_request.updated_on,
        Some(datetime!(2019-06-13 13:37:58.128400 UTC))
    );
    assert_eq!(pr.actor.as_ref().and_then(|a| a.display()), Some("Luke"));
}

#[test]
fn bitbucket_pull_requests_fulfilled() {
    let event = parse_fixture(
        "bitbucket.pullrequest:fulfilled",
        "bitbucket/pullrequest-fulfilled.json",
    );
    let EventBody::PullRequest(pr) = event.body else {
        panic!("{:?}", event.body)
    };
    assert_eq!(pr.action, PullRequestAction::Fulfilled);
    assert_eq!(pr.pull_request.id, 16);
    assert_eq!(pr.pull_request.state, Some(PullRequestState::Merged));
    assert_eq!(
        pr.pull_request.merge_commit.as_deref(),
        Some("981c4a02003b")
    );
    assert_eq!(
        pr.pull_request.closed_by.as_ref().and_then(|u| u.display()),
        Some("Luke")
    );
    assert_eq!(
        pr.pull_request.updated_on,
        Some(datetime!(2019-06-13 13:38:38.142188 UTC))
    );

    let event = parse_fixture(
        "bitbucket.pullrequest:fulfilled",
        "bitbucket/pullrequest-fulfilled-2.json",
    );
    let EventBody::PullRequest(pr) = event.body else {
        panic!("{:?}", event.body)
    };
    assert_eq!(pr.repository.full_name, "anbraten/test-2");
    assert_eq!(pr.pull_request.id, 1);
    assert_eq!(pr.pull_request.state, Some(PullRequestState::Merged));
    let source = pr.pull_request.source.as_ref().unwrap();
    assert_eq!(source.branch.as_deref(), Some("patch-2"));
    assert_eq!(source.repository.as_deref(), Some("anbraten/test-2"));
    assert_eq!(
        pr.pull_request.merge_commit.as_deref(),
        Some("006704dbeab2")
    );
}

#[test]
fn bitbucket_pull_request_rejected() {
    let event = parse_fixture(
        "bitbucket.pullrequest:rejected",
        "bitbucket/pullrequest-rejected.json",
    );
    let EventBody::PullRequest(pr) = event.body else {
        panic!("{:?}", event.body)
    };
    assert_eq!(pr.action, PullRequestAction::Rejected);
    assert_eq!(pr.repository.full_name, "amuniz/test-repos");
    assert_eq!(pr.pull_request.id, 735);
    assert_eq!(pr.pull_request.state, Some(PullRequestState::Declined));
    assert_eq!(pr.pull_request.title.as_deref(), Some("BUILD test"));
    assert_eq!(
        pr.pull_request
            .source
            .as_ref()
            .and_then(|s| s.branch.as_deref()),
        Some("feature/test")
    );
    assert_eq!(
        pr.pull_request
            .destination
            .as_ref()
            .and_then(|d| d.branch.as_deref()),
        Some("master")
    );
}

#[test]
fn bitbucket_push() {
    let event = parse_fixture("bitbucket.repo:push", "bitbucket/repo-push.json");
    let EventBody::Push(push) = event.body else {
        panic!("{:?}", event.body)
    };
    assert_eq!(push.repository.full_name, "nfalco79/test-repos");
    assert_eq!(
        push.repository.html_url.as_deref(),
        Some("https://bitbucket.org/nfalco79/test-repos")
    );
    assert_eq!(
        push.actor.as_ref().and_then(|a| a.display()),
        Some("Nikolas Falco")
    );
    assert_eq!(push.changes.len(), 1);
    let change = &push.changes[0];
    assert!(change.created);
    assert!(!change.closed);
    assert!(!change.forced);
    assert_eq!(change.old, None);
    assert_eq!(
        change.html_url.as_deref(),
        Some("https://bitbucket.org/nfalco79/test-repos/branch/feature/webhook")
    );
    let new = change.new.as_ref().unwrap();
    assert_eq!(new.kind, RefKind::Branch);
    assert_eq!(new.name, "feature/webhook");
    let target = new.target.as_ref().unwrap();
    assert_eq!(
        target.hash.as_deref(),
        Some("d7f300a32270053bdfd97a6d64113f58202c33e7")
    );
    assert_eq!(target.date, Some(datetime!(2025-05-16 07:36:56 UTC)));
    assert_eq!(target.author.as_deref(), Some("Nikolas Falco"));
    assert_eq!(
        target.message.as_deref(),
        Some("Test for webhook signature\n")
    );
}

#[test]
fn unknown_event_names_are_unknown_whatever_the_body() {
    for (ce_type, body) in [
        ("buildkite.build.exploded", &b"not json at all"[..]),
        ("buildkite.cluster_token.registration_blocked", b"{}"),
        ("buildkite.agent", b"{}"),
        ("bitbucket.repo:fork", b"\xff\xfe"),
        ("bitbucket.issue:created", b"[]"),
    ] {
        let event = parse(&headers(ce_type), body).unwrap();
        assert_eq!(event.body, EventBody::Unknown, "{ce_type}");
    }
}

#[test]
fn malformed_known_events_are_typed_errors() {
    let cases: [(&str, &[u8]); 9] = [
        ("buildkite.build.finished", b"not json"),
        ("buildkite.build.finished", b"{}"),
        ("buildkite.build.finished", br#"{"build":{"number":"forty-two","state":"failed","branch":"main"},"pipeline":{"slug":"web"}}"#),
        ("buildkite.build.finished", br#"{"build":{"number":42,"branch":"main"},"pipeline":{"slug":"web"}}"#),
        ("buildkite.job.finished", br#"{"job":{"state":"failed"},"build":{"number":1,"state":"failed","branch":"main"},"pipeline":{"slug":"web"}}"#),
        ("buildkite.agent.lost", br#"{"agent":{"id":"a"}}"#),
        ("buildkite.ping", b"{"),
        ("bitbucket.pullrequest:created", br#"{"pullrequest":{"title":"no id"},"repository":{"full_name":"a/b"}}"#),
        ("bitbucket.repo:push", br#"{"push":{"changes":[{"new":{"type":"branch"}}]},"repository":{"full_name":"a/b"}}"#),
    ];
    for (ce_type, body) in cases {
        let error = parse(&headers(ce_type), body).unwrap_err();
        assert!(
            matches!(error, ParseError::Body { .. }),
            "{ce_type}: {error}"
        );
    }
}

#[test]
fn missing_pipeline_slug_is_a_typed_error() {
    let body = br#"{"build":{"number":1,"state":"failed","branch":"main","pipeline":{"name":"Web"}},"pipeline":{"slug":""}}"#;
    let error = parse(&headers("buildkite.build.finished"), body).unwrap_err();
    assert!(
        matches!(
            error,
            ParseError::MissingField {
                field: "pipeline.slug",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn bad_headers_are_typed_errors() {
    let mut bad_source = headers("buildkite.ping");
    bad_source.source = "acme".into();
    assert!(matches!(
        parse(&bad_source, b"{}"),
        Err(ParseError::Source(_))
    ));

    assert!(matches!(
        parse(&headers("gitlab.push"), b"{}"),
        Err(ParseError::Type(_))
    ));
    assert!(matches!(
        parse(&headers("buildkite"), b"{}"),
        Err(ParseError::Type(_))
    ));

    let mut bad_time = headers("buildkite.ping");
    bad_time.time = "Thursday".into();
    assert!(matches!(parse(&bad_time, b"{}"), Err(ParseError::Time(_))));
}

#[test]
fn lenient_about_optional_fields() {
    // Minimal payloads: only the required fields, nulls, odd timestamps, unknown states.
    let body = br#"{"build":{"number":7,"state":"waiting_for_godot","branch":"main",
        "blocked":null,"finished_at":"yesterday","author":null,"extra":{"x":1}},
        "pipeline":{"slug":"web","repository":{"url":"git@example.com:a/b.git"}}}"#;
    let event = parse(&headers("buildkite.build.finished"), body).unwrap();
    let EventBody::Build(build) = event.body else {
        panic!()
    };
    assert_eq!(
        build.build.state,
        BuildState::Other("waiting_for_godot".into())
    );
    assert_eq!(build.build.state.as_str(), "waiting_for_godot");
    assert!(!build.build.blocked);
    assert_eq!(build.build.finished_at, None);
    assert_eq!(build.pipeline.display_name(), "web");
    assert_eq!(
        build.pipeline.repository.as_deref(),
        Some("git@example.com:a/b.git")
    );

    let body = br#"{"job":{"id":"j","state":"timed_out","exit_status":null,"label":"deploy"},
        "build":{"number":7,"state":"failing","branch":"main"},"pipeline":{"slug":"web"}}"#;
    let event = parse(&headers("buildkite.job.finished"), body).unwrap();
    let EventBody::Job(job) = event.body else {
        panic!()
    };
    assert_eq!(job.job.state, JobState::TimedOut);
    assert_eq!(job.job.exit_status, None);
    assert_eq!(job.job.display_name(), "deploy");

    let body = br#"{"push":{"changes":[{"new":null,"old":{"type":"tag","name":"v1"},"closed":true},
        {"new":{"type":"named_branch","name":"default","target":null}}]},
        "repository":{"full_name":"a/b","links":null},"actor":null}"#;
    let event = parse(&headers("bitbucket.repo:push"), body).unwrap();
    let EventBody::Push(push) = event.body else {
        panic!()
    };
    assert_eq!(push.changes[0].new, None);
    assert_eq!(
        push.changes[0].old.as_ref().map(|o| &o.kind),
        Some(&RefKind::Tag)
    );
    assert!(push.changes[0].closed);
    assert_eq!(
        push.changes[1].new.as_ref().map(|n| &n.kind),
        Some(&RefKind::Branch)
    );
    assert_eq!(push.repository.html_url, None);

    // Agent meta-data: entries that are not strings left out; not a list, or null: none.
    for (meta, expected) in [
        (
            r#"["queue=spot",7,null,"os=linux"]"#,
            &["queue=spot", "os=linux"][..],
        ),
        (r#""queue=spot""#, &[]),
        ("null", &[]),
    ] {
        let body = format!(r#"{{"agent":{{"id":"a","name":"n","meta_data":{meta}}}}}"#);
        let event = parse(&headers("buildkite.agent.lost"), body.as_bytes()).unwrap();
        let EventBody::Agent(lost) = event.body else {
            panic!()
        };
        assert_eq!(lost.agent.meta_data, expected, "{meta}");
    }
}

/// The in-repo copies must stay byte-for-byte equal to the shared originals (the signature
/// test vector depends on exact bytes). Skipped where `shared/` is not beside the checkout.
#[test]
fn fixture_copies_match_shared_originals() {
    let shared = manifest_dir().join("../../shared/fixtures");
    if !shared.is_dir() {
        eprintln!("skipped: {} not found", shared.display());
        return;
    }
    for name in [
        "bitbucket/SOURCES.md",
        "bitbucket/pullrequest-created.json",
        "bitbucket/pullrequest-fulfilled-2.json",
        "bitbucket/pullrequest-fulfilled.json",
        "bitbucket/pullrequest-rejected.json",
        "bitbucket/repo-push.json",
        "buildkite/ping.json",
    ] {
        let original = std::fs::read(shared.join(name)).unwrap();
        assert!(
            original == fixture(name),
            "{name} differs from shared/fixtures/{name}"
        );
    }
}

#[test]
fn ticks_are_told_apart_by_type_and_source() {
    let tick =
        hookfold_proto::cloudevents::tick_headers("tick-0-1".into(), "2026-11-20T10:03:28Z".into());
    assert_eq!(
        hookfold_events::parse_record(&tick, b"{}").unwrap(),
        hookfold_events::LogRecord::Tick {
            id: "tick-0-1".into(),
            time: datetime!(2026-11-20 10:03:28 UTC),
        }
    );
    let bad_time = CloudEventHeaders {
        time: "yesterday".into(),
        ..tick.clone()
    };
    assert!(hookfold_events::parse_record(&bad_time, b"{}").is_err());
    // The tick type from a webhook source is no tick: it is not a webhook type either.
    let forged = CloudEventHeaders {
        source: "/sources/acme".into(),
        ..tick
    };
    assert!(hookfold_events::parse_record(&forged, b"{}").is_err());
    // A webhook is still a webhook.
    let ping =
        hookfold_events::parse_record(&headers("buildkite.ping"), &fixture("buildkite/ping.json"))
            .unwrap();
    assert!(
        matches!(ping, hookfold_events::LogRecord::Webhook(event) if event.body == EventBody::Ping)
    );
}

fn test_engine(path: &str) -> WebhookEvent {
    let body = fixture(&format!("buildkite_test_engine/{path}"));
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ce_type = format!("buildkite_test_engine.{}", event["event"].as_str().unwrap());
    parse(&headers(&ce_type), &body).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn test_event(event: &WebhookEvent) -> &TestEvent {
    match &event.body {
        EventBody::Test(test) => test,
        other => panic!("not a test event: {other:?}"),
    }
}

#[test]
fn test_engine_documented_examples() {
    let event = test_engine("state-changed.json");
    assert_eq!(event.kind, SourceKind::BuildkiteTestEngine);
    assert_eq!(event.ce_type(), "buildkite_test_engine.test.state_changed");
    let test = test_event(&event);
    assert_eq!(
        test.action,
        TestAction::StateChanged {
            from: Some(TestState::Muted),
            to: TestState::Enabled
        }
    );
    assert_eq!(test.test.id, "abcdef01-2345-6789-abcd-ef0123456789");
    assert_eq!(test.test.suite(), Some("my-suite"));
    assert_eq!(
        test.test.display_name(),
        "integrate frictionless action-items"
    );
    assert_eq!(
        test.test.location.as_deref(),
        Some("./spec/models/user.rb:23")
    );
    assert_eq!(test.actor.display_name(), Some("auto quarantine"));
    assert_eq!(test.actor.kind.as_deref(), Some("system"));
    assert_eq!(test.timestamp, Some(datetime!(2025-05-13 01:54:03.648 UTC)));
    assert_eq!(
        event.routing_key().as_deref(),
        Some("acme/suite/my-suite/test/abcdef01-2345-6789-abcd-ef0123456789")
    );

    let added = test_engine("label-added.json");
    assert_eq!(
        test_event(&added).action,
        TestAction::LabelAdded("new_label".into())
    );
    let removed = test_engine("label-removed.json");
    assert_eq!(
        test_event(&removed).action,
        TestAction::LabelRemoved("new_label".into())
    );
    assert_eq!(test_event(&removed).test, test_event(&added).test);
}

#[test]
fn test_engine_unicode_long_and_minimal_payloads() {
    let unicode = test_engine("state-changed-unicode.json");
    let test = test_event(&unicode);
    assert_eq!(
        test.test.display_name(),
        "Anmeldung für Benutzer «Zoë» — 日本語のテスト ✅"
    );
    assert_eq!(
        test.action,
        TestAction::StateChanged {
            from: Some(TestState::Muted),
            to: TestState::Skipped
        }
    );
    // A person, not a system: the name is who did it.
    assert_eq!(test.actor.display_name(), Some("Åsa Ñúñez"));

    let long = test_engine("state-changed-long-name.json");
    assert!(test_event(&long).test.display_name().len() > 10_000);

    let minimal = test_engine("label-added-minimal.json");
    let test = test_event(&minimal);
    assert_eq!(test.action, TestAction::LabelAdded("flaky".into()));
    assert_eq!(
        test.test.display_name(),
        "9a8b7c6d-0000-4000-8000-000000000001"
    );
    assert_eq!((test.test.suite(), test.timestamp), (None, None));
    assert_eq!(test.actor.display_name(), None);
    // No suite in a URL: the test has no key of its own, and lands with its source's.
    assert_eq!(minimal.routing_key().as_deref(), Some("acme/org"));
}

#[test]
fn test_engine_unknown_states_and_events_are_unknown_and_missing_fields_are_errors() {
    assert_eq!(
        test_engine("state-changed-unknown-state.json").body,
        EventBody::Unknown
    );
    assert_eq!(test_engine("unknown-event.json").body, EventBody::Unknown);
    for (event, body, field) in [
        (
            "test.state_changed",
            r#"{"test_new_state":"muted"}"#,
            "test_id",
        ),
        ("test.state_changed", r#"{"test_id":"t"}"#, "test_new_state"),
        ("test.label_added", r#"{"test_id":"t","label":""}"#, "label"),
        ("test.label_removed", r#"{"test_id":"t"}"#, "label"),
    ] {
        let result = parse(
            &headers(&format!("buildkite_test_engine.{event}")),
            body.as_bytes(),
        );
        assert!(
            matches!(&result, Err(ParseError::MissingField { field: f, .. }) if *f == field),
            "{event} {body}: {result:?}"
        );
    }
    let not_json = parse(&headers("buildkite_test_engine.test.label_added"), b"[1,2]");
    assert!(
        matches!(not_json, Err(ParseError::Body { .. })),
        "{not_json:?}"
    );
}
