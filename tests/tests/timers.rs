//! Time in the log, end to end: the real gateway and processor on a real broker, with
//! ticks on. A lost agent on a partition that never gets another webhook opens its
//! incident from the processor's ticks alone once the grace period has passed, and a
//! SIGKILL in the middle of the grace, with the store deleted too (so the waiting timer
//! comes back from the changelog), gives the same single event, id for id.

use std::time::Duration;

use hookfold_proto::Message as _;
use hookfold_proto::cloudevents::TICK_TYPE;
use hookfold_proto::v1::{IncidentEvent, Transition};
use hookfold_tests::webhooks::agent_event;
use hookfold_tests::{Broker, Gateway, Topics, headers_of, wait_for};
use rdkafka::Message;
use rdkafka::message::{OwnedMessage, Timestamp};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const BK_SECRET: &str = "timers-secret";
const GRACE: Duration = Duration::from_secs(4);
const TICK: Duration = Duration::from_secs(1);

/// What one run over its own one-partition topics gave.
struct Run {
    created: IncidentEvent,
    /// The lost webhook's `ce_time`.
    lost_at: OffsetDateTime,
    /// When the processor produced the CREATED record (its Kafka timestamp).
    created_written_at: OffsetDateTime,
    ticks: usize,
}

fn millis(timestamp: Timestamp) -> OffsetDateTime {
    let ms = timestamp.to_millis().expect("records carry a timestamp");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap()
}

/// One `agent.lost` and nothing else, on a topic of one partition; `kill_mid_grace`
/// SIGKILLs the processor once the lost event is committed (well within the grace),
/// deletes its store and starts it again.
async fn lost_agent_alone(broker: &Broker, kill_mid_grace: bool) -> Run {
    let t = Topics::create(broker, 1).await.unwrap();
    let gateway = Gateway::buildkite(&broker.bootstrap, &t.webhooks, "acme-bk", BK_SECRET)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut processor = t
        .processor(broker, dir.path())
        .tick_interval(&format!("{}s", TICK.as_secs()))
        .extra(&format!("[rules.agents]\ngrace = \"{}s\"", GRACE.as_secs()))
        .start()
        .await
        .unwrap();
    // In the group with the partition assigned, so the grace starts as the lost event lands.
    processor.wait_ready(Duration::from_secs(60)).await.unwrap();
    // The same body in every run: the same ce_id, so the same event ids.
    let body = agent_event("agent.lost", "ci-9", "id-9");
    gateway
        .post_buildkite("acme-bk", BK_SECRET, "agent.lost", &body)
        .await
        .unwrap();
    if kill_mid_grace {
        processor
            .wait_committed(1, Duration::from_secs(30))
            .await
            .unwrap();
        processor.process.kill();
        std::fs::remove_dir_all(dir.path().join("state")).unwrap();
        processor.restart().await.unwrap();
    }
    // After a SIGKILL the group hands the partition on once the dead member's session
    // times out (librdkafka's default, 45 s).
    let incidents = wait_for(
        "the lost agent's incident",
        GRACE + Duration::from_secs(90),
        || {
            let records = broker.read_all(&t.incidents).ok()?;
            (!records.is_empty()).then_some(records)
        },
    )
    .unwrap();
    let _ = incidents;
    // Everything on the partition folded (the last ticks included) before counting.
    let end = broker.record_count(&t.webhooks).unwrap();
    processor
        .wait_committed(end, Duration::from_secs(30))
        .await
        .unwrap();
    let incidents: Vec<OwnedMessage> = broker.read_all(&t.incidents).unwrap();
    let webhooks = broker.read_all(&t.webhooks).unwrap();
    assert_eq!(
        incidents.len(),
        1,
        "exactly one incident event: {:?}\n{}",
        incidents
            .iter()
            .map(|r| IncidentEvent::decode(r.payload().unwrap_or_default()).unwrap())
            .collect::<Vec<_>>(),
        processor.process.output()
    );
    let created = IncidentEvent::decode(incidents[0].payload().unwrap_or_default()).unwrap();
    let lost = &webhooks[0];
    let lost_at = OffsetDateTime::parse(&headers_of(lost)["ce_time"], &Rfc3339).expect("ce_time");
    let ticks = webhooks
        .iter()
        .filter(|record| headers_of(record).get("ce_type").map(String::as_str) == Some(TICK_TYPE))
        .count();
    assert_eq!(
        ticks,
        webhooks.len() - 1,
        "nothing but the lost webhook and ticks on the partition"
    );
    processor
        .process
        .terminate(Duration::from_secs(30))
        .unwrap();
    Run {
        created,
        lost_at,
        created_written_at: millis(incidents[0].timestamp()),
        ticks,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_agent_on_a_quiet_partition_opens_from_ticks_alone_and_a_sigkill_mid_grace_with_the_store_lost_changes_nothing()
 {
    let broker = Broker::start().unwrap();
    let clean = lost_agent_alone(&broker, false).await;
    let created = &clean.created;
    assert_eq!(created.transition, Transition::Created as i32);
    assert_eq!(created.dedup_key, "buildkite/acme-bk/agent/ci-9");
    // Its time is the lost event's, and its cause the lost webhook, not a tick.
    assert_eq!(
        created.occurred_at,
        Some(hookfold_proto::timestamp::from_offset_date_time(
            clean.lost_at
        ))
    );
    let cause = created.cause.as_ref().unwrap();
    assert_eq!(
        (cause.offset, cause.ce_type.as_str()),
        (0, "buildkite.agent.lost")
    );
    // Not before the grace ran out, and at most two tick intervals after.
    let after = clean.created_written_at - clean.lost_at;
    println!(
        "CREATED {after} after the lost event (grace {GRACE:?}, tick {TICK:?}), {} ticks",
        clean.ticks
    );
    assert!(clean.ticks >= 3, "ticks moved time on: {}", clean.ticks);
    assert!(
        after >= GRACE && after <= GRACE + 2 * TICK,
        "CREATED {after} after the lost event"
    );

    // The same webhook on other topics, the processor killed in the middle of its grace:
    // one event, with the clean run's ids (only its times and topic are this run's).
    let killed = lost_agent_alone(&broker, true).await;
    let ids = |e: &IncidentEvent| {
        (
            e.event_id.clone(),
            e.incident_id.clone(),
            e.dedup_key.clone(),
            e.transition,
        )
    };
    assert_eq!(ids(&killed.created), ids(&clean.created));
    assert_eq!(
        killed.created.occurred_at,
        Some(hookfold_proto::timestamp::from_offset_date_time(
            killed.lost_at
        ))
    );
}

/// The clock and the timers live under `\0hookfold/` keys beside the states: a record that
/// claims such a key is skipped and counted as malformed, and the partition goes on (it
/// would otherwise overwrite the partition's clock and stop the processor at its next batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_keyed_like_the_clock_is_skipped_and_the_partition_goes_on() {
    use hookfold_tests::records::{buildkite, produce};
    use hookfold_tests::webhooks::build_finished;
    let broker = Broker::start().unwrap();
    let t = Topics::create(&broker, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut processor = t.processor(&broker, dir.path()).start().await.unwrap();
    let mut forged = buildkite(
        "acme-bk",
        "agent.lost",
        agent_event("agent.lost", "ci-1", "id-1"),
    );
    forged.key = "\0hookfold/clock".into();
    let failed = buildkite(
        "acme-bk",
        "build.finished",
        build_finished("web", "main", 7, "failed"),
    );
    produce(&broker.bootstrap, &t.webhooks, &[forged, failed.clone()])
        .await
        .unwrap();
    processor
        .wait_committed(2, Duration::from_secs(60))
        .await
        .unwrap();
    let malformed = processor
        .metric_sum("hookfold_processor_events_total")
        .await;
    let text = reqwest::get(&processor.metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("hookfold_processor_events_total")
                && l.contains("outcome=\"malformed\"")
                && l.ends_with(" 1")),
        "{text}"
    );
    assert_eq!(malformed.unwrap(), 2, "both records counted once");
    // The build after it was folded as usual, and a later batch still reads the clock.
    let incidents = broker.read_all(&t.incidents).unwrap();
    assert_eq!(incidents.len(), 1);
    produce(&broker.bootstrap, &t.webhooks, &[failed])
        .await
        .unwrap();
    processor
        .wait_committed(3, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        processor.process.exited().is_none(),
        "{}",
        processor.process.output()
    );
    processor
        .process
        .terminate(Duration::from_secs(30))
        .unwrap();
}
