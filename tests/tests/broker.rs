//! Broker failures on real Apache Kafka, end to end: the single broker SIGKILLed and
//! restarted on its data directory under load, a leader failover on the three-node
//! cluster, and Debian's `kcat` reading what the processor wrote.
//!
//! What is checked is what a webhook sender and an incident consumer see: every request
//! answered 202 is on the webhook topic afterwards (read back by `ce_id`), nothing is
//! answered 2xx while no broker can take it (503 with `Retry-After` instead), 202s come
//! back once the broker does, and a processor that ran through the failures ends with the
//! same incident events and state as a clean run over the same webhook topic.
//!
//! Every client runs with its default settings (the gateway's 5 s ack timeout, the
//! processor's batching and 120 s ack timeout). In a test binary of its own: the tests
//! kill brokers and load the machine, so they never share it with the other suites.
//!
//! The binaries come from the target directory (or `TEST_BIN_DIR`): build them from this
//! tree (`cargo build --workspace --bins`) right before running.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hookfold_proto::Message as _;
use hookfold_proto::v1::IncidentEvent;
use hookfold_tests::broker::PartitionLayout;
use hookfold_tests::load::{Answer, Load, Target, latency, statuses};
use hookfold_tests::logs::{LogMark, LogsOnPanic};
use hookfold_tests::records::{mixed_story, produce};
use hookfold_tests::{
    Broker, Gateway, Processor, Run, Topics, assert_same_incidents, headers_of, reference_run,
    stop_and_collect, wait_until,
};
use rdkafka::Message;
use rdkafka::admin::{AdminOptions, ResourceSpecifier};
use rdkafka::message::OwnedMessage;

const SOURCE: &str = "acme-buildkite";
const BK_SECRET: &str = "29b1ff5779c76bd48ba6705eb99ff970";

/// The tests that own brokers run one at a time (cargo runs a binary's tests in parallel):
/// each starts JVMs and loads the machine, and a second one alongside would only measure
/// the contention.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn gateway_config(topic: &str) -> String {
    // Nothing but the topic and the source: the gateway's own Kafka defaults.
    format!(
        "[kafka]\ntopic = \"{topic}\"\n[[sources]]\nid = \"{SOURCE}\"\nkind = \"buildkite\"\nsecrets = [\"{BK_SECRET}\"]\n"
    )
}

/// The load's requests go to the gateway's one source.
fn target(url: &str) -> Target<'_> {
    Target {
        url,
        source: SOURCE,
        secret: BK_SECRET,
    }
}

/// Every answer is a 202 with an id, or a 503 `broker_unavailable` with `Retry-After`.
fn assert_only_202_or_503(answers: &[Answer]) {
    for answer in answers {
        match answer.status {
            202 => assert_eq!(answer.id, answer.expected, "a 202 with another id"),
            503 => {
                assert!(answer.retry_after, "a 503 without Retry-After: {answer:?}");
                assert_eq!(answer.error, "broker_unavailable", "{answer:?}");
            }
            _ => panic!("an answer other than 202 or 503: {answer:?}"),
        }
    }
}

/// Every request answered 202 is on the webhook topic (by `ce_id`), and nothing the load
/// did not send. A record is there twice at most, and only in a run where some record's
/// ack timed out (a 503): librdkafka's idempotent producer then bumps its epoch, and a
/// batch in flight to another partition whose first send was persisted is sent again
/// under the new epoch (confluentinc/librdkafka#4953). The processor drops the repeat by
/// its `ce_id` (rules/tests/properties.rs), so the incident events still equal a clean
/// run's. Returns the records read, how many refused (503) requests landed anyway, and
/// how many event ids are on the topic twice.
fn assert_every_202_on_the_topic(
    broker: &Broker,
    topic: &str,
    answers: &[Answer],
) -> (Vec<OwnedMessage>, usize, usize) {
    let records = broker.read_all(topic).expect("reading the webhook topic");
    let mut on_topic: HashMap<String, usize> = HashMap::new();
    for record in &records {
        let id = headers_of(record).get("ce_id").cloned().unwrap_or_default();
        *on_topic.entry(id).or_default() += 1;
    }
    let missing: Vec<&str> = answers
        .iter()
        .filter(|a| a.status == 202 && !on_topic.contains_key(&a.id))
        .map(|a| a.id.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "{} request(s) answered 202 are not on {topic}, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let repeated: Vec<_> = on_topic.iter().filter(|(_, n)| **n > 1).collect();
    let timed_out = answers.iter().filter(|a| a.status == 503).count();
    assert!(
        repeated.is_empty() || timed_out > 0,
        "{} event id(s) are on {topic} more than once in a run where no ack timed out \
         (the idempotent producer repeats only after an epoch bump), e.g. {:?}",
        repeated.len(),
        repeated.first()
    );
    assert!(
        repeated.iter().all(|(_, n)| **n == 2),
        "an event id is on {topic} more than twice: {:?}",
        repeated.iter().max_by_key(|(_, n)| **n)
    );
    let sent: HashSet<&str> = answers.iter().map(|a| a.expected.as_str()).collect();
    let unknown: Vec<&String> = on_topic
        .keys()
        .filter(|id| !sent.contains(id.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "{} record(s) on {topic} that no request of the load sent, e.g. {:?}",
        unknown.len(),
        unknown.first()
    );
    let refused_but_stored = answers
        .iter()
        .filter(|a| a.status == 503 && on_topic.contains_key(&a.expected))
        .count();
    (records, refused_but_stored, repeated.len())
}

/// Waits until the gateway's `/readyz` answers `status`.
async fn wait_readyz(gateway: &Gateway, status: u16, what: &str) {
    wait_until(what, Duration::from_secs(60), async || {
        Ok((gateway.readyz().await == status).then_some(()))
    })
    .await
    .unwrap();
}

/// The node leading the most partitions of a layout.
fn busiest_leader(layout: &[PartitionLayout]) -> i32 {
    let mut led: BTreeMap<i32, usize> = BTreeMap::new();
    for partition in layout.iter().filter(|p| p.leader >= 0) {
        *led.entry(partition.leader).or_default() += 1;
    }
    led.into_iter()
        .max_by_key(|(node, count)| (*count, -node))
        .map(|(node, _)| node)
        .expect("a partition with a leader")
}

/// What a log says about the failures injected, for the test's output: how many
/// warnings and errors librdkafka logged (connection errors, expected here), and the
/// first `max` other warnings, errors and partition assignment changes.
fn notable(log: &str, max: usize) -> String {
    let is_client = |l: &str| l.contains("librdkafka") || l.contains("rdkafka::client");
    let warning = |l: &str| l.contains("WARN") || l.contains("ERROR");
    let client = log.lines().filter(|l| warning(l) && is_client(l)).count();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            (warning(l) && !is_client(l))
                || (!l.contains("incident event")
                    && (l.contains("assigned") || l.contains("revoked") || l.contains("lost")))
        })
        .collect();
    format!(
        "{client} librdkafka warning/error line(s); {} other line(s){}\n{}",
        lines.len(),
        if lines.len() > max {
            ", the first:"
        } else {
            ":"
        },
        lines[..lines.len().min(max)]
            .iter()
            .map(|l| l.chars().take(300).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    )
}

fn logs_on_panic(broker: &mut Broker, gateway: &Gateway, processor: &Processor) -> LogsOnPanic {
    let mut logs = vec![
        ("gateway".to_owned(), gateway.process.log.clone()),
        ("processor".to_owned(), processor.process.log.clone()),
    ];
    let nodes = &broker.cluster().expect("an owned broker").nodes;
    for node in nodes {
        logs.push((format!("kafka node {}", node.id), node.log_path()));
    }
    LogsOnPanic(logs)
}

/// Stops `processor` (which has folded the `records` on the webhook topic) and checks its
/// run against a processor that never saw a failure, run now on the deployment `reference`
/// over the same webhook topic ([`assert_same_run`]). Returns the clean run and the number
/// of repeated events.
async fn assert_same_as_a_clean_run(
    broker: &Broker,
    reference: &Topics,
    processor: &mut Processor,
    records: i64,
) -> (Run, usize) {
    let run = stop_and_collect(processor).expect("the processor's run");
    let dir = tempfile::tempdir().unwrap();
    let clean = reference_run(
        reference.processor(broker, dir.path()),
        records,
        Duration::from_secs(180),
    )
    .await
    .expect("a processor that never saw a failure folds every record");
    let repeats = assert_same_run(&clean, &run);
    (clean, repeats)
}

/// The run ends with the reference's incident events (a repeat only as an identical
/// record) and the same state. Returns the number of repeated events.
fn assert_same_run(reference: &Run, run: &Run) -> usize {
    assert!(
        reference.incidents.len() > 100,
        "the load makes incidents ({})",
        reference.incidents.len()
    );
    let repeats = assert_same_incidents(&reference.incidents, &run.incidents)
        .unwrap_or_else(|e| panic!("incident events differ from the clean run's: {e:#}"));
    // The decoded events say the same (a payload that is not an IncidentEvent fails here).
    for record in &run.incidents {
        let event =
            IncidentEvent::decode(record.payload().unwrap_or_default()).expect("an IncidentEvent");
        assert_eq!(headers_of(record)["ce_id"], event.event_id);
    }
    let reference_state: HashSet<&String> = reference.state.iter().collect();
    let state: HashSet<&String> = run.state.iter().collect();
    let lost: Vec<_> = reference_state.difference(&state).collect();
    let extra: Vec<_> = state.difference(&reference_state).collect();
    assert!(
        lost.is_empty() && extra.is_empty() && reference.state.len() == run.state.len(),
        "the final state differs from the clean run's: {} line(s) only in the clean run \
         (e.g. {:?}), {} only in this one (e.g. {:?})",
        lost.len(),
        lost.first(),
        extra.len(),
        extra.first()
    );
    repeats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_under_load_loses_no_accepted_request() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    const TOTAL: usize = 5_000;
    const CONNECTIONS: usize = 32;
    const PARTITIONS: i32 = 3;
    let started = Instant::now();
    let mut broker = Broker::own().expect("own Kafka");
    let t = Topics::create(&broker, PARTITIONS).await.unwrap();
    // The clean run's deployment, on the same webhook topic (created now: the broker is up).
    let reference = Topics::on_input(&broker, &t.webhooks, PARTITIONS)
        .await
        .unwrap();
    let gateway = Gateway::start(&gateway_config(&t.webhooks), &broker.bootstrap, &[])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The processor runs through the outage, with its default 120 s ack timeout.
    let mut processor = t.processor(&broker, dir.path()).start().await.unwrap();
    let _logs = logs_on_panic(&mut broker, &gateway, &processor);

    let load_started = Instant::now();
    let url = gateway.webhook_url(SOURCE);
    let load = Load::start(&target(&url), TOTAL, CONNECTIONS, TOTAL);
    load.wait("1,000 answers", Duration::from_secs(90), |l| {
        l.answered() >= 1_000
    })
    .await
    .unwrap();
    let marks = (
        LogMark::of(&processor.process),
        LogMark::of(&gateway.process),
        LogMark::now(&broker.node(1).unwrap().log_path()),
    );
    let kill_started = Instant::now();
    broker.node(1).unwrap().kill();
    let killed = Instant::now();

    // Down: /readyz says so, and requests sent now are refused (each after the 5 s ack
    // timeout). Two rounds of refusals on every connection before the broker comes back.
    wait_readyz(&gateway, 503, "/readyz to say 503 without a broker").await;
    load.wait(
        "503s for requests sent after the kill",
        Duration::from_secs(90),
        |l| l.count(|a| a.sent >= killed && a.status == 503) >= 2 * CONNECTIONS,
    )
    .await
    .unwrap();
    let restart_started = Instant::now();
    tokio::task::block_in_place(|| broker.restart_node(1))
        .unwrap_or_else(|e| panic!("restarting the broker: {e:#}\n{}", broker.logs()));
    let restarted = Instant::now();
    wait_readyz(&gateway, 200, "/readyz to say ready after the restart").await;
    let answers = load.finish().await;
    let load_done = Instant::now();

    assert_eq!(answers.len(), TOTAL, "every request was answered");
    assert_only_202_or_503(&answers);
    let before_kill: Vec<_> = answers
        .iter()
        .filter(|a| a.received < kill_started)
        .collect();
    assert!(
        before_kill.iter().all(|a| a.status == 202),
        "a refusal before the broker was killed: {:?}",
        statuses(&before_kill.into_iter().cloned().collect::<Vec<_>>())
    );
    // While down: nothing sent after the kill and answered before the restart began is a
    // 2xx. Requests in flight at the kill may still get a 202 (the broker acked them just
    // before it died): those must be on the topic like every other 202 (checked below).
    let while_down: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.sent >= killed && a.received <= restart_started)
        .collect();
    let accepted_while_down: Vec<_> = while_down.iter().filter(|a| a.status != 503).collect();
    assert!(
        accepted_while_down.is_empty(),
        "{} request(s) sent while the broker was down were not refused, e.g. {:?}",
        accepted_while_down.len(),
        accepted_while_down.first()
    );
    let in_flight_202 = answers
        .iter()
        .filter(|a| a.status == 202 && a.sent < killed && a.received >= kill_started)
        .count();
    let accepted_after = answers
        .iter()
        .filter(|a| a.status == 202 && a.sent >= restarted)
        .count();
    assert!(
        accepted_after > 0,
        "no 202 after the restart: {:?}",
        statuses(&answers)
    );
    let first_202_after = answers
        .iter()
        .filter(|a| a.status == 202 && a.sent >= restarted)
        .map(|a| a.received)
        .min()
        .expect("a 202 after the restart");
    let tail = &answers[answers.len() - 100..];
    assert!(
        tail.iter().all(|a| a.status == 202),
        "202s did not stay back: the last 100 answers are {:?}",
        statuses(tail)
    );
    let (records, refused_but_stored, on_topic_twice) =
        assert_every_202_on_the_topic(&broker, &t.webhooks, &answers);

    // The processor lived through it (120 s ack timeout against an outage of seconds)
    // and folds everything on the topic.
    assert!(
        processor.process.exited().is_none(),
        "the processor died with the broker:\n{}",
        processor.process.output_tail()
    );
    let total_records = broker.record_count(&t.webhooks).unwrap();
    assert_eq!(total_records, records.len() as i64);
    processor
        .wait_committed(total_records, Duration::from_secs(180))
        .await
        .unwrap();
    let caught_up = Instant::now();
    let processor_log = marks.0.since();
    let (clean, repeats) =
        assert_same_as_a_clean_run(&broker, &reference, &mut processor, total_records).await;

    let (median_503, max_503) = latency(&answers, 503);
    eprintln!(
        "broker kill/restart: {TOTAL} requests over {CONNECTIONS} connections ({:.0}/s \
         before the kill): {:?} \
         (503s answered in {median_503:.1} s median, {max_503:.1} s at most); \
         {} answered 503 while down; {in_flight_202} 202(s) in flight at the kill, \
         {refused_but_stored} refused request(s) on the topic anyway, {on_topic_twice} record(s) \
         there twice; {accepted_after} 202s \
         sent after the restart, the first {:.1} s after it; broker down {:.1} s (kill to \
         restart), restart took {:.1} s; the processor folded everything {:.1} s after the \
         load ended; {} webhook records, {} incident events, {} state entries, {repeats} \
         repeated event(s); load {:.1} s, test {:.1} s",
        answers.iter().filter(|a| a.received < kill_started).count() as f64
            / (kill_started - load_started).as_secs_f64(),
        statuses(&answers),
        while_down.len(),
        (first_202_after - restarted).as_secs_f64(),
        (restart_started - killed).as_secs_f64(),
        (restarted - restart_started).as_secs_f64(),
        (caught_up - load_done).as_secs_f64(),
        records.len(),
        clean.incidents.len(),
        clean.state.len(),
        (load_done - started).as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    eprintln!("processor: {}", notable(&processor_log, 20));
    eprintln!("gateway: {}", notable(&marks.1.since(), 20));
    eprintln!("kafka: {}", notable(&marks.2.since(), 30));
}

/// Waits until every partition of `topics` has a leader that is not `dead` and all of
/// `in_sync` nodes in its ISR.
async fn wait_layout(
    broker: &Broker,
    topics: &[&str],
    dead: Option<i32>,
    in_sync: usize,
    what: &str,
) {
    let settled = || {
        for topic in topics {
            let layout = broker.partitions(topic).ok()?;
            let settled = layout
                .iter()
                .all(|p| p.leader >= 0 && Some(p.leader) != dead && p.isr.len() >= in_sync);
            if !settled || layout.is_empty() {
                return None;
            }
        }
        Some(())
    };
    // Metadata requests block: in place, so that the load goes on meanwhile.
    wait_until(what, Duration::from_secs(120), async || {
        Ok(tokio::task::block_in_place(settled))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_on_three_brokers_loses_no_accepted_request() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    const TOTAL: usize = 20_000;
    const CONNECTIONS: usize = 24;
    const PARTITIONS: i32 = 6;
    let started = Instant::now();
    let mut broker = Broker::own_cluster(3).expect("own three-node Kafka");
    let t = Topics::create(&broker, PARTITIONS).await.unwrap();
    let reference = Topics::on_input(&broker, &t.webhooks, PARTITIONS)
        .await
        .unwrap();
    let changelog = t.changelog();
    let ours = [
        t.webhooks.as_str(),
        t.incidents.as_str(),
        changelog.as_str(),
    ];
    // The cluster's defaults: three replicas, two of them needed for a write.
    for topic in ours {
        let layout = broker.partitions(topic).unwrap();
        assert_eq!(layout.len(), PARTITIONS as usize, "{topic}");
        for p in &layout {
            assert_eq!(
                p.replicas.len(),
                3,
                "{topic} [{}] replicas {:?}",
                p.partition,
                p.replicas
            );
        }
        let configs = broker
            .admin()
            .unwrap()
            .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
            .await
            .unwrap();
        let config = configs[0].as_ref().expect("DescribeConfigs");
        let min_isr = config
            .get("min.insync.replicas")
            .and_then(|e| e.value.clone());
        assert_eq!(min_isr.as_deref(), Some("2"), "{topic}");
    }
    let gateway = Gateway::start(&gateway_config(&t.webhooks), &broker.bootstrap, &[])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut processor = t.processor(&broker, dir.path()).start().await.unwrap();
    let _logs = logs_on_panic(&mut broker, &gateway, &processor);

    // Released in steps, so each kill happens with requests still to come.
    let load_started = Instant::now();
    let url = gateway.webhook_url(SOURCE);
    let load = Load::start(&target(&url), TOTAL, CONNECTIONS, 8_000);
    load.wait("4,000 answers", Duration::from_secs(120), |l| {
        l.answered() >= 4_000
    })
    .await
    .unwrap();
    let webhook_layout = broker.partitions(&t.webhooks).unwrap();
    let first = busiest_leader(&webhook_layout);
    let marks = (
        LogMark::of(&processor.process),
        LogMark::of(&gateway.process),
        (1..=3)
            .map(|id| LogMark::now(&broker.node(id).unwrap().log_path()))
            .collect::<Vec<_>>(),
    );
    let led_by_first: Vec<i32> = webhook_layout
        .iter()
        .filter(|p| p.leader == first)
        .map(|p| p.partition)
        .collect();
    broker.node(first as u32).unwrap().kill();
    let killed_first = Instant::now();
    // Failover: new leaders for its partitions, and requests sent since then accepted.
    wait_layout(
        &broker,
        &ours,
        Some(first),
        2,
        "leaders other than the killed node",
    )
    .await;
    let failed_over = Instant::now();
    load.wait(
        "500 202s for requests sent after the first kill",
        Duration::from_secs(120),
        |l| l.count(|a| a.sent >= failed_over && a.status == 202) >= 500,
    )
    .await
    .unwrap();
    load.release(12_000);
    tokio::task::block_in_place(|| broker.restart_node(first as u32))
        .unwrap_or_else(|e| panic!("restarting node {first}: {e:#}\n{}", broker.logs()));
    // Back in sync everywhere (and the group's offsets), so that two of three stay in
    // sync when the next one goes.
    let mut in_sync = ours.to_vec();
    in_sync.push("__consumer_offsets");
    wait_layout(
        &broker,
        &in_sync,
        None,
        3,
        "the restarted node back in every ISR",
    )
    .await;
    let resynced = Instant::now();

    // The second kill, mid-stream: the load is flowing again and the processor is
    // writing incidents. It hits the node leading most incident-topic partitions.
    load.release(TOTAL);
    load.wait("1,000 more answers", Duration::from_secs(120), |l| {
        l.count(|a| a.sent >= resynced) >= 1_000
    })
    .await
    .unwrap();
    let incident_layout = broker.partitions(&t.incidents).unwrap();
    let second = busiest_leader(&incident_layout);
    let incidents_before = broker.record_count(&t.incidents).unwrap();
    let folded_before = processor
        .metric_sum("hookfold_processor_next_offset")
        .await
        .unwrap();
    let written_before = broker.record_count(&t.webhooks).unwrap();
    let webhooks_led_by_second = broker
        .partitions(&t.webhooks)
        .unwrap()
        .iter()
        .filter(|p| p.leader == second)
        .count();
    broker.node(second as u32).unwrap().kill();
    let killed_second = Instant::now();
    wait_layout(
        &broker,
        &ours,
        Some(second),
        2,
        "incident leaders other than the second killed node",
    )
    .await;
    let failed_over_second = Instant::now();
    let answers = load.finish().await;
    let load_done = Instant::now();

    assert_eq!(answers.len(), TOTAL, "every request was answered");
    assert_only_202_or_503(&answers);
    let tail = &answers[answers.len() - 100..];
    assert!(
        tail.iter().all(|a| a.status == 202),
        "202s did not come back after the failovers: the last 100 answers are {:?}",
        statuses(tail)
    );
    // The processor ends its work on two of three nodes.
    assert!(
        processor.process.exited().is_none(),
        "the processor died in a failover:\n{}",
        processor.process.output_tail()
    );
    let total_records = broker.record_count(&t.webhooks).unwrap();
    processor
        .wait_committed(total_records, Duration::from_secs(180))
        .await
        .unwrap();
    let incidents_after = broker.record_count(&t.incidents).unwrap();
    assert!(
        incidents_after > incidents_before,
        "no incident written after the incident leader was killed"
    );
    // The second node back before reading the topics: the harness's reader
    // (topics::read_all) fails on the transport errors a dead node in the bootstrap list
    // causes.
    tokio::task::block_in_place(|| broker.restart_node(second as u32))
        .unwrap_or_else(|e| panic!("restarting node {second}: {e:#}"));
    let (records, refused_but_stored, on_topic_twice) =
        assert_every_202_on_the_topic(&broker, &t.webhooks, &answers);
    assert_eq!(total_records, records.len() as i64);
    let processor_log = marks.0.since();
    let (clean, repeats) =
        assert_same_as_a_clean_run(&broker, &reference, &mut processor, total_records).await;

    let refused_first = answers
        .iter()
        .filter(|a| a.status == 503 && a.sent < killed_second)
        .count();
    let (median_503, max_503) = latency(&answers, 503);
    let slowest_202_second = answers
        .iter()
        .filter(|a| a.status == 202 && a.sent >= killed_second && a.sent <= failed_over_second)
        .map(|a| (a.received - a.sent).as_secs_f64())
        .fold(0.0, f64::max);
    let rate = answers.iter().filter(|a| a.received < killed_first).count() as f64
        / (killed_first - load_started).as_secs_f64();
    eprintln!(
        "leader failover: {TOTAL} requests over {CONNECTIONS} connections ({rate:.0}/s \
         before the first kill): {:?} ({refused_first} refusals around the first kill, the \
         rest around the second; 503s answered in {median_503:.1} s median, {max_503:.1} s at \
         most); {refused_but_stored} refused request(s) on the topic anyway, {on_topic_twice} \
         record(s) there twice; node {first} led \
         partitions {led_by_first:?} of the webhook topic, failover seen {:.1} s after its \
         kill; node {second} led {} incident and {webhooks_led_by_second} webhook \
         partition(s), killed with the processor at {folded_before} of {written_before} \
         records written, failover seen {:.1} s after, slowest 202 sent meanwhile {:.1} s; \
         {} webhook records, {} incident events, {} state entries, {repeats} repeated \
         event(s); load {:.1} s, test {:.1} s",
        statuses(&answers),
        (failed_over - killed_first).as_secs_f64(),
        incident_layout
            .iter()
            .filter(|p| p.leader == second)
            .count(),
        (failed_over_second - killed_second).as_secs_f64(),
        slowest_202_second,
        records.len(),
        clean.incidents.len(),
        clean.state.len(),
        (load_done - started).as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    eprintln!("processor: {}", notable(&processor_log, 20));
    eprintln!("gateway: {}", notable(&marks.1.since(), 20));
    for node in [first, second] {
        let log = marks.2[node as usize - 1].since();
        eprintln!("kafka node {node}: {}", notable(&log, 20));
    }
}

/// What kcat printed of one record: key, headers, payload size.
type KcatRecord = (String, HashMap<String, String>, usize);

/// kcat's `%h`: `name=value` pairs separated by commas.
fn kcat_headers(text: &str) -> HashMap<String, String> {
    text.split(',')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn run_tool(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    // `timeout`: a tool that hangs fails the test instead of hanging it.
    let mut child = Command::new("timeout")
        .arg("60")
        .arg(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("running {program} (Debian's package is in scripts/install-tools.sh)")
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "{program} {args:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_reads_the_incident_topic_with_keys_and_headers() {
    let broker = Broker::start().unwrap();
    let t = Topics::create(&broker, 2).await.unwrap();
    let story = mixed_story(80, 11);
    produce(&broker.bootstrap, &t.webhooks, &story)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut processor = t.processor(&broker, dir.path()).start().await.unwrap();
    processor
        .wait_committed(story.len() as i64, Duration::from_secs(60))
        .await
        .unwrap();
    // Committed, so every incident is acked: what our consumer reads is the whole topic.
    let records = broker.read_all(&t.incidents).unwrap();
    assert!(
        records.len() >= 5,
        "the story makes incidents ({})",
        records.len()
    );

    let output = tokio::task::block_in_place(|| {
        run_tool(
            "kcat",
            &[
                "-b",
                &broker.bootstrap,
                "-C",
                "-t",
                &t.incidents,
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%p\t%o\t%k\t%h\t%S\n",
            ],
            None,
        )
    })
    .unwrap();
    let mut seen: HashMap<(i32, i64), KcatRecord> = HashMap::new();
    for line in output.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [partition, offset, key, headers, size] = fields[..] else {
            panic!("a kcat line that is not partition, offset, key, headers, size: {line:?}");
        };
        seen.insert(
            (partition.parse().unwrap(), offset.parse().unwrap()),
            (key.to_owned(), kcat_headers(headers), size.parse().unwrap()),
        );
    }
    assert_eq!(
        seen.len(),
        records.len(),
        "kcat printed every record once:\n{output}"
    );
    for record in &records {
        let (key, headers, size) = seen
            .get(&(record.partition(), record.offset()))
            .unwrap_or_else(|| {
                panic!(
                    "kcat did not print [{}] @{}",
                    record.partition(),
                    record.offset()
                )
            });
        let event = IncidentEvent::decode(record.payload().unwrap_or_default()).unwrap();
        assert_eq!(key, &event.dedup_key, "kcat's key is the dedup_key");
        assert_eq!(*size, record.payload().map_or(0, <[u8]>::len));
        let ours = headers_of(record);
        assert_eq!(
            headers, &ours,
            "kcat's headers are the ones our consumer reads"
        );
        assert_eq!(headers["ce_id"], event.event_id);
        assert!(
            headers["ce_type"].starts_with("hookfold.incident."),
            "{headers:?}"
        );
    }

    // And protoc decodes a payload with nothing but the published schema.
    let proto = hookfold_tests::manifest_dir().join("../proto");
    let proto = proto.to_str().unwrap();
    let record = &records[0];
    let event = IncidentEvent::decode(record.payload().unwrap_or_default()).unwrap();
    let mut args = vec!["--decode=hookfold.v1.IncidentEvent", "--proto_path", proto];
    // The well-known types (libprotobuf-dev), where protoc does not find them itself.
    if Path::new("/usr/include/google/protobuf/timestamp.proto").exists() {
        args.extend(["--proto_path", "/usr/include"]);
    }
    args.push("hookfold/v1/incident.proto");
    let decoded = tokio::task::block_in_place(|| {
        run_tool("protoc", &args, Some(record.payload().unwrap_or_default()))
    })
    .unwrap();
    assert!(
        decoded.contains(&format!("event_id: \"{}\"", event.event_id))
            && decoded.contains(&format!("dedup_key: \"{}\"", event.dedup_key)),
        "protoc --decode:\n{decoded}"
    );
}
