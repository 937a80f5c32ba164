//! Webhook records written straight to the webhook topic in the gateway's format (the
//! topic format is the contract between gateway and processor), for tests that need many
//! events fast.

use anyhow::Result;
use hookfold_proto::cloudevents::{self, CloudEventHeaders, SourceKind};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::webhooks::{agent_event, build_finished};

/// One webhook as the gateway would have appended it.
#[derive(Clone, Debug)]
pub struct WebhookRecord {
    pub key: String,
    pub headers: CloudEventHeaders,
    pub body: Vec<u8>,
}

pub fn buildkite(source: &str, event: &str, body: Vec<u8>) -> WebhookRecord {
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    WebhookRecord {
        key: hookfold_gateway::routing::routing_key(source, SourceKind::Buildkite, event, &parsed),
        headers: CloudEventHeaders {
            id: hookfold_gateway::routing::event_id(source, event, &body, None),
            source: cloudevents::webhook_source(source),
            ty: cloudevents::webhook_type(SourceKind::Buildkite, event),
            time: "2026-11-22T10:05:00Z".into(),
            content_type: cloudevents::CONTENT_TYPE_JSON.into(),
        },
        body,
    }
}

/// A deterministic, seeded mix of builds (new, stale, repeated), and agent events.
pub fn mixed_story(count: usize, seed: u64) -> Vec<WebhookRecord> {
    let mut rng = seed.max(1);
    let mut next = move |n: u64| {
        // xorshift64: deterministic, no dependency.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut numbers = std::collections::HashMap::new();
    let mut agent_ids = std::collections::HashMap::new();
    let mut out: Vec<WebhookRecord> = Vec::with_capacity(count);
    while out.len() < count {
        let roll = next(100);
        let record = if roll < 5 && !out.is_empty() {
            out[next(out.len() as u64) as usize].clone() // a repeated delivery
        } else if roll < 20 {
            let name = format!("agent-{}", next(20));
            let generation = agent_ids.entry(name.clone()).or_insert(0u64);
            let event = [
                "agent.lost",
                "agent.disconnected",
                "agent.stopped",
                "agent.connected",
            ][next(4) as usize];
            if event == "agent.connected" && next(2) == 0 {
                *generation += 1; // a restarted agent: same name, new id
            }
            let id = format!("{name}-id-{generation}");
            buildkite("acme-bk", event, agent_event(event, &name, &id))
        } else {
            let pipeline = format!("pipeline-{}", next(40));
            let branch = ["main", "release/1.x", "feature/x"][next(3) as usize];
            let counter = numbers.entry((pipeline.clone(), branch)).or_insert(0u64);
            let number = if next(10) == 0 && *counter > 3 {
                *counter - 1 - next(3) // stale
            } else {
                *counter += 1;
                *counter
            };
            let state = [
                "failed", "failed", "failed", "passed", "passed", "passed", "passed", "canceled",
            ][next(8) as usize];
            buildkite(
                "acme-bk",
                "build.finished",
                build_finished(&pipeline, branch, number, state),
            )
        };
        out.push(record);
    }
    out
}

/// `story` as the gateway would have received it `step_ms` apart from the story's time on
/// (record i at 10:05 + i × step): event time moves with the log, so the timers of grouped
/// routes (`group_wait`, `group_interval`) fire from the records alone, in every run alike.
pub fn timed(mut story: Vec<WebhookRecord>, step_ms: i64) -> Vec<WebhookRecord> {
    use time::format_description::well_known::Rfc3339;
    let start = time::macros::datetime!(2026-11-22 10:05:00 UTC);
    for (n, record) in story.iter_mut().enumerate() {
        let at = start + time::Duration::milliseconds(n as i64 * step_ms);
        record.headers.time = at.format(&Rfc3339).expect("a time formats");
    }
    story
}

/// Routes that group what [`mixed_story`] fails: its agents are one group per team, the
/// builds of `pipeline-1*` one group per branch; the other pipelines stay ungrouped.
pub const GROUPED_ROUTES: &str = r#"
[[rules.routes]]
name = "fleet"
kinds = ["agent"]
labels = { team = "ci-infra" }
group_by = ["team"]
group_wait = "30s"
group_interval = "1m"

[[rules.routes]]
name = "platform"
pipelines = ["pipeline-1*"]
labels = { team = "platform" }
group_by = ["branch"]
group_wait = "1m"
"#;

/// `count` records, each for a key never seen before: failed builds of new pipelines
/// and lost agents, alternating. Each creates a state and an incident.
pub fn distinct_keys(count: usize) -> Vec<WebhookRecord> {
    (0..count).map(distinct_key).collect()
}

/// Record `n` of [`distinct_keys`].
pub fn distinct_key(n: usize) -> WebhookRecord {
    if n.is_multiple_of(2) {
        buildkite(
            "acme-bk",
            "build.finished",
            build_finished(&format!("p{n:07}"), "main", 1, "failed"),
        )
    } else {
        buildkite(
            "acme-bk",
            "agent.lost",
            agent_event("agent.lost", &format!("a{n:07}"), &format!("id{n}")),
        )
    }
}

/// Appends the records in order with the settings a real producer uses: idempotent,
/// acks=all, librdkafka's normal batching (a few ms of linger, many records per batch).
pub async fn produce(bootstrap: &str, topic: &str, records: &[WebhookRecord]) -> Result<()> {
    let mut config = ClientConfig::new();
    let producer: FutureProducer = config
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let mut pending = Vec::new();
    for record in records {
        let headers = hookfold_kafka::cloudevent_headers(&record.headers, 0);
        let future = producer.send_result(
            FutureRecord::to(topic)
                .key(&record.key)
                .payload(&record.body)
                .headers(headers),
        );
        match future {
            Ok(delivery) => pending.push(delivery),
            Err((e, _)) => anyhow::bail!("producing: {e}"),
        }
        if pending.len() >= 1000 {
            for delivery in pending.drain(..) {
                delivery.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for delivery in pending {
        delivery.await?.map_err(|(e, _)| e)?;
    }
    Ok(())
}
