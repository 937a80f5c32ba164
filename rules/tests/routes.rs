//! Routes (`[[rules.routes]]`) through the fold: which route an entity gets, the options it
//! lays over the `[rules.*]` sections, and the labels and route name every incident event
//! of it carries, from its CREATED to its RESOLVED.

mod support;

use std::collections::BTreeMap;

use hookfold_proto::v1::{IncidentEvent, Severity, Transition};
use hookfold_rules::Rules;
use serde_json::json;
use support::*;

/// An org's routes: see the file.
const ORG: &str = include_str!("fixtures/routes.toml");

fn org() -> Rules {
    let rules: Rules = toml::from_str(ORG).unwrap();
    rules.validate().unwrap();
    rules
}

/// `(transition, severity, dedup key, route, labels)` of an event.
fn routed(
    event: &IncidentEvent,
) -> (
    Transition,
    Severity,
    String,
    String,
    BTreeMap<String, String>,
) {
    (
        event.transition(),
        event.severity(),
        event.dedup_key.clone(),
        event.route.clone(),
        event.labels.clone().into_iter().collect(),
    )
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn spot_agent(action: &str, name: &str) -> Hook {
    agent(action, &format!("{name}-1"), name)
        .with("/agent/meta_data", json!(["queue=spot-a", "os=linux"]))
}

#[test]
fn a_pipelines_route_sets_its_options_severity_and_labels_on_every_event() {
    let mut run = Run::new(org());
    let key = "buildkite/acme/pipeline/payments-api/branch/main";
    let team = labels(&[("team", "payments"), ("service", "payments-api")]);
    // open_after_failures = 2: the first failure opens nothing.
    assert!(
        run.apply(&build_of("payments-api", 1, "failed", "main"))
            .is_empty()
    );
    let created = run.apply(&build_of("payments-api", 2, "failed", "main"));
    assert_eq!(
        created.iter().map(routed).collect::<Vec<_>>(),
        [(
            Transition::Created,
            Severity::Critical,
            key.to_owned(),
            "payments".to_owned(),
            team.clone()
        )]
    );
    let resolved = run.apply(&build_of("payments-api", 3, "passed", "main"));
    assert_eq!(
        resolved.iter().map(routed).collect::<Vec<_>>(),
        [(
            Transition::Resolved,
            Severity::Critical,
            key.to_owned(),
            "payments".to_owned(),
            team
        )]
    );
    // A branch the route does not match: the next route that does (web, by repository),
    // with the sections' options: the first failure opens, at the default severity.
    let feature = run.apply(&build_of("payments-api", 4, "failed", "feature/x"));
    assert_eq!(
        feature.iter().map(routed).collect::<Vec<_>>(),
        [(
            Transition::Created,
            Severity::Error,
            "buildkite/acme/pipeline/payments-api/branch/feature/x".to_owned(),
            "web".to_owned(),
            labels(&[("team", "web")])
        )]
    );
    // docs never pages.
    assert!(
        run.apply(&build_of("docs-site", 5, "failed", "main"))
            .is_empty()
    );
}

#[test]
fn agents_are_routed_by_their_meta_data() {
    let mut run = Run::new(org());
    // A spot agent opens at once (grace 0s on its route) and belongs to ci-infra.
    let lost = run.apply(&spot_agent("lost", "spot-1").at(at(0, 0)));
    assert_eq!(
        lost.iter().map(routed).collect::<Vec<_>>(),
        [(
            Transition::Created,
            Severity::Warning,
            "buildkite/acme/agent/spot-1".to_owned(),
            "spot-fleet".to_owned(),
            labels(&[("team", "ci-infra")])
        )]
    );
    // An agent of another queue waits out the section's 5 minutes, and has no route.
    assert!(
        run.apply(&agent("lost", "metal-1-1", "metal-1").at(at(1, 0)))
            .is_empty()
    );
    let opened = run.tick(at(6, 0));
    assert_eq!(
        opened.iter().map(routed).collect::<Vec<_>>(),
        [(
            Transition::Created,
            Severity::Warning,
            "buildkite/acme/agent/metal-1".to_owned(),
            String::new(),
            BTreeMap::new()
        )]
    );
    // The spot agent's incident expires after its route's 10 minutes, still ci-infra's.
    let expired = run.tick(at(10, 0));
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0].route, "spot-fleet");
    assert_eq!(
        expired[0].details.get("expired_after").map(String::as_str),
        Some("10m")
    );
    assert_eq!(expired[0].dedup_key, "buildkite/acme/agent/spot-1");
}

#[test]
fn a_waiting_agent_incident_keeps_its_routes_expiry() {
    let mut rules = org();
    rules.routes[1].agents.as_mut().unwrap().grace = Some(std::time::Duration::from_secs(60));
    let mut run = Run::new(rules);
    assert!(
        run.apply(&spot_agent("lost", "spot-2").at(at(0, 0)))
            .is_empty()
    );
    let created = run.tick(at(1, 0));
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].transition(), Transition::Created);
    assert_eq!(
        created[0].labels.get("team").map(String::as_str),
        Some("ci-infra")
    );
    // Created at the opening event's time (0:00), so it expires at 10:00.
    assert!(run.tick(at(9, 59)).is_empty());
    let expired = run.tick(at(10, 0));
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].transition(), Transition::Resolved);
    assert_eq!(expired[0].route, "spot-fleet");
}

#[test]
fn an_incident_keeps_the_route_it_opened_under_when_the_routes_change() {
    let mut run = Run::new(org());
    let created = run.apply(&spot_agent("lost", "spot-3"));
    assert_eq!(created[0].route, "spot-fleet");
    // The routes change (the processor restarts with other rules): what is open stays the
    // team's that owned it; what opens from now on follows the new routes.
    run.rules.routes.clear();
    let resolved = run.apply(&spot_agent("connected", "spot-3"));
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].transition(), Transition::Resolved);
    assert_eq!(resolved[0].route, "spot-fleet");
    assert_eq!(
        resolved[0].labels.get("team").map(String::as_str),
        Some("ci-infra")
    );
    run.rules.agents.grace = std::time::Duration::ZERO;
    let again = run.apply(&spot_agent("lost", "spot-3"));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].route, "");
    assert!(again[0].labels.is_empty());
}

#[test]
fn each_pushed_branch_has_a_route_of_its_own() {
    let mut run = Run::new(org());
    let outputs = run.apply(&push(&[
        (
            "branch",
            "feature/a",
            Some("1111111111111111111111111111111111111111"),
        ),
        (
            "branch",
            "experiment/b",
            Some("2222222222222222222222222222222222222222"),
        ),
    ]));
    assert_eq!(
        outputs.iter().map(routed).collect::<Vec<_>>(),
        [(
            Transition::Created,
            Severity::Info,
            "bitbucket/acme/repo/acme/web/branch/feature/a".to_owned(),
            "web".to_owned(),
            labels(&[("team", "web")])
        )]
    );
    // The pull request from feature/a: routed as a pull request (web, by repository); its
    // merge resolves the branch's incident, which keeps the branch's route.
    let opened = run.apply(&pull_request(
        "created",
        7,
        "feature/a",
        "1111111111111111111111111111111111111111",
    ));
    assert_eq!(opened[0].route, "web");
    let merged = run.apply(&pull_request(
        "fulfilled",
        7,
        "feature/a",
        "1111111111111111111111111111111111111111",
    ));
    let keys: Vec<(String, String)> = merged
        .iter()
        .map(|e| (e.dedup_key.clone(), e.route.clone()))
        .collect();
    assert_eq!(
        keys,
        [
            (
                "bitbucket/acme/repo/acme/web/pr/7".to_owned(),
                "web".to_owned()
            ),
            (
                "bitbucket/acme/repo/acme/web/branch/feature/a".to_owned(),
                "web".to_owned()
            ),
        ]
    );
}

#[test]
fn without_routes_nothing_changes_but_the_empty_labels() {
    // The same webhooks under the default rules and under routes that match nothing give
    // the same events, ids included.
    let hooks = [
        build(1, "failed", "main"),
        agent("lost", "a-1", "a"),
        build(2, "passed", "main"),
        agent("connected", "a-1", "a"),
    ];
    let mut plain = Run::new(no_grace());
    let mut rules = no_grace();
    rules.routes = toml::from_str::<Rules>(
        "[[routes]]\nname = \"nobody\"\npipelines = [\"nothing-*\"]\nlabels = { team = \"x\" }",
    )
    .unwrap()
    .routes;
    let mut routed_run = Run::new(rules);
    for hook in &hooks {
        let a = plain.apply(hook);
        let b = routed_run.apply(hook);
        assert!(!a.is_empty());
        assert_eq!(a, b);
        assert!(a.iter().all(|e| e.labels.is_empty() && e.route.is_empty()));
    }
}
