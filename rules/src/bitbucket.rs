//! Bitbucket: an open pull request is an incident until merged or declined; a pushed
//! branch is an incident until a pull request from it is merged.

use hookfold_events::{
    Endpoint, Entity, PullRequestAction, PullRequestEvent, PushEvent, RefChange, RefKind,
    entity_key,
};
use hookfold_proto::v1::{EntityKind, IncidentEvent, ResolutionReason};

use crate::config::Rules;
use crate::dedup_key;
use crate::output::{Description, Input, first_line};
use crate::routes::{RouteKind, bitbucket_subject};
use crate::state::{KeyState, MAX_CLOSED_PULL_REQUESTS, MAX_MERGED_BRANCHES, RepoState};

/// Whether two commit hashes name the same commit: Bitbucket sends 12-character short
/// hashes in pull requests and full ones in pushes, so a prefix of at least 7 suffices.
fn same_commit(a: &str, b: &str) -> bool {
    const MIN_PREFIX: usize = 7;
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    short.len() >= MIN_PREFIX && long.starts_with(short)
}

fn describe_pull_request(event: &PullRequestEvent) -> Description {
    let pr = &event.pull_request;
    let id = pr.id.to_string();
    let title = pr.title.as_deref().filter(|t| !t.is_empty()).unwrap_or("");
    let name = if title.is_empty() {
        format!("#{id}")
    } else {
        title.to_owned()
    };
    let mut description = Description::new(EntityKind::PullRequest, &id, &name);
    description.detail("repository", Some(&event.repository.full_name));
    description.detail("pull_request_id", Some(&id));
    description.detail("title", pr.title.as_deref());
    description.detail("state", pr.state.as_ref().map(|s| s.as_str()));
    let source = pr.source.as_ref();
    description.detail("source_branch", source.and_then(|s| s.branch.as_deref()));
    description.detail("commit", source.and_then(|s| s.commit.as_deref()));
    description.detail(
        "destination_branch",
        pr.destination.as_ref().and_then(|d| d.branch.as_deref()),
    );
    description.detail("author", pr.author.as_ref().and_then(|a| a.display()));
    description.detail("merge_commit", pr.merge_commit.as_deref());
    description.detail("closed_by", pr.closed_by.as_ref().and_then(|u| u.display()));
    description.link("pull_request", pr.html_url.as_deref());
    description
}

/// `Pull request #16 "Fix it" merged in acme/web`.
fn pull_request_summary(event: &PullRequestEvent, what: &str) -> String {
    let pr = &event.pull_request;
    let repository = &event.repository.full_name;
    match pr.title.as_deref().filter(|t| !t.is_empty()) {
        Some(title) => format!("Pull request #{} \"{title}\" {what} in {repository}", pr.id),
        None => format!("Pull request #{} {what} in {repository}", pr.id),
    }
}

/// Forgets the oldest (lowest-id) closed pull requests beyond the bound, remembering the
/// highest id forgotten.
fn remember_closed(repo: &mut RepoState, id: u64) {
    repo.closed_pull_requests.insert(id);
    while repo.closed_pull_requests.len() > MAX_CLOSED_PULL_REQUESTS {
        if let Some(forgotten) = repo.closed_pull_requests.pop_first() {
            repo.forgotten_closed_up_to = repo.forgotten_closed_up_to.max(forgotten);
        }
    }
}

/// The source of a pull request and its branch, when the branch is in the same repository
/// (a fork's branch has its pushes, and their incidents, in the fork).
fn own_source_branch(event: &PullRequestEvent) -> Option<(&Endpoint, &str)> {
    let source = event.pull_request.source.as_ref()?;
    let branch = source.branch.as_deref().filter(|b| !b.is_empty())?;
    let forked = source
        .repository
        .as_ref()
        .is_some_and(|repository| *repository != event.repository.full_name);
    (!forked).then_some((source, branch))
}

pub(crate) fn apply_pull_request(
    state: &mut KeyState,
    input: &Input<'_>,
    event: &PullRequestEvent,
    all_rules: &Rules,
    out: &mut Vec<IncidentEvent>,
) {
    let source_id = &input.event.source_id;
    let full_name = &event.repository.full_name;
    let routing = entity_key(source_id, Entity::Repo(full_name));
    let pr = &event.pull_request;
    let source_branch = pr.source.as_ref().and_then(|s| s.branch.as_deref());
    let subject = bitbucket_subject(source_id, RouteKind::PullRequest, full_name, source_branch);
    let route = all_rules.route(&subject);
    let group = route.and_then(|r| r.group_values(&subject));
    let input = &input.routed(route, group.as_ref());
    let rules = &*all_rules.bitbucket_under(route);
    let occurred_at = pr.updated_on.unwrap_or(input.event.time);

    match event.action {
        PullRequestAction::Created if rules.pull_requests => {
            if let Some(repo) = state.repos.get(&routing) {
                // Already open (a repeat), or closed already: a created arriving after the
                // merge or decline is a late delivery and must not reopen anything.
                let closed = repo.closed_pull_requests.contains(&pr.id)
                    || pr.id <= repo.forgotten_closed_up_to;
                if repo.pull_requests.contains_key(&pr.id) || closed {
                    return;
                }
            }
            let mut description = describe_pull_request(event);
            let author = pr.author.as_ref().and_then(|a| a.display());
            let opened = match author {
                Some(author) => format!("opened by {author}"),
                None => "opened".to_owned(),
            };
            description.summary = pull_request_summary(event, &opened);
            let key = dedup_key::pull_request(source_id, full_name, pr.id);
            let (open, created) =
                input
                    .by()
                    .create(key, rules.pull_request_severity, occurred_at, description);
            state
                .repos
                .entry(routing)
                .or_default()
                .pull_requests
                .insert(pr.id, open);
            out.push(created);
        }
        PullRequestAction::Fulfilled | PullRequestAction::Rejected => {
            let merged = event.action == PullRequestAction::Fulfilled;
            let repo = state.repos.entry(routing.clone()).or_default();
            if rules.pull_requests {
                if let Some(open) = repo.pull_requests.remove(&pr.id) {
                    let mut description = describe_pull_request(event);
                    let (what, reason) = if merged {
                        ("merged", ResolutionReason::PullRequestMerged)
                    } else {
                        ("declined", ResolutionReason::PullRequestDeclined)
                    };
                    description.summary = pull_request_summary(event, what);
                    out.push(input.by().resolve(open, reason, occurred_at, description));
                }
                remember_closed(repo, pr.id);
            }
            if merged && let Some((source, branch)) = own_source_branch(event) {
                // The branch's incident is under the branch's route.
                let route = all_rules.route(&bitbucket_subject(
                    source_id,
                    RouteKind::Branch,
                    full_name,
                    Some(branch),
                ));
                if all_rules.bitbucket_under(route).branches {
                    resolve_merged_branch(repo, input, event, source, branch, occurred_at, out);
                }
            }
            if *repo == RepoState::default() {
                state.repos.remove(&routing);
            }
        }
        _ => {}
    }
}

/// Resolves the incident of a merged pull request's source branch, and remembers the merged
/// head so a late push of it does not reopen one. Only for a branch of the same repository
/// ([`own_source_branch`]): a fork's branch has its pushes under the fork's routing key.
fn resolve_merged_branch(
    repo: &mut RepoState,
    input: &Input<'_>,
    event: &PullRequestEvent,
    source: &Endpoint,
    branch: &str,
    occurred_at: time::OffsetDateTime,
    out: &mut Vec<IncidentEvent>,
) {
    if let Some(commit) = source.commit.as_deref().filter(|c| !c.is_empty()) {
        let merged_head = (branch.to_owned(), commit.to_owned());
        if !repo.merged_heads.contains(&merged_head) {
            repo.merged_heads.push_back(merged_head);
            while repo.merged_heads.len() > MAX_MERGED_BRANCHES {
                repo.merged_heads.pop_front();
            }
        }
    }
    repo.branch_heads.remove(branch);
    if let Some(open) = repo.branches.remove(branch) {
        let pr = &event.pull_request;
        let mut description = Description::new(EntityKind::Branch, branch, branch);
        description.summary = format!(
            "Branch {branch} of {} merged by pull request #{}",
            event.repository.full_name, pr.id
        );
        description.detail("repository", Some(&event.repository.full_name));
        description.detail("branch", Some(branch));
        description.detail("commit", source.commit.as_deref());
        description.detail("pull_request_id", Some(&pr.id.to_string()));
        description.detail("merge_commit", pr.merge_commit.as_deref());
        description.detail("closed_by", pr.closed_by.as_ref().and_then(|u| u.display()));
        description.link("pull_request", pr.html_url.as_deref());
        out.push(input.by().resolve(
            open,
            ResolutionReason::BranchMerged,
            occurred_at,
            description,
        ));
    }
}

fn describe_push(event: &PushEvent, change: &RefChange, branch: &str) -> Description {
    let mut description = Description::new(EntityKind::Branch, branch, branch);
    description.detail("repository", Some(&event.repository.full_name));
    description.detail("branch", Some(branch));
    let new = change.new.as_ref();
    let target = new.and_then(|n| n.target.as_ref());
    description.detail("commit", target.and_then(|t| t.hash.as_deref()));
    let author = target.and_then(|t| t.author.as_deref());
    let author = author.or(event.actor.as_ref().and_then(|a| a.display()));
    description.detail("author", author);
    description.detail(
        "message",
        target
            .and_then(|t| t.message.as_deref())
            .map(first_line)
            .as_deref(),
    );
    description.detail("forced", change.forced.then_some("true"));
    description.link(
        "branch",
        new.and_then(|n| n.html_url.as_deref())
            .or(change.html_url.as_deref()),
    );
    description.link("commit", target.and_then(|t| t.html_url.as_deref()));
    description
}

pub(crate) fn apply_push(
    state: &mut KeyState,
    input: &Input<'_>,
    event: &PushEvent,
    all_rules: &Rules,
    out: &mut Vec<IncidentEvent>,
) {
    let source_id = &input.event.source_id;
    let full_name = &event.repository.full_name;
    let routing = entity_key(source_id, Entity::Repo(full_name));
    for change in &event.changes {
        // Deletions (no `new`) and tags change nothing.
        let Some(new) = &change.new else { continue };
        if new.kind != RefKind::Branch || new.name.is_empty() {
            continue;
        }
        // Each branch pushed has a route of its own.
        let subject = bitbucket_subject(source_id, RouteKind::Branch, full_name, Some(&new.name));
        let route = all_rules.route(&subject);
        let group = route.and_then(|r| r.group_values(&subject));
        let input = &input.routed(route, group.as_ref());
        let rules = &*all_rules.bitbucket_under(route);
        if !rules.branches || !rules.branch_included(&new.name) {
            continue;
        }
        let branch = &new.name;
        let head = new
            .target
            .as_ref()
            .and_then(|t| t.hash.as_deref())
            .filter(|h| !h.is_empty());
        if let (Some(repo), Some(head)) = (state.repos.get(&routing), head) {
            let merged = repo
                .merged_heads
                .iter()
                .any(|(b, commit)| b == branch && same_commit(commit, head));
            let repeated = repo
                .branch_heads
                .get(branch)
                .is_some_and(|known| known == head);
            if merged || repeated {
                continue;
            }
        }
        let repo = state.repos.entry(routing.clone()).or_default();
        let mut description = describe_push(event, change, branch);
        let pusher = event.actor.as_ref().and_then(|a| a.display());
        let by = pusher.map(|p| format!(" by {p}")).unwrap_or_default();
        match repo.branches.get_mut(branch) {
            Some(open) => {
                description.summary =
                    format!("Branch {branch} of {full_name} pushed again{by}, still not merged");
                out.push(input.by().update(
                    open,
                    rules.branch_severity,
                    input.event.time,
                    description,
                ));
            }
            None => {
                description.summary =
                    format!("Branch {branch} pushed to {full_name}{by}, not merged yet");
                let key = dedup_key::branch(source_id, full_name, branch);
                let (open, created) =
                    input
                        .by()
                        .create(key, rules.branch_severity, input.event.time, description);
                repo.branches.insert(branch.clone(), open);
                out.push(created);
            }
        }
        if let Some(head) = head {
            repo.branch_heads.insert(branch.clone(), head.to_owned());
        }
    }
}
