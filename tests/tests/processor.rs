//! The processor binary against a real broker and real RocksDB: signed webhooks in
//! through the gateway, incidents out, read and decoded by an independent consumer; and
//! crash safety under SIGKILL.

use std::collections::BTreeMap;
use std::time::Duration;

use hookfold_proto::Message as _;
use hookfold_proto::v1::{IncidentEvent, ResolutionReason, Transition};
use hookfold_tests::records::{mixed_story, produce};
use hookfold_tests::webhooks::{agent_event, bitbucket_signed, build_finished, buildkite_signed};
use hookfold_tests::{
    Broker, Gateway, Topics, assert_same_incidents, fixture, headers_of, reference_run,
    stop_and_collect,
};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;

const BK_SECRET: &str = "bk-secret";
const BB_SECRET: &str = "bb-secret";

fn decode(records: &[OwnedMessage]) -> Vec<IncidentEvent> {
    records
        .iter()
        .map(|r| IncidentEvent::decode(r.payload().unwrap_or_default()).expect("IncidentEvent"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_through_the_gateway_become_incidents() {
    let broker = Broker::start().unwrap();
    let t = Topics::create(&broker, 3).await.unwrap();
    let gateway_config = format!(
        "[kafka]\ntopic = \"{}\"\n[[sources]]\nid = \"acme-bk\"\nkind = \"buildkite\"\nsecrets = [\"{BK_SECRET}\"]\n[[sources]]\nid = \"acme-bb\"\nkind = \"bitbucket\"\nsecrets = [\"{BB_SECRET}\"]\n",
        t.webhooks
    );
    let gateway = Gateway::start(&gateway_config, &broker.bootstrap, &[])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // As a user runs it: ticks on, agents' 5-minute grace.
    let mut processor = t
        .processor(&broker, dir.path())
        .with_ticks()
        .start()
        .await
        .unwrap();

    let client = reqwest::Client::new();
    let bk = gateway.webhook_url("acme-bk");
    let bb = gateway.webhook_url("acme-bb");
    let mut posted = 0;
    for (event, body) in [
        (
            "build.finished",
            build_finished("web", "main", 41, "passed"),
        ),
        (
            "build.finished",
            build_finished("web", "main", 42, "failed"),
        ),
        (
            "build.finished",
            build_finished("web", "feature/x", 7, "failed"),
        ),
        (
            "build.finished",
            build_finished("web", "main", 43, "failed"),
        ),
        (
            "build.finished",
            build_finished("web", "main", 43, "failed"),
        ), // repeated delivery
        (
            "build.finished",
            build_finished("web", "main", 44, "passed"),
        ),
        (
            "build.finished",
            build_finished("web", "main", 40, "failed"),
        ), // stale, late
        (
            "build.finished",
            build_finished("web", "main", 45, "canceled"),
        ),
        ("agent.lost", agent_event("agent.lost", "ci-7", "id-1")),
        (
            "agent.connected",
            agent_event("agent.connected", "ci-7", "id-2"),
        ),
        (
            "agent.disconnected",
            agent_event("agent.disconnected", "ci-7", "id-1"),
        ), // superseded id
    ] {
        let response = buildkite_signed(client.post(&bk), BK_SECRET, event, &body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        posted += 1;
    }
    for (file, event, uuid) in [
        (
            "bitbucket/pullrequest-created.json",
            "pullrequest:created",
            "0f0f0f0f-0000-4000-8000-000000000001",
        ),
        (
            "bitbucket/pullrequest-fulfilled.json",
            "pullrequest:fulfilled",
            "0f0f0f0f-0000-4000-8000-000000000002",
        ),
        (
            "bitbucket/pullrequest-created.json",
            "pullrequest:created",
            "0f0f0f0f-0000-4000-8000-000000000003",
        ), // late: stays closed
    ] {
        let response = bitbucket_signed(client.post(&bb), BB_SECRET, event, uuid, &fixture(file))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        posted += 1;
    }
    processor
        .wait_committed(posted, Duration::from_secs(60))
        .await
        .unwrap();

    // Everything is committed, so every output is already acked: read them all.
    let records = broker.read_all(&t.incidents).unwrap();
    let events = decode(&records);
    for (record, event) in records.iter().zip(&events) {
        let headers = headers_of(record);
        assert_eq!(
            record.key(),
            Some(event.dedup_key.as_bytes()),
            "key = dedup_key"
        );
        assert_eq!(headers["ce_id"], event.event_id);
        assert_eq!(headers["content-type"], "application/protobuf");
        let expected_type = match Transition::try_from(event.transition).unwrap() {
            Transition::Created => "hookfold.incident.created",
            Transition::Updated => "hookfold.incident.updated",
            Transition::Resolved => "hookfold.incident.resolved",
            Transition::Unspecified => panic!("unspecified transition"),
        };
        assert_eq!(headers["ce_type"], expected_type);
    }
    // Per dedup key, in order (one key is on one partition, so its order is kept).
    let mut by_key: BTreeMap<&str, Vec<(Transition, ResolutionReason, &str)>> = BTreeMap::new();
    for event in &events {
        by_key.entry(&event.dedup_key).or_default().push((
            Transition::try_from(event.transition).unwrap(),
            ResolutionReason::try_from(event.resolution_reason)
                .unwrap_or(ResolutionReason::Unspecified),
            &event.incident_id,
        ));
    }
    let transitions = |key: &str| -> Vec<Transition> {
        by_key
            .get(key)
            .map(|v| v.iter().map(|t| t.0).collect())
            .unwrap_or_default()
    };
    use Transition::{Created, Resolved, Updated};
    assert_eq!(
        transitions("buildkite/acme-bk/pipeline/web/branch/main"),
        vec![Created, Updated, Resolved]
    );
    assert_eq!(
        transitions("buildkite/acme-bk/pipeline/web/branch/feature/x"),
        vec![Created],
        "per-branch scope"
    );
    assert_eq!(
        transitions("buildkite/acme-bk/agent/ci-7"),
        vec![],
        "lost and back within the grace period: nobody is paged"
    );
    let pr_key = by_key
        .keys()
        .find(|k| k.contains("/pr/"))
        .copied()
        .expect("a pull request incident");
    assert_eq!(transitions(pr_key), vec![Created, Resolved]);
    assert_eq!(by_key[pr_key][1].1, ResolutionReason::PullRequestMerged);
    assert_eq!(
        by_key["buildkite/acme-bk/pipeline/web/branch/main"][2].1,
        ResolutionReason::BuildPassed
    );
    for chain in by_key.values() {
        assert!(
            chain.iter().all(|c| c.2 == chain[0].2),
            "one incident id per open/resolve cycle"
        );
    }
    assert_eq!(events.len(), 6, "{by_key:#?}");

    // `tail` shows the same stream to a person.
    let output = processor
        .command(&["tail", "--from-beginning"], &[])
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), events.len());
    assert!(
        lines
            .iter()
            .any(|l| l["headers"]["ce_type"] == "hookfold.incident.resolved"),
        "{lines:?}"
    );
    processor
        .process
        .terminate(Duration::from_secs(30))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_three_points_loses_nothing_and_repeats_only_identical_events() {
    const EVENTS: usize = 10_000;
    let broker = Broker::start().unwrap();
    let story = mixed_story(EVENTS, 0x5eed);
    let clean = Topics::create(&broker, 3).await.unwrap();
    produce(&broker.bootstrap, &clean.webhooks, &story)
        .await
        .unwrap();
    let crashed = Topics::on_input(&broker, &clean.webhooks, 3).await.unwrap();

    let clean_dir = tempfile::tempdir().unwrap();
    let clean_run = reference_run(
        clean.processor(&broker, clean_dir.path()),
        EVENTS as i64,
        Duration::from_secs(180),
    )
    .await
    .unwrap();
    // The same input again, with a SIGKILL whenever the committed offsets pass a point.
    let crash_dir = tempfile::tempdir().unwrap();
    let mut processor = crashed
        .processor(&broker, crash_dir.path())
        .start()
        .await
        .unwrap();
    for point in [2_000, 5_000, 8_000] {
        processor
            .wait_committed(point, Duration::from_secs(120))
            .await
            .unwrap();
        processor.process.kill();
        processor.restart().await.unwrap();
    }
    processor
        .wait_committed(EVENTS as i64, Duration::from_secs(180))
        .await
        .unwrap();
    let crash_run = stop_and_collect(&mut processor).unwrap();
    let (clean_out, crash_out) = (&clean_run.incidents, &crash_run.incidents);

    assert!(
        clean_out.len() > 500,
        "the story makes incidents ({})",
        clean_out.len()
    );
    // Nothing lost, nothing a clean run does not emit, a repeat only byte for byte.
    let repeats = assert_same_incidents(clean_out, crash_out)
        .unwrap_or_else(|e| panic!("after SIGKILL: {e:#}"));
    assert_eq!(
        crash_run.state, clean_run.state,
        "final state differs from a clean run's"
    );
    eprintln!(
        "clean run: {} outputs; crashed run: {} outputs ({repeats} repeats)",
        clean_out.len(),
        crash_out.len(),
    );
}

/// `incidents` lists what is open now from the open-incident table, and `--watch` then
/// prints each incident that opens and each that closes, as it happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_lists_what_is_open_and_watch_follows_it() {
    let broker = Broker::start().unwrap();
    let t = Topics::create(&broker, 3).await.unwrap();
    let gateway =
        hookfold_tests::Gateway::buildkite(&broker.bootstrap, &t.webhooks, "acme-bk", BK_SECRET)
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut processor = t
        .processor(&broker, dir.path())
        .without_grace()
        .start()
        .await
        .unwrap();
    let mut posted = 0;
    let mut post = async |event: &str, body: Vec<u8>| {
        gateway
            .post_buildkite("acme-bk", BK_SECRET, event, &body)
            .await
            .unwrap();
        posted += 1;
        posted
    };
    post("agent.lost", agent_event("agent.lost", "ci-7", "id-1")).await;
    let n = post("build.finished", build_finished("api", "main", 3, "failed")).await;
    processor
        .wait_committed(n, Duration::from_secs(60))
        .await
        .unwrap();

    let keys = processor.listed_incidents(&[]).unwrap();
    let agent = "buildkite/acme-bk/agent/ci-7";
    let build = "buildkite/acme-bk/pipeline/api/branch/main";
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.contains(&agent.to_owned()) && keys.contains(&build.to_owned()));
    let human = processor
        .command(&["incidents", "--kind", "agent"], &[])
        .unwrap();
    let human = String::from_utf8(human.stdout).unwrap();
    assert!(human.contains(agent) && !human.contains(build), "{human}");
    assert!(human.contains("1 open"), "{human}");

    let command = processor.subcommand(&["incidents", "--watch", "--json"]);
    let watch = hookfold_tests::Process::spawn("incidents-watch", command, dir.path()).unwrap();
    hookfold_tests::wait_for("the initial listing", Duration::from_secs(30), || {
        (watch.output().lines().count() >= 2).then_some(())
    })
    .unwrap();
    post(
        "agent.connected",
        agent_event("agent.connected", "ci-7", "id-2"),
    )
    .await;
    post("build.finished", build_finished("web", "main", 8, "failed")).await;
    let closed = format!("{{\"closed\":\"{agent}\"}}");
    hookfold_tests::wait_for("closed and open lines", Duration::from_secs(30), || {
        let output = watch.output();
        let opened = output.lines().any(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
                v["open"]["dedupKey"] == "buildkite/acme-bk/pipeline/web/branch/main"
            })
        });
        (opened && output.lines().any(|line| line == closed)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}:\n{}", watch.output()));
}
