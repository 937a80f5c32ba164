//! Signing helpers and webhook bodies shared by the end-to-end tests.

use hookfold_gateway::auth::{Secret, bitbucket_signature_header, buildkite_signature_header};
use reqwest::RequestBuilder;

/// Adds a fresh Buildkite signature (now) for `body` to a request.
pub fn buildkite_signed(
    request: RequestBuilder,
    secret: &str,
    event: &str,
    body: &[u8],
) -> RequestBuilder {
    let header = buildkite_signature_header(&Secret::new(secret), crate::unix_now(), body);
    request
        .header("content-type", "application/json")
        .header("x-buildkite-event", event)
        .header("x-buildkite-signature", header)
        .body(body.to_vec())
}

/// Adds Bitbucket's headers and signature for `body` to a request.
pub fn bitbucket_signed(
    request: RequestBuilder,
    secret: &str,
    event: &str,
    uuid: &str,
    body: &[u8],
) -> RequestBuilder {
    request
        .header("content-type", "application/json")
        .header("x-event-key", event)
        .header("x-request-uuid", uuid)
        .header(
            "x-hub-signature",
            bitbucket_signature_header(&Secret::new(secret), body),
        )
        .body(body.to_vec())
}

/// A realistic Buildkite `build.finished` body (Buildkite publishes no sample payloads;
/// this follows the documented REST build object).
pub fn build_finished(pipeline: &str, branch: &str, number: u64, state: &str) -> Vec<u8> {
    serde_json::json!({
        "event": "build.finished",
        "build": {
            "id": format!("0190b8e2-{number:04}-4f7a-9d55-{pipeline}"),
            "url": format!("https://api.buildkite.com/v2/organizations/acme/pipelines/{pipeline}/builds/{number}"),
            "web_url": format!("https://buildkite.com/acme/{pipeline}/builds/{number}"),
            "number": number,
            "state": state,
            "blocked": false,
            "message": "Fix the flaky test",
            "commit": "a3b1c9d0e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3",
            "branch": branch,
            "source": "webhook",
            "author": {"name": "Ada Lovelace", "email": "ada@example.com"},
            "creator": {"name": "Ada Lovelace"},
            "created_at": "2026-11-22T10:00:00.000Z",
            "scheduled_at": "2026-11-22T10:00:00.000Z",
            "started_at": "2026-11-22T10:00:05.000Z",
            "finished_at": "2026-11-22T10:04:05.000Z"
        },
        "pipeline": {"id": "p-1", "slug": pipeline, "name": pipeline, "repository": "git@example.com:acme/web.git"},
        "sender": {"id": "u-1", "name": "Ada Lovelace"}
    })
    .to_string()
    .into_bytes()
}

/// A Buildkite agent event body (documented REST agent object).
pub fn agent_event(event: &str, name: &str, id: &str) -> Vec<u8> {
    serde_json::json!({
        "event": event,
        "agent": {
            "id": id,
            "name": name,
            "connection_state": event.trim_start_matches("agent."),
            "hostname": format!("{name}.ci.internal"),
            "ip_address": "192.0.2.10",
            "version": "3.80.0",
            "created_at": "2026-11-22T09:00:00.000Z"
        },
        "sender": {"id": "u-1", "name": "Ada Lovelace"}
    })
    .to_string()
    .into_bytes()
}
