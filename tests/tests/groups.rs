//! Grouped routes end to end, through the real processor and a real broker: a storm of
//! members spread over every partition is one incident per group, listing its members and
//! resolved once by its last member; a SIGKILL in the middle of a storm (either guarantee)
//! changes none of it.

use std::collections::BTreeMap;
use std::time::Duration;

use hookfold_proto::Message as _;
use hookfold_proto::v1::{IncidentEvent, Transition};
use hookfold_tests::processor::Processor;
use hookfold_tests::records::{WebhookRecord, buildkite, produce};
use hookfold_tests::runs::stop_and_collect;
use hookfold_tests::webhooks::build_finished;
use hookfold_tests::{Broker, Topics};
use rdkafka::Message as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const PARTITIONS: i32 = 3;

/// The spot fleet grouped by queue, the web pipelines by team (the rules' tests' fixture),
/// as a processor's `[rules]`.
fn routes() -> String {
    include_str!("../../rules/tests/fixtures/groups.toml")
        .replace("[[routes]]", "[[rules.routes]]")
        .replace("[routes.", "[rules.routes.")
}

const T0: &str = "2026-11-22T10:00:00Z";

/// `record` as the gateway received it `millis` after T0.
fn at(mut record: WebhookRecord, millis: i64) -> WebhookRecord {
    let t0 = OffsetDateTime::parse(T0, &Rfc3339).unwrap();
    record.headers.time = (t0 + time::Duration::milliseconds(millis))
        .format(&Rfc3339)
        .unwrap();
    record
}

/// Agent `n` of `queue`'s `event`, received `millis` after T0 (Buildkite's bodies differ
/// from one delivery to the next; the same body twice is one delivery repeated).
fn spot_agent(event: &str, queue: &str, n: usize, millis: i64) -> WebhookRecord {
    let name = format!("{queue}-{n:03}");
    let body = serde_json::json!({
        "event": event,
        "sent_at_ms": millis,
        "agent": {
            "id": format!("{name}-id"),
            "name": name,
            "connection_state": event.trim_start_matches("agent."),
            "hostname": format!("{name}.spot.internal"),
            "meta_data": [format!("queue={queue}"), "os=linux"],
        },
        "sender": {"id": "u-1", "name": "Ada Lovelace"}
    });
    at(
        buildkite("acme-bk", event, body.to_string().into_bytes()),
        millis,
    )
}

fn build(pipeline: &str, number: u64, state: &str) -> WebhookRecord {
    buildkite(
        "acme-bk",
        "build.finished",
        build_finished(pipeline, "main", number, state),
    )
}

/// Passed builds of 30 pipelines no route has, at `millis`: every partition's clock moves
/// there (30 keys over 3 partitions, placed by the same partitioner every run).
fn clocks(millis: i64) -> Vec<WebhookRecord> {
    (0..30)
        .map(|n| {
            at(
                build(&format!("clock-{n}"), millis as u64, "passed"),
                millis,
            )
        })
        .collect()
}

/// 300 spot-a agents connected a minute before; then 300 spot-a and 50 spot-b agents lost
/// and 40 web pipelines failed within 40 s; then everything back two minutes later.
fn storm() -> Vec<WebhookRecord> {
    let mut story: Vec<WebhookRecord> = (0..300)
        .map(|n| spot_agent("agent.connected", "spot-a", n, -60_000 + n as i64 * 10))
        .collect();
    for n in 0..300 {
        story.push(spot_agent("agent.lost", "spot-a", n, n as i64 * 66));
        if n < 50 {
            story.push(spot_agent(
                "agent.lost",
                "spot-b",
                n,
                5_000 + n as i64 * 100,
            ));
        }
        if n < 40 {
            story.push(at(
                build(&format!("web-{n}"), 1, "failed"),
                n as i64 * 1_000,
            ));
        }
    }
    story[300..].sort_by(|a, b| a.headers.time.cmp(&b.headers.time));
    story.extend(clocks(90_000));
    for n in 0..300 {
        story.push(spot_agent(
            "agent.connected",
            "spot-a",
            n,
            150_000 + n as i64 * 66,
        ));
        if n < 50 {
            story.push(spot_agent(
                "agent.connected",
                "spot-b",
                n,
                150_000 + n as i64 * 66,
            ));
        }
    }
    for n in 0..40 {
        story.push(at(build(&format!("web-{n}"), 2, "passed"), 180_000));
    }
    story.extend(clocks(600_000));
    story
}

/// The storm posted to `t`'s webhook topic, and a processor with the grouped routes,
/// started, that has folded it through both stages; with the storm's record count.
async fn folded_storm(t: &Topics, broker: &Broker, dir: &std::path::Path) -> (Processor, usize) {
    let story = storm();
    produce(&broker.bootstrap, &t.webhooks, &story)
        .await
        .unwrap();
    let records = story.len();
    let mut processor = t
        .processor(broker, dir)
        .extra(&routes())
        .start()
        .await
        .unwrap();
    fold_everything(&mut processor, records).await;
    (processor, records)
}

/// Waits until `processor` has committed the storm's `records` and its group stages have
/// folded all it sent them.
async fn fold_everything(processor: &mut Processor, records: usize) {
    processor
        .wait_committed(records as i64, Duration::from_secs(120))
        .await
        .unwrap();
    processor
        .wait_groups_folded(Duration::from_secs(60))
        .await
        .unwrap();
}

fn decode(records: &[rdkafka::message::OwnedMessage]) -> Vec<IncidentEvent> {
    records
        .iter()
        .map(|m| IncidentEvent::decode(m.payload().unwrap_or_default()).unwrap())
        .collect()
}

/// `(dedup key, transition, members listed)`, each event once (by id), in topic order.
fn summary(events: &[IncidentEvent]) -> Vec<(String, Transition, usize)> {
    let mut seen = std::collections::HashSet::new();
    events
        .iter()
        .filter(|e| seen.insert(e.event_id.clone()))
        .map(|e| (e.dedup_key.clone(), e.transition(), e.members.len()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_is_one_incident_per_group_listing_its_members_and_resolved_by_the_last() {
    let broker = Broker::start().unwrap();
    let t = Topics::create(&broker, PARTITIONS).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut processor, _) = folded_storm(&t, &broker, dir.path()).await;
    let run = stop_and_collect(&mut processor).unwrap();
    let events = decode(&run.incidents);

    let mut by_group: BTreeMap<String, Vec<(Transition, usize)>> = BTreeMap::new();
    for (key, transition, members) in summary(&events) {
        by_group.entry(key).or_default().push((transition, members));
    }
    let expected: BTreeMap<String, Vec<(Transition, usize)>> = [
        ("route/spot-fleet/group/spot-a", 300),
        ("route/spot-fleet/group/spot-a/pool", 0),
        ("route/spot-fleet/group/spot-b", 50),
        ("route/web/group/web", 40),
    ]
    .into_iter()
    .map(|(key, members)| {
        (
            key.to_owned(),
            vec![(Transition::Created, members), (Transition::Resolved, 0)],
        )
    })
    .collect();
    assert_eq!(
        by_group, expected,
        "one CREATED listing every member and one RESOLVED per group, nothing else"
    );
    let created = |key: &str| {
        events
            .iter()
            .find(|e| e.dedup_key == key && e.transition() == Transition::Created)
            .unwrap()
    };
    let spot_a = created("route/spot-fleet/group/spot-a");
    assert_eq!(
        spot_a.labels.get("team").map(String::as_str),
        Some("ci-infra")
    );
    assert_eq!(
        spot_a.labels.get("queue").map(String::as_str),
        Some("spot-a")
    );
    assert_eq!(spot_a.route, "spot-fleet");
    assert_eq!(spot_a.details["members"], "300");
    assert_eq!(
        spot_a.occurred_at.unwrap().seconds
            - OffsetDateTime::parse(T0, &Rfc3339)
                .unwrap()
                .unix_timestamp(),
        30,
        "group_wait after the first member went bad"
    );
    assert_eq!(
        created("route/web/group/web")
            .labels
            .get("team")
            .map(String::as_str),
        Some("web")
    );
    // The pool: spot-a had its 300 connected, fell under 100 at the 201st loss, and opened
    // group_wait later, when none was left; it resolved at the 100th reconnect.
    let pool = created("route/spot-fleet/group/spot-a/pool");
    assert_eq!(
        pool.summary,
        "queue=spot-a: 0 of at least 100 agents connected"
    );
    let t0 = OffsetDateTime::parse(T0, &Rfc3339)
        .unwrap()
        .unix_timestamp();
    assert_eq!(
        pool.occurred_at.unwrap().seconds - t0,
        43,
        "13.2 s + group_wait"
    );
    let back = events
        .iter()
        .find(|e| e.dedup_key == pool.dedup_key && e.transition() == Transition::Resolved)
        .unwrap();
    assert_eq!(
        back.occurred_at.unwrap().seconds - t0,
        156,
        "150 s + 99 × 66 ms"
    );
    // Everything resolved: the open-incident table ends empty.
    let table =
        hookfold_tests::comparisons::table_contents(&broker.read_all(&t.open_incidents()).unwrap())
            .unwrap();
    assert!(table.is_empty(), "still open: {:?}", table.keys());
}

/// A rebuild with grouped routes: `--partition` is refused (every group takes members from
/// every partition); a full rebuild starts each group stage after the groups topic's end,
/// and the processor folds the groups again from what the rebuild sent it: the group
/// incidents come again with the ids and contents they had, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_folds_the_groups_again_from_what_it_sends() {
    let broker = Broker::start().unwrap();
    let t = Topics::create(&broker, PARTITIONS).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut processor, records) = folded_storm(&t, &broker, dir.path()).await;
    let first = stop_and_collect(&mut processor).unwrap().incidents;
    assert!(first.len() >= 8, "the storm's groups: {}", first.len());

    let refused = processor
        .command(&["rebuild", "--partition", "0"], &[])
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success());
    assert!(said.contains("recomputes every partition"), "{said}");

    let rebuild = processor.command(&["rebuild"], &[]).unwrap();
    let said = String::from_utf8_lossy(&rebuild.stdout).into_owned()
        + &String::from_utf8_lossy(&rebuild.stderr);
    assert!(rebuild.status.success(), "{said}");
    assert!(said.contains("its groups start over from offset"), "{said}");

    processor.restart().await.unwrap();
    fold_everything(&mut processor, records).await;
    let all = stop_and_collect(&mut processor).unwrap().incidents;
    assert!(all.len() > first.len(), "the groups were folded again");
    let repeats = hookfold_tests::assert_same_incidents(&first, &all).unwrap();
    assert_eq!(
        repeats,
        all.len() - first.len(),
        "every later event repeats one"
    );
    let table =
        hookfold_tests::comparisons::table_contents(&broker.read_all(&t.open_incidents()).unwrap())
            .unwrap();
    assert!(table.is_empty(), "still open: {:?}", table.keys());
}
