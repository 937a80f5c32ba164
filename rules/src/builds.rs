//! Buildkite builds and jobs: a failed build opens (or updates) the incident of its scope,
//! a passed one resolves it; failed jobs are attached to it. With `open_on_failing`, a
//! `build.failing` counts as the build's failure (its `build.finished` failed then only
//! updates); with `open_after_failures = N`, the incident opens at the N-th consecutive
//! failed build, each build counted once.

use hookfold_events::{
    Build, BuildAction, BuildEvent, BuildState, Entity, Job, JobAction, JobEvent, JobState,
    Pipeline, entity_key,
};
use hookfold_proto::v1::{EntityKind, IncidentEvent, ResolutionReason};

use crate::config::{BuildRules, BuildScope, MAX_OPEN_AFTER_FAILURES};
use crate::dedup_key;
use crate::output::{Description, Input, first_line};
use crate::state::{BuildScopeState, FailedJob, KeyState, MAX_FAILED_JOBS, PipelineState};

/// What a finished build says about its scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Failed,
    Passed,
    /// `build.failing`, with `open_on_failing`: a job failed, the build still runs.
    Failing,
}

/// Only `failed` and (unblocked) `passed` are verdicts. Canceled, skipped, not_run and
/// blocked builds say nothing about whether the code is broken. Buildkite may report a build
/// waiting on a block step as `passed` with `blocked: true`: that is not a pass yet.
fn verdict(build: &Build) -> Option<Verdict> {
    match build.state {
        BuildState::Failed => Some(Verdict::Failed),
        BuildState::Passed if !build.blocked => Some(Verdict::Passed),
        _ => None,
    }
}

/// Whether a finished job failed: `failed` or `timed_out`, or, in a state that does not
/// say (`finished`, unknown states), a non-zero exit status; never when soft-failed
/// (the step allows that failure) and never when passed, canceled, skipped, broken or
/// expired.
pub(crate) fn job_failed(job: &Job) -> bool {
    if job.soft_failed {
        return false;
    }
    match job.state {
        JobState::Failed | JobState::TimedOut => true,
        JobState::Passed
        | JobState::Canceled
        | JobState::Canceling
        | JobState::Skipped
        | JobState::Broken
        | JobState::Expired => false,
        _ => job.exit_status.is_some_and(|status| status != 0),
    }
}

fn scope_dedup_key(scope: BuildScope, source_id: &str, slug: &str, branch: &str) -> String {
    match scope {
        BuildScope::PipelineBranch => dedup_key::pipeline_branch(source_id, slug, branch),
        BuildScope::Pipeline => dedup_key::pipeline(source_id, slug),
    }
}

fn existing_scope<'s>(
    pipeline: Option<&'s PipelineState>,
    scope: BuildScope,
    branch: &str,
) -> Option<&'s BuildScopeState> {
    let pipeline = pipeline?;
    match scope {
        BuildScope::PipelineBranch => pipeline.by_branch.get(branch),
        BuildScope::Pipeline => pipeline.whole.as_ref(),
    }
}

fn scope_mut<'s>(
    pipeline: &'s mut PipelineState,
    scope: BuildScope,
    branch: &str,
) -> &'s mut BuildScopeState {
    match scope {
        BuildScope::PipelineBranch => pipeline.by_branch.entry(branch.to_owned()).or_default(),
        BuildScope::Pipeline => pipeline.whole.get_or_insert_with(BuildScopeState::default),
    }
}

/// Forgets the least recently active branches without an open incident or failed jobs,
/// beyond `limit` (ties broken by branch name, so the choice is deterministic).
fn forget_idle_branches(pipeline: &mut PipelineState, limit: usize) {
    let mut idle: Vec<(i64, String)> = pipeline
        .by_branch
        .iter()
        .filter(|(_, scope)| scope.is_idle())
        .map(|(branch, scope)| (scope.last_active, branch.clone()))
        .collect();
    let excess = idle.len().saturating_sub(limit);
    if excess == 0 {
        return;
    }
    idle.sort();
    for (_, branch) in idle.into_iter().take(excess) {
        pipeline.by_branch.remove(&branch);
    }
}

/// The details and links every build or job event carries.
fn describe_build(description: &mut Description, pipeline: &Pipeline, build: &Build) {
    description.detail("pipeline", Some(&pipeline.slug));
    description.detail("pipeline_name", pipeline.name.as_deref());
    description.detail("branch", Some(&build.branch));
    description.detail("commit", build.commit.as_deref());
    description.detail("build_number", Some(&build.number.to_string()));
    description.detail("build_state", Some(build.state.as_str()));
    let author = build.author.as_ref().and_then(|a| a.name.as_deref());
    let author = author.or(build.creator.as_ref().and_then(|c| c.name.as_deref()));
    description.detail("author", author);
    description.detail(
        "message",
        build.message.as_deref().map(first_line).as_deref(),
    );
    description.link("build", build.web_url.as_deref());
    description.link("pipeline", pipeline.web_url.as_deref());
}

fn describe_jobs<'j>(description: &mut Description, jobs: impl Iterator<Item = &'j FailedJob>) {
    let mut names = Vec::new();
    for job in jobs {
        names.push(job.name.as_str());
        description.link("job", job.web_url.as_deref());
    }
    if !names.is_empty() {
        description.detail("failed_jobs", Some(&names.join(", ")));
    }
}

pub(crate) fn apply_build(
    state: &mut KeyState,
    input: &Input<'_>,
    event: &BuildEvent,
    rules: &BuildRules,
    out: &mut Vec<IncidentEvent>,
) {
    let build = &event.build;
    let failing = event.action == BuildAction::Failing && rules.open_on_failing;
    if !rules.enabled
        || !(event.action == BuildAction::Finished || failing)
        || !rules.branch_included(&build.branch)
    {
        return;
    }
    let verdict = if failing {
        Some(Verdict::Failing)
    } else {
        verdict(build)
    };
    let Some(verdict) = verdict else {
        return;
    };
    let source_id = &input.event.source_id;
    let routing = entity_key(source_id, Entity::Pipeline(&event.pipeline.slug));
    let number = build.number;

    if let Some(scope) = existing_scope(state.pipelines.get(&routing), rules.scope, &build.branch) {
        let already_applied = match verdict {
            Verdict::Failed => scope.failed_applied,
            Verdict::Passed => scope.passed_applied,
            // Failing says less than either verdict of the same build.
            Verdict::Failing => {
                scope.failing_applied || scope.failed_applied || scope.passed_applied
            }
        };
        // Older than the newest verdict: Buildkite delivered it late; it says nothing new.
        if number < scope.highest || (number == scope.highest && already_applied) {
            return;
        }
    }

    let pipeline = state.pipelines.entry(routing).or_default();
    let scope = scope_mut(pipeline, rules.scope, &build.branch);
    if number > scope.highest {
        scope.highest = number;
        scope.failed_applied = false;
        scope.passed_applied = false;
        scope.failing_applied = false;
        scope.failed_jobs.retain(|job| job.build_number >= number);
    }
    scope.last_active = input.event.time.unix_timestamp();
    let occurred_at = build.finished_at.unwrap_or(input.event.time);
    let severity = rules.severity_for(&build.branch);
    let name = event.pipeline.display_name();
    let mut description = Description::new(EntityKind::Pipeline, &event.pipeline.slug, name);
    describe_build(&mut description, &event.pipeline, build);

    match verdict {
        Verdict::Failed | Verdict::Failing => {
            // Whether this build's failure was counted already (at its `build.failing`).
            let counted = scope.failing_applied || scope.failed_applied;
            if verdict == Verdict::Failed {
                scope.failed_applied = true;
            } else {
                scope.failing_applied = true;
            }
            describe_jobs(
                &mut description,
                scope
                    .failed_jobs
                    .iter()
                    .filter(|job| job.build_number == number),
            );
            let what = match (verdict, counted) {
                (Verdict::Failing, _) => "is failing",
                (_, true) => "finished failing",
                _ => "failed",
            };
            match &mut scope.open {
                Some(open) => {
                    let again = if counted { "" } else { " again" };
                    description.summary = format!(
                        "Build #{number} of {name} {what} on {}{again}",
                        build.branch
                    );
                    out.push(input.by().update(open, severity, occurred_at, description));
                }
                None => {
                    if !counted {
                        scope.failures.push(number);
                        let excess = scope
                            .failures
                            .len()
                            .saturating_sub(MAX_OPEN_AFTER_FAILURES as usize);
                        scope.failures.drain(..excess);
                    }
                    let needed = rules.open_after_failures.max(1) as usize;
                    if scope.failures.len() >= needed {
                        description.summary =
                            format!("Build #{number} of {name} {what} on {}", build.branch);
                        if needed > 1 {
                            let builds: Vec<String> =
                                scope.failures.iter().map(|n| format!("#{n}")).collect();
                            description
                                .summary
                                .push_str(&format!(" ({} failed builds in a row)", builds.len()));
                            description.detail("failed_builds", Some(&builds.join(", ")));
                        }
                        scope.failures.clear();
                        let key = scope_dedup_key(
                            rules.scope,
                            source_id,
                            &event.pipeline.slug,
                            &build.branch,
                        );
                        let (open, created) =
                            input.by().create(key, severity, occurred_at, description);
                        scope.open = Some(open);
                        out.push(created);
                    }
                }
            }
        }
        Verdict::Passed => {
            scope.passed_applied = true;
            scope.failures.clear();
            // The build passed, so its failed jobs were retried or did not matter.
            scope.failed_jobs.retain(|job| job.build_number > number);
            if let Some(open) = scope.open.take() {
                description.summary =
                    format!("Build #{number} of {name} passed on {}", build.branch);
                out.push(input.by().resolve(
                    open,
                    ResolutionReason::BuildPassed,
                    occurred_at,
                    description,
                ));
            }
        }
    }
    if rules.scope == BuildScope::PipelineBranch {
        forget_idle_branches(pipeline, rules.idle_branch_limit);
    }
}

pub(crate) fn apply_job(
    state: &mut KeyState,
    input: &Input<'_>,
    event: &JobEvent,
    rules: &BuildRules,
    out: &mut Vec<IncidentEvent>,
) {
    let (job, build) = (&event.job, &event.build);
    if !rules.enabled
        || event.action != JobAction::Finished
        || !job_failed(job)
        || !rules.branch_included(&build.branch)
    {
        return;
    }
    let source_id = &input.event.source_id;
    let routing = entity_key(source_id, Entity::Pipeline(&event.pipeline.slug));
    let number = build.number;

    if let Some(scope) = existing_scope(state.pipelines.get(&routing), rules.scope, &build.branch) {
        // A job of an older build than the newest verdict, or of a build that already
        // passed, is stale; a job already attached is a repeat.
        let stale = number < scope.highest || (number == scope.highest && scope.passed_applied);
        if stale || scope.failed_jobs.iter().any(|known| known.job_id == job.id) {
            return;
        }
    }

    let pipeline = state.pipelines.entry(routing).or_default();
    let scope = scope_mut(pipeline, rules.scope, &build.branch);
    scope.failed_jobs.push(FailedJob {
        build_number: number,
        job_id: job.id.clone(),
        name: job.display_name().to_owned(),
        web_url: job.web_url.clone(),
    });
    if scope.failed_jobs.len() > MAX_FAILED_JOBS {
        // Keep the newest builds' jobs: those are the ones a coming verdict will report.
        scope.failed_jobs.sort_by_key(|job| job.build_number);
        let excess = scope.failed_jobs.len() - MAX_FAILED_JOBS;
        scope.failed_jobs.drain(..excess);
    }
    scope.last_active = input.event.time.unix_timestamp();

    if let Some(open) = &mut scope.open {
        let name = event.pipeline.display_name();
        let mut description = Description::new(EntityKind::Pipeline, &event.pipeline.slug, name);
        description.summary = format!(
            "Job \"{}\" failed in build #{number} of {name} on {}",
            job.display_name(),
            build.branch
        );
        describe_build(&mut description, &event.pipeline, build);
        description.detail("job_name", Some(job.display_name()));
        description.detail("job_state", Some(job.state.as_str()));
        description.detail(
            "exit_status",
            job.exit_status.map(|s| s.to_string()).as_deref(),
        );
        // This job first, then the others of its build: the first `job` link is the job at hand.
        let this_job = scope
            .failed_jobs
            .iter()
            .filter(|known| known.job_id == job.id);
        let other_jobs = scope
            .failed_jobs
            .iter()
            .filter(|known| known.build_number == number && known.job_id != job.id);
        describe_jobs(&mut description, this_job.chain(other_jobs));
        let occurred_at = job.finished_at.unwrap_or(input.event.time);
        out.push(input.by().update(
            open,
            rules.severity_for(&build.branch),
            occurred_at,
            description,
        ));
    }
    if rules.scope == BuildScope::PipelineBranch {
        forget_idle_branches(pipeline, rules.idle_branch_limit);
    }
}
