//! Property tests: `fold` over generated webhook sequences (builds with random numbers,
//! states and branches, `build.failing`; jobs; agents with ids and names; pull requests;
//! pushes; pings, unknown events, redeliveries and ticks), under generated rules (grace
//! periods, expiry, `open_on_failing`, `open_after_failures` included).

mod support;

use std::collections::{BTreeMap, BTreeSet};

use hookfold_proto::v1::{IncidentEvent, ResolutionReason, Transition};
use hookfold_rules::{BranchSeverity, BuildScope, KeyState, Rules, SeverityLevel};
use proptest::prelude::*;
use serde_json::json;
use support::*;

const BRANCHES: [&str; 3] = ["main", "feature/a", "release/1"];
/// Build states, with failed and passed more likely; "blocked-pass" is a passed build with
/// `blocked: true`.
const BUILD_STATES: [&str; 9] = [
    "failed",
    "passed",
    "failed",
    "passed",
    "canceled",
    "skipped",
    "blocked",
    "not_run",
    "blocked-pass",
];
/// (state, exit status, soft failed)
const JOB_STATES: [(&str, Option<i64>, bool); 6] = [
    ("failed", Some(1), false),
    ("passed", Some(0), false),
    ("finished", Some(2), false),
    ("canceled", Some(-1), false),
    ("timed_out", None, false),
    ("failed", Some(1), true),
];
const AGENT_ACTIONS: [&str; 5] = ["connected", "lost", "disconnected", "stopped", "stopping"];
const PR_ACTIONS: [&str; 4] = ["created", "fulfilled", "rejected", "updated"];
const PR_BRANCHES: [&str; 3] = ["feature/a", "feature/b", "main"];
const HEADS: [&str; 4] = [
    "1111111111111111111111111111111111111111",
    "2222222222222222222222222222222222222222",
    "3333333333333333333333333333333333333333",
    "4444444444444444444444444444444444444444",
];

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Build {
        number: u64,
        state: usize,
        branch: usize,
    },
    Job {
        number: u64,
        branch: usize,
        job: usize,
        state: usize,
    },
    Agent {
        action: usize,
        id: usize,
        name: usize,
    },
    PullRequest {
        action: usize,
        id: u64,
        branch: usize,
        head: usize,
        fork: bool,
    },
    /// (kind: 0 branch, 1 tag, 2 deletion; branch; head)
    Push {
        changes: Vec<(usize, usize, usize)>,
    },
    Ping,
    Unknown,
    /// A redelivery of the earlier event at this index (modulo how many came before).
    Repeat(usize),
    /// `build.failing` of a build.
    Failing {
        number: u64,
        branch: usize,
    },
    /// A tick this many minutes after the record's own time slot (so possibly ahead of the
    /// webhooks that follow: they are then late).
    Tick {
        ahead: i64,
    },
}

/// One record of a generated sequence.
#[derive(Debug, Clone)]
enum Step {
    Hook(Hook),
    Tick(time::OffsetDateTime),
}

impl Step {
    fn time(&self) -> time::OffsetDateTime {
        match self {
            Step::Hook(hook) => hook.time.expect("generated hooks have a time"),
            Step::Tick(time) => *time,
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..12u64, 0..BUILD_STATES.len(), 0..BRANCHES.len())
            .prop_map(|(number, state, branch)| Op::Build { number, state, branch }),
        2 => (1..12u64, 0..BRANCHES.len(), 0..4usize, 0..JOB_STATES.len())
            .prop_map(|(number, branch, job, state)| Op::Job { number, branch, job, state }),
        3 => (0..AGENT_ACTIONS.len(), 0..4usize, 0..2usize)
            .prop_map(|(action, id, name)| Op::Agent { action, id, name }),
        2 => (0..PR_ACTIONS.len(), 1..5u64, 0..PR_BRANCHES.len(), 0..HEADS.len(), prop::bool::weighted(0.1))
            .prop_map(|(action, id, branch, head, fork)| Op::PullRequest { action, id, branch, head, fork }),
        2 => prop::collection::vec((prop_oneof![6 => Just(0usize), 1 => Just(1), 1 => Just(2)], 0..PR_BRANCHES.len(), 0..HEADS.len()), 1..3)
            .prop_map(|changes| Op::Push { changes }),
        1 => Just(Op::Ping),
        1 => Just(Op::Unknown),
        1 => any::<usize>().prop_map(Op::Repeat),
        1 => (1..12u64, 0..BRANCHES.len()).prop_map(|(number, branch)| Op::Failing { number, branch }),
        2 => (0..15i64).prop_map(|ahead| Op::Tick { ahead }),
    ]
}

fn rules() -> impl Strategy<Value = Rules> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0..3usize,
        any::<bool>(),
        any::<bool>(),
        (0..3usize, 0..3usize, any::<bool>(), 1..4u32),
    )
        .prop_map(
            |(
                pipeline_scope,
                exclude_release,
                main_critical,
                open_on,
                pull_requests,
                branches,
                (grace, expiry, open_on_failing, open_after_failures),
            )| {
                let mut rules = Rules::default();
                let minutes = |m: u64| std::time::Duration::from_secs(60 * m);
                rules.agents.grace = minutes([0, 3, 10][grace]);
                rules.agents.resolve_after = [None, Some(minutes(5)), Some(minutes(30))][expiry];
                rules.builds.open_on_failing = open_on_failing;
                rules.builds.open_after_failures = open_after_failures;
                if pipeline_scope {
                    rules.builds.scope = BuildScope::Pipeline;
                }
                if exclude_release {
                    rules.builds.exclude_branches = vec!["release/*".into()];
                }
                if main_critical {
                    rules.builds.severity = vec![BranchSeverity {
                        branch: "main".into(),
                        severity: SeverityLevel::Critical,
                    }];
                }
                rules.agents.open_on = match open_on {
                    0 => rules.agents.open_on,
                    1 => vec!["agent.lost".into()],
                    _ => vec!["agent.stopping".into(), "agent.disconnected".into()],
                };
                rules.bitbucket.pull_requests = pull_requests;
                rules.bitbucket.branches = branches;
                rules
            },
        )
}

/// The records of a sequence, each webhook with a fixed ce_id, time and offset, and the op
/// it carries (a repeat resolved to the op it repeats; a repeat of a tick is a tick again).
fn hooks(ops: &[Op]) -> Vec<(Step, Op, bool)> {
    let mut out: Vec<(Step, Op, bool)> = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        if let Op::Repeat(of) = op
            && !out.is_empty()
        {
            let (step, op, _) = out[of % out.len()].clone();
            out.push((step, op, true));
            continue;
        }
        let slot = BASE_TIME + time::Duration::minutes(index as i64);
        if let Op::Tick { ahead } = op {
            let step = Step::Tick(slot + time::Duration::minutes(*ahead));
            out.push((step, op.clone(), false));
            continue;
        }
        let hook = match op {
            Op::Build {
                number,
                state,
                branch,
            } => {
                let state = BUILD_STATES[*state];
                if state == "blocked-pass" {
                    build(*number, "passed", BRANCHES[*branch]).with("/build/blocked", json!(true))
                } else {
                    build(*number, state, BRANCHES[*branch])
                }
            }
            Op::Job {
                number,
                branch,
                job: job_index,
                state,
            } => {
                let (state, exit, soft) = JOB_STATES[*state];
                job(
                    *number,
                    BRANCHES[*branch],
                    &format!("job-{number}-{job_index}"),
                    state,
                    exit,
                )
                .with("/job/soft_failed", json!(soft))
            }
            Op::Agent { action, id, name } => agent(
                AGENT_ACTIONS[*action],
                &format!("id-{id}"),
                &format!("ci-{name}"),
            ),
            Op::PullRequest {
                action,
                id,
                branch,
                head,
                fork,
            } => {
                let hook = pull_request(
                    PR_ACTIONS[*action],
                    *id,
                    PR_BRANCHES[*branch],
                    &HEADS[*head][..12],
                );
                if *fork {
                    hook.with(
                        "/pullrequest/source/repository/full_name",
                        json!("someone/fork"),
                    )
                } else {
                    hook
                }
            }
            Op::Push { changes } => {
                let changes: Vec<(&str, &str, Option<&str>)> = changes
                    .iter()
                    .map(|(kind, branch, head)| match kind {
                        0 => ("branch", PR_BRANCHES[*branch], Some(HEADS[*head])),
                        1 => ("tag", PR_BRANCHES[*branch], Some(HEADS[*head])),
                        _ => ("branch", PR_BRANCHES[*branch], None),
                    })
                    .collect();
                push(&changes)
            }
            Op::Failing { number, branch } => {
                build_event("build.failing", *number, "failing", BRANCHES[*branch])
            }
            Op::Ping | Op::Repeat(_) | Op::Tick { .. } => ping(),
            Op::Unknown => unknown(),
        };
        let hook = hook.id(&format!("ce-{index}")).at(slot);
        let hook = Hook {
            offset: Some(index as i64),
            ..hook
        };
        out.push((Step::Hook(hook), op.clone(), false));
    }
    out
}

struct Folded {
    states: BTreeMap<String, KeyState>,
    per_step: Vec<Vec<IncidentEvent>>,
}

impl Folded {
    fn all(&self) -> Vec<IncidentEvent> {
        self.per_step.iter().flatten().cloned().collect()
    }
}

fn fold(rules: &Rules, steps: &[Step]) -> Folded {
    let mut run = Run::new(rules.clone());
    let per_step = steps
        .iter()
        .map(|step| match step {
            Step::Hook(hook) => run.apply(hook),
            Step::Tick(time) => run.tick(*time),
        })
        .collect();
    Folded {
        states: run.states_by_key(),
        per_step,
    }
}

/// The events of `outputs` that the record at `offset` caused itself (not a timer it
/// merely moved the clock past).
fn caused_by(outputs: &[IncidentEvent], offset: Option<i64>) -> Vec<IncidentEvent> {
    outputs
        .iter()
        .filter(|event| event.cause.as_ref().map(|c| c.offset) == offset)
        .cloned()
        .collect()
}

fn offset_of(step: &Step) -> Option<i64> {
    match step {
        Step::Hook(hook) => hook.offset,
        Step::Tick(_) => None,
    }
}

fn sequence() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 0..80)
}

fn just_hooks(hooks: &[(Step, Op, bool)]) -> Vec<Step> {
    hooks.iter().map(|(step, _, _)| step.clone()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn folding_twice_gives_the_same_states_and_outputs(rules in rules(), ops in sequence()) {
        let hooks = just_hooks(&hooks(&ops));
        let first = fold(&rules, &hooks);
        let second = fold(&rules, &hooks);
        prop_assert_eq!(&first.states, &second.states);
        prop_assert_eq!(&first.per_step, &second.per_step);
    }

    #[test]
    fn a_duplicate_inserted_anywhere_changes_nothing(
        rules in rules(),
        ops in prop::collection::vec(op(), 1..80),
        pick in any::<prop::sample::Index>(),
        place in any::<prop::sample::Index>(),
    ) {
        let hooks = just_hooks(&hooks(&ops));
        let original = pick.index(hooks.len());
        // Anywhere after the original (a copy before it would make the original the repeat).
        let at = original + 1 + place.index(hooks.len() - original);
        let mut with_duplicate = hooks.clone();
        with_duplicate.insert(at, hooks[original].clone());

        let plain = fold(&rules, &hooks);
        let duplicated = fold(&rules, &with_duplicate);
        prop_assert_eq!(&plain.states, &duplicated.states);
        prop_assert_eq!(plain.all(), duplicated.all());
        prop_assert!(duplicated.per_step[at].is_empty());
    }

    #[test]
    fn redeliveries_in_a_sequence_change_nothing(rules in rules(), ops in sequence()) {
        let hooks = hooks(&ops);
        let folded = fold(&rules, &just_hooks(&hooks));
        for ((_, _, repeat), outputs) in hooks.iter().zip(&folded.per_step) {
            if *repeat {
                prop_assert!(outputs.is_empty(), "a repeat produced {:?}", outputs);
            }
        }
    }

    #[test]
    fn stale_builds_and_their_jobs_never_create_update_or_resolve(rules in rules(), ops in sequence()) {
        let hooks = hooks(&ops);
        let folded = fold(&rules, &just_hooks(&hooks));
        // Highest build number with a verdict (failed, or passed and not blocked) per scope,
        // computed from the inputs alone.
        let mut highest: BTreeMap<&str, u64> = BTreeMap::new();
        let scope_of = |branch: &'static str| match rules.builds.scope {
            BuildScope::PipelineBranch => branch,
            BuildScope::Pipeline => "",
        };
        for ((step, op, repeat), outputs) in hooks.iter().zip(&folded.per_step) {
            if *repeat {
                continue;
            }
            let outputs = &caused_by(outputs, offset_of(step));
            match op {
                Op::Build { number, state, branch } => {
                    let branch = BRANCHES[*branch];
                    if !rules.builds.branch_included(branch) {
                        prop_assert!(outputs.is_empty());
                        continue;
                    }
                    let scope = scope_of(branch);
                    let known = highest.get(scope).copied().unwrap_or(0);
                    let verdict = matches!(BUILD_STATES[*state], "failed" | "passed");
                    if !verdict || *number < known {
                        prop_assert!(outputs.is_empty(), "build #{} ({}) after #{} gave {:?}", number, BUILD_STATES[*state], known, outputs);
                    }
                    if verdict {
                        highest.insert(scope, known.max(*number));
                    }
                }
                Op::Job { number, branch, .. } => {
                    let scope = scope_of(BRANCHES[*branch]);
                    if *number < highest.get(scope).copied().unwrap_or(0) {
                        prop_assert!(outputs.is_empty(), "job of stale build #{} gave {:?}", number, outputs);
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn incidents_have_well_formed_lifecycles(rules in rules(), ops in sequence()) {
        let hooks = hooks(&ops);
        let folded = fold(&rules, &just_hooks(&hooks));
        // CREATED before any UPDATED/RESOLVED of the same incident_id, at most one open
        // incident per dedup key, sequence numbers counting up, unique event ids.
        let open = check_lifecycle(&folded.all()).map_err(TestCaseError::fail)?;
        prop_assert_eq!(open, open_in_states(&folded.states));
        let created: Vec<_> = folded.all().into_iter().filter(|e| e.sequence == 0).map(|e| e.incident_id).collect();
        let distinct: BTreeSet<_> = created.iter().collect();
        prop_assert_eq!(created.len(), distinct.len(), "incident ids repeat");
        // Every event is attributed to a webhook at or before the record that emitted it:
        // itself, or (a timer) the one that armed it.
        for (at, (_, outputs)) in hooks.iter().zip(&folded.per_step).enumerate() {
            for event in outputs {
                let cause = event.cause.as_ref().unwrap();
                let index = usize::try_from(cause.offset).unwrap();
                prop_assert!(index <= at, "caused by a later record: {:?}", event);
                let Step::Hook(origin) = &hooks[index].0 else {
                    return Err(TestCaseError::fail(format!("caused by a tick: {event:?}")));
                };
                prop_assert_eq!(Some(&cause.ce_id), origin.ce_id.as_ref());
                prop_assert_eq!(&event.source_id, SOURCE);
            }
        }
    }

    #[test]
    fn superseded_agents_and_closed_pull_requests_are_stale(rules in rules(), ops in sequence()) {
        let hooks = hooks(&ops);
        let folded = fold(&rules, &just_hooks(&hooks));
        let mut live: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        let mut superseded: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        let mut closed = BTreeSet::new();
        for ((step, op, repeat), outputs) in hooks.iter().zip(&folded.per_step) {
            if *repeat {
                continue;
            }
            let outputs = &caused_by(outputs, offset_of(step));
            match op {
                Op::Agent { action, id, name } => {
                    let action = AGENT_ACTIONS[*action];
                    let uses = action == "connected" || rules.agents.open_on.contains(&format!("agent.{action}"));
                    if superseded.entry(*name).or_default().contains(id) {
                        prop_assert!(outputs.is_empty(), "superseded id-{} gave {:?}", id, outputs);
                        continue;
                    }
                    if action == "connected" {
                        let before = std::mem::take(live.entry(*name).or_default());
                        superseded.entry(*name).or_default().extend(before.into_iter().filter(|other| other != id));
                        live.entry(*name).or_default().insert(*id);
                    } else if uses {
                        live.entry(*name).or_default().insert(*id);
                    }
                }
                Op::PullRequest { action, id, .. } if rules.bitbucket.pull_requests => {
                    match PR_ACTIONS[*action] {
                        "created" if closed.contains(id) => {
                            prop_assert!(outputs.is_empty(), "closed PR {} reopened: {:?}", id, outputs);
                        }
                        "fulfilled" | "rejected" => {
                            closed.insert(*id);
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn states_round_trip_through_a_binary_codec(rules in rules(), ops in sequence()) {
        let folded = fold(&rules, &just_hooks(&hooks(&ops)));
        for state in folded.states.values() {
            let bytes = postcard::to_stdvec(state).unwrap();
            let back: KeyState = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, state);
        }
    }

    #[test]
    fn extra_ticks_anywhere_change_neither_what_is_emitted_nor_the_ids(
        rules in rules(),
        ops in sequence(),
        extra in prop::collection::vec((any::<prop::sample::Index>(), 0.0..=1.0f64), 1..20),
    ) {
        let steps = just_hooks(&hooks(&ops));
        prop_assume!(!steps.is_empty());
        // A tick lands between two records, with a time between theirs (the processor ticks
        // a quiet partition with the time it is then): never after the last record, which
        // would move time past where the plain log ends.
        let mut ticked = steps.clone();
        let mut places: Vec<(usize, f64)> =
            extra.iter().map(|(at, within)| (at.index(steps.len()), *within)).collect();
        places.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)));
        for (at, within) in places {
            let next = steps[at].time();
            let previous = steps[..at].iter().map(Step::time).max().unwrap_or(next).min(next);
            let span = (next - previous).whole_seconds() as f64;
            let time = previous + time::Duration::seconds((span * within) as i64);
            ticked.insert(at, Step::Tick(time));
        }
        let plain = fold(&rules, &steps);
        let with_ticks = fold(&rules, &ticked);
        prop_assert_eq!(plain.all(), with_ticks.all());
        prop_assert_eq!(&plain.states, &with_ticks.states);
    }

    #[test]
    fn a_repeated_tick_is_a_no_op(rules in rules(), ops in sequence(), pick in any::<prop::sample::Index>()) {
        let steps = just_hooks(&hooks(&ops));
        let ticks: Vec<usize> = (0..steps.len()).filter(|i| matches!(steps[*i], Step::Tick(_))).collect();
        prop_assume!(!ticks.is_empty());
        let at = ticks[pick.index(ticks.len())];
        let mut repeated = steps.clone();
        repeated.insert(at + 1, steps[at].clone());
        let plain = fold(&rules, &steps);
        let twice = fold(&rules, &repeated);
        prop_assert!(twice.per_step[at + 1].is_empty());
        prop_assert_eq!(plain.all(), twice.all());
        prop_assert_eq!(&plain.states, &twice.states);
    }

    #[test]
    fn no_timer_fires_before_its_deadline_nor_stays_due(rules in rules(), ops in sequence()) {
        let hooks = hooks(&ops);
        let mut run = Run::new(rules.clone());
        let mut watermark = None;
        for (step, _, _) in &hooks {
            let outputs = match step {
                Step::Hook(hook) => run.apply(hook),
                Step::Tick(time) => run.tick(*time),
            };
            watermark = watermark.max(Some(step.time()));
            let now = watermark.unwrap();
            for event in &outputs {
                let occurred = hookfold_proto::timestamp::to_offset_date_time(event.occurred_at.as_ref().unwrap()).unwrap();
                let agent = event.dedup_key.contains("/agent/");
                if agent && event.transition == Transition::Created as i32 {
                    // Its time is the opening webhook's; it may open only once grace passed.
                    prop_assert!(occurred + rules.agents.grace <= now, "created before its grace ran out: {:?}", event);
                }
                if event.resolution_reason == ResolutionReason::Expired as i32 {
                    prop_assert!(occurred <= now, "expired before its deadline: {:?}", event);
                    let created = hookfold_proto::timestamp::to_offset_date_time(event.created_at.as_ref().unwrap()).unwrap();
                    prop_assert_eq!(Some(occurred - created), rules.agents.resolve_after.map(|d| time::Duration::try_from(d).unwrap()));
                }
            }
            // Whatever is due has fired.
            prop_assert_eq!(run.clock.watermark(), Some(now));
            if let Some(next) = run.clock.next_deadline() {
                prop_assert!(next > now, "a timer at {} is still waiting at {}", next, now);
            }
        }
    }
}
