//! What a webhook becomes on the topic: its routing key, its CloudEvents id and headers.
//! Pure functions over the already-authenticated request (and the clock, for `ce_time`).

use hookfold_proto::cloudevents::{self, CloudEventHeaders, SourceKind};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The entity a webhook is about, which its record key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity<'a> {
    /// A Buildkite pipeline, by slug: its builds and jobs.
    Pipeline(&'a str),
    /// A Buildkite agent, by name (a restarted agent gets a new id, not a new name).
    Agent(&'a str),
    /// A Bitbucket repository, by full name: its pull requests and pushes.
    Repo(&'a str),
    /// A Buildkite Test Engine test, by suite slug and test id.
    Test { suite: &'a str, id: &'a str },
    /// Anything else of the source (a ping, an event naming no entity).
    Org,
}

/// The routing key of an entity of a source: `<source>/pipeline/<slug>`,
/// `<source>/agent/<name>`, `<source>/repo/<full_name>`, `<source>/suite/<slug>/test/<id>`
/// or `<source>/org`. The one place
/// this format is written: the gateway keys records with it, `hookfold-events` reads it back
/// from a typed event, and the rules key their state by it, so the three cannot drift apart.
pub fn entity_key(source_id: &str, entity: Entity<'_>) -> String {
    match entity {
        Entity::Pipeline(slug) => format!("{source_id}/pipeline/{slug}"),
        Entity::Agent(name) => format!("{source_id}/agent/{name}"),
        Entity::Repo(full_name) => format!("{source_id}/repo/{full_name}"),
        Entity::Test { suite, id } => format!("{source_id}/suite/{suite}/test/{id}"),
        Entity::Org => format!("{source_id}/org"),
    }
}

/// The record key of a webhook, chosen so that each entity's events stay in order on one
/// partition: the pipeline for Buildkite build and job events, the agent for agent events,
/// the repository for Bitbucket, the org otherwise (including a build event that names no
/// pipeline: it still lands, in order with the org).
pub fn routing_key(source_id: &str, kind: SourceKind, event: &str, body: &Value) -> String {
    let entity = match kind {
        SourceKind::Buildkite if event.starts_with("build.") || event.starts_with("job.") => {
            text_at(body, "/pipeline/slug")
                .or_else(|| text_at(body, "/build/pipeline/slug"))
                .map(Entity::Pipeline)
        }
        SourceKind::Buildkite if event.starts_with("agent.") => {
            text_at(body, "/agent/name").map(Entity::Agent)
        }
        SourceKind::Buildkite => None,
        SourceKind::Bitbucket => text_at(body, "/repository/full_name").map(Entity::Repo),
        SourceKind::BuildkiteTestEngine => text_at(body, "/test_url")
            .and_then(suite_of_test_url)
            .zip(text_at(body, "/test_id"))
            .map(|(suite, id)| Entity::Test { suite, id }),
    };
    entity_key(source_id, entity.unwrap_or(Entity::Org))
}

/// The suite slug a Test Engine `test_url` names:
/// `https://buildkite.com/organizations/<org>/analytics/suites/<slug>/tests/<id>`.
pub fn suite_of_test_url(url: &str) -> Option<&str> {
    let path = url.split(['?', '#']).next()?;
    let mut segments = path.split('/');
    segments.find(|segment| *segment == "suites")?;
    segments.next().filter(|slug| !slug.is_empty())
}

fn text_at<'a>(body: &'a Value, pointer: &str) -> Option<&'a str> {
    body.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The CloudEvents id. Bitbucket names each delivery (`X-Request-UUID`) and keeps the name
/// on retries. Buildkite sends no delivery id, so the id is the SHA-256 of source, event
/// name and body: a repeated delivery of the same body gets the same id, which is what
/// lets the processor drop it. A Bitbucket delivery without a usable UUID falls back to
/// the same digest.
pub fn event_id(source_id: &str, event: &str, body: &[u8], request_uuid: Option<&str>) -> String {
    if let Some(uuid) = request_uuid
        .map(str::trim)
        .filter(|u| is_usable_delivery_id(u))
    {
        return uuid.to_owned();
    }
    let mut digest = Sha256::new();
    // NUL separators: no source id or event name can contain one, so the fields cannot
    // run into each other.
    digest.update(source_id.as_bytes());
    digest.update([0]);
    digest.update(event.as_bytes());
    digest.update([0]);
    digest.update(body);
    hex::encode(digest.finalize())
}

/// The CloudEvents headers of a webhook record (`ce_time` is the receipt time, RFC 3339).
/// The gateway writes exactly these; the broker-ceiling benchmark writes them too.
pub fn webhook_headers(
    source_id: &str,
    kind: SourceKind,
    event: &str,
    id: String,
    time: String,
) -> CloudEventHeaders {
    CloudEventHeaders {
        id,
        source: cloudevents::webhook_source(source_id),
        ty: cloudevents::webhook_type(kind, event),
        time,
        content_type: cloudevents::CONTENT_TYPE_JSON.into(),
    }
}

/// Now, as a `ce_time` value.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn is_usable_delivery_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'{' | b'}'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn buildkite_keys() {
        let build = json!({"build": {"number": 1}, "pipeline": {"slug": "web"}});
        assert_eq!(
            routing_key("bk", SourceKind::Buildkite, "build.finished", &build),
            "bk/pipeline/web"
        );
        let nested = json!({"job": {}, "build": {"pipeline": {"slug": "api"}}});
        assert_eq!(
            routing_key("bk", SourceKind::Buildkite, "job.finished", &nested),
            "bk/pipeline/api"
        );
        let agent = json!({"agent": {"name": "ci-1", "id": "x"}});
        assert_eq!(
            routing_key("bk", SourceKind::Buildkite, "agent.lost", &agent),
            "bk/agent/ci-1"
        );
        let ping = json!({"event": "ping"});
        assert_eq!(
            routing_key("bk", SourceKind::Buildkite, "ping", &ping),
            "bk/org"
        );
        let no_slug = json!({"pipeline": {"slug": 3}});
        assert_eq!(
            routing_key("bk", SourceKind::Buildkite, "build.running", &no_slug),
            "bk/org"
        );
    }

    #[test]
    fn bitbucket_keys() {
        let body = json!({"repository": {"full_name": "acme/web"}});
        assert_eq!(
            routing_key("bb", SourceKind::Bitbucket, "repo:push", &body),
            "bb/repo/acme/web"
        );
        assert_eq!(
            routing_key("bb", SourceKind::Bitbucket, "repo:push", &json!({})),
            "bb/org"
        );
    }

    #[test]
    fn a_test_engine_test_is_keyed_by_the_suite_its_url_names_and_its_id() {
        let body = json!({
            "test_id": "abcdef01",
            "test_url": "http://buildkite.com/organizations/my-org/analytics/suites/my-suite/tests/abcdef01?tab=x",
        });
        assert_eq!(
            routing_key(
                "te",
                SourceKind::BuildkiteTestEngine,
                "test.label_added",
                &body
            ),
            "te/suite/my-suite/test/abcdef01"
        );
        for odd in [
            json!({"test_id": "abcdef01"}),
            json!({"test_id": "abcdef01", "test_url": "https://buildkite.com/organizations/o/suites/"}),
            json!({"test_url": "https://buildkite.com/organizations/o/analytics/suites/s/tests/1"}),
        ] {
            assert_eq!(
                routing_key(
                    "te",
                    SourceKind::BuildkiteTestEngine,
                    "test.state_changed",
                    &odd
                ),
                "te/org",
                "{odd}"
            );
        }
        assert_eq!(
            suite_of_test_url("https://x/suites/s-1/tests/1#t"),
            Some("s-1")
        );
        assert_eq!(suite_of_test_url("https://x/tests/1"), None);
    }

    #[test]
    fn record_headers() {
        let headers = webhook_headers(
            "bk",
            SourceKind::Buildkite,
            "build.finished",
            "abc".into(),
            "2026-11-22T10:00:00Z".into(),
        );
        assert_eq!(
            headers.pairs(),
            [
                ("ce_specversion", "1.0"),
                ("ce_id", "abc"),
                ("ce_source", "/sources/bk"),
                ("ce_type", "buildkite.build.finished"),
                ("ce_time", "2026-11-22T10:00:00Z"),
                ("content-type", "application/json"),
            ]
        );
        let now = now_rfc3339();
        assert!(
            time::OffsetDateTime::parse(&now, &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "{now}"
        );
    }

    #[test]
    fn event_ids() {
        let a = event_id("bk", "build.finished", b"{}", None);
        assert_eq!(a, event_id("bk", "build.finished", b"{}", None));
        assert_eq!(a.len(), 64);
        assert_ne!(a, event_id("bk2", "build.finished", b"{}", None));
        assert_ne!(a, event_id("bk", "build.running", b"{}", None));
        assert_ne!(a, event_id("bk", "build.finished", b"{ }", None));
        assert_eq!(
            event_id("bb", "repo:push", b"{}", Some("7f1e-42")),
            "7f1e-42"
        );
        // Hostile or empty ids are not trusted as ids.
        assert_eq!(
            event_id("bb", "repo:push", b"{}", Some("")),
            event_id("bb", "repo:push", b"{}", None)
        );
        assert_eq!(
            event_id("bb", "repo:push", b"{}", Some("a\nb")),
            event_id("bb", "repo:push", b"{}", None)
        );
    }
}
