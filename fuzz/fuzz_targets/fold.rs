//! `fold` over arbitrary sequences of webhook events (builds, jobs, agents, pull requests,
//! pushes, pings, unknown events, redeliveries and ticks, in any order, with any build
//! numbers, any times and names from small sets so that events meet), under arbitrary rules
//! (grace periods, expiry and the build failure options included). The
//! rules' invariants are checked as in the property tests (rules/tests/properties.rs), with
//! the same test support: every incident's lifecycle is well formed (CREATED first, a
//! RESOLVED only for an open incident, sequence numbers counting up, no event id twice), the
//! incidents left open are those the states hold, folding twice gives the same outputs and
//! states, a redelivery changes nothing, no timer is left due after a record, and every state
//! stays within its bounds.
#![no_main]

use arbitrary::Arbitrary;
use hookfold_fuzz::support::{
    BASE_TIME, Hook, Run, agent, build_event, check_lifecycle, job, open_in_states, ping,
    pull_request, push, tick, unknown,
};
use hookfold_rules::{BuildScope, Rules};
use hookfold_state::codec;
use libfuzzer_sys::fuzz_target;

const BRANCHES: [&str; 4] = ["main", "feature/a", "release/1", ""];
const BUILD_EVENTS: [&str; 4] = [
    "build.finished",
    "build.failing",
    "build.running",
    "build.scheduled",
];
const BUILD_STATES: [&str; 8] = [
    "failed", "passed", "canceled", "skipped", "blocked", "not_run", "running", "failing",
];
const JOB_STATES: [&str; 5] = ["failed", "passed", "finished", "canceled", "timed_out"];
const AGENT_ACTIONS: [&str; 5] = ["connected", "lost", "disconnected", "stopped", "stopping"];
const PR_ACTIONS: [&str; 4] = ["created", "fulfilled", "rejected", "updated"];
const HEADS: [&str; 3] = [
    "1111111111111111111111111111111111111111",
    "2222222222222222222222222222222222222222",
    "3333333333333333333333333333333333333333",
];
/// A state may not grow past this however long its key lives (docs/RULES.md: every part of
/// a state is bounded; the largest part is 1,024 closed pull requests of a repository).
const MAX_STATE_BYTES: usize = 256 * 1024;

#[derive(Debug, Arbitrary)]
enum Op {
    Build {
        event: u8,
        number: u16,
        state: u8,
        branch: u8,
    },
    Job {
        number: u16,
        branch: u8,
        job: u8,
        state: u8,
        exit: Option<i8>,
    },
    Agent {
        action: u8,
        id: u8,
        name: u8,
    },
    PullRequest {
        action: u8,
        id: u8,
        branch: u8,
        head: u8,
    },
    Push {
        changes: Vec<(u8, u8, Option<u8>)>,
    },
    Ping,
    Unknown,
    Repeat(u16),
    /// A tick this many minutes after the last webhook's time.
    Tick(u8),
}

#[derive(Debug, Arbitrary)]
struct Input {
    pipeline_scope: bool,
    exclude_release: bool,
    dedup_window: u8,
    pull_requests: bool,
    branches: bool,
    /// Agents' grace and expiry, in minutes (0: none), and the build options.
    grace: u8,
    resolve_after: u8,
    open_on_failing: bool,
    open_after_failures: u8,
    /// Minutes between events (a negative step: Buildkite delivering out of order).
    steps: Vec<i8>,
    ops: Vec<Op>,
}

fn pick<'a>(list: &[&'a str], n: u8) -> &'a str {
    list[n as usize % list.len()]
}

/// Events per input at most. The names come from small sets (4 branches, 6 agents, 6 pull
/// requests), so 100 events give every key several lifecycles; each event is built as a
/// JSON body and parsed, twice per input, so the cap is what sets executions per second.
const MAX_EVENTS: usize = 100;

fn hooks(input: &Input) -> Vec<(Hook, bool)> {
    let mut out: Vec<(Hook, bool)> = Vec::new();
    let mut at = BASE_TIME;
    for (index, op) in input.ops.iter().take(MAX_EVENTS).enumerate() {
        if let Op::Repeat(of) = op {
            if !out.is_empty() {
                let (hook, _) = out[*of as usize % out.len()].clone();
                out.push((hook, true));
            }
            continue;
        }
        let hook = match op {
            Op::Build {
                event,
                number,
                state,
                branch,
            } => build_event(
                pick(&BUILD_EVENTS, *event),
                u64::from(*number),
                pick(&BUILD_STATES, *state),
                pick(&BRANCHES, *branch),
            ),
            Op::Job {
                number,
                branch,
                job: n,
                state,
                exit,
            } => job(
                u64::from(*number),
                pick(&BRANCHES, *branch),
                &format!("job-{}", n % 4),
                pick(&JOB_STATES, *state),
                exit.map(i64::from),
            ),
            Op::Agent { action, id, name } => agent(
                pick(&AGENT_ACTIONS, *action),
                &format!("id-{}", id % 6),
                &format!("ci-{}", name % 3),
            ),
            Op::PullRequest {
                action,
                id,
                branch,
                head,
            } => pull_request(
                pick(&PR_ACTIONS, *action),
                u64::from(id % 6) + 1,
                pick(&BRANCHES[..3], *branch),
                &pick(&HEADS, *head)[..12],
            ),
            Op::Push { changes } => {
                let changes: Vec<(&str, &str, Option<&str>)> = changes
                    .iter()
                    .take(4)
                    .map(|(kind, branch, head)| {
                        (
                            if kind % 5 == 0 { "tag" } else { "branch" },
                            pick(&BRANCHES[..3], *branch),
                            head.map(|h| pick(&HEADS, h)),
                        )
                    })
                    .collect();
                push(&changes)
            }
            Op::Ping => ping(),
            Op::Tick(ahead) => {
                out.push((tick(at + time::Duration::minutes(i64::from(*ahead))), false));
                continue;
            }
            Op::Unknown | Op::Repeat(_) => unknown(),
        };
        let step = input.steps.get(index).copied().unwrap_or(1);
        at += time::Duration::minutes(i64::from(step));
        let hook = Hook {
            offset: Some(index as i64),
            ..hook.id(&format!("ce-{index}")).at(at)
        };
        out.push((hook, false));
    }
    out
}

fuzz_target!(|input: Input| {
    let mut rules = Rules::default();
    if input.pipeline_scope {
        rules.builds.scope = BuildScope::Pipeline;
    }
    if input.exclude_release {
        rules.builds.exclude_branches = vec!["release/*".into()];
    }
    // Mostly the default window (1,024 ids per key, more than a run's MAX_EVENTS, so every
    // redelivery is recognised); sometimes a tiny one, where a redelivery that fell out of
    // the window is applied again and may repeat an earlier event (by design: the window
    // bounds the state), so only the bounds and determinism are checked then.
    let tiny_window = input.dedup_window < 32;
    if tiny_window {
        rules.dedup_window = usize::from(input.dedup_window) + 1;
    }
    rules.bitbucket.pull_requests = input.pull_requests;
    rules.bitbucket.branches = input.branches;
    let minutes = |m: u8| std::time::Duration::from_secs(60 * u64::from(m));
    rules.agents.grace = minutes(input.grace % 32);
    rules.agents.resolve_after = Some(minutes(input.resolve_after)).filter(|d| !d.is_zero());
    rules.builds.open_on_failing = input.open_on_failing;
    rules.builds.open_after_failures = u32::from(input.open_after_failures % 4) + 1;
    rules.validate().unwrap_or_else(|e| panic!("generated rules: {e}"));

    let hooks = hooks(&input);
    let fold = |rules: &Rules| {
        let mut run = Run::new(rules.clone());
        let mut watermark = None;
        let outputs: Vec<_> = hooks
            .iter()
            .map(|(hook, _)| {
                let outputs = run.apply(hook);
                watermark = watermark.max(hook.time);
                if let (Some(next), Some(now)) = (run.clock.next_deadline(), watermark) {
                    assert!(next > now, "a timer at {next} still waits at {now}");
                }
                outputs
            })
            .collect();
        (run.states_by_key(), outputs)
    };
    let (states, per_step) = fold(&rules);

    if !tiny_window {
        let all: Vec<_> = per_step.iter().flatten().cloned().collect();
        let open = check_lifecycle(&all).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            open,
            open_in_states(&states),
            "open incidents differ from the states'"
        );
        for (index, ((_, repeat), outputs)) in hooks.iter().zip(&per_step).enumerate() {
            if *repeat {
                assert!(outputs.is_empty(), "redelivery {index} made {outputs:?}");
            }
        }
    }
    for state in states.values() {
        assert!(state.remembered_ids() <= rules.dedup_window);
        let size = codec::encode(state).len();
        assert!(size <= MAX_STATE_BYTES, "a state of {size} bytes");
    }
    assert_eq!(fold(&rules), (states, per_step), "folding twice differs");
});
