//! The Kafka side: a consumer group member on the webhook topic that hands records to the
//! [`Engine`], seeks every assigned partition to the offset stored with its state, and
//! commits a partition's pending batch before giving the partition up. A newly assigned
//! partition stays paused while [`Restores`] brings its store up to the changelog (and,
//! under `exactly_once`, to the group's committed offset). The partitions of an aborted
//! transaction are sought back to their stores' offsets before the next poll.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::config::{Guarantee, ProcessorConfig};
use crate::delivery::{BatchProducers, TrackedProducer, Transactional};
use crate::engine::{Committed, Engine, EngineError, Topics};
use crate::metrics::Metrics;
use crate::restores::{Finished, GroupOffsets, Restores};
use crate::store::PartitionStore;

pub struct ProcessorContext {
    engine: Mutex<Engine>,
    restores: Restores,
    input_topic: String,
    /// `exactly_once`: the group's offsets are committed in each batch's transaction.
    exactly_once: bool,
    metrics: Metrics,
    /// An error inside a callback, which cannot return one: the loop stops on it.
    fatal: Mutex<Option<String>>,
    /// Whether the group has given this member its (possibly empty) first assignment.
    assigned_once: AtomicBool,
    /// What librdkafka last reported, for a start that cannot connect to say why.
    last_error: hookfold_kafka::LastError,
}

impl ProcessorContext {
    fn engine(&self) -> MutexGuard<'_, Engine> {
        // A panic while holding the lock ends the process anyway; the data is still there.
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, message: String) {
        tracing::error!(error = %message, "processor cannot continue");
        self.fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(message);
    }

    fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts restoring `partition` into `store` (see [`Restores`]).
    fn start_restore(&self, partition: i32, store: PartitionStore) {
        if let Err(e) = self.restores.start(partition, store) {
            self.fail(format!(
                "starting the restore of partition {partition}: {e}"
            ));
        }
    }
}

impl ClientContext for ProcessorContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.last_error.record(&error, reason);
        tracing::error!(target: "librdkafka", error = %error, "Kafka client error: {reason}");
        if hookfold_kafka::is_authorization_error(&error) {
            self.fail(not_authorized(&error));
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.last_error.record_log(facility, message);
        hookfold_kafka::log_librdkafka(level, facility, message);
    }

    fn stats(&self, statistics: Statistics) {
        if let Some(topic) = statistics.topics.get(&self.input_topic) {
            for (partition, stats) in &topic.partitions {
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[&partition.to_string()])
                        .set(stats.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for ProcessorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.input_topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assigned_once.store(true, Ordering::SeqCst);
                // Every new partition starts paused: its store is first brought up to the
                // changelog on a thread of its own, then the partition is resumed at the
                // store's offset (`finish_restores`).
                self.restores.cancel(&partitions);
                for &partition in &partitions {
                    let store = {
                        let mut engine = self.engine();
                        match engine.take(partition) {
                            Some(store) => Ok(store),
                            None => engine.open(partition),
                        }
                    };
                    let offset = match store {
                        Ok(store) => {
                            let offset = match store.next_offset() {
                                Ok(Some(next)) => Offset::Offset(next),
                                _ => Offset::Beginning,
                            };
                            self.metrics
                                .assigned
                                .with_label_values(&[&partition.to_string()])
                                .set(1);
                            self.start_restore(partition, store);
                            offset
                        }
                        Err(e) => {
                            self.fail(format!("opening the store of partition {partition}: {e}"));
                            Offset::Stored
                        }
                    };
                    if let Err(e) = tpl.set_partition_offset(&self.input_topic, partition, offset) {
                        self.fail(format!("seeking partition {partition}: {e}"));
                    }
                }
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    self.fail(format!("assigning partitions {partitions:?}: {e}"));
                } else if let Err(e) = consumer.pause(tpl) {
                    self.fail(format!(
                        "pausing partitions {partitions:?} to restore them: {e}"
                    ));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.restores.cancel(&partitions);
                for partition in &partitions {
                    self.metrics
                        .assigned
                        .with_label_values(&[&partition.to_string()])
                        .set(0);
                }
                let lost = consumer.assignment_lost();
                let group = consumer.group_metadata();
                let revoked = self.engine().revoke(&partitions, lost, group.as_ref());
                match revoked {
                    Ok(committed) => {
                        if !self.exactly_once {
                            commit_offsets(consumer, &self.input_topic, &committed)
                        }
                    }
                    Err(e) => self.fail(format!(
                        "committing partitions {partitions:?} before giving them up: {e}"
                    )),
                }
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "unassigning partitions");
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error; dropping the assignment");
                self.restores.cancel_all();
                let _ = consumer.unassign();
            }
        }
    }
}

/// Tells the group where this processor is, so `kafka-consumer-groups` and lag monitors
/// see it. Reading resumes from the offsets stored with the state, not from these.
fn commit_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    committed: &Committed,
) {
    if committed.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (partition, next) in committed {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(error = %e, "committing group offsets");
    }
}

/// Hands every finished restore's store to the engine and resumes its partition at the
/// store's offset.
fn finish_restores(consumer: &BaseConsumer<ProcessorContext>) -> anyhow::Result<()> {
    let context = consumer.context();
    for Finished {
        partition,
        assigned_at,
        store,
    } in context.restores.take_finished()?
    {
        let next = {
            let mut engine = context.engine();
            engine.await_first_event(partition, assigned_at);
            engine
                .adopt(partition, store)
                .with_context(|| format!("taking on partition {partition}"))?
        };
        let offset = next.map_or(Offset::Beginning, Offset::Offset);
        consumer
            .seek(
                &context.input_topic,
                partition,
                offset,
                Duration::from_secs(10),
            )
            .with_context(|| format!("seeking partition {partition} to {offset:?}"))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&context.input_topic, partition);
        consumer
            .resume(&tpl)
            .with_context(|| format!("resuming partition {partition}"))?;
    }
    Ok(())
}

/// Seeks the partitions of an aborted batch back to where their stores are, so the batch
/// is read and folded again (a partition given up meanwhile is the new owner's).
fn rewind(consumer: &BaseConsumer<ProcessorContext>) -> anyhow::Result<()> {
    let context = consumer.context();
    let rewinds = context.engine().take_rewinds()?;
    for (partition, next) in rewinds {
        let offset = next.map_or(Offset::Beginning, Offset::Offset);
        if let Err(e) = consumer.seek(
            &context.input_topic,
            partition,
            offset,
            Duration::from_secs(10),
        ) {
            if context.engine().assigned().contains(&partition) {
                // Still ours, and reading on from past the aborted batch would skip it.
                bail!("rewinding partition {partition} to {offset:?} after an aborted batch: {e}");
            }
            // Revoked meanwhile: the new owner reads it.
            tracing::info!(partition, error = %e, "not rewinding a partition given up");
        } else {
            tracing::info!(partition, ?offset, "rewound to redo an aborted batch");
        }
    }
    Ok(())
}

/// Refuses a changelog that is missing or not co-partitioned with the input (partition `p`
/// of the changelog holds the state of input partition `p`), and a missing open-incident
/// table.
pub fn check_copartitioned(
    consumer: &BaseConsumer<impl ConsumerContext>,
    input: &str,
    changelog: &str,
    open_incidents: &str,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let count = |topic: &str| -> anyhow::Result<usize> {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .with_context(|| format!("reading the metadata of topic {topic}"))?;
        match metadata.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(t.partitions().len())
            }
            _ => bail!(
                "topic {topic} does not exist; create it with `hookfold-processor topics --create`"
            ),
        }
    };
    let inputs = count(input)?;
    let states = count(changelog)?;
    // Every batch writes the open-incident table too: a missing one would fail the
    // first batch with an incident after the produce timeout.
    count(open_incidents)?;
    if inputs != states {
        bail!(
            "the changelog {changelog} has {states} partitions but the input {input} has {inputs}: \
             they must be equal (partition p of the changelog holds the state of input partition p); \
             refusing to run. See `hookfold-processor topics` and docs/OPERATIONS.md"
        );
    }
    Ok(inputs)
}

const GROUP_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// The processor's words for an ACL refusal.
fn not_authorized(error: &KafkaError) -> String {
    format!(
        "Kafka refuses this processor an operation: {error}; grant what \
         `hookfold-processor acls --principal <its principal>` prints (docs/OPERATIONS.md, ACLs)"
    )
}

/// How long a starting processor waits for the brokers to answer before it exits.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The settings every client of the processor and its subcommands starts from.
pub fn client_config(config: &ProcessorConfig) -> ClientConfig {
    let k = &config.kafka;
    hookfold_kafka::client_config(&k.bootstrap_servers, &k.properties, &k.resolved_security)
}

/// [`client_config`] for a consumer that reads partitions through to their end (restores,
/// rebuilds): librdkafka stops fetching once 100,000 records are queued locally and then
/// waits `fetch.queue.backoff.ms` (default 1 s) before it fetches again. Such a reader drains
/// its queue in a fraction of that, then sat idle: 80% of a 1,000,000-record restore was
/// spent waiting for records the broker had long been ready to send (BENCHMARKS.md). An
/// operator's own value in `[kafka.properties]` wins.
pub fn reader_config(config: &ProcessorConfig) -> ClientConfig {
    let mut client = client_config(config);
    if !config
        .kafka
        .properties
        .contains_key("fetch.queue.backoff.ms")
    {
        client.set("fetch.queue.backoff.ms", "10");
    }
    client
}

/// The engine with its producers (acks=all, idempotent; under `exactly_once` one
/// transactional producer), as `run` and `rebuild` use it.
pub fn new_engine(
    config: &ProcessorConfig,
    metrics: Metrics,
    guarantee: Guarantee,
) -> anyhow::Result<Engine> {
    let producer_config = |client_id: &str, linger_ms: &str| -> ClientConfig {
        let mut client = client_config(config);
        client
            .set("client.id", client_id)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", linger_ms)
            .set(
                "message.timeout.ms",
                config.kafka.ack_timeout.as_millis().to_string(),
            );
        client
    };
    let producers = match guarantee {
        Guarantee::EffectivelyOnce => {
            let producer = |client_id: &str, linger_ms: &str| {
                TrackedProducer::create(&producer_config(client_id, linger_ms))
                    .with_context(|| format!("creating the Kafka producer {client_id}"))
            };
            // Incident events and states come in bursts that linger batches; a batch's
            // markers are a handful of records the batch is waiting on, so they go at once.
            BatchProducers::EffectivelyOnce {
                outputs: producer("hookfold-processor", "5")?,
                markers: producer("hookfold-processor-markers", "0")?,
            }
        }
        Guarantee::ExactlyOnce => {
            let timeout = config.processing.transaction_timeout;
            let transactional_id = transactional_id(config);
            let mut client = producer_config("hookfold-processor", "5");
            // A record not acked within the transaction's timeout cannot be committed.
            let message_timeout = config.kafka.ack_timeout.min(timeout);
            client
                .set("transactional.id", &transactional_id)
                .set("transaction.timeout.ms", timeout.as_millis().to_string())
                .set(
                    "message.timeout.ms",
                    message_timeout.as_millis().to_string(),
                );
            let transactional = Transactional::create(&client, config.kafka.ack_timeout)
                .with_context(|| {
                    format!(
                        "starting the transactional producer {transactional_id} \
                         (processing.guarantee = \"exactly_once\"; the principal needs Write and \
                         Describe on transactional ids prefixed {}.)",
                        config.kafka.group_id
                    )
                })?;
            tracing::info!(
                %transactional_id,
                transaction_timeout_ms = timeout.as_millis() as u64,
                "transactional producer ready (exactly_once)"
            );
            BatchProducers::ExactlyOnce(transactional)
        }
    };
    let topics = Topics {
        input: config.kafka.input_topic.clone(),
        output: config.kafka.output_topic.clone(),
        changelog: config.kafka.changelog_topic(),
        open_incidents: config.kafka.open_incidents_topic(),
    };
    Ok(Engine::new(
        config.rules.clone(),
        topics,
        &config.state_dir,
        producers,
        config.kafka.ack_timeout,
        config.batch.clone(),
        metrics,
    ))
}

/// The transactional id under `exactly_once`: `<group_id>.<instance_id>`, stable across
/// restarts, so a restarted instance fences its predecessor and aborts what it left open at
/// once; without an instance_id, one of its own per process (`<group_id>.<host>-<pid>-<start
/// time>`), so a crashed process's open transaction holds read_committed readers back until
/// `processing.transaction_timeout`.
pub fn transactional_id(config: &ProcessorConfig) -> String {
    let group = &config.kafka.group_id;
    match config
        .kafka
        .instance_id
        .as_deref()
        .filter(|i| !i.is_empty())
    {
        Some(instance) => format!("{group}.{instance}"),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "host".into());
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default();
            format!("{group}.{host}-{}-{started}", std::process::id())
        }
    }
}

/// Runs until `shutdown` is set, or an error the processor cannot recover from. `ready`
/// is true while the processor is in the group with every assigned partition restored.
pub fn run(
    config: &ProcessorConfig,
    metrics: Metrics,
    shutdown: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;
    let engine = new_engine(config, metrics.clone(), config.processing.guarantee)?;
    let mut changelog_client = reader_config(config);
    changelog_client
        .set("client.id", "hookfold-processor-restore")
        .set("group.id", format!("{}.restore", config.kafka.group_id));
    let context = ProcessorContext {
        engine: Mutex::new(engine),
        restores: Restores::new(
            changelog_client,
            config.kafka.changelog_topic(),
            config.kafka.ack_timeout,
            config.processing.exactly_once().then(|| GroupOffsets {
                client: {
                    let mut client = client_config(config);
                    client
                        .set("client.id", "hookfold-processor-offsets")
                        .set("group.id", &config.kafka.group_id);
                    client
                },
                input_topic: config.kafka.input_topic.clone(),
                // The coordinator looks for timed-out transactions every 10 s by default
                // (transaction.abort.timed.out.transaction.cleanup.interval.ms).
                settle: config.processing.transaction_timeout + Duration::from_secs(30),
            }),
            metrics.clone(),
        ),
        input_topic: config.kafka.input_topic.clone(),
        exactly_once: config.processing.exactly_once(),
        metrics,
        fatal: Mutex::new(None),
        assigned_once: AtomicBool::new(false),
        last_error: Default::default(),
    };
    let mut consumer_config = client_config(config);
    if let Some(instance) = config
        .kafka
        .instance_id
        .as_deref()
        .filter(|i| !i.is_empty())
    {
        consumer_config.set("group.instance.id", instance);
    }
    if !config
        .kafka
        .properties
        .contains_key("partition.assignment.strategy")
    {
        // Incremental: a rebalance moves only the partitions that change owner; the others
        // keep being processed (and keep their open stores).
        consumer_config.set("partition.assignment.strategy", "cooperative-sticky");
    }
    let consumer: BaseConsumer<ProcessorContext> = consumer_config
        .set("client.id", "hookfold-processor")
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        .create_with_context(context)
        .context("creating the Kafka consumer")?;
    // Wrong credentials or certificates end the start here, with librdkafka's reason,
    // before anything is consumed; a broker that does not answer, after STARTUP_TIMEOUT.
    hookfold_kafka::wait_for_brokers(
        consumer.client(),
        &consumer.context().last_error,
        &config.kafka.bootstrap_servers,
        STARTUP_TIMEOUT,
        || {
            // Not subscribed yet: this serves the error and log events, no message.
            let _ = consumer.poll(Duration::ZERO);
        },
    )?;
    let partitions = check_copartitioned(
        &consumer,
        &config.kafka.input_topic,
        &config.kafka.changelog_topic(),
        &config.kafka.open_incidents_topic(),
        config.kafka.ack_timeout,
    )?;
    consumer
        .subscribe(&[&config.kafka.input_topic])
        .with_context(|| format!("subscribing to {}", config.kafka.input_topic))?;
    tracing::info!(
        input = %config.kafka.input_topic,
        output = %config.kafka.output_topic,
        changelog = %config.kafka.changelog_topic(),
        open_incidents = %config.kafka.open_incidents_topic(),
        group = %config.kafka.group_id,
        partitions,
        state_dir = %config.state_dir.display(),
        "processor started"
    );

    // Group offsets are for lag tools only (reading resumes from the stored offsets), so
    // they are committed every few seconds, not per batch: every commit is a write at
    // the group coordinator, which on a busy broker delays its heartbeat answers.
    let mut last_group_commit = std::time::Instant::now();
    let exactly_once = config.processing.exactly_once();
    let mut uncommitted: std::collections::BTreeMap<i32, i64> = Default::default();
    let mut ticker = crate::tick::Ticker::new(
        client_config(config),
        &config.kafka.input_topic,
        config.tick_interval,
        consumer.context().metrics.clone(),
    )?;
    while !shutdown.load(Ordering::SeqCst) {
        if let Some(fatal) = consumer.context().fatal() {
            bail!(fatal);
        }
        finish_restores(&consumer)?;
        ready.store(
            consumer.context().assigned_once.load(Ordering::SeqCst)
                && consumer.context().restores.is_empty(),
            Ordering::SeqCst,
        );
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(message)) => {
                if let Some(ticker) = &mut ticker {
                    ticker.seen(rdkafka::Message::partition(&message));
                }
                consumer.context().engine().push(message.detach())
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(
                e @ KafkaError::MessageConsumption(RDKafkaErrorCode::InconsistentGroupProtocol),
            )) => {
                // Repeats until the members with the other strategy leave: say why, and
                // what to do.
                tracing::warn!(
                    error = %e,
                    group = %config.kafka.group_id,
                    "consumer error: the group is held by members using another partition \
                     assignment strategy (this processor uses cooperative-sticky unless \
                     partition.assignment.strategy is set); stop them, or use another group.id \
                     (see OPERATIONS.md, Assignment strategy)"
                )
            }
            Some(Err(e)) if hookfold_kafka::is_authorization_error(&e) => bail!(not_authorized(&e)),
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
        }
        let committed = {
            let mut engine = consumer.context().engine();
            if engine.due() {
                Some(engine.commit(consumer.group_metadata().as_ref()))
            } else {
                None
            }
        };
        match committed {
            Some(Ok(committed)) => uncommitted.extend(committed),
            // Nothing of it is visible; its partitions are rewound just below.
            Some(Err(EngineError::Aborted { .. })) => {}
            Some(Err(e)) => return Err(e).context("committing a batch"),
            None => {}
        }
        rewind(&consumer)?;
        if let Some(ticker) = &mut ticker {
            let waiting = consumer.context().engine().partitions_with_timers();
            ticker.tick(&waiting);
        }
        if exactly_once {
            // The offsets were committed in each batch's transaction.
            uncommitted.clear();
        } else if !uncommitted.is_empty() && last_group_commit.elapsed() >= GROUP_COMMIT_INTERVAL {
            let assigned = consumer.context().engine().assigned();
            let offsets: Committed = std::mem::take(&mut uncommitted)
                .into_iter()
                .filter(|(partition, _)| assigned.contains(partition))
                .collect();
            commit_offsets(&consumer, &config.kafka.input_topic, &offsets);
            last_group_commit = std::time::Instant::now();
        }
    }
    ready.store(false, Ordering::SeqCst);
    tracing::info!("shutting down: committing the last batch");
    let committed = consumer
        .context()
        .engine()
        .commit(consumer.group_metadata().as_ref());
    match committed {
        Ok(committed) if !exactly_once => {
            commit_offsets(&consumer, &config.kafka.input_topic, &committed)
        }
        Ok(_) => {}
        // Nothing of it is visible; the next owner of its partitions redoes it.
        Err(EngineError::Aborted { .. }) => {}
        Err(e) => return Err(e).context("committing the last batch"),
    }
    // Leaving the group revokes the partitions (closing their stores) before exiting.
    consumer.context().restores.cancel_all();
    consumer.unsubscribe();
    let assigned = consumer.context().engine().assigned();
    if !assigned.is_empty() {
        consumer
            .context()
            .engine()
            .revoke(&assigned, false, consumer.group_metadata().as_ref())
            .context("closing stores")?;
    }
    if let Some(fatal) = consumer.context().fatal() {
        bail!(fatal);
    }
    Ok(())
}
