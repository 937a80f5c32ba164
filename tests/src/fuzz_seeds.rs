//! The fuzz targets' seed corpus (`hookfold-dev fuzz-seeds`, stored in `fuzz/corpus/`):
//! the events crate's fixtures and the tests' webhook records, framed the way each target
//! cuts its input (`fuzz/src/lib.rs`), and the states folding them leaves, encoded. Seeds
//! start libFuzzer from inputs that parse, so its mutations explore past the first brace.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use hookfold_events::parse;
use hookfold_gateway::auth::{Secret, bitbucket_signature_header, buildkite_signature_header};
use hookfold_proto::cloudevents::CloudEventHeaders;
use hookfold_rules::{Cause, KeyState, Rules, apply};

use crate::records::{WebhookRecord, distinct_keys, mixed_story};

/// The secret and clock of `fuzz/fuzz_targets/webhook_request.rs`: seeds signed with them
/// start the fuzzer from requests that authenticate.
const SECRET: &str = "29b1ff5779c76bd48ba6705eb99ff970";
const NOW: i64 = 1_764_000_000;

/// (fixture under events/tests/fixtures, its `ce_type`)
const FIXTURES: [(&str, &str); 16] = [
    (
        "buildkite/agent-connected.json",
        "buildkite.agent.connected",
    ),
    ("buildkite/agent-lost.json", "buildkite.agent.lost"),
    (
        "buildkite/build-finished-failed.json",
        "buildkite.build.finished",
    ),
    (
        "buildkite/build-finished-passed.json",
        "buildkite.build.finished",
    ),
    ("buildkite/build-running.json", "buildkite.build.running"),
    (
        "buildkite/job-finished-failed.json",
        "buildkite.job.finished",
    ),
    ("buildkite/ping.json", "buildkite.ping"),
    (
        "bitbucket/pullrequest-created.json",
        "bitbucket.pullrequest:created",
    ),
    (
        "bitbucket/pullrequest-fulfilled.json",
        "bitbucket.pullrequest:fulfilled",
    ),
    (
        "bitbucket/pullrequest-fulfilled-2.json",
        "bitbucket.pullrequest:fulfilled",
    ),
    (
        "bitbucket/pullrequest-rejected.json",
        "bitbucket.pullrequest:rejected",
    ),
    ("bitbucket/repo-push.json", "bitbucket.repo:push"),
    (
        "buildkite_test_engine/state-changed-muted.json",
        "buildkite_test_engine.test.state_changed",
    ),
    (
        "buildkite_test_engine/state-changed-unicode.json",
        "buildkite_test_engine.test.state_changed",
    ),
    (
        "buildkite_test_engine/label-added.json",
        "buildkite_test_engine.test.label_added",
    ),
    (
        "buildkite_test_engine/label-removed.json",
        "buildkite_test_engine.test.label_removed",
    ),
];

fn records() -> Result<Vec<WebhookRecord>> {
    let fixtures = crate::manifest_dir().join("../events/tests/fixtures");
    let mut out = Vec::new();
    for (n, (file, ce_type)) in FIXTURES.iter().enumerate() {
        let path = fixtures.join(file);
        let body = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let source = if ce_type.starts_with("bitbucket.") {
            "/sources/acme-bitbucket"
        } else if ce_type.starts_with("buildkite_test_engine.") {
            "/sources/acme-tests"
        } else {
            "/sources/acme-buildkite"
        };
        out.push(WebhookRecord {
            key: String::new(),
            headers: CloudEventHeaders {
                id: format!("fixture-{n}"),
                source: source.into(),
                ty: (*ce_type).into(),
                time: "2026-11-22T10:05:00Z".into(),
                content_type: "application/json".into(),
            },
            body,
        });
    }
    out.extend(mixed_story(40, 7));
    out.extend(distinct_keys(4));
    Ok(out)
}

fn frame(fields: &[&[u8]]) -> Vec<u8> {
    fields.join(&b'\n')
}

/// Writes every target's seeds under `out/<target>/`; returns how many per target.
pub fn write(out: &Path) -> Result<()> {
    let records = records()?;
    let mut seeds: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
    let secret = Secret::new(SECRET);
    let rules = Rules::default();
    let mut states: BTreeMap<String, KeyState> = BTreeMap::new();
    for (offset, record) in records.iter().enumerate() {
        let h = &record.headers;
        seeds.entry("webhook_record").or_default().push(frame(&[
            h.ty.as_bytes(),
            h.source.as_bytes(),
            h.time.as_bytes(),
            h.id.as_bytes(),
            &record.body,
        ]));
        let event = h.ty.split_once('.').map_or("", |(_, name)| name);
        let (signature, hub, uuid) = if h.ty.starts_with("bitbucket.") {
            (
                String::new(),
                bitbucket_signature_header(&secret, &record.body),
                "{6c1b1a2e-3f0a-4c8e-9a55-0f5d7d1c2b3a}",
            )
        } else {
            (
                buildkite_signature_header(&secret, NOW, &record.body),
                String::new(),
                "",
            )
        };
        seeds.entry("webhook_request").or_default().push(frame(&[
            signature.as_bytes(),
            b"",
            hub.as_bytes(),
            event.as_bytes(),
            uuid.as_bytes(),
            &record.body,
        ]));
        if let Ok(event) = parse(h, &record.body) {
            let key = event.routing_key().unwrap_or_default();
            let cause = Cause {
                offset: offset as i64,
                ce_id: event.id.clone(),
                ..Cause::default()
            };
            let state = states.remove(&key).unwrap_or_default();
            let (state, _) = apply(state, &event, &cause, &rules);
            states.insert(key, state);
        }
    }
    seeds.insert(
        "state_codec",
        states.values().map(hookfold_state::codec::encode).collect(),
    );
    for (target, inputs) in &seeds {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (n, input) in inputs.iter().enumerate() {
            let path = dir.join(format!("seed-{n:03}"));
            std::fs::write(&path, input).with_context(|| format!("writing {}", path.display()))?;
        }
        eprintln!("fuzz-seeds: {} seeds in {}", inputs.len(), dir.display());
    }
    Ok(())
}
