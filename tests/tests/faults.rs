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

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hookfold_tests::records::{WebhookRecord, mixed_story, produce};
use hookfold_tests::{Processor, headers_of, read_all, unique_name, watermarks};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const BROKERS: i32 = 3;
const PARTITIONS: i32 = 3;
const STAGE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a broker stays down.
const OUTAGE: Duration = Duration::from_secs(3);

type Cluster = MockCluster<'static, DefaultProducerContext>;

/// One processor deployment: its group (hence changelog) and output topic.
struct Deployment {
    input: String,
    output: String,
    group: String,
}

impl Deployment {
    fn new(cluster: &Cluster, input: &str) -> Self {
        let deployment = Self {
            input: input.to_owned(),
            output: unique_name("hookfold.incidents"),
            group: unique_name("hookfold-processor"),
        };
        create_topic(cluster, &deployment.output);
        create_topic(cluster, &format!("{}.open", deployment.output));
        create_topic(cluster, &format!("{}.state", deployment.group));
        deployment
    }

    fn config(&self, state_dir: &Path, properties: &str) -> String {
        format!(
            r#"
state_dir = "{}"
[kafka]
input_topic = "{}"
output_topic = "{}"
group_id = "{}"
[kafka.properties]
# The mock coordinator holds a rejoining member for the session timeout less a second
# (a real one completes the rebalance once every member has rejoined).
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
{properties}
[batch]
max_records = 25
max_wait = "20ms"
"#,
            state_dir.display(),
            self.input,
            self.output,
            self.group,
        )
    }
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

/// Runs a processor over `input` to `total` records with no fault, for reference:
/// returns its outputs and final state.
async fn reference_run(
    cluster: &Cluster,
    input: &str,
    total: i64,
) -> (Vec<OwnedMessage>, Vec<String>) {
    let deployment = Deployment::new(cluster, input);
    let dir = tempfile::tempdir().unwrap();
    let mut processor = Processor::start(
        &deployment.config(&dir.path().join("state"), ""),
        &cluster.bootstrap_servers(),
        dir.path(),
        &[],
    )
    .await
    .unwrap();
    processor
        .wait_committed(total, STAGE_TIMEOUT)
        .await
        .unwrap();
    stop_and_collect(cluster, &deployment, &mut processor)
}

fn stop_and_collect(
    cluster: &Cluster,
    deployment: &Deployment,
    processor: &mut Processor,
) -> (Vec<OwnedMessage>, Vec<String>) {
    let status = processor
        .process
        .terminate(Duration::from_secs(60))
        .unwrap();
    assert!(status.success(), "clean stop: {status}");
    (
        read_outputs(cluster, &deployment.output),
        processor.state_dump().unwrap(),
    )
}

/// Every record of an output topic; the mock cluster drops a partition's oldest records
/// beyond 5 MB, which would look like a loss, so that is checked first.
fn read_outputs(cluster: &Cluster, topic: &str) -> Vec<OwnedMessage> {
    let bootstrap = cluster.bootstrap_servers();
    for (partition, (low, _)) in watermarks(&bootstrap, topic).unwrap().iter().enumerate() {
        assert_eq!(
            *low, 0,
            "the mock cluster dropped records of {topic} [{partition}]: make the story smaller"
        );
    }
    read_all(&bootstrap, topic).unwrap()
}

/// Event id -> the distinct payloads seen with it.
fn payloads(records: &[OwnedMessage]) -> HashMap<String, HashSet<Vec<u8>>> {
    let mut map: HashMap<String, HashSet<Vec<u8>>> = HashMap::new();
    for record in records {
        let id = headers_of(record)["ce_id"].clone();
        map.entry(id)
            .or_default()
            .insert(record.payload().unwrap_or_default().to_vec());
    }
    map
}

/// The outputs of `run` are those of `reference`: the same event ids, each with the same
/// payload (a repeat only as an identical record).
fn assert_same_outputs(reference: &[OwnedMessage], run: &[OwnedMessage], what: &str) {
    let expected = payloads(reference);
    let actual = payloads(run);
    assert!(
        expected.len() > 100,
        "the story makes incidents ({})",
        expected.len()
    );
    assert_eq!(
        expected.len(),
        reference.len(),
        "the reference run emits each event once"
    );
    let expected_ids: HashSet<&String> = expected.keys().collect();
    let actual_ids: HashSet<&String> = actual.keys().collect();
    let missing: Vec<_> = expected_ids.difference(&actual_ids).collect();
    let extra: Vec<_> = actual_ids.difference(&expected_ids).collect();
    assert!(
        missing.is_empty(),
        "{what}: {} incident event(s) lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        extra.is_empty(),
        "{what}: {} event(s) the reference run does not emit, e.g. {:?}",
        extra.len(),
        &extra[..extra.len().min(5)]
    );
    for (id, bodies) in &actual {
        assert_eq!(
            bodies, &expected[id],
            "{what}: event {id} differs from the reference run's (or repeats with other content)"
        );
    }
}

/// Follows a processor's log from a point on, failing early if the process dies.
struct LogWatch {
    from: usize,
}

impl LogWatch {
    /// From the end of what the processor has logged so far.
    fn now(processor: &Processor) -> Self {
        Self {
            from: processor.process.output().len(),
        }
    }

    /// The processor's log since `self`.
    fn since(&self, processor: &Processor) -> String {
        let output = processor.process.output();
        output.get(self.from..).unwrap_or_default().to_owned()
    }

    /// Waits until `check` holds for the log since `self`.
    async fn wait(
        &self,
        processor: &mut Processor,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + STAGE_TIMEOUT;
        loop {
            if let Some(status) = processor.process.exited() {
                bail!(
                    "processor exited ({status}) while waiting for {what}:\n{}",
                    tail(&self.since(processor), 60)
                );
            }
            if check(&self.since(processor)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what}; the processor logged:\n{}",
                    tail(&self.since(processor), 60)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
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

/// Whether a line of `log` contains every one of `needles`.
fn has_line(log: &str, needles: &[&str]) -> bool {
    log.lines().any(|l| needles.iter().all(|n| l.contains(n)))
}

/// Lines of `log` mentioning `needle`.
fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
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

/// Sends a signal (`STOP`, `CONT`) to the processor.
fn signal(processor: &Processor, name: &str) {
    let pid = processor.process.pid().expect("the processor runs");
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
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

    let faulty = Deployment::new(&cluster, &input);
    // Partition 0 of everything, and the group's coordinator, live on broker 1.
    cluster
        .coordinator(MockCoordinator::Group(faulty.group.clone()), 1)
        .unwrap();
    produce(&bootstrap, &input, chunks[0]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut processor = Processor::start(
        &faulty.config(
            &dir.path().join("state"),
            // librdkafka's debug lines are how the test sees a fault reach the processor.
            r#""debug" = "msg,cgrp,broker,topic""#,
        ),
        &bootstrap,
        dir.path(),
        &[("RUST_LOG", "info,librdkafka=debug"), ("NO_COLOR", "1")],
    )
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
    signal(&processor, "STOP");
    produce(&bootstrap, &input, chunks[1]).await.unwrap();
    let watch = LogWatch::now(&processor);
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
    signal(&processor, "CONT");
    for error in fetch_errors {
        let text = error_text(error);
        watch
            .wait(
                &mut processor,
                &format!("a fetch request failing with {text}"),
                |log| has_line(log, &["FETCH", &format!("error \"{text}\"")]),
            )
            .await
            .unwrap();
    }
    for error in produce_errors {
        let text = error_text(error);
        watch
            .wait(
                &mut processor,
                &format!("a produce request failing with {text}"),
                |log| has_line(log, &["encountered error", &text]),
            )
            .await
            .unwrap();
    }
    done += CHUNK as i64;
    processor.wait_committed(done, STAGE_TIMEOUT).await.unwrap();
    show(
        &watch.since(&processor),
        &["encountered error", "Fetch from broker"],
    );

    // 2. Group offset commits fail (the processor commits them every few seconds).
    stage("offset commit errors");
    produce(&bootstrap, &input, chunks[2]).await.unwrap();
    let watch = LogWatch::now(&processor);
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
                &mut processor,
                &format!("an offset commit failing with {text}"),
                |log| has_line(log, &["OffsetCommit", &text]),
            )
            .await
            .unwrap();
    }
    done += CHUNK as i64;
    processor.wait_committed(done, STAGE_TIMEOUT).await.unwrap();
    show(&watch.since(&processor), &["OffsetCommitRequest failed"]);

    // 3. Every partition's leader moves (input, output and changelog).
    stage("leader moves");
    produce(&bootstrap, &input, chunks[3]).await.unwrap();
    let watch = LogWatch::now(&processor);
    for topic in [&input, &faulty.output, &format!("{}.state", faulty.group)] {
        for partition in 0..PARTITIONS {
            cluster
                .partition_leader(topic, partition, Some((partition + 1) % BROKERS + 1))
                .unwrap();
        }
    }
    for (client, what) in [("fetch", "reading from"), ("produce", "writing to")] {
        watch
            .wait(
                &mut processor,
                &format!("the processor {what} a former leader"),
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
    show(
        &watch.since(&processor),
        &["broker unavailable", "migrating from"],
    );

    // 4. A broker goes down (leader of partition 2 of every topic, and the group
    //    coordinator) and comes back.
    stage("broker down");
    produce(&bootstrap, &input, chunks[4]).await.unwrap();
    let watch = LogWatch::now(&processor);
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
        .wait(&mut processor, "a lost connection to broker 1", |log| {
            log.lines().any(|line| {
                (line.contains(&broker_one) || line.contains("GroupCoordinator"))
                    && ["Disconnected", "Connection refused", "Connection reset"]
                        .iter()
                        .any(|failure| line.contains(failure))
            })
        })
        .await
        .unwrap();
    // The outage has a length of its own (librdkafka stops reconnecting once the other
    // brokers' metadata no longer lists broker 1, so there is nothing more to wait for);
    // the processor must live through it.
    while down_since.elapsed() < OUTAGE {
        if let Some(status) = processor.process.exited() {
            panic!(
                "processor exited ({status}) while broker 1 was down:\n{}",
                tail(&watch.since(&processor), 60)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_outage = processor
        .metric_sum("hookfold_processor_next_offset")
        .await
        .unwrap();
    cluster.broker_up(down).unwrap();
    stage(&format!("broker up (committed {at_outage} while down)"));
    done += CHUNK as i64;
    processor.wait_committed(done, STAGE_TIMEOUT).await.unwrap();
    show(
        &watch.since(&processor),
        &["Disconnected", "Connection refused", "consumer error"],
    );

    // 5. The coordinator forces a rebalance, on slow round trips.
    stage("forced rebalance, slow brokers");
    produce(&bootstrap, &input, chunks[5]).await.unwrap();
    let watch = LogWatch::now(&processor);
    cluster
        .broker_round_trip_time(-1, Duration::from_millis(50))
        .unwrap();
    cluster.request_errors(
        RDKafkaApiKey::Heartbeat,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS],
    );
    watch
        .wait(
            &mut processor,
            "the group to rebalance (rejoin and sync) after the heartbeat error",
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
        &watch.since(&processor),
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
    let (faulty_out, faulty_state) = stop_and_collect(&cluster, &faulty, &mut processor);
    for api in [
        RDKafkaApiKey::Produce,
        RDKafkaApiKey::Fetch,
        RDKafkaApiKey::OffsetCommit,
        RDKafkaApiKey::Heartbeat,
    ] {
        cluster.clear_request_errors(api);
    }

    let (reference_out, reference_state) = reference_run(&cluster, &input, done).await;
    stage("reference run done");
    assert_same_outputs(&reference_out, &faulty_out, "under faults");
    assert_eq!(
        faulty_state, reference_state,
        "final state differs from the fault-free run's"
    );
    eprintln!(
        "reference: {} outputs; under faults: {} outputs ({} repeats)",
        reference_out.len(),
        faulty_out.len(),
        faulty_out.len() - reference_out.len()
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
    let deployment = Deployment::new(&cluster, &input);
    let dir = tempfile::tempdir().unwrap();
    produce(&bootstrap, &input, &story[..CHUNK]).await.unwrap();
    let mut processor = Processor::start(
        &deployment.config(&dir.path().join("state"), ""),
        &bootstrap,
        dir.path(),
        &[],
    )
    .await
    .unwrap();
    processor
        .wait_committed(CHUNK as i64, STAGE_TIMEOUT)
        .await
        .unwrap();
    let status = processor
        .process
        .terminate(Duration::from_secs(60))
        .unwrap();
    assert!(status.success(), "clean stop: {status}");
    let committed_before = processor.state_dump().unwrap();

    // More input, and the next produce request is refused for good: librdkafka fails the
    // records at once (it does not retry an authorization error).
    produce(&bootstrap, &input, &story[CHUNK..]).await.unwrap();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let watch = LogWatch::now(&processor);
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
    let log = watch.since(&processor);
    assert!(
        !status.success(),
        "exit status {status}:\n{}",
        tail(&log, 40)
    );
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("hookfold-processor:") && last.contains("Topic authorization failed"),
        "the last line names the problem: {last}\n{}",
        tail(&log, 40)
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
    let (out, state) = stop_and_collect(&cluster, &deployment, &mut processor);
    let (reference_out, reference_state) =
        reference_run(&cluster, &input, story.len() as i64).await;
    assert_same_outputs(&reference_out, &out, "after the refused batch");
    assert_eq!(
        state, reference_state,
        "final state differs from the fault-free run's"
    );
}
