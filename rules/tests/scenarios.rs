//! The rules, table-driven: webhook bodies in, expected incident transitions out. Every rule
//! and every option of `Rules` has a scenario.

mod support;

use hookfold_rules::{BranchSeverity, BuildScope, Rules, SeverityLevel};
use serde_json::json;
use support::*;

fn main_key(branch: &str) -> String {
    format!("buildkite/acme/pipeline/web/branch/{branch}")
}
const PIPELINE_KEY: &str = "buildkite/acme/pipeline/web";
fn agent_key(name: &str) -> String {
    format!("buildkite/acme/agent/{name}")
}
fn pr_key(id: u64) -> String {
    format!("bitbucket/acme/repo/acme/web/pr/{id}")
}
fn branch_key(branch: &str) -> String {
    format!("bitbucket/acme/repo/acme/web/branch/{branch}")
}

fn created(severity: &str, key: &str) -> String {
    format!("created {severity} {key}")
}
fn updated(severity: &str, key: &str) -> String {
    format!("updated {severity} {key}")
}
fn resolved(reason: &str, severity: &str, key: &str) -> String {
    format!("resolved:{reason} {severity} {key}")
}

struct Scenario {
    name: &'static str,
    rules: Rules,
    steps: Vec<(Hook, Vec<String>)>,
}

fn with_rules(change: impl FnOnce(&mut Rules)) -> Rules {
    let mut rules = Rules::default();
    change(&mut rules);
    rules
}

fn without_grace(change: impl FnOnce(&mut Rules)) -> Rules {
    let mut rules = no_grace();
    change(&mut rules);
    rules
}

fn build_scenarios() -> Vec<Scenario> {
    let main = main_key("main");
    vec![
        Scenario {
            name: "a failed build opens, more failures update, a pass resolves, the next failure opens anew",
            rules: Rules::default(),
            steps: vec![
                (build(1, "passed", "main"), vec![]),
                (build(2, "failed", "main"), vec![created("error", &main)]),
                (build(3, "failed", "main"), vec![updated("error", &main)]),
                (
                    build(4, "passed", "main"),
                    vec![resolved("build_passed", "error", &main)],
                ),
                (build(5, "failed", "main"), vec![created("error", &main)]),
            ],
        },
        Scenario {
            name: "canceled, skipped, not_run, blocked and unfinished builds change nothing",
            rules: Rules::default(),
            steps: vec![
                (build(1, "failed", "main"), vec![created("error", &main)]),
                (build(2, "canceled", "main"), vec![]),
                (build(3, "skipped", "main"), vec![]),
                (build(4, "not_run", "main"), vec![]),
                (build(5, "blocked", "main"), vec![]),
                (
                    build(6, "passed", "main").with("/build/blocked", json!(true)),
                    vec![],
                ),
                (build(7, "canceling", "main"), vec![]),
                (build_event("build.running", 8, "running", "main"), vec![]),
                (build_event("build.failing", 8, "failing", "main"), vec![]),
                // None of those was a verdict, so #2 is still newer than the last one (#1).
                (
                    build(2, "passed", "main"),
                    vec![resolved("build_passed", "error", &main)],
                ),
            ],
        },
        Scenario {
            name: "a build numbered below the newest verdict is stale",
            rules: Rules::default(),
            steps: vec![
                (build(5, "failed", "main"), vec![created("error", &main)]),
                (build(4, "passed", "main"), vec![]),
                (build(3, "failed", "main"), vec![]),
                (
                    build(6, "passed", "main"),
                    vec![resolved("build_passed", "error", &main)],
                ),
                (build(5, "failed", "main"), vec![]),
                (build(2, "failed", "main"), vec![]),
            ],
        },
        Scenario {
            name: "a build number and state apply once; a retried build going failed -> passed resolves",
            rules: Rules::default(),
            steps: vec![
                (build(5, "failed", "main"), vec![created("error", &main)]),
                (build(5, "failed", "main"), vec![]),
                (
                    build(5, "passed", "main"),
                    vec![resolved("build_passed", "error", &main)],
                ),
                (build(5, "passed", "main"), vec![]),
                (build(5, "failed", "main"), vec![]),
            ],
        },
        Scenario {
            name: "a retried build going passed -> failed opens",
            rules: Rules::default(),
            steps: vec![
                (build(5, "passed", "main"), vec![]),
                (build(5, "failed", "main"), vec![created("error", &main)]),
            ],
        },
        Scenario {
            name: "scope pipeline_branch: each branch is its own incident and its own build order",
            rules: Rules::default(),
            steps: vec![
                (build(1, "failed", "main"), vec![created("error", &main)]),
                (
                    build(2, "failed", "feature/x"),
                    vec![created("error", &main_key("feature/x"))],
                ),
                (
                    build(3, "passed", "feature/x"),
                    vec![resolved("build_passed", "error", &main_key("feature/x"))],
                ),
                (build(4, "failed", "main"), vec![updated("error", &main)]),
                (build(2, "passed", "main"), vec![]),
                (build(2, "failed", "feature/x"), vec![]),
                // #3 is older than main's #4 but new on this branch.
                (
                    build(3, "failed", "feature/y"),
                    vec![created("error", &main_key("feature/y"))],
                ),
            ],
        },
        Scenario {
            name: "scope pipeline: one incident per pipeline, any branch's pass resolves",
            rules: with_rules(|r| r.builds.scope = BuildScope::Pipeline),
            steps: vec![
                (
                    build(1, "failed", "main"),
                    vec![created("error", PIPELINE_KEY)],
                ),
                (
                    build(2, "failed", "feature/x"),
                    vec![updated("error", PIPELINE_KEY)],
                ),
                (
                    build(3, "passed", "feature/x"),
                    vec![resolved("build_passed", "error", PIPELINE_KEY)],
                ),
                (build(2, "failed", "main"), vec![]),
                (job(4, "main", "j1", "failed", Some(1)), vec![]),
                (
                    build(4, "failed", "other"),
                    vec![created("error", PIPELINE_KEY)],
                ),
            ],
        },
        Scenario {
            name: "include_branches: only matching branches count",
            rules: with_rules(|r| {
                r.builds.include_branches = vec!["main".into(), "release/*".into()]
            }),
            steps: vec![
                (build(1, "failed", "feature/x"), vec![]),
                (job(2, "feature/x", "j1", "failed", Some(1)), vec![]),
                (
                    build(2, "failed", "release/1.0"),
                    vec![created("error", &main_key("release/1.0"))],
                ),
                (build(3, "failed", "main"), vec![created("error", &main)]),
                (build(4, "passed", "feature/x"), vec![]),
                (build(5, "failed", "mainline"), vec![]),
            ],
        },
        Scenario {
            name: "exclude_branches wins over include_branches",
            rules: with_rules(|r| {
                r.builds.include_branches = vec!["*".into()];
                r.builds.exclude_branches = vec!["dependabot/*".into()];
            }),
            steps: vec![
                (build(1, "failed", "dependabot/npm/lodash"), vec![]),
                (build(2, "failed", "main"), vec![created("error", &main)]),
            ],
        },
        Scenario {
            name: "severity by branch pattern, first match wins, else default_severity",
            rules: with_rules(|r| {
                r.builds.default_severity = SeverityLevel::Info;
                r.builds.severity = vec![
                    BranchSeverity {
                        branch: "main".into(),
                        severity: SeverityLevel::Critical,
                    },
                    BranchSeverity {
                        branch: "release/*".into(),
                        severity: SeverityLevel::Warning,
                    },
                    BranchSeverity {
                        branch: "release/1.*".into(),
                        severity: SeverityLevel::Error,
                    },
                ];
            }),
            steps: vec![
                (build(1, "failed", "main"), vec![created("critical", &main)]),
                (
                    build(2, "failed", "release/1.0"),
                    vec![created("warning", &main_key("release/1.0"))],
                ),
                (
                    build(3, "failed", "feature/x"),
                    vec![created("info", &main_key("feature/x"))],
                ),
            ],
        },
        Scenario {
            name: "scope pipeline: an update raises the severity, never lowers it; the resolution keeps it",
            rules: with_rules(|r| {
                r.builds.scope = BuildScope::Pipeline;
                r.builds.severity = vec![BranchSeverity {
                    branch: "main".into(),
                    severity: SeverityLevel::Critical,
                }];
            }),
            steps: vec![
                (
                    build(1, "failed", "feature/x"),
                    vec![created("error", PIPELINE_KEY)],
                ),
                (
                    build(2, "failed", "main"),
                    vec![updated("critical", PIPELINE_KEY)],
                ),
                (
                    build(3, "failed", "feature/x"),
                    vec![updated("critical", PIPELINE_KEY)],
                ),
                (
                    build(4, "passed", "feature/x"),
                    vec![resolved("build_passed", "critical", PIPELINE_KEY)],
                ),
            ],
        },
        Scenario {
            name: "failed jobs: remembered until their build fails, attached to the open incident",
            rules: Rules::default(),
            steps: vec![
                (job(1, "main", "a", "failed", Some(1)), vec![]),
                (job(1, "main", "b", "passed", Some(0)), vec![]),
                (build(1, "failed", "main"), vec![created("error", &main)]),
                (
                    job(1, "main", "c", "failed", Some(2)),
                    vec![updated("error", &main)],
                ),
                (job(1, "main", "c", "failed", Some(2)), vec![]),
                (
                    job(1, "main", "d", "finished", Some(3)),
                    vec![updated("error", &main)],
                ),
                (job(1, "main", "e", "canceled", Some(-1)), vec![]),
                (
                    job(1, "main", "f", "failed", Some(1)).with("/job/soft_failed", json!(true)),
                    vec![],
                ),
                (
                    job(1, "main", "g", "timed_out", None),
                    vec![updated("error", &main)],
                ),
                (job(1, "main", "h", "broken", Some(1)), vec![]),
                // The record's ce_type (job.finished) counts, not the body's `event` field.
                (
                    job(2, "main", "i", "failed", Some(1)).with("/event", json!("job.started")),
                    vec![updated("error", &main)],
                ),
                (
                    job(2, "main", "i2", "failed", Some(1)).with("/event", json!("job.started")),
                    vec![updated("error", &main)],
                ),
                (
                    build(2, "passed", "main"),
                    vec![resolved("build_passed", "error", &main)],
                ),
                (job(1, "main", "k", "failed", Some(1)), vec![]),
                (job(2, "main", "l", "failed", Some(1)), vec![]),
                (job(3, "feature/x", "m", "failed", Some(1)), vec![]),
            ],
        },
        Scenario {
            name: "only job.finished counts",
            rules: Rules::default(),
            steps: vec![
                (build(1, "failed", "main"), vec![created("error", &main)]),
                (
                    {
                        let mut started = job(1, "main", "a", "failed", Some(1));
                        started.ce_type = "buildkite.job.started".into();
                        started
                    },
                    vec![],
                ),
            ],
        },
        Scenario {
            name: "builds.enabled = false: builds and jobs change nothing",
            rules: with_rules(|r| r.builds.enabled = false),
            steps: vec![
                (build(1, "failed", "main"), vec![]),
                (job(2, "main", "a", "failed", Some(1)), vec![]),
                (build(2, "failed", "main"), vec![]),
            ],
        },
        Scenario {
            name: "idle_branch_limit: beyond it the least recently active idle branch is forgotten",
            rules: with_rules(|r| r.builds.idle_branch_limit = 1),
            steps: vec![
                (build(10, "passed", "a"), vec![]),
                (build(11, "passed", "b"), vec![]),
                // `a` was forgotten, so its old #9 is no longer known to be stale.
                (
                    build(9, "failed", "a"),
                    vec![created("error", &main_key("a"))],
                ),
                // `b` is remembered: #8 < #11 is stale. (Open branches do not count.)
                (build(8, "failed", "b"), vec![]),
            ],
        },
        Scenario {
            name: "idle_branch_limit default remembers both branches",
            rules: Rules::default(),
            steps: vec![
                (build(10, "passed", "a"), vec![]),
                (build(11, "passed", "b"), vec![]),
                (build(9, "failed", "a"), vec![]),
                (build(8, "failed", "b"), vec![]),
            ],
        },
        Scenario {
            name: "pipelines are separate",
            rules: Rules::default(),
            steps: vec![
                (
                    build_of("api", 7, "failed", "main"),
                    vec![created("error", "buildkite/acme/pipeline/api/branch/main")],
                ),
                (build(1, "passed", "main"), vec![]),
                (build(2, "failed", "main"), vec![created("error", &main)]),
            ],
        },
    ]
}

fn agent_scenarios() -> Vec<Scenario> {
    let ci1 = agent_key("ci-1");
    vec![
        Scenario {
            name: "agent: lost opens, more trouble updates, connected (new id) resolves, the old id is stale",
            rules: no_grace(),
            steps: vec![
                (
                    agent("lost", "id-1", "ci-1"),
                    vec![created("warning", &ci1)],
                ),
                (
                    agent("disconnected", "id-1", "ci-1"),
                    vec![updated("warning", &ci1)],
                ),
                (
                    agent("connected", "id-2", "ci-1"),
                    vec![resolved("agent_connected", "warning", &ci1)],
                ),
                (agent("stopped", "id-1", "ci-1"), vec![]),
                (agent("lost", "id-1", "ci-1"), vec![]),
                (agent("connected", "id-1", "ci-1"), vec![]),
                (
                    agent("lost", "id-2", "ci-1"),
                    vec![created("warning", &ci1)],
                ),
                (
                    agent("stopped", "id-2", "ci-1"),
                    vec![updated("warning", &ci1)],
                ),
            ],
        },
        Scenario {
            name: "agent: reconnecting with the same id resolves and is not stale afterwards",
            rules: no_grace(),
            steps: vec![
                (
                    agent("lost", "id-1", "ci-1"),
                    vec![created("warning", &ci1)],
                ),
                (
                    agent("connected", "id-1", "ci-1"),
                    vec![resolved("agent_connected", "warning", &ci1)],
                ),
                (
                    agent("lost", "id-1", "ci-1"),
                    vec![created("warning", &ci1)],
                ),
            ],
        },
        Scenario {
            name: "agent: every id seen before a connected with another id is superseded",
            rules: no_grace(),
            steps: vec![
                (
                    agent("lost", "id-1", "ci-1"),
                    vec![created("warning", &ci1)],
                ),
                (
                    agent("lost", "id-2", "ci-1"),
                    vec![updated("warning", &ci1)],
                ),
                (
                    agent("connected", "id-3", "ci-1"),
                    vec![resolved("agent_connected", "warning", &ci1)],
                ),
                (agent("lost", "id-1", "ci-1"), vec![]),
                (agent("disconnected", "id-2", "ci-1"), vec![]),
            ],
        },
        Scenario {
            name: "agent: connected with nothing open, stopping and blocked change nothing by default",
            rules: no_grace(),
            steps: vec![
                (agent("connected", "id-1", "ci-1"), vec![]),
                (agent("stopping", "id-1", "ci-1"), vec![]),
                (agent("blocked", "id-1", "ci-1"), vec![]),
            ],
        },
        Scenario {
            name: "agents.open_on and agents.severity",
            rules: without_grace(|r| {
                r.agents.open_on = vec!["agent.stopping".into()];
                r.agents.severity = SeverityLevel::Critical;
            }),
            steps: vec![
                (agent("lost", "id-1", "ci-1"), vec![]),
                (
                    agent("stopping", "id-1", "ci-1"),
                    vec![created("critical", &ci1)],
                ),
                (agent("stopped", "id-1", "ci-1"), vec![]),
                (
                    agent("connected", "id-2", "ci-1"),
                    vec![resolved("agent_connected", "critical", &ci1)],
                ),
            ],
        },
        Scenario {
            name: "agents.enabled = false",
            rules: without_grace(|r| r.agents.enabled = false),
            steps: vec![
                (agent("lost", "id-1", "ci-1"), vec![]),
                (agent("connected", "id-2", "ci-1"), vec![]),
            ],
        },
        Scenario {
            name: "agents are matched by name",
            rules: no_grace(),
            steps: vec![
                (
                    agent("lost", "id-1", "ci-1"),
                    vec![created("warning", &ci1)],
                ),
                (
                    agent("lost", "id-9", "ci-2"),
                    vec![created("warning", &agent_key("ci-2"))],
                ),
                (
                    agent("connected", "id-8", "ci-2"),
                    vec![resolved("agent_connected", "warning", &agent_key("ci-2"))],
                ),
            ],
        },
    ]
}

fn bitbucket_scenarios() -> Vec<Scenario> {
    const H1: &str = "1111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222";
    const H3: &str = "3333333333333333333333333333333333333333";
    let feature_a = branch_key("feature/a");
    vec![
        Scenario {
            name: "pull request: created opens, fulfilled resolves, a late created is stale",
            rules: Rules::default(),
            steps: vec![
                (
                    pull_request("created", 1, "feature/a", "aaaa"),
                    vec![created("info", &pr_key(1))],
                ),
                (pull_request("updated", 1, "feature/a", "aaaa"), vec![]),
                (pull_request("approved", 1, "feature/a", "aaaa"), vec![]),
                (pull_request("created", 1, "feature/a", "aaaa"), vec![]),
                (
                    pull_request("fulfilled", 1, "feature/a", "aaaa"),
                    vec![resolved("pull_request_merged", "info", &pr_key(1))],
                ),
                (pull_request("created", 1, "feature/a", "aaaa"), vec![]),
                (pull_request("fulfilled", 1, "feature/a", "aaaa"), vec![]),
            ],
        },
        Scenario {
            name: "pull request: rejected resolves as declined",
            rules: Rules::default(),
            steps: vec![
                (
                    pull_request("created", 2, "feature/b", "bbbb"),
                    vec![created("info", &pr_key(2))],
                ),
                (
                    pull_request("rejected", 2, "feature/b", "bbbb"),
                    vec![resolved("pull_request_declined", "info", &pr_key(2))],
                ),
                (pull_request("created", 2, "feature/b", "bbbb"), vec![]),
            ],
        },
        Scenario {
            name: "pull request: closed before its created arrived",
            rules: Rules::default(),
            steps: vec![
                (pull_request("fulfilled", 3, "feature/c", "cccc"), vec![]),
                (pull_request("created", 3, "feature/c", "cccc"), vec![]),
                (
                    pull_request("created", 4, "feature/c", "cccc"),
                    vec![created("info", &pr_key(4))],
                ),
            ],
        },
        Scenario {
            name: "push opens per branch; merging a pull request from it resolves both in one apply",
            rules: Rules::default(),
            steps: vec![
                (
                    push(&[("branch", "feature/a", Some(H1))]),
                    vec![created("info", &feature_a)],
                ),
                (
                    push(&[("branch", "feature/a", Some(H2))]),
                    vec![updated("info", &feature_a)],
                ),
                (push(&[("branch", "feature/a", Some(H2))]), vec![]),
                (
                    pull_request("created", 4, "feature/a", &H2[..12]),
                    vec![created("info", &pr_key(4))],
                ),
                (
                    pull_request("fulfilled", 4, "feature/a", &H2[..12]),
                    vec![
                        resolved("pull_request_merged", "info", &pr_key(4)),
                        resolved("branch_merged", "info", &feature_a),
                    ],
                ),
                // The push of the merged head, delivered late, is stale; new work is not.
                (push(&[("branch", "feature/a", Some(H2))]), vec![]),
                (
                    push(&[("branch", "feature/a", Some(H3))]),
                    vec![created("info", &feature_a)],
                ),
            ],
        },
        Scenario {
            name: "tags and deleted branches change nothing; one push can open several branches",
            rules: Rules::default(),
            steps: vec![
                (
                    push(&[("tag", "v1.0", Some(H1)), ("branch", "old", None)]),
                    vec![],
                ),
                (
                    push(&[("branch", "a", Some(H1)), ("branch", "b", Some(H2))]),
                    vec![
                        created("info", &branch_key("a")),
                        created("info", &branch_key("b")),
                    ],
                ),
                (push(&[("branch", "a", None)]), vec![]),
            ],
        },
        Scenario {
            name: "a declined pull request or one from a fork does not resolve the branch",
            rules: Rules::default(),
            steps: vec![
                (
                    push(&[("branch", "feature/a", Some(H1))]),
                    vec![created("info", &feature_a)],
                ),
                (pull_request("rejected", 5, "feature/a", &H1[..12]), vec![]),
                (
                    pull_request("fulfilled", 6, "feature/a", &H1[..12]).with(
                        "/pullrequest/source/repository/full_name",
                        json!("someone/fork"),
                    ),
                    vec![],
                ),
                (
                    push(&[("branch", "feature/a", Some(H2))]),
                    vec![updated("info", &feature_a)],
                ),
                (
                    pull_request("fulfilled", 7, "feature/a", &H2[..12]),
                    vec![resolved("branch_merged", "info", &feature_a)],
                ),
            ],
        },
        Scenario {
            name: "bitbucket include_branches and exclude_branches",
            rules: with_rules(|r| {
                r.bitbucket.include_branches = vec!["feature/*".into(), "main".into()];
                r.bitbucket.exclude_branches = vec!["main".into()];
            }),
            steps: vec![
                (push(&[("branch", "main", Some(H1))]), vec![]),
                (push(&[("branch", "bugfix/b", Some(H1))]), vec![]),
                (
                    push(&[("branch", "feature/a", Some(H1))]),
                    vec![created("info", &feature_a)],
                ),
            ],
        },
        Scenario {
            name: "bitbucket.pull_requests = false: no pull request incidents, branches still resolve",
            rules: with_rules(|r| r.bitbucket.pull_requests = false),
            steps: vec![
                (pull_request("created", 8, "feature/a", &H1[..12]), vec![]),
                (
                    push(&[("branch", "feature/a", Some(H1))]),
                    vec![created("info", &feature_a)],
                ),
                (
                    pull_request("fulfilled", 8, "feature/a", &H1[..12]),
                    vec![resolved("branch_merged", "info", &feature_a)],
                ),
            ],
        },
        Scenario {
            name: "bitbucket.branches = false: pushes change nothing",
            rules: with_rules(|r| r.bitbucket.branches = false),
            steps: vec![
                (push(&[("branch", "feature/a", Some(H1))]), vec![]),
                (
                    pull_request("created", 9, "feature/a", &H1[..12]),
                    vec![created("info", &pr_key(9))],
                ),
                (
                    pull_request("fulfilled", 9, "feature/a", &H1[..12]),
                    vec![resolved("pull_request_merged", "info", &pr_key(9))],
                ),
            ],
        },
        Scenario {
            name: "bitbucket severities",
            rules: with_rules(|r| {
                r.bitbucket.pull_request_severity = SeverityLevel::Warning;
                r.bitbucket.branch_severity = SeverityLevel::Error;
            }),
            steps: vec![
                (
                    push(&[("branch", "feature/a", Some(H1))]),
                    vec![created("error", &feature_a)],
                ),
                (
                    pull_request("created", 10, "feature/a", &H1[..12]),
                    vec![created("warning", &pr_key(10))],
                ),
                (
                    pull_request("fulfilled", 10, "feature/a", &H1[..12]),
                    vec![
                        resolved("pull_request_merged", "warning", &pr_key(10)),
                        resolved("branch_merged", "error", &feature_a),
                    ],
                ),
            ],
        },
    ]
}

fn general_scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "ping and unknown events change nothing",
            rules: Rules::default(),
            steps: vec![
                (ping(), vec![]),
                (unknown(), vec![]),
                (
                    build(1, "failed", "main"),
                    vec![created("error", &main_key("main"))],
                ),
                (ping(), vec![]),
            ],
        },
        Scenario {
            name: "a repeated delivery (same ce_id) changes nothing",
            rules: no_grace(),
            steps: vec![
                (
                    agent("lost", "id-1", "ci-1").id("x"),
                    vec![created("warning", &agent_key("ci-1"))],
                ),
                (agent("lost", "id-1", "ci-1").id("x"), vec![]),
                (
                    pull_request("created", 1, "a", "aaaaaaa").id("y"),
                    vec![created("info", &pr_key(1))],
                ),
                (pull_request("fulfilled", 1, "a", "aaaaaaa").id("y"), vec![]),
            ],
        },
        Scenario {
            name: "dedup_window: a repeat older than the window applies again",
            rules: without_grace(|r| r.dedup_window = 2),
            steps: vec![
                (
                    agent("lost", "id-1", "ci-1").id("d1"),
                    vec![created("warning", &agent_key("ci-1"))],
                ),
                (agent("lost", "id-1", "ci-1").id("d1"), vec![]),
                (agent("stopping", "id-1", "ci-1").id("s1"), vec![]),
                (agent("stopping", "id-1", "ci-1").id("s2"), vec![]),
                (
                    agent("lost", "id-1", "ci-1").id("d1"),
                    vec![updated("warning", &agent_key("ci-1"))],
                ),
            ],
        },
        Scenario {
            name: "dedup_window = 0 turns duplicate suppression off",
            rules: without_grace(|r| r.dedup_window = 0),
            steps: vec![
                (
                    agent("lost", "id-1", "ci-1").id("d1"),
                    vec![created("warning", &agent_key("ci-1"))],
                ),
                (
                    agent("lost", "id-1", "ci-1").id("d1"),
                    vec![updated("warning", &agent_key("ci-1"))],
                ),
                // Builds stay idempotent without it.
                (
                    build(1, "failed", "main").id("b1"),
                    vec![created("error", &main_key("main"))],
                ),
                (build(1, "failed", "main").id("b1"), vec![]),
            ],
        },
        Scenario {
            name: "the real fixtures",
            rules: no_grace(),
            steps: vec![
                (
                    Hook::fixture("buildkite.ping", "buildkite/ping.json"),
                    vec![],
                ),
                (
                    Hook::fixture(
                        "buildkite.job.finished",
                        "buildkite/job-finished-failed.json",
                    ),
                    vec![],
                ),
                (
                    Hook::fixture(
                        "buildkite.build.finished",
                        "buildkite/build-finished-failed.json",
                    ),
                    vec![created("error", &main_key("main"))],
                ),
                (
                    Hook::fixture("buildkite.build.running", "buildkite/build-running.json"),
                    vec![],
                ),
                (
                    Hook::fixture(
                        "buildkite.build.finished",
                        "buildkite/build-finished-passed.json",
                    ),
                    vec![resolved("build_passed", "error", &main_key("main"))],
                ),
                (
                    Hook::fixture("buildkite.agent.lost", "buildkite/agent-lost.json"),
                    vec![created("warning", &agent_key("ci-agent-1"))],
                ),
                (
                    Hook::fixture(
                        "buildkite.agent.connected",
                        "buildkite/agent-connected.json",
                    ),
                    vec![resolved(
                        "agent_connected",
                        "warning",
                        &agent_key("ci-agent-1"),
                    )],
                ),
                (
                    Hook::fixture(
                        "bitbucket.pullrequest:created",
                        "bitbucket/pullrequest-created.json",
                    ),
                    vec![created(
                        "info",
                        "bitbucket/acme/repo/lkysow/atlantis-example/pr/16",
                    )],
                ),
                (
                    Hook::fixture(
                        "bitbucket.pullrequest:fulfilled",
                        "bitbucket/pullrequest-fulfilled.json",
                    ),
                    vec![resolved(
                        "pull_request_merged",
                        "info",
                        "bitbucket/acme/repo/lkysow/atlantis-example/pr/16",
                    )],
                ),
                (
                    Hook::fixture(
                        "bitbucket.pullrequest:fulfilled",
                        "bitbucket/pullrequest-fulfilled-2.json",
                    ),
                    vec![],
                ),
                (
                    Hook::fixture(
                        "bitbucket.pullrequest:rejected",
                        "bitbucket/pullrequest-rejected.json",
                    ),
                    vec![],
                ),
                (
                    Hook::fixture("bitbucket.repo:push", "bitbucket/repo-push.json"),
                    vec![created(
                        "info",
                        "bitbucket/acme/repo/nfalco79/test-repos/branch/feature/webhook",
                    )],
                ),
            ],
        },
    ]
}

/// Time in the log: grace periods, expiry (ticks move time on without webhooks), and the
/// build options that count failures.
fn timer_scenarios() -> Vec<Scenario> {
    let ci1 = agent_key("ci-1");
    let main = main_key("main");
    let minutes = |m: u64| std::time::Duration::from_secs(60 * m);
    vec![
        Scenario {
            name: "grace: an agent back within the grace gives no event at all",
            rules: Rules::default(),
            steps: vec![
                (agent("lost", "id-1", "ci-1").at(at(0, 0)), vec![]),
                (tick(at(4, 0)), vec![]),
                (agent("connected", "id-2", "ci-1").at(at(4, 30)), vec![]),
                (tick(at(30, 0)), vec![]),
            ],
        },
        Scenario {
            name: "grace: an agent not back in time opens when the grace has passed, and connecting resolves",
            rules: Rules::default(),
            steps: vec![
                (agent("lost", "id-1", "ci-1").at(at(0, 0)), vec![]),
                // More trouble during the grace waits with the first event.
                (agent("disconnected", "id-1", "ci-1").at(at(2, 0)), vec![]),
                (tick(at(4, 59)), vec![]),
                (tick(at(5, 0)), vec![created("warning", &ci1)]),
                (tick(at(5, 0)), vec![]),
                (
                    agent("stopped", "id-1", "ci-1").at(at(6, 0)),
                    vec![updated("warning", &ci1)],
                ),
                (
                    agent("connected", "id-2", "ci-1").at(at(7, 0)),
                    vec![resolved("agent_connected", "warning", &ci1)],
                ),
            ],
        },
        Scenario {
            name: "grace: any later record moves time on, a webhook of another key too",
            rules: Rules::default(),
            steps: vec![
                (agent("lost", "id-1", "ci-1").at(at(0, 0)), vec![]),
                (
                    build(1, "failed", "main").at(at(6, 0)),
                    vec![created("warning", &ci1), created("error", &main)],
                ),
            ],
        },
        Scenario {
            name: "grace: a late opening event whose grace already passed in the log opens at once",
            rules: Rules::default(),
            steps: vec![
                (tick(at(30, 0)), vec![]),
                (
                    agent("lost", "id-1", "ci-1").at(at(0, 0)),
                    vec![created("warning", &ci1)],
                ),
            ],
        },
        Scenario {
            name: "resolve_after: an agent incident still open then resolves as expired",
            rules: without_grace(|r| r.agents.resolve_after = Some(minutes(60))),
            steps: vec![
                (
                    agent("lost", "id-1", "ci-1").at(at(0, 0)),
                    vec![created("warning", &ci1)],
                ),
                (
                    agent("lost", "id-1", "ci-1").at(at(10, 0)),
                    vec![updated("warning", &ci1)],
                ),
                (tick(at(59, 59)), vec![]),
                (tick(at(60, 0)), vec![resolved("expired", "warning", &ci1)]),
                (tick(at(200, 0)), vec![]),
                // The agent (or its name) comes back later: a new incident, a new expiry.
                (
                    agent("lost", "id-3", "ci-1").at(at(201, 0)),
                    vec![created("warning", &ci1)],
                ),
                (
                    agent("connected", "id-4", "ci-1").at(at(202, 0)),
                    vec![resolved("agent_connected", "warning", &ci1)],
                ),
                (tick(at(300, 0)), vec![]),
            ],
        },
        Scenario {
            name: "grace and resolve_after: both due at once give CREATED then RESOLVED",
            rules: with_rules(|r| {
                r.agents.grace = minutes(5);
                r.agents.resolve_after = Some(minutes(30));
            }),
            steps: vec![
                (agent("lost", "id-1", "ci-1").at(at(0, 0)), vec![]),
                (
                    tick(at(45, 0)),
                    vec![
                        created("warning", &ci1),
                        resolved("expired", "warning", &ci1),
                    ],
                ),
            ],
        },
        Scenario {
            name: "open_on_failing: build.failing opens at once, its build.finished failed updates, a pass resolves",
            rules: with_rules(|r| r.builds.open_on_failing = true),
            steps: vec![
                (
                    build_event("build.failing", 1, "failing", "main"),
                    vec![created("error", &main)],
                ),
                (build_event("build.failing", 1, "failing", "main"), vec![]),
                (build(1, "failed", "main"), vec![updated("error", &main)]),
                (build(1, "failed", "main"), vec![]),
                (
                    build_event("build.failing", 2, "failing", "main"),
                    vec![updated("error", &main)],
                ),
                // A build that was failing can still pass (a retried job).
                (
                    build(2, "passed", "main"),
                    vec![resolved("build_passed", "error", &main)],
                ),
                // Older than the newest verdict: stale.
                (build_event("build.failing", 1, "failing", "main"), vec![]),
            ],
        },
        Scenario {
            name: "open_after_failures = 3: two failures then a pass give nothing; three in a row open",
            rules: with_rules(|r| r.builds.open_after_failures = 3),
            steps: vec![
                (build(1, "failed", "main"), vec![]),
                (build(2, "failed", "main"), vec![]),
                (build(3, "passed", "main"), vec![]),
                (build(4, "failed", "main"), vec![]),
                (build(4, "failed", "main").id("repeat-4"), vec![]),
                (build(5, "failed", "main"), vec![]),
                (build(6, "failed", "main"), vec![created("error", &main)]),
                (build(7, "failed", "main"), vec![updated("error", &main)]),
                (
                    build(8, "passed", "main"),
                    vec![resolved("build_passed", "error", &main)],
                ),
                (build(9, "failed", "main"), vec![]),
            ],
        },
        Scenario {
            name: "open_after_failures with open_on_failing: a build counts once, failing or failed",
            rules: with_rules(|r| {
                r.builds.open_after_failures = 2;
                r.builds.open_on_failing = true;
            }),
            steps: vec![
                (build_event("build.failing", 1, "failing", "main"), vec![]),
                (build(1, "failed", "main"), vec![]),
                (
                    build_event("build.failing", 2, "failing", "main"),
                    vec![created("error", &main)],
                ),
                (build(2, "failed", "main"), vec![updated("error", &main)]),
            ],
        },
    ]
}

fn run_scenarios(scenarios: Vec<Scenario>) {
    let mut failures = Vec::new();
    for scenario in scenarios {
        scenario
            .rules
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", scenario.name));
        let mut run = Run::new(scenario.rules.clone());
        let mut all = Vec::new();
        for (index, (hook, expected)) in scenario.steps.iter().enumerate() {
            let outputs = run.apply(hook);
            let got: Vec<String> = outputs.iter().map(brief).collect();
            if got != *expected {
                failures.push(format!(
                    "{}\n  step {index} ({}): expected {expected:#?}\n  got {got:#?}",
                    scenario.name, hook.ce_type
                ));
            }
            all.extend(outputs);
        }
        match check_lifecycle(&all) {
            Ok(open) => {
                if open != open_in_states(&run.states_by_key()) {
                    failures.push(format!(
                        "{}: open incidents differ from the state's",
                        scenario.name
                    ));
                }
            }
            Err(error) => failures.push(format!("{}: {error}", scenario.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn build_rules() {
    run_scenarios(build_scenarios());
}

#[test]
fn agent_rules() {
    run_scenarios(agent_scenarios());
}

#[test]
fn bitbucket_rules() {
    run_scenarios(bitbucket_scenarios());
}

#[test]
fn timer_rules() {
    run_scenarios(timer_scenarios());
}

#[test]
fn general_rules() {
    run_scenarios(general_scenarios());
}
