//! What the processor stores per Kafka routing key between two `apply` calls.
//!
//! One [`KeyState`] per routing key of the webhook topic (`<source_id>/pipeline/<slug>`,
//! `<source_id>/agent/<name>`, `<source_id>/repo/<full_name>`, `<source_id>/org`). It is
//! plain serde data meant for a compact binary codec (postcard, bincode): no maps with
//! non-string keys that JSON could not write either, no skipped or flattened fields, no
//! untagged enums. Everything in it is bounded (see each field), so a key's state stays
//! small however long the key lives.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::config::SeverityLevel;
use crate::output::Origin;

/// Version of the [`KeyState`] layout. A serde binary codec has no field names, so the
/// processor should store this next to every encoded state and rebuild (replay the webhook
/// topic for) any state written with another version.
///
/// Version 2 added agent grace periods and expiry, and the build failure count; version 3
/// an open incident's route (its name and labels) and a pending agent incident's expiry.
pub const STATE_FORMAT_VERSION: u32 = 3;

/// Most failed jobs remembered per build scope (the oldest build's go first).
pub(crate) const MAX_FAILED_JOBS: usize = 64;
/// Most ids of earlier agent instances remembered per agent name.
pub(crate) const MAX_SUPERSEDED_AGENT_IDS: usize = 16;
/// Most ids of the current agent instance(s) remembered per agent name.
pub(crate) const MAX_LIVE_AGENT_IDS: usize = 8;
/// Most closed pull requests remembered per repository (to ignore a late `created`).
pub(crate) const MAX_CLOSED_PULL_REQUESTS: usize = 1024;
/// Most merged branch heads remembered per repository (to ignore a late push of them).
pub(crate) const MAX_MERGED_BRANCHES: usize = 64;

/// The state of one routing key. `Default` is the state of a key never seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    pub(crate) seen: SeenIds,
    /// Keyed by `<source_id>/pipeline/<slug>` (the routing key).
    pub(crate) pipelines: BTreeMap<String, PipelineState>,
    /// Keyed by `<source_id>/agent/<name>` (the routing key).
    pub(crate) agents: BTreeMap<String, AgentState>,
    /// Keyed by `<source_id>/repo/<full_name>` (the routing key).
    pub(crate) repos: BTreeMap<String, RepoState>,
}

/// An incident that is open right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenIncidentView<'a> {
    pub dedup_key: &'a str,
    pub incident_id: &'a str,
    pub created_at: OffsetDateTime,
    /// Sequence number of the incident's last event so far.
    pub sequence: u32,
    pub severity: SeverityLevel,
}

impl KeyState {
    /// Whether the webhook `ce_id` was applied to this state already (within
    /// `dedup_window`): folding it again changes nothing.
    pub fn has_seen(&self, ce_id: &str) -> bool {
        self.seen.contains(ce_id)
    }

    /// Whether the agent instance `id` of the agent state under `routing` was replaced by
    /// a later `agent.connected` (what it reports is old news).
    pub fn agent_superseded(&self, routing: &str, id: &str) -> bool {
        self.agents
            .get(routing)
            .is_some_and(|agent| agent.superseded_ids.iter().any(|old| old == id))
    }

    /// The incidents open in this state, in dedup-key order (for metrics, debugging,
    /// and tests).
    pub fn open_incidents(&self) -> Vec<OpenIncidentView<'_>> {
        let pipelines = self.pipelines.values().flat_map(|pipeline| {
            pipeline
                .by_branch
                .values()
                .chain(pipeline.whole.iter())
                .filter_map(|s| s.open.as_ref())
        });
        let agents = self.agents.values().filter_map(|agent| agent.open.as_ref());
        let repos = self
            .repos
            .values()
            .flat_map(|repo| repo.pull_requests.values().chain(repo.branches.values()));
        let mut open: Vec<_> = pipelines
            .chain(agents)
            .chain(repos)
            .map(OpenIncident::view)
            .collect();
        open.sort_by(|a, b| a.dedup_key.cmp(b.dedup_key));
        open
    }

    /// The deadlines of this key's timers (agents waiting out their grace, incidents that
    /// expire), in no particular order. The partition's clock indexes them.
    pub(crate) fn deadlines(&self) -> Vec<StoredTime> {
        let mut deadlines = Vec::new();
        for agent in self.agents.values() {
            deadlines.extend(agent.pending.as_ref().map(|pending| pending.deadline));
            deadlines.extend(agent.expiry.as_ref().map(|expiry| expiry.at));
        }
        deadlines
    }

    /// How many `ce_id`s the duplicate window holds now.
    pub fn remembered_ids(&self) -> usize {
        self.seen.ids.len()
    }
}

/// The last `ce_id`s applied to a key, oldest first, as 64-bit prefixes of their SHA-256: 8
/// bytes each instead of 36 (a UUID) or 64 (a Buildkite hex digest); two distinct ids
/// collide with probability ~2^-64 per pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SeenIds {
    ids: VecDeque<u64>,
}

impl SeenIds {
    fn fingerprint(ce_id: &str) -> u64 {
        let digest = Sha256::digest(ce_id.as_bytes());
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(prefix)
    }

    pub(crate) fn contains(&self, ce_id: &str) -> bool {
        let fingerprint = Self::fingerprint(ce_id);
        self.ids.contains(&fingerprint)
    }

    /// Remembers `ce_id`, forgetting the oldest ids beyond `window`.
    pub(crate) fn insert(&mut self, ce_id: &str, window: usize) {
        if window == 0 {
            self.ids.clear();
            return;
        }
        self.ids.push_back(Self::fingerprint(ce_id));
        while self.ids.len() > window {
            self.ids.pop_front();
        }
    }
}

/// A point in time, compactly: seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StoredTime {
    seconds: i64,
    nanos: u32,
}

impl From<OffsetDateTime> for StoredTime {
    fn from(at: OffsetDateTime) -> Self {
        Self {
            seconds: at.unix_timestamp(),
            nanos: at.nanosecond(),
        }
    }
}

impl StoredTime {
    /// The instant one nanosecond earlier.
    pub(crate) fn just_before(self) -> Self {
        match self.nanos {
            0 => Self {
                seconds: self.seconds.saturating_sub(1),
                nanos: 999_999_999,
            },
            nanos => Self {
                seconds: self.seconds,
                nanos: nanos - 1,
            },
        }
    }

    pub(crate) fn parts(self) -> (i64, u32) {
        (self.seconds, self.nanos)
    }

    /// From stored parts; `None` for nanoseconds of a second or more.
    pub(crate) fn from_parts(seconds: i64, nanos: u32) -> Option<Self> {
        (nanos < 1_000_000_000).then_some(Self { seconds, nanos })
    }

    /// `self + duration`, saturating (the rules bound every duration to ten years).
    pub(crate) fn plus(self, duration: std::time::Duration) -> Self {
        let at = self.to_offset_date_time();
        at.checked_add(time::Duration::try_from(duration).unwrap_or(time::Duration::MAX))
            .map_or(
                Self {
                    seconds: i64::MAX,
                    nanos: 0,
                },
                Self::from,
            )
    }

    pub(crate) fn to_offset_date_time(self) -> OffsetDateTime {
        // Stored values always come from an OffsetDateTime, so they convert back; the
        // epoch is only a guard against a hand-edited state.
        OffsetDateTime::from_unix_timestamp(self.seconds)
            .and_then(|at| at.replace_nanosecond(self.nanos))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    pub(crate) fn to_timestamp(self) -> hookfold_proto::prost_types::Timestamp {
        hookfold_proto::timestamp::from_offset_date_time(self.to_offset_date_time())
    }
}

/// An open incident: what later events of it need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OpenIncident {
    pub(crate) dedup_key: String,
    pub(crate) incident_id: String,
    pub(crate) created_at: StoredTime,
    /// Sequence number of the last event emitted for it.
    pub(crate) sequence: u32,
    pub(crate) severity: SeverityLevel,
    /// The route it opened under: every later event of it carries the same.
    pub(crate) route: Option<RouteTag>,
}

/// A route's name and labels, as an incident keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RouteTag {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
}

impl OpenIncident {
    fn view(&self) -> OpenIncidentView<'_> {
        OpenIncidentView {
            dedup_key: &self.dedup_key,
            incident_id: &self.incident_id,
            created_at: self.created_at.to_offset_date_time(),
            sequence: self.sequence,
            severity: self.severity,
        }
    }
}

/// A Buildkite pipeline's build state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PipelineState {
    /// Scope `pipeline_branch`, keyed by branch. Branches without an open incident or
    /// failed jobs are kept up to `idle_branch_limit`, least recently active forgotten first.
    pub(crate) by_branch: BTreeMap<String, BuildScopeState>,
    /// Scope `pipeline`.
    pub(crate) whole: Option<BuildScopeState>,
}

/// The builds of one scope (a branch, or the whole pipeline).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BuildScopeState {
    /// Highest build number whose verdict (failed or passed) was applied; 0 = none yet.
    pub(crate) highest: u64,
    /// Verdicts already applied for `highest` (a retried build may go failed -> passed).
    pub(crate) failed_applied: bool,
    pub(crate) passed_applied: bool,
    pub(crate) open: Option<OpenIncident>,
    /// Failed jobs of builds numbered `highest` or later, oldest first.
    pub(crate) failed_jobs: Vec<FailedJob>,
    /// `ce_time` (Unix seconds) of the last event that changed this scope, for forgetting
    /// the least recently active idle branches.
    pub(crate) last_active: i64,
    /// Whether `build.failing` was applied for `highest` (with `open_on_failing`).
    pub(crate) failing_applied: bool,
    /// Numbers of the consecutive failed builds since the last pass while no incident is
    /// open (`open_after_failures`), oldest first, at most `MAX_OPEN_AFTER_FAILURES`.
    pub(crate) failures: Vec<u64>,
}

impl BuildScopeState {
    pub(crate) fn is_idle(&self) -> bool {
        self.open.is_none() && self.failed_jobs.is_empty() && self.failures.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FailedJob {
    pub(crate) build_number: u64,
    pub(crate) job_id: String,
    pub(crate) name: String,
    pub(crate) web_url: Option<String>,
}

/// One Buildkite agent name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AgentState {
    pub(crate) open: Option<OpenIncident>,
    /// Ids seen (in opening events or `agent.connected`) since the last `agent.connected`,
    /// that one's id included.
    pub(crate) live_ids: Vec<String>,
    /// Ids an `agent.connected` with another id replaced: their events are stale. Oldest
    /// first, bounded.
    pub(crate) superseded_ids: VecDeque<String>,
    /// An opening event waiting out `grace`: the incident it creates unless the agent
    /// connects before `deadline`. Never set while `open` is.
    pub(crate) pending: Option<PendingIncident>,
    /// When the open incident expires (`resolve_after`), and the webhook that opened it.
    pub(crate) expiry: Option<Expiry>,
}

/// An incident created only if nothing cancels it before its deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingIncident {
    pub(crate) deadline: StoredTime,
    pub(crate) open: OpenIncident,
    /// Its CREATED event, built (and so identified) when the opening webhook was applied,
    /// protobuf-encoded.
    pub(crate) created: Vec<u8>,
    /// The opening webhook (for an expiry once it is created).
    pub(crate) origin: Origin,
    /// How long after its creation the incident expires (its route's `resolve_after`).
    pub(crate) resolve_after: Option<std::time::Duration>,
}

/// When an open incident is resolved as EXPIRED.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Expiry {
    pub(crate) at: StoredTime,
    pub(crate) origin: Origin,
}

/// One Bitbucket repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RepoState {
    /// Incidents of open pull requests, by pull request id.
    pub(crate) pull_requests: BTreeMap<u64, OpenIncident>,
    /// Ids of merged or declined pull requests, bounded: a later `created` for them is stale.
    pub(crate) closed_pull_requests: BTreeSet<u64>,
    /// The highest id forgotten from `closed_pull_requests`: a `created` for an unknown pull
    /// request at or below it is a late delivery (ids grow with creation) and is stale.
    pub(crate) forgotten_closed_up_to: u64,
    /// Open branch incidents by branch name.
    pub(crate) branches: BTreeMap<String, OpenIncident>,
    /// Head commit of the last push per branch with an open incident (a push of the same
    /// head again changes nothing).
    pub(crate) branch_heads: BTreeMap<String, String>,
    /// (branch, source commit) of recently merged pull requests, oldest first: a push of
    /// that commit arriving after the merge is stale.
    pub(crate) merged_heads: VecDeque<(String, String)>,
}
