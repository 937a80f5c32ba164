//! Bitbucket Cloud webhook payloads (checked against real deliveries in
//! `shared/fixtures/bitbucket`).
//!
//! Required fields, because the rules cannot work without them: `repository.full_name`
//! everywhere, `pullrequest.id` in pull-request events, `push.changes` in `repo:push`, and a
//! `name` for every ref in a change. Everything else is optional.

use serde::Deserialize;
use time::OffsetDateTime;

use crate::{EventBody, ParseError, from_body, lenient};

/// Bitbucket's event names for pull requests (`pullrequest:<action>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PullRequestAction {
    Created,
    Updated,
    Approved,
    Unapproved,
    ChangesRequestCreated,
    ChangesRequestRemoved,
    /// Merged.
    Fulfilled,
    /// Declined.
    Rejected,
    CommentCreated,
    CommentUpdated,
    CommentDeleted,
    CommentResolved,
    CommentReopened,
}

/// `pullrequest:*`.
#[derive(Debug, Clone, PartialEq)]
pub struct PullRequestEvent {
    pub action: PullRequestAction,
    pub pull_request: PullRequest,
    pub repository: Repository,
    pub actor: Option<User>,
}

/// `repo:push`.
#[derive(Debug, Clone, PartialEq)]
pub struct PushEvent {
    /// One entry per ref (branch or tag) the push changed.
    pub changes: Vec<RefChange>,
    pub repository: Repository,
    pub actor: Option<User>,
}

/// A pull request, as in the payload's `pullrequest`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PullRequest {
    /// The pull request's number, unique within the destination repository.
    pub id: u64,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub state: Option<PullRequestState>,
    #[serde(default)]
    pub source: Option<Endpoint>,
    #[serde(default)]
    pub destination: Option<Endpoint>,
    #[serde(default)]
    pub author: Option<User>,
    #[serde(default)]
    pub closed_by: Option<User>,
    /// Hash of the merge commit, once merged.
    #[serde(default, deserialize_with = "lenient::commit_hash")]
    pub merge_commit: Option<String>,
    /// The pull request's web page (`links.html.href`).
    #[serde(default, rename = "links", deserialize_with = "lenient::html_href")]
    pub html_url: Option<String>,
    #[serde(default, deserialize_with = "lenient::time")]
    pub created_on: Option<OffsetDateTime>,
    #[serde(default, deserialize_with = "lenient::time")]
    pub updated_on: Option<OffsetDateTime>,
}

/// A pull request's state. Unknown states are kept as [`PullRequestState::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(from = "String")]
pub enum PullRequestState {
    Open,
    Merged,
    Declined,
    Superseded,
    Other(String),
}

impl From<String> for PullRequestState {
    fn from(state: String) -> Self {
        match state.as_str() {
            "OPEN" => Self::Open,
            "MERGED" => Self::Merged,
            "DECLINED" => Self::Declined,
            "SUPERSEDED" => Self::Superseded,
            _ => Self::Other(state),
        }
    }
}

impl PullRequestState {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Open => "OPEN",
            Self::Merged => "MERGED",
            Self::Declined => "DECLINED",
            Self::Superseded => "SUPERSEDED",
            Self::Other(state) => state,
        }
    }
}

/// One side of a pull request (`source` or `destination`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Endpoint {
    /// `branch.name`.
    #[serde(default, deserialize_with = "lenient::branch_name")]
    pub branch: Option<String>,
    /// `commit.hash` (Bitbucket sends 12-character short hashes here).
    #[serde(default, deserialize_with = "lenient::commit_hash")]
    pub commit: Option<String>,
    /// `repository.full_name`: differs from the event's repository for a fork.
    #[serde(default, deserialize_with = "lenient::repository_full_name")]
    pub repository: Option<String>,
}

/// A repository (`repository` of every event).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Repository {
    /// `<workspace>/<slug>`, e.g. `lkysow/atlantis-example`.
    pub full_name: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default, rename = "links", deserialize_with = "lenient::html_href")]
    pub html_url: Option<String>,
}

/// A Bitbucket user or team (`actor`, `author`, `closed_by`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct User {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub nickname: Option<String>,
    #[serde(default)]
    pub account_id: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
}

impl User {
    /// What to call the user: display name, else nickname, else account id or uuid.
    pub fn display(&self) -> Option<&str> {
        [
            &self.display_name,
            &self.nickname,
            &self.account_id,
            &self.uuid,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .find(|name| !name.trim().is_empty())
    }
}

/// One ref changed by a push.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RefChange {
    /// The ref after the push; `None` when the push deleted it.
    #[serde(default)]
    pub new: Option<RefState>,
    /// The ref before the push; `None` when the push created it.
    #[serde(default)]
    pub old: Option<RefState>,
    #[serde(default, deserialize_with = "lenient::flag")]
    pub created: bool,
    #[serde(default, deserialize_with = "lenient::flag")]
    pub closed: bool,
    #[serde(default, deserialize_with = "lenient::flag")]
    pub forced: bool,
    #[serde(default, deserialize_with = "lenient::flag")]
    pub truncated: bool,
    /// Web page of the change (`links.html.href`).
    #[serde(default, rename = "links", deserialize_with = "lenient::html_href")]
    pub html_url: Option<String>,
}

/// A ref (branch or tag) and the commit it points at.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RefState {
    #[serde(rename = "type", default = "RefKind::unknown")]
    pub kind: RefKind,
    pub name: String,
    #[serde(default)]
    pub target: Option<PushCommit>,
    #[serde(default, rename = "links", deserialize_with = "lenient::html_href")]
    pub html_url: Option<String>,
}

/// What kind of ref a push changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(from = "String")]
pub enum RefKind {
    /// `branch` (git) or `named_branch` (Mercurial, in old payloads).
    Branch,
    Tag,
    Other(String),
}

impl RefKind {
    fn unknown() -> Self {
        Self::Other(String::new())
    }
}

impl From<String> for RefKind {
    fn from(kind: String) -> Self {
        match kind.as_str() {
            "branch" | "named_branch" => Self::Branch,
            "tag" => Self::Tag,
            _ => Self::Other(kind),
        }
    }
}

/// The commit a ref points at (`target`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PushCommit {
    /// Full 40-character hash.
    #[serde(default)]
    pub hash: Option<String>,
    #[serde(default, deserialize_with = "lenient::time")]
    pub date: Option<OffsetDateTime>,
    #[serde(default)]
    pub message: Option<String>,
    /// `author.user.display_name`, else the raw `author.raw` (`Name <email>`).
    #[serde(default, deserialize_with = "commit_author")]
    pub author: Option<String>,
    #[serde(default, rename = "links", deserialize_with = "lenient::html_href")]
    pub html_url: Option<String>,
}

fn commit_author<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Author {
        #[serde(default)]
        raw: Option<String>,
        #[serde(default)]
        user: Option<User>,
    }
    Ok(Option::<Author>::deserialize(d)?.and_then(|author| {
        author
            .user
            .as_ref()
            .and_then(User::display)
            .map(str::to_owned)
            .or(author.raw)
    }))
}

#[derive(Deserialize)]
struct PullRequestPayload {
    pullrequest: PullRequest,
    repository: Repository,
    #[serde(default)]
    actor: Option<User>,
}

#[derive(Deserialize)]
struct Push {
    changes: Vec<RefChange>,
}

#[derive(Deserialize)]
struct PushPayload {
    push: Push,
    repository: Repository,
    #[serde(default)]
    actor: Option<User>,
}

/// The typed body of a Bitbucket event named `event` (`repo:push`, `pullrequest:created`, ...).
pub(crate) fn parse_body(event: &str, value: &[u8]) -> Result<EventBody, ParseError> {
    let pull_request_action = match event {
        "pullrequest:created" => Some(PullRequestAction::Created),
        "pullrequest:updated" => Some(PullRequestAction::Updated),
        "pullrequest:approved" => Some(PullRequestAction::Approved),
        "pullrequest:unapproved" => Some(PullRequestAction::Unapproved),
        "pullrequest:changes_request_created" => Some(PullRequestAction::ChangesRequestCreated),
        "pullrequest:changes_request_removed" => Some(PullRequestAction::ChangesRequestRemoved),
        "pullrequest:fulfilled" => Some(PullRequestAction::Fulfilled),
        "pullrequest:rejected" => Some(PullRequestAction::Rejected),
        "pullrequest:comment_created" => Some(PullRequestAction::CommentCreated),
        "pullrequest:comment_updated" => Some(PullRequestAction::CommentUpdated),
        "pullrequest:comment_deleted" => Some(PullRequestAction::CommentDeleted),
        "pullrequest:comment_resolved" => Some(PullRequestAction::CommentResolved),
        "pullrequest:comment_reopened" => Some(PullRequestAction::CommentReopened),
        _ => None,
    };
    if let Some(action) = pull_request_action {
        let payload: PullRequestPayload = from_body(event, value)?;
        return Ok(EventBody::PullRequest(PullRequestEvent {
            action,
            pull_request: payload.pullrequest,
            repository: payload.repository,
            actor: payload.actor,
        }));
    }
    if event == "repo:push" {
        let payload: PushPayload = from_body(event, value)?;
        return Ok(EventBody::Push(PushEvent {
            changes: payload.push.changes,
            repository: payload.repository,
            actor: payload.actor,
        }));
    }
    Ok(EventBody::Unknown)
}
