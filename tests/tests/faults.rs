//! Fault injection with librdkafka's mock cluster (`rdkafka::mocking::MockCluster`, three
//! brokers in this test process): the real `hookfold-processor` binary runs against it
//! while Produce and Fetch requests fail with retriable errors, group offset commits fail,
//! every partition leader moves, a broker (leader of a partition of every topic, and the
//! group coordinator) goes down and comes back, and the coordinator forces a rebalance
//! on slow round trips. The processor must keep going and lose nothing. On a produce
//! error that cannot be retried it must stop with a clear message, without committing
//! the batch it could not deliver.
//!
//! What is checked is what a user sees: the processor stays alive, every input record is
//! folded (the offsets it commits with its state reach the input's end), the incident
//! events (ids and payloads) and the final state equal those of a fault-free reference
//! run over the same records on the same cluster, and a repeated event is byte-identical.
//!
//! The mock cluster does not enforce transactional or offset semantics (it keeps records
//! in memory; its group offsets are plain bookkeeping), so this proves nothing about
//! delivery beyond what the processor's own stored offsets give: it shows that transient
//! broker faults do not make the processor die, hang, skip or re-fold records, and that
//! a refused batch is not committed. The effectively-once guarantee itself is tested
//! against a real broker (tests/processor.rs).
//!
//! Each fault is armed while the processor has work to do (a fresh chunk of input is
//! written first), and the test waits for the processor's own log (librdkafka debug
//! lines) to show that the fault reached it before moving on, so a fault that silently
//! missed the processor fails the test instead of making it vacuous. Request errors hit
//! the next request of their kind from any client of the cluster, so none is armed while
//! the test itself produces or reads.
//!
//! The binaries come from the target directory (or `TEST_BIN_DIR`): build them from this
//! tree (`cargo build --workspace --bins`) right before running.

use std::path::Path;
use std::time::{Duration, Instant};

use hookfold_tests::logs::{LogMark, has_line, lines_with};
use hookfold_tests::process::tail_of;
use hookfold_tests::records::{WebhookRecord, mixed_story, produce};
use hookfold_tests::{
    ProcessorSetup, Run, Signal, Topics, assert_same_incidents, reference_run, stop_and_collect,
    unique_name, wait_until, watermarks,
};
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const BROKERS: i32 = 3;
const PARTITIONS: i32 = 3;
const STAGE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a broker stays down.
const OUTAGE: Duration = Duration::from_secs(3);

type Cluster = MockCluster<'static, DefaultProducerContext>;

/// One processor deployment on `input`: fresh incident, open-incident and changelog topics
/// on the mock cluster, and a fresh group.
fn deployment(cluster: &Cluster, input: &str) -> Topics {
    let t = Topics::named(input, PARTITIONS);
    for topic in [&t.incidents, &t.open_incidents(), &t.changelog()] {
        create_topic(cluster, topic);
    }
    t
}

/// A processor of deployment `t` on the mock cluster, keeping its files under `dir`:
/// ticks at the processor's default interval, small batches.
fn setup(cluster: &Cluster, t: &Topics, dir: &Path) -> ProcessorSetup {
    t.processor_on(&cluster.bootstrap_servers(), dir)
        .with_ticks()
        // The mock coordinator holds a rejoining member for the session timeout less a
        // second (a real one completes the rebalance once every member has rejoined).
        .property("session.timeout.ms", "6000")
        .property("heartbeat.interval.ms", "500")
        .batch(25, "20ms")
}

/// A topic with every partition's leader known: partition p on broker p + 1.
fn create_topic(cluster: &Cluster, name: &str) {
    cluster.create_topic(name, PARTITIONS, BROKERS).unwrap();
    for partition in 0..PARTITIONS {
        cluster
            .partition_leader(name, partition, Some(partition % BROKERS + 1))
            .unwrap();
    }
}

/// A processor over `input` to `total` records with no fault, for reference.
async fn fault_free_run(cluster: &Cluster, input: &str, total: i64) -> Run {
    let t = deployment(cluster, input);
    let dir = tempfile::tempdir().unwrap();
    let run = reference_run(setup(cluster, &t, dir.path()), total, STAGE_TIMEOUT)
        .await
        .unwrap();
    assert_kept_everything(cluster, &t.incidents);
    run
}

/// The mock cluster drops a partition's oldest records beyond 5 MB, which would look like
/// a loss: every partition of `topic` still starts at offset 0.
fn assert_kept_everything(cluster: &Cluster, topic: &str) {
    let bootstrap = cluster.bootstrap_servers();
    for (partition, (low, _)) in watermarks(&bootstrap, topic).unwrap().iter().enumerate() {
        assert_eq!(
            *low, 0,
            "the mock cluster dropped records of {topic} [{partition}]: make the story smaller"
        );
    }
}

/// The incident events of `run` are those of `reference`: the same event ids, each with
/// the same payload (a repeat only as an identical record).
fn assert_same_outputs(reference: &Run, run: &Run, what: &str) {
    assert!(
        reference.incidents.len() > 100,
        "the story makes incidents ({})",
        reference.incidents.len()
    );
    assert_same_incidents(&reference.incidents, &run.incidents)
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
}

/// librdkafka's text for a broker error code, as it logs it ("Broker: Not coordinator").
fn error_text(error: RDKafkaRespErr) -> String {
    // `Display` is "NotCoordinator (Broker: Not coordinator)".
    let display = rdkafka::error::RDKafkaErrorCode::from(error).to_string();
    display
        .split_once(" (")
        .and_then(|(_, text)| text.strip_suffix(')'))
        .unwrap_or(&display)
        .to_owned()
}

/// Prints a few log lines per needle: what the processor went through, for a person
/// reading the test output.
fn show(log: &str, needles: &[&str]) {
    for needle in needles {
        for line in lines_with(log, needle).iter().take(3) {
            eprintln!("    {}", line.chars().take(240).collect::<String>());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_broker_faults_lose_nothing_and_change_nothing() {
    const CHUNK: usize = 500;
    const CHUNKS: usize = 6;
    let cluster = MockCluster::new(BROKERS).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let input = unique_name("hookfold.webhooks");
    create_topic(&cluster, &input);
    let story = mixed_story(CHUNK * CHUNKS, 0xfa17);
    let chunks: Vec<&[WebhookRecord]> = story.chunks(CHUNK).collect();

    let faulty = deployment(&cluster, &input);
    // Partition 0 of everything, and the group's coordinator, live on broker 1.
    cluster
        .coordinator(MockCoordinator::Group(faulty.group.clone()), 1)
        .unwrap();
    produce(&bootstrap, &input, chunks[0]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut processor = setup(&cluster, &faulty, dir.path())
        // librdkafka's debug lines are how the test sees a fault reach the processor.
        .property("debug", "msg,cgrp,broker,topic")
        .env("RUST_LOG", "info,librdkafka=debug")
        .env("NO_COLOR", "1")
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    let mut done = CHUNK as i64;
    processor.wait_committed(done, STAGE_TIMEOUT).await.unwrap();
    let stage = |name: &str| eprintln!("[{:>6.1?}] {name}", started.elapsed());

    // 1. Produce and fetch requests fail with retriable errors. The processor is paused
    //    while the chunk is written, so that it has work when the errors are armed (a
    //    request error hits the next request of its kind from any client).
    stage("produce and fetch errors");
    processor.process.signal(Signal::Stop).unwrap();
    produce(&bootstrap, &input, chunks[1]).await.unwrap();
    let watch = LogMark::of(&processor.process);
    let produce_errors = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
    ];
    cluster.request_errors(RDKafkaApiKey::Produce, &produce_errors);
    let fetch_errors = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
    ];
    cluster.request_errors(RDKafkaApiKey::Fetch, &fetch_errors);
    processor.process.signal(Signal::Cont).unwrap();
    for error in fetch_errors {
        let text = error_text(error);
        watch
            .wait(
                &mut processor.process,
                &format!("a fetch request failing with {text}"),
                STAGE_TIMEOUT,
                |log| has_line(log, &["FETCH", &format!("error \"{text}\"")]),
            )
            .await
            .unwrap();
    }
    for error in produce_errors {
        let text = error_text(error);
        watch
            .wait(
                &mut processor.process,
                &format!("a produce request failing with {text}"),
                STAGE_TIMEOUT,
                |log| has_line(log, &["encountered error", &text]),
            )
            .await
            .unwrap();
    }
    done += CHUNK as i64;
    processor.wait_committed(done, STAGE_TIMEOUT).await.unwrap();
    show(&watch.since(), &["encountered error", "Fetch from broker"]);

    // 2. Group offset commits fail (the processor commits them every few seconds).
    stage("offset commit errors");
    produce(&bootstrap, &input, chunks[2]).await.unwrap();
    let watch = LogMark::of(&processor.process);
    let commit_errors = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
    ];
    cluster.request_errors(RDKafkaApiKey::OffsetCommit, &commit_errors);
    for error in commit_errors {
        let text = error_text(error);
        watch
            .wait(
                &mut processor.process,
                &format!("an offset commit failing with {text}"),
                STAGE_TIMEOUT,
                |log| has_line(log, &["OffsetCommit", &text]),
            )
            .await
            .unwrap();
    }
    done += CHUNK as i64;
    processor.wait_committed(done, STAGE_TIMEOUT).await.unwrap();
    show(&watch.since(), &["OffsetCommitRequest failed"]);

    // 3. Every partition's leader moves (input, output and changelog).
    stage("leader moves");
    produce(&bootstrap, &input, chunks[3]).await.unwrap();
    let watch = LogMark::of(&processor.process);
    for topic in [&input, &faulty.incidents, &faulty.changelog()] {
        for partition in 0..PARTITIONS {
            cluster
                .partition_leader(topic, partition, Some((partition + 1) % BROKERS + 1))
                .unwrap();
        }
    }
    for (client, what) in [("fetch", "reading from"), ("produce", "writing to")] {
        watch
            .wait(
                &mut processor.process,
                &format!("the processor {what} a former leader"),
                STAGE_TIMEOUT,
                |log| {
                    has_line(
                        log,
                        &[&format!("unavailable: {client}: Broker: Not leader")],
                    )
                },
            )
            .await
            .unwrap();
    }
    done += CHUNK as i64;
    processor.wait_committed(done, STAGE_TIMEOUT).await.unwrap();
    show(&watch.since(), &["broker unavailable", "migrating from"]);

    // 4. A broker goes down (leader of partition 2 of every topic, and the group
    //    coordinator) and comes back.
    stage("broker down");
    produce(&bootstrap, &input, chunks[4]).await.unwrap();
    let watch = LogMark::of(&processor.process);
    let down = 1;
    cluster.broker_down(down).unwrap();
    let down_since = Instant::now();
    // The processor loses its connections to broker 1: librdkafka logs the disconnect or
    // a refused reconnect, naming the connection by address and id or as the group
    // coordinator. Which of these it logs depends on timing (a metadata refresh that no
    // longer lists broker 1 may come before any reconnect), so any of them will do.
    let broker_one = format!(
        "{}/{down}",
        bootstrap
            .split(',')
            .next()
            .expect("the mock cluster's first broker")
    );
    watch
        .wait(
            &mut processor.process,
            "a lost connection to broker 1",
            STAGE_TIMEOUT,
            |log| {
                log.lines().any(|line| {
                    (line.contains(&broker_one) || line.contains("GroupCoordinator"))
                        && ["Disconnected", "Connection refused", "Connection reset"]
                            .iter()
                            .any(|failure| line.contains(failure))
                })
            },
        )
        .await
        .unwrap();
    // The outage has a length of its own (librdkafka stops reconnecting once the other
    // brokers' metadata no longer lists broker 1, so there is nothing more to wait for);
    // the processor must live through it.
    wait_until("the outage to last its length", 2 * OUTAGE, async || {
        processor.process.fail_if_exited()?;
        Ok((down_since.elapsed() >= OUTAGE).then_some(()))
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "while broker 1 was down: {e:#}:\n{}",
            tail_of(&watch.since(), 60)
        )
    });
    let at_outage = processor
        .metric_sum("hookfold_processor_next_offset")
        .await
        .unwrap();
    cluster.broker_up(down).unwrap();
    stage(&format!("broker up (committed {at_outage} while down)"));
    done += CHUNK as i64;
    processor.wait_committed(done, STAGE_TIMEOUT).await.unwrap();
    show(
        &watch.since(),
        &["Disconnected", "Connection refused", "consumer error"],
    );

    // 5. The coordinator forces a rebalance, on slow round trips.
    stage("forced rebalance, slow brokers");
    produce(&bootstrap, &input, chunks[5]).await.unwrap();
    let watch = LogMark::of(&processor.process);
    cluster
        .broker_round_trip_time(-1, Duration::from_millis(50))
        .unwrap();
    cluster.request_errors(
        RDKafkaApiKey::Heartbeat,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS],
    );
    watch
        .wait(
            &mut processor.process,
            "the group to rebalance (rejoin and sync) after the heartbeat error",
            STAGE_TIMEOUT,
            |log| {
                // Eager assignment revokes and reassigns every partition; cooperative
                // assignment keeps a lone member's partitions, so the proof is the rejoin.
                let rebalance = error_text(RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS);
                log.lines()
                    .position(|l| l.contains("heartbeat error response") && l.contains(&rebalance))
                    .is_some_and(|at| {
                        log.lines()
                            .skip(at)
                            .any(|l| l.contains("SyncGroup response"))
                    })
            },
        )
        .await
        .unwrap();
    done += CHUNK as i64;
    processor.wait_committed(done, STAGE_TIMEOUT).await.unwrap();
    cluster.broker_round_trip_time(-1, Duration::ZERO).unwrap();
    show(
        &watch.since(),
        &[
            "heartbeat error",
            "JoinGroup response",
            "partition revoked",
            "partition assigned",
        ],
    );
    stage("all folded");

    assert!(
        processor.process.exited().is_none(),
        "the processor stays up"
    );
    let faulty_run = stop_and_collect(&mut processor).unwrap();
    assert_kept_everything(&cluster, &faulty.incidents);
    for api in [
        RDKafkaApiKey::Produce,
        RDKafkaApiKey::Fetch,
        RDKafkaApiKey::OffsetCommit,
        RDKafkaApiKey::Heartbeat,
    ] {
        cluster.clear_request_errors(api);
    }

    let reference = fault_free_run(&cluster, &input, done).await;
    stage("reference run done");
    assert_same_outputs(&reference, &faulty_run, "under faults");
    assert_eq!(
        faulty_run.state, reference.state,
        "final state differs from the fault-free run's"
    );
    eprintln!(
        "reference: {} outputs; under faults: {} outputs ({} repeats)",
        reference.incidents.len(),
        faulty_run.incidents.len(),
        faulty_run.incidents.len() - reference.incidents.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_error_that_cannot_be_retried_stops_the_processor_without_committing() {
    const CHUNK: usize = 300;
    let cluster = MockCluster::new(BROKERS).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let input = unique_name("hookfold.webhooks");
    create_topic(&cluster, &input);
    let story = mixed_story(2 * CHUNK, 0xdead);
    let t = deployment(&cluster, &input);
    let dir = tempfile::tempdir().unwrap();
    produce(&bootstrap, &input, &story[..CHUNK]).await.unwrap();
    let mut processor = setup(&cluster, &t, dir.path()).start().await.unwrap();
    processor
        .wait_committed(CHUNK as i64, STAGE_TIMEOUT)
        .await
        .unwrap();
    processor.stop().unwrap();
    let committed_before = processor.state_dump().unwrap();

    // More input, and the next produce request is refused for good: librdkafka fails the
    // records at once (it does not retry an authorization error).
    produce(&bootstrap, &input, &story[CHUNK..]).await.unwrap();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let watch = LogMark::of(&processor.process);
    if let Err(e) = processor.restart().await {
        // It may fail its first batch before /metrics answers.
        assert!(processor.process.exited().is_some(), "{e:#}");
    }
    let status = hookfold_tests::wait_for(
        "the processor to exit on the refused batch",
        STAGE_TIMEOUT,
        || processor.process.exited(),
    )
    .unwrap();
    let log = watch.since();
    assert!(
        !status.success(),
        "exit status {status}:\n{}",
        tail_of(&log, 40)
    );
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("hookfold-processor:") && last.contains("Topic authorization failed"),
        "the last line names the problem: {last}\n{}",
        tail_of(&log, 40)
    );
    eprintln!("stopped with: {last}");
    assert_eq!(
        processor.state_dump().unwrap(),
        committed_before,
        "the batch whose outputs were refused must not be committed"
    );

    // Without the fault, a restart completes the work as if nothing had happened.
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    processor.restart().await.unwrap();
    processor
        .wait_committed(story.len() as i64, STAGE_TIMEOUT)
        .await
        .unwrap();
    let run = stop_and_collect(&mut processor).unwrap();
    assert_kept_everything(&cluster, &t.incidents);
    let reference = fault_free_run(&cluster, &input, story.len() as i64).await;
    assert_same_outputs(&reference, &run, "after the refused batch");
    assert_eq!(
        run.state, reference.state,
        "final state differs from the fault-free run's"
    );
}
